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

``F`` is more general than a class probability: ``output`` selects the probability, log-probability
or logit, language models attribute a token at a position, several positions, a contrast of two
tokens, or any row-wise function of the output (:mod:`lightning_attattr.core.targets`). With
``baseline="uniform"`` the path starts at uniform attention ``U`` over the keys each query may
attend instead of zero: ``Attr(A) = (A - U) * integral_0^1 dF(U + alpha (A - U)) / dA d alpha``,
summing to ``F(A) - F(U)``; models with a norm right after attention (Gemma 2/3) need it.

How the work is organised (results never depend on it):

- examples are sorted by length and grouped so that padding is (almost) never computed;
- one clean forward per group captures every layer's probabilities and the outputs of the layers
  below each target layer; the integration passes repeat the model inputs (and those outputs) once
  per step and reuse the outputs instead of running those layers, so the layers below a target
  layer run once per example, not once per step (unless the model's attention controller says
  they cannot be skipped);
- the integration steps of all examples of a group share one batched forward/backward per
  target layer, split into passes of at most ``internal_batch_size`` rows, or of as many rows as
  the free memory of the model's device allows (:mod:`lightning_attattr.core.memory`); a pass that
  runs out of memory is halved and retried;
- the model's parameters are frozen and only the gradient with respect to the replaced
  probabilities is computed, so attribution never touches ``.grad``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

import torch
from torch import Tensor, nn

from lightning_attattr.core import memory
from lightning_attattr.core.adapter import AttentionController, attention_layers, attention_scope, layer_modules
from lightning_attattr.core.approximation import (
    AUTO,
    NESTED_LEVELS,
    Method,
    approximation_parameters,
    nested_rule,
    validate_method,
    validate_n_steps,
)
from lightning_attattr.core.checks import (
    ArgumentError,
    ArgumentTypeError,
    check_choice,
    check_int,
    check_layers,
    check_number,
)
from lightning_attattr.core.precision import (
    PRECISION_CODES,
    PRECISION_NAMES,
    Precision,
    first_precision,
    integrand_precision,
    stalled,
    validate_precision,
)
from lightning_attattr.core.reductions import Reduced, Reducer, Reduction, check_reduction, stack_sites
from lightning_attattr.core.targets import (
    CallTarget,
    GroupTarget,
    Output,
    bind_target,
    is_language_model,
    output_logits,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

#: Default integration rule and step count: the smallest Gauss-Legendre node count whose completeness
#: error stayed below 1e-3 with a factor-2 margin on every (example, layer) of a pretrained MiniLM
#: with an SST-2 head (measured by benchmarks/completeness.py: 8 nodes max 1.0e-3, 9: 8.5e-4,
#: 10: 4.6e-4; see README, "Choosing the integration rule").
DEFAULT_METHOD: Method = "gausslegendre"
#: Default ``n_steps``: adaptive integration to ``completeness_tol`` on every (example, layer) pair.
DEFAULT_N_STEPS: int | Literal["auto"] = AUTO
#: Default relative completeness tolerance of ``n_steps="auto"``.
DEFAULT_COMPLETENESS_TOL = 1e-3
#: The values ``max_steps`` takes with ``n_steps="auto"``: the nested levels, then larger budgets for subintervals.
MAX_STEPS: tuple[int, ...] = (*NESTED_LEVELS, 127, 255)
#: Pairs with ``|F(A) - F(A := 0)|`` below this are held to the absolute error ``tol * floor``
#: instead of a relative one (a relative error of a near-zero difference is fp32 noise).
COMPLETENESS_FLOOR = 1e-3

#: Baselines of the path integral: ``"zero"`` (``A := 0``, the paper's) or ``"uniform"``.
Baseline = Literal["zero", "uniform"]
BASELINES: tuple[Baseline, ...] = ("zero", "uniform")
# the zero baseline is degenerate for a pair when F(alpha A) over the nodes alpha in (0, 1] stays within this
# fraction of |F(A) - F(0)| (a norm right after attention: the output does not depend on the scale of A)
_FLAT_SHARE = 1e-2
# the flatness test looks at the nodes alpha >= _FLAT_FROM: after a norm, F(alpha A) is constant only where
# alpha^2 * mean(attention output^2) is well above the norm's epsilon, which the smallest nodes of a fine rule miss
_FLAT_FROM = 0.1
# relative spread of F over the nodes that counts as flat to rounding (F(0) is then evaluated to check)
_ROUNDING_FLAT = 1e-6
_AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)
# a new length bucket starts when padding would add more than this fraction of real tokens
_PAD_TOLERANCE = 0.1


@dataclass
class AttributionResult:
    """AttAttr scores of a batch of examples.

    Rows. A row is one example, except for language-model targets with several positions
    (:class:`~lightning_attattr.core.targets.Tokens`,
    :class:`~lightning_attattr.core.targets.Continuation`): there a row is one (example, position)
    pair, example-major (all positions of example 0, then of example 1, ...), :attr:`example` names
    each row's example and :attr:`position` its position. Every ``[batch]`` / ``[batch, layer]``
    field below has one entry per row.

    Attributes:
        attributions: one tensor per row, ``[layer, head, query_pos, key_pos]``, cropped to the
            example's real tokens (padding removed; special tokens such as [CLS]/[SEP] kept). The
            layer axis follows :attr:`layers`. Encoder-decoders (BART, T5): a site's map is
            ``[head, n_query, n_key]`` with the real decoder tokens on the query axis of decoder
            sites and on the key axis of decoder self-attention, the real input tokens elsewhere
            (``decoder.<i>.cross``: decoder queries, encoder keys); maps of different shapes are
            zero-padded at the end of their axes to the largest.
        layers: the attributed layer indices, in the order of the layer axis.
        target: ``[batch]`` class (or token id) whose output was attributed; for a
            :class:`~lightning_attattr.core.targets.Contrast` the token counted positively; -1
            for a callable target.
        prob: ``[batch]`` the attributed output ``F(A)`` in the unmodified model: the target's
            probability by default, its log-probability or logit with ``output``, the callable's value.
        baseline_prob: ``[batch, layer]`` ``F`` at the baseline (``A^l := 0``, or uniform attention
            with ``baseline="uniform"``), or ``None`` unless the convergence delta was requested.
        convergence_delta: ``[batch, layer]`` sum of the attributions minus
            ``prob - baseline_prob`` (completeness gap), or ``None`` unless requested.
        method: integration rule used.
        n_steps: number of integration steps, or ``"auto"`` for adaptive integration.
        n_steps_used: ``[batch, layer]`` integration nodes evaluated per pair (``n_steps`` for a
            fixed rule; with ``"auto"`` 3, 7, 15, 31 or 63 nested nodes, or 15 plus the nodes on
            subintervals for a pair continued there, up to ``max_steps``); the reduced-precision
            nodes of a pair that ``precision="auto"`` redid in fp32 are not counted.
        completeness_error: ``[batch, layer]`` achieved relative completeness error
            ``|sum attr - (F(A) - F(A := 0))| / max(|F(A) - F(A := 0)|, COMPLETENESS_FLOOR)``
            (complete also on a shard), or ``None`` (fixed rule without the convergence delta).
        unconverged: ``[batch, layer]`` bool, pairs that missed ``completeness_tol`` within
            ``max_steps`` (``"auto"`` only; a warning names how many), else ``None``.
        shard: ``(index, count)`` when this result is one shard of a split computation (see
            ``attribute(..., shard=...)``): its ``attributions`` and ``convergence_delta`` are
            partial sums that add up, over the ``count`` shards, to the full result
            (:func:`merge_shards`); ``None`` for a complete result.
        rows_per_pass: the most rows (examples x integration steps) one forward/backward pass was
            allowed: ``internal_batch_size`` or the planned size of the tightest (length group,
            layer) pair, after any halving for an out-of-memory error; the largest pass that ran
            when every pass was smaller than that (everything at once). ``None`` when no pass ran
            (a shard without work) or for results made before this field existed.
        precision_used: ``[batch, layer]`` int8, the precision each pair's integrand finished in, as
            codes of :data:`lightning_attattr.core.precision.PRECISION_CODES` (0 = fp32, 1 = tf32,
            2 = bf16; ``PRECISION_NAMES[code]`` names them); ``None`` when the call ran with
            ``precision="fp32"`` (everything in the model's precision).
        output: the attributed scalar: ``"prob"``, ``"logprob"``, ``"logit"``, or ``"callable"``.
        baseline: the path's start: ``"zero"`` or ``"uniform"``.
        example: ``[batch]`` the input example of each row, or ``None`` when the rows are the examples.
        position: ``[batch]`` real-token position of the attributed output (language models: 0 is
            the example's first real token), else ``None``.
        contrast: ``[batch]`` the subtracted token of a ``Contrast`` target, else ``None``.
        reduced: what ``attribute(..., reduction=...)`` kept of the maps
            (:class:`~lightning_attattr.core.reductions.Reduced`); ``attributions`` is then empty.
            ``None`` for full maps.
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
    rows_per_pass: int | None = None
    precision_used: Tensor | None = None
    output: str = "prob"
    baseline: str = "zero"
    example: Tensor | None = None
    position: Tensor | None = None
    contrast: Tensor | None = None
    reduced: Reduced | None = None

    def __len__(self) -> int:
        return len(self.target)

    def require(
        self, name: Literal["baseline_prob", "convergence_delta", "n_steps_used", "completeness_error"]
    ) -> Tensor:
        """The optional field ``name``, which ``attribute(..., return_convergence_delta=True)`` always fills.

        Raises:
            ValueError: the field is ``None`` (the result was computed without it).
        """
        value = getattr(self, name)
        if value is None:
            raise ValueError(
                f"Expected this result to hold `{name}`, but it is None: attribute with return_convergence_delta=True."
            )
        return value

    def __getitem__(self, index: int) -> Tensor:
        self._check_full()
        return self.attributions[index]

    def _check_full(self) -> None:
        if self.reduced is not None:
            raise ArgumentError(
                f"Expected a result with full maps, but this one was reduced by {self.reduced.reduction!r}: "
                "read `result.reduced`."
            )

    def padded(self) -> Tensor:
        """Stack the per-example maps, zero-padded, into ``[batch, layer, head, query_pos, key_pos]``."""
        self._check_full()
        n = max(max(a.shape[-2:]) for a in self.attributions)
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

    def expand(self, example: Tensor) -> _Batch:
        """The batch whose row ``r`` is the example ``example[r]`` (``[rows]`` on the CPU)."""
        rows = example.to(next(iter(self.tensors.values())).device)
        ex = example.tolist()
        return _Batch(
            {k: t.index_select(0, rows) for k, t in self.tensors.items()},
            len(ex),
            self.seq_len,
            [self.lengths[i] for i in ex],
            None if self.positions is None else [self.positions[i] for i in ex],
            None if self.labels is None else self.labels.index_select(0, rows),
        )

    @property
    def has_decoder_inputs(self) -> bool:
        """Whether the inputs hold an encoder-decoder model's decoder tokens (ids or embeddings)."""
        return "decoder_input_ids" in self.tensors or "decoder_inputs_embeds" in self.tensors

    @functools.cached_property
    def decoder_index(self) -> list[Tensor] | None:
        """Per example the indices (CPU) of its real decoder tokens, or ``None`` without decoder inputs.

        The real tokens are those of ``decoder_attention_mask`` when it is given, else all of them.
        """
        if not self.has_decoder_inputs:
            return None
        ids = self.tensors.get("decoder_input_ids")
        length = (ids if ids is not None else self.tensors["decoder_inputs_embeds"]).shape[1]
        mask = self.tensors.get("decoder_attention_mask")
        if mask is not None and tuple(mask.shape[:2]) == (self.size, length):
            return [mask[i].bool().nonzero().squeeze(1).cpu() for i in range(self.size)]
        return [torch.arange(length, device="cpu") for _ in range(self.size)]

    def token_axis(self) -> tuple[list[int], list[Tensor], list[Tensor]]:
        """Per example: real tokens on a language model's output axis, their indices, and their ids (CPU).

        The output axis is the decoder's for an encoder-decoder model (``decoder_input_ids`` with
        ``decoder_attention_mask``), else ``input_ids``'s (embeddings: indices only, ids empty).
        """
        decoder = self.decoder_index
        if decoder is not None:
            index, ids = decoder, self.tensors.get("decoder_input_ids")
        else:
            ids = self.tensors.get("input_ids")
            mask = self.tensors.get("attention_mask")
            length = (ids if ids is not None else self.tensors["inputs_embeds"]).shape[1]
            index = []
            for i in range(self.size):
                if mask is not None and tuple(mask.shape[:2]) == (self.size, length):
                    index.append(mask[i].bool().nonzero().squeeze(1).cpu())
                else:
                    index.append(torch.arange(length, device="cpu"))
        tokens = [ids[i].cpu().index_select(0, index[i]) if ids is not None else index[i][:0] for i in range(self.size)]
        return [len(i) for i in index], index, tokens

    def crop(self, example: int, attr: Tensor, on_decoder: tuple[bool, bool] = (False, False)) -> Tensor:
        """Keep the real tokens of one example: ``[head, q, k] -> [head, n_q, n_k]`` on the CPU.

        ``on_decoder``: whether the query and the key axis are the decoder's (an encoder-decoder's
        decoder self- and cross-attention) rather than the inputs'; without decoder inputs (the
        model derives its decoder tokens from the inputs, as BART's classifier does) both follow
        the inputs.
        """
        return self.real(example, attr, on_decoder).cpu()

    def real(self, example: int, attr: Tensor, on_decoder: tuple[bool, bool] = (False, False)) -> Tensor:
        """:meth:`crop` on ``attr``'s device."""
        if any(on_decoder) and self.decoder_index is not None:
            decoder = self.decoder_index[example].to(attr.device)
            inputs = self.positions[example] if self.positions is not None else None
            if inputs is None:
                inputs = torch.arange(self.lengths[example], device=attr.device)
            query, key = (decoder if flag else inputs.to(attr.device) for flag in on_decoder)
            return attr.index_select(1, query).index_select(2, key)
        if self.positions is not None:
            pos = self.positions[example]
            return attr.index_select(1, pos).index_select(2, pos)
        if self.seq_len is None:
            return attr
        n = self.lengths[example]
        return attr[:, :n, :n]


