"""How the callbacks talk to a LightningModule (ours or anyone's), and shared helpers.

The small protocol: a LightningModule works with the callbacks when

- it exposes its Hugging Face model: a method ``attattr_model()`` returning a ``PreTrainedModel``,
  or else an attribute ``model`` holding one, or else exactly one ``PreTrainedModel`` among its
  submodules;
- its batches can be turned into model inputs: a method ``attattr_inputs(batch)`` returning a dict of
  model inputs (``input_ids``, ``attention_mask``, ``token_type_ids`` / ``pixel_values``) plus an
  optional ``labels`` entry, or else batches that already are such dicts (extra keys are dropped);
- optionally a tokenizer, for token labels on the heatmaps: ``pl_module.tokenizer`` or
  ``trainer.datamodule.tokenizer``.

:class:`~lightning_attattr.lightning.classifier.AttAttrClassifier` satisfies it without extra code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from lightning_attattr.core.checks import ArgumentError, ArgumentTypeError

if TYPE_CHECKING:
    import pytorch_lightning as pl
    from transformers import PreTrainedModel

#: Input names passed to the model; everything else in a batch dict is ignored (``labels`` is kept apart).
MODEL_INPUTS: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")


@runtime_checkable
class AttAttrModule(Protocol):
    """Optional methods a LightningModule can define to control what the callbacks see."""

    def attattr_model(self) -> nn.Module:
        """The Hugging Face ``PreTrainedModel`` to analyse."""
        ...

    def attattr_inputs(self, batch: Any) -> Mapping[str, Tensor]:
        """Model inputs of ``batch`` (plus ``labels`` when the batch has them)."""
        ...


def resolve_model(pl_module: pl.LightningModule) -> PreTrainedModel:
    """The Hugging Face model inside ``pl_module`` (see the module docstring for the rules).

    Raises:
        TypeError: no (or more than one) ``PreTrainedModel`` could be found.
    """
    from transformers import PreTrainedModel

    getter = getattr(pl_module, "attattr_model", None)
    if callable(getter):
        model = getter()
    elif isinstance(getattr(pl_module, "model", None), PreTrainedModel):
        model = pl_module.model
    else:
        found = [m for m in pl_module.modules() if isinstance(m, PreTrainedModel)]
        outer = [m for m in found if not any(m is not o and any(m is x for x in o.modules()) for o in found)]
        if len(outer) != 1:
            raise ArgumentTypeError(
                f"Expected {type(pl_module).__name__} to expose one Hugging Face model: define "
                "`attattr_model()` or a `model` attribute holding a `PreTrainedModel`, but found "
                f"{len(outer)} PreTrainedModel submodules."
            )
        model = outer[0]
    if not isinstance(model, PreTrainedModel):
        raise ArgumentTypeError(
            f"Expected `attattr_model()` to return a `PreTrainedModel`, but got {type(model).__name__}."
        )
    return model


def resolve_inputs(pl_module: pl.LightningModule, batch: Any) -> dict[str, Tensor]:
    """Model inputs (and ``labels`` when present) of one batch, following the protocol.

    Raises:
        TypeError: the batch is not a dict and the module defines no ``attattr_inputs``.
    """
    converter = getattr(pl_module, "attattr_inputs", None)
    if callable(converter):
        batch = converter(batch)
    if not isinstance(batch, Mapping):
        raise ArgumentTypeError(
            f"Expected batches to be dicts of model inputs, but got {type(batch).__name__}; define "
            f"`attattr_inputs(batch)` on {type(pl_module).__name__} to convert them."
        )
    out = {k: v for k, v in batch.items() if k in MODEL_INPUTS or k == "labels"}
    if not any(k in out for k in ("input_ids", "pixel_values")):
        raise ArgumentError(f"Expected `input_ids` or `pixel_values` among the batch keys, but got {sorted(batch)}.")
    return out


def resolve_tokenizer(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any | None:
    """A tokenizer for token labels, or ``None``."""
    for owner in (pl_module, getattr(trainer, "datamodule", None)):
        tokenizer = getattr(owner, "tokenizer", None) if owner is not None else None
        if tokenizer is not None and hasattr(tokenizer, "convert_ids_to_tokens"):
            return tokenizer
    return None


def first_val_loader(trainer: pl.Trainer) -> Iterable[Any]:
    """The first validation loader, from the data module when there is one (no distributed sampler)."""
    datamodule = getattr(trainer, "datamodule", None)
    loaders: Any = datamodule.val_dataloader() if datamodule is not None else trainer.val_dataloaders
    if loaders is None:
        raise RuntimeError("The callbacks need a validation dataloader to choose their examples, but there is none.")
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0]
    if isinstance(loaders, Mapping):
        loaders = next(iter(loaders.values()))
    return loaders


def collect_examples(pl_module: pl.LightningModule, loader: Iterable[Any], n: int) -> list[dict[str, Tensor]]:
    """The first ``n`` examples of ``loader`` as per-example input dicts, cropped to their real tokens."""
    rows: list[dict[str, Tensor]] = []
    for batch in loader:
        inputs = resolve_inputs(pl_module, batch)
        size = next(iter(inputs.values())).shape[0]
        for i in range(size):
            row = {k: v[i].detach().cpu() for k, v in inputs.items()}
            if "attention_mask" in row:
                keep = int(row["attention_mask"].sum())
                if bool(row["attention_mask"][:keep].all()):  # right padding: crop it
                    row = {
                        k: v[:keep] if k in ("input_ids", "attention_mask", "token_type_ids") else v
                        for k, v in row.items()
                    }
            rows.append(row)
            if len(rows) == n:
                return rows
    return rows


def pad_examples(rows: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Right-pad per-example token inputs to one batch (``attention_mask`` 0 on padding)."""
    if not rows:
        raise ArgumentError("Expected at least one example, but got none.")
    if "input_ids" not in rows[0]:
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    length = max(r["input_ids"].shape[0] for r in rows)
    out: dict[str, Tensor] = {}
    for key in rows[0]:
        if key in ("input_ids", "attention_mask", "token_type_ids"):
            padded = torch.zeros(len(rows), length, dtype=rows[0][key].dtype)
            for i, r in enumerate(rows):
                padded[i, : r[key].shape[0]] = r[key]
            out[key] = padded
        else:
            out[key] = torch.stack([r[key] for r in rows])
    if "attention_mask" not in out:
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, r in enumerate(rows):
            mask[i, : r["input_ids"].shape[0]] = 1
        out["attention_mask"] = mask
    return out


def tokens_of(tokenizer: Any | None, input_ids: Tensor) -> list[str]:
    """Token strings of one cropped example (ids as strings without a tokenizer)."""
    ids = [int(i) for i in input_ids]
    if tokenizer is None:
        return [str(i) for i in ids]
    return [str(t) for t in tokenizer.convert_ids_to_tokens(ids)]


def world(trainer: pl.Trainer) -> tuple[int, int]:
    """``(global_rank, world_size)``."""
    return int(trainer.global_rank), int(trainer.world_size)


def reduce_sum(trainer: pl.Trainer, tensor: Tensor, device: torch.device) -> Tensor:
    """All-reduce ``tensor`` by sum across ranks (a no-op in a single process); returns it on the CPU."""
    if trainer.world_size == 1:
        return tensor
    return trainer.strategy.reduce(tensor.to(device).clone(), reduce_op="sum").cpu()
