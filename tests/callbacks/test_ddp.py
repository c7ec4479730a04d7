"""Two processes (Lightning's `ddp`) give the single-process maps, importance and pruning curve.

On the CPU (gloo), always; on GPUs (``cuda`` marker, skipped without one): NCCL with one GPU per rank
where there are two, else two ranks sharing the one GPU over gloo, under each Lightning precision.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TEST_DEVICE

WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def run(devices, out, cwd, package="pytorch_lightning", accelerator="cpu", precision="32-true"):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ATTATTR_LIGHTNING": package}
    done = subprocess.run(
        [sys.executable, str(WORKER), str(devices), str(out), accelerator, precision],
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
    assert_equal_reductions(one, two)


def assert_equal_reductions(one, two, rtol=1e-5, atol=1e-7):
    """The monitors' reduced maps: the rows and top edges of the single-process maps, whatever the ranks."""
    for maps, rows, values, where in zip(two["maps"], two["rows"], two["top_values"], two["top_indices"]):
        torch.testing.assert_close(rows, maps[:, :, [maps.shape[-1] - 1, 0]], rtol=rtol, atol=atol)
        layer = torch.arange(maps.shape[0])[:, None].expand(-1, values.shape[1])
        torch.testing.assert_close(
            maps[layer, where[..., 0], where[..., 1], where[..., 2]], values, rtol=rtol, atol=atol
        )
    for a, b in zip(one["top_values"], two["top_values"]):
        torch.testing.assert_close(b, a, rtol=rtol, atol=atol)


def assert_equal_runs(one, two, rtol=1e-5, atol=1e-7, same_accuracy=True):
    for a, b in zip(one["maps"], two["maps"]):
        torch.testing.assert_close(b, a, rtol=rtol, atol=atol)
    assert_equal_reductions(one, two, rtol, atol)
    torch.testing.assert_close(two["delta"], one["delta"], rtol=1e2 * rtol, atol=atol)
    for key in ("importance", "taylor", "prune_importance"):
        torch.testing.assert_close(two[key], one[key], rtol=rtol, atol=atol)
    if same_accuracy:
        assert two["accuracy"] == one["accuracy"]


def test_two_ranks_sharing_one_device_over_gloo_equal_one(one_process, tmp_path):
    # the wiring `make gpu-check` uses on a machine with a single GPU, here on the CPU
    two = run(2, tmp_path / "two.pt", tmp_path, accelerator="shared-cpu")
    assert two["world_size"] == 2 and two["device"] == "cpu"
    assert_equal_runs(one_process, two)


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["32-true", "16-mixed", "bf16-mixed"])
def test_two_gpu_ranks_equal_one_cpu_process(one_process, tmp_path, precision):
    gpus = torch.cuda.device_count() if TEST_DEVICE == "cuda" else 0
    accelerator = "gpu" if gpus >= 2 else ("shared-gpu" if TEST_DEVICE == "cuda" else "shared-cpu")
    two = run(2, tmp_path / "two.pt", tmp_path, accelerator=accelerator, precision=precision)
    assert two["world_size"] == 2 and two["device"].startswith(TEST_DEVICE)
    # the attribution runs in fp32 whatever the trainer's precision; the pruning curve is the user's own
    # evaluation in that precision, so only the fp32 trainer must reproduce it exactly
    assert_equal_runs(one_process, two, rtol=1e-4, atol=1e-6, same_accuracy=precision == "32-true")
