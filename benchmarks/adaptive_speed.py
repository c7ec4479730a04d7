"""Adaptive step count against fixed rules and against Captum; prints one JSON document.

Compares, in one run and on the same examples:

(a) ``ours_auto``: ``attribute(n_steps="auto", completeness_tol=1e-3)`` (the adaptive default);
(b) ``ours_gl10``: ``attribute(method="gausslegendre", n_steps=10)`` (the fixed default before "auto");
(c) ``ours_left20``: ``attribute(method="riemann_left", n_steps=20)`` (the official AttAttr rule);
(d) ``captum_gl10``: what a competent Captum user would write: ``captum.attr.IntegratedGradients`` over
    ONE layer's attention probabilities of ONE example, fed through the same attention interface
    (``attention_scope`` + ``ctrl.replacing(layer, x)``), baseline zeros, Gauss-Legendre with 10 nodes,
    ``internal_batch_size=n_steps``; one call per example and layer, target = the predicted class, output
    = the softmax probability (see :func:`lightning_attattr.core.captum_baseline.captum_layer_attribution`).

For each: examples per second (wall time over all examples and all layers; ours with
``return_convergence_delta=True``, i.e. including the ``F(A := 0)`` forwards, Captum without them) and
the relative completeness error |sum attr - (F(A) - F(A := 0))| / |F(A) - F(A := 0)| over the
(example, layer) pairs with |F(A) - F(A := 0)| >= 1e-3 (Captum's maps are checked against the
``prob``/``baseline_prob`` of the (b) run). Also the largest difference between (b) and (d), relative to
the largest |attribution| (same rule, so it should be at floating-point level).

The same Captum code also runs with 8, 9, 20 and 40 nodes (``captum_more_steps``), and
``at_equal_worst_error`` compares ``ours_auto`` with the cheapest Captum run whose worst completeness
error is at most ours: the time a Captum user needs for the same accuracy (a lower bound on the
speed-up when no Captum run gets there).

Models: (1) MiniLM-L6-H384 with a linear-probe SST-2 head on SST-2 dev sentences (see
``attribution_speed.build_model``); (2) the quickstart tiny BERT (``configs/quickstart.yaml``) on the
synthetic validation split; (3) the random BERT-base shape on SST-2 dev sentences (Captum on the first
``captum_examples_bert_base`` of them only; ours on those and on all).

Everything runs in float32 on the CPU with ``threads`` intra-op threads.

Run: ``python benchmarks/adaptive_speed.py`` (``--help`` for options). Needs ``pip install captum``
(the ``bench`` extra; it is not a runtime dependency of the package).
"""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/adaptive_speed.py` from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.attribution_speed import build_model, pad_batch, rel_stats, sst2_examples  # noqa: E402
from lightning_attattr.core.attribution import AttentionIntegratedGradients  # noqa: E402
from lightning_attattr.core.captum_baseline import captum_attribution  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "adaptive_speed.json"
TOL = 1e-3


# --------------------------------------------------------------------------- helpers
def single_inputs(ids: list[list[int]]) -> list[dict[str, torch.Tensor]]:
    return [pad_batch([row]) for row in ids]


REPEAT = [1]  # best of this many timings per variant (set by main)
CAPTUM_MORE: list[int] = []  # Captum also with these node counts (set by main), for the equal-error comparison


def timed(fn):
    best, out = float("inf"), None
    for _ in range(REPEAT[0]):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def ours(model, ids, **kwargs):
    return AttentionIntegratedGradients(model).attribute(pad_batch(ids), return_convergence_delta=True, **kwargs)


def variant_stats(seconds: float, n: int, delta, diff) -> dict:
    """Speed, relative completeness error, and the fraction of pairs meeting the "auto" criterion
    |delta| <= TOL * max(|F(A) - F(A:=0)|, 1e-3) (relative, absolute for pairs whose output barely moves)."""
    delta = torch.as_tensor(delta, dtype=torch.float64).abs()
    diff = torch.as_tensor(diff, dtype=torch.float64).abs()
    met = delta <= TOL * diff.clamp_min(1e-3)
    return {
        "examples": n,
        "seconds": seconds,
        "examples_per_second": n / seconds,
        **rel_stats(delta, diff),
        "fraction_pairs_meeting_tol_1e-3": float(met.double().mean()),
    }


def ours_stats(seconds: float, res) -> dict:
    return variant_stats(seconds, len(res), res.convergence_delta, res.prob[:, None] - res.baseline_prob)


def auto_stats(seconds: float, res) -> dict:
    out = ours_stats(seconds, res)
    steps = torch.as_tensor(res.n_steps_used).long()
    rel = torch.as_tensor(res.relative_convergence_delta()).double()
    keep = (res.prob[:, None] - res.baseline_prob).abs() >= 1e-3
    levels, counts = steps.flatten().unique(return_counts=True)
    unconverged = getattr(res, "unconverged", None)
    out.update(
        {
            "steps_used_mean": float(steps.double().mean()),
            "steps_used_max": int(steps.max()),
            "steps_used_min": int(steps.min()),
            "steps_used_histogram": {str(int(k)): int(c) for k, c in zip(levels, counts)},
            "fraction_pairs_rel_delta_le_1e-3_among_abs_diff_ge_1e-3": (
                float((rel[keep] <= TOL).double().mean()) if keep.any() else None
            ),
            "unconverged_pairs": None if unconverged is None else int(torch.as_tensor(unconverged).sum()),
        }
    )
    return out


def map_difference(ours_maps: Sequence[torch.Tensor], other_maps: Sequence[torch.Tensor]) -> dict:
    diff = max(float((a - b.to(a)).abs().max()) for a, b in zip(ours_maps, other_maps, strict=True))
    scale = max(float(a.abs().max()) for a in ours_maps)
    return {"max_abs_diff": diff, "max_abs_attr": scale, "max_abs_diff_relative_to_max_abs_attr": diff / scale}


def run_variants(model, ids: list[list[int]], skip_auto: bool, use_sdpa: bool, captum: bool = True) -> dict:
    """(a)-(d) on ``ids``; returns stats and, under ``_``, the (b) result and Captum maps (not for JSON)."""
    out: dict = {}
    if not skip_auto:
        t, res_a = timed(lambda: ours(model, ids, n_steps="auto", completeness_tol=TOL))
        out["ours_auto"] = auto_stats(t, res_a)
    t, res_b = timed(lambda: ours(model, ids, method="gausslegendre", n_steps=10))
    out["ours_gl10"] = ours_stats(t, res_b)
    t, res_c = timed(lambda: ours(model, ids, method="riemann_left", n_steps=20))
    out["ours_left20"] = ours_stats(t, res_c)
    if captum:
        singles = single_inputs(ids)
        t, (maps_d, targets_d) = timed(
            lambda: captum_attribution(
                model, singles, n_steps=10, method="gausslegendre", internal_batch_size=10, use_sdpa=use_sdpa
            )
        )
        sums = torch.stack([m.flatten(1).sum(1).double() for m in maps_d])  # [example, layer]
        diff = res_b.prob[:, None] - res_b.baseline_prob
        out["captum_gl10"] = variant_stats(t, len(ids), sums - diff, diff)
        out["captum_gl10"]["same_targets_as_ours"] = bool(torch.equal(torch.tensor(targets_d), res_b.target))
        out["captum_vs_ours_gl10_maps"] = map_difference(res_b.attributions, maps_d)
        for steps in CAPTUM_MORE:
            t, (maps, _) = timed(
                lambda steps=steps: captum_attribution(
                    model, singles, n_steps=steps, method="gausslegendre", internal_batch_size=steps, use_sdpa=use_sdpa
                )
            )
            sums = torch.stack([m.flatten(1).sum(1).double() for m in maps])
            out[f"captum_gl{steps}"] = variant_stats(t, len(ids), sums - diff, diff)
    return out


def at_equal_worst_error(stats: dict) -> dict | None:
    """``ours_auto`` against the cheapest Captum run whose worst completeness error is at most ours.

    When no Captum run reaches it, the ratio to the one with the most nodes is a lower bound
    (``captum_reached: false``).
    """
    if "ours_auto" not in stats:
        return None
    runs = {int(k[len("captum_gl") :]): v for k, v in stats.items() if k.startswith("captum_gl")}
    if not runs:
        return None
    worst = stats["ours_auto"]["rel_max"]
    reached = sorted(n for n, v in runs.items() if v["rel_max"] <= worst)
    steps = reached[0] if reached else max(runs)
    return {
        "ours_auto_worst": worst,
        "captum_steps": steps,
        "captum_worst": runs[steps]["rel_max"],
        "captum_reached": bool(reached),
        "speedup": runs[steps]["seconds"] / stats["ours_auto"]["seconds"],
        "captum_worst_by_steps": {str(n): runs[n]["rel_max"] for n in sorted(runs)},
    }


def ratios(stats: dict) -> dict:
    eps = {k: v["examples_per_second"] for k, v in stats.items() if isinstance(v, dict) and "examples_per_second" in v}
    pairs = [
        ("auto/gl10", "ours_auto", "ours_gl10"),
        ("auto/captum", "ours_auto", "captum_gl10"),
        ("gl10/captum", "ours_gl10", "captum_gl10"),
        ("left20/captum", "ours_left20", "captum_gl10"),
        ("auto/left20", "ours_auto", "ours_left20"),
    ]
    return {name: eps[a] / eps[b] for name, a, b in pairs if a in eps and b in eps}


def warm_up(model, ids, use_sdpa: bool) -> None:
    ours(model, ids[:2], method="gausslegendre", n_steps=2)
    captum_attribution(model, single_inputs(ids[:1]), layers=[0], n_steps=2, internal_batch_size=2, use_sdpa=use_sdpa)


def lengths(ids: list[list[int]]) -> dict:
    n = [len(r) for r in ids]
    return {"min": min(n), "mean": sum(n) / len(n), "max": max(n)}


# --------------------------------------------------------------------------- models
def quickstart_model(ckpt: str | None) -> tuple[torch.nn.Module, str]:
    from lightning_attattr.lightning.classifier import AttAttrClassifier

    how = f"checkpoint {ckpt}"
    if ckpt is None:
        from lightning_attattr.cli import cli_main

        tmp = tempfile.mkdtemp(prefix="adaptive_speed_quickstart_")
        start = time.perf_counter()
        cli = cli_main(
            [
                "fit",
                "--config",
                str(ROOT / "configs" / "quickstart.yaml"),
                "--trainer.enable_progress_bar=false",
                "--trainer.logger.init_args.save_dir",
                tmp,
                "--trainer.default_root_dir",
                tmp,
            ]
        )
        ckpt = cli.trainer.checkpoint_callback.last_model_path
        how = f"trained in-process by configs/quickstart.yaml in {time.perf_counter() - start:.0f} s ({ckpt})"
    model = AttAttrClassifier.load_from_checkpoint(ckpt, map_location="cpu").model.float().eval()
    cfg = model.config
    desc = (
        f"quickstart tiny BERT {cfg.num_hidden_layers}x{cfg.num_attention_heads}x{cfg.hidden_size} "
        f"(configs/quickstart.yaml), {how}"
    )
    return model, desc


def quickstart_examples(n: int) -> tuple[list[list[int]], str]:
    from lightning_attattr.data.modules import SyntheticDataModule

    dm = SyntheticDataModule(seed=0)
    texts = [ex.text for ex in dm.val_examples[:n]]
    ids = dm.tokenizer(texts)["input_ids"]
    return [list(r) for r in ids], f"SyntheticDataModule(seed=0) validation split, first {n} examples"


def bench_model(model, desc, ids, data_desc, skip_auto, use_sdpa, captum_n: int | None = None) -> dict:
    n_layers = AttentionIntegratedGradients(model).n_layers
    warm_up(model, ids, use_sdpa)
    report: dict = {
        "model": desc,
        "layers": n_layers,
        "data": data_desc,
        "lengths": lengths(ids),
    }
    if captum_n is None or captum_n >= len(ids):
        stats = run_variants(model, ids, skip_auto, use_sdpa)
        report["n_examples"] = len(ids)
        report["variants"] = stats
        report["examples_per_second_ratio"] = ratios(stats)
        report["at_equal_worst_error"] = at_equal_worst_error(stats)
        return report
    small = ids[:captum_n]
    stats_small = run_variants(model, small, skip_auto, use_sdpa)
    stats_all = run_variants(model, ids, skip_auto, use_sdpa, captum=False)
    report["n_examples"] = {"captum_and_ratios": len(small), "ours_all": len(ids)}
    report["lengths_captum_examples"] = lengths(small)
    report["variants_on_captum_examples"] = stats_small
    report["examples_per_second_ratio"] = ratios(stats_small)
    report["at_equal_worst_error"] = at_equal_worst_error(stats_small)
    report["variants_ours_on_all_examples"] = stats_all
    report["examples_per_second_ratio_ours_on_all_examples"] = ratios(stats_all)
    return report


# --------------------------------------------------------------------------- main
def main(
    n_examples: int = 64,
    bert_base_examples: int = 8,
    captum_examples_bert_base: int = 2,
    quickstart_ckpt: str | None = None,
    models: list[str] | None = None,
    skip_auto: bool = False,
    captum_use_sdpa: bool = True,
    threads: int = 2,
    repeat: int = 1,
    captum_more_steps: list[int] | None = None,
    write: bool = False,
) -> None:
    """Run the comparison and print JSON.

    Args:
        n_examples: SST-2 dev sentences for MiniLM, and synthetic validation examples for the quickstart model.
        bert_base_examples: SST-2 dev sentences for the BERT-base shape (ours).
        captum_examples_bert_base: the first this many of them also get Captum (and the ratios are taken on them).
        quickstart_ckpt: ``last.ckpt`` of a quickstart run; ``None``: train one in-process first.
        models: subset of ``minilm``, ``quickstart``, ``bert_base`` (default all three).
        skip_auto: leave out variant (a) (``n_steps="auto"``).
        captum_use_sdpa: Captum's passes let the layers that are not replaced use the fused SDPA kernel, as
            ours do (the controller's public ``use_sdpa``); ``false``: eager attention there.
        threads: ``torch.set_num_threads``.
        repeat: time every variant this many times and keep the fastest (results are identical across repeats).
        captum_more_steps: Captum also with these Gauss-Legendre node counts (default 8, 9, 20 and 40), for
            ``at_equal_worst_error``: the cheapest Captum run at most as far from completeness as ours.
        write: also write the JSON to ``benchmarks/results/adaptive_speed.json``.
    """
    import captum

    torch.set_num_threads(threads)
    REPEAT[0] = repeat
    CAPTUM_MORE[:] = [8, 9, 20, 40] if captum_more_steps is None else captum_more_steps
    torch.manual_seed(0)
    chosen = models or ["minilm", "quickstart", "bert_base"]
    unknown = sorted(set(chosen) - {"minilm", "quickstart", "bert_base"})
    if unknown:
        raise ValueError(f"Unknown models {unknown}; expected minilm, quickstart, bert_base.")
    report: dict = {
        "machine": {
            "device": "cpu",
            "dtype": "float32",
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "captum": captum.__version__,
            "threads": torch.get_num_threads(),
        },
        "timing": f"best of {repeat} wall-clock run(s) per variant, after a warm-up",
        "settings": {
            "auto": None if skip_auto else {"n_steps": "auto", "completeness_tol": TOL},
            "gl10": {"method": "gausslegendre", "n_steps": 10},
            "left20": {"method": "riemann_left", "n_steps": 20},
            "captum": {
                "class": "captum.attr.IntegratedGradients",
                "method": "gausslegendre",
                "n_steps": 10,
                "internal_batch_size": 10,
                "baseline": "zeros",
                "calls": "one per example and layer",
                "use_sdpa_in_other_layers": captum_use_sdpa,
                "convergence_delta": "not requested (its F(A) and F(0) forwards are not timed)",
            },
            "ours": "one attribute() call over all examples and layers, return_convergence_delta=True (timed)",
            "completeness": "relative |delta| / |F(A) - F(A:=0)| over pairs with |F(A) - F(A:=0)| >= 1e-3; "
            "fraction_pairs_meeting_tol_1e-3: |delta| <= 1e-3 * max(|F(A) - F(A:=0)|, 1e-3) over all pairs",
        },
    }
    with contextlib.redirect_stdout(sys.stderr):  # Lightning's and transformers' chatter: stdout is the JSON alone
        if "minilm" in chosen:
            model, desc = build_model("minilm")
            ids, data = sst2_examples(n_examples)
            report["minilm"] = bench_model(model, desc, ids, data, skip_auto, captum_use_sdpa)
        if "quickstart" in chosen:
            model, desc = quickstart_model(quickstart_ckpt)
            torch.set_num_threads(threads)  # in case training changed it
            ids, data = quickstart_examples(n_examples)
            report["quickstart"] = bench_model(model, desc, ids, data, skip_auto, captum_use_sdpa)
        if "bert_base" in chosen:
            model, desc = build_model("bert_base")
            ids, data = sst2_examples(bert_base_examples)
            report["bert_base"] = bench_model(
                model, desc, ids, data, skip_auto, captum_use_sdpa, captum_n=captum_examples_bert_base
            )
    text = json.dumps(report, indent=2)
    print(text)
    if write:
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(text + "\n")


if __name__ == "__main__":
    from jsonargparse import auto_cli

    with contextlib.suppress(BrokenPipeError):
        auto_cli(main)
