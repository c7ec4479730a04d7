"""Self-attention attribution (AttAttr): integrated gradients over attention-probability matrices.

For a layer ``l`` with attention probabilities ``A`` (``[head, query_pos, key_pos]``, all heads
together) and ``F_c`` the softmax probability of class ``c``, AttAttr is

    Attr(A) = A * integral_0^1 dF_c(alpha A) / dA  d alpha

where ``F_c(alpha A)`` runs the model with layer ``l``'s probabilities replaced by ``alpha A``;
layers below ``l`` are unchanged and layers above recompute their attention from the changed hidden
states (Hao, Dong, Wei, Xu: "Self-Attention Attribution: Interpreting Information Interactions
Inside Transformer", AAAI 2021, https://arxiv.org/abs/2004.11207). The entry ``(i, j)`` of head
``h`` attributes the interaction "query token ``i`` attends to key token ``j``". By completeness,
the sum over heads, queries and keys approaches ``F_c(A) - F_c(A := 0)`` as the integration gets
exact; :attr:`AttributionResult.convergence_delta` reports the gap per example and layer.

How the work is organised (results never depend on it):

- examples are sorted by length and grouped so that padding is (almost) never computed;
- one clean forward per group captures every layer's probabilities and the outputs of the layers
  below each target layer; the integration passes reuse those outputs, so the layers below a
  target layer run once per example, not once per step;
- the integration steps of all examples of a group share one batched forward/backward per
  target layer, split into passes of at most ``internal_batch_size`` rows to cap memory;
- the model's parameters are frozen and only the gradient with respect to the replaced
  probabilities is computed, so attribution never touches ``.grad``.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_attattr.core.adapter import AttentionController, attention_scope, layer_modules
from lightning_attattr.core.approximation import (
    AUTO,
    NESTED_LEVELS,
    Method,
    approximation_parameters,
    nested_rule,
    validate_method,
    validate_n_steps,
)
from lightning_attattr.core.checks import ArgumentError, ArgumentTypeError, check_int, check_layers, check_number

#: Default integration rule and step count: the smallest Gauss-Legendre node count whose completeness
#: error stayed below 1e-3 with a factor-2 margin on every (example, layer) of a pretrained MiniLM
#: with an SST-2 head (measured by benchmarks/completeness.py: 8 nodes max 1.0e-3, 9: 8.5e-4,
#: 10: 4.6e-4; see README, "Choosing the integration rule").
DEFAULT_METHOD: Method = "gausslegendre"
#: Default ``n_steps``: adaptive integration to ``completeness_tol`` on every (example, layer) pair.
DEFAULT_N_STEPS: int | str = AUTO
#: Default relative completeness tolerance of ``n_steps="auto"``.
DEFAULT_COMPLETENESS_TOL = 1e-3
#: Pairs with ``|F(A) - F(A := 0)|`` below this are held to the absolute error ``tol * floor``
#: instead of a relative one (a relative error of a near-zero difference is fp32 noise).
COMPLETENESS_FLOOR = 1e-3

_TARGET_STRINGS = ("predicted", "labels")
_AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)
# a new length bucket starts when padding would add more than this fraction of real tokens
_PAD_TOLERANCE = 0.1


@dataclass
class AttributionResult:
    """AttAttr scores of a batch of examples.

    Attributes:
        attributions: one tensor per example, ``[layer, head, query_pos, key_pos]``, cropped to the
            example's real tokens (padding removed; special tokens such as [CLS]/[SEP] kept). The
            layer axis follows :attr:`layers`.
        layers: the attributed layer indices, in the order of the layer axis.
        target: ``[batch]`` class whose probability was attributed.
        prob: ``[batch]`` probability ``F_c(A)`` of the target class in the unmodified model.
        baseline_prob: ``[batch, layer]`` ``F_c(A^l := 0)``, or ``None`` unless the convergence
            delta was requested.
        convergence_delta: ``[batch, layer]`` sum of the attributions minus
            ``prob - baseline_prob`` (completeness gap), or ``None`` unless requested.
        method: integration rule used.
        n_steps: number of integration steps, or ``"auto"`` for adaptive integration.
        n_steps_used: ``[batch, layer]`` integration nodes evaluated per pair (``n_steps`` for a
            fixed rule; 3, 7, 15, 31 or 63 with ``"auto"``).
        completeness_error: ``[batch, layer]`` achieved relative completeness error
            ``|sum attr - (F(A) - F(A := 0))| / max(|F(A) - F(A := 0)|, COMPLETENESS_FLOOR)``
            (complete also on a shard), or ``None`` (fixed rule without the convergence delta).
        unconverged: ``[batch, layer]`` bool, pairs that missed ``completeness_tol`` within
            ``max_steps`` (``"auto"`` only; a warning names how many), else ``None``.
        shard: ``(index, count)`` when this result is one shard of a split computation (see
            ``attribute(..., shard=...)``): its ``attributions`` and ``convergence_delta`` are
            partial sums that add up, over the ``count`` shards, to the full result
            (:func:`merge_shards`); ``None`` for a complete result.
    """

    attributions: list[Tensor]
    layers: tuple[int, ...]
    target: Tensor
    prob: Tensor
    baseline_prob: Tensor | None
    convergence_delta: Tensor | None
    method: str
    n_steps: int | str
    shard: tuple[int, int] | None = None
    n_steps_used: Tensor | None = None
    completeness_error: Tensor | None = None
    unconverged: Tensor | None = None

    def __len__(self) -> int:
        return len(self.attributions)

    def __getitem__(self, index: int) -> Tensor:
        return self.attributions[index]

    def padded(self) -> Tensor:
        """Stack the per-example maps, zero-padded, into ``[batch, layer, head, query_pos, key_pos]``."""
        n = max(a.shape[-1] for a in self.attributions)
        out = self.attributions[0].new_zeros(len(self), *self.attributions[0].shape[:2], n, n)
        for i, a in enumerate(self.attributions):
            out[i, :, :, : a.shape[-2], : a.shape[-1]] = a
        return out

    def relative_convergence_delta(self) -> Tensor:
        """``|convergence_delta| / |prob - baseline_prob|``, ``[batch, layer]``."""
        if self.convergence_delta is None or self.baseline_prob is None:
            raise RuntimeError("Call `attribute(..., return_convergence_delta=True)` to get the delta.")
        return self.convergence_delta.abs() / (self.prob[:, None] - self.baseline_prob).abs()


@dataclass
class _Batch:
    """Validated model inputs on the model's device."""

    tensors: dict[str, Tensor]
    size: int
    seq_len: int | None  # None: no token axis to trim (e.g. ViT pixel inputs)
    lengths: list[int]  # real tokens per example (seq_len for unpadded inputs)
    positions: list[Tensor] | None  # real-token indices per example when padding is not a suffix
    labels: Tensor | None


