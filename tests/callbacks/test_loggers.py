"""Figures and histograms reach every logger that can take them, with the real clients (no mocks).

W&B runs in offline mode (files under ``save_dir/wandb``), MLflow with a local file store; the CSV
logger and no logger at all get PNG files under the log dir. See ``lightning_attattr/callbacks/_figures.py``.
"""

import os

import pytest
import pytorch_lightning as pl
import torch

from lightning_attattr.callbacks import AttributionMonitor, HeadImportanceCallback, HeadPruningCallback
from tests.callbacks.test_foreign_module import loader, their_module

#: what the three callbacks draw in one analysis (2 layers, 1 image example, histograms on)
IMAGE_TAGS = ("attr/layer0/example0", "attr_heads/layer1/example0", "importance/attattr", "prune/curve")
HISTOGRAM_TAGS = ("attr/values_layer0", "attr/values_layer1")


def fit(tmp_path, logger):
    torch.manual_seed(0)
    callbacks = [
        AttributionMonitor(n_examples=1, n_steps=3),
        HeadImportanceCallback(n_examples=2, n_steps=3),
        HeadPruningCallback(fractions=[0.0, 1.0], importance="random"),
    ]
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        logger=logger,
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=callbacks,
    )
    trainer.fit(their_module(pl), loader(0), loader(1))
    return trainer


def pngs(root):
    """Relative paths of the PNG files below ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))


def test_wandb_offline_gets_images_and_histograms(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(project="attattr-test", save_dir=str(tmp_path), offline=True)
    fit(tmp_path, logger)
    logger.experiment.finish()
    (run,) = list((tmp_path / "wandb").glob("offline-run-*"))
    images = pngs(run / "files" / "media" / "images")
    for tag in IMAGE_TAGS:  # W&B names media files after the key, "/" becoming a folder
        assert any(p.startswith(tag) for p in images), (tag, images)
    # offline runs keep their history in the run's record file (protobuf records, values as JSON)
    (record,) = list(run.glob("run-*.wandb"))
    data = record.read_bytes()
    for tag in HISTOGRAM_TAGS:
        assert tag.encode() in data
    assert data.count(b'"histogram"') >= len(HISTOGRAM_TAGS)


def test_mlflow_file_store_gets_png_artifacts(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
    from pytorch_lightning.loggers import MLFlowLogger

    logger = MLFlowLogger(experiment_name="attattr-test", tracking_uri=f"file:{tmp_path / 'mlruns'}")
    fit(tmp_path, logger)
    artifacts = tmp_path / "mlruns" / logger.experiment_id / logger.run_id / "artifacts" / "figures"
    found = pngs(artifacts)
    for tag in IMAGE_TAGS + HISTOGRAM_TAGS:  # histograms as drawn figures
        assert any(p.startswith(tag + os.sep) for p in found), (tag, found)


@pytest.mark.parametrize("kind", ["csv", "none"])
def test_csv_logger_or_none_gets_png_files_under_the_log_dir(tmp_path, kind):
    from pytorch_lightning.loggers import CSVLogger

    logger = CSVLogger(tmp_path, name="csv") if kind == "csv" else False
    trainer = fit(tmp_path, logger)
    root = (tmp_path / "csv" / "version_0" if kind == "csv" else tmp_path) / "figures"
    assert str(root.parent) == trainer.log_dir
    found = pngs(root)
    for tag in IMAGE_TAGS + HISTOGRAM_TAGS:
        assert any(p.startswith(tag + os.sep) for p in found), (tag, found)
    from matplotlib.image import imread

    image = imread(root / "prune" / "curve" / "step_000001.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert not list(root.rglob("*.tmp"))  # written atomically
