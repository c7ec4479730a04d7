"""Memory-planned ``internal_batch_size``: planned rows, peak memory and time; prints one JSON document.

On whatever device is there (CUDA if available, else the CPU), for a random BERT classifier and
examples of exactly ``n_tokens`` tokens (one length group), it runs one
``AttentionIntegratedGradients.attribute`` call per setting, each in a fresh subprocess so that
the peak is that call's alone:

- ``planned``: ``internal_batch_size=None``, the rows planned from the free memory (the default);
- ``ibs_256``: ``internal_batch_size=256``;
- ``at_once``: every row of the group in one pass per layer (``internal_batch_size = examples x
  steps``), only where the plan's estimate of that pass fits in 80 % of the free memory;
- ``budget_<N>GiB``: ``memory_budget=N GiB`` (default 12), a simulated smaller device.

For each: ``rows_per_pass`` (from the result), seconds per example (the fastest of ``repeat``
calls), the peak memory of the first call above the warmed-up model (CUDA:
``torch.cuda.max_memory_allocated``; CPU: the growth of the peak resident set size, ``VmHWM`` of
``/proc/self/status`` reset through ``/proc/self/clear_refs``, else ``ru_maxrss``), the planner's
estimate of that peak (``state + rows_per_pass x row_bytes`` of the lowest layer) and the largest
difference of the maps from the ``planned`` run.

Models: ``bert_base`` (12 x 12 x 768, intermediate 3072) by default on CUDA; ``small`` (4 layers x
4 heads x 256, intermediate 1024) by default on the CPU, where BERT-base at 128 tokens takes several
seconds per example.

Run: ``python benchmarks/memory_plan.py`` (``--help`` for options, e.g. ``--budget_gib 0.25`` to see the
plan bind on a small model).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, BertForSequenceClassification

from lightning_attattr.core import memory
from lightning_attattr.core.attribution import AttentionIntegratedGradients

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
    "bert_base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
}


def build(shape: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=28996, num_labels=2, max_position_embeddings=512, **SHAPES[shape])
    return BertForSequenceClassification(cfg).eval().to(device)


def make_batch(n_examples: int, n_tokens: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1000, 20000, (n_examples, n_tokens), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def _status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> int:
    """Reset the peak RSS where Linux allows it; return the baseline to subtract."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed start-up memory back to the OS
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    rss = _status_bytes("VmRSS")
    return rss if rss is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu_peak() -> int:
    peak = _status_bytes("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak(device: torch.device) -> int:
    """Start a peak-memory measurement on ``device``; the baseline that :func:`timed_calls` subtracts."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    return _reset_cpu_peak()


def timed_calls(call: Callable[[], Any], device: torch.device, repeat: int, base: int) -> tuple[list[float], int, Any]:
    """``repeat`` timed calls: their seconds, the first call's peak memory above ``base``, the last result.

    The peak is the first call's: the CPU allocator fragments over calls.
    """
    cuda = device.type == "cuda"
    seconds, peak, result = [], 0, None
    for i in range(repeat):
        start = time.perf_counter()
        result = call()
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        if i == 0:
            peak = (torch.cuda.max_memory_allocated(device) if cuda else _cpu_peak()) - base
    return seconds, peak, result


def child(spec: dict) -> dict:
    """One attribute() call of the setting ``spec``; its measurements (and the maps, saved to ``spec['out']``)."""
    device = torch.device(spec["device"])
    model = build(spec["shape"], device)
    batch = make_batch(spec["n_examples"], spec["n_tokens"], device)
    ig = AttentionIntegratedGradients(model)
    kwargs = dict(method=spec["method"], n_steps=spec["n_steps"], **spec["kwargs"])
    # warm-up at the same length: kernels, their per-thread buffers and the attention registration are not
    # part of the call's peak
    ig.attribute(make_batch(1, spec["n_tokens"], device), method=spec["method"], n_steps=2, internal_batch_size=2)
    base = reset_peak(device)
    free = memory.free_memory(device)
    seconds, peak, result = timed_calls(lambda: ig.attribute(batch, **kwargs), device, spec["repeat"], base)
    torch.save(result.padded(), spec["out"])
    cfg, layers = model.config, model.config.num_hidden_layers
    row = memory.row_bytes(cfg, spec["n_tokens"], layers, model.dtype)
    state = memory.state_bytes(cfg, spec["n_tokens"], layers, 1, model.dtype)
    estimate = (result.rows_per_pass or 0) * row + spec["n_examples"] * state
    return {
        "free_bytes_at_start": free,
        "rows_per_pass": result.rows_per_pass,
        "seconds_per_example": min(seconds) / spec["n_examples"],
        "seconds_per_example_all": [round(t / spec["n_examples"], 4) for t in seconds],
        "peak_mib_above_model": round(peak / 2**20, 1),
        "estimated_peak_mib": round(estimate / 2**20, 1),
        "row_mib_layer0": round(row / 2**20, 2),
    }


def main(
    shape: str | None = None,
    n_examples: int | None = None,
    n_tokens: int = 128,
    method: str = "gausslegendre",
    n_steps: int = 10,
    budget_gib: float = 12.0,
    repeat: int = 3,
    child_spec: str | None = None,
) -> None:
    """Run the benchmark and print JSON.

    Args:
        shape: ``bert_base`` or ``small``; default ``bert_base`` on CUDA, ``small`` on the CPU.
        n_examples: examples (one length group); default 64 on CUDA, 8 on the CPU.
        n_tokens: tokens per example.
        method: integration rule.
        n_steps: integration steps.
        budget_gib: the simulated budget of the ``budget_*`` setting (``memory_budget``), GiB.
        repeat: timed calls per setting; the fastest counts.
        child_spec: internal: one setting as JSON, run in this process.
    """
    if child_spec:
        print(json.dumps(child(json.loads(child_spec))))
        return
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    shape = shape or ("bert_base" if cuda else "small")
    n_examples = n_examples or (64 if cuda else 8)
    cfg = BertConfig(**SHAPES[shape])
    free = memory.free_memory(device)
    rows_all = n_examples * n_steps
    at_once = memory.row_bytes(cfg, n_tokens, cfg.num_hidden_layers, torch.float32) * rows_all
    settings: list[tuple[str, dict]] = [("planned", {}), ("ibs_256", {"internal_batch_size": 256})]
    if at_once <= 0.8 * free:
        settings.append(("at_once", {"internal_batch_size": rows_all}))
    budget_name = f"budget_{budget_gib:g}GiB"
    settings.append((budget_name, {"memory_budget": int(budget_gib * 2**30)}))
    report: dict = {
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "threads": torch.get_num_threads(),
            "free_gib_at_start": round(free / 2**30, 2),
        },
        "model": f"{shape}: random BERT {SHAPES[shape]}",
        "workload": {"n_examples": n_examples, "n_tokens": n_tokens, "method": method, "n_steps": n_steps},
        "default_share": memory.DEFAULT_MEMORY_SHARE,
        "at_once_estimated_gib": round(at_once / 2**30, 2),
        "settings": {},
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    reference: torch.Tensor | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for name, kwargs in settings:
            spec = {
                "device": str(device),
                "shape": shape,
                "n_examples": n_examples,
                "n_tokens": n_tokens,
                "method": method,
                "n_steps": n_steps,
                "repeat": repeat,
                "kwargs": kwargs,
                "out": str(Path(tmp) / f"{name}.pt"),
            }
            out = subprocess.run(
                [sys.executable, __file__, "--child_spec", json.dumps(spec)],
                capture_output=True,
                text=True,
                env=env,
            )
            if out.returncode != 0:
                report["settings"][name] = {"kwargs": kwargs, "error": out.stderr.strip().splitlines()[-1:]}
                continue
            data = json.loads(out.stdout.strip().splitlines()[-1])
            maps = torch.load(spec["out"])
            if name == "planned":
                reference = maps
            data["max_abs_diff_vs_planned"] = None if reference is None else float((maps - reference).abs().max())
            report["settings"][name] = {"kwargs": kwargs, **data}
    done = report["settings"]
    base = done.get("planned", {})
    if "seconds_per_example" in base:
        report["ratios_vs_planned"] = {
            name: {
                "time": round(s["seconds_per_example"] / base["seconds_per_example"], 3),
                "peak_memory": round(s["peak_mib_above_model"] / max(base["peak_mib_above_model"], 1e-9), 3),
            }
            for name, s in done.items()
            if "seconds_per_example" in s
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    from jsonargparse import CLI

    with contextlib.suppress(BrokenPipeError):
        CLI(main)
