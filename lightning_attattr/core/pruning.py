"""Structural head pruning: the replacement for transformers' removed ``prune_heads``.

Pruning a head removes its rows from the query, key and value projections and its columns from
the attention output projection, so the model gets smaller and faster. The removed heads are
recorded in the model config under :data:`PRUNED_HEADS_KEY` (original head indices, per layer), so
that

- ``save_pretrained`` writes the record into ``config.json`` and :func:`from_pretrained_pruned`
  rebuilds the smaller structure before it loads the weights (plain ``from_pretrained`` cannot:
  the saved tensors no longer have the shapes the config implies);
- :func:`~lightning_attattr.core.adapter.attention_scope` keeps addressing heads by their original
  index: a ``[layer, head]`` head mask still has ``num_attention_heads`` columns, captured
  probabilities and attributions are zero for removed heads.

A head mask with zeros gives the same logits as pruning those heads (tested), so masks are the
cheap way to try a pruning and this module the way to keep it.

No model code is copied or edited: the projections are replaced by smaller ``nn.Linear`` (or,
for GPT-2, transformers' ``Conv1D``) modules and the per-module head counts are updated. Fused
projections are cut per block: Phi-3's ``qkv_proj`` rows are ``[query | key | value]`` (its attention
module then sees its own head count through a view of the config that changes nothing else), and
GPT-2's ``c_attn`` columns likewise (its ``split_size`` and ``num_heads`` are updated). Per-head norms
(Qwen3's and Gemma3's ``q_norm``/``k_norm``) act on ``head_dim`` and are left as they are;
gpt-oss's per-head attention sinks lose the removed heads' entries.

Grouped-query attention (``num_key_value_heads < num_attention_heads``, query head ``h`` reading
key/value head ``h // group_size``): pruning removes whole key/value groups, i.e. all query heads
of a group together with the group's key and value rows. Removing only some query heads of a
group is refused, because the groups would no longer have equal sizes and transformers'
``repeat_kv`` cannot express that; a head mask (per query head) can still silence single heads.
:func:`~lightning_attattr.core.importance.kv_group_importance` and
:func:`~lightning_attattr.core.importance.heads_of_kv_groups` rank groups and turn the chosen ones
into query heads. The config keeps its original ``num_attention_heads`` and
``num_key_value_heads`` (the record of removed query heads is all
:func:`from_pretrained_pruned` needs to rebuild the structure).

Encoder-decoders are pruned per attention site, the layers of
:func:`~lightning_attattr.core.families.attention_layers` (``"encoder.<i>"``, ``"decoder.<i>.self"``,
``"decoder.<i>.cross"``), addressed by their index in that list as the rows of a head mask are:
BART's encoder self-attention, decoder self-attention and cross-attention lose heads independently.
T5 is refused: its relative position bias is computed by the first layer of each stack for all
heads and passed on to every later layer, so transformers' forward cannot run a layer with fewer
heads (a head mask silences T5 heads instead).

ALBERT shares one layer module across all layers, so its heads cannot be pruned per layer; it is
refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from lightning_attattr.core.adapter import PRUNED_HEADS_KEY, active_controller, layer_modules
from lightning_attattr.core.checks import ArgumentError, ArgumentTypeError, UnsupportedModelError
from lightning_attattr.core.families import kv_head_count

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "PRUNED_HEADS_KEY",
    "PruningReport",
    "count_parameters",
    "from_pretrained_pruned",
    "kept_heads",
    "prune_heads",
    "pruned_heads",
]

# (attention module path, (q, k, v) names, output projection path, head-count attributes)
_LAYOUTS: tuple[tuple[str, tuple[str, str, str], str, tuple[str, ...]], ...] = (
    ("attention.self", ("query", "key", "value"), "attention.output.dense", ("num_attention_heads",)),  # BERT family
    ("attention", ("q_proj", "k_proj", "v_proj"), "attention.o_proj", ("num_attention_heads",)),  # ViT (v5)
    # Llama, Mistral, Qwen2/3, Gemma(2/3): the decoders read their head counts from the projections' shapes
    ("self_attn", ("q_proj", "k_proj", "v_proj"), "self_attn.o_proj", ("num_attention_heads", "num_heads")),
    ("attention", ("q_lin", "k_lin", "v_lin"), "attention.out_lin", ("n_heads",)),  # DistilBERT
    # BART: the site is the attention module itself (encoder self-, decoder self- or cross-attention);
    # its forward reshapes by `head_dim` alone, `num_heads` is kept in step for readers of the module
    ("", ("q_proj", "k_proj", "v_proj"), "out_proj", ("num_heads",)),
)
# (attention module path, fused projection, output projection path): rows [query | key | value]
_FUSED_LAYOUTS: tuple[tuple[str, str, str], ...] = (
    ("self_attn", "qkv_proj", "self_attn.o_proj"),  # Phi-3 (nn.Linear)
    ("attn", "c_attn", "attn.c_proj"),  # GPT-2 (transformers' Conv1D: weight [in, out])
)
_SUPPORTED = (
    "BERT, RoBERTa, ELECTRA, XLM-RoBERTa, CamemBERT, DistilBERT, ViT, Llama, Mistral, Qwen2, Qwen3, "
    "Gemma (1-3), gpt-oss, Phi-3, GPT-2 and BART"
)


@dataclass(frozen=True)
class PruningReport:
    """What one :func:`prune_heads` call did.

    Attributes:
        pruned: every removed head after the call, ``{layer: [original head indices]}``.
        newly_pruned: heads removed by this call.
        n_parameters_before: parameter count before the call.
        n_parameters_after: parameter count after the call.
    """

    pruned: dict[int, list[int]]
    newly_pruned: dict[int, list[int]]
    n_parameters_before: int
    n_parameters_after: int

    @property
    def n_heads_pruned(self) -> int:
        """Total number of removed heads."""
        return sum(len(heads) for heads in self.pruned.values())


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model`` (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def pruned_heads(model: nn.Module) -> dict[int, list[int]]:
    """Removed heads recorded in ``model.config``: ``{layer: sorted original head indices}``."""
    record = getattr(model.config, PRUNED_HEADS_KEY, None) or {}
    return {int(layer): sorted(int(h) for h in heads) for layer, heads in record.items() if heads}


def kept_heads(model: nn.Module) -> dict[int, list[int]]:
    """Original indices of the heads still present, for the layers that lost heads."""
    n_heads = int(cast("PreTrainedModel", model).config.num_attention_heads)  # a Hugging Face model
    return {layer: [h for h in range(n_heads) if h not in set(gone)] for layer, gone in pruned_heads(model).items()}


class _LayerConfig:
    """The model config as one pruned attention module sees it: its own ``num_attention_heads``.

    Phi-3's attention splits its fused projection at ``config.num_attention_heads * head_dim``;
    after pruning that module needs its own count while everything else (the attention
    implementation, which :func:`~lightning_attattr.core.adapter.attention_scope` switches on the
    model config) still comes from the shared config.
    """

    def __init__(self, base: Any, num_attention_heads: int) -> None:
        self._base = getattr(base, "_base", base)
        self.num_attention_heads = num_attention_heads

    def __getattr__(self, name: str) -> Any:  # only called for names not set on the instance
        base = self.__dict__.get("_base")
        if base is None:  # during unpickling/copying, before the state is restored
            raise AttributeError(name)
        return getattr(base, name)


@dataclass(frozen=True)
class _Attention:
    """One layer's attention projections: separate q/k/v or one fused projection."""

    module: nn.Module
    projections: tuple[str, ...]  # (q, k, v) names, or the one fused projection
    out_parent: nn.Module
    out_name: str
    count_attrs: tuple[str, ...]

    @property
    def fused(self) -> bool:
        return len(self.projections) == 1


