"""Run per-example analysis work through Lightning's predict loop: resumable, distributed, written as it goes.

:func:`run_examples` is the one engine of ``analyze.py``: it takes a function of a batch that
returns per-example tensors, runs it with ``trainer.predict`` over the examples that have no result
yet (so ``--trainer.devices N --trainer.strategy ddp`` splits them across processes, and multi-node
comes with Lightning), writes every batch's results atomically to the results folder's
:class:`~lightning_attattr.analysis.store.PartStore` as soon as it is computed, and returns the
results of all requested examples in their order. An interrupted run keeps what was written; the
rerun computes only the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_attattr.analysis.store import PartStore, ResultsFolder
from lightning_attattr.lightning.compat import pl, trainer_callbacks

#: The batch entries a Hugging Face classifier takes (``model_inputs`` keeps these).
MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "pixel_values")

# fn(model, batch) -> {key: [batch, ...] tensor or list of length batch}
ExampleFn = Callable[[nn.Module, dict[str, Tensor]], Mapping[str, Any]]
INDEX_KEY = "example_index"


def special_tokens(tokenizer: Any) -> list[str]:
    """The tokenizer's special tokens that are not words (every special token but ``[UNK]``)."""
    return [t for t in tokenizer.all_special_tokens if t != tokenizer.unk_token]


def model_inputs(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The model's own inputs of a collated batch (no ``labels``, no ``example_index``)."""
    return {k: v for k, v in batch.items() if k in MODEL_KEYS}


class IndexedExamples(Dataset):
    """The items ``indices`` of ``dataset`` (dicts of token id lists), each with its ``example_index``."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Item ``i``: the dataset's item ``indices[i]`` plus its ``example_index``."""
        item = dict(self.dataset[self.indices[i]])
        item[INDEX_KEY] = self.indices[i]
        return item


class IndexedCollate:
    """Pad with ``collator`` and keep the example indices as a ``[batch]`` tensor under ``example_index``."""

    def __init__(self, collator: Callable[[list[dict[str, Any]]], dict[str, Tensor]]) -> None:
        self.collator = collator

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Tensor]:
        """The padded batch with ``example_index`` ``[batch]``."""
        index = torch.tensor([f[INDEX_KEY] for f in features], dtype=torch.long)
        batch = dict(self.collator([{k: v for k, v in f.items() if k != INDEX_KEY} for f in features]))
        batch[INDEX_KEY] = index
        return batch


class ExampleStep(pl.LightningModule):
    """Wraps the Hugging Face model for ``trainer.predict``: ``predict_step`` applies ``fn`` to each batch."""

    def __init__(self, model: nn.Module, fn: ExampleFn) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Any]:
        """``{"index": [batch], **fn(model, batch)}``; ``fn`` sees the indices as ``batch["example_index"]``."""
        index = batch[INDEX_KEY]
        return {"index": index, **self.fn(self.model, batch)}


class PartWriter(pl.callbacks.BasePredictionWriter):
    """Writes each predicted batch to the stage's part store at once, and a progress line to ``progress.log``."""

    def __init__(self, store: PartStore, folder: ResultsFolder, label: str, total: int, already: int) -> None:
        super().__init__(write_interval="batch")
        self.store = store
        self.folder = folder
        self.label = label
        self.total = total
        self.count = already
        self.start = time.perf_counter()
        self.last_log = 0.0

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Write the batch's results (atomically) and, every 10 s, a progress line."""
        record = dict(prediction)
        index = record.pop("index")
        self.store.write(index, record, rank=trainer.global_rank)
        self.count += len(index) * trainer.world_size  # every rank advances at the same pace
        now = time.perf_counter()
        if now - self.last_log > 10 or self.count >= self.total:
            self.last_log = now
            self.folder.log(
                f"{self.label}: about {min(self.count, self.total)}/{self.total} examples done "
                f"({now - self.start:.0f} s this run)"
            )


@contextmanager
def stage_label(trainer: pl.Trainer, label: str) -> Iterator[None]:
    """Label the trainer's progress bar of ``predict`` with ``label`` (e.g. ``importance``) instead of "Predicting".

    The bar (Lightning's TQDM or Rich bar, or any ``ProgressBar``) reads its ``predict_description``
    property; for the duration of the block the bar is an instance of a subclass that returns
    ``label`` there, and of its own class again afterwards.
    """
    bar = trainer.progress_bar_callback
    if bar is None:
        yield
        return
    original = type(bar)
    labelled = type(original.__name__, (original,), {"predict_description": property(lambda self: label)})
    bar.__class__ = labelled
    try:
        yield
    finally:
        bar.__class__ = original


def run_examples(
    trainer: pl.Trainer,
    model: nn.Module,
    folder: ResultsFolder,
    stage: str,
    dataset: Any,
    indices: Sequence[int],
    collator: Callable[[list[dict[str, Any]]], dict[str, Tensor]],
    batch_size: int,
    fn: ExampleFn,
) -> dict[str, Any]:
    """Results of ``fn`` for the examples ``indices`` of ``dataset``, computing only the missing ones.

    Every rank computes the same ``todo`` list (the parts written before this call), then
    ``trainer.predict`` splits it; after a barrier every rank reads all parts.

    Returns:
        ``{key: [len(indices), ...] tensor or list}`` in the order of ``indices``.
    """
    store = folder.parts(stage)
    done = store.done()
    todo = [i for i in indices if i not in done]
    trainer.strategy.barrier()  # every rank has listed what is done before anyone writes new parts
    folder.log(f"{stage}: {len(indices) - len(todo)} of {len(indices)} examples already done")
    if todo:
        loader = DataLoader(
            IndexedExamples(dataset, todo), batch_size=batch_size, shuffle=False, collate_fn=IndexedCollate(collator)
        )
        writer = PartWriter(store, folder, stage, total=len(indices), already=len(indices) - len(todo))
        callbacks = trainer_callbacks(trainer)
        callbacks.append(writer)
        try:
            with stage_label(trainer, stage):
                trainer.predict(ExampleStep(model, fn), dataloaders=loader, return_predictions=False)
        finally:
            callbacks.remove(writer)
    trainer.strategy.barrier()
    return store.load(list(indices))
