"""Both Lightning packages: how the package is chosen, and train.py end to end under `lightning.pytorch`."""

import os
import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[2]


def chosen(code="", env=None):
    """The package `compat` picks in a fresh interpreter after running ``code``."""
    env = {k: v for k, v in os.environ.items() if k != "ATTATTR_LIGHTNING"} | (env or {})
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nfrom lightning_attattr.lightning.compat import PACKAGE; print(PACKAGE)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_the_package_is_chosen_by_env_then_by_what_was_imported_then_pytorch_lightning():
    assert chosen() == "pytorch_lightning"
    assert chosen("import lightning.pytorch") == "lightning.pytorch"
    assert chosen("import pytorch_lightning") == "pytorch_lightning"
    assert chosen(env={"ATTATTR_LIGHTNING": "lightning"}) == "lightning.pytorch"
    assert chosen("import lightning.pytorch", env={"ATTATTR_LIGHTNING": "pytorch_lightning"}) == "pytorch_lightning"


def test_a_bad_env_value_names_the_variable_and_the_choices():
    env = {**os.environ, "ATTATTR_LIGHTNING": "lightning2"}
    done = subprocess.run(
        [sys.executable, "-c", "import lightning_attattr.lightning.compat"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode != 0
    assert "Expected `ATTATTR_LIGHTNING` to be one of ['lightning', 'pytorch_lightning'], but got 'lightning2'" in (
        done.stderr
    )


def test_callbacks_derive_from_both_packages_and_modules_from_one():
    import lightning.pytorch
    import pytorch_lightning

    from lightning_attattr.callbacks import AttributionMonitor, EpochCheckpoint, EpochSummary
    from lightning_attattr.lightning.classifier import AttAttrClassifier
    from lightning_attattr.lightning.compat import pl

    for package in (lightning.pytorch, pytorch_lightning):
        assert issubclass(AttributionMonitor, package.Callback)
        assert issubclass(EpochSummary, package.Callback)
        assert issubclass(EpochCheckpoint, package.callbacks.ModelCheckpoint)
    assert issubclass(AttAttrClassifier, pl.LightningModule)


def test_to_this_package_moves_only_lightning_module_paths():
    from lightning_attattr.lightning.compat import PACKAGE, to_this_package

    other = "lightning.pytorch" if PACKAGE == "pytorch_lightning" else "pytorch_lightning"
    text = f"class_path: {other}.loggers.TensorBoardLogger\nname: my_{other}.x\nsave_dir: runs/{other}"
    assert to_this_package(text) == (
        f"class_path: {PACKAGE}.loggers.TensorBoardLogger\nname: my_{other}.x\nsave_dir: runs/{other}"
    )


def test_train_py_under_lightning_pytorch_logs_every_picture(tmp_path):
    """`ATTATTR_LIGHTNING=lightning train.py fit --config configs/quickstart.yaml`: the figures reach TensorBoard."""
    env = {**os.environ, "ATTATTR_LIGHTNING": "lightning", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = [
        sys.executable,
        str(ROOT / "train.py"),
        "fit",
        "--config",
        str(ROOT / "configs" / "quickstart.yaml"),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--data.init_args.n_train=64",
        "--data.init_args.n_val=64",
    ]
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "quickstart" / "version_0"
    assert "lightning.pytorch.loggers.TensorBoardLogger" in (run / "config.yaml").read_text()
    acc = EventAccumulator(str(run), size_guidance={"images": 0, "histograms": 0})
    acc.Reload()
    images = set(acc.Tags()["images"])
    assert {"attr/layer0/example0", "importance/attattr", "prune/curve"} <= images
    assert {"attr/values_layer0"} <= set(acc.Tags()["histograms"])
