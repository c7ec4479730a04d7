"""Long inputs in bounded memory: time and peak memory of reduced results versus full maps; prints JSON.

For a random model of the chosen family (``bert``: ``BertForSequenceClassification`` with
``max_position_embeddings`` as large as the longest input; ``llama``: a multi-head
``LlamaForSequenceClassification``, whose passes must hold one row, as the default
``--internal-batch-size 1`` does) and one example of exactly ``n`` tokens per size, it runs one
``attribute`` call per mode, each in a fresh subprocess so that the peak is that call's alone:

- ``full``: the full ``[layer, head, n, n]`` maps (the default);
- ``last_row``: ``reduction=Rows([-1])``, the last token's row of every map;
- ``head_scores``: ``reduction=HeadScores()``, one score per (layer, head).

For each: seconds of the call (the fastest of ``--repeat``, after a short warm-up at 16 tokens), the growth of the peak
resident set size above the warmed-up model (CPU: ``VmHWM`` reset through
``/proc/self/clear_refs``, else ``ru_maxrss``; CUDA: ``torch.cuda.max_memory_allocated``), the
size of the full maps (``layers x heads x n^2`` fp32) and, per mode, the growth of time and peak
per doubling of ``n`` (``(t2 / t1) ** (1 / log2(n2 / n1))`` between successive sizes).

Run: ``python benchmarks/long_context.py --sizes 128,512,2048`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/long_context.py` from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.memory_plan import reset_peak, timed_calls  # noqa: E402
from lightning_attattr.core.attribution import AttentionIntegratedGradients  # noqa: E402
from lightning_attattr.core.reductions import HeadScores, Rows  # noqa: E402

MODES = {"full": None, "last_row": Rows([-1]), "head_scores": HeadScores()}


def build(family: str, layers: int, heads: int, hidden: int, max_tokens: int) -> torch.nn.Module:
    """A random classifier of ``family`` (2 labels, vocabulary 100)."""
    import transformers

    torch.manual_seed(0)
    shape = dict(
        vocab_size=100,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        num_labels=2,
        max_position_embeddings=max_tokens,
    )
    if family == "llama":
        cfg = transformers.LlamaConfig(num_key_value_heads=heads, pad_token_id=0, **shape)
        return transformers.LlamaForSequenceClassification(cfg).eval()
    return transformers.BertForSequenceClassification(transformers.BertConfig(**shape)).eval()


def make_batch(n_tokens: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, 100, (1, n_tokens), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def child(spec: dict) -> dict:
    """One ``attribute`` call of one (size, mode); its time and peak memory."""
    device = torch.device(spec["device"])
    torch.set_num_threads(spec["threads"])
    model = build(spec["family"], spec["layers"], spec["heads"], spec["hidden"], spec["max_tokens"]).to(device)
    ig = AttentionIntegratedGradients(model)
    kwargs = dict(n_steps=spec["n_steps"], internal_batch_size=spec["internal_batch_size"])
    reduction = MODES[spec["mode"]]
    ig.attribute(make_batch(16, device), reduction=reduction, **kwargs)  # warm-up: kernels, registration
    base = reset_peak(device)
    batch = make_batch(spec["n_tokens"], device)
    seconds, peak, result = timed_calls(
        lambda: ig.attribute(batch, reduction=reduction, **kwargs), device, spec["repeat"], base
    )
    kept = result.attributions if result.reduced is None else (result.reduced.rows or [result.reduced.head_scores])
    return {
        "seconds": round(min(seconds), 3),
        "peak_mib": round(peak / 2**20, 1),
        "result_bytes": sum(t.numel() * t.element_size() for t in kept if t is not None),
    }


def growth(cases: list[dict], key: str) -> list[float | None]:
    """Factor per doubling of ``n`` of ``key`` between successive sizes."""
    out: list[float | None] = []
    for a, b in zip(cases, cases[1:], strict=False):
        if key not in a or key not in b or a[key] <= 0:
            out.append(None)
            continue
        out.append(round((b[key] / a[key]) ** (1 / math.log2(b["n_tokens"] / a["n_tokens"])), 2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-family", choices=["bert", "llama"], default="bert")
    parser.add_argument("--sizes", default="128,512,2048", help="comma-separated token counts")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {list(MODES)}")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--n-steps", type=int, default=4, help="Gauss-Legendre nodes (a fixed rule)")
    parser.add_argument("--internal-batch-size", type=int, default=1, help="rows per pass")
    parser.add_argument("--repeat", type=int, default=2, help="timed calls per case; the fastest counts")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: least disturbed on a shared CPU)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per case")
    parser.add_argument("--child-spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_spec:
        print(json.dumps(child(json.loads(args.child_spec))))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = args.modes.split(",")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report: dict = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "device": str(device)},
        "model": {
            "family": args.model_family,
            "layers": args.layers,
            "heads": args.heads,
            "hidden": args.hidden,
        },
        "workload": {
            "examples": 1,
            "n_steps": args.n_steps,
            "internal_batch_size": args.internal_batch_size,
            "threads": args.threads,
        },
        "modes": {},
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for mode in modes:
        cases = []
        for n in sizes:
            spec = dict(
                device=str(device),
                family=args.model_family,
                layers=args.layers,
                heads=args.heads,
                hidden=args.hidden,
                max_tokens=max(sizes),
                n_tokens=n,
                mode=mode,
                n_steps=args.n_steps,
                internal_batch_size=args.internal_batch_size,
                repeat=args.repeat,
                threads=args.threads,
            )
            case: dict = {"n_tokens": n, "full_maps_mib": round(args.layers * args.heads * n * n * 4 / 2**20, 1)}
            try:
                out = subprocess.run(
                    [sys.executable, __file__, "--child-spec", json.dumps(spec)],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=args.timeout,
                )
                if out.returncode == 0:
                    case.update(json.loads(out.stdout.strip().splitlines()[-1]))
                else:
                    case["error"] = (out.stderr.strip().splitlines() or ["?"])[-1][:300]
            except subprocess.TimeoutExpired:
                case["error"] = f"over {args.timeout:g} s"
            cases.append(case)
            print(json.dumps({"mode": mode, **case}), file=sys.stderr, flush=True)
        report["modes"][mode] = {
            "cases": cases,
            "seconds_growth_per_doubling": growth(cases, "seconds"),
            "peak_growth_per_doubling": growth(cases, "peak_mib"),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
