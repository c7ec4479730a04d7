"""One-run speed table of every attribution variant on whatever device is found; prints one JSON document.

Variants (all on the same random examples, every layer, the predicted class):

- ``official_loop``: the official AttAttr algorithm (``benchmarks/attribution_speed.naive_attribute``):
  left Riemann with m = 20, one example at a time, the 20 steps of one layer in one pass, eager attention;
  examples are padded to ``--tokens`` (all have that length here);
- ``captum_gl10``: Captum user code (``lightning_attattr.core.captum_baseline.captum_attribution``):
  ``IntegratedGradients`` Gauss-Legendre with 10 steps, one call per example and layer
  (``internal_batch_size=10``);
- ours (``AttentionIntegratedGradients.attribute``, batched over examples): ``gl10`` (gausslegendre/10,
  default ``internal_batch_size``), ``left20`` (riemann_left/20), ``gl10_ibs256``
  (``internal_batch_size=256``), ``auto`` (``n_steps="auto"``), ``gl10_tf32``, ``gl10_bf16``
  (``precision=``), ``auto_bf16`` and ``auto_precision_auto`` (``n_steps="auto"`` with
  ``precision="bf16"`` / ``"auto"``). Everything else is strict fp32 (TF32 off); on the CPU ``tf32``
  runs, and is the same as, fp32.

Columns per variant: examples/s (the fastest of ``--repeats`` calls, ``torch.cuda.synchronize()`` around
each on CUDA), the peak memory of the first timed call above the warmed-up model (CUDA:
``torch.cuda.reset_peak_memory_stats`` / ``max_memory_allocated``, in this process; CPU: the growth of the
peak resident set size, ``VmHWM`` of ``/proc/self/status`` reset through ``/proc/self/clear_refs``, with
every variant in its own subprocess -- ``null`` where that cannot be read), the completeness error
mean / worst over (example, layer) pairs (ours: ``result.completeness_error``; the baselines:
``|sum attr - (F(A) - F(A:=0))| / max(|F(A) - F(A:=0)|, 1e-3)``, the same formula, with F(A) and
F(A:=0) from an untimed call of ours; the official loop also reports ``attribution_speed.rel_stats``),
``result.rows_per_pass`` and the share of the measured matmul peak: the matmul FLOPs of the whole call
(``torch.utils.flop_counter.FlopCounterMode``, one extra untimed call, as in
``benchmarks/attribution_speed.throughput_at_128``) over its best time, against a 4096^3 (CUDA) or
2048^3 (CPU) fp32 matmul measured in the same run (TF32 and bf16 matmul peaks are reported too, and the
reduced-precision variants also get their share of their own precision's peak).

Model: a random BERT (no download; the recipe of ``benchmarks/precision_speed.build``: vocabulary 1000,
classifier weights x30 so that attention changes move the output probability), intermediate size
4 x hidden. Defaults: on CUDA the BERT-base shape (12 layers x 12 heads x 768), 64 examples x 128 tokens;
on the CPU 4 layers x 4 heads x 256, 8 examples x 64 tokens.

Run (from the repository root): ``python benchmarks/gpu_speed.py --out benchmarks/results/gpu_speed_cuda.json``
(``--help`` for options; ``--device cpu`` to force the CPU, ``--skip official_loop,captum_gl10`` to leave
variants out). Captum comes from the ``bench``/``dev`` extras.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/gpu_speed.py` from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.attribution_speed import _NoModuleTracker, naive_attribute, pad_batch  # noqa: E402
from benchmarks.memory_plan import _cpu_peak, _reset_cpu_peak  # noqa: E402
from lightning_attattr.core.attribution import COMPLETENESS_FLOOR, AttentionIntegratedGradients  # noqa: E402
from lightning_attattr.core.captum_baseline import captum_attribution  # noqa: E402

OURS = {
    "gl10": dict(method="gausslegendre", n_steps=10),
    "left20": dict(method="riemann_left", n_steps=20),
    "gl10_ibs256": dict(method="gausslegendre", n_steps=10, internal_batch_size=256),
    "auto": dict(n_steps="auto"),
    "gl10_tf32": dict(method="gausslegendre", n_steps=10, precision="tf32"),
    "gl10_bf16": dict(method="gausslegendre", n_steps=10, precision="bf16"),
    "auto_bf16": dict(n_steps="auto", precision="bf16"),
    "auto_precision_auto": dict(n_steps="auto", precision="auto"),
}
VARIANTS = ["official_loop", "captum_gl10", *OURS]


# --------------------------------------------------------------------------- setup
def build_model(layers: int, hidden: int, heads: int, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=1000,
        num_labels=2,
        max_position_embeddings=512,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
    )
    model = transformers.BertForSequenceClassification(cfg)
    with torch.no_grad():
        model.classifier.weight.mul_(30.0)
    return model.to(device).eval()


def make_ids(n: int, tokens: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [[2, *torch.randint(5, 1000, (tokens - 2,), generator=g).tolist(), 3] for _ in range(n)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def strict_fp32() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def matmul_peak_gflops(device: str, dtype: torch.dtype, n: int, tf32: bool = False, repeat: int = 5) -> float:
    """GFLOP/s of an n^3 matmul (the fastest of ``repeat``), TF32 only when asked."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        a @ b
        sync(device)
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            a @ b
            sync(device)
            best = min(best, time.perf_counter() - start)
    finally:
        strict_fp32()
    return 2 * n**3 / best / 1e9


