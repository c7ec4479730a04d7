"""Error and speed of bf16 autocast against fp32 attributions; prints one JSON document.

On the pretrained MiniLM with an SST-2 linear-probe head (see attribution_speed.py), for SST-2 dev
sentences at the default rule: relative L2 error and cosine similarity of each example's maps,
the Spearman correlation of max-pooled head scores (the AttAttr head-importance statistic), the
completeness error of both, and the speed ratio measured in the same run.
"""

from __future__ import annotations

import json
import time

import torch
from scipy.stats import spearmanr

from benchmarks.attribution_speed import build_model, pad_batch, result_stats, sst2_examples
from lightning_attattr.core.attribution import AttentionIntegratedGradients


def main(n_examples: int = 32) -> None:
    """Compare bf16 autocast with fp32.

    Args:
        n_examples: SST-2 dev sentences.
    """
    model, desc = build_model("minilm")
    ids, data = sst2_examples(n_examples)
    ig = AttentionIntegratedGradients(model)
    batch = pad_batch(ids)
    rule = {"method": "gausslegendre", "n_steps": 10}  # the fixed rule the README's bf16 figures used
    ig.attribute(pad_batch(ids[:2]), autocast_dtype=torch.bfloat16, **rule)  # warm-up
    start = time.perf_counter()
    fp32 = ig.attribute(batch, return_convergence_delta=True, **rule)
    t32 = time.perf_counter() - start
    start = time.perf_counter()
    bf16 = ig.attribute(batch, return_convergence_delta=True, autocast_dtype=torch.bfloat16, **rule)
    t16 = time.perf_counter() - start
    rel, cos = [], []
    for a, b in zip(fp32.attributions, bf16.attributions):
        rel.append(float((a - b).norm() / a.norm()))
        cos.append(float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)))
    # head importance: mean over examples of the max over (query, key) -> [layer, head]
    imp32 = torch.stack([a.amax(dim=(-1, -2)) for a in fp32.attributions]).mean(0).flatten()
    imp16 = torch.stack([a.amax(dim=(-1, -2)) for a in bf16.attributions]).mean(0).flatten()
    report = {
        "model": desc,
        "data": data,
        "setting": f"{fp32.method}/{fp32.n_steps}",
        "relative_l2_error": {"mean": sum(rel) / len(rel), "max": max(rel)},
        "cosine_similarity": {"mean": sum(cos) / len(cos), "min": min(cos)},
        "head_importance_spearman": float(spearmanr(imp32, imp16).statistic),
        "head_importance_top10_overlap": len(
            set(imp32.topk(10).indices.tolist()) & set(imp16.topk(10).indices.tolist())
        ),  # noqa: E501
        "same_predicted_target": bool(torch.equal(fp32.target, bf16.target)),
        "completeness_fp32": result_stats(fp32),
        "completeness_bf16": result_stats(bf16),
        "speedup_bf16_over_fp32": t32 / t16,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main)