def _as_tensor(name: str, value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (ValueError, TypeError, RuntimeError) as err:
        raise ArgumentError(
            f"Expected `inputs[{name!r}]` to be a tensor (pad the batch, e.g. tokenizer(..., padding=True, "
            f"return_tensors='pt')), but could not convert {type(value).__name__}: {err}"
        ) from err


def _prepare_inputs(inputs: object, device: torch.device) -> _Batch:
    if not isinstance(inputs, Mapping):
        raise ArgumentTypeError(
            "Expected `inputs` to be a mapping of model inputs (e.g. the tokenizer's BatchEncoding with "
            f"`input_ids` and `attention_mask`), but got {type(inputs).__name__}."
        )
    tensors = {str(k): _as_tensor(str(k), v) for k, v in inputs.items() if v is not None}
    labels = tensors.pop("labels", None)
    main = next((k for k in ("input_ids", "inputs_embeds", "pixel_values") if k in tensors), None)
    if main is None:
        raise ArgumentError(
            "Expected `inputs` to contain one of `input_ids`, `inputs_embeds` or `pixel_values`, "
            f"but got keys {sorted(tensors)}."
        )
    size = tensors[main].shape[0] if tensors[main].dim() > 0 else 0
    if tensors[main].dim() < 2 or size == 0:
        raise ArgumentError(
            f"Expected `inputs[{main!r}]` to be a non-empty batch with a leading batch axis, "
            f"but got shape {list(tensors[main].shape)}."
        )
    for key, t in [*tensors.items(), *([("labels", labels)] if labels is not None else [])]:
        if t.dim() == 0 or t.shape[0] != size:
            raise ArgumentError(
                f"Expected every input to have batch size {size} (from `{main}`: {list(tensors[main].shape)}), "
                f"but `{key}` has shape {list(t.shape)}."
            )
    seq_len = tensors[main].shape[1] if main != "pixel_values" else None
    lengths = [seq_len or 0] * size
    positions = None
    mask = tensors.get("attention_mask")
    if mask is not None and seq_len is not None:
        if tuple(mask.shape) != (size, seq_len):
            raise ArgumentError(
                f"Expected `attention_mask` of shape {[size, seq_len]} (as `{main}`), but got {list(mask.shape)}."
            )
        real = mask.bool()
        lengths = real.sum(1).tolist()
        if min(lengths) == 0:
            raise ArgumentError(
                f"Expected every example to have a real token, but `attention_mask` row "
                f"{lengths.index(0)} is all zeros."
            )
        is_suffix_padded = bool((real == (torch.arange(seq_len, device=real.device) < real.sum(1, keepdim=True))).all())
        if not is_suffix_padded:
            positions = [row.nonzero().squeeze(1).to(device) for row in real]
    # clone: tensors created under inference mode cannot take part in autograd
    moved = {k: t.to(device).clone() for k, t in tensors.items()}
    labels = None if labels is None else labels.to(device).clone()
    return _Batch(moved, size, seq_len, lengths, positions, labels)


def _validate_shard(shard: object) -> tuple[int, int] | None:
    if shard is None:
        return None
    if (
        not isinstance(shard, (tuple, list))
        or len(shard) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) for v in shard)
        or not 0 <= shard[0] < shard[1]
    ):
        raise ArgumentError(
            f"Expected `shard` to be None or (index, count) with 0 <= index < count, but got {shard!r}."
        )
    return int(shard[0]), int(shard[1])


def _owned_steps(n_groups: int, n_layers: int, n_steps: int, shard: tuple[int, int] | None) -> list[list[list[int]]]:
    """``owned[group][layer]``: the integration-step indices this shard computes.

    Work items (group, layer, step) are numbered in that order and dealt round-robin, so every
    shard gets the same number of items (within one) whatever the group sizes.
    """
    out = []
    item = 0
    for _ in range(n_groups):
        per_layer = []
        for _ in range(n_layers):
            steps = [k for k in range(n_steps) if shard is None or (item + k) % shard[1] == shard[0]]
            per_layer.append(steps)
            item += n_steps
        out.append(per_layer)
    return out


