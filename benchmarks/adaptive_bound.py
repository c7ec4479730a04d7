"""How fast can any per-pair Gauss-Legendre rule be at a given completeness error? Prints one JSON document.

For MiniLM-L6-H384 with its SST-2 probe head (``attribution_speed.build_model``) on the first
``n_examples`` SST-2 dev sentences, every (example, layer) pair is integrated with fixed Gauss-Legendre
rules of 1 to ``max_nodes`` nodes (our ``attribute``, fp32, with the convergence delta), and for each
tolerance the smallest node count that meets it is found per pair: an oracle that knows in advance how
many nodes each pair needs, which no adaptive rule can beat with Gauss-Legendre nodes.

Its cost is counted in layer passes per example (forward or backward through one transformer layer of
one example), the unit in which the work of both codes is made:

- Captum user code, ``N`` nodes per pair: ``N * (L + (L - l))`` per pair of layer ``l`` (a forward
  through all ``L`` layers and a backward down to layer ``l``);
- ours: ``2 (L - l)`` per node (the layers below ``l`` are cached), plus ``L - l`` for the ``F(A := 0)``
  forward that checks completeness, plus ``L`` for the clean forward.

The same count for our ``n_steps="auto"`` (its measured node counts) and for our fixed Gauss-Legendre
10 puts the model next to the measured times of ``adaptive_speed.py``. Run:
``python benchmarks/adaptive_bound.py`` (``--help``).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.attribution_speed import build_model, pad_batch, sst2_examples  # noqa: E402
from lightning_attattr.core.attribution import attribute  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "adaptive_bound.json"


def costs(nodes: torch.Tensor, n_layers: int) -> dict:
    """Layer passes per example for ours at ``nodes`` (``[example, layer]``) and for Captum at 10 nodes."""
    depth = torch.arange(n_layers, 0, -1, dtype=torch.float64)  # L - l
    ours = (2 * depth * nodes.double()).sum(1).mean() + depth.sum() + n_layers
    return {"ours_layer_passes_per_example": float(ours)}


def main(n_examples: int = 64, max_nodes: int = 16, tols: list[float] | None = None, threads: int = 2) -> None:
    """Print (and write to ``benchmarks/results/adaptive_bound.json``) the oracle bound.

    Args:
        n_examples: SST-2 dev sentences.
        max_nodes: the largest Gauss-Legendre rule tried.
        tols: relative completeness tolerances (default 1e-3 and 4.6e-4, the worst error of the Captum
            code with 10 nodes in ``adaptive_speed.json``).
        threads: ``torch.set_num_threads``.
    """
    torch.set_num_threads(threads)
    tols = tols or [1e-3, 4.6e-4]
    model, desc = build_model("minilm")
    ids, data = sst2_examples(n_examples)
    batch = pad_batch(ids)
    n_layers = len(model.bert.encoder.layer)
    errors = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n in range(1, max_nodes + 1):
            res = attribute(model, batch, method="gausslegendre", n_steps=n, return_convergence_delta=True)
            errors.append(res.require("completeness_error"))
        auto = attribute(model, batch, return_convergence_delta=True)
    errors_t = torch.stack(errors)  # [rule, example, layer]
    depth = torch.arange(n_layers, 0, -1, dtype=torch.float64)
    captum10 = float(10 * (n_layers + depth).sum())
    report: dict = {
        "model": desc,
        "data": data,
        "unit": "layer passes per example (forward or backward of one layer for one example)",
        "captum_gl10_layer_passes_per_example": captum10,
        "ours_gl10": costs(torch.full((len(ids), n_layers), 10), n_layers),
        "ours_auto": {
            **costs(auto.require("n_steps_used"), n_layers),
            "worst_completeness_error": float(auto.require("completeness_error").max()),
            "mean_nodes": float(auto.require("n_steps_used").double().mean()),
        },
        "oracle": {},
    }
    for key in ("ours_gl10", "ours_auto"):
        report[key]["model_speedup_over_captum_gl10"] = captum10 / report[key]["ours_layer_passes_per_example"]
    for tol in tols:
        met = errors_t <= tol  # [rule, example, layer]
        reached = met.any(0)
        first = torch.where(
            reached, met.double().argmax(0) + 1, torch.full_like(reached, max_nodes + 1, dtype=torch.long)
        )
        entry = costs(first, n_layers)
        entry.update(
            {
                "pairs_beyond_max_nodes": int((~reached).sum()),
                "mean_nodes": float(first.double().mean()),
                "mean_nodes_per_layer": [round(v, 3) for v in first.double().mean(0).tolist()],
                "model_speedup_over_captum_gl10": captum10 / entry["ours_layer_passes_per_example"],
            }
        )
        report["oracle"][f"{tol:g}"] = entry
    text = json.dumps(report, indent=2)
    print(text)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    from jsonargparse import auto_cli

    auto_cli(main)
