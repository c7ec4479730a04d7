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

No model code is copied or edited: the projections are replaced by smaller ``nn.Linear`` modules
and the per-module head counts are updated. ALBERT shares one layer module across all layers, so
its heads cannot be pruned per layer; it is refused.
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
from lightning_attattr.core.checks import ArgumentError, ArgumentTypeError

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
    ("self_attn", ("q_proj", "k_proj", "v_proj"), "self_attn.o_proj", ("num_attention_heads", "num_heads")),
    ("attention", ("q_lin", "k_lin", "v_lin"), "attention.out_lin", ("n_heads",)),  # DistilBERT
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


def _resolve(module: nn.Module, path: str) -> Any:
    found: Any = module
    for name in path.split("."):
        found = getattr(found, name, None)
        if found is None:
            return None
    return found


def _layout(layer: nn.Module) -> tuple[nn.Module, tuple[str, str, str], nn.Module, str, tuple[str, ...]]:
    for attn_path, qkv, out_path, count_attrs in _LAYOUTS:
        attn, out = _resolve(layer, attn_path), _resolve(layer, out_path)
        if attn is not None and out is not None and all(isinstance(getattr(attn, n, None), nn.Linear) for n in qkv):
            parent_path, _, out_name = out_path.rpartition(".")
            return attn, qkv, _resolve(layer, parent_path), out_name, count_attrs
    raise ArgumentError(
        f"Cannot find the query/key/value and output projections in layer module {type(layer).__name__}; "
        "structural pruning supports BERT, RoBERTa, ELECTRA, XLM-RoBERTa, CamemBERT, DistilBERT and ViT."
    )


def _keep(linear: nn.Linear, index: Tensor, dim: int) -> nn.Linear:
    """A new ``nn.Linear`` with only ``index`` along ``dim`` of the weight (0: outputs, 1: inputs)."""
    weight = linear.weight.detach().index_select(dim, index.to(linear.weight.device))
    bias = linear.bias
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias.detach()[index.to(bias.device)] if dim == 0 else bias.detach())
    new.weight.requires_grad_(linear.weight.requires_grad)
    if bias is not None:
        new.bias.requires_grad_(bias.requires_grad)
    new.train(linear.training)
    return new


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
        model: a Hugging Face ``PreTrainedModel`` (BERT family, DistilBERT, ViT).
        heads: ``{layer: [head, ...]}`` in original head indices, or a ``[layer, head]`` mask
            whose zeros mark the heads to remove (the convention of the head mask). Heads that
            are already gone are ignored, so the call is idempotent.

    Returns:
        A :class:`PruningReport` with the parameter counts before and after.

    Raises:
        ValueError: bad layer/head indices or mask shape, every head of a layer chosen (use a head
            mask to silence a whole layer), ALBERT (shared layers), or an unsupported layout.
        RuntimeError: called inside an :func:`~lightning_attattr.core.adapter.attention_scope` of
            ``model``.

    Example:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16,
        ...     num_hidden_layers=2, num_attention_heads=4, intermediate_size=32))
        >>> report = prune_heads(model, {0: [1, 3], 1: [0]})
        >>> report.pruned, model.bert.encoder.layer[0].attention.self.query.out_features
        ({0: [1, 3], 1: [0]}, 8)
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
    n_layers, n_heads = len(modules), int(config.num_attention_heads)
    wanted = _normalize_heads(heads, n_layers, n_heads)
    before = pruned_heads(model)
    for layer, chosen in wanted.items():
        if len(chosen | set(before.get(layer, []))) == n_heads:
            raise ArgumentError(
                f"Cannot remove every head of layer {layer} structurally (the layer would have no attention "
                "projection left); keep at least one head, or silence the layer with a head mask."
            )
    n_before = count_parameters(model)
    record = {layer: list(heads_) for layer, heads_ in before.items()}
    newly: dict[int, list[int]] = {}
    for layer, chosen in sorted(wanted.items()):
        gone = set(record.get(layer, []))
        new = sorted(chosen - gone)
        if not new:
            continue
        present = [h for h in range(n_heads) if h not in gone]  # original index of each current head
        attn, qkv, out_parent, out_name, count_attrs = _layout(modules[layer])
        q = getattr(attn, qkv[0])
        head_dim = q.out_features // len(present)
        keep_heads = [i for i, h in enumerate(present) if h not in chosen]
        # [kept * head_dim] rows of the query/key/value projections that stay, on the weights' device
        index = torch.tensor(
            [i * head_dim + d for i in keep_heads for d in range(head_dim)], dtype=torch.long, device=q.weight.device
        )
        for name in qkv:
            setattr(attn, name, _keep(getattr(attn, name), index, dim=0))
        setattr(out_parent, out_name, _keep(getattr(out_parent, out_name), index, dim=1))
        for attr in count_attrs:
            if hasattr(attn, attr):
                setattr(attn, attr, len(keep_heads))
        if hasattr(attn, "all_head_size"):
            attn.all_head_size = len(keep_heads) * head_dim
        record[layer] = sorted(gone | set(new))
        newly[layer] = new
    setattr(model.config, PRUNED_HEADS_KEY, {str(layer): heads_ for layer, heads_ in sorted(record.items())})
    return PruningReport(pruned_heads(model), newly, n_before, count_parameters(model))


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
    missing = [k for k in missing if not k.endswith("position_ids") and k not in reinitialised]
    if missing or unexpected:
        raise RuntimeError(
            f"Weights in {path!r} do not match the pruned structure: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}."
        )
    return model.eval()
