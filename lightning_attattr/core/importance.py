"""Head importance from AttAttr and its baselines, and the pruning order built from it.

AttAttr head importance (Hao, Dong, Wei, Xu: "Self-Attention Attribution: Interpreting Information
Interactions Inside Transformer", AAAI 2021, https://arxiv.org/abs/2004.11207, Sec. 4) pools each
head's attribution map of an example into one number, by default the signed maximum over its
(query, key) entries, and averages that over examples:

    I_h = E_x [ max_(i,j) Attr_h(A)_(i,j) ]

The functions here produce per-example scores ``[batch, layer, head]``; :func:`head_importance`
(or the :class:`~lightning_attattr.metrics.HeadImportance` metric, for accumulation across batches
and ranks) reduces them to ``[layer, head]``. Baselines with the same output layout:

- :func:`taylor_importance`: the Taylor-expansion score of Michel et al. (2019), either as the
  official AttAttr script computes it (``"official"``: gradient of the sum of all logits with
  respect to each head's context vectors, then :func:`normalize_per_layer` on the aggregate) or
  as Michel et al. define it (``"michel"``: ``|dL/d xi_h|`` for a gate ``xi_h`` on the head and the
  cross-entropy loss ``L`` with the gold label);
- :func:`attention_weight_importance`: the maximum attention probability of each head (max-pooled
  like AttAttr);
- :func:`accuracy_difference_importance`: the accuracy lost when the head alone is masked;
- :func:`random_importance`: a seeded random ranking.

Pruning follows the official protocol: heads are removed lowest importance first
(:func:`pruning_order`), ``floor(r * n_layers * n_heads)`` of them at the fractions ``r`` of
:data:`PRUNING_FRACTIONS` (:func:`heads_to_prune`, :func:`prune_mask`), and a removed head's
attention probabilities are multiplied by 0 (the head mask of
:func:`~lightning_attattr.core.adapter.attention_scope`).

Heads are always addressed by their original index, also in structurally pruned models (removed
heads score 0).

With grouped-query attention (``num_key_value_heads < num_attention_heads``) structural pruning
removes whole key/value groups: :func:`kv_group_importance` sums the query heads' importance per
group, :func:`heads_to_prune` ranks the groups like heads, and :func:`heads_of_kv_groups` turns the
chosen groups back into the query heads that
:func:`~lightning_attattr.core.pruning.prune_heads` takes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from numbers import Real
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

import torch
from torch import Tensor, nn

from lightning_attattr.core.adapter import AttentionController, _compute_dtype, attention_scope, layer_modules
from lightning_attattr.core.attribution import (
    AttributionResult,
    _Batch,
    _prepare_inputs,
    _progress,
    frozen_eval,
    model_logits,
)
from lightning_attattr.core.checks import (
    ArgumentError,
    ArgumentTypeError,
    check_choice,
    check_number,
    check_positive_int,
    check_seed,
    check_shape,
)
from lightning_attattr.core.reductions import POOLINGS, Pooling, pool_heads

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "POOLINGS",
    "PRUNING_FRACTIONS",
    "TAYLOR_VARIANTS",
    "HeadId",
    "accuracy_difference_importance",
    "attention_weight_importance",
    "attribution_head_scores",
    "head_importance",
    "heads_of_kv_groups",
    "heads_to_prune",
    "kv_group_importance",
    "normalize_per_layer",
    "prune_mask",
    "pruning_order",
    "random_importance",
    "taylor_importance",
]

TaylorVariant = Literal["official", "michel"]

#: Variants of the Taylor baseline (see :func:`taylor_importance`).
TAYLOR_VARIANTS: tuple[TaylorVariant, ...] = ("official", "michel")
#: Fractions of all heads removed in the official pruning protocol: 0.0, 0.1, ..., 1.0.
PRUNING_FRACTIONS: tuple[float, ...] = tuple(round(i / 10, 1) for i in range(11))

# the official script divides each layer's vector by its L2 norm plus this
_NORM_EPS = 1e-20


class HeadId(NamedTuple):
    """One attention head, by layer index and original head index."""

    layer: int
    head: int


# ----------------------------------------------------------------------------- validation helpers
def _check_importance(importance: object) -> Tensor:
    tensor = check_shape("importance", importance, (None, None), "[layer, head]")
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ArgumentTypeError(f"Expected `importance` to hold real numbers, but got dtype {tensor.dtype}.")
    if tensor.numel() == 0:
        raise ArgumentError(f"Expected `importance` to have at least one head, but got shape {list(tensor.shape)}.")
    if tensor.is_floating_point() and bool(torch.isnan(tensor).any()):
        raise ArgumentError("Expected `importance` without NaN (they have no place in a ranking), but it contains NaN.")
    return tensor


# ----------------------------------------------------------------------------- AttAttr pooling
def attribution_head_scores(attributions: AttributionResult | Sequence[Tensor], pooling: Pooling = "max") -> Tensor:
    """Pool every head's attribution map into one score per example.

    Args:
        attributions: an :class:`~lightning_attattr.core.attribution.AttributionResult`, or its
            ``.attributions`` list: one ``[layer, head, query_pos, key_pos]`` tensor per example,
            cropped to the example's real tokens (lengths may differ between examples). A zero-padded
            ``[batch, layer, head, query_pos, key_pos]`` tensor is refused: its padding would enter
            the pool.
        pooling: ``"max"`` (the paper: signed maximum over the (query, key) entries, no absolute
            value), ``"mean"`` or ``"sum"`` over the entries.

    Returns:
        ``[batch, layer, head]`` scores, in the maps' dtype, on their device. The layer axis follows
        the maps' layer axis (``result.layers``).

    Raises:
        TypeError: ``attributions`` is neither a result nor a sequence of tensors.
        ValueError: unknown ``pooling``, no examples, maps that are not 4-D, empty maps, or maps whose
            ``[layer, head]`` axes differ between examples.

    Example:
        >>> import torch
        >>> maps = [torch.tensor([[[[0.1, -0.5], [0.3, 0.0]]]]),  # example 0: [1, 1, 2, 2]
        ...         torch.tensor([[[[-2.0]]]])]                    # example 1: [1, 1, 1, 1]
        >>> attribution_head_scores(maps).shape  # [batch, layer, head]
        torch.Size([2, 1, 1])
        >>> [round(x, 4) for x in attribution_head_scores(maps).flatten().tolist()]  # signed max
        [0.3, -2.0]
        >>> [round(x, 4) for x in attribution_head_scores(maps, pooling="sum").flatten().tolist()]
        [-0.1, -2.0]
    """
    check_choice("pooling", pooling, POOLINGS)
    if isinstance(attributions, AttributionResult):
        maps = list(attributions.attributions)
    elif isinstance(attributions, Tensor):
        raise ArgumentTypeError(
            "Expected `attributions` to be an AttributionResult or a list of per-example [layer, head, query_pos, "
            f"key_pos] maps, but got a tensor of shape {list(attributions.shape)}; pass `result.attributions` "
            "(cropped maps), not `result.padded()`: zero padding would change the pooled scores."
        )
    elif isinstance(attributions, Sequence) and not isinstance(attributions, (str, bytes)):
        maps = list(attributions)
    else:
        raise ArgumentTypeError(
            "Expected `attributions` to be an AttributionResult or a list of per-example [layer, head, query_pos, "
            f"key_pos] maps, but got {type(attributions).__name__}."
        )
    if not maps:
        raise ArgumentError("Expected `attributions` to hold at least one example, but got none.")
    first = check_shape("attributions[0]", maps[0], (None, None, None, None), "[layer, head, query_pos, key_pos]")
    layer_head = tuple(first.shape[:2])
    pooled = []
    for i, m in enumerate(maps):
        check_shape(f"attributions[{i}]", m, (*layer_head, None, None), "[layer, head, query_pos, key_pos]")
        if m.shape[-1] == 0 or m.shape[-2] == 0:
            raise ArgumentError(f"Expected `attributions[{i}]` to have at least one entry, but got {list(m.shape)}.")
        pooled.append(pool_heads(m, pooling))  # [layer, head]
    return torch.stack(pooled)  # [batch, layer, head]


def _head_importance_update(scores: Tensor) -> tuple[Tensor, int]:
    """Sum of ``[batch, layer, head]`` scores over the batch, ``[layer, head]``, and the batch size."""
    scores = check_shape("scores", scores, (None, None, None), "[batch, layer, head]")
    return scores.sum(0), scores.shape[0]


def _head_importance_compute(score_sum: Tensor, count: Tensor | int) -> Tensor:
    """Mean over examples, ``[layer, head]``, from the accumulated sum and count."""
    if int(count) == 0:
        raise RuntimeError("Expected scores of at least one example to compute head importance, but got none.")
    return score_sum / count


def head_importance(scores: Tensor) -> Tensor:
    """Mean head score over examples: ``[batch, layer, head] -> [layer, head]``.

    With AttAttr max-pooled scores this is the paper's ``I_h``. The official script sums over its
    200 examples instead; the ranking is the same.

    Args:
        scores: per-example head scores, ``[batch, layer, head]`` (e.g. from
            :func:`attribution_head_scores`).

    Returns:
        ``[layer, head]`` importance.

    Raises:
        TypeError, ValueError: ``scores`` is not a 3-D tensor.
        RuntimeError: the batch is empty.

    Example:
        >>> import torch
        >>> head_importance(torch.tensor([[[1.0, 2.0]], [[3.0, 0.0]]])).tolist()
        [[2.0, 1.0]]
    """
    score_sum, count = _head_importance_update(scores)
    return _head_importance_compute(score_sum, count)


# ----------------------------------------------------------------------------- gradient baselines
def _real_positions(batch: _Batch) -> Tensor | None:
    """``[batch, pos]`` boolean mask of real tokens, or ``None`` when every position is real."""
    mask = batch.tensors.get("attention_mask")
    if mask is None or batch.seq_len is None:
        return None
    return mask.bool()


def _resolve_labels(labels: object, batch: _Batch, num_labels: int) -> Tensor:
    if labels is None:
        labels = batch.labels
    if labels is None:
        raise ArgumentError(
            "Expected gold `labels` for `variant='michel'` (the `labels` argument or an `inputs['labels']` "
            "entry), but got neither."
        )
    device = next(iter(batch.tensors.values())).device  # the model's: the inputs were moved there
    try:
        values = torch.as_tensor(labels, device=device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ArgumentTypeError(
            f"Expected `labels` to be a [batch] tensor of class indices, but got {labels!r}."
        ) from err
    if values.dtype.is_floating_point or values.dtype == torch.bool or values.is_complex():
        raise ArgumentTypeError(f"Expected integer class indices in `labels`, but got dtype {values.dtype}.")
    if tuple(values.shape) != (batch.size,):
        raise ArgumentError(
            f"Expected `labels` to have one class per example, shape [{batch.size}], but got {list(values.shape)}."
        )
    bad = values[(values < 0) | (values >= num_labels)]
    if bad.numel():
        raise ArgumentError(f"Expected `labels` classes in [0, {num_labels - 1}], but got {bad.tolist()}.")
    return values.long()


def taylor_importance(
    model: nn.Module,
    inputs: Mapping[str, Any],
    *,
    variant: TaylorVariant = "official",
    labels: Tensor | Sequence[int] | None = None,
) -> Tensor:
    """Per-example Taylor-expansion head scores (Michel et al., 2019), the AttAttr paper's baseline.

    Both variants differentiate through each head's context vectors ``ctx_h = A_h V_h``
    (``[batch, head, query_pos, head_dim]``, before the heads are concatenated and projected):

    - ``"official"`` (default; what the official AttAttr script computes): the scalar is the SUM
      OF ALL LOGITS over the batch and the classes (no labels), and the score of head ``h`` is
      ``sum_t |sum_d ctx_h[t, d] * d(sum logits)/d ctx_h[t, d]|`` over the example's real positions
      ``t``. The script then sums over examples and divides each layer's vector by its L2 norm: do
      that on the aggregate, ``normalize_per_layer(scores.sum(0))``, never per example.
    - ``"michel"`` (Michel et al.'s definition): ``|dL/d xi_h|``, where ``xi_h = 1`` is a gate
      multiplying head ``h``'s attention probabilities and ``L`` the example's cross-entropy loss
      with its gold label. Since ``ctx_h`` is linear in ``xi_h``, this equals
      ``|sum_t sum_d ctx_h[t, d] * dL/d ctx_h[t, d]|``. The absolute value is taken per example
      (Michel et al.'s expectation of ``|.|``), so the mean over examples is their ``I_h``.

    The model runs once in eval mode; its parameters are frozen for the call, so their ``.grad`` is
    never touched, and the caller's train/eval mode and ``requires_grad`` flags are restored. It
    also works inside ``torch.no_grad()`` / ``torch.inference_mode()``. Padded positions are
    masked out explicitly (their gradient is 0 anyway). A head mask set by an enclosing
    :func:`~lightning_attattr.core.adapter.attention_scope` stays active, the gate then multiplies
    it, so masked heads score 0; in a structurally pruned model removed heads score 0 too.

    Args:
        model: a Hugging Face classifier of a supported architecture (logits ``[batch, classes]``).
        inputs: the model's inputs for one batch (``input_ids``, ``attention_mask``, ...; any padding).
            A ``labels`` entry is used by ``"michel"`` when ``labels`` is not given.
        variant: ``"official"`` or ``"michel"``.
        labels: ``[batch]`` gold class indices, required by ``"michel"`` (here or in ``inputs``);
            must be ``None`` for ``"official"``, which uses no labels.

    Returns:
        ``[batch, layer, head]`` non-negative scores on the CPU, in the model's precision (at least
        float32), indexed by original head.

    Raises:
        TypeError, ValueError: invalid arguments (the message names the argument, the allowed values
            and what was given), e.g. ``"michel"`` without labels.
        RuntimeError: the model's attention did not run through the interface for every layer.

    Example:
        >>> import torch
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> _ = torch.manual_seed(0)
        >>> model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16,
        ...     num_hidden_layers=2, num_attention_heads=2, intermediate_size=32))
        >>> batch = {"input_ids": torch.tensor([[1, 5, 7, 2], [1, 9, 2, 0]]),
        ...          "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])}
        >>> scores = taylor_importance(model, batch)  # [batch, layer, head]
        >>> list(scores.shape), list(normalize_per_layer(scores.sum(0)).shape)
        ([2, 2, 2], [2, 2])
        >>> list(taylor_importance(model, batch, variant="michel", labels=[0, 1]).shape)
        [2, 2, 2]
    """
    check_choice("variant", variant, TAYLOR_VARIANTS)
    if variant == "official" and labels is not None:
        raise ArgumentError(
            "Expected `labels` to be None for `variant='official'` (it back-propagates the sum of the logits and "
            "uses no labels); pass `variant='michel'` to use the gold labels."
        )
    n_layers = len(layer_modules(model))  # validates the architecture
    device = next(model.parameters()).device
    with torch.inference_mode(False), torch.enable_grad():
        batch = _prepare_inputs(inputs, device)
        gold = None
        if variant == "michel":
            num_labels = cast("PreTrainedModel", model).config.num_labels  # layer_modules checked the class
            assert num_labels is not None, "a classifier's config names its labels"
            gold = _resolve_labels(labels, batch, num_labels).to(device)
        with frozen_eval(model), attention_scope(model) as ctrl:
            return _taylor(model, ctrl, batch, variant, gold, n_layers)


def _taylor(
    model: nn.Module, ctrl: AttentionController, batch: _Batch, variant: str, gold: Tensor | None, n_layers: int
) -> Tensor:
    device = next(model.parameters()).device
    dtype = _compute_dtype(next(model.parameters()).dtype)
    # a gate of ones on every head: multiplying by 1 changes nothing, but it puts every layer's
    # context vectors on the autograd graph while the parameters are frozen
    gate = torch.ones(n_layers, ctrl.n_heads, device=device, dtype=dtype, requires_grad=True)
    outer = ctrl.head_mask
    mask = gate if outer is None else outer.detach().to(device=device, dtype=dtype) * gate
    with ctrl.masked(mask), ctrl.capturing_context() as contexts:
        logits = model_logits(model, batch.tensors)  # [batch, classes]
    ctrl.check_all_layers_ran()
    if variant == "official":
        scalar = logits.sum()
    else:
        # summed (not averaged) per-example losses: the gradient at example b is that of its own loss
        assert gold is not None  # taylor_importance resolves the labels of "michel"
        scalar = nn.functional.cross_entropy(logits.to(dtype), gold, reduction="sum")
    layers = sorted(contexts)
    grads = torch.autograd.grad(scalar, [contexts[layer] for layer in layers])
    real = _real_positions(batch)
    scores = torch.zeros(batch.size, n_layers, ctrl.n_heads, dtype=dtype, device=device)
    for layer, grad in zip(layers, grads):
        ctx = contexts[layer].detach()
        per_pos = (ctx.to(dtype) * grad.to(dtype)).sum(-1)  # [batch, head, query_pos]
        if real is not None:
            per_pos = per_pos * real[:, None, : per_pos.shape[-1]].to(dtype)
        # [batch, head]
        per_head = per_pos.abs().sum(-1) if variant == "official" else per_pos.sum(-1).abs()
        kept = ctrl._kept.get(layer)
        if kept is None:
            scores[:, layer] = per_head
        else:  # pruned layer: scores of the heads left go to their original index, removed heads keep 0
            scores[:, layer].index_copy_(1, kept.to(device), per_head)
    return scores.detach().cpu()


def normalize_per_layer(importance: Tensor) -> Tensor:
    """Divide each layer's head vector by its L2 norm (+1e-20), as the official Taylor script does.

    Apply it to the aggregate over examples (``normalize_per_layer(scores.sum(0))``), not per example.

    Args:
        importance: ``[layer, head]``.

    Returns:
        ``[layer, head]`` with every non-zero row of unit L2 norm.

    Example:
        >>> import torch
        >>> normalize_per_layer(torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64)).tolist()
        [[0.6, 0.8], [0.0, 0.0]]
    """
    importance = _check_importance(importance)
    return importance / (importance.norm(dim=-1, keepdim=True) + _NORM_EPS)


def attention_weight_importance(model: nn.Module, inputs: Mapping[str, Any]) -> Tensor:
    """Per-example attention-weight baseline: each head's largest attention probability.

    The maximum is taken over the example's real (query, key) pairs, so the baseline is max-pooled
    like AttAttr. Runs one forward in eval mode without gradients; the caller's mode is restored.
    A head mask of an enclosing :func:`~lightning_attattr.core.adapter.attention_scope` applies
    (masked heads score 0), and removed heads of a pruned model score 0.

    Args:
        model: a Hugging Face model of a supported architecture.
        inputs: the model's inputs for one batch (any padding).

    Returns:
        ``[batch, layer, head]`` scores in ``[0, 1]`` on the CPU (at least float32).

    Raises:
        TypeError, ValueError: invalid ``model`` or ``inputs``.
        RuntimeError: the model's attention did not run through the interface for every layer.

    Example:
        >>> import torch
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16,
        ...     num_hidden_layers=2, num_attention_heads=2, intermediate_size=32))
        >>> scores = attention_weight_importance(model, {"input_ids": torch.tensor([[1, 5, 7, 2]])})
        >>> list(scores.shape), bool(((scores > 0) & (scores <= 1)).all())
        ([1, 2, 2], True)
    """
    layer_modules(model)  # validates the architecture
    device = next(model.parameters()).device
    batch = _prepare_inputs(inputs, device)
    with (
        torch.no_grad(),
        frozen_eval(model),
        attention_scope(model) as ctrl,
        ctrl.capturing() as probs,
    ):
        model_logits(model, batch.tensors)
    ctrl.check_all_layers_ran()
    real = _real_positions(batch)
    scores = []
    for layer in range(ctrl.n_layers):
        p = probs[layer]  # [batch, head, query_pos, key_pos], zeros for removed heads
        if real is not None:
            r = real[:, : p.shape[-1]]
            valid = r[:, None, :, None] & r[:, None, None, :]  # [batch, 1, query_pos, key_pos]
            p = p.masked_fill(~valid, -math.inf)
        scores.append(p.flatten(-2).amax(-1))  # [batch, head]
    return torch.stack(scores, dim=1).cpu()  # [batch, layer, head]


# ----------------------------------------------------------------------------- other baselines
def accuracy_difference_importance(
    evaluate: Callable[[Tensor | None], float], n_layers: int, n_heads: int, show_progress: bool = False
) -> Tensor:
    """Accuracy-difference baseline: ``acc(full model) - acc(head h masked)``, one head at a time.

    The AttAttr paper's third ranking (not in the official code). ``evaluate`` owns the data and the
    model: it is called once with ``None`` (no mask) and once per head with a ``[layer, head]`` mask
    of ones with a single 0 (a fresh tensor per call), e.g. by running the evaluation set inside
    ``attention_scope(model)`` with ``ctrl.masked(mask)``. Ties are broken by flat head index in
    :func:`pruning_order`.

    Args:
        evaluate: ``mask -> accuracy``; ``mask`` is ``None`` or a float32 ``[layer, head]`` tensor on
            the CPU (0 = head removed).
        n_layers: number of layers.
        n_heads: heads per layer.
        show_progress: show a progress bar over the ``n_layers * n_heads + 1`` evaluations.

    Returns:
        ``[layer, head]`` float64 accuracy drops (negative where removing the head helps).

    Raises:
        TypeError: ``evaluate`` is not callable or returns something that is not a number.
        ValueError: non-positive ``n_layers`` / ``n_heads``, or ``evaluate`` returns NaN.

    Example:
        >>> def evaluate(mask):  # a fake evaluation: head (0, 1) carries 10 points of accuracy
        ...     return 0.9 if mask is None or mask[0, 1] == 1 else 0.8
        >>> accuracy_difference_importance(evaluate, n_layers=1, n_heads=2).tolist()
        [[0.0, 0.09999999999999998]]
    """
    if not callable(evaluate):
        raise ArgumentTypeError(
            f"Expected `evaluate` to be a callable mask -> accuracy, but got {type(evaluate).__name__}."
        )
    check_positive_int("n_layers", n_layers)
    check_positive_int("n_heads", n_heads)

    def accuracy(mask: Tensor | None) -> float:
        value = evaluate(mask)
        if isinstance(value, Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, Real):
            raise ArgumentTypeError(
                f"Expected `evaluate` to return a number (the accuracy), but it returned {value!r}."
            )
        if math.isnan(float(value)):
            raise ArgumentError("Expected `evaluate` to return a number (the accuracy), but it returned NaN.")
        return float(value)

    progress = _progress(n_layers * n_heads + 1, show_progress)
    try:
        full = accuracy(None)
        progress.update(1)
        out = torch.zeros(n_layers, n_heads, dtype=torch.float64, device="cpu")
        for layer in range(n_layers):
            for head in range(n_heads):
                mask = torch.ones(n_layers, n_heads, device="cpu")  # `evaluate` moves it where its model is
                mask[layer, head] = 0.0
                out[layer, head] = full - accuracy(mask)
                progress.update(1)
    finally:
        progress.close()
    return out


def random_importance(n_layers: int, n_heads: int, seed: int) -> Tensor:
    """Random baseline: i.i.d. uniform ``[0, 1)`` scores from a private generator seeded with ``seed``.

    Deterministic for a given seed and independent of the global RNG state (which is left untouched).

    Args:
        n_layers: number of layers.
        n_heads: heads per layer.
        seed: the generator seed (use several seeds for the random curve).

    Returns:
        ``[layer, head]`` float64 scores on the CPU (the same for a seed on every machine; move them
        where they are needed).

    Example:
        >>> bool((random_importance(3, 4, seed=0) == random_importance(3, 4, seed=0)).all())
        True
    """
    check_positive_int("n_layers", n_layers)
    check_positive_int("n_heads", n_heads)
    check_seed("seed", seed)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.rand(n_layers, n_heads, generator=generator, dtype=torch.float64, device="cpu")


# ----------------------------------------------------------------------------- pruning protocol
def pruning_order(importance: Tensor) -> list[HeadId]:
    """All heads, lowest importance first (the order in which the official protocol removes them).

    Ties keep the flat index order ``layer * n_heads + head`` (stable sort).

    Args:
        importance: ``[layer, head]`` scores (no NaN).

    Returns:
        ``n_layers * n_heads`` :class:`HeadId` in ascending importance.

    Raises:
        TypeError, ValueError: ``importance`` is not a 2-D real tensor without NaN.

    Example:
        >>> import torch
        >>> pruning_order(torch.tensor([[0.5, 0.1], [0.1, 0.9]]))
        [HeadId(layer=0, head=1), HeadId(layer=1, head=0), HeadId(layer=0, head=0), HeadId(layer=1, head=1)]
    """
    importance = _check_importance(importance)
    n_heads = importance.shape[1]
    order = torch.argsort(importance.flatten().cpu(), stable=True).tolist()
    return [HeadId(i // n_heads, i % n_heads) for i in order]


def _n_to_prune(fraction: float, n_total: int) -> int:
    # floor(r * n) in floating point, as the official script: 0, 14, 28, 43, 57, ... of 144
    return min(n_total, math.floor(fraction * n_total))


def heads_to_prune(importance: Tensor, fraction: float, n_kv_heads: int | None = None) -> dict[int, list[int]]:
    """The heads removed at ``fraction`` of all heads: the ``floor(fraction * n_layers * n_heads)`` lowest.

    Args:
        importance: ``[layer, head]`` scores (no NaN).
        fraction: in ``[0, 1]``, e.g. one of :data:`PRUNING_FRACTIONS`. The count is computed in
            floating point as the official script does (for 144 heads: 0, 14, 28, 43, 57, 72, 86,
            100, 115, 129, 144).
        n_kv_heads: with grouped-query attention, the key/value heads per layer: whole groups are
            removed instead, the ``floor(fraction * n_layers * n_kv_heads)`` groups of lowest
            :func:`kv_group_importance`, and the result lists all their query heads (what
            structural pruning can remove). ``None`` (or the head count): single heads.

    Returns:
        ``{layer: [head, ...]}`` (sorted, only layers that lose a head). Feed it to
        :func:`~lightning_attattr.core.pruning.prune_heads` (which refuses to empty a layer) or use
        :func:`prune_mask` for masking.

    Raises:
        TypeError, ValueError: bad ``importance``, or ``fraction`` outside ``[0, 1]``.

    Example:
        >>> import torch
        >>> heads_to_prune(torch.tensor([[0.5, 0.1], [0.2, 0.9]]), 0.5)
        {0: [1], 1: [0]}
    """
    importance = _check_importance(importance)
    n_heads = importance.shape[1]
    if n_kv_heads is not None and _check_group_count(n_heads, n_kv_heads) != n_heads:
        groups = heads_to_prune(kv_group_importance(importance, n_kv_heads), fraction)
        return heads_of_kv_groups(groups, n_heads, n_kv_heads)
    k = _n_to_prune(check_number("fraction", fraction, 0.0, 1.0), importance.numel())
    chosen: dict[int, list[int]] = {}
    for head in pruning_order(importance)[:k]:
        chosen.setdefault(head.layer, []).append(head.head)
    return {layer: sorted(heads) for layer, heads in sorted(chosen.items())}


def prune_mask(importance: Tensor, fraction: float, n_kv_heads: int | None = None) -> Tensor:
    """``[layer, head]`` head mask with 0 at the heads :func:`heads_to_prune` removes, 1 elsewhere.

    Args:
        importance: ``[layer, head]`` scores (no NaN).
        fraction: in ``[0, 1]``.
        n_kv_heads: remove whole key/value groups (see :func:`heads_to_prune`); ``None``: single
            query heads (a mask can remove any query head, also part of a group).

    Returns:
        ``[layer, head]`` mask on ``importance``'s device, in its dtype if floating point, else float32;
        pass it to ``ctrl.masked(mask)`` inside :func:`~lightning_attattr.core.adapter.attention_scope`.

    Example:
        >>> import torch
        >>> prune_mask(torch.tensor([[0.5, 0.1], [0.2, 0.9]]), 0.5).tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """
    importance = _check_importance(importance)
    dtype = importance.dtype if importance.is_floating_point() else torch.float32
    mask = torch.ones(importance.shape, dtype=dtype, device=importance.device)
    for layer, heads in heads_to_prune(importance, fraction, n_kv_heads).items():
        mask[layer, heads] = 0
    return mask


# ----------------------------------------------------------------------------- grouped-query attention
def _check_group_count(n_heads: int, n_kv_heads: object) -> int:
    n_kv = check_positive_int("n_kv_heads", n_kv_heads)
    if n_heads % n_kv:
        raise ArgumentError(f"Expected `n_kv_heads` to divide the number of query heads ({n_heads}), but got {n_kv}.")
    return n_kv


def kv_group_importance(importance: Tensor, n_kv_heads: int) -> Tensor:
    """Importance of each key/value group: the sum of its query heads' importance.

    With grouped-query attention, ``n_heads // n_kv_heads`` consecutive query heads share one
    key/value head (query head ``h`` is in group ``h // (n_heads // n_kv_heads)``, as
    transformers' ``repeat_kv``). Removing a group removes all of its query heads, so its score
    is the sum of theirs (for AttAttr importance: the summed per-head maxima). With
    ``n_kv_heads == n_heads`` the importance is returned unchanged.

    Args:
        importance: ``[layer, head]`` scores of the query heads (no NaN).
        n_kv_heads: key/value heads per layer (``config.num_key_value_heads``), a divisor of ``head``.

    Returns:
        ``[layer, n_kv_heads]`` scores, in ``importance``'s dtype and device.

    Raises:
        TypeError, ValueError: bad ``importance``, or ``n_kv_heads`` not a positive divisor of the head count.

    Example:
        >>> import torch
        >>> kv_group_importance(torch.tensor([[0.5, 0.1, 0.2, 0.9]]), n_kv_heads=2)
        tensor([[0.6000, 1.1000]])
    """
    importance = _check_importance(importance)
    n_layers, n_heads = importance.shape
    n_kv = _check_group_count(n_heads, n_kv_heads)
    return importance.reshape(n_layers, n_kv, n_heads // n_kv).sum(dim=-1)  # [layer, kv_head]


def heads_of_kv_groups(groups: Mapping[int, Sequence[int]], n_heads: int, n_kv_heads: int) -> dict[int, list[int]]:
    """The query heads of chosen key/value groups: ``{layer: [group, ...]}`` to ``{layer: [head, ...]}``.

    Rank groups with :func:`heads_to_prune` on :func:`kv_group_importance` (it treats the groups
    as heads), then pass this function's result to
    :func:`~lightning_attattr.core.pruning.prune_heads`, or build a head mask from it.

    Args:
        groups: ``{layer: [group index, ...]}``.
        n_heads: query heads per layer (``config.num_attention_heads``).
        n_kv_heads: key/value heads per layer (``config.num_key_value_heads``), a divisor of ``n_heads``.

    Returns:
        ``{layer: sorted query heads}`` for the layers with a chosen group.

    Raises:
        TypeError, ValueError: ``groups`` is not a mapping of layers to group indices in
            ``[0, n_kv_heads - 1]``, or ``n_kv_heads`` is not a positive divisor of ``n_heads``.

    Example:
        >>> heads_of_kv_groups({0: [1], 2: [0, 1]}, n_heads=4, n_kv_heads=2)
        {0: [2, 3], 2: [0, 1, 2, 3]}
    """
    n_heads = check_positive_int("n_heads", n_heads)
    n_kv = _check_group_count(n_heads, n_kv_heads)
    if not isinstance(groups, Mapping):
        raise ArgumentTypeError(
            f"Expected `groups` to be a mapping {{layer: [group, ...]}}, but got {type(groups).__name__}."
        )
    size = n_heads // n_kv
    heads: dict[int, list[int]] = {}
    for layer, chosen in sorted(groups.items()):
        members: set[int] = set()
        for group in chosen:
            if isinstance(group, bool) or not isinstance(group, int) or not 0 <= group < n_kv:
                raise ArgumentError(
                    f"Expected group indices in [0, {n_kv - 1}] in `groups[{layer}]`, but got {group!r}."
                )
            members.update(range(group * size, (group + 1) * size))
        if members:
            heads[layer] = sorted(members)
    return heads
