"""The one place that knows transformers' internals: a head-mask and attention-probability interface.

transformers v5 removed ``head_mask`` and ``prune_heads`` and routes the attention of its models
through a pluggable function chosen by ``config._attn_implementation``
(``transformers.AttentionInterface``). This module registers such a function, named
``"attattr"``, together with the matching mask builder in ``AttentionMaskInterface`` (without that
registration transformers silently drops the padding mask for unknown implementation names).

Inside :func:`attention_scope` the function is driven by an :class:`AttentionController` that can,
per forward pass,

- capture the attention probabilities of chosen layers,
- multiply the probabilities by a ``[layer, head]`` mask (soft or 0/1): the replacement for the
  removed ``head_mask``,
- replace one layer's probabilities by a supplied tensor (batched over integration steps) so that
  gradients flow to it,
- reuse cached outputs of the layers below a target layer instead of recomputing them, so that
  everything below is computed once per example (not for encoder-decoders:
  ``controller.can_skip_below``).

The model's forward code is never copied or edited: the scope switches the attention
implementation, wraps the ``forward`` of each attention layer's module instance to know which
layer is running, and undoes all of it on exit, also when an exception is raised inside.

Where attention runs, per architecture, lives in :mod:`lightning_attattr.core.families`:
encoder-only and decoder-only models have one attention call per transformer layer, while
encoder-decoders (BART, T5) have encoder self-attention, decoder self-attention and decoder
cross-attention sites (:func:`attention_layers` names them). ``module.layer_idx`` is not available
everywhere (DistilBERT, ViT) and ALBERT calls one shared layer module for every layer, so the scope
counts layer calls instead. Grouped-query attention (fewer key/value heads than query heads) is
computed per query head; the family-specific terms of Gemma2 (score softcapping), gpt-oss
(attention sinks) and T5 (relative position bias) are computed as transformers' eager attention
does, and any other keyword the attention function receives must be known to be harmless or the
model is refused. DeBERTa(-v2) computes attention in its own code, not through the interface,
and is refused with an error that lists the supported architectures.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from lightning_attattr.core.checks import ArgumentError, ArgumentTypeError
from lightning_attattr.core.families import (
    SUPPORTED_MODEL_TYPES,
    AttentionExtras,
    attention_extras,
    attention_layers,
    attention_sites,
    kv_head_count,
    unsupported,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "ATTN_IMPLEMENTATION",
    "PRUNED_HEADS_KEY",
    "SUPPORTED_MODEL_TYPES",
    "AttentionController",
    "active_controller",
    "attattr_attention",
    "attention_layers",
    "attention_scope",
    "check_head_mask",
    "kv_group_head_mask",
    "layer_modules",
    "max_sequence_length",
    "register_attention",
]

ATTN_IMPLEMENTATION = "attattr"
#: Config attribute where :mod:`lightning_attattr.core.pruning` records removed heads,
#: ``{str(layer): [original head indices]}``.
PRUNED_HEADS_KEY = "attattr_pruned_heads"

# Model types whose position ids start after the padding index (RoBERTa's convention), so that
# `max_position_embeddings - padding_idx - 1` positions are usable.
_OFFSET_POSITION_TYPES: frozenset[str] = frozenset(
    {"roberta", "xlm-roberta", "camembert", "roberta-prelayernorm", "xlm-roberta-xl", "data2vec-text", "longformer"}
)


def max_sequence_length(config: Any) -> int | None:
    """The longest token sequence a text model's position embeddings can take, or ``None`` if unknown.

    ``max_position_embeddings`` for BERT-style models; RoBERTa-style models number positions from
    ``pad_token_id + 1`` (514 embeddings give 512 tokens).

    Example:
        >>> from transformers import BertConfig, RobertaConfig
        >>> max_sequence_length(BertConfig()), max_sequence_length(RobertaConfig(max_position_embeddings=514))
        (512, 512)
    """
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int):
        return None
    if getattr(config, "model_type", None) in _OFFSET_POSITION_TYPES:
        limit -= int(getattr(config, "pad_token_id", None) or 1) + 1
    return limit


# (controller, layer index) of the transformer layer currently running, set by the layer wrappers.
_CURRENT: ContextVar[tuple[AttentionController, int] | None] = ContextVar("attattr_current_layer", default=None)
# Attribute that holds the active controller on the model instance while an `attention_scope` is open
# (so that nested scopes on one model share one controller); removed when the outermost scope exits.
_SCOPE_ATTRIBUTE = "_attattr_scope"


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # softmax and captured probabilities in at least float32 (float64 stays float64)
    return torch.promote_types(dtype, torch.float32)


def _expand_rows(mask: Tensor | None, rows: int) -> Tensor | None:
    """Repeat a ``[batch, ...]`` mask to ``rows = batch * k`` rows (example-major), if needed."""
    if mask is None or mask.shape[0] in (1, rows):
        return mask
    return mask.repeat_interleave(rows // mask.shape[0], dim=0)


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros((), dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask.to(dtype)


def _add_rows(scores: Tensor, addend: Tensor) -> Tensor:
    """``scores + addend``, ``addend`` with 1, ``rows`` or ``batch`` rows (``rows = batch * steps``, example-major)."""
    rows, batch = scores.shape[0], addend.shape[0]
    if batch not in (1, rows):  # broadcast over the steps without copying the addend
        return (scores.view(batch, rows // batch, *scores.shape[1:]) + addend.unsqueeze(1)).flatten(0, 1)
    return scores + addend


def _repeat_kv(states: Tensor, n_heads: int) -> Tensor:
    """Repeat grouped key/value heads ``[batch, kv_head, pos, dim]`` to ``n_heads`` query heads.

    Query head ``h`` uses key/value head ``h // (n_heads // kv_head)``, as transformers' ``repeat_kv``.
    """
    n_kv = states.shape[1]
    if n_kv == n_heads:
        return states
    if n_heads % n_kv:
        raise RuntimeError(f"Cannot share {n_kv} key/value heads among {n_heads} query heads.")
    return states.repeat_interleave(n_heads // n_kv, dim=1)


def _eager_probs(
    query: Tensor,
    key: Tensor,
    attention_mask: Tensor | None,
    scaling: float,
    extras: AttentionExtras | None = None,
) -> Tensor:
    """Post-softmax attention probabilities ``[batch, head, query_pos, key_pos]`` in the compute dtype.

    ``key`` has the query's heads (grouped heads already repeated). ``extras``: the family-specific
    terms, applied in the order of the family's eager attention (softcap before the position bias
    and the mask; the sink logits join the softmax and their column is dropped).
    """
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # [batch, head, query_pos, key_pos]
    dtype = _compute_dtype(scores.dtype)
    scores = scores.to(dtype)
    if extras is not None and extras.softcap is not None:
        scores = torch.tanh(scores / extras.softcap) * extras.softcap
    if extras is not None and extras.bias is not None:
        scores = _add_rows(scores, extras.bias.to(dtype)[..., : key.shape[-2]])
    if attention_mask is not None:
        scores = _add_rows(scores, _additive(attention_mask, dtype)[..., : key.shape[-2]])
    if extras is None or extras.sinks is None:
        return torch.softmax(scores, dim=-1)
    sinks = extras.sinks.to(dtype).view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)  # [batch, head, query_pos, 1]
    return torch.softmax(torch.cat([scores, sinks], dim=-1), dim=-1)[..., :-1]


def attattr_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, Tensor | None]:
    """Attention function registered as ``"attattr"`` in ``transformers.AttentionInterface``.

    Outside an :func:`attention_scope` it computes exactly what transformers' eager attention
    computes. Inside a scope the active :class:`AttentionController` decides per layer.

    Args:
        module: the calling attention module.
        query: ``[batch, head, query_pos, head_dim]``.
        key: ``[batch, kv_head, key_pos, head_dim]`` (``kv_head`` divides ``head``: grouped-query
            attention shares each key/value head among ``head // kv_head`` query heads).
        value: ``[batch, kv_head, key_pos, head_dim]``.
        attention_mask: ``None``, an additive float mask or a boolean mask, broadcastable to
            ``[batch, 1, query_pos, key_pos]``.
        scaling: factor applied to ``query @ key^T`` (default ``head_dim ** -0.5``).
        dropout: attention-probability dropout rate (applied in training mode only).
        **kwargs: model-specific extras. ``softcap`` (Gemma2), ``s_aux`` (gpt-oss attention sinks)
            and ``position_bias`` (T5) are computed as the family's eager attention does; the
            keywords in :data:`~lightning_attattr.core.families.HARMLESS_KEYWORDS` do not change
            the computation; any other keyword is refused.

    Returns:
        ``(output [batch, query_pos, head, head_dim], probabilities [batch, head, query_pos, key_pos])``;
        the probabilities are ``None`` where the controller chose the fused SDPA kernel.

    Raises:
        UnsupportedModelError: a keyword that is neither implemented nor known to be harmless.
    """
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    extras = attention_extras(module, kwargs, attention_mask, key.shape[-2])
    current = _CURRENT.get()
    if current is not None:
        controller, layer = current
        return controller._attend(module, layer, query, key, value, attention_mask, scaling, dropout, extras)
    key, value = _repeat_kv(key, query.shape[1]), _repeat_kv(value, query.shape[1])
    probs = _eager_probs(query, key, attention_mask, scaling, extras).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def register_attention() -> None:
    """Register the ``"attattr"`` attention function and its mask builder with transformers.

    Idempotent. Called at import time of this module (so that processes started by DDP spawn
    have it too) and again by :func:`attention_scope`.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, attattr_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, eager_mask)