# --------------------------------------------------------------------------- one variant
def relative_errors(sums: torch.Tensor, diff: torch.Tensor) -> torch.Tensor:
    """``|sum attr - diff| / max(|diff|, floor)``: the formula of ``result.completeness_error``."""
    diff = diff.double().cpu()
    return (sums.double().cpu() - diff).abs() / diff.abs().clamp_min(COMPLETENESS_FLOOR)


def make_call(name: str, model, ids: list[list[int]], device: str, tokens: int):
    """A function running variant ``name`` on ``ids``; it returns (completeness dict, rows_per_pass)."""
    ig = AttentionIntegratedGradients(model)
    if name in ("official_loop", "captum_gl10"):
        # F(A) - F(A:=0) of every pair from our fixed-rule call (not timed; the same model and targets)
        ref = ig.attribute(pad_batch(ids, device=device), n_steps=2, return_convergence_delta=True)
        diff = ref.prob[:, None] - ref.baseline_prob
    if name == "official_loop":

        def call():
            maps, stats = naive_attribute(model, ids, m=20, pad_to=tokens)
            err = relative_errors(torch.stack([a.sum(dim=(1, 2, 3)) for a in maps]), diff)
            return {
                "mean": float(err.mean()),
                "worst": float(err.max()),
                "how": "|sum attr - (F(A)-F(0))| / max(|F(A)-F(0)|, 1e-3)",
                "attribution_speed_rel_stats": stats,
            }, None

        return call
    if name == "captum_gl10":
        singles = [pad_batch([row], device=device) for row in ids]

        def call():
            maps, targets = captum_attribution(
                model, singles, n_steps=10, method="gausslegendre", internal_batch_size=10
            )
            sums = torch.stack([m.flatten(1).sum(1) for m in maps])  # [example, layer]
            err = relative_errors(sums, diff)
            return {
                "mean": float(err.mean()),
                "worst": float(err.max()),
                "how": "|sum attr - (F(A)-F(0))| / max(|F(A)-F(0)|, 1e-3)",
                "same_targets_as_ours": bool(torch.equal(torch.tensor(targets), ref.target.cpu())),
            }, None

        return call
    batch = pad_batch(ids, device=device)
    kwargs = OURS[name]

    def call():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unconverged pairs of "auto": counted below
            res = ig.attribute(batch, return_convergence_delta=True, **kwargs)
        err = res.completeness_error
        out = {"mean": float(err.mean()), "worst": float(err.max()), "how": "result.completeness_error"}
        if res.unconverged is not None:
            out["unconverged_pairs"] = int(res.unconverged.sum())
        if isinstance(kwargs["n_steps"], str):
            out["nodes_per_pair_mean"] = float(res.n_steps_used.double().mean())
        return out, res.rows_per_pass

    return call