def _resolve(module: nn.Module, path: str) -> Any:
    found: Any = module
    for name in path.split(".") if path else ():
        found = getattr(found, name, None)
        if found is None:
            return None
    return found


def _is_projection(module: object) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D))


def _layout(layer: nn.Module) -> _Attention:
    if getattr(layer, "crossattention", None) is not None:  # GPT-2 built with `add_cross_attention=True`
        raise ArgumentError(
            f"Cannot prune heads of {type(layer).__name__} with a cross-attention module: structural pruning "
            "supports self-attention only; use a head mask instead."
        )

    def found(attn_path: str, names: tuple[str, ...], out_path: str, count_attrs: tuple[str, ...]) -> _Attention | None:
        attn, out = _resolve(layer, attn_path), _resolve(layer, out_path)
        if attn is None or out is None or not all(_is_projection(getattr(attn, n, None)) for n in names):
            return None
        parent_path, _, out_name = out_path.rpartition(".")
        return _Attention(attn, names, _resolve(layer, parent_path), out_name, count_attrs)

    for attn_path, qkv, out_path, count_attrs in _LAYOUTS:
        attention = found(attn_path, qkv, out_path, count_attrs)
        if attention is not None:
            return attention
    for attn_path, fused, out_path in _FUSED_LAYOUTS:
        attention = found(attn_path, (fused,), out_path, ("num_heads",))
        if attention is not None:
            return attention
    raise ArgumentError(
        f"Cannot find the query/key/value and output projections in layer module {type(layer).__name__}; "
        f"structural pruning supports {_SUPPORTED}."
    )