def merge_shards(shards: Sequence[AttributionResult]) -> AttributionResult:
    """Sum the shards of a split attribution (``attribute(..., shard=(i, n))`` for ``i < n``).

    Args:
        shards: one result per shard index ``0 .. n-1``, computed on the same inputs with the same
            arguments.

    Returns:
        The complete :class:`AttributionResult`, equal to the unsplit computation up to
        floating-point summation order.

    Raises:
        ValueError: missing or duplicate shards, or shards of different computations.
    """
    if not shards:
        raise ArgumentError("Expected at least one shard in `shards`, but got none.")
    first = shards[0]
    count = first.shard[1] if first.shard is not None else 1
    indices = sorted(s.shard[0] if s.shard is not None else 0 for s in shards)
    if indices != list(range(count)) or any((s.shard or (0, 1))[1] != count for s in shards):
        raise ArgumentError(f"Expected shards 0..{count - 1} exactly once, but got indices {indices}.")
    for other in shards[1:]:
        if (other.layers, other.method, other.n_steps, len(other)) != (
            first.layers,
            first.method,
            first.n_steps,
            len(first),
        ) or not torch.equal(other.target, first.target):
            raise ArgumentError("Expected shards of one computation (same inputs, layers, target, method and n_steps).")
    deltas = [s.convergence_delta for s in shards]
    return AttributionResult(
        attributions=[sum(s.attributions[i] for s in shards) for i in range(len(first))],
        layers=first.layers,
        target=first.target,
        prob=first.prob,
        baseline_prob=first.baseline_prob,
        convergence_delta=None if any(d is None for d in deltas) else sum(deltas),
        method=first.method,
        n_steps=first.n_steps,
        n_steps_used=first.n_steps_used,  # decided on summed values: the same on every shard
        completeness_error=first.completeness_error,
        unconverged=first.unconverged,
    )


def _plan_groups(batch: _Batch, max_examples: int | None) -> list[list[int]]:
    """Group examples of similar length (sorted ascending), at most ``max_examples`` per group."""
    order = sorted(range(batch.size), key=lambda i: batch.lengths[i])
    buckets: list[list[int]] = []
    if batch.seq_len is None or batch.positions is not None:
        buckets = [order]
    else:
        real = 0
        for i in order:
            n = batch.lengths[i]
            if buckets and buckets[-1] and (len(buckets[-1]) + 1) * n > (1 + _PAD_TOLERANCE) * (real + n):
                buckets.append([])
                real = 0
            if not buckets:
                buckets.append([])
            buckets[-1].append(i)
            real += n
    limit = max_examples or batch.size
    return [bucket[k : k + limit] for bucket in buckets for k in range(0, len(bucket), limit)]


def _subset(batch: _Batch, index: list[int]) -> dict[str, Tensor]:
    """Inputs of the examples ``index``, trimmed to their longest real length when padding is a suffix."""
    rows = torch.tensor(index, device=next(iter(batch.tensors.values())).device)
    n = None
    if batch.seq_len is not None and batch.positions is None:
        n = max(batch.lengths[i] for i in index)
    out = {}
    for key, t in batch.tensors.items():
        t = t.index_select(0, rows)
        if n is not None and t.dim() >= 2 and t.shape[1] == batch.seq_len:
            t = t[:, :n]
        out[key] = t
    return out


@dataclass
class _Adaptive:
    """Settings, the nested rule and shared state of one ``n_steps="auto"`` call."""

    tol: float
    n_levels: int
    reduce: Callable[[Tensor], Tensor] | None
    self_convergence: bool  # under autocast: successive levels must agree (rounding dominates the gap)
    item: int = 0  # work-item counter: (group, layer, level, node) items are dealt round-robin to shards

    def __post_init__(self) -> None:
        rules = [nested_rule(level) for level in range(self.n_levels)]
        self.sizes = [len(alphas) for alphas, _ in rules]  # nodes per level
        self.alphas = torch.tensor(rules[-1][0], dtype=torch.float64)  # [node]: level l uses the first sizes[l]
        self.weights = torch.zeros(self.n_levels, self.sizes[-1], dtype=torch.float64)  # [level, node]
        for level, (_, w) in enumerate(rules):
            self.weights[level, : len(w)] = torch.tensor(w, dtype=torch.float64)

    def next_item(self) -> int:
        self.item += 1
        return self.item - 1


def completeness_scale(prob: Tensor, baseline_prob: Tensor) -> Tensor:
    """``max(|F(A) - F(A := 0)|, COMPLETENESS_FLOOR)``: what a completeness gap is divided by.

    The relative completeness error that ``n_steps="auto"`` holds below its tolerance, that
    :attr:`AttributionResult.completeness_error` reports and the callbacks log, is
    ``|convergence_delta| / completeness_scale(prob, baseline_prob)`` (shapes broadcast).
    """
    return (prob - baseline_prob).abs().clamp_min(COMPLETENESS_FLOOR)


def _take_rows(value: Any, rows: Tensor) -> Any:
    """``value`` (a layer output: tensor, tuple, list or dict of them) restricted to the batch rows ``rows``."""
    if isinstance(value, Tensor):
        return value.index_select(0, rows) if value.dim() > 0 else value
    if isinstance(value, (tuple, list)):
        return type(value)(_take_rows(v, rows) for v in value)
    if isinstance(value, dict):
        return {k: _take_rows(v, rows) for k, v in value.items()}
    return value


def model_logits(model: nn.Module, inputs: Mapping[str, Tensor]) -> Tensor:
    """``[batch, classes]`` logits of a Hugging Face classifier (``.logits``, else the first output)."""
    output = model(**inputs)
    return output.logits if hasattr(output, "logits") else output[0]


def _target_prob(logits: Tensor, target: Tensor) -> Tensor:
    """Softmax probability of ``target`` per row: ``[rows, classes], [rows] -> [rows]``."""
    probs = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    return probs.gather(1, target[:, None]).squeeze(1)


