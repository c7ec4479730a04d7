"""Where the callbacks' figures and histograms go: every logger attached to the Trainer that can take them.

====================  ==========================================  ==============================================
logger                figures (maps, heatmaps, curves, trees)     histograms (attribution values)
====================  ==========================================  ==============================================
``TensorBoardLogger`` ``add_image`` (IMAGES tab)                  ``add_histogram`` (HISTOGRAMS tab)
``WandbLogger``       ``log_image`` (the run's media panel)        ``wandb.Histogram``
``MLFlowLogger``      PNG artifacts ``figures/<tag>/step_<N>.png``  a histogram figure, as a PNG artifact
none of those         PNG files ``<log_dir>/figures/<tag>/step_<N>.png``, histograms drawn as figures
====================  ==========================================  ==============================================

"None of those" covers the CSV logger, no logger at all, and other loggers (their scalars still go
through ``self.log``): the figures are then files under ``trainer.log_dir`` (the CSV logger's
version folder, or ``default_root_dir`` without a logger); none under ``fast_dev_run``. Loggers are
recognised in both Lightning packages (:func:`~lightning_attattr.lightning.compat.logger_classes`).
Only rank zero writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from lightning_attattr.analysis.store import atomic_write
from lightning_attattr.lightning.compat import is_fast_dev_run, logger_classes, pl

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class FigureLogger:
    """Send figures and histograms to every figure-capable logger of ``trainer`` (PNG files when none)."""

    def __init__(self, trainer: pl.Trainer) -> None:
        loggers = list(getattr(trainer, "loggers", None) or [])
        self.tensorboard = [lg for lg in loggers if isinstance(lg, logger_classes("TensorBoardLogger"))]
        self.wandb = [lg for lg in loggers if isinstance(lg, logger_classes("WandbLogger"))]
        self.mlflow = [lg for lg in loggers if isinstance(lg, logger_classes("MLFlowLogger"))]
        self.directory: Path | None = None
        # like Lightning's logging and checkpoints, no files in a `fast_dev_run` dry run
        if not (self.tensorboard or self.wandb or self.mlflow or is_fast_dev_run(trainer)):
            self.directory = Path(_log_dir(trainer)) / "figures"

    def image(self, tag: str, fig: Figure, step: int) -> None:
        """Log one matplotlib figure under ``tag`` at ``step``."""
        from lightning_attattr.plotting import figure_to_array

        array = figure_to_array(fig)  # [H, W, 3] uint8
        for tensorboard in self.tensorboard:
            tensorboard.experiment.add_image(tag, array, step, dataformats="HWC")
        for wandb_logger in self.wandb:
            wandb_logger.log_image(key=tag, images=[array], step=step)
        for mlflow in self.mlflow:
            mlflow.experiment.log_image(mlflow.run_id, array, artifact_file=f"figures/{tag}/step_{step:06d}.png")
        if self.directory is not None:
            _write_png(self.directory / tag / f"step_{step:06d}.png", array)

    def histogram(self, tag: str, values: Tensor, step: int) -> None:
        """Log the distribution of ``values`` under ``tag`` at ``step`` (a histogram figure where no native one)."""
        flat = values.detach().float().flatten().cpu()
        for tensorboard in self.tensorboard:
            tensorboard.experiment.add_histogram(tag, flat, step)
        for wandb_logger in self.wandb:
            import wandb

            # wandb annotates the values as a Sequence, but bins them with np.histogram: an array is fine
            histogram = wandb.Histogram(flat.numpy())  # type: ignore[arg-type]
            # Lightning annotates metrics as floats; WandbLogger passes wandb objects on to wandb.log
            wandb_logger.log_metrics({tag: histogram}, step=step)  # type: ignore[dict-item]
        if self.mlflow or self.directory is not None:
            from lightning_attattr.plotting import figure_to_array, value_histogram

            array = figure_to_array(value_histogram(flat, title=f"{tag}, step {step}"))
            for mlflow in self.mlflow:
                mlflow.experiment.log_image(mlflow.run_id, array, artifact_file=f"figures/{tag}/step_{step:06d}.png")
            if self.directory is not None:
                _write_png(self.directory / tag / f"step_{step:06d}.png", array)


def _log_dir(trainer: pl.Trainer) -> str:
    """``trainer.log_dir`` without its broadcast (this runs on rank zero only, a broadcast would hang the others)."""
    for logger in trainer.loggers[:1]:
        found = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
        if found:
            return str(found)
    return str(trainer.default_root_dir)


def _write_png(path: Path, array: np.ndarray[Any, Any]) -> None:
    """Write ``array`` as a PNG file, atomically."""
    from matplotlib.image import imsave

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: imsave(f, array, format="png"), binary=True)
