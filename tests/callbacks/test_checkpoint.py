"""EpochCheckpoint: last.ckpt is the last epoch, and fast_dev_run writes nothing (upstream 2.6.6 differs in both)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_attattr.callbacks.checkpoint import EpochCheckpoint


class ConstantAccuracy(pl.LightningModule):
    """Boring module whose monitored `val/acc` never improves after the first validation."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", 0.5)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(4, 4)), batch_size=4)


def fit(root, *callbacks, ckpt_path=None, **trainer_kwargs):
    torch.manual_seed(0)
    kwargs = dict(max_epochs=3, logger=False, num_sanity_val_steps=0)
    kwargs.update(trainer_kwargs)
    trainer = pl.Trainer(
        default_root_dir=root,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=list(callbacks),
        **kwargs,
    )
    trainer.fit(ConstantAccuracy(), ckpt_path=ckpt_path)
    return trainer


SETTINGS = {
    # validation every epoch: the parent saves in on_train_epoch_end
    "save_on_train_epoch_end": ({}, {}),
    # the parent saves in on_validation_end
    "save_on_validation_end": ({"save_on_train_epoch_end": False}, {}),
    # validation only in epoch 1: epoch 2 has no metric at all
    "validation_every_2_epochs": ({}, {"check_val_every_n_epoch": 2}),
    # several validations per epoch
    "validation_twice_per_epoch": ({}, {"val_check_interval": 0.5}),
}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_last_checkpoint_holds_the_last_epoch(tmp_path, setting):
    cb_kwargs, trainer_kwargs = SETTINGS[setting]
    ours = EpochCheckpoint(monitor="val/acc", mode="max", save_last=True, **cb_kwargs)
    trainer = fit(tmp_path / "ours", ours, **trainer_kwargs)
    last = torch.load(ours.last_model_path, weights_only=False)
    assert ours.last_model_path.endswith("last.ckpt")
    assert last["epoch"] == 2 and last["global_step"] == trainer.global_step == 6
    torch.testing.assert_close(last["state_dict"]["layer.weight"], trainer.lightning_module.layer.weight)

    # upstream ModelCheckpoint (2.6.6) refreshes last.ckpt only next to a new top-k checkpoint: it keeps an
    # earlier epoch. If this fails, Lightning has fixed it and EpochCheckpoint may no longer be needed.
    upstream = ModelCheckpoint(monitor="val/acc", mode="max", save_last=True, **cb_kwargs)
    fit(tmp_path / "upstream", upstream, **trainer_kwargs)
    assert torch.load(upstream.last_model_path, weights_only=False)["epoch"] < 2

    # everything else as upstream: the same top-k file, the same files
    assert ours.best_model_path.replace("ours", "upstream") == upstream.best_model_path
    assert ours.best_model_score == upstream.best_model_score
    ours_files = sorted(p.name for p in (tmp_path / "ours" / "checkpoints").iterdir())
    assert ours_files == sorted(p.name for p in (tmp_path / "upstream" / "checkpoints").iterdir())


def test_without_save_last_only_top_k_is_written(tmp_path):
    ours = EpochCheckpoint(monitor="val/acc", mode="max")
    fit(tmp_path, ours)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["epoch=0-step=2.ckpt"]
    assert ours.last_model_path == ""


def test_save_top_k_zero_still_refreshes_last(tmp_path):
    ours = EpochCheckpoint(save_top_k=0, save_last=True)
    trainer = fit(tmp_path, ours, max_epochs=2)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last.ckpt"]
    assert torch.load(ours.last_model_path, weights_only=False)["global_step"] == trainer.global_step


def fast_dev_run(callback):
    trainer = pl.Trainer(fast_dev_run=True, enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    trainer.fit(ConstantAccuracy())


def test_fast_dev_run_writes_no_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        fast_dev_run(EpochCheckpoint(monitor="val/acc", mode="max", save_last=True))
    assert list(tmp_path.rglob("*.ckpt")) == []

    # upstream (2.6.6) on_train_end ignores fast_dev_run: each debug run adds another last*.ckpt
    upstream_dir = tmp_path / "upstream"
    upstream_dir.mkdir()
    monkeypatch.chdir(upstream_dir)
    for _ in range(2):
        fast_dev_run(ModelCheckpoint(monitor="val/acc", mode="max", save_last=True))
    assert sorted(p.name for p in upstream_dir.rglob("*.ckpt")) == ["last-v1.ckpt", "last.ckpt"]


class EpochsRun(pl.Callback):
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs.append(trainer.current_epoch)


@pytest.mark.parametrize(("cls", "repeated"), [(EpochCheckpoint, []), (ModelCheckpoint, [1, 2])])
def test_resuming_from_last_continues_after_the_last_epoch(tmp_path, cls, repeated):
    first = cls(monitor="val/acc", mode="max", save_last=True)
    fit(tmp_path, first)
    epochs = EpochsRun()
    resumed = cls(monitor="val/acc", mode="max", save_last=True)
    trainer = fit(tmp_path, resumed, epochs, ckpt_path=first.last_model_path, max_epochs=4)
    assert epochs.epochs == [*repeated, 3] and trainer.global_step == 8


def test_last_links_to_the_top_k_checkpoint_of_the_same_step_instead_of_a_second_copy(tmp_path):
    ours = EpochCheckpoint(monitor="val/acc", mode="max", save_last=True)
    fit(tmp_path / "one", ours, max_epochs=1)
    folder = tmp_path / "one" / "checkpoints"
    last, (best,) = folder / "last.ckpt", [p for p in folder.iterdir() if p.name != "last.ckpt"]
    assert last.is_symlink() and last.resolve() == best.resolve()  # one file on disk
    assert torch.load(last, weights_only=False)["epoch"] == 0

    # upstream writes the same state twice (two full files); if this fails, Lightning stopped doing so
    upstream = ModelCheckpoint(monitor="val/acc", mode="max", save_last=True)
    fit(tmp_path / "upstream", upstream, max_epochs=1)
    files = sorted((tmp_path / "upstream" / "checkpoints").iterdir())
    assert len(files) == 2 and not any(p.is_symlink() for p in files)


def test_a_later_epoch_replaces_the_link_without_touching_the_top_k_file(tmp_path):
    ours = EpochCheckpoint(monitor="val/acc", mode="max", save_last=True)
    trainer = fit(tmp_path, ours)  # val/acc never improves after epoch 0: the top-k file stays epoch 0
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert not last.is_symlink()
    assert torch.load(last, weights_only=False)["epoch"] == 2 == trainer.current_epoch - 1
    assert torch.load(ours.best_model_path, weights_only=False)["epoch"] == 0  # not written through the link