def check_head_mask(
    mask: object, n_layers: int, n_heads: int, name: str = "head_mask", per_row: bool = False
) -> Tensor | None:
    """Return ``mask`` if it is ``None`` or a ``[n_layers, n_heads]`` tensor, else raise.

    With ``per_row=True`` a ``[rows, n_layers, n_heads]`` tensor (one mask per batch row) is accepted too.

    Raises:
        TypeError: not a tensor (nor ``None``).
        ValueError: wrong shape (the message shows the expected and the given shape).
    """
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise ArgumentTypeError(f"Expected `{name}` to be a tensor or None, but got {type(mask).__name__}.")
    if tuple(mask.shape) == (n_layers, n_heads) or (
        per_row and mask.dim() == 3 and tuple(mask.shape[1:]) == (n_layers, n_heads)
    ):
        return mask
    allowed = f"[layer, head] = {[n_layers, n_heads]}" + (f" or [row, {n_layers}, {n_heads}]" if per_row else "")
    raise ArgumentError(f"Expected `{name}` of shape {allowed}, but got {list(mask.shape)}.")


class AttentionController:
    """Per-forward switches read by the ``"attattr"`` attention function.

    Created by :func:`attention_scope`; do not construct directly. Public state:

    - ``head_mask``: ``None`` or a ``[layer, head]`` tensor that multiplies every layer's attention
      probabilities (0 removes a head, values in between scale it), in every forward of the scope;
      ``[row, layer, head]`` gives every batch row its own mask (``rows`` must equal the batch size).
    - ``use_sdpa``: let layers that need no probabilities use the fused SDPA kernel (faster; the
      returned attention weights of those layers are then ``None``).

    Attributes:
        n_layers: number of attention layers (calls per forward).
        n_heads: attention (query) heads per layer.
        n_kv_heads: key/value heads per layer (``n_heads`` unless the model uses grouped-query or
            multi-query attention; query head ``h`` reads key/value head
            ``h // (n_heads // n_kv_heads)``). Head masks and probabilities stay per query head
            (:func:`kv_group_head_mask` turns a per-group mask into one).
        layer_names: one name per attention layer (:func:`attention_layers`).
        can_skip_below: whether the layers below a target layer may be replaced by their cached
            output (``False`` for encoder-decoders, whose attention layers are modules inside the
            transformer layers: every pass then runs the full model).
        layers_seen: layer indices whose attention ran through the interface in the last forward.
    """

    def __init__(
        self,
        n_layers: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        layer_names: list[str] | None = None,
        can_skip_below: bool = True,
    ) -> None:
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        self.layer_names = [f"layer.{i}" for i in range(n_layers)] if layer_names is None else list(layer_names)
        self.can_skip_below = can_skip_below
        self.head_mask: Tensor | None = None
        self.use_sdpa = False
        self.layers_seen: list[int] = []
        self._shared_calls = 0
        self._capture: frozenset[int] = frozenset()
        self._captured: dict[int, Tensor] = {}
        self._record: frozenset[int] = frozenset()
        self._recorded: dict[int, Any] = {}
        self._replace_layer: int | None = None
        self._replacement: Tensor | None = None
        self._skip_below = 0
        self._skip_output: Any = None
        self._kept: dict[int, Tensor] = {}  # layer -> original indices of the heads left after pruning
        self._context: frozenset[int] = frozenset()
        self._contexts: dict[int, Tensor] = {}
        self._edge_masks: dict[int, Tensor] = {}
        self._probe: frozenset[int] = frozenset()
        self._probed: dict[int, tuple[Tensor, Tensor]] = {}

    # ----------------------------------------------------------------- public helpers
    def set_head_mask(self, head_mask: Tensor | None) -> None:
        """Set (or clear with ``None``) the multiplicative head mask: ``[layer, head]`` or ``[row, layer, head]``."""
        self.head_mask = check_head_mask(head_mask, self.n_layers, self.n_heads, per_row=True)

    @contextlib.contextmanager
    def masked(self, head_mask: Tensor | None) -> Iterator[None]:
        """Temporarily apply ``head_mask`` (``[layer, head]`` or ``[row, layer, head]``); restored on exit."""
        previous = self.head_mask
        self.set_head_mask(head_mask)
        try:
            yield
        finally:
            self.head_mask = previous

    @contextlib.contextmanager
    def capturing(self, layers: Iterator[int] | None = None) -> Iterator[dict[int, Tensor]]:
        """Capture attention probabilities during the forwards run inside this block.

        Yields a dict ``layer -> probabilities [batch, head, query_pos, key_pos]`` (detached, in at
        least float32, after the head mask), filled by the next forward pass.
        """
        store: dict[int, Tensor] = {}
        with self._state(_capture=frozenset(range(self.n_layers) if layers is None else layers), _captured=store):
            yield store

    @contextlib.contextmanager
    def capturing_context(self, layers: Iterable[int] | None = None) -> Iterator[dict[int, Tensor]]:
        """Capture each head's context vectors ``A_h V_h`` during the forwards run inside this block.

        Yields a dict ``layer -> context [batch, head, query_pos, head_dim]`` (the attention output
        before the heads are concatenated and projected), filled by the next forward pass. The
        tensors are NOT detached: they are the ones the forward continues with, so
        ``torch.autograd.grad(scalar, list(store.values()))`` gives the gradient with respect to
        them, provided something upstream requires grad (parameters, ``inputs_embeds``, or a head
        mask with ``requires_grad``). In a pruned model the head axis holds only the heads still
        present (original indices in ``self._kept[layer]``).
        """
        store: dict[int, Tensor] = {}
        with self._state(_context=frozenset(range(self.n_layers) if layers is None else layers), _contexts=store):
            yield store

    @contextlib.contextmanager
    def replacing(self, layer: int, probs: Tensor) -> Iterator[None]:
        """Replace layer ``layer``'s attention probabilities by ``probs`` in the forwards run inside this block.

        ``probs`` is ``[batch, head, query_pos, key_pos]`` with the batch of the inputs (for a
        cross-attention layer of an encoder-decoder ``[batch, head, decoder_pos, encoder_pos]``;
        with grouped-query attention one map per query head); the layers above recompute their
        attention from the changed hidden states, and gradients flow back to ``probs`` (make it
        ``requires_grad``). This is the path integral's building block
        ``F(alpha * A)``; :class:`~lightning_attattr.core.attribution.AttentionIntegratedGradients`
        uses the same switch with batched steps and cached lower layers.

        Raises:
            ArgumentError: ``layer`` outside ``0 .. n_layers - 1``.
        """
        if not 0 <= int(layer) < self.n_layers:
            raise ArgumentError(f"Expected `layer` in [0, {self.n_layers - 1}], but got {layer!r}.")
        with self._state(_replace_layer=int(layer), _replacement=probs):
            yield

    @contextlib.contextmanager
    def removing_edges(self, masks: dict[int, Tensor]) -> Iterator[None]:
        """Multiply chosen layers' attention probabilities by edge masks in the forwards run inside this block.

        ``masks`` maps a layer to a multiplier ``[rows, query_pos, key_pos]`` (every head of the layer)
        or ``[rows, head, query_pos, key_pos]``, with ``rows`` 1 or the batch size; 0 removes the
        connection "query attends to key" (the probability is set to 0, the others are not
        renormalised, as with a head mask). Applied after the head mask.

        Raises:
            ArgumentError: a layer outside ``0 .. n_layers - 1`` or a mask that is not 3- or 4-D.
        """
        checked = {}
        for layer, mask in masks.items():
            if not 0 <= int(layer) < self.n_layers:
                raise ArgumentError(f"Expected edge-mask layers in [0, {self.n_layers - 1}], but got {layer!r}.")
            if not isinstance(mask, Tensor) or mask.dim() not in (3, 4):
                shape = list(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
                raise ArgumentError(
                    f"Expected the edge mask of layer {layer} to be a [rows, query, key] or [rows, head, query, key] "
                    f"tensor, but got {shape}."
                )
            checked[int(layer)] = mask if mask.dim() == 4 else mask[:, None]
        with self._state(_edge_masks=checked):
            yield

    @contextlib.contextmanager
    def probing(self, layers: Iterable[int] | None = None) -> Iterator[dict[int, tuple[Tensor, Tensor]]]:
        """Make the attention probabilities of chosen layers differentiable in the next forward.

        Yields a dict ``layer -> (probabilities, handle)``: the probabilities
        ``[batch, head, query_pos, key_pos]`` (detached, in at least float32) and a zero tensor of the
        same shape that was added to them in the forward, so that
        ``torch.autograd.grad(output, handle)`` is the total derivative of ``output`` with respect to
        that layer's probabilities, through every path above it (the layers above still recompute
        their own attention). Needs grad mode; in a pruned model the head axis holds the heads left.
        """
        store: dict[int, tuple[Tensor, Tensor]] = {}
        with self._state(_probe=frozenset(range(self.n_layers) if layers is None else layers), _probed=store):
            yield store

    def check_all_layers_ran(self) -> None:
        """Raise unless the last forward ran every layer's attention through the interface exactly once.

        Raises:
            RuntimeError: the model does not route its attention through ``AttentionInterface``, or
                runs layers more than once (e.g. under gradient checkpointing).
        """
        if self.layers_seen != list(range(self.n_layers)):
            raise RuntimeError(
                f"Expected the model's attention to run through the 'attattr' attention function once per layer "
                f"(layers 0..{self.n_layers - 1}), but saw layers {self.layers_seen}. The model does not route "
                "its attention through transformers' AttentionInterface (or runs layers more than once, e.g. "
                "under gradient checkpointing)."
            )

    # ----------------------------------------------------------------- internal state
    @contextlib.contextmanager
    def _state(self, **fields: Any) -> Iterator[None]:
        previous = {name: getattr(self, name) for name in fields}
        for name, value in fields.items():
            setattr(self, name, value)
        try:
            yield
        finally:
            for name, value in previous.items():
                setattr(self, name, value)

    def _start_forward(self) -> None:
        self.layers_seen = []
        self._shared_calls = 0

    def _next_shared_index(self) -> int:
        index = self._shared_calls % self.n_layers
        self._shared_calls += 1
        return index

    def _run_layer(self, layer: int, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        if not self.can_skip_below and self._skip_below > 0:
            raise RuntimeError(
                "Expected no skipped layers for this model (its attention layers are modules inside encoder "
                "and decoder layers, so cached lower layers cannot be replayed), "
                f"but got skip_below={self._skip_below}."
            )
        if layer < self._skip_below:
            return self._skip_output
        token = _CURRENT.set((self, layer))
        try:
            output = forward(*args, **kwargs)
        finally:
            _CURRENT.reset(token)
        if layer in self._record:
            self._recorded[layer] = output
        return output

    def _attend(
        self,
        module: nn.Module,
        layer: int,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        scaling: float,
        dropout: float,
        extras: AttentionExtras | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        self.layers_seen.append(layer)
        kept = self._kept.get(layer)
        key, value = self._heads_of_queries(kept, query, key, value)
        if kept is not None and extras is not None:
            extras = self._kept_extras(kept, extras)
        if layer == self._replace_layer and self._replacement is not None:
            probs = self._replacement  # [rows, head, query_pos, key_pos], all original heads
            if kept is not None:
                probs = probs.index_select(1, kept.to(probs.device))
            if probs.shape[0] != query.shape[0] or probs.shape[1:] != (*query.shape[1:3], key.shape[-2]):
                raise RuntimeError(
                    f"Replacement attention for layer {layer} has shape {list(probs.shape)}, but the layer "
                    f"computes [{query.shape[0]}, {query.shape[1]}, {query.shape[2]}, {key.shape[-2]}]."
                )
            out = self._keep_context(layer, torch.matmul(probs.to(value.dtype), value))
            return out.transpose(1, 2).contiguous(), probs
        mask_row = None  # [1 or rows, head] multipliers of this layer
        if self.head_mask is not None:
            mask_row = self.head_mask[layer][None] if self.head_mask.dim() == 2 else self.head_mask[:, layer]
            if kept is not None:
                mask_row = mask_row.index_select(1, kept.to(mask_row.device))
        edge_mask = self._edge_masks.get(layer)
        plain = mask_row is None and edge_mask is None and layer not in self._probe
        # softcapping and sink logits have no fused kernel: those layers always take the eager path
        fusable = extras is None or (extras.softcap is None and extras.sinks is None)
        if self.use_sdpa and layer not in self._capture and plain and fusable:
            attn_mask = _expand_rows(attention_mask, query.shape[0])
            if attn_mask is not None and attn_mask.dtype != torch.bool:
                attn_mask = attn_mask.to(query.dtype)
            if extras is not None and extras.bias is not None:  # T5: the position bias joins the additive mask
                bias = cast(Tensor, _expand_rows(extras.bias, query.shape[0]))
                attn_mask = bias.to(query.dtype) if attn_mask is None else _additive(attn_mask, query.dtype) + bias
            out = nn.functional.scaled_dot_product_attention(
                query,
                key,
                value,
                attn_mask=attn_mask,
                dropout_p=dropout if module.training else 0.0,
                scale=scaling,
            )
            return self._keep_context(layer, out).transpose(1, 2).contiguous(), None
        probs = _eager_probs(query, key, attention_mask, scaling, extras)
        if mask_row is not None:
            if mask_row.shape[0] not in (1, probs.shape[0]):
                raise ArgumentError(
                    f"Expected a per-row head mask with one row per batch row ({probs.shape[0]}), but got "
                    f"{mask_row.shape[0]} rows."
                )
            probs = probs * mask_row.to(device=probs.device, dtype=probs.dtype)[:, :, None, None]
        if edge_mask is not None:
            if edge_mask.shape[0] not in (1, probs.shape[0]) or edge_mask.shape[2:] != probs.shape[2:]:
                raise ArgumentError(
                    f"Expected the edge mask of layer {layer} to have 1 or {probs.shape[0]} rows and "
                    f"{list(probs.shape[2:])} (query, key) positions, but got {list(edge_mask.shape)}."
                )
            probs = probs * edge_mask.to(device=probs.device, dtype=probs.dtype)
        if layer in self._probe:
            handle = torch.zeros_like(probs, requires_grad=True)
            self._probed[layer] = (probs.detach(), handle)
            probs = probs + handle
        if layer in self._capture:
            captured = probs.detach()
            if kept is not None:  # removed heads attend nowhere: zeros at their original index
                full = captured.new_zeros(captured.shape[0], self.n_heads, *captured.shape[2:])
                captured = full.index_copy_(1, kept.to(captured.device), captured)
            self._captured[layer] = captured
        probs = nn.functional.dropout(probs.to(query.dtype), p=dropout, training=module.training)
        out = self._keep_context(layer, torch.matmul(probs, value))  # [batch, head, query_pos, head_dim]
        return out.transpose(1, 2).contiguous(), probs

    def _heads_of_queries(
        self, kept: Tensor | None, query: Tensor, key: Tensor, value: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Key and value ``[batch, head, key_pos, head_dim]`` with one head per (kept) query head."""
        if kept is not None and self.n_kv_heads != self.n_heads and key.shape[1] == self.n_kv_heads:
            # pruned query heads of a grouped-query layer: each keeps its original key/value group
            group = (kept // (self.n_heads // self.n_kv_heads)).to(key.device)
            return key.index_select(1, group), value.index_select(1, group)
        return _repeat_kv(key, query.shape[1]), _repeat_kv(value, query.shape[1])

    def _kept_extras(self, kept: Tensor, extras: AttentionExtras) -> AttentionExtras:
        """Per-head extras of all original heads restricted to the heads left after pruning."""
        sinks, bias = extras.sinks, extras.bias
        if sinks is not None and sinks.shape[0] == self.n_heads:
            sinks = sinks.index_select(0, kept.to(sinks.device))
        if bias is not None and bias.shape[1] == self.n_heads:
            bias = bias.index_select(1, kept.to(bias.device))
        return extras._replace(sinks=sinks, bias=bias)

    def _keep_context(self, layer: int, out: Tensor) -> Tensor:
        if layer in self._context:
            self._contexts[layer] = out
        return out


def layer_modules(model: nn.Module) -> list[nn.Module]:
    """Modules called once per attention layer, in call order (ALBERT repeats its shared module).

    For encoder-only and decoder-only models these are the transformer layers; for
    encoder-decoders (BART, T5) the attention modules themselves (encoder self-attention, then
    per decoder layer its self- and cross-attention), named by :func:`attention_layers`.

    Args:
        model: a Hugging Face ``PreTrainedModel`` of a supported architecture.

    Returns:
        One module per attention layer; ``len(result)`` is the number of attention layers.

    Raises:
        TypeError: ``model`` is not a Hugging Face ``PreTrainedModel``.
        ValueError: the architecture does not route attention through ``AttentionInterface``.
    """
    return attention_sites(model).modules


def kv_group_head_mask(mask: Tensor, n_heads: int) -> Tensor:
    """Turn a per key/value-group head mask into the per query head mask the controller takes.

    With grouped-query attention, ``n_heads // n_kv_heads`` consecutive query heads share one
    key/value head; masking a group masks every query head of it.

    Args:
        mask: ``[..., n_kv_heads]`` (e.g. ``[layer, kv_head]``), one multiplier per key/value head.
        n_heads: query heads per layer (a multiple of ``n_kv_heads``).

    Returns:
        ``[..., n_heads]``: query head ``h`` gets the multiplier of group ``h // (n_heads // n_kv_heads)``.

    Raises:
        ArgumentTypeError: ``mask`` is not a tensor.
        ArgumentError: ``n_heads`` is not a positive multiple of the mask's last dimension.

    Example:
        >>> kv_group_head_mask(torch.tensor([[1.0, 0.0]]), n_heads=4)
        tensor([[1., 1., 0., 0.]])
    """
    if not isinstance(mask, Tensor):
        raise ArgumentTypeError(f"Expected `mask` to be a tensor, but got {type(mask).__name__}.")
    n_kv = mask.shape[-1] if mask.dim() else 0
    if n_kv == 0 or not isinstance(n_heads, int) or n_heads <= 0 or n_heads % n_kv:
        raise ArgumentError(
            f"Expected `n_heads` to be a positive multiple of the mask's key/value heads ({n_kv}), but got {n_heads!r}."
        )
    return mask.repeat_interleave(n_heads // n_kv, dim=-1)


def active_controller(model: nn.Module) -> AttentionController | None:
    """The controller of the :func:`attention_scope` open on ``model``, or ``None`` outside one.

    Args:
        model: any model (a model that was never scoped has no controller).

    Returns:
        The :class:`AttentionController` that a nested ``attention_scope(model)`` would yield, or ``None``.
    """
    controller = getattr(model, _SCOPE_ATTRIBUTE, None)
    return controller if isinstance(controller, AttentionController) else None


def _install_layer_wrapper(controller: AttentionController, module: nn.Module, index: int | None) -> Callable[[], None]:
    """Wrap ``module.forward`` on the instance; return a function that undoes it."""
    had_instance_forward = "forward" in module.__dict__
    original = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        layer = controller._next_shared_index() if index is None else index
        return controller._run_layer(layer, original, args, kwargs)

    module.forward = forward

    def undo() -> None:
        if had_instance_forward:
            module.forward = original
        else:
            del module.forward

    return undo


@contextlib.contextmanager
def attention_scope(model: nn.Module) -> Iterator[AttentionController]:
    """Route ``model``'s attention through the ``"attattr"`` function for the duration of the block.

    On entry the model's attention implementation is switched to ``"attattr"`` and its layers are
    wrapped; on exit (normal or by exception) the previous implementation is restored and every
    wrapper and hook is removed. Scopes are reentrant: a nested scope on the same model yields
    the same controller, which the model instance holds while the scope is open
    (:func:`active_controller`).

    Args:
        model: a Hugging Face ``PreTrainedModel`` of a supported architecture.

    Yields:
        The :class:`AttentionController` of this model.

    Raises:
        TypeError, ValueError: see :func:`layer_modules`.

    Example:
        >>> import torch
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
        ...                  num_attention_heads=2, intermediate_size=32)
        >>> model = BertForSequenceClassification(cfg).eval()
        >>> ids = torch.tensor([[1, 5, 7, 2]])
        >>> with attention_scope(model) as ctrl, ctrl.capturing() as probs:
        ...     _ = model(input_ids=ids)
        >>> sorted(probs), list(probs[0].shape)
        ([0, 1], [1, 2, 4, 4])
        >>> model.config._attn_implementation != "attattr"
        True
    """
    active = active_controller(model)
    if active is not None:
        yield active
        return
    sites = attention_sites(model)
    modules = sites.modules
    model = cast("PreTrainedModel", model)  # attention_sites refuses anything else
    register_attention()
    controller = AttentionController(
        n_layers=len(modules),
        n_heads=model.config.num_attention_heads,
        n_kv_heads=kv_head_count(model.config),
        layer_names=sites.names,
        can_skip_below=sites.can_skip_below,
    )
    n_heads = controller.n_heads
    # the kept-head indices live where the attention runs (a layer elsewhere moves them when it uses them)
    device = next((p.device for p in model.parameters()), None)
    for layer, gone in (getattr(model.config, PRUNED_HEADS_KEY, None) or {}).items():
        if gone:
            kept = [h for h in range(n_heads) if h not in {int(g) for g in gone}]
            controller._kept[int(layer)] = torch.tensor(kept, dtype=torch.long, device=device)
    previous_impl = model.config._attn_implementation
    undo: list[Callable[[], None]] = []
    try:
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
        if model.config._attn_implementation != ATTN_IMPLEMENTATION:
            raise unsupported(model, "its attention implementation cannot be switched")
        shared = len({id(m) for m in modules}) < len(modules)
        for index, module in enumerate(modules):
            if shared and any(m is module for m in modules[:index]):
                continue
            undo.append(_install_layer_wrapper(controller, module, None if shared else index))
        roots: dict[int, nn.Module] = {id(model): model, id(model.base_model): model.base_model}
        for root in roots.values():
            handle = root.register_forward_pre_hook(lambda _module, _args: controller._start_forward())
            undo.append(handle.remove)
        setattr(model, _SCOPE_ATTRIBUTE, controller)
        yield controller
    finally:
        vars(model).pop(_SCOPE_ATTRIBUTE, None)
        for fn in reversed(undo):
            fn()
        if model.config._attn_implementation != previous_impl:
            if previous_impl is None:
                model.config._attn_implementation = None
            else:
                model.set_attn_implementation(previous_impl)


register_attention()
