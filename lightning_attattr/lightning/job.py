"""What an analysis runner works on: :class:`Job` (trainer, model, data, results folder) and :class:`Examples`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from torch import Tensor, nn

from lightning_attattr.analysis.store import ResultsFolder
from lightning_attattr.lightning.compat import pl


@dataclass(frozen=True)
class Job:
    """One analysis at work: the trainer (its strategy splits the examples), the model, the data module, the folder."""

    trainer: pl.Trainer
    model: nn.Module
    datamodule: Any
    folder: ResultsFolder

    def examples(
        self,
        stage: str,
        dataset: Any,
        indices: Sequence[int],
        batch_size: int,
        fn: Callable[[nn.Module, dict[str, Tensor]], dict[str, Any]],
    ) -> dict[str, Any]:
        """``fn`` over the examples ``indices`` of ``dataset``: resumable, split across processes (``run_examples``)."""
        from lightning_attattr.lightning.analysis import run_examples

        collator = self.datamodule.collator
        return run_examples(self.trainer, self.model, self.folder, stage, dataset, indices, collator, batch_size, fn)


class Examples(NamedTuple):
    """Chosen examples, tokenized: model items, file names, gold labels (``None`` for raw texts), tokens."""

    items: list[dict[str, Any]]
    names: list[str]
    labels: list[int | None]
    tokens: list[list[str]]