class AttentionIntegratedGradients:
    """Attention attribution (AttAttr) for a Hugging Face encoder classifier.

    Shaped like Captum's ``IntegratedGradients``: construct it around a model, then call
    :meth:`attribute` on batches. Supported model types are listed in
    :data:`lightning_attattr.core.adapter.SUPPORTED_MODEL_TYPES`.

    Args:
        model: a ``PreTrainedModel`` whose output has ``logits`` of shape ``[batch, classes]``
            (e.g. ``AutoModelForSequenceClassification``, ``AutoModelForImageClassification``).

    Raises:
        TypeError: ``model`` is not a ``PreTrainedModel``.
        ValueError: its architecture does not route attention through ``AttentionInterface``
            (e.g. DeBERTa-v2), or it has fewer than two output classes.

    Example:
        >>> import torch
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <...>
        >>> cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
        ...                  num_attention_heads=2, intermediate_size=32)
        >>> model = BertForSequenceClassification(cfg).eval()
        >>> batch = {"input_ids": torch.tensor([[1, 5, 7, 2], [1, 9, 2, 0]]),
        ...          "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])}
        >>> result = AttentionIntegratedGradients(model).attribute(batch, return_convergence_delta=True)
        >>> [list(a.shape) for a in result.attributions]  # [layer, head, query_pos, key_pos]
        [[2, 2, 4, 4], [2, 2, 3, 3]]
        >>> bool(result.convergence_delta.abs().max() < 1e-5)
        True
    """

    def __init__(self, model: nn.Module) -> None:
        self._n_layers = len(layer_modules(model))  # validates the architecture
        self.model = model
        self._num_labels = int(model.config.num_labels)
        if self._num_labels < 2:
            raise ArgumentError(
                "AttAttr attributes a class probability; expected a classifier with `num_labels` >= 2, "
                f"but the model has num_labels={self._num_labels}."
            )

    @property
    def n_layers(self) -> int:
        """Number of attention layers of the model."""
        return self._n_layers

    def attribute(
        self,
        inputs: Mapping[str, Any],
        *,
        target: int | str | Sequence[int] | Tensor | None = None,
        layers: int | Sequence[int] | None = None,
        n_steps: int | str = DEFAULT_N_STEPS,
        method: Method = DEFAULT_METHOD,
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
        autocast_dtype: torch.dtype | None = None,
        show_progress: bool = False,
        shard: tuple[int, int] | None = None,
        completeness_tol: float = DEFAULT_COMPLETENESS_TOL,
        max_steps: int = NESTED_LEVELS[-1],
        reduce: Callable[[Tensor], Tensor] | None = None,
    ) -> AttributionResult:
        """Attribute the target-class probability to every attention connection of the chosen layers.

        Args:
            inputs: the model's own inputs for a batch: ``input_ids`` / ``attention_mask`` /
                ``token_type_ids`` for text (any padding), ``pixel_values`` for ViT. A ``labels``
                entry is used only by ``target="labels"``.
            target: class to explain. ``None`` or ``"predicted"``: the model's prediction;
                ``"labels"``: ``inputs["labels"]`` (gold labels); an int: that class for every
                example; a sequence or ``[batch]`` tensor: one class per example.
            layers: layer index or indices to attribute (negative counts from the end), each
                named once (``[0, 0]`` is an error); default all layers. Results are in
                increasing layer order whatever the order given.
            n_steps: ``"auto"`` (default): adaptive integration, refined per (example, layer)
                until the completeness error meets ``completeness_tol`` (see below); or an int:
                a fixed rule with that many steps (model evaluations per example and layer).
            method: ``riemann_left`` (the official AttAttr code; ``n_steps=20`` reproduces its
                head-importance runs), ``riemann_right`` (the paper's formula),
                ``riemann_middle``, ``riemann_trapezoid`` or ``gausslegendre`` (default, 10 steps).
            internal_batch_size: at most this many rows (examples x steps) per forward/backward
                pass; caps memory and never changes results. ``None``: each length group and
                layer in one pass.
            return_convergence_delta: also compute ``F(A^l := 0)`` and the completeness gap per
                example and layer (one extra forward per layer unless the rule evaluates
                ``alpha = 0`` anyway).
            autocast_dtype: ``torch.bfloat16`` (or ``torch.float16`` on CUDA) to run the passes under
                autocast; about 1% relative error, much faster on hardware with bf16 matrix units.
                Default ``None``: the model's own precision.
            show_progress: show a progress bar over the passes.
            shard: ``(index, count)`` to compute only this process's share of the work for a
                split run (e.g. ``(rank, world_size)`` under DDP). The work items (length group x
                layer x integration step) are dealt round-robin to the ``count`` shards; a shard's
                maps and convergence delta are partial sums, and summing them over all shards
                (an all-reduce, or :func:`merge_shards`) gives exactly the unsplit result.
                ``prob``, ``baseline_prob`` and ``target`` are complete on every shard. With
                ``n_steps="auto"`` the refinement decisions need the summed values: pass ``reduce``.
            completeness_tol: ``n_steps="auto"`` only: a pair is done when
                ``|sum attr - (F(A) - F(A := 0))| <= completeness_tol * max(|F(A) - F(A := 0)|,
                COMPLETENESS_FLOOR)``, i.e. relative error below the tolerance, and an absolute error
                below ``completeness_tol * 1e-3`` for pairs whose output barely changes.
            max_steps: ``n_steps="auto"`` only: the most nodes one pair may use, one of 3, 7, 15,
                31, 63 (default). Pairs still above the tolerance there are flagged in
                ``result.unconverged`` and one warning says how many.
            reduce: ``n_steps="auto"`` with ``shard``: a function that sums a tensor over all
                shards and returns the sum (e.g. ``lambda t: trainer.strategy.reduce(t, "sum")``);
                called once per (length group, layer, level) on every shard, so all shards refine
                the same pairs and the merged result equals the unsplit one.

        Adaptive integration (``n_steps="auto"``). Completeness turns the quality of the integral
        into a number that can be checked exactly: the attributions of a pair must sum to
        ``F(A) - F(A := 0)``, and the gap is the quadrature error of the scalar integrand
        ``h(alpha) = sum(A * dF(alpha A) / dA)``. The rule is the nested Gauss-Kronrod-Patterson
        family (Patterson 1968, the basis of QUADPACK's QNG): 3 Gauss-Legendre nodes, extended to 7
        (Kronrod), 15, 31 and 63 nodes, each level keeping every node of the previous one and
        integrating polynomials of degree (3n + 1) / 2 exactly. Every pair starts with 3 nodes;
        pairs above the tolerance are refined to the next level, which evaluates only the new
        nodes (every gradient already computed is reused with the new level's weights), and
        pairs below it stop. Nested rules were chosen over bisection because the integrand is
        smooth (analytic in alpha for smooth activations), where one global rule of high degree
        converges much faster than composite low-order pieces; the top levels still resolve
        sharp transitions. A pair costs 3 nodes plus one forward for ``F(A := 0)`` when it is
        easy, and at most ``max_steps`` nodes. Under ``autocast_dtype`` the gap is dominated by
        rounding, not by the quadrature, so a pair is done when two successive levels agree to
        the tolerance instead.

        Returns:
            An :class:`AttributionResult`; the maps are on the CPU in at least float32.

        Raises:
            TypeError, ValueError: invalid arguments (the message names the argument, the allowed
                values and what was given).
            RuntimeError: the model's attention did not run through the interface for every layer.
        """
        layer_ids = self._validate_layers(layers)
        method = validate_method(method)  # type: ignore[assignment]
        n_steps = validate_n_steps(n_steps, allow_auto=True)
        adaptive: _Adaptive | None = None
        if n_steps == AUTO:
            if method != "gausslegendre":
                raise ArgumentError(
                    f"Expected `method='gausslegendre'` with `n_steps='auto'` (adaptive integration refines nested "
                    f"Gauss-Kronrod-Patterson nodes), but got method={method!r}; give an int `n_steps` for {method!r}."
                )
            tol = check_number("completeness_tol", completeness_tol, 0.0, 1.0, low_open=True)
            if max_steps not in NESTED_LEVELS or isinstance(max_steps, bool):
                raise ArgumentError(f"Expected `max_steps` to be one of {list(NESTED_LEVELS)}, but got {max_steps!r}.")
            if reduce is not None and not callable(reduce):
                raise ArgumentTypeError(f"Expected `reduce` to be a function or None, but got {reduce!r}.")
            adaptive = _Adaptive(tol, NESTED_LEVELS.index(max_steps) + 1, reduce, autocast_dtype is not None)
            alphas, weights = [], []
        else:
            alphas, weights = approximation_parameters(method, n_steps)  # type: ignore[arg-type]
        if internal_batch_size is not None:
            check_int("internal_batch_size", internal_batch_size, 1)
        shard = _validate_shard(shard)
        if adaptive is not None and shard is not None and shard[1] > 1 and reduce is None:
            raise ArgumentError(
                "Expected `reduce` (a function summing a tensor over the shards) with `n_steps='auto'` and "
                f"`shard`={shard}: the refinement decisions need the summed completeness terms."
            )
        if autocast_dtype is not None and autocast_dtype not in _AUTOCAST_DTYPES:
            raise ArgumentError(
                f"Expected `autocast_dtype` to be None or one of {list(_AUTOCAST_DTYPES)}, but got {autocast_dtype!r}."
            )
        model = self.model
        device = next(model.parameters()).device
        autocast = (
            (lambda: torch.autocast(device.type, dtype=autocast_dtype))
            if autocast_dtype is not None
            else contextlib.nullcontext
        )
        # everything below also runs when the caller is inside torch.inference_mode() or no_grad()
        # (Lightning's evaluation loops): tensors are created outside inference mode
        with torch.inference_mode(False), torch.enable_grad():
            batch = _prepare_inputs(inputs, device)
            self._check_token_ids(batch)
            targets = self._validate_target(target, batch)
            groups = _plan_groups(batch, internal_batch_size)
            if adaptive is None:
                owned = _owned_steps(len(groups), len(layer_ids), int(n_steps), shard)
                total: int | None = sum(
                    math.ceil(len(owned[gi][li]) / self._steps_per_pass(len(g), int(n_steps), internal_batch_size))
                    for gi, g in enumerate(groups)
                    for li in range(len(layer_ids))
                )
            else:  # the number of passes depends on how many pairs need refining
                owned, total = [], None
            progress = _progress(total, show_progress)
            try:
                with frozen_eval(model), attention_scope(model) as ctrl:
                    result = self._attribute(
                        ctrl,
                        batch,
                        groups,
                        targets,
                        layer_ids,
                        method,
                        alphas,
                        weights,
                        internal_batch_size,
                        return_convergence_delta,
                        autocast,
                        progress,
                        owned,
                        shard,
                        adaptive,
                    )
            finally:
                progress.close()
        if result.unconverged is not None and bool(result.unconverged.any()):
            assert result.completeness_error is not None
            bad = result.unconverged
            warnings.warn(
                f"{int(bad.sum())} of {bad.numel()} (example, layer) pairs did not reach completeness_tol="
                f"{completeness_tol:g} within max_steps={max_steps} (worst relative completeness error "
                f"{float(result.completeness_error[bad].max()):.2e}); they are flagged in `result.unconverged`.",
                stacklevel=2,
            )
        return result

    def _attribute(
        self,
        ctrl: AttentionController,
        batch: _Batch,
        groups: list[list[int]],
        targets: Tensor | None,
        layer_ids: tuple[int, ...],
        method: str,
        alphas: list[float],
        weights: list[float],
        internal_batch_size: int | None,
        want_delta: bool,
        autocast: Any,
        progress: Any,
        owned: list[list[list[int]]],
        shard: tuple[int, int] | None,
        adaptive: _Adaptive | None = None,
    ) -> AttributionResult:
        n_steps: int | str = len(alphas) if adaptive is None else AUTO
        share = 1.0 if shard is None else 1.0 / shard[1]  # each shard carries 1/count of F(A) - F(0)
        per_example: list[list[Tensor]] = [[] for _ in range(batch.size)]
        target_out = torch.zeros(batch.size, dtype=torch.long)
        prob_out = torch.zeros(batch.size, dtype=torch.float64)
        want_delta = want_delta or adaptive is not None  # adaptive integration computes F(A := 0) anyway
        base_out = torch.zeros(batch.size, len(layer_ids), dtype=torch.float64) if want_delta else None
        delta_out = torch.zeros(batch.size, len(layer_ids), dtype=torch.float64) if want_delta else None
        used_out = torch.full((batch.size, len(layer_ids)), len(alphas), dtype=torch.long)
        error_out = torch.zeros(batch.size, len(layer_ids), dtype=torch.float64) if want_delta else None
        flag_out = torch.zeros(batch.size, len(layer_ids), dtype=torch.bool) if adaptive is not None else None
        alpha_t = torch.tensor(alphas, dtype=torch.float64)
        weight_t = torch.tensor(weights, dtype=torch.float64)
        for gi, index in enumerate(groups):
            sub = _subset(batch, index)
            probs_a, recorded, logits = self._clean_pass(ctrl, sub, layer_ids, autocast)
            tgt = targets[index].to(logits.device) if targets is not None else logits.argmax(-1)
            f_full = _target_prob(logits, tgt).detach().double().cpu()
            steps = self._steps_per_pass(len(index), len(alphas), internal_batch_size)
            for li, layer in enumerate(layer_ids):
                below = recorded.get(layer - 1)
                if adaptive is not None:
                    f_zero = self._baseline_prob(ctrl, sub, layer, probs_a[layer], tgt, below, autocast)
                    attr, used, error, flagged = self._integrate_adaptive(
                        ctrl,
                        sub,
                        layer,
                        probs_a[layer],
                        tgt,
                        f_full,
                        f_zero,
                        below,
                        autocast,
                        progress,
                        adaptive,
                        internal_batch_size,
                        shard,
                    )
                    assert error_out is not None and flag_out is not None
                    used_out[index, li], error_out[index, li], flag_out[index, li] = used, error, flagged
                else:
                    mine = torch.tensor(owned[gi][li], dtype=torch.long)
                    attr, f_zero = self._integrate(
                        ctrl,
                        sub,
                        layer,
                        probs_a[layer],
                        tgt,
                        alpha_t[mine],
                        weight_t[mine],
                        steps,
                        below,
                        autocast,
                        progress,
                    )
                    if base_out is not None and f_zero is None:
                        f_zero = self._baseline_prob(ctrl, sub, layer, probs_a[layer], tgt, below, autocast)
                for j, i in enumerate(index):
                    per_example[i].append(self._crop(batch, i, attr[j]))
                if base_out is not None and delta_out is not None:
                    assert f_zero is not None
                    f_zero = f_zero.double().cpu()
                    base_out[index, li] = f_zero
                    delta_out[index, li] = attr.flatten(1).sum(1).double().cpu() - share * (f_full - f_zero)
                    if adaptive is None and shard is None and error_out is not None:  # a shard's delta is partial
                        error_out[index, li] = delta_out[index, li].abs() / completeness_scale(f_full, f_zero)
            target_out[index] = tgt.cpu()
            prob_out[index] = f_full
        return AttributionResult(
            attributions=[torch.stack(maps) for maps in per_example],
            layers=layer_ids,
            target=target_out,
            prob=prob_out,
            baseline_prob=base_out,
            convergence_delta=delta_out,
            method=method,
            n_steps=n_steps,
            shard=shard,
            n_steps_used=used_out,
            completeness_error=error_out if (adaptive is not None or shard is None) else None,
            unconverged=flag_out,
        )

    # ----------------------------------------------------------------- validation
    def _validate_layers(self, layers: int | Sequence[int] | None) -> tuple[int, ...]:
        checked = check_layers("layers", layers, self._n_layers)
        assert checked is not None
        return checked

    def _check_token_ids(self, batch: _Batch) -> None:
        """Refuse float ``input_ids`` and ids outside the vocabulary before any forward runs."""
        ids = batch.tensors.get("input_ids")
        if ids is None:
            return
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise ArgumentTypeError(
                f"Expected `inputs['input_ids']` to hold integer token ids, but got dtype {ids.dtype} "
                "(pass the tokenizer's output unchanged, e.g. tokenizer(texts, return_tensors='pt'))."
            )
        vocab = getattr(self.model.config, "vocab_size", None)
        if vocab is not None and (int(ids.min()) < 0 or int(ids.max()) >= int(vocab)):  # padding is embedded too
            bad = ids[(ids < 0) | (ids >= int(vocab))]
            raise ArgumentError(
                f"Expected `inputs['input_ids']` in [0, {int(vocab) - 1}] (the model's vocabulary has {int(vocab)} "
                f"tokens), but got {sorted(set(bad.tolist()))[:5]} (was the batch made with another tokenizer?)."
            )

    def _validate_target(self, target: object, batch: _Batch) -> Tensor | None:
        c = self._num_labels
        if target is None or target == "predicted":
            return None
        if isinstance(target, str):
            if target != "labels":
                raise ArgumentError(
                    f"Expected `target` to be one of {list(_TARGET_STRINGS)}, an int, a sequence of "
                    f"ints or None, but got {target!r}."
                )
            if batch.labels is None:
                raise ArgumentError("`target='labels'` needs a `labels` entry in `inputs`, but there is none.")
            values = batch.labels
        elif isinstance(target, bool):
            raise ArgumentTypeError(
                f"Expected `target` to be an int, a sequence of ints, a string or None, but got {target!r}."
            )
        elif isinstance(target, int):
            values = torch.full((batch.size,), target)
        else:
            try:
                values = torch.as_tensor(target)
            except (TypeError, ValueError, RuntimeError) as err:
                raise ArgumentTypeError(
                    f"Expected `target` to be an int, a sequence of ints, a string or None, but got {target!r}."
                ) from err
        if values.dtype.is_floating_point or values.dtype == torch.bool or values.dtype.is_complex:
            raise ArgumentTypeError(f"Expected integer class indices in `target`, but got dtype {values.dtype}.")
        if values.shape != (batch.size,):
            raise ArgumentError(
                f"Expected `target` to have one class per example, shape [{batch.size}], but got {list(values.shape)}."
            )
        bad = values[(values < 0) | (values >= c)]
        if bad.numel():
            raise ArgumentError(f"Expected `target` classes in [0, {c - 1}], but got {bad.tolist()}.")
        return values.long().cpu()

    @staticmethod
    def _steps_per_pass(examples: int, n_steps: int, internal_batch_size: int | None) -> int:
        if internal_batch_size is None:
            return n_steps
        return max(1, min(n_steps, internal_batch_size // examples))

    # ----------------------------------------------------------------- passes
    def _logits(self, inputs: dict[str, Tensor]) -> Tensor:
        return model_logits(self.model, inputs)

    def _clean_pass(
        self, ctrl: AttentionController, sub: dict[str, Tensor], layers: tuple[int, ...], autocast: Any
    ) -> tuple[dict[int, Tensor], dict[int, Any], Tensor]:
        """One unmodified forward: probabilities of ``layers`` and the outputs of the layers below them."""
        captured: dict[int, Tensor] = {}
        recorded: dict[int, Any] = {}
        record = frozenset(layer - 1 for layer in layers if layer > 0)
        with (
            torch.no_grad(),
            ctrl._state(
                _capture=frozenset(layers), _captured=captured, _record=record, _recorded=recorded, use_sdpa=True
            ),
            autocast(),
        ):
            logits = self._logits(sub)
        ctrl.check_all_layers_ran()
        return captured, recorded, logits

    def _integrate(
        self,
        ctrl: AttentionController,
        sub: dict[str, Tensor],
        layer: int,
        probs: Tensor,
        target: Tensor,
        alphas: Tensor,
        weights: Tensor,
        steps_per_pass: int,
        below: Any,
        autocast: Any,
        progress: Any,
    ) -> tuple[Tensor, Tensor | None]:
        """``A * sum_k w_k dF(alpha_k A)/dA`` for one layer of one group: ``[batch, head, query_pos, key_pos]``."""
        grad_sum = torch.zeros_like(probs)
        f_zero = None  # F(alpha = 0) when one of the computed steps is alpha = 0
        for start in range(0, len(alphas), steps_per_pass):
            a = alphas[start : start + steps_per_pass].to(probs)
            w = weights[start : start + steps_per_pass].to(probs)
            grad, p = self._step_gradients(ctrl, sub, layer, probs, target, a, below, autocast)
            grad_sum += torch.einsum("s,bs...->b...", w, grad)
            zero = (a == 0).nonzero()
            if zero.numel():
                f_zero = p[:, int(zero[0])]
            progress.update(1)
        return probs * grad_sum, f_zero

    def _step_gradients(
        self,
        ctrl: AttentionController,
        sub: dict[str, Tensor],
        layer: int,
        probs: Tensor,
        target: Tensor,
        alphas: Tensor,
        below: Any,
        autocast: Any,
    ) -> tuple[Tensor, Tensor]:
        """``dF(alpha A)/dA`` ``[batch, step, head, query_pos, key_pos]`` and ``F(alpha A)`` ``[batch, step]``.

        One batched forward/backward for all examples of ``sub`` and all ``alphas`` (``[step]``).
        """
        batch, steps = probs.shape[0], len(alphas)
        # [batch * step, head, query_pos, key_pos], example-major rows
        x = (alphas.view(1, steps, 1, 1, 1) * probs.unsqueeze(1)).flatten(0, 1).requires_grad_(True)
        logits = self._replaced_logits(ctrl, sub, layer, x, steps, below, autocast)  # [batch * step, classes]
        p = _target_prob(logits, target.repeat_interleave(steps))  # [batch * step]
        (grad,) = torch.autograd.grad(p.sum(), x)
        return grad.view(batch, steps, *grad.shape[1:]), p.detach().view(batch, steps)

    def _integrate_adaptive(
        self,
        ctrl: AttentionController,
        sub: dict[str, Tensor],
        layer: int,
        probs: Tensor,
        target: Tensor,
        f_full: Tensor,
        f_zero: Tensor,
        below: Any,
        autocast: Any,
        progress: Any,
        adaptive: _Adaptive,
        internal_batch_size: int | None,
        shard: tuple[int, int] | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Nested Gauss-Kronrod-Patterson integration of one layer of one group, refined per example.

        Returns:
            ``attr`` ``[batch, head, query_pos, key_pos]`` (this shard's part), nodes used ``[batch]``,
            achieved relative completeness error ``[batch]`` (from the summed terms) and the
            unconverged flags ``[batch]``.
        """
        batch = probs.shape[0]
        n_levels, alphas, weights = adaptive.n_levels, adaptive.alphas, adaptive.weights
        n_nodes = adaptive.sizes[-1]
        # acc[level]: sum_k weights[level, k] * dF/dA(alpha_k A) over the nodes computed so far
        acc = torch.zeros(n_levels, *probs.shape, dtype=probs.dtype, device=probs.device)
        h = torch.zeros(batch, n_nodes, dtype=torch.float64)  # [batch, node]: sum(A * grad) (this shard's nodes)
        f_zero = f_zero.double().cpu()
        target_diff = f_full - f_zero  # [batch]
        gap = completeness_scale(f_full, f_zero)
        final = torch.full((batch,), n_levels - 1, dtype=torch.long)
        error = torch.zeros(batch, dtype=torch.float64)
        flagged = torch.zeros(batch, dtype=torch.bool)
        active = torch.arange(batch)
        previous: Tensor | None = None
        start = 0
        for level in range(n_levels):
            stop = adaptive.sizes[level]
            nodes = list(range(start, stop))
            mine = [k for k in nodes if shard is None or (adaptive.next_item() % shard[1]) == shard[0]]
            self._integrate_nodes(
                ctrl,
                sub,
                layer,
                probs,
                target,
                active,
                mine,
                alphas,
                weights[level:],
                acc[level:],
                h,
                below,
                autocast,
                progress,
                internal_batch_size,
            )
            terms = h[active]
            if adaptive.reduce is not None:
                terms = adaptive.reduce(terms.to(probs.device)).double().cpu()
            estimate = terms[:, :stop] @ weights[level, :stop]  # [active]: the level's integral of h
            error[active] = (estimate - target_diff[active]).abs() / gap[active]
            if adaptive.self_convergence:  # rounding dominates the gap: stop where the quadrature converged
                change = (estimate - previous).abs() / gap[active] if previous is not None else None
                done = change <= adaptive.tol if change is not None else torch.zeros_like(estimate, dtype=torch.bool)
            else:
                done = error[active] <= adaptive.tol
            final[active[done]] = level
            if level == n_levels - 1:
                flagged[active[~done]] = True
            active, previous = active[~done], estimate[~done]
            start = stop
            if not len(active):
                break
        chosen = acc[final.to(acc.device), torch.arange(batch, device=acc.device)]  # [batch, head, q, k]
        used = torch.tensor(adaptive.sizes)[final]  # [batch]
        return probs * chosen, used, error, flagged

    def _integrate_nodes(
        self,
        ctrl: AttentionController,
        sub: dict[str, Tensor],
        layer: int,
        probs: Tensor,
        target: Tensor,
        rows: Tensor,
        nodes: list[int],
        alphas: Tensor,
        weights: Tensor,
        acc: Tensor,
        h: Tensor,
        below: Any,
        autocast: Any,
        progress: Any,
        internal_batch_size: int | None,
    ) -> None:
        """Gradients at ``nodes`` for the examples ``rows``: add them to ``acc`` (weighted per level) and ``h``.

        ``weights``/``acc`` hold the current and all finer levels (``[level, node]`` /
        ``[level, batch, head, q, k]``); ``h`` gets ``sum(A * grad)`` per example and node.
        """
        if not nodes or not len(rows):
            return
        dev_rows = rows.to(probs.device)
        part = {key: value.index_select(0, dev_rows) for key, value in sub.items()}
        a_rows = probs.index_select(0, dev_rows)  # [rows, head, q, k]
        tgt = target.index_select(0, dev_rows)
        below_rows = _take_rows(below, dev_rows)
        steps_per_pass = self._steps_per_pass(len(rows), len(nodes), internal_batch_size)
        for begin in range(0, len(nodes), steps_per_pass):
            chunk = nodes[begin : begin + steps_per_pass]
            grad, _ = self._step_gradients(
                ctrl, part, layer, a_rows, tgt, alphas[chunk].to(probs), below_rows, autocast
            )
            grad = grad.to(acc.dtype)  # [rows, step, head, q, k]
            w = weights[:, chunk].to(grad)  # [level, step]
            acc[:, dev_rows] += torch.einsum("ls,bs...->lb...", w, grad)
            h[rows[:, None], torch.tensor(chunk)[None, :]] = (
                (grad * a_rows.unsqueeze(1)).flatten(2).sum(-1).double().cpu()
            )  # [rows, step]
            progress.update(1)

    def _baseline_prob(
        self,
        ctrl: AttentionController,
        sub: dict[str, Tensor],
        layer: int,
        probs: Tensor,
        target: Tensor,
        below: Any,
        autocast: Any,
    ) -> Tensor:
        """``F_c(A^l := 0)`` per example: ``[batch]``."""
        with torch.no_grad():
            logits = self._replaced_logits(ctrl, sub, layer, torch.zeros_like(probs), 1, below, autocast)
            return _target_prob(logits, target)

    def _replaced_logits(
        self,
        ctrl: AttentionController,
        sub: dict[str, Tensor],
        layer: int,
        replacement: Tensor,
        steps: int,
        below: Any,
        autocast: Any,
    ) -> Tensor:
        """Logits with layer ``layer``'s probabilities replaced by ``replacement``.

        ``replacement`` is ``[batch * steps, head, query_pos, key_pos]`` (example-major); the
        hidden state entering ``layer`` is repeated ``steps`` times, and the layers below return
        their recorded clean outputs (``below`` = output of layer ``layer - 1``) instead of running.
        """
        with (
            ctrl._state(
                _replace_layer=layer,
                _replacement=replacement,
                _expand=steps,
                _skip_below=layer,
                _skip_output=below,
                use_sdpa=True,
            ),
            autocast(),
        ):
            return self._logits(sub)

    @staticmethod
    def _crop(batch: _Batch, example: int, attr: Tensor) -> Tensor:
        """Keep the real tokens of one example: ``[head, q, k] -> [head, n, n]`` on the CPU."""
        if batch.positions is not None:
            pos = batch.positions[example]
            return attr.index_select(1, pos).index_select(2, pos).cpu()
        if batch.seq_len is None:
            return attr.cpu()
        n = batch.lengths[example]
        return attr[:, :n, :n].cpu()


def attribute(model: nn.Module, inputs: Mapping[str, Any], **kwargs: Any) -> AttributionResult:
    """Functional form: ``AttentionIntegratedGradients(model).attribute(inputs, **kwargs)``."""
    return AttentionIntegratedGradients(model).attribute(inputs, **kwargs)


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode and ``requires_grad=False`` on all parameters; both restored on exit (per module and parameter).

    Gradients then flow only to inputs that ask for them (replaced or probed attention), and ``.grad`` of
    the parameters is never touched.
    """
    modes = [(m, m.training) for m in model.modules()]
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)
        for m, mode in modes:
            m.training = mode


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="AttAttr", unit="pass")
