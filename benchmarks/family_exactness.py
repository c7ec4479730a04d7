"""Exactness of ``attribute`` on every supported family: prints one JSON document and writes it to
``benchmarks/results/family_exactness.json``.

For each family and head (the tiny random float64 configurations of ``tests/core/test_families.py``,
on the two-example padded batch of ``tests/core/test_family_attribution.py``) and each attention layer:

- ``max_rel_diff``: the largest entry of |ours - reference| over the largest |reference| entry, worst of
  the two examples, with the same fixed rule (Gauss-Legendre, ``N_STEPS`` nodes) on both sides; the
  reference (:mod:`lightning_attattr.core.reference`) runs one example, one layer and one step at a time;
- ``completeness_error``: the relative completeness error of ``n_steps="auto"`` (tolerance 1e-3), worst
  example, with ``n_steps_used`` its nodes;
- ``seconds``: wall time of our fixed-rule call, of the reference, and of our adaptive call (one run each,
  one thread).

Families with a norm right after attention (Gemma 2/3) integrate from uniform attention. Two families
have integrands that are not smooth in the path parameter, where completeness converges slowly (T5's
ReLU feed-forward: kinks) or not at all (gpt-oss's top-k expert routing: jumps); they are also measured
in a smooth variant (T5 with gated GELU, gpt-oss routing to all experts), marked ``"smooth"``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from lightning_attattr.core import reference
from lightning_attattr.core.adapter import attention_layers
from lightning_attattr.core.attribution import attribute
from tests.core.test_families import FAMILIES
from tests.core.test_family_attribution import SMOOTH, UNIFORM, _batch, _model, _scalar

N_STEPS = 8
RESULT = Path(__file__).parent / "results" / "family_exactness.json"


def measure(family: str, smooth: bool = False) -> dict:
    """The exactness row of one family (``smooth``: its smooth variant)."""
    model = _model(family, smooth=smooth)
    batch = _batch(model)
    baseline = "uniform" if family.split("-")[0] in UNIFORM else "zero"
    start = time.perf_counter()
    ours = attribute(model, batch, method="gausslegendre", n_steps=N_STEPS, baseline=baseline)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    ref = reference.reference_attattr(
        model, batch, _scalar(model, ours.target), method="gausslegendre", n_steps=N_STEPS, baseline=baseline
    )
    t_ref = time.perf_counter() - start
    start = time.perf_counter()
    auto = attribute(model, batch, n_steps="auto", baseline=baseline, return_convergence_delta=True)
    t_auto = time.perf_counter() - start
    diff = torch.stack(  # [example, layer]
        [(a - r).abs().flatten(1).amax(1) / r.abs().flatten(1).amax(1) for a, r in zip(ours, ref.attributions)]
    )
    return {
        "model": type(model).__name__,
        "config": SMOOTH[family] if smooth else "as in tests/core/test_families.py",
        "dtype": str(next(model.parameters()).dtype),
        "baseline": baseline,
        "layers": attention_layers(model),
        "max_rel_diff": [float(f"{v:.3g}") for v in diff.amax(0).tolist()],
        "prob_abs_diff": float(f"{(ours.prob - ref.prob).abs().max():.3g}"),
        "completeness_error": [float(f"{v:.3g}") for v in auto.require("completeness_error").amax(0).tolist()],
        "n_steps_used": auto.require("n_steps_used").amax(0).tolist(),
        "unconverged_pairs": int(auto.unconverged.sum()) if auto.unconverged is not None else 0,
        "seconds": {"ours_fixed": round(t_ours, 3), "reference": round(t_ref, 3), "ours_auto": round(t_auto, 3)},
    }


def main() -> None:
    """Measure every family, print the JSON document and write it to ``RESULT``."""
    import warnings

    torch.set_num_threads(1)
    rows = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unconverged pairs are counted in the rows
        for family in FAMILIES:
            rows[family] = measure(family)
            if family in SMOOTH:
                rows[f"{family} smooth"] = measure(family, smooth=True)
    report = {
        "what": "max relative difference to the slow reference per layer (same Gauss-Legendre rule), completeness "
        "error of n_steps='auto' (tol 1e-3), seconds; tiny random float64 models, 2 padded examples",
        "n_steps_fixed": N_STEPS,
        "torch": torch.__version__,
        "families": rows,
    }
    text = json.dumps(report, indent=2)
    print(text)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(text + "\n")


if __name__ == "__main__":
    main()