def _as_tensor(name: str, value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value
    try:
        return torch.as_tensor(value, device="cpu")
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
        floating-point summation order (a reduction's values are summed too).

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

    def computation(s: AttributionResult) -> tuple[Any, ...]:
        return s.layers, s.method, s.n_steps, len(s), s.reduced is None

    for other in shards[1:]:
        if computation(other) != computation(first) or not torch.equal(other.target, first.target):
            raise ArgumentError(
                "Expected shards of one computation (same inputs, layers, target, method, n_steps and reduction)."
            )
    deltas = [s.convergence_delta for s in shards if s.convergence_delta is not None]
    sizes = [s.rows_per_pass for s in shards if s.rows_per_pass is not None]
    return AttributionResult(
        # sum() of tensors: typeshed adds the 0 of an empty sum to the type
        attributions=[cast(Tensor, sum(s.attributions[i] for s in shards)) for i in range(len(first.attributions))],
        layers=first.layers,
        target=first.target,
        prob=first.prob,
        baseline_prob=first.baseline_prob,
        convergence_delta=cast(Tensor, sum(deltas)) if len(deltas) == len(shards) else None,
        method=first.method,
        n_steps=first.n_steps,
        n_steps_used=first.n_steps_used,  # decided on summed values: the same on every shard
        completeness_error=first.completeness_error,
        unconverged=first.unconverged,
        rows_per_pass=min(sizes) if sizes else None,
        precision_used=first.precision_used,  # decided on summed values: the same on every shard
        output=first.output,
        baseline=first.baseline,
        example=first.example,
        position=first.position,
        contrast=first.contrast,
        reduced=None if first.reduced is None else Reduced.merge([s.reduced for s in shards if s.reduced is not None]),
    )


def _plan_groups(batch: _Batch, max_examples: Callable[[list[int]], int]) -> list[list[int]]:
    """Group examples of similar length (sorted ascending), at most ``max_examples(bucket)`` per group.

    ``max_examples`` gets the examples of one length bucket (which share a sequence length).
    """
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
    groups: list[list[int]] = []
    for bucket in buckets:
        limit = max_examples(bucket)
        groups.extend(bucket[k : k + limit] for k in range(0, len(bucket), limit))
    return groups


def _subset(batch: _Batch, index: list[int]) -> dict[str, Tensor]:
    """Inputs of the examples ``index``, trimmed to their longest real length when padding is a suffix."""
    rows = torch.tensor(index, device=next(iter(batch.tensors.values())).device)
    n = None
    if batch.seq_len is not None and batch.positions is None:
        n = max(batch.lengths[i] for i in index)
    out = {}
    for key, t in batch.tensors.items():
        t = t.index_select(0, rows)
        # the decoder inputs of an encoder-decoder have their own length: only the inputs' axis is trimmed
        if n is not None and t.dim() >= 2 and t.shape[1] == batch.seq_len and not key.startswith("decoder_"):
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
    max_steps: int = MAX_STEPS[-1]  # the most nodes one example may use
    item: int = 0  # work-item counter: (group, layer, level, node) items are dealt round-robin to shards

    def __post_init__(self) -> None:
        rules = [nested_rule(level) for level in range(self.n_levels)]
        self.sizes = [len(alphas) for alphas, _ in rules]  # nodes per level
        self.alphas = torch.tensor(
            rules[-1][0], dtype=torch.float64, device="cpu"
        )  # [node]: level l uses the first sizes[l]
        self.weights = torch.zeros(self.n_levels, self.sizes[-1], dtype=torch.float64, device="cpu")  # [level, node]
        for level, (_, w) in enumerate(rules):
            self.weights[level, : len(w)] = torch.tensor(w, dtype=torch.float64, device="cpu")

    def next_item(self) -> int:
        self.item += 1
        return self.item - 1

    def owned(self, nodes: range, shard: tuple[int, int] | None) -> list[int]:
        """The ``nodes`` this shard computes: each node is the next work item, dealt round-robin."""
        return [k for k in nodes if shard is None or (self.next_item() % shard[1]) == shard[0]]


def completeness_scale(prob: Tensor, baseline_prob: Tensor, bounded: bool = True) -> Tensor:
    """``max(|F(A) - F(A := 0)|, floor)``: what a completeness gap is divided by.

    The relative completeness error that ``n_steps="auto"`` holds below its tolerance, that
    :attr:`AttributionResult.completeness_error` reports and the callbacks log, is
    ``|convergence_delta| / completeness_scale(prob, baseline_prob)`` (shapes broadcast).

    Args:
        prob: ``F(A)``.
        baseline_prob: ``F`` at the baseline.
        bounded: the output is a probability (or a difference of two), in ``[-1, 1]``: the floor
            is :data:`COMPLETENESS_FLOOR`. ``False`` for unbounded outputs (logits,
            log-probabilities, callables): the floor is ``COMPLETENESS_FLOOR * max(1, |F(A)|,
            |F(baseline)|)``, since the rounding error of a large logit grows with its size.

    Example:
        >>> completeness_scale(torch.tensor([0.5]), torch.tensor([0.4999]))
        tensor([0.0010])
        >>> completeness_scale(torch.tensor([20.0]), torch.tensor([19.999]), bounded=False)
        tensor([0.0200])
    """
    if bounded:
        return (prob - baseline_prob).abs().clamp_min(COMPLETENESS_FLOOR)
    size = torch.maximum(prob.abs(), baseline_prob.abs()).clamp_min(1.0)
    return torch.maximum((prob - baseline_prob).abs(), COMPLETENESS_FLOOR * size)


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
    return output_logits(model(**inputs))


def _repeat_rows(value: Any, examples: int, steps: int) -> Any:
    """``value`` (inputs or a layer output) with every ``[examples, ...]`` tensor repeated ``steps`` times per row.

    Example-major: row ``i * steps + k`` is example ``i``. Tensors whose first axis is not the
    examples' (e.g. a position bias shared by the batch) are left as they are.
    """
    if steps == 1:
        return value
    if isinstance(value, Tensor):
        return value.repeat_interleave(steps, dim=0) if value.dim() > 0 and value.shape[0] == examples else value
    if isinstance(value, (tuple, list)):
        return type(value)(_repeat_rows(v, examples, steps) for v in value)
    if isinstance(value, dict):
        return {k: _repeat_rows(v, examples, steps) for k, v in value.items()}
    return value


def uniform_attention(probs: Tensor) -> Tensor:
    """Uniform attention over the keys each query may attend: ``[..., query_pos, key_pos]`` like ``probs``.

    The keys a query may attend are the support of its clean probabilities (``probs > 0``):
    padding and causal masks give exactly zero probability, and a softmax over allowed keys is
    positive unless a score is more than about 100 (fp32) below the row's largest. Rows without
    support (a pruned head) stay zero.

    Example:
        >>> uniform_attention(torch.tensor([[0.7, 0.3, 0.0], [0.2, 0.2, 0.6]]))
        tensor([[0.5000, 0.5000, 0.0000],
                [0.3333, 0.3333, 0.3333]])
    """
    support = (probs > 0).to(probs.dtype)
    return support / support.sum(-1, keepdim=True).clamp_min(1)


# ----------------------------------------------------------------- one attribute() call
# _Settings (checked arguments) -> _Run (model, scope controller, progress) -> per length group one clean pass,
# then per attributed layer one _LayerIntegration (the state of that (group, layer) pair) integrated by the
# fixed rule or refined by the nested rule (_Refinement) -> _Outputs (cropped maps, gaps) -> AttributionResult.


def _steps_per_pass(examples: int, n_steps: int, internal_batch_size: int | None) -> int:
    """Integration steps per forward/backward so that ``examples x steps`` stays within ``internal_batch_size``.

    ``internal_batch_size`` is the row limit of the pass (given, or planned by :class:`_RowPlan`);
    ``None`` takes all ``n_steps`` at once.
    """
    if internal_batch_size is None:
        return n_steps
    return max(1, min(n_steps, internal_batch_size // examples))


@dataclass
class _RowPlan:
    """Rows (examples x integration steps) per forward/backward pass of one ``attribute`` call.

    An explicit ``internal_batch_size`` is used as given. Without it the rows are planned per
    (length group, layer) from ``budget``, a share of the free memory of the model's device, and
    the estimated bytes per row and per example (:mod:`lightning_attattr.core.memory`). A pass that
    runs out of memory lowers ``cap`` to half its rows for the rest of the call.
    """

    fixed: int | None  # internal_batch_size, or None to plan
    budget: int  # bytes a planned call may use (0 with `fixed`)
    config: Any  # the model's config: its dimensions
    n_layers: int
    lowest: int  # the lowest attributed layer: the most layers per row
    n_attributed: int  # attributed layers: their maps stay allocated for the whole group
    accumulators: int  # gradient sums per (group, layer) pair
    dtype: torch.dtype  # compute dtype
    cap: int | None = None  # no pass takes more rows once one ran out of memory
    ceiling: int | None = None  # planned passes take no more rows (memory.max_planned_rows of the device)
    failed: int | None = None  # rows of the first pass that ran out of memory
    tightest: int | None = None  # the smallest limit a pass ran under
    largest: int = 0  # the most rows a pass ran

    def tokens(self, batch: _Batch, index: list[int]) -> int:
        """Sequence length of the examples ``index`` in their passes (the longest, for suffix padding)."""
        if batch.seq_len is None:  # pixel inputs: one token per patch and [CLS]
            height, width = batch.tensors["pixel_values"].shape[-2:]
            patch = getattr(self.config, "patch_size", 16)
            ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)[:2]
            return (int(height) // ph) * (int(width) // pw) + 1
        if batch.positions is not None:  # padding inside the sequence: passes keep the full length
            return batch.seq_len
        return max(batch.lengths[i] for i in index)

    def _row(self, n_tokens: int, layer: int) -> int:
        return memory.row_bytes(self.config, n_tokens, self.n_layers - layer, self.dtype)

    def _state(self, n_tokens: int) -> int:
        return memory.state_bytes(self.config, n_tokens, self.n_attributed, self.accumulators, self.dtype)

    def max_examples(self, batch: _Batch, bucket: list[int]) -> int:
        """The most examples of the length bucket ``bucket`` one group may hold."""
        if self.fixed is not None:
            return self.fixed
        n_tokens = self.tokens(batch, bucket)
        return memory.plan_examples(self.budget, self._row(n_tokens, self.lowest), self._state(n_tokens))

    def limit(self, examples: int, n_tokens: int, layer: int) -> int:
        """Row limit of a pass of ``layer`` over a group of ``examples`` with ``n_tokens`` tokens."""
        if self.fixed is not None:
            rows = self.fixed
        else:
            rows = memory.plan_rows(self.budget, self._row(n_tokens, layer), examples, self._state(n_tokens))
            if self.ceiling is not None:
                rows = min(rows, self.ceiling)
        return rows if self.cap is None else min(rows, self.cap)

    def ran(self, limit: int, rows: int) -> None:
        """Record a pass of ``rows`` rows under the row limit ``limit``."""
        self.tightest = limit if self.tightest is None else min(self.tightest, limit)
        self.largest = max(self.largest, rows)

    def halve(self, rows: int) -> None:
        """A pass of ``rows`` rows ran out of memory: no later pass of this call takes more than half of them."""
        self.failed = rows if self.failed is None else self.failed
        self.cap = max(1, rows // 2)

    @property
    def rows_per_pass(self) -> int | None:
        """The value of :attr:`AttributionResult.rows_per_pass`."""
        return None if self.tightest is None else min(self.tightest, self.largest)


@dataclass
class _Settings:
    """The checked arguments of one :meth:`AttentionIntegratedGradients.attribute` call."""

    layers: tuple[int, ...]
    method: str
    alphas: Tensor  # [step] float64: the fixed rule's nodes (empty with n_steps="auto")
    weights: Tensor  # [step] float64: their weights
    adaptive: _Adaptive | None  # the nested rule of n_steps="auto"
    internal_batch_size: int | None
    shard: tuple[int, int] | None
    want_delta: bool  # F(A := 0) and the completeness gap per pair (n_steps="auto" needs them anyway)
    autocast_dtype: torch.dtype | None
    memory_budget: int | float | None = None  # bytes or share of the free memory for planned passes
    precision: Precision = "fp32"  # of the integrand's passes; F(A), F(0) and the sums stay in fp32
    completeness_tol: float = DEFAULT_COMPLETENESS_TOL  # precision="auto": pairs above it are recomputed in fp32
    baseline: Baseline = "zero"  # the path's start: A := 0, or uniform attention over the allowed keys
    bounded: bool = True  # the attributed output is a probability (see completeness_scale)
    reduction: Reduction | None = None  # reduce each (group, layer) pair's maps as soon as they are done

    @property
    def n_steps(self) -> int | str:
        return len(self.alphas) if self.adaptive is None else AUTO


_Rule = tuple[str, list[float], list[float], _Adaptive | None]  # method, nodes, weights, nested rule


def _check_rule(
    method: str,
    n_steps: int | str,
    completeness_tol: float,
    max_steps: int,
    reduce: Callable[[Tensor], Tensor] | None,
    autocast_dtype: torch.dtype | None,
) -> _Rule:
    """Check the integration rule: a fixed rule's nodes and weights, or the nested rule of ``n_steps="auto"``."""
    method = validate_method(method)
    n_steps = validate_n_steps(n_steps, allow_auto=True)
    if n_steps != AUTO:
        alphas, weights = approximation_parameters(method, n_steps)
        return method, alphas, weights, None
    if method != "gausslegendre":
        raise ArgumentError(
            f"Expected `method='gausslegendre'` with `n_steps='auto'` (adaptive integration refines nested "
            f"Gauss-Kronrod-Patterson nodes), but got method={method!r}; give an int `n_steps` for {method!r}."
        )
    tol = check_number("completeness_tol", completeness_tol, 0.0, 1.0, low_open=True)
    if max_steps not in MAX_STEPS or isinstance(max_steps, bool):
        raise ArgumentError(f"Expected `max_steps` to be one of {list(MAX_STEPS)}, but got {max_steps!r}.")
    if reduce is not None and not callable(reduce):
        raise ArgumentTypeError(f"Expected `reduce` to be a function or None, but got {reduce!r}.")
    levels = NESTED_LEVELS.index(min(max_steps, NESTED_LEVELS[-1])) + 1
    return method, [], [], _Adaptive(tol, levels, reduce, autocast_dtype is not None, max_steps)


def _check_settings(
    layers: tuple[int, ...],
    rule: _Rule,
    internal_batch_size: int | None,
    shard: tuple[int, int] | None,
    want_delta: bool,
    autocast_dtype: torch.dtype | None,
    memory_budget: int | float | None = None,
    precision: object = "fp32",
    completeness_tol: float = DEFAULT_COMPLETENESS_TOL,
    reduction: object = None,
) -> _Settings:
    """Check the arguments that shape the passes and bundle them with the layers and the rule."""
    method, alphas, weights, adaptive = rule
    if internal_batch_size is not None:
        check_int("internal_batch_size", internal_batch_size, 1)
    memory_budget = memory.check_memory_budget(memory_budget)
    if memory_budget is not None and internal_batch_size is not None:
        raise ArgumentError(
            f"Expected `memory_budget` to be None when `internal_batch_size` is given (an explicit size is "
            f"used as given), but got memory_budget={memory_budget!r} with internal_batch_size={internal_batch_size}."
        )
    shard = _validate_shard(shard)
    checked_reduction = check_reduction(reduction, 1 if shard is None else shard[1])
    if adaptive is not None and shard is not None and shard[1] > 1 and adaptive.reduce is None:
        raise ArgumentError(
            "Expected `reduce` (a function summing a tensor over the shards) with `n_steps='auto'` and "
            f"`shard`={shard}: the refinement decisions need the summed completeness terms."
        )
    if autocast_dtype is not None and autocast_dtype not in _AUTOCAST_DTYPES:
        raise ArgumentError(
            f"Expected `autocast_dtype` to be None or one of {list(_AUTOCAST_DTYPES)}, but got {autocast_dtype!r}."
        )
    checked = validate_precision(precision, autocast_dtype)
    if checked == "auto" and adaptive is None and shard is not None and shard[1] > 1:
        raise ArgumentError(
            f"Expected `shard` to be None with `precision='auto'` and a fixed `n_steps` (which pairs to recompute "
            f"in fp32 needs the summed completeness gap), but got shard={shard}; use n_steps='auto' with `reduce`."
        )
    nodes = torch.tensor(alphas, dtype=torch.float64, device="cpu")
    steps = torch.tensor(weights, dtype=torch.float64, device="cpu")
    want_delta = want_delta or adaptive is not None or checked == "auto"
    if checked == "auto":
        completeness_tol = check_number("completeness_tol", completeness_tol, 0.0, 1.0, low_open=True)
    return _Settings(
        layers,
        method,
        nodes,
        steps,
        adaptive,
        internal_batch_size,
        shard,
        want_delta,
        autocast_dtype,
        memory_budget,
        checked,
        completeness_tol,
        reduction=checked_reduction,
    )


def _plan_steps(
    batch: _Batch, groups: list[list[int]], settings: _Settings, plan: _RowPlan
) -> tuple[list[list[list[int]]] | None, int | None]:
    """A fixed rule's steps that this shard computes per (group, layer), and the passes they take.

    ``(None, None)`` with ``n_steps="auto"``: the number of passes depends on how many pairs need refining.
    """
    if settings.adaptive is not None:
        return None, None
    n_steps = len(settings.alphas)
    owned = _owned_steps(len(groups), len(settings.layers), n_steps, settings.shard)
    total = 0
    for gi, g in enumerate(groups):
        n_tokens = plan.tokens(batch, g)
        for li, layer in enumerate(settings.layers):
            per_pass = _steps_per_pass(len(g), n_steps, plan.limit(len(g), n_tokens, layer))
            total += math.ceil(len(owned[gi][li]) / per_pass)
    return owned, total


# consume(rows, begin, end, grad, prob) of _Run.passes: one pass's result
_Consume = Callable[[Tensor | None, int, int, Tensor, Tensor], None]


class _Dropped(dict[int, Tensor]):
    """A capture store that keeps nothing.

    The clean pass of a reduced call then computes the attributed layers' probabilities as a full
    call does (same kernels, same recorded outputs) without holding them.
    """

    def __setitem__(self, key: int, value: Tensor) -> None:
        pass


@dataclass
class _Run:
    """What every forward of one ``attribute`` call shares: the model, its scope's controller, the settings."""

    model: nn.Module
    ctrl: AttentionController
    settings: _Settings
    progress: Any
    plan: _RowPlan

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast context of every pass (a no-op without ``autocast_dtype``)."""
        dtype = self.settings.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(next(self.model.parameters()).device.type, dtype=dtype)

    @property
    def can_skip_below(self) -> bool:
        """Whether the integration passes may reuse the recorded outputs of the layers below the target layer."""
        return self.ctrl.can_skip_below

    def clean_pass(
        self, inputs: dict[str, Tensor], model_kwargs: dict[str, Any]
    ) -> tuple[dict[int, Tensor], dict[int, Any], Any]:
        """One unmodified forward: probabilities of the attributed layers, outputs of the layers below them, outputs.

        With a reduction the probabilities are not kept (:meth:`layer_probs` recomputes one layer's at a time).
        """
        layers = self.settings.layers
        captured: dict[int, Tensor] = {} if self.settings.reduction is None else _Dropped()
        recorded: dict[int, Any] = {}
        record = frozenset(layer - 1 for layer in layers if layer > 0) if self.can_skip_below else frozenset()
        with (
            torch.no_grad(),
            self.ctrl._state(
                _capture=frozenset(layers), _captured=captured, _record=record, _recorded=recorded, use_sdpa=True
            ),
            self.autocast(),
        ):
            outputs = self.model(**inputs, **model_kwargs)
        self.ctrl.check_all_layers_ran()
        return captured, recorded, outputs

    def layer_probs(self, inputs: dict[str, Tensor], target: GroupTarget, layer: int, below: Any) -> Tensor:
        """``layer``'s clean probabilities ``[batch, head, query_pos, key_pos]``, from the recorded output ``below``.

        The same computation as the clean pass's capture (the layer's input is the recorded one), run
        from ``layer`` upwards without gradients; the whole model where the layers below cannot be
        skipped (``can_skip_below``) or ``layer`` is the first.
        """
        captured: dict[int, Tensor] = {}
        skip = self.can_skip_below and below is not None
        with (
            torch.no_grad(),
            self.ctrl._state(
                _capture=frozenset({layer}),
                _captured=captured,
                _skip_below=layer if skip else 0,
                _skip_output=below if skip else None,
                use_sdpa=True,
            ),
            self.autocast(),
        ):
            self.model(**inputs, **target.model_kwargs)
        return captured[layer]

    def passes(self, pair: _LayerIntegration, alphas: Tensor, group: int, consume: _Consume) -> None:
        """``pair.gradients`` at every ``alphas`` (``[step]`` float64), in passes within the row limit.

        ``alphas`` may also be ``[example, step]``: each example's own steps (the pieces of
        :meth:`_Refinement.subdivide`).

        ``consume(rows, begin, end, grad, prob)`` receives each pass: the gradients
        ``[rows, end - begin, head, query_pos, key_pos]`` and probabilities ``[rows, end - begin]`` at
        ``alphas[begin:end]`` for the examples ``rows`` of ``pair`` (``[rows]`` indices on the CPU),
        or for all of them when ``rows`` is ``None``. A pass takes every example and as many steps
        as the limit allows; only after an out-of-memory error leaves less than one step per
        example does a pass take one step for a slice of the examples. ``group``: examples whose
        state stays allocated (the length group, which may be more than ``pair`` holds).
        """
        examples, n_tokens, n_steps = len(pair.probs), pair.probs.shape[-1], alphas.shape[-1]
        step, first = 0, 0  # next step; next example of a step split over several passes
        while step < n_steps:
            limit = self.plan.limit(group, n_tokens, pair.layer)
            rows: Tensor | None = None
            if first == 0 and limit >= examples:
                end, stop = min(n_steps, step + _steps_per_pass(examples, n_steps, limit)), examples
            else:
                end, stop = step + 1, min(examples, first + limit)
                rows = torch.arange(first, stop, device="cpu")
            size = (stop - first) * (end - step)
            part = pair if rows is None else pair.rows(rows)
            chunk = alphas[..., step:end] if rows is None or alphas.dim() == 1 else alphas[rows, step:end]
            result = self._attempt(part, chunk.to(pair.probs), size)
            if result is None:  # out of memory: the limit was halved, plan this pass again
                continue
            self.plan.ran(limit, size)
            consume(rows, step, end, *result)
            self.progress.update(1)
            step, first = (end, 0) if stop == examples else (step, stop)

    def _attempt(self, pair: _LayerIntegration, alphas: Tensor, size: int) -> tuple[Tensor, Tensor] | None:
        """``pair.gradients(alphas)``, or ``None`` after halving the row limit when ``size`` rows ran out of memory.

        Raises:
            torch.OutOfMemoryError, RuntimeError: a single row does not fit (the original error is chained).
        """
        try:
            return pair.gradients(alphas)
        except RuntimeError as err:
            if not memory.is_out_of_memory(err):
                raise
            if size <= 1:
                error = memory.OutOfMemoryError if isinstance(err, memory.OutOfMemoryError) else RuntimeError
                raise error(
                    f"Out of memory in a pass of a single row (one example at one integration step) of layer "
                    f"{pair.layer} with {pair.probs.shape[-1]} tokens on {pair.probs.device}: nothing smaller to "
                    "retry; free memory on the device, attribute shorter inputs, or pass autocast_dtype=torch.bfloat16."
                ) from err
        # outside the except block: the failed pass's tensors are released before the retry
        self.plan.halve(size)
        return None

    def attribute_group(
        self, index: list[int], targets: CallTarget, owned: list[list[int]] | None, out: _Outputs
    ) -> None:
        """The clean pass of the examples ``index``, then the integration of every attributed layer."""
        inputs = _subset(out.batch, index)
        device = next(iter(inputs.values())).device
        absolute = None
        if targets.position is not None:  # real-token positions -> indices in the group's (trimmed) inputs
            absolute = torch.stack([out.token_index[i][targets.position[i]] for i in index])
        target = targets.group(index, absolute, device)
        probs, recorded, outputs = self.clean_pass(inputs, target.model_kwargs)
        target.resolve(outputs)
        rows = torch.arange(len(index), device=device)
        with torch.no_grad():
            f_full = target.scalar(outputs, rows).detach().double().cpu()
        for li, layer in enumerate(self.settings.layers):
            below = recorded.get(layer - 1)
            a = probs[layer] if self.settings.reduction is None else self.layer_probs(inputs, target, layer, below)
            pair = _LayerIntegration(
                self,
                inputs,
                layer,
                a,
                target,
                below,
                f_full,
                precision=first_precision(self.settings.precision, device),
                base=uniform_attention(a) if self.settings.baseline == "uniform" else None,
            )
            refinement = pair.integrate([] if owned is None else owned[li])
            out.add(index, li, pair, refinement)
            del a, pair, refinement  # a reduced call holds one layer's maps at a time
        out.target[index] = target.labels(len(index)).cpu()
        out.prob[index] = f_full


@dataclass
class _LayerIntegration:
    """The integral of one attributed layer over one length group: the state both integration rules work on.

    The fixed rule (:meth:`fixed_rule`) and the nested rule of ``n_steps="auto"`` (:class:`_Refinement`)
    evaluate ``dF(B + alpha (A - B))/dA`` through :meth:`gradients` and leave ``attr`` and ``f_zero``
    here; the baseline ``B`` is zero (``base=None``) or uniform attention.
    """

    run: _Run
    inputs: dict[str, Tensor]  # the group's model inputs
    layer: int
    probs: Tensor  # A: [batch, head, query_pos, key_pos], the layer's probabilities in the clean pass
    target: GroupTarget  # what is attributed, per example
    below: Any  # recorded output of layer ``layer - 1`` (None for layer 0): the layers below do not run again
    f_full: Tensor  # F(A): [batch] float64 on the CPU
    f_zero: Tensor | None = None  # F(baseline): [batch], once evaluated
    attr: Tensor | None = None  # (A - B) * sum_k w_k dF/dA at B + alpha_k (A - B): [batch, head, query_pos, key_pos]
    precision: str = "fp32"  # of the integrand's passes (gradients); fp32, tf32 or bf16
    modes: Tensor | None = None  # [batch] long: PRECISION_CODES of the precision each example finished in
    base: Tensor | None = None  # B: [batch, head, query_pos, key_pos], or None for the zero baseline
    spread: Tensor | None = None  # [batch] float64: max |F(alpha A) - F(A)|, fp32 nodes alpha >= 0.1 (nan: none)
    interior: bool = False  # a node with 0.1 <= alpha < 1 went into `spread`
    degenerate: Tensor | None = None  # [batch] bool: F flat in alpha on (0, 1] but F(0) != F(A) (zero baseline)

    def __post_init__(self) -> None:
        self.diff = self.probs if self.base is None else self.probs - self.base  # A - B

    def integrate(self, steps: list[int]) -> _Refinement | None:
        """Fill ``attr`` (and ``f_zero`` where needed) by the call's rule; the nested rule's accumulators or None."""
        settings = self.run.settings
        self.modes = torch.full((len(self.probs),), PRECISION_CODES[self.precision], dtype=torch.long, device="cpu")
        if settings.adaptive is not None:
            self.f_zero = self.zero_prob()
            refinement = _Refinement.start(self, settings.adaptive)
            self.attr = refinement.refine()
            self.check_degenerate()
            if self.degenerate is not None:  # a transition close to 0 that the pieces resolved is not degenerate
                self.degenerate &= refinement.flagged
            return refinement
        self.fixed_rule(steps)
        if settings.want_delta and self.f_zero is None:
            self.f_zero = self.zero_prob()
        if settings.precision == "auto":
            self.recompute_missed(steps)
        self.check_degenerate()
        return None

    def note(self, rows: Tensor | None, alphas: Tensor, values: Tensor, precision: str) -> None:
        """Record ``F`` (``values``, ``[rows, step]``) at ``alphas`` (``[step]``) of the examples ``rows``.

        Feeds the flatness test of :meth:`check_degenerate`; only fp32 values count.
        """
        keep = alphas >= _FLAT_FROM
        if precision != "fp32" or not bool(keep.any()):
            return
        self.interior = self.interior or bool((keep & (alphas < 1)).any())
        index = torch.arange(len(self.probs), device="cpu") if rows is None else rows.cpu()
        spread = (values[:, keep.to(values.device)].double().cpu() - self.f_full[index][:, None]).abs().amax(1)
        if self.spread is None:
            # nan: no fp32 node yet (never flat)
            self.spread = torch.full((len(self.probs),), math.nan, dtype=torch.float64, device="cpu")
        self.spread[index] = torch.fmax(self.spread[index], spread)

    def check_degenerate(self) -> None:
        """Zero baseline: flag the examples whose ``F(alpha A)`` is flat in ``alpha`` while ``F(0)`` differs.

        Flat: over the evaluated nodes ``alpha >= 0.1`` (and ``alpha = 1``), ``F`` stays within 1% of
        ``|F(A) - F(0)|``.

        Uses ``F(0)`` when the call evaluated it (``n_steps="auto"``, the convergence delta, a rule
        with ``alpha = 0``); otherwise evaluates it only when some example is flat to rounding.
        """
        if self.base is not None or self.spread is None or not self.interior:
            return
        size = torch.maximum(self.f_full.abs(), torch.ones_like(self.f_full))
        if self.f_zero is None:
            if not bool((self.spread <= _ROUNDING_FLAT * size).any()):
                return
            self.f_zero = self.zero_prob()
        gap = (self.f_full - self.f_zero.double().cpu()).abs()
        self.degenerate = (self.spread <= _FLAT_SHARE * gap) & (gap > _ROUNDING_FLAT * size)

    def recompute_missed(self, steps: list[int]) -> None:
        """``precision="auto"``, fixed rule: recompute in fp32, at the same nodes, the examples above the tolerance."""
        assert self.attr is not None and self.f_zero is not None and self.modes is not None
        f_zero = self.f_zero.double().cpu()
        gap = self.attr.flatten(1).sum(1).double().cpu() - (self.f_full - f_zero)  # [batch]
        error = gap.abs() / completeness_scale(self.f_full, f_zero, self.run.settings.bounded)
        missed = (error > self.run.settings.completeness_tol).nonzero().squeeze(1)  # [missed] on the CPU
        if not len(missed):
            return
        again = self.rows(missed, "fp32")
        again.fixed_rule(steps)
        assert again.attr is not None
        self.attr[missed.to(self.attr.device)] = again.attr
        self.modes[missed] = PRECISION_CODES["fp32"]

    def fixed_rule(self, steps: list[int]) -> None:
        """``(A - B) * sum_k w_k dF/dA`` over the fixed rule's ``steps``; ``F(B)`` when ``alpha = 0`` is one."""
        settings = self.run.settings
        mine = torch.tensor(steps, dtype=torch.long, device="cpu")
        alphas, weights = settings.alphas[mine], settings.weights[mine]
        grad_sum = torch.zeros_like(self.probs)  # [batch, head, query_pos, key_pos]

        def consume(rows: Tensor | None, begin: int, end: int, grad: Tensor, p: Tensor) -> None:
            a, w = alphas[begin:end].to(self.probs), weights[begin:end].to(self.probs)
            part = torch.einsum("s,bs...->b...", w, grad)
            if rows is None:
                grad_sum.add_(part)
            else:
                grad_sum.index_add_(0, rows.to(grad_sum.device), part)
            self.note(rows, alphas[begin:end], p, self.precision)
            zero = (a == 0).nonzero()
            if zero.numel() and self.precision == "fp32":  # F(0) of a reduced-precision pass is not kept
                if rows is None:
                    self.f_zero = p[:, int(zero[0])]
                else:
                    if self.f_zero is None:
                        self.f_zero = p.new_zeros(len(self.probs))
                    self.f_zero[rows.to(p.device)] = p[:, int(zero[0])]

        self.run.passes(self, alphas, len(self.probs), consume)
        self.attr = self.diff * grad_sum

    def gradients(self, alphas: Tensor) -> tuple[Tensor, Tensor]:
        """``dF/dA`` at ``B + alpha (A - B)``, ``[batch, step, head, query_pos, key_pos]``, and ``F`` there.

        ``F`` is ``[batch, step]``.

        One batched forward/backward for all examples and all ``alphas`` (``[step]``, or
        ``[batch, step]``: each example's own).
        """
        batch, steps = self.probs.shape[0], alphas.shape[-1]
        x = self.path_points(alphas).flatten(0, 1).requires_grad_(True)  # [batch * step, head, q, k], example-major
        rows = torch.arange(batch, device=self.probs.device).repeat_interleave(steps)  # [batch * step]
        with integrand_precision(self.precision, self.probs.device):
            outputs = self.replaced_outputs(x, steps)
            p = self.target.scalar(outputs, rows)  # [batch * step]
            (grad,) = torch.autograd.grad(p.sum(), x)
        return grad.view(batch, steps, *grad.shape[1:]), p.detach().view(batch, steps)

    def path_points(self, alphas: Tensor) -> Tensor:
        """``B + alpha (A - B)`` at ``alphas`` (``[step]``, or ``[batch, step]``): ``[batch, step, head, q, k]``."""
        a = alphas.to(self.probs)
        a = a.view(1, -1, 1, 1, 1) if a.dim() == 1 else a.view(*a.shape, 1, 1, 1)
        return a * self.probs.unsqueeze(1) if self.base is None else self.base.unsqueeze(1) + a * self.diff.unsqueeze(1)

    def values(self, alphas: Tensor) -> Tensor:
        """``F`` at ``B + alpha (A - B)`` for every ``alphas`` (``[step]`` or ``[batch, step]``): ``[batch, step]``.

        Without gradients.
        """
        batch, steps = self.probs.shape[0], alphas.shape[-1]
        x = self.path_points(alphas)
        rows = torch.arange(batch, device=self.probs.device).repeat_interleave(steps)
        with torch.no_grad(), integrand_precision(self.precision, self.probs.device):
            outputs = self.replaced_outputs(x.flatten(0, 1), steps)
            return self.target.scalar(outputs, rows).view(batch, steps)

    def zero_prob(self) -> Tensor:
        """``F(B)`` per example: ``[batch]`` (``F(A^l := 0)`` for the zero baseline)."""
        with torch.no_grad():
            outputs = self.replaced_outputs(torch.zeros_like(self.probs) if self.base is None else self.base, 1)
            return self.target.scalar(outputs, torch.arange(len(self.probs), device=self.probs.device))

    def replaced_outputs(self, replacement: Tensor, steps: int) -> Any:
        """The model's output with the layer's probabilities replaced by ``replacement``.

        ``replacement`` is ``[batch * steps, head, query_pos, key_pos]`` (example-major); the model
        inputs are repeated ``steps`` times per example, and the layers below return their
        recorded clean outputs (``below``, repeated likewise) instead of running, unless the
        controller says they cannot be skipped (``can_skip_below``): then the whole model runs.
        """
        run = self.run
        batch = len(self.probs)
        skip = run.can_skip_below and self.below is not None
        with (
            run.ctrl._state(
                _replace_layer=self.layer,
                _replacement=replacement,
                _skip_below=self.layer if skip else 0,
                _skip_output=_repeat_rows(self.below, batch, steps) if skip else None,
                use_sdpa=True,
            ),
            run.autocast(),
        ):
            return run.model(**_repeat_rows(self.inputs, batch, steps), **self.target.model_kwargs)

    def rows(self, rows: Tensor, precision: str | None = None) -> _LayerIntegration:
        """The same integral restricted to the examples ``rows`` (``[rows]`` batch indices on the CPU).

        ``precision``: of the restricted integral's passes (default: this one's).
        """
        dev_rows = rows.to(self.probs.device)
        return _LayerIntegration(
            self.run,
            {key: value.index_select(0, dev_rows) for key, value in self.inputs.items()},
            self.layer,
            self.probs.index_select(0, dev_rows),  # [rows, head, q, k]
            self.target.rows(dev_rows),
            _take_rows(self.below, dev_rows),
            self.f_full[rows],
            precision=self.precision if precision is None else precision,
            base=None if self.base is None else self.base.index_select(0, dev_rows),
        )


@dataclass
class _Refinement:
    """The nested rule of ``n_steps="auto"`` on one :class:`_LayerIntegration`, with its accumulators.

    Nested Gauss-Kronrod-Patterson integration refined per example: every example starts at the
    first level; those above the tolerance get the next level's new nodes, the others stop.

    Examples whose integrand runs in reduced precision (``pair.modes``) are refined only while they
    improve (:func:`lightning_attattr.core.precision.stalled`); once they stall, or at the last
    level, ``precision="auto"`` recomputes them in fp32 at the nodes evaluated so far and refines
    them further in fp32, and ``"tf32"``/``"bf16"`` stop them there, flagged as unconverged.
    """

    pair: _LayerIntegration
    rule: _Adaptive
    acc: Tensor  # [level, batch, head, q, k]: sum_k weights[level, k] * dF/dA(alpha_k A) over the nodes so far
    h: Tensor  # [batch, node] float64: sum((A - B) * dF/dA(B + alpha_k (A - B))) (this shard's nodes)
    target_diff: Tensor  # [batch] float64: F(A) - F(B), what the integral of h must reach
    gap: Tensor  # [batch] float64: what a completeness error is divided by
    final: Tensor  # [batch] the level whose estimate is kept
    error: Tensor  # [batch] float64: achieved relative completeness error (from the summed terms)
    flagged: Tensor  # [batch] bool: still above the tolerance at the last level
    modes: Tensor  # [batch] long: PRECISION_CODES of each example's integrand (pair.modes)
    previous: Tensor  # [batch] float64: the estimate at the previous level (nan before the first)
    previous_error: Tensor  # [batch] float64: the error at the previous level (inf before the first)
    previous_change: Tensor  # [batch] float64: the change between the two previous levels (nan: none yet)
    extra: Tensor  # [batch] long: nodes evaluated on subintervals (:meth:`subdivide`)

    @classmethod
    def start(cls, pair: _LayerIntegration, rule: _Adaptive) -> _Refinement:
        """Empty accumulators for ``pair`` (its ``f_zero`` evaluated)."""
        assert pair.f_zero is not None and pair.modes is not None
        probs, batch = pair.probs, pair.probs.shape[0]
        nan = torch.full((batch,), math.nan, dtype=torch.float64, device="cpu")
        f_zero = pair.f_zero.double().cpu()
        return cls(
            pair,
            rule,
            acc=torch.zeros(rule.n_levels, *probs.shape, dtype=probs.dtype, device=probs.device),
            h=torch.zeros(batch, rule.sizes[-1], dtype=torch.float64, device="cpu"),
            target_diff=pair.f_full - f_zero,
            gap=completeness_scale(pair.f_full, f_zero, pair.run.settings.bounded),
            final=torch.full((batch,), rule.n_levels - 1, dtype=torch.long, device="cpu"),
            error=torch.zeros(batch, dtype=torch.float64, device="cpu"),
            flagged=torch.zeros(batch, dtype=torch.bool, device="cpu"),
            modes=pair.modes,
            previous=nan,
            previous_error=torch.full((batch,), math.inf, dtype=torch.float64, device="cpu"),
            previous_change=nan.clone(),
            extra=torch.zeros(batch, dtype=torch.long, device="cpu"),
        )

    @property
    def used(self) -> Tensor:
        """Nodes evaluated per example: ``[batch]``."""
        return torch.tensor(self.rule.sizes, device="cpu")[self.final] + self.extra

    def refine(self) -> Tensor:
        """Refine level by level until every example is done; ``attr`` ``[batch, head, query_pos, key_pos]``.

        fp32 examples still above the tolerance after :data:`SPLIT_AFTER` nodes continue on
        subintervals (:meth:`subdivide`) instead of the higher nested levels, when ``max_steps``
        leaves nodes for the first pieces (``max_steps`` 63 and above).
        """
        rule, shard = self.rule, self.pair.run.settings.shard
        active = torch.arange(len(self.final), device="cpu")
        start, split = 0, active[:0]
        can_split = not rule.self_convergence and rule.max_steps - SPLIT_AFTER >= _FIRST_PIECES_NODES
        for level, stop in enumerate(rule.sizes):
            self.add_nodes(active, rule.owned(range(start, stop), shard), level)
            estimate = self.estimate(active, level)
            done = self.judge(active, level, estimate, self.previous[active] if level else None)
            done |= self.stop_reduced(active, level, estimate, done)
            active = active[~done]
            start = stop
            if can_split and stop == SPLIT_AFTER:
                fp32 = self.modes[active] == PRECISION_CODES["fp32"]
                split, active = active[fp32], active[~fp32]
                self.final[split] = level
            if not len(active):
                break
        chosen = self.acc[self.final.to(self.acc.device), torch.arange(len(self.final), device=self.acc.device)]
        if len(split):
            self.subdivide(split, chosen)
        return self.pair.diff * chosen  # [batch, head, q, k]: this shard's part

    def subdivide(self, rows: Tensor, chosen: Tensor) -> None:
        """Integrate the examples ``rows`` on adaptively split subintervals; their sums go into ``chosen``.

        The nested rule integrates the whole path ``[0, 1]`` with one polynomial, which fails when
        ``F`` changes sharply on a small part of it (seen in trained language models, where the
        output changes by tens of percent between ``alpha = 0`` and ``alpha = 0.003``).
        Completeness holds on every piece of the path: ``h`` integrates over ``[a, b]`` to
        ``F(b) - F(a)`` exactly, with ``F`` evaluated by one forward at each breakpoint. So the
        error of every subinterval is known, not estimated, and the pieces with the largest
        errors are split until the whole path meets the tolerance or ``max_steps`` nodes are
        used. Every subinterval has :data:`SPLIT_NODES` Gauss-Legendre nodes. Pieces touching
        ``alpha = 0`` are split geometrically (``[0, b / 8]``, where those transitions sit), long
        pieces ``b / a > 4`` at ``sqrt(a b)``, the others in halves.

        Each example is integrated whole on every shard (no work is dealt), so every shard
        keeps ``1 / count`` of it and the shards' sum is the whole. All the examples on pieces
        share passes (one row per example and node). Each piece keeps its map (``[head,
        query_pos, key_pos]``) unless the piece maps of these examples could pass
        :data:`PIECE_MAPS_BYTES` (long inputs): then the pieces keep only their sums and the final
        pieces' nodes are evaluated once more for the map (not counted in ``n_steps_used``).
        """
        shard = self.pair.run.settings.shard
        share = 1.0 if shard is None else 1.0 / shard[1]
        part = self.pair.rows(rows, "fp32")
        budget = self.rule.max_steps - SPLIT_AFTER
        most = len(_FIRST_BREAKS) - 1 + max(budget - _FIRST_PIECES_NODES, 0) // (2 * SPLIT_NODES)  # pieces at most
        keep = part.diff.numel() * part.diff.element_size() * most <= PIECE_MAPS_BYTES
        f_end = self.pair.f_full[rows].double()
        f_start = f_end - self.target_diff[rows]  # F(B)
        states = [
            _Pieces(float(f_start[j]), float(f_end[j]), float(self.gap[row]), budget)
            for j, row in enumerate(rows.tolist())
        ]
        everyone = list(range(len(states)))
        inner = self._values(part, everyone, [list(_FIRST_BREAKS[1:-1])] * len(states))
        spans = [state.first_spans(f) for state, f in zip(states, inner)]
        self._integrate_pieces(part, rows, states, everyone, spans, keep)
        while True:  # every example still above the tolerance splits its worst pieces; all in the same passes
            todo = [(j, state.to_split()) for j, state in enumerate(states) if state.error() > self.rule.tol]
            todo = [(j, pieces) for j, pieces in todo if pieces]
            if not todo:
                break
            index = [j for j, _ in todo]
            mids = [[_split_point(piece.a, piece.b) for piece in pieces] for _, pieces in todo]
            f_mid = self._values(part, index, mids)
            spans = [states[j].split(pieces, m, f) for (j, pieces), m, f in zip(todo, mids, f_mid)]
            self._integrate_pieces(part, rows, states, index, spans, keep)
        for j, row in enumerate(rows.tolist()):
            state, error = states[j], states[j].error()
            if error < float(self.error[row]):  # keep the nested rule's result when the pieces are worse
                total = state.total()
                if total is None:  # large maps: evaluate the final pieces' nodes once more
                    total = self._piece_map(part.rows(torch.tensor([j], device="cpu")), state)
                chosen[row] = (total * share).to(chosen)
                self.error[row] = error
            self.extra[row] = state.nodes
            self.flagged[row] = float(self.error[row]) > self.rule.tol

    def _item_chunks(self, n_items: int) -> list[range]:
        """The (example, node) rows of the pieces in chunks of at most one planned pass (bounded memory)."""
        pair = self.pair
        size = max(1, pair.run.plan.limit(len(pair.probs), pair.probs.shape[-1], pair.layer))
        return [range(start, min(start + size, n_items)) for start in range(0, n_items, size)]

    def _values(self, part: _LayerIntegration, index: list[int], alphas: list[list[float]]) -> list[list[float]]:
        """``F`` of the example ``index[k]`` of ``part`` at its own ``alphas[k]``, for every ``k``."""
        items = [index[k] for k, a in enumerate(alphas) for _ in a]  # item -> example of ``part``
        flat = torch.tensor([[x] for a in alphas for x in a], dtype=torch.float64)  # [item, 1]
        values: list[float] = []
        for chunk in self._item_chunks(len(items)):
            sub = part.rows(torch.tensor(items[chunk.start : chunk.stop], device="cpu"))
            values += sub.values(flat[chunk.start : chunk.stop])[:, 0].double().cpu().tolist()
        out, start = [], 0
        for a in alphas:
            out.append(values[start : start + len(a)])
            start += len(a)
        return out

    def _integrate_pieces(
        self,
        part: _LayerIntegration,
        rows: Tensor,
        states: list[_Pieces],
        index: list[int],
        spans: list[list[tuple[float, float, float, float]]],
        keep: bool,
    ) -> None:
        """Evaluate the nodes of ``spans[k]`` for the example ``index[k]`` (of ``states``) and add the pieces.

        ``keep``: the pieces keep their maps (else only their sums of ``h``).

        Every (example, node) is one row of the passes, so the examples share passes without
        padding; each pass's gradients are reduced as they come (to ``h`` per node, and to the
        pieces' maps when they are kept), so one pass's gradients are the most held at a time.
        """
        nodes, weights = zip(*(_piece_nodes([(a, b) for a, b, _, _ in span]) for span in spans))
        owner = [(k, n) for k in range(len(index)) for n in range(len(nodes[k]))]  # item -> (example, node)
        alphas = torch.cat(nodes)[:, None]  # [item, 1]: each item its own node
        h = [torch.zeros(len(n), dtype=torch.float64) for n in nodes]
        maps = [[torch.zeros_like(part.diff[j]) for _ in span] if keep else [] for j, span in zip(index, spans)]

        def consume(sel: Tensor | None, begin: int, end: int, grad: Tensor, prob: Tensor) -> None:
            positions = [chunk.start + i for i in (range(len(chunk)) if sel is None else sel.tolist())]
            grad = grad[:, 0]  # [items of this pass, head, q, k]
            diff = items.diff if sel is None else items.diff.index_select(0, sel.to(items.diff.device))
            hs = (grad.double() * diff.double()).flatten(1).sum(1).cpu()
            for pos, item in enumerate(positions):
                k, node = owner[item]
                h[k][node] = hs[pos]
                if keep:
                    maps[k][node // SPLIT_NODES].add_(grad[pos], alpha=float(weights[k][node]))
                self.pair.note(rows[index[k] : index[k] + 1], alphas[item], prob[pos : pos + 1], "fp32")

        for chunk in self._item_chunks(len(owner)):
            items = part.rows(torch.tensor([index[owner[i][0]] for i in chunk], device="cpu"))
            self.pair.run.passes(items, alphas[chunk.start : chunk.stop], len(self.pair.probs), consume)
        for k, j in enumerate(index):
            states[j].add(spans[k], h[k], weights[k], maps[k] if keep else None)

    def _piece_map(self, one: _LayerIntegration, state: _Pieces) -> Tensor:
        """``sum_k w_k dF/dA`` over the nodes of every piece of ``state`` (one example ``one``), evaluated again."""
        alphas, weights = _piece_nodes([(p.a, p.b) for p in state.pieces])
        total = torch.zeros_like(one.probs[0])

        def consume(sel: Tensor | None, begin: int, end: int, grad: Tensor, prob: Tensor) -> None:
            total.add_(torch.einsum("s,s...->...", weights[begin:end].to(grad), grad[0]))

        self.pair.run.passes(one, alphas, len(self.pair.probs), consume)
        return total

    def stop_reduced(self, active: Tensor, level: int, estimate: Tensor, done: Tensor) -> Tensor:
        """Deal with the reduced-precision examples among ``active`` that stalled; which of them are now done.

        Records this level's estimate, error and change of every ``active`` example first. An
        example still above the tolerance whose integrand runs in reduced precision and that
        stalled (or is at the last level) is recomputed in fp32 under ``precision="auto"`` (done
        when fp32 meets the tolerance at this level), else stopped and flagged.
        """
        change = (estimate - self.previous[active]).abs() / self.gap[active]  # nan at the first level
        reduced = self.modes[active] != PRECISION_CODES["fp32"]
        stop = torch.zeros_like(done)
        if bool(reduced.any()):
            noisy = stalled(self.error[active], self.previous_error[active], change, self.previous_change[active])
            stop = reduced & ~done & (noisy | (level == self.rule.n_levels - 1))
        self.previous[active], self.previous_error[active] = estimate, self.error[active]
        self.previous_change[active] = change
        rows = active[stop]
        if not len(rows):
            return stop
        if self.pair.run.settings.precision != "auto":
            self.final[rows], self.flagged[rows] = level, True
            return stop
        now_done = torch.zeros_like(done)
        now_done[stop] = self.escalate(rows, level)
        return now_done

    def escalate(self, rows: Tensor, level: int) -> Tensor:
        """Redo the examples ``rows`` in fp32 over levels ``0 .. level``; which are done (``[rows]`` bool).

        Their reduced-precision gradients are dropped and the nested rule starts again in fp32,
        judged level by level as an fp32 call would be, so an example uses no more fp32 nodes than
        it had evaluated in reduced precision (fewer when fp32 meets the tolerance earlier), and
        its result is the fp32 call's for the same nodes.
        """
        rule, shard = self.rule, self.pair.run.settings.shard
        self.acc[:, rows.to(self.acc.device)] = 0
        self.h[rows] = 0
        self.modes[rows] = PRECISION_CODES["fp32"]
        pending, start = rows, 0
        for finer, stop in enumerate(rule.sizes[: level + 1]):
            self.add_nodes(pending, rule.owned(range(start, stop), shard), finer)
            estimate = self.estimate(pending, finer)
            done = self.judge(pending, finer, estimate, None)
            self.previous[pending], self.previous_error[pending] = estimate, self.error[pending]
            self.previous_change[pending] = math.nan  # the reduced-precision history does not apply to fp32
            pending, start = pending[~done], stop
            if not len(pending):
                break
        return ~torch.isin(rows, pending)

    def add_nodes(self, rows: Tensor, nodes: list[int], level: int) -> None:
        """Gradients at ``nodes`` for the examples ``rows``: add them to ``acc`` and ``h``.

        ``acc`` of ``level`` and of every finer level gets them with that level's weights; ``h``
        gets ``sum(A * grad)`` per example and node. Examples run in their own precision (``modes``).
        """
        if not nodes or not len(rows):
            return
        codes = self.modes[rows]
        for code in codes.unique().tolist():
            self.add_nodes_in(rows if bool((codes == code).all()) else rows[codes == code], nodes, level, code)

    def add_nodes_in(self, rows: Tensor, nodes: list[int], level: int, code: int) -> None:
        """:meth:`add_nodes` for examples ``rows`` that all run in the precision ``code``."""
        part = self.pair.rows(rows, PRECISION_NAMES[code])
        acc, weights = self.acc[level:], self.rule.weights[level:]  # [level, ...]: this and the finer levels

        def consume(sub: Tensor | None, begin: int, end: int, grad: Tensor, prob: Tensor) -> None:
            chunk = nodes[begin:end]
            mine = rows if sub is None else rows[sub]  # batch indices of this pass
            probs = part.diff if sub is None else part.diff.index_select(0, sub.to(part.diff.device))
            self.pair.note(mine, self.rule.alphas[chunk], prob, part.precision)
            grad = grad.to(acc.dtype)  # [rows, step, head, q, k]
            w = weights[:, chunk].to(grad)  # [level, step]
            acc[:, mine.to(acc.device)] += torch.einsum("ls,bs...->lb...", w, grad)
            self.h[mine[:, None], torch.tensor(chunk, device="cpu")[None, :]] = (
                (grad * probs.unsqueeze(1)).flatten(2).sum(-1).double().cpu()
            )  # [rows, step]

        self.pair.run.passes(part, self.rule.alphas[nodes], len(self.pair.probs), consume)

    def estimate(self, active: Tensor, level: int) -> Tensor:
        """The level's integral of ``h`` for the ``active`` examples (terms summed over the shards): ``[active]``."""
        terms = self.h[active]
        if self.rule.reduce is not None:
            terms = self.rule.reduce(terms.to(self.pair.probs.device)).double().cpu()
        stop = self.rule.sizes[level]
        return terms[:, :stop] @ self.rule.weights[level, :stop]

    def judge(self, active: Tensor, level: int, estimate: Tensor, previous: Tensor | None) -> Tensor:
        """Record the ``active`` examples' error at ``level``; return which of them are done (``[active]`` bool)."""
        rule = self.rule
        self.error[active] = (estimate - self.target_diff[active]).abs() / self.gap[active]
        if rule.self_convergence:  # rounding dominates the gap: stop where the quadrature converged
            change = (estimate - previous).abs() / self.gap[active] if previous is not None else None
            done = change <= rule.tol if change is not None else torch.zeros_like(estimate, dtype=torch.bool)
        else:
            done = self.error[active] <= rule.tol
        self.final[active[done]] = level
        if level == rule.n_levels - 1:
            self.flagged[active] = ~done
        return done


#: ``n_steps="auto"``: examples still above the tolerance after this many nested nodes continue on subintervals.
SPLIT_AFTER = 15
#: Gauss-Legendre nodes per subinterval of :meth:`_Refinement.subdivide`.
SPLIT_NODES = 5
_FIRST_BREAKS = (0.0, 1.0 / 64.0, 1.0 / 8.0, 1.0 / 2.0, 1.0)  # the first subintervals: graded towards alpha = 0
_FIRST_PIECES_NODES = (len(_FIRST_BREAKS) - 1) * SPLIT_NODES  # so pieces need max_steps >= 15 + 20
#: Above this many bytes for the piece maps of the examples that continue on pieces (one map per piece), the
#: pieces keep only their sums of ``h`` and the final pieces' nodes are evaluated once more for the map.
PIECE_MAPS_BYTES = 256 * 2**20


def _split_point(a: float, b: float) -> float:
    """Where :meth:`_Refinement.subdivide` splits ``[a, b]``: geometric towards 0 and across decades, else halves."""
    if a == 0.0:
        return b / 8.0
    if b / a > 4.0:
        return math.sqrt(a * b)
    return (a + b) / 2.0


class _Piece(NamedTuple):
    """One subinterval ``[a, b]`` of a path in :meth:`_Refinement.subdivide`."""

    a: float
    b: float
    f_a: float  # F at alpha = a
    f_b: float
    h: float  # the rule's integral of h over [a, b]
    grad: Tensor | None  # sum_k w_k dF/dA over its nodes, [head, q, k]; None when the maps are not kept

    @property
    def error(self) -> float:
        """Absolute completeness error of the piece: ``|integral of h - (F(b) - F(a))|``."""
        return abs(self.h - (self.f_b - self.f_a))


@functools.lru_cache(maxsize=1)
def _split_rule() -> tuple[Tensor, Tensor]:
    """Nodes and weights on ``[0, 1]`` of the Gauss-Legendre rule of every piece (float64, CPU)."""
    nodes, weights = approximation_parameters("gausslegendre", SPLIT_NODES)
    return torch.tensor(nodes, dtype=torch.float64), torch.tensor(weights, dtype=torch.float64)


def _piece_nodes(bounds: list[tuple[float, float]]) -> tuple[Tensor, Tensor]:
    """Nodes and weights of the pieces ``[a, b]`` in ``bounds``: :data:`SPLIT_NODES` per piece, in order."""
    x, w = _split_rule()
    return torch.cat([a + (b - a) * x for a, b in bounds]), torch.cat([(b - a) * w for a, b in bounds])


class _Pieces:
    """The subintervals of one example's path in :meth:`_Refinement.subdivide`, with their sums."""

    def __init__(self, f_start: float, f_end: float, gap: float, budget: int):
        self.f_start, self.f_end, self.gap, self.budget = f_start, f_end, gap, budget
        self.pieces: list[_Piece] = []
        self.nodes = 0

    def error(self) -> float:
        """Relative completeness error of the whole path."""
        return abs(sum(p.h for p in self.pieces) - (self.f_end - self.f_start)) / self.gap

    def total(self) -> Tensor | None:
        """``sum_k w_k dF/dA`` over every piece, ``[head, query_pos, key_pos]``; ``None`` when maps are not kept."""
        grads = [p.grad for p in self.pieces]
        if any(g is None for g in grads):
            return None
        return torch.stack(cast(list[Tensor], grads)).sum(0)

    def first_spans(self, f_inner: list[float]) -> list[tuple[float, float, float, float]]:
        """The first pieces (``a, b, F(a), F(b)``), given ``F`` at the inner breakpoints of :data:`_FIRST_BREAKS`."""
        f = [self.f_start, *f_inner, self.f_end]
        return [(_FIRST_BREAKS[i], _FIRST_BREAKS[i + 1], f[i], f[i + 1]) for i in range(len(_FIRST_BREAKS) - 1)]

    def to_split(self) -> list[_Piece]:
        """The pieces to split next: within half of the largest error, as many as the budget allows."""
        worst = max(p.error for p in self.pieces)
        chosen = sorted((p for p in self.pieces if p.error >= 0.5 * worst), key=lambda p: -p.error)
        return chosen[: (self.budget - self.nodes) // (2 * SPLIT_NODES)]

    def split(
        self, chosen: list[_Piece], mids: list[float], f_mid: list[float]
    ) -> list[tuple[float, float, float, float]]:
        """Drop the ``chosen`` pieces; the halves (``a, b, F(a), F(b)``) to evaluate in their place."""
        spans = []
        for p, c, f_c in zip(chosen, mids, f_mid):
            spans += [(p.a, c, p.f_a, f_c), (c, p.b, f_c, p.f_b)]
        self.pieces = [p for p in self.pieces if all(p is not q for q in chosen)]
        return spans

    def add(
        self, spans: list[tuple[float, float, float, float]], h: Tensor, weights: Tensor, maps: list[Tensor] | None
    ) -> None:
        """Add the evaluated ``spans``: ``h`` and ``weights`` per node (:data:`SPLIT_NODES` per span), their maps."""
        for i, (a, b, f_a, f_b) in enumerate(spans):
            k = slice(i * SPLIT_NODES, (i + 1) * SPLIT_NODES)
            self.pieces.append(_Piece(a, b, f_a, f_b, float(h[k] @ weights[k]), None if maps is None else maps[i]))
        self.nodes += len(h)


@dataclass
class _Outputs:
    """The result tensors of one ``attribute`` call, filled (group, layer) pair by pair."""

    batch: _Batch
    settings: _Settings
    maps: list[list[Tensor]]  # per example: one cropped [head, n, n] map per layer
    target: Tensor  # [batch]
    prob: Tensor  # [batch] float64
    baseline: Tensor | None  # [batch, layer] float64, with the convergence delta
    delta: Tensor | None
    used: Tensor  # [batch, layer]
    error: Tensor | None
    flagged: Tensor | None  # n_steps="auto" only
    rows_per_pass: int | None = None  # set from the call's _RowPlan when the passes are done
    precision_used: Tensor | None = None  # [batch, layer] int8 PRECISION_CODES, unless precision="fp32"
    token_index: list[Tensor] = dataclasses.field(default_factory=list)  # per row: real-token indices (targets)
    call_target: CallTarget | None = None
    degenerate: set[int] = dataclasses.field(default_factory=set)  # layers with a degenerate zero-baseline pair
    reducer: Reducer | None = None  # reduces the maps instead of keeping them (`maps` stays empty)
    # per attributed layer: whether its query and key axes are the decoder's (encoder-decoders), else empty
    site_axes: list[tuple[bool, bool]] = dataclasses.field(default_factory=list)

    @classmethod
    def empty(cls, batch: _Batch, settings: _Settings, n_tokens: Sequence[int] = ()) -> _Outputs:
        """Zeroed outputs for ``batch`` (``n_tokens``: real tokens per example, needed by a reduction)."""
        size, pairs, want_delta = batch.size, (batch.size, len(settings.layers)), settings.want_delta
        return cls(
            batch,
            settings,
            maps=[[] for _ in range(size)],
            target=torch.zeros(size, dtype=torch.long, device="cpu"),
            prob=torch.zeros(size, dtype=torch.float64, device="cpu"),
            baseline=torch.zeros(pairs, dtype=torch.float64, device="cpu") if want_delta else None,
            delta=torch.zeros(pairs, dtype=torch.float64, device="cpu") if want_delta else None,
            used=torch.full(pairs, len(settings.alphas), dtype=torch.long, device="cpu"),
            error=torch.zeros(pairs, dtype=torch.float64, device="cpu") if want_delta else None,
            flagged=torch.zeros(pairs, dtype=torch.bool, device="cpu") if settings.adaptive is not None else None,
            precision_used=torch.zeros(pairs, dtype=torch.int8, device="cpu") if settings.precision != "fp32" else None,
            reducer=None
            if settings.reduction is None
            else Reducer(settings.reduction, size, len(settings.layers), n_tokens),
        )

    def add(self, index: list[int], li: int, pair: _LayerIntegration, refinement: _Refinement | None) -> None:
        """Crop the maps of the examples ``index`` at layer position ``li``; record F(A := 0) and the gap."""
        assert pair.attr is not None
        if pair.degenerate is not None and bool(pair.degenerate.any()):
            self.degenerate.add(self.settings.layers[li])
        if self.precision_used is not None and pair.modes is not None:
            self.precision_used[index, li] = pair.modes.to(torch.int8)
        if refinement is not None:
            assert self.error is not None and self.flagged is not None
            self.used[index, li], self.error[index, li] = refinement.used, refinement.error
            self.flagged[index, li] = refinement.flagged
        axes = self.site_axes[li] if self.site_axes else (False, False)
        if self.reducer is not None:
            self.reducer.add(index, li, pair.layer, pair.attr, lambda i, a: self.batch.real(i, a, axes))
        else:
            for j, i in enumerate(index):
                self.maps[i].append(self.batch.crop(i, pair.attr[j], axes))
        if self.baseline is None or self.delta is None:
            return
        assert pair.f_zero is not None
        shard = self.settings.shard
        share = 1.0 if shard is None else 1.0 / shard[1]  # each shard carries 1/count of F(A) - F(0)
        f_zero = pair.f_zero.double().cpu()
        self.baseline[index, li] = f_zero
        self.delta[index, li] = pair.attr.flatten(1).sum(1).double().cpu() - share * (pair.f_full - f_zero)
        if refinement is None and shard is None and self.error is not None:  # a shard's delta is partial
            self.error[index, li] = self.delta[index, li].abs() / completeness_scale(
                pair.f_full, f_zero, self.settings.bounded
            )

    def result(self) -> AttributionResult:
        """The assembled :class:`AttributionResult`."""
        settings, target = self.settings, self.call_target
        return AttributionResult(
            attributions=[] if self.reducer is not None else [stack_sites(maps) for maps in self.maps],
            layers=settings.layers,
            target=self.target,
            prob=self.prob,
            baseline_prob=self.baseline,
            convergence_delta=self.delta,
            method=settings.method,
            n_steps=settings.n_steps,
            shard=settings.shard,
            n_steps_used=self.used,
            completeness_error=self.error if (settings.adaptive is not None or settings.shard is None) else None,
            unconverged=self.flagged,
            rows_per_pass=self.rows_per_pass,
            precision_used=self.precision_used,
            output="callable" if target is not None and target.fn is not None else _output_name(target),
            baseline=settings.baseline,
            example=None if target is None else target.example,
            position=None if target is None else target.position,
            contrast=None if target is None else target.other,
            reduced=None if self.reducer is None else self.reducer.result(),
        )


def _site_axes(model: nn.Module, layers: Sequence[int]) -> list[tuple[bool, bool]]:
    """Per layer of ``layers``: whether its query and key axes are an encoder-decoder's decoder tokens."""
    names = attention_layers(model)
    axes = []
    for layer in layers:
        name = names[layer]
        axes.append((name.startswith("decoder."), name.startswith("decoder.") and name.endswith(".self")))
    return axes


def _output_name(target: CallTarget | None) -> str:
    """The attributed output's name for the result (``"prob"`` without a bound target)."""
    return "prob" if target is None else target.output


def _warn_degenerate(layers: set[int]) -> None:
    """One warning when the zero baseline was degenerate for some (example, layer) pair."""
    if not layers:
        return
    warnings.warn(
        f"The zero baseline is degenerate for layer(s) {sorted(layers)}: the attributed output is the same for "
        "every scaled attention alpha * A (alpha in (0, 1]) but differs at A := 0, so the attributions cannot "
        "add up to F(A) - F(0). A normalization right after attention makes the output invariant to scaling A; "
        "use baseline='uniform' (the path from uniform attention to A).",
        stacklevel=_caller_stacklevel(),
    )


def _warn_unconverged(
    result: AttributionResult, completeness_tol: float, max_steps: int, precision: str = "fp32"
) -> None:
    """One warning naming how many (example, layer) pairs missed the tolerance of ``n_steps="auto"``."""
    if result.unconverged is None or not bool(result.unconverged.any()):
        return
    assert result.completeness_error is not None
    bad = result.unconverged
    warnings.warn(
        f"{int(bad.sum())} of {bad.numel()} (example, layer) pairs did not reach completeness_tol="
        f"{completeness_tol:g} within max_steps={max_steps} (worst relative completeness error "
        f"{float(result.completeness_error[bad].max()):.2e}); they are flagged in `result.unconverged`. "
        "The output changes along the path alpha * A faster than the nodes resolve (typically close to "
        "alpha = 0, or at a kink or jump: ReLU, expert routing)"
        + (f"; max_steps={MAX_STEPS[-1]} splits the path further" if max_steps < MAX_STEPS[-1] else "")
        + ("; baseline='uniform' starts the path elsewhere." if result.baseline == "zero" else ".")
        + (
            f" Under precision={precision!r} pairs whose error stopped improving stop early; "
            "precision='auto' recomputes them in fp32."
            if precision in ("tf32", "bf16")
            else ""
        ),
        stacklevel=3,
    )


def _warn_out_of_memory(plan: _RowPlan) -> None:
    """One warning naming the halved pass size when a pass of this call ran out of memory."""
    if plan.failed is None:
        return
    warnings.warn(
        f"A pass of {plan.failed} rows (examples x integration steps) ran out of memory; passes were halved "
        f"and retried, down to {plan.cap} rows per pass (results are unchanged). Pass "
        f"internal_batch_size={plan.cap} or a smaller memory_budget to skip the retries.",
        stacklevel=_caller_stacklevel(),
    )


def _caller_stacklevel() -> int:
    """``stacklevel`` for a ``warnings.warn`` in the calling function: the first frame outside this module."""
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
        level += 1
    return level


class AttentionIntegratedGradients:
    """Attention attribution (AttAttr) for a Hugging Face classifier or language model.

    Shaped like Captum's ``IntegratedGradients``: construct it around a model, then call
    :meth:`attribute` on batches. Supported model types are listed in
    :data:`lightning_attattr.core.adapter.SUPPORTED_MODEL_TYPES`.

    Args:
        model: a ``PreTrainedModel`` whose output has ``logits`` of shape ``[batch, classes]``
            (e.g. ``AutoModelForSequenceClassification``, ``AutoModelForImageClassification``), or
            a causal / sequence-to-sequence language model with logits ``[batch, pos, vocab]``
            (targets: :mod:`lightning_attattr.core.targets`).

    Raises:
        TypeError: ``model`` is not a ``PreTrainedModel``.
        ValueError: its architecture does not route attention through ``AttentionInterface``
            (e.g. DeBERTa-v2), or it is a classifier with fewer than two output classes.

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
        self._language_model = is_language_model(model)
        num_labels: Any = cast("PreTrainedModel", model).config.num_labels  # None without id2label: int() refuses it
        self._num_labels = int(num_labels)
        if self._num_labels < 2 and not self._language_model:
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
        max_steps: int = MAX_STEPS[-1],
        reduce: Callable[[Tensor], Tensor] | None = None,
        memory_budget: int | float | None = None,
        precision: Precision = "fp32",
        output: Output = "prob",
        baseline: Baseline = "zero",
        reduction: Reduction | None = None,
    ) -> AttributionResult:
        """Attribute the target's output to every attention connection of the chosen layers.

        Args:
            inputs: the model's own inputs for a batch: ``input_ids`` / ``attention_mask`` /
                ``token_type_ids`` for text (any padding), ``pixel_values`` for ViT. A ``labels``
                entry is used only by ``target="labels"``.
            target: what to explain. Classifiers: ``None`` or ``"predicted"``: the model's
                prediction; ``"labels"``: ``inputs["labels"]`` (gold labels); an int: that class
                for every example; a sequence or ``[batch]`` tensor: one class per example.
                Language models (logits ``[batch, pos, vocab]``, see
                :mod:`lightning_attattr.core.targets`): ``None`` or ``"predicted"``: the predicted
                next token at the last real position (any padding); an int or one id per
                example: that token there; ``Token(id, position)``; ``Tokens(ids, positions)``
                and ``Continuation(ids)`` (one result row per (example, position), see
                :class:`AttributionResult`); ``Contrast(a, b, position)``: output of ``a`` minus
                output of ``b``. Any model: a callable taking the model's output object for a
                batch of rows and returning one scalar per row (``[rows]``); it must be
                row-wise, as the rows are the examples repeated over the integration steps.
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
                pass; caps memory and never changes results (beyond floating-point summation
                order). ``None`` (default): planned from the free memory of the model's device
                (see "Memory" below); everything at once when it fits.
            return_convergence_delta: also compute ``F(A^l := 0)`` and the completeness gap per
                example and layer (one extra forward per layer unless the rule evaluates
                ``alpha = 0`` anyway).
            autocast_dtype: ``torch.bfloat16`` (or ``torch.float16`` on CUDA) to run every pass,
                the clean and baseline passes included, under autocast; about 1% relative error,
                much faster on hardware with bf16 matrix units. Default ``None``: the model's own
                precision. Kept for compatibility: ``precision="bf16"`` keeps ``F(A)``,
                ``F(A := 0)`` and the completeness check in fp32; giving both is an error.
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
            max_steps: ``n_steps="auto"`` only: the most nodes (gradient evaluations) one pair
                may use, one of 3, 7, 15, 31, 63, 127, 255 (default). From 63, pairs that the
                nested rule has not resolved with 15 nodes continue on subintervals (see below).
                Pairs still above the tolerance there are flagged in ``result.unconverged`` and
                one warning says how many.
            reduce: ``n_steps="auto"`` with ``shard``: a function that sums a tensor over all
                shards and returns the sum (e.g. ``lambda t: trainer.strategy.reduce(t, "sum")``);
                called once per (length group, layer, level) on every shard, so all shards refine
                the same pairs and the merged result equals the unsplit one.
            memory_budget: with ``internal_batch_size=None`` only: the memory the planned passes may
                use, as bytes (an int, at most the free memory) or as a fraction of the free memory
                (a float in (0, 1]); default ``None``: ``memory.DEFAULT_MEMORY_SHARE`` (half) of it.
                A smaller budget means smaller passes, never different results.
            precision: the precision of the integrand's passes (the forward/backward at
                ``alpha A``, one per node: nearly all of the cost). ``"fp32"`` (default): the
                model's own precision, exactly the results without this option. ``"tf32"``: TF32
                float32 matmuls (``torch.set_float32_matmul_precision("high")``, set for those
                passes only and restored; on the CPU a no-op: the results are the fp32 ones and
                ``precision_used`` says fp32).
                ``"bf16"``: ``torch.autocast`` in bfloat16 on the model's device type (also on the
                CPU). ``"auto"``: bf16 first, then every pair that misses ``completeness_tol``
                (also with a fixed ``n_steps``) is recomputed in fp32 at the same nodes, and with
                ``n_steps="auto"`` only then refined with more nodes, so every pair meets the
                fp32 guarantee. Whatever the precision, the clean pass ``F(A)``, the baseline
                pass ``F(A := 0)``, the sums of the integral and the completeness check run in the
                model's precision. ``result.precision_used`` says which precision each pair
                finished in. See "Reduced precision" below.
            reduction: keep a reduction of the maps instead of the maps, computed on the model's
                device as soon as each (length group, layer) integral is done, for long inputs whose
                maps do not fit: ``HeadScores(pooling)`` (``[batch, layer, head]``), ``Rows(positions)``
                (query rows such as the last real token, ``Rows([-1])``), ``TopK(k)`` (the largest
                edges per layer) or ``Stream(folder)`` (the full maps written to files, one per
                (length group, layer)), all from :mod:`lightning_attattr.core.reductions`; the result's
                ``attributions`` is then empty and ``result.reduced`` holds the reduction. Only one
                layer's maps exist at a time (the clean pass keeps none; each layer's probabilities
                are recomputed from the cached input of the layer, a forward without gradients from
                that layer up). ``convergence_delta`` and ``completeness_error`` still come from the
                full maps. With ``shard``, only ``Rows`` and ``HeadScores("sum"/"mean")`` (which add
                up over shards, :func:`merge_shards`). Default ``None``: full maps. Not to be
                confused with ``reduce``.

            output: the attributed scalar of a class or token target: ``"prob"`` (softmax
                probability, default), ``"logprob"`` (log-softmax) or ``"logit"``. Completeness
                holds for the chosen output; for unbounded outputs (logits, log-probabilities,
                callables) the floor of the relative completeness error scales with the size of
                the output (:func:`completeness_scale`).
            baseline: the start ``B`` of the integration path ``B + alpha (A - B)``:
                ``"zero"`` (default, the paper's ``A := 0``) or ``"uniform"``: each query attends
                uniformly to the keys it may attend (those with ``A > 0``: padding and causal
                masks respected). The attributions are ``(A - B) * integral of dF/dA`` and sum
                to ``F(A) - F(B)``. Models with a normalization right after attention (Gemma 2/3)
                give the same output for every ``alpha * A`` with ``alpha > 0``, which makes the
                zero baseline degenerate: a warning says so, and ``"uniform"`` is the remedy.

        Memory. A pass runs ``rows = examples x steps`` copies of a length group through the
        attributed layer and the layers above it and keeps their activations for the backward
        pass, so its memory grows linearly with the rows. With ``internal_batch_size=None`` the
        rows per pass are planned per (length group, layer) from the free memory of the model's
        device, measured once per call (CUDA: free plus cached by PyTorch; CPU: the available RAM),
        as ``rows = (budget - examples * state_bytes) // row_bytes``: ``row_bytes`` is about
        ``itemsize * tokens * (n_layers - layer) * (4 * hidden + 2 * intermediate + heads * tokens)``
        and ``state_bytes`` what each example of the group holds meanwhile (captured maps, layer
        outputs, gradient sums); see :mod:`lightning_attattr.core.memory`. Whatever the size, a
        pass that runs out of memory (``torch.OutOfMemoryError``, or a ``RuntimeError`` saying an
        allocation failed) is halved and retried, and every later pass of the call stays at or
        below the halved size; one warning per call names the size reached.
        ``result.rows_per_pass`` reports the size used.

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
        converges much faster than composite low-order pieces. A pair costs 3 nodes plus one
        forward for ``F(A := 0)`` when it is easy, and at most ``max_steps`` nodes.

        Sharp transitions (a path that is not resolved by 15 nested nodes, as layer 0 of a
        trained language model whose output changes by tens of percent between ``alpha = 0``
        and ``alpha = 0.003``) are better served by pieces: such a pair, in fp32, continues on
        subintervals of ``[0, 1]`` with 5 Gauss-Legendre nodes each. Completeness holds on every
        piece of the path (``h`` integrates over ``[a, b]`` to ``F(b A) - F(a A)``, one forward
        per breakpoint), so each piece's error is known exactly, and the pieces with the largest
        errors are split (geometrically towards ``alpha = 0``, across decades at the geometric
        mean, else in halves) until the pair meets the tolerance or ``max_steps`` nodes are
        spent. Its result is the pieces' when their error is smaller than the 15-node one.

        Under ``autocast_dtype`` the gap is dominated by rounding, not by the quadrature, so a
        pair is done when two successive levels agree to the tolerance instead (no pieces).

        Reduced precision (``precision`` other than ``"fp32"``). Rounding in the integrand puts a
        floor under the completeness error that more nodes cannot lower (measured on an H200,
        BERT-base shape, 128 tokens, Gauss-Legendre 10: relative error mean/worst 1.2e-5/1.7e-4 in
        fp32, 3.6e-3/4.6e-2 with TF32, 1.5e-2/0.31 in bf16). With ``n_steps="auto"`` a pair in
        reduced precision is refined only while it improves: it has stalled at a level when its
        completeness error did not shrink by at least a factor 2 (``precision.NOISE_SHRINK``)
        since the previous level, or the change between successive levels' estimates did not
        shrink by that factor since the previous change (on a smooth integrand both shrink far
        faster as the nested rule's degree about doubles per level; a smaller factor means
        rounding noise, not under-resolution). A stalled pair, or one still above the tolerance
        at ``max_steps``, is recomputed in fp32 at every node evaluated so far under ``"auto"``
        and refined further in fp32; under ``"tf32"``/``"bf16"`` it stops there and is flagged
        in ``result.unconverged`` (precision="auto" would escalate it).

        Returns:
            An :class:`AttributionResult`; the maps are on the CPU in at least float32.

        Raises:
            TypeError, ValueError: invalid arguments (the message names the argument, the allowed
                values and what was given).
            RuntimeError: the model's attention did not run through the interface for every layer.
            torch.OutOfMemoryError, RuntimeError: out of memory in a pass of a single row (one
                example at one step), so there is nothing smaller to retry.
        """
        layer_ids = self._validate_layers(layers)
        baseline = check_choice("baseline", baseline, BASELINES)
        rule = _check_rule(method, n_steps, completeness_tol, max_steps, reduce, autocast_dtype)
        settings = _check_settings(
            layer_ids,
            rule,
            internal_batch_size,
            shard,
            return_convergence_delta,
            autocast_dtype,
            memory_budget,
            precision,
            completeness_tol,
            reduction,
        )
        device = next(self.model.parameters()).device
        # everything below also runs when the caller is inside torch.inference_mode() or no_grad()
        # (Lightning's evaluation loops): tensors are created outside inference mode. A caller's
        # autocast (a Lightning `precision="16-mixed"` step, user code) is switched off: the passes run in
        # the precision that `precision` / `autocast_dtype` chose, and F(A), F(0) and the sums in fp32
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            batch = _prepare_inputs(inputs, device)
            self._check_token_ids(batch)
            targets, token_index = self._validate_target(target, output, batch)
            if targets.example is not None:
                batch = batch.expand(targets.example)
                token_index = [token_index[i] for i in targets.example.tolist()]
            settings = dataclasses.replace(settings, baseline=baseline, bounded=targets.bounded)
            plan = self._row_plan(settings, device)
            groups = _plan_groups(batch, functools.partial(plan.max_examples, batch))
            result, degenerate = self._integrate(batch, groups, targets, token_index, settings, plan, show_progress)
        _warn_degenerate(degenerate)
        _warn_out_of_memory(plan)
        _warn_unconverged(result, completeness_tol, max_steps, settings.precision)
        return result

    def _row_plan(self, settings: _Settings, device: torch.device) -> _RowPlan:
        """The call's row planner: ``internal_batch_size`` as given, or a budget from the device's free memory."""
        budget = 0
        if settings.internal_batch_size is None:
            budget = memory.budget_bytes(memory.free_memory(device), settings.memory_budget)
        return _RowPlan(
            fixed=settings.internal_batch_size,
            budget=budget,
            config=getattr(self.model, "config", None),
            n_layers=self._n_layers,
            lowest=min(settings.layers),
            # a reduced call holds the maps of one layer at a time
            n_attributed=len(settings.layers) if settings.reduction is None else 1,
            accumulators=1 if settings.adaptive is None else settings.adaptive.n_levels,
            dtype=settings.autocast_dtype or next(self.model.parameters()).dtype,
            ceiling=memory.max_planned_rows(device),
        )

    def _integrate(
        self,
        batch: _Batch,
        groups: list[list[int]],
        targets: CallTarget,
        token_index: list[Tensor],
        settings: _Settings,
        plan: _RowPlan,
        show_progress: bool,
    ) -> tuple[AttributionResult, set[int]]:
        """Integrate every (group, layer) pair inside the model's attention scope; the result and degenerate layers."""
        owned, total = _plan_steps(batch, groups, settings, plan)
        # real tokens per example (patches and [CLS] for pixel inputs)
        n_tokens = [plan.tokens(batch, [i]) if batch.seq_len is None else n for i, n in enumerate(batch.lengths)]
        out = _Outputs.empty(batch, settings, n_tokens)  # checks a reduction's positions before any forward
        out.token_index, out.call_target = token_index, targets
        if getattr(getattr(self.model, "config", None), "is_encoder_decoder", False):
            out.site_axes = _site_axes(self.model, settings.layers)
        progress = _progress(total, show_progress)
        try:
            with frozen_eval(self.model), attention_scope(self.model) as ctrl:
                run = _Run(self.model, ctrl, settings, progress, plan)
                for gi, index in enumerate(groups):
                    run.attribute_group(index, targets, None if owned is None else owned[gi], out)
        finally:
            progress.close()
        out.rows_per_pass = plan.rows_per_pass
        return out.result(), out.degenerate

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

    def _validate_target(self, target: object, output: object, batch: _Batch) -> tuple[CallTarget, list[Tensor]]:
        """The checked target, one entry per result row, and per example the indices of its real tokens."""
        if not self._language_model:
            bound = bind_target(
                target, output, model=self.model, n_classes=self._num_labels, lengths=batch.lengths, labels=batch.labels
            )
            return bound, []
        if getattr(self.model.config, "is_encoder_decoder", False) and not batch.has_decoder_inputs:
            raise ArgumentError(
                "Expected `inputs['decoder_input_ids']` for an encoder-decoder language model (the decoder tokens "
                "whose next-token outputs are attributed; [[model.config.decoder_start_token_id]] per example "
                "attributes the first generated token), but got none."
            )
        lengths, index, tokens = batch.token_axis()
        bound = bind_target(
            target, output, model=self.model, n_classes=None, lengths=lengths, labels=batch.labels, tokens=tokens
        )
        return bound, index


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


def _progress(total: int | None, enabled: bool) -> Any:
    if not enabled:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="AttAttr", unit="pass")