def _keep(projection: nn.Module, index: Tensor, outputs: bool) -> nn.Module:
    """A copy of an ``nn.Linear`` or ``Conv1D`` with only ``index`` of its outputs (or inputs).

    ``nn.Linear`` stores its weight as ``[out, in]``, transformers' ``Conv1D`` as ``[in, out]``.
    """
    from transformers.pytorch_utils import Conv1D

    linear = isinstance(projection, nn.Linear)
    weight_param = cast(Tensor, projection.weight)
    dim = (0 if linear else 1) if outputs else (1 if linear else 0)
    weight = weight_param.detach().index_select(dim, index.to(weight_param.device))
    bias = cast("Tensor | None", projection.bias)
    new: nn.Module
    if linear:
        new = nn.Linear(
            weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype
        )
    else:
        new = Conv1D(weight.shape[1], weight.shape[0]).to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias.detach()[index.to(bias.device)] if outputs else bias.detach())
    new.weight.requires_grad_(weight_param.requires_grad)
    if bias is not None:
        new.bias.requires_grad_(bias.requires_grad)
    new.train(projection.training)
    return new


def _group_size(model: nn.Module) -> int:
    config = cast("PreTrainedModel", model).config
    n_heads, n_kv = int(config.num_attention_heads), kv_head_count(config)
    if n_kv <= 0 or n_heads % n_kv:
        raise ArgumentError(
            f"Expected `num_attention_heads` ({n_heads}) to be a multiple of `num_key_value_heads`, but got {n_kv}."
        )
    return n_heads // n_kv


def _normalize_heads(heads: Mapping[int, Iterable[int]] | Tensor, n_layers: int, n_heads: int) -> dict[int, set[int]]:
    if isinstance(heads, Tensor):
        if tuple(heads.shape) != (n_layers, n_heads):
            raise ArgumentError(
                f"Expected `heads` as a [layer, head] mask of shape {[n_layers, n_heads]} (0 = remove), "
                f"but got shape {list(heads.shape)}."
            )
        zero = (heads == 0).cpu()
        return {layer: {int(h) for h in zero[layer].nonzero().flatten()} for layer in range(n_layers)}
    if not isinstance(heads, Mapping):
        raise ArgumentTypeError(
            "Expected `heads` to be a mapping {layer: [head, ...]} or a [layer, head] mask tensor, "
            f"but got {type(heads).__name__}."
        )
    out: dict[int, set[int]] = {}
    for layer, layer_heads in heads.items():
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
            raise ArgumentError(f"Expected layer indices in [0, {n_layers - 1}] in `heads`, but got {layer!r}.")
        chosen = set()
        for h in layer_heads:
            if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h < n_heads:
                raise ArgumentError(f"Expected head indices in [0, {n_heads - 1}] in `heads[{layer}]`, but got {h!r}.")
            chosen.add(h)
        out[layer] = chosen
    return out


