"""``EpochSummary``: one plain line of metrics per epoch, for logs where a progress bar is useless.

When the output of a run goes to a file or a pipe (CI logs, ``nohup``), tqdm's bar becomes a
stream of carriage returns that shows little. :class:`EpochSummary` prints one line per training
epoch instead, for example::

    epoch 3/10 | train/loss 0.123 | train/acc 0.951 | val/loss 0.101 | val/acc 0.982 | 12.4 s

and one line at the end of a ``validate`` or ``test`` run. Within a long epoch, a line every
``every_n_seconds`` (10 s by default) shows how far it got::

    epoch 3/10 | batch 40/63 | step 166/630 | train/loss 0.131 | 8.2 s

Epochs are counted from 1 here, as in every title and message meant for a reader (figure titles of
the callbacks included); file names and the ``epoch`` fields of stored records keep Lightning's
``current_epoch``, which counts from 0. Each line can also be appended, with a timestamp, to
``progress.log`` in the trainer's log directory.

Hook order in PyTorch Lightning 2.6.6: the validation that ends a training epoch runs inside the
training epoch loop (``_TrainingEpochLoop.on_advance_end`` calls ``self.val_loop.run()`` after
the last batch, and ``on_validation_end`` is called at the end of that run), and only afterwards
does ``_FitLoop.on_advance_end`` call the ``on_train_epoch_end`` hooks (first the callbacks that
are not checkpoint/early-stopping callbacks, then ``LightningModule.on_train_epoch_end``, then
those). So ``trainer.callback_metrics`` in ``on_train_epoch_end`` already holds the validation
metrics of the same epoch, and the epoch aggregates of the training metrics. In epochs without
validation (``check_val_every_n_epoch > 1``) it still holds the values of an earlier validation;
the callback notes in ``on_validation_end`` which epoch was validated and leaves the ``val``
metrics out of the lines of the other epochs.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from torch import Tensor
from typing_extensions import override

from lightning_attattr.core.checks import ArgumentTypeError, check_number
from lightning_attattr.lightning.compat import DualCallback, is_fast_dev_run, pl, rank_zero_warn

_SKIPPED = ("importance/", "prune/")  # per-head importance scores and pruning curves: too many for one line
_FIRST = ("loss", "acc", "f1", "mcc")  # these come first within a stage, in this order
_MAX_METRICS = 8  # more are summarised as "+N more"


class EpochSummary(DualCallback):  # works in a Trainer of either Lightning package
    """Print one line of the main metrics per epoch (and per ``validate`` / ``test`` run).

    During ``fit``, at the end of every training epoch (after that epoch's validation), the line
    shows the epoch (1-based, out of ``max_epochs``), the scalar metrics in
    ``trainer.callback_metrics`` whose names start with ``train/`` or ``val`` (``val/``,
    ``val_mismatched/``, ...) with the losses first, and the epoch's wall time; ``validate`` and
    ``test`` runs end with one line of their ``val`` / ``test`` metrics. Per-head ``importance/``
    and ``prune/`` metrics are left out, and at most eight metrics are shown. Metrics logged in
    ``LightningModule.on_train_epoch_end`` are not in the line of that epoch (Lightning calls
    this callback's hook first). Only rank zero prints and writes.

    Args:
        to_terminal: where the line goes besides the log file. ``None`` (default): to stderr only
            when stderr is not a terminal or the trainer has no progress bar, so an interactive
            user sees just the bar and a log file or pipe gets the lines; ``True``: always;
            ``False``: never.
        log_file: file to which every line is appended with a timestamp; a relative name is taken
            relative to ``trainer.log_dir`` (the logger's version directory, or
            ``default_root_dir`` without a logger). ``None`` writes no file. Nothing is written
            under ``fast_dev_run``.
        every_n_seconds: within a training epoch, a line of the batch, step and training metrics
            at most this often (the first after this many seconds), where the epoch lines go;
            ``None``: only the epoch lines.

    Raises:
        ArgumentTypeError: ``to_terminal`` is not ``True``, ``False`` or ``None``, or
            ``log_file`` is not a non-empty path or ``None`` (a ``TypeError`` and a ``ValueError``).
        ArgumentError: ``every_n_seconds`` is not a positive number or ``None``.

    Example:
        >>> summary = EpochSummary(to_terminal=False, log_file=None)
        >>> try:
        ...     EpochSummary(to_terminal="yes")
        ... except TypeError as error:
        ...     print(error)
        Expected `to_terminal` to be True, False or None, but got 'yes'.
    """

    def __init__(
        self,
        to_terminal: bool | None = None,
        log_file: str | None = "progress.log",
        every_n_seconds: float | None = 10.0,
    ) -> None:
        if to_terminal is not None and not isinstance(to_terminal, bool):
            raise ArgumentTypeError(f"Expected `to_terminal` to be True, False or None, but got {to_terminal!r}.")
        if log_file is not None and (not isinstance(log_file, (str, os.PathLike)) or not str(log_file)):
            raise ArgumentTypeError(
                f"Expected `log_file` to be a file name or path (relative to the log directory) or None, "
                f"but got {log_file!r}."
            )
        if every_n_seconds is not None:
            check_number("every_n_seconds", every_n_seconds, 0.0, low_open=True)
        self.to_terminal = to_terminal
        self.log_file = log_file
        self.every_n_seconds = every_n_seconds
        self._last_line: float | None = None
        self.log_path: Path | None = None  # resolved in `setup`
        self._started: float | None = None
        self._validated_epoch: int | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Resolve the log file (on every rank: ``trainer.log_dir`` is a collective call)."""
        if self.log_file is None or is_fast_dev_run(trainer):
            self.log_path = None
            return
        path = Path(self.log_file).expanduser()
        if not path.is_absolute():
            path = Path(trainer.log_dir or trainer.default_root_dir) / path
        self.log_path = path

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = self._last_line = time.monotonic()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Every ``every_n_seconds``: a line of the epoch, batch, step and training metrics."""
        now = time.monotonic()
        if self.every_n_seconds is None or self._last_line is None or now - self._last_line < self.every_n_seconds:
            return
        self._last_line = now
        parts = [_epoch_header(trainer), f"batch {batch_idx + 1}" + _out_of(trainer.num_training_batches)]
        parts.append(f"step {trainer.global_step}" + _out_of(trainer.estimated_stepping_batches))
        parts += format_metrics(trainer.callback_metrics, ("train/",))
        if self._started is not None:
            parts.append(f"{now - self._started:.1f} s")
        self._write(trainer, " | ".join(parts))

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._started = time.monotonic()

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.monotonic()

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Note the validated epoch during ``fit``; print the line of a ``validate`` run."""
        if trainer.sanity_checking:
            return
        if trainer.state.fn == "fit":
            self._validated_epoch = trainer.current_epoch
        elif trainer.state.fn == "validate":
            self._emit(trainer, "validate", ("val",))

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._emit(trainer, "test", ("test",))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Print the epoch's line; ``val`` metrics only if validation ran in this epoch."""
        prefixes = ("train/", "val") if self._validated_epoch == trainer.current_epoch else ("train/",)
        self._emit(trainer, _epoch_header(trainer), prefixes)
        self._last_line = None

    def _emit(self, trainer: pl.Trainer, header: str, prefixes: tuple[str, ...]) -> None:
        """Format the line and send it to stderr and the log file (rank zero only)."""
        parts = [header, *format_metrics(trainer.callback_metrics, prefixes)]
        if self._started is not None:
            parts.append(f"{time.monotonic() - self._started:.1f} s")
            self._started = None
        self._write(trainer, " | ".join(parts))

    def _write(self, trainer: pl.Trainer, line: str) -> None:
        """Send ``line`` to stderr and the log file (rank zero only)."""
        if not trainer.is_global_zero:
            return
        if self._show_on_terminal(trainer):
            print(line, file=sys.stderr, flush=True)
        if self.log_path is not None:
            try:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                with self.log_path.open("a", encoding="utf-8") as stream:
                    stream.write(f"{datetime.now().isoformat(timespec='seconds')} {line}\n")
            except OSError as error:
                rank_zero_warn(f"EpochSummary: cannot write {str(self.log_path)!r} ({error}); not writing it again.")
                self.log_path = None

    def _show_on_terminal(self, trainer: pl.Trainer) -> bool:
        if self.to_terminal is not None:
            return self.to_terminal
        return trainer.progress_bar_callback is None or not _is_tty(sys.stderr)


def epoch_title(epoch: int, max_epochs: int | None = None) -> str:
    """``"epoch N"`` (or ``"epoch N/M"``) for a reader: Lightning's 0-based ``current_epoch`` counted from 1.

    Example:
        >>> epoch_title(0, 10), epoch_title(9)
        ('epoch 1/10', 'epoch 10')
    """
    return f"epoch {epoch + 1}" + (f"/{max_epochs}" if max_epochs is not None and max_epochs > 0 else "")


def _epoch_header(trainer: pl.Trainer) -> str:
    return epoch_title(trainer.current_epoch, trainer.max_epochs)


def _out_of(total: float | int) -> str:
    return f"/{int(total)}" if isinstance(total, (int, float)) and math.isfinite(total) else ""


def format_metrics(metrics: Mapping[str, Any], prefixes: tuple[str, ...]) -> list[str]:
    """``"name value"`` strings of the scalar metrics whose names start with one of ``prefixes``.

    Per-head ``importance/`` and ``prune/`` metrics are skipped, an ``x_step`` value is dropped
    when the ``x_epoch`` aggregate exists, the order is by prefix, then stage (``val`` before
    ``val_mismatched``), then loss, acc, f1, mcc and the rest by name; more than eight metrics end
    in ``"+N more"``.

    Args:
        metrics: metric names and values (tensors or numbers), e.g. ``trainer.callback_metrics``.
        prefixes: the name prefixes to keep, in the order they are shown.

    Returns:
        The formatted metrics, to be joined into a line.

    Example:
        >>> metrics = {"val/acc": 0.5, "train/loss": 1.25, "prune/acc_r0.50": 0.4, "epoch": 2.0}
        >>> format_metrics(metrics, ("train/", "val"))
        ['train/loss 1.250', 'val/acc 0.500']
    """
    scalars: dict[str, float] = {}
    for name, value in metrics.items():
        if not name.startswith(prefixes) or any(skipped in name for skipped in _SKIPPED):
            continue
        number = _scalar(value)
        if number is not None:
            scalars[name] = number
    for name in list(scalars):
        if name.endswith("_step") and name.removesuffix("_step") + "_epoch" in scalars:
            del scalars[name]

    def order(name: str) -> tuple[int, str, int, str]:
        group = next(i for i, prefix in enumerate(prefixes) if name.startswith(prefix))
        stage, _, metric = name.rpartition("/")
        metric = metric.removesuffix("_epoch").removesuffix("_step")
        return group, stage, _FIRST.index(metric) if metric in _FIRST else len(_FIRST), name

    names = sorted(scalars, key=order)
    parts = [f"{name} {_format_number(scalars[name])}" for name in names[:_MAX_METRICS]]
    if len(names) > _MAX_METRICS:
        parts.append(f"+{len(names) - _MAX_METRICS} more")
    return parts


def _scalar(value: object) -> float | None:
    if isinstance(value, Tensor):
        return float(value.detach().float().item()) if value.numel() == 1 else None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return None


def _format_number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.3f}"
    return f"{value:.2e}"


def _is_tty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]  # any stream; no isatty is handled below
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False
