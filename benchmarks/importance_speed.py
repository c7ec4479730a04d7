"""Time per example of the head-importance pass (``analyze.py heads``' AttAttr stage); prints JSON.

Same fine-tuned model and the same first ``--n`` dev examples (gold labels, as the official
protocol), one run, three variants:

- ``official_style``: the project's slow reference implementation of the official algorithm
  (``core/reference.py``: one example at a time, padded to 128, left Riemann m = 20, the 20 steps
  of a layer in one pass; it matches the official code's output, which is itself about 15 % slower);
- ``ours_left20``: ``attribute(method="riemann_left", n_steps=20)`` in batches of ``--batch_size``
  (the official numbers, computed fast);
- ``ours_auto``: the default adaptive rule (``n_steps="auto"``, completeness 1e-3), as ``analyze.py
  heads`` runs it.

It also reports the largest difference between the official-style and ``ours_left20`` head
importance (max-pooled, mean over examples), relative to the largest importance.

    python benchmarks/importance_speed.py --model runs/minilm/sst2/best_model --task sst2
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_attattr.core.attribution import AttentionIntegratedGradients  # noqa: E402
from lightning_attattr.core.importance import attribution_head_scores  # noqa: E402
from lightning_attattr.core.reference import reference_attattr  # noqa: E402
from lightning_attattr.data.glue import read_glue_split  # noqa: E402


def pad(ids: list[list[int]], types: list[list[int]]) -> dict[str, torch.Tensor]:
    length = max(map(len, ids))
    out = torch.zeros(len(ids), length, dtype=torch.long)
    mask, tt = torch.zeros_like(out), torch.zeros_like(out)
    for i, (row, trow) in enumerate(zip(ids, types)):
        out[i, : len(row)], mask[i, : len(row)], tt[i, : len(row)] = torch.tensor(row), 1, torch.tensor(trow)
    return {"input_ids": out, "attention_mask": mask, "token_type_ids": tt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "runs" / "minilm" / "sst2" / "best_model"))
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    split = read_glue_split(args.data_dir, args.task, "validation")
    texts = [split.text_a[: args.n]] + ([split.text_b[: args.n]] if split.text_b is not None else [])
    enc = tok(*texts, truncation=True, max_length=128)
    ids, types = enc["input_ids"], enc.get("token_type_ids", [[0] * len(r) for r in enc["input_ids"]])
    labels = torch.tensor(split.labels[: args.n])
    ig = AttentionIntegratedGradients(model)

    def ours(**kw):
        scores = []
        for s in range(0, args.n, args.batch_size):
            batch = pad(ids[s : s + args.batch_size], types[s : s + args.batch_size])
            batch["labels"] = labels[s : s + args.batch_size]
            scores.append(attribution_head_scores(ig.attribute(batch, target="labels", **kw), "max"))
        return torch.cat(scores).double().mean(0)

    def official():
        scores = []
        for i in range(args.n):
            batch = pad([ids[i]], [types[i]])
            res = reference_attattr(
                model, batch, labels[i : i + 1], method="riemann_left", n_steps=20, pad_to=128, steps_per_pass=20
            )
            scores.append(attribution_head_scores(res.attributions, "max"))
        return torch.cat(scores).double().mean(0)

    ours(n_steps=3)  # warm-up
    out = {}
    importance = {}
    for name, fn in (
        ("official_style", official),
        ("ours_left20", lambda: ours(method="riemann_left", n_steps=20)),
        ("ours_auto", lambda: ours()),
    ):
        start = time.perf_counter()
        importance[name] = fn()
        seconds = time.perf_counter() - start
        out[name] = {"seconds": round(seconds, 2), "seconds_per_example": round(seconds / args.n, 4)}
    base = out["official_style"]["seconds"]
    for name in out:
        out[name]["speedup_vs_official_style"] = round(base / out[name]["seconds"], 2)
    scale = float(importance["official_style"].abs().max())
    result = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
        "model": args.model,
        "task": args.task,
        "examples": f"first {args.n} dev examples, gold labels",
        "lengths": {"mean": sum(map(len, ids)) / len(ids), "max": max(map(len, ids))},
        "variants": out,
        "max_rel_diff_official_vs_ours_left20": float(
            (importance["official_style"] - importance["ours_left20"]).abs().max() / scale
        ),
        "spearman_official_vs_auto": _spearman(importance["official_style"], importance["ours_auto"]),
    }
    print(json.dumps(result, indent=2))


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from lightning_attattr.analysis.universality import spearman

    return spearman(a, b)


if __name__ == "__main__":
    main()
