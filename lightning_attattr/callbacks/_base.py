"""What the three callbacks share: the example set, the epoch-end schedule and the model check.

Argument checks live in :mod:`lightning_attattr.core.checks`; each callback validates its options
in ``__init__`` and everything that needs the model (layer range, supported architecture) in
:meth:`EpochEndAnalysis.check_model`, which runs in ``setup`` (before any training) and which the
CLI also calls before the trainer starts.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor
from typing_extensions import override

from lightning_attattr.callbacks._protocol import collect_examples, first_val_loader, pad_examples, resolve_model, world
from lightning_attattr.core.adapter import layer_modules
from lightning_attattr.core.checks import check_layers, check_positive_int
from lightning_attattr.lightning.compat import DualCallback, pl


class ValExamples:
    """The first ``n`` examples of the validation loader, chosen once and the same on every rank.

    Rank zero collects them and broadcasts them; :meth:`my_batches` then deals them out, example
    ``i`` to rank ``i % world_size``, for work whose per-example results are summed over ranks.
    """

    def __init__(self, n_examples: int) -> None:
        self.n_examples = n_examples
        self.rows: list[dict[str, Tensor]] | None = None

    def ensure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[dict[str, Tensor]]:
        """Choose the examples on first use (rank zero collects, every rank receives them)."""
        if self.rows is None:
            rows = None
            if trainer.is_global_zero:
                rows = collect_examples(pl_module, first_val_loader(trainer), self.n_examples)
            self.rows = trainer.strategy.broadcast(rows, src=0)
            if not self.rows:
                raise RuntimeError("Found no validation examples for the AttAttr callbacks.")
        return self.rows

    def my_batches(self, trainer: pl.Trainer, batch_size: int) -> Iterator[dict[str, Tensor]]:
        """This rank's share of the examples (``i % world_size == rank``), padded in batches."""
        assert self.rows is not None
        rank, size = world(trainer)
        mine = self.rows[rank::size]
        for start in range(0, len(mine), batch_size):
            yield pad_examples(mine[start : start + batch_size])


class EpochEndAnalysis(DualCallback):  # works in a Trainer of either Lightning package
    """Base of the callbacks: runs :meth:`analyse` at the end of chosen epochs.

    That is every ``every_n_epochs``-th validation epoch (never during the sanity check) and every
    test epoch, so ``fit``, ``validate`` and ``test`` all work. Subclasses that take a ``layers``
    option store it in ``self.layers``; :meth:`check_model` checks it against the model.
    """

    layers: list[int] | None = None

    def __init__(self, every_n_epochs: int) -> None:
        self.every_n_epochs = check_positive_int("every_n_epochs", every_n_epochs)

    def check_model(self, pl_module: pl.LightningModule) -> None:
        """Fail before any training when the module's model cannot be analysed with these options.

        Raises:
            ArgumentTypeError: the module exposes no (or several) Hugging Face models.
            UnsupportedModelError: the architecture does not run attention through the interface.
            ArgumentError: ``layers`` out of the model's range or naming a layer twice.
        """
        model = resolve_model(pl_module)
        n_layers = len(layer_modules(model))
        check_layers(f"{type(self).__name__}.layers", self.layers, n_layers)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.check_model(pl_module)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs != 0:
            return
        self.analyse(trainer, pl_module)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.analyse(trainer, pl_module)

    def analyse(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The analysis; subclasses implement it."""
        raise NotImplementedError