def warm_up(name: str, model, ids: list[list[int]], device: str, tokens: int) -> None:
    """Kernels, per-thread buffers and the attention registration are not part of the timed calls."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "official_loop":
            naive_attribute(model, ids[:1], m=20, pad_to=tokens)
        elif name == "captum_gl10":
            captum_attribution(model, [pad_batch(ids[:1], device=device)], layers=[0], n_steps=2, internal_batch_size=2)
        else:
            AttentionIntegratedGradients(model).attribute(pad_batch(ids[:2], device=device), **OURS[name])
    sync(device)


def run_variant(spec: dict) -> dict:
    """Variant ``spec['name']``: best time over ``repeats``, peak memory of the first call, FLOPs of one call."""
    strict_fp32()
    device, name = spec["device"], spec["name"]
    model = build_model(spec["layers"], spec["hidden"], spec["heads"], device)
    ids = make_ids(spec["examples"], spec["tokens"])
    call = make_call(name, model, ids, device, spec["tokens"])
    warm_up(name, model, ids, device, spec["tokens"])
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        base = _reset_cpu_peak()
    seconds, peak = [], None
    for i in range(spec["repeats"]):
        sync(device)
        start = time.perf_counter()
        completeness, rows = call()
        sync(device)
        seconds.append(time.perf_counter() - start)
        if i == 0:
            if cuda:
                peak = torch.cuda.max_memory_allocated(device) - base
            elif spec["isolated"]:
                peak = _cpu_peak() - base
    flops = None
    if spec["flops"]:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        counter.mod_tracker = _NoModuleTracker()  # its backward hooks break autograd.grad on leaves
        with counter:
            call()
        flops = counter.get_total_flops()
    best = min(seconds)
    return {
        "examples_per_s": spec["examples"] / best,
        "seconds": best,
        "all_seconds": [round(t, 4) for t in seconds],
        "peak_mib": None if peak is None else round(peak / 2**20, 1),
        "completeness_error": completeness,
        "rows_per_pass": rows,
        "matmul_gflop": None if flops is None else flops / 1e9,
        "gflops_per_s": None if flops is None else flops / best / 1e9,
    }


def run_isolated(spec: dict) -> dict:
    """``run_variant`` in a fresh interpreter (the CPU's peak RSS is per process)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, env=env, cwd=ROOT
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-3:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument("--examples", type=int, help="examples (default 64 on CUDA, 8 on the CPU)")
    p.add_argument("--tokens", type=int, help="tokens per example (default 128 on CUDA, 64 on the CPU)")
    p.add_argument("--layers", type=int, help="layers (default 12 on CUDA, 4 on the CPU)")
    p.add_argument("--hidden", type=int, help="hidden size (default 768 on CUDA, 256 on the CPU)")
    p.add_argument("--heads", type=int, help="attention heads (default 12 on CUDA, 4 on the CPU)")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per variant; the fastest counts")
    p.add_argument("--skip", default="", help=f"comma-separated variants to leave out, of: {','.join(VARIANTS)}")
    p.add_argument("--no_flops", action="store_true", help="skip the FLOP-counting call (no %% of peak column)")
    p.add_argument(
        "--isolate",
        choices=["auto", "yes", "no"],
        default="auto",
        help="each variant in its own subprocess (auto: on the CPU, where that is how its peak memory is measured)",
    )
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_variant(json.loads(args.child))))
        return
    strict_fp32()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants in --skip: {sorted(unknown)}")
    shape = {
        "layers": args.layers or (12 if cuda else 4),
        "hidden": args.hidden or (768 if cuda else 256),
        "heads": args.heads or (12 if cuda else 4),
        "examples": args.examples or (64 if cuda else 8),
        "tokens": args.tokens or (128 if cuda else 64),
    }
    isolated = args.isolate == "yes" or (args.isolate == "auto" and not cuda)
    n = 4096 if cuda else 2048
    peaks = {
        "fp32": matmul_peak_gflops(device, torch.float32, n),
        "tf32": matmul_peak_gflops(device, torch.float32, n, tf32=True) if cuda else None,
        "bf16": matmul_peak_gflops(device, torch.bfloat16, n),
    }
    report: dict = {
        "machine": {
            "platform": platform.platform(),
            "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({platform.processor() or 'cpu'})",
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "model": {
            "type": "random BERT (vocab 1000, classifier x30, seed 0), intermediate 4 x hidden",
            **{k: shape[k] for k in ("layers", "hidden", "heads")},
        },
        "workload": {"examples": shape["examples"], "tokens": shape["tokens"], "layers_attributed": "all"},
        "precision": "strict fp32 (TF32 off) unless the variant says otherwise",
        f"matmul_peak_gflops_{n}": peaks,
        "peak_memory": (
            "torch.cuda.max_memory_allocated above the warmed-up model, in-process"
            if cuda
            else (
                "peak RSS growth (VmHWM after a clear_refs reset) above the warmed-up model, one subprocess per variant"
                if isolated
                else "null: not measured (variants share one process)"
            )
        ),
        "repeats": args.repeats,
        "variants": {},
    }
    for name in VARIANTS:
        if name in skip:
            continue
        spec = {
            "name": name,
            "device": device,
            **shape,
            "repeats": args.repeats,
            "flops": not args.no_flops,
            "isolated": isolated,
        }
        row = run_isolated(spec) if isolated else run_variant(spec)
        if "gflops_per_s" in row and row["gflops_per_s"] is not None:
            row["percent_of_fp32_matmul_peak"] = 100 * row["gflops_per_s"] / peaks["fp32"]
            own = OURS.get(name, {}).get("precision")
            if own in ("tf32", "bf16") and peaks[own] is not None:
                row[f"percent_of_{own}_matmul_peak"] = 100 * row["gflops_per_s"] / peaks[own]
        report["variants"][name] = row
        print(f"{name}: {row.get('examples_per_s', row.get('error'))}", file=sys.stderr)
    done = {k: v for k, v in report["variants"].items() if "examples_per_s" in v}
    for ref in ("official_loop", "captum_gl10", "gl10"):
        if ref in done:
            report[f"speed_vs_{ref}"] = {
                k: round(v["examples_per_s"] / done[ref]["examples_per_s"], 3) for k, v in done.items()
            }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
