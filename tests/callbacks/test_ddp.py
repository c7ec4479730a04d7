"""Two CPU processes (gloo, Lightning's `ddp`) give the single-process maps, importance and pruning curve."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def run(devices, out, cwd, package="pytorch_lightning"):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ATTATTR_LIGHTNING": package}
    done = subprocess.run(
        [sys.executable, str(WORKER), str(devices), str(out)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one")
    return run(1, tmp / "one.pt", tmp)


@pytest.mark.parametrize("package", ["pytorch_lightning", "lightning"])
def test_two_processes_equal_one(one_process, tmp_path, package):
    one = one_process  # pytorch_lightning, one process: also the reference for the `lightning.pytorch` run
    two = run(2, tmp_path / "two.pt", tmp_path, package)
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert two["package"] == {"lightning": "lightning.pytorch"}.get(package, package)
    for a, b in zip(one["maps"], two["maps"]):  # integration steps split over ranks, partial maps summed
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(two["delta"], one["delta"], rtol=1e-4, atol=1e-7)
    assert torch.equal(two["steps_used"], one["steps_used"])  # the same adaptive refinement on every rank
    for key in ("importance", "taylor", "prune_importance"):  # examples split over ranks, metric states summed
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-7)
    assert two["accuracy"] == one["accuracy"]  # same heads pruned on every rank, counts summed