def prune_heads(model: nn.Module, heads: Mapping[int, Iterable[int]] | Tensor) -> PruningReport:
    """Remove attention heads from ``model`` in place.

    Args:
        model: a Hugging Face ``PreTrainedModel``: BERT family, DistilBERT, ViT, a decoder
            (Llama, Mistral, Qwen2, Qwen3, Gemma 1-3, gpt-oss, Phi-3, GPT-2) or BART, with any
            task head.
        heads: ``{layer: [head, ...]}`` in original (query) head indices, or a ``[layer, head]``
            mask whose zeros mark the heads to remove (the convention of the head mask). Heads
            that are already gone are ignored, so the call is idempotent. With grouped-query
            attention the heads must make up whole key/value groups. A layer is an index into
            :func:`~lightning_attattr.core.families.attention_layers`, the row of a head mask:
            for BART that list is the encoder layers, then per decoder layer its self-attention
            and its cross-attention, each pruned on its own.

    Returns:
        A :class:`PruningReport` with the parameter counts before and after.

    Raises:
        ValueError: bad layer/head indices or mask shape, every head of a layer chosen (use a head
            mask to silence a whole layer), part of a key/value group chosen, ALBERT (shared
            layers), T5 (position bias shared across layers with all heads:
            ``UnsupportedModelError``), or an unsupported layout.
        RuntimeError: called inside an :func:`~lightning_attattr.core.adapter.attention_scope` of
            ``model``.

    Example:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16,
        ...     num_hidden_layers=2, num_attention_heads=4, intermediate_size=32))
        >>> report = prune_heads(model, {0: [1, 3], 1: [0]})
        >>> report.pruned, model.bert.encoder.layer[0].attention.self.query.out_features
        ({0: [1, 3], 1: [0]}, 8)

        An encoder-decoder, pruned per attention site:

        >>> from transformers import BartConfig, BartForConditionalGeneration
        >>> from lightning_attattr.core.families import attention_layers
        >>> bart = BartForConditionalGeneration(BartConfig(vocab_size=50, d_model=16, encoder_layers=1,
        ...     decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        ...     encoder_ffn_dim=32, decoder_ffn_dim=32))
        >>> attention_layers(bart)
        ['encoder.0', 'decoder.0.self', 'decoder.0.cross']
        >>> prune_heads(bart, {2: [0, 1]}).pruned, bart.model.decoder.layers[0].encoder_attn.num_heads
        ({2: [0, 1]}, 2)
    """
    if active_controller(model) is not None:
        raise RuntimeError("Cannot prune heads inside an `attention_scope` of the same model; prune outside it.")
    modules = layer_modules(model)
    config = cast("PreTrainedModel", model).config  # layer_modules checked that it is a PreTrainedModel
    if len({id(m) for m in modules}) < len(modules):
        raise ArgumentError(
            f"Model type {config.model_type!r} shares one layer module across layers, so its heads cannot "
            "be pruned per layer; use a head mask instead."
        )
    if any(hasattr(m, "has_relative_attention_bias") for m in modules):  # T5's attention modules
        raise UnsupportedModelError(
            f"Cannot prune heads of model type {config.model_type!r} structurally: its relative position bias is "
            "computed by the first layer of each stack for all heads and passed on to every later layer, so a layer "
            "with fewer heads cannot add it; use a head mask instead."
        )
    n_layers, n_heads = len(modules), int(config.num_attention_heads)
    group_size = _group_size(model)
    wanted = _normalize_heads(heads, n_layers, n_heads)
    before = pruned_heads(model)
    for layer, chosen in sorted(wanted.items()):
        gone = chosen | set(before.get(layer, []))
        if len(gone) == n_heads:
            raise ArgumentError(
                f"Cannot remove every head of layer {layer} structurally (the layer would have no attention "
                "projection left); keep at least one head, or silence the layer with a head mask."
            )
        for group in sorted({h // group_size for h in chosen}):
            members = list(range(group * group_size, (group + 1) * group_size))
            if not set(members) <= gone:
                raise ArgumentError(
                    f"Expected whole key/value groups in `heads[{layer}]` (groups of {group_size} query heads share "
                    f"one key/value head, and transformers' repeat_kv needs equal-size groups), but got only heads "
                    f"{sorted(chosen & set(members))} of group {group} (query heads {members}); remove all of them "
                    "or use a head mask."
                )
    n_before = count_parameters(model)
    record = {layer: list(heads_) for layer, heads_ in before.items()}
    newly: dict[int, list[int]] = {}
    for layer, chosen in sorted(wanted.items()):
        gone = set(record.get(layer, []))
        new = sorted(chosen - gone)
        if not new:
            continue
        present = [h for h in range(n_heads) if h not in gone]  # original index of each current query head
        groups = sorted({h // group_size for h in present})  # original index of each current key/value group
        keep_heads = [i for i, h in enumerate(present) if h not in chosen]
        keep_groups = [i for i, g in enumerate(groups) if g * group_size not in chosen]
        _prune_layer(_layout(modules[layer]), len(present), len(groups), keep_heads, keep_groups)
        record[layer] = sorted(gone | set(new))
        newly[layer] = new
    setattr(model.config, PRUNED_HEADS_KEY, {str(layer): heads_ for layer, heads_ in sorted(record.items())})
    return PruningReport(pruned_heads(model), newly, n_before, count_parameters(model))


def _prune_layer(
    attention: _Attention, n_present: int, n_groups: int, keep_heads: list[int], keep_groups: list[int]
) -> None:
    """Keep the query heads ``keep_heads`` and key/value groups ``keep_groups`` (current positions) of one layer."""
    attn: Any = attention.module  # an architecture's attention module: its head-count attributes vary
    first: Any = getattr(attn, attention.projections[0])
    device = first.weight.device
    n_outputs = int(first.weight.shape[0 if isinstance(first, nn.Linear) else 1])
    # fused rows are [query (n_present heads) | key (n_groups) | value (n_groups)], each head_dim wide
    head_dim = n_outputs // (n_present + 2 * n_groups) if attention.fused else n_outputs // n_present

    def rows(positions: list[int], offset: int = 0) -> Tensor:  # [len(positions) * head_dim]
        return torch.tensor(
            [offset + i * head_dim + d for i in positions for d in range(head_dim)], dtype=torch.long, device=device
        )

    q_rows, kv_rows = rows(keep_heads), rows(keep_groups)
    if attention.fused:
        q_width, kv_width = n_present * head_dim, n_groups * head_dim
        fused = torch.cat([q_rows, rows(keep_groups, q_width), rows(keep_groups, q_width + kv_width)])
        setattr(attn, attention.projections[0], _keep(first, fused, outputs=True))
    else:
        for name, index in zip(attention.projections, (q_rows, kv_rows, kv_rows)):
            setattr(attn, name, _keep(getattr(attn, name), index, outputs=True))
    out = getattr(attention.out_parent, attention.out_name)
    setattr(attention.out_parent, attention.out_name, _keep(out, q_rows, outputs=False))
    n_kept = len(keep_heads)
    for attr in attention.count_attrs:
        if hasattr(attn, attr):
            setattr(attn, attr, n_kept)
    if hasattr(attn, "all_head_size"):  # BERT family
        attn.all_head_size = n_kept * head_dim
    if hasattr(attn, "split_size"):  # GPT-2 splits its fused projection into three blocks of this width
        attn.split_size = n_kept * head_dim
    if hasattr(attn, "num_key_value_heads"):  # Phi-3 slices key and value by it
        attn.num_key_value_heads = len(keep_groups)
    sinks = getattr(attn, "sinks", None)
    if isinstance(sinks, nn.Parameter) and sinks.shape == (n_present,):  # gpt-oss: one sink logit per query head
        kept_sinks = nn.Parameter(sinks.detach()[torch.tensor(keep_heads, device=sinks.device)].clone())
        attn.sinks = kept_sinks.requires_grad_(sinks.requires_grad)
    if attention.fused and isinstance(first, nn.Linear) and hasattr(attn, "config"):
        # Phi-3 finds the end of the query block at `config.num_attention_heads * head_dim`
        attn.config = _LayerConfig(attn.config, n_kept)


def _state_dict_files(path: str, **hub_kwargs: Any) -> dict[str, Tensor]:
    """Load the weights saved by ``save_pretrained`` (safetensors, sharded or not; or ``.bin``)."""
    from transformers.utils import cached_file

    def locate(name: str) -> str | None:
        if os.path.isdir(path):
            candidate = os.path.join(path, name)
            return candidate if os.path.isfile(candidate) else None
        return cached_file(path, name, _raise_exceptions_for_missing_entries=False, **hub_kwargs)

    from safetensors.torch import load_file

    single = locate("model.safetensors")
    if single is not None:
        return load_file(single)
    index = locate("model.safetensors.index.json")
    if index is not None:
        with open(index, encoding="utf-8") as handle:
            shards = sorted(set(json.load(handle)["weight_map"].values()))
        state: dict[str, Tensor] = {}
        for shard in shards:
            located = locate(shard)
            if located is None:
                raise FileNotFoundError(f"Shard {shard!r} listed in {index} is missing.")
            state.update(load_file(located))
        return state
    legacy = locate("pytorch_model.bin")
    if legacy is not None:
        return torch.load(legacy, map_location="cpu", weights_only=True)
    raise FileNotFoundError(
        f"No model.safetensors, model.safetensors.index.json or pytorch_model.bin found for {path!r}."
    )


def from_pretrained_pruned(path: str, model_class: Any = None, **kwargs: Any) -> PreTrainedModel:
    """Load a model saved with ``save_pretrained``, rebuilding its pruned structure first.

    Works for unpruned models too (then it is plain ``from_pretrained``).

    Args:
        path: local directory or hub name.
        model_class: an ``AutoModel*`` or model class (default ``AutoModelForSequenceClassification``).
        **kwargs: forwarded to ``AutoConfig.from_pretrained`` / ``from_pretrained`` (e.g. ``num_labels``;
            ``ignore_mismatched_sizes=True`` re-initialises tensors whose saved shape differs, such as
            a classification head saved for another number of labels).

    Returns:
        The model in eval mode, as ``from_pretrained`` returns it.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    model_class = model_class or AutoModelForSequenceClassification
    ignore_mismatched = bool(kwargs.get("ignore_mismatched_sizes", False))
    config = AutoConfig.from_pretrained(path, **{k: v for k, v in kwargs.items() if k != "ignore_mismatched_sizes"})
    record = {int(k): v for k, v in (getattr(config, PRUNED_HEADS_KEY, None) or {}).items() if v}
    if not record:
        return model_class.from_pretrained(path, **kwargs)
    setattr(config, PRUNED_HEADS_KEY, {})
    model = model_class.from_config(config)
    prune_heads(model, record)
    state = _state_dict_files(path)
    reinitialised: set[str] = set()
    if ignore_mismatched:  # e.g. a classification head saved for another number of labels: keep it re-initialised
        own = model.state_dict()
        reinitialised = {k for k, v in state.items() if k in own and own[k].shape != v.shape}
        state = {k: v for k, v in state.items() if k not in reinitialised}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # tied weights (a decoder's output embedding) are saved once, under one of their names
    loaded = {id(p) for name, p in model.named_parameters(remove_duplicate=False) if name in state}
    tied = {name for name, p in model.named_parameters(remove_duplicate=False) if id(p) in loaded}
    missing = [k for k in missing if not k.endswith("position_ids") and k not in reinitialised and k not in tied]
    if missing or unexpected:
        raise RuntimeError(
            f"Weights in {path!r} do not match the pruned structure: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}."
        )
    return model.eval()
