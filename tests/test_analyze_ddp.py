"""`analyze.py heads` with 2 CPU processes (gloo, Lightning's `ddp`) gives the single-process results."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_attattr.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A briefly trained quickstart run: (config.yaml, last.ckpt) as train.py leaves them."""
    tmp = tmp_path_factory.mktemp("run")
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        cli_main(
            [
                "fit",
                "--config",
                QUICKSTART,
                "--trainer.max_epochs=2",
                "--trainer.limit_val_batches=1",
                "--trainer.enable_progress_bar=false",
                f"--trainer.logger.init_args.save_dir={tmp}",
                # only the checkpoint callback: the AttAttr callbacks are not needed to make a checkpoint
                '--trainer.callbacks=[{"class_path": "lightning_attattr.callbacks.EpochCheckpoint", '
                '"init_args": {"save_last": true}}]',
            ]
        )
    finally:
        os.chdir(cwd)
    run_dir = next(tmp.glob("quickstart/version_*"))
    return run_dir / "config.yaml", run_dir / "checkpoints" / "last.ckpt"


def _analyze(args, cwd, package="pytorch_lightning"):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ATTATTR_LIGHTNING": package}
    done = subprocess.run(
        [sys.executable, str(ROOT / "analyze.py"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.parametrize("package", ["pytorch_lightning", "lightning"])
def test_two_processes_equal_one(trained_run, tmp_path, package):
    """2 processes under either Lightning package equal one `pytorch_lightning` process."""
    config, ckpt = trained_run
    common = [
        "heads",
        "--config",
        str(config),
        "--ckpt_path",
        str(ckpt),
        "--methods=[attattr, taylor, attention, accuracy_difference]",
        "--n_examples=21",  # odd: the distributed sampler must not drop or double-count an example
        "--max_eval_examples=71",
        "--fractions=[0, 0.25, 0.5, 1]",
        "--trainer.enable_progress_bar=false",
    ]
    ddp = _analyze(
        [
            *common,
            f"--output_dir={tmp_path / 'ddp'}",
            "--trainer.accelerator=cpu",
            "--trainer.devices=2",
            "--trainer.strategy=ddp",
        ],
        tmp_path,
        package,
    )
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in ddp.stderr + ddp.stdout
    _analyze([*common, f"--output_dir={tmp_path / 'single'}"], tmp_path)

    def load(name, file):
        return json.loads((tmp_path / name / file).read_text())

    assert load("ddp", "summary.json")["world_size"] == 2
    used = load("ddp", "summary.json")["versions"]["lightning_package"]
    assert used == {"lightning": "lightning.pytorch"}.get(package, package)
    assert load("single", "summary.json")["world_size"] == 1
    # both ranks wrote parts of the per-example work
    parts = (tmp_path / "ddp" / "parts" / "importance").glob("part-*.safetensors")
    assert {p.name.split("-")[2] for p in parts} == {"r0", "r1"}
    a, b = load("ddp", "importance.json"), load("single", "importance.json")
    assert a["importance"].keys() == b["importance"].keys()
    for method in a["importance"]:
        for row_a, row_b in zip(a["importance"][method], b["importance"][method]):
            assert row_a == pytest.approx(row_b, rel=1e-6, abs=1e-9), method
    pa, pb = load("ddp", "pruning.json"), load("single", "pruning.json")
    assert pa["n_eval_examples"] == pb["n_eval_examples"] == 71
    assert pa["curves"] == pb["curves"]


def test_faithfulness_two_processes_equal_one(trained_run, tmp_path):
    """Random deletions are seeded per example, so splitting the examples across ranks changes nothing."""
    config, ckpt = trained_run
    common = [
        "faithfulness",
        "--config",
        str(config),
        "--ckpt_path",
        str(ckpt),
        "--n_examples=9",
        "--ks=[1, 4, 16]",
        "--n_random=2",
        "--n_steps=6",
        "--method=riemann_left",
        "--trainer.enable_progress_bar=false",
    ]
    _analyze(
        [
            *common,
            f"--output_dir={tmp_path / 'ddp'}",
            "--trainer.accelerator=cpu",
            "--trainer.devices=2",
            "--trainer.strategy=ddp",
        ],
        tmp_path,
    )
    _analyze([*common, f"--output_dir={tmp_path / 'single'}"], tmp_path)
    ranks = {p.name.split("-")[2] for p in (tmp_path / "ddp" / "parts" / "faithfulness").glob("part-*.safetensors")}
    assert ranks == {"r0", "r1"}
    a, b = (json.loads((tmp_path / name / "faithfulness.json").read_text()) for name in ("ddp", "single"))
    assert a["n_examples"] == b["n_examples"] == 9
    for part in ("curves", "cross_layer"):  # per-layer and cross-layer removal, random pairs seeded per example
        curves_a = a[part] if part == "curves" else a[part]["curves"]
        for name, curve in (b[part] if part == "curves" else b[part]["curves"]).items():
            for key in ("drop", "flip"):
                assert curves_a[name][key] == pytest.approx(curve[key], abs=1e-5), (part, name, key)
    for name, tree in b["trees"].items():
        assert a["trees"][name]["mean_edges"] == tree["mean_edges"]
        assert a["trees"][name]["random_drop"] == pytest.approx(tree["random_drop"], abs=1e-5)
    assert a["completeness"]["n_maps"] == b["completeness"]["n_maps"]
    assert a["completeness"]["worst"] == pytest.approx(b["completeness"]["worst"], rel=1e-4, abs=1e-7)
    truth_a, truth_b = (json.loads((tmp_path / name / "groundtruth.json").read_text()) for name in ("ddp", "single"))
    for convention, data in truth_b["conventions"].items():
        for name, row in data["methods"].items():
            assert truth_a["conventions"][convention]["methods"][name] == row, (convention, name)


@pytest.mark.cuda
def test_two_gpu_processes_under_nccl_equal_one_cpu_process(trained_run, tmp_path):
    """`analyze.py heads` on two GPUs (NCCL) equals one CPU process (needs two GPUs: a single GPU is
    checked with two ranks sharing it in tests/callbacks/test_ddp.py)."""
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs two CUDA devices for NCCL, found {torch.cuda.device_count()}")
    config, ckpt = trained_run
    common = ["heads", "--config", str(config), "--ckpt_path", str(ckpt), "--methods=[attattr, taylor]"]
    common += [
        "--n_examples=21",
        "--max_eval_examples=71",
        "--fractions=[0, 0.5]",
        "--trainer.enable_progress_bar=false",
    ]
    gpu = [f"--output_dir={tmp_path / 'gpu'}", "--trainer.accelerator=gpu", "--trainer.devices=2"]
    _analyze([*common, *gpu, "--trainer.strategy=ddp"], tmp_path)
    _analyze([*common, f"--output_dir={tmp_path / 'cpu'}", "--trainer.accelerator=cpu"], tmp_path)
    a, b = (json.loads((tmp_path / name / "importance.json").read_text()) for name in ("gpu", "cpu"))
    assert json.loads((tmp_path / "gpu" / "summary.json").read_text())["world_size"] == 2
    for method in b["importance"]:
        for row_a, row_b in zip(a["importance"][method], b["importance"][method]):
            assert row_a == pytest.approx(row_b, rel=1e-4, abs=1e-7), method
