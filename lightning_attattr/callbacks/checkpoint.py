"""``EpochCheckpoint``: Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` is really the last epoch.

What PyTorch Lightning 2.6.6 does (``pytorch_lightning/callbacks/model_checkpoint.py``):

* ``save_last=True`` is documented as "saves a `last.ckpt` copy whenever a checkpoint file gets
  saved", and that is all it does. ``on_train_epoch_end`` and ``on_validation_end`` call
  ``_save_last_checkpoint`` only under ``if self._last_global_step_saved == trainer.global_step``
  ("Only save last checkpoint if a checkpoint was actually saved in this step"), that is only when
  a top-k checkpoint was written at that step. In an epoch whose monitored metric does not enter
  the top k (or one without validation when ``check_val_every_n_epoch > 1``, or with
  ``every_n_epochs > 1``, or with ``save_top_k=0``) nothing is saved, so ``last.ckpt`` keeps an
  older epoch. ``on_train_end`` does not repair that: it saves last only
  ``if self.save_last and not self._last_checkpoint_saved``, i.e. only if nothing was saved
  during the whole run. A 3-epoch run whose validation accuracy peaks in epoch 0 ends with
  ``last.ckpt`` holding epoch 0; resuming from it repeats epochs 1 and 2.
* ``fast_dev_run`` is meant to suppress checkpointing ("Logging and checkpointing is suppressed"),
  and ``_should_skip_saving_checkpoint`` / ``_should_save_on_exception`` check
  ``trainer.fast_dev_run``, but ``on_train_end`` does not: since nothing was saved during the
  debug run, it writes ``last.ckpt`` (with the default logger suppressed, into
  ``<default_root_dir>/checkpoints/``, by default the working directory), and because of the
  version counter every further ``fast_dev_run`` adds ``last-v1.ckpt``, ``last-v2.ckpt``, ...

* With ``save_last=True``, a step that writes a top-k checkpoint writes ``last.ckpt`` as a second
  full copy of the same state: a one-epoch run of a 273 MB model leaves two 273 MB files.

:class:`EpochCheckpoint` changes exactly these three points and inherits everything else (top-k
selection, file names, ``every_n_*`` triggers, ``save_last="link"``, state dict).
"""

from __future__ import annotations

import os
from typing import Any

from typing_extensions import override

from lightning_attattr.lightning.compat import DualModelCheckpoint, is_fast_dev_run, pl


class EpochCheckpoint(DualModelCheckpoint):  # either Lightning package's Trainer
    """``ModelCheckpoint`` whose ``last.ckpt`` always holds the end of the most recent epoch.

    Takes the same arguments as :class:`~pytorch_lightning.callbacks.ModelCheckpoint` and behaves
    the same, with two differences (see the module docstring for the upstream code, version 2.6.6):

    * With ``save_last=True``, ``last.ckpt`` is refreshed at the end of every training epoch (and
      at the end of training, should it stop mid-epoch) even when no top-k checkpoint was saved
      at that step: the monitored metric did not improve, validation did not run in that epoch,
      ``every_n_epochs > 1`` or ``save_top_k=0``. This holds whether the parent saves at the end
      of validation or at the end of the training epoch (``save_on_train_epoch_end``): Lightning
      runs the epoch-end validation before ``on_train_epoch_end``, so the top-k decision is
      taken first and the refresh is skipped when the parent already wrote ``last.ckpt`` at that
      step. Upstream, ``last.ckpt`` is only written next to a top-k checkpoint, so it can hold an
      earlier epoch. ``save_last="link"`` keeps the upstream meaning (a link to the newest
      top-k file).
    * Under ``fast_dev_run`` nothing at all is written; upstream ``on_train_end`` still writes
      ``last.ckpt`` (then ``last-v1.ckpt``, ...) in a debug run.
    * When a top-k checkpoint was written at the same step, ``last.ckpt`` is a link to it (as with
      ``save_last="link"``; a copy where links cannot be made) instead of a second copy of the
      same state; a later epoch that writes no top-k file replaces the link with a real file.

    Example:
        >>> checkpoint = EpochCheckpoint(monitor="val/acc", mode="max", save_last=True)
        >>> checkpoint.save_last, checkpoint.monitor
        (True, 'val/acc')
    """

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Save as ``ModelCheckpoint`` does, then make sure ``last.ckpt`` holds this epoch's end."""
        super().on_train_epoch_end(trainer, pl_module)
        self._refresh_last_checkpoint(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write ``last.ckpt`` for the final state unless it is current; nothing under ``fast_dev_run``."""
        if is_fast_dev_run(trainer):
            return
        self._refresh_last_checkpoint(trainer)
        super().on_train_end(trainer, pl_module)

    def _refresh_last_checkpoint(self, trainer: pl.Trainer) -> None:
        """Save ``last.ckpt`` unless no checkpoint is due at all or one was already written at this step.

        ``_should_skip_saving_checkpoint`` is true under ``fast_dev_run``, outside ``fit``, in the
        sanity check and when a checkpoint was saved at the current global step; every parent
        code path that saves a top-k checkpoint saves ``last.ckpt`` right after it, so in the
        last case ``last.ckpt`` is already current.
        """
        if self.save_last is True and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    @override
    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Any]) -> None:
        """Link ``last.ckpt`` to the top-k checkpoint of this step, or write it (replacing an older link)."""
        same_step = (
            self.save_last is True
            and self.save_top_k != 0
            and bool(self._last_checkpoint_saved)
            and self._last_global_step_saved == trainer.global_step
            and os.path.isfile(self._last_checkpoint_saved)
            and not os.path.islink(self._last_checkpoint_saved)
        )
        if same_step:
            self.save_last = "link"
            try:
                super()._save_last_checkpoint(trainer, monitor_candidates)
            finally:
                self.save_last = True
            return
        if self.save_last is True and trainer.is_global_zero:
            path = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
            if os.path.islink(path):
                os.remove(path)  # the state of this step goes into a file of its own, not through the link
        super()._save_last_checkpoint(trainer, monitor_candidates)
