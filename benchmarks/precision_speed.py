"""Speed and completeness of `attribute(..., precision=...)`; prints one JSON document (one run).

Settings: fp32 gausslegendre/10, fp32 n_steps="auto", tf32 gausslegendre/10, bf16 gausslegendre/10,
bf16 n_steps="auto", precision="auto" (n_steps="auto"). For each: examples/s, the completeness error
(mean / worst over (example, layer) pairs, relative, as `result.completeness_error`), unconverged
pairs, integrand nodes per pair and how many pairs finished in each precision.

Model: a random BERT (no download), its classifier weights scaled by 30 so that attention changes
move the output probability. On CUDA the BERT-base shape (hidden 768, 12 layers, 12 heads,
intermediate 3072) at 128 tokens; on the CPU a small one (hidden 256, 4 layers, 4 heads,
intermediate 1024) at 64 tokens, by default. TF32 does not exist on the CPU: there "tf32" runs
(and is reported as) fp32.

Measured on the 2-core development CPU (AMX-bf16, torch 2.13, 8 examples x 64 tokens, best of 3):
fp32 gl10 8.4 examples/s (completeness 9.4e-6 mean / 4.0e-5 worst); fp32 auto 2.85x (3 nodes suffice
on this model); tf32 gl10 1.0x (fp32 on the CPU, identical results); bf16 gl10 2.1x (4.2e-3 /
9.5e-3); bf16 auto 2.2x (26 of 32 pairs stop unconverged at 7 or 15 nodes, not 63); precision auto
1.4x over fp32 gl10 but 0.5x of fp32 auto (26 of 32 pairs escalated to fp32; every pair within
1e-3). On the CPU bf16 pays only where fp32 needs many nodes; at tolerance 1e-3 it mostly does not.
"""

from __future__ import annotations

import json
import platform
import time
import warnings

import torch
import transformers

from lightning_attattr.core.attribution import AttentionIntegratedGradients
from lightning_attattr.core.precision import PRECISION_NAMES

SETTINGS = {
    "fp32 gl10": dict(n_steps=10, precision="fp32"),
    "fp32 auto": dict(n_steps="auto", precision="fp32"),
    "tf32 gl10": dict(n_steps=10, precision="tf32"),
    "bf16 gl10": dict(n_steps=10, precision="bf16"),
    "bf16 auto": dict(n_steps="auto", precision="bf16"),
    "precision auto": dict(n_steps="auto", precision="auto"),
}


def build(device: str, large: bool, seed: int = 0) -> tuple[torch.nn.Module, dict]:
    shape = (
        dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
        if large
        else dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
    )
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=1000, num_labels=2, max_position_embeddings=512, **shape)
    model = transformers.BertForSequenceClassification(cfg)
    with torch.no_grad():
        model.classifier.weight.mul_(30.0)
    return model.to(device).eval(), {"type": "random BERT, classifier x30, seed 0", **shape}


def stats(result, seconds: float) -> dict:
    err = result.completeness_error
    codes = result.precision_used
    finished = (
        {"fp32": err.numel()}
        if codes is None
        else {PRECISION_NAMES[c]: int((codes == c).sum()) for c in codes.unique().tolist()}
    )
    return {
        "seconds": seconds,
        "examples_per_s": len(result) / seconds,
        "completeness_mean": float(err.mean()),
        "completeness_worst": float(err.max()),
        "unconverged": 0 if result.unconverged is None else int(result.unconverged.sum()),
        "nodes_per_pair_mean": float(result.n_steps_used.double().mean()),
        "pairs_finished_in": finished,
    }


def main(n_examples: int | None = None, tokens: int | None = None, device: str | None = None, repeats: int = 2) -> None:
    """Run every setting on one batch; each setting's time is the best of ``repeats`` interleaved rounds.

    Args:
        n_examples: examples in the batch (default 64 on CUDA, 8 on the CPU).
        tokens: tokens per example (default 128 on CUDA, 64 on the CPU).
        device: "cuda" or "cpu" (default: CUDA when available).
        repeats: rounds over all settings (the CPUs of a shared machine are noisy: best of them).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    large = device == "cuda"
    n_examples = n_examples or (64 if large else 8)
    tokens = tokens or (128 if large else 64)
    model, desc = build(device, large)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 1000, (n_examples, tokens), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    ig = AttentionIntegratedGradients(model)
    warm = {"input_ids": ids[:2], "attention_mask": batch["attention_mask"][:2]}
    for kwargs in SETTINGS.values():  # warm-up: kernels, autocast caches
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ig.attribute(warm, method="gausslegendre", return_convergence_delta=True, **kwargs)
    report: dict = {
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({platform.processor() or 'cpu'})",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": desc,
        "examples": n_examples,
        "tokens": tokens,
        "completeness_tol": 1e-3,
        "repeats": repeats,
        "settings": {},
    }
    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for _ in range(repeats):
        for name, kwargs in SETTINGS.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = ig.attribute(batch, method="gausslegendre", return_convergence_delta=True, **kwargs)
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
            report["settings"][name] = {**stats(result, min(times[name])), "all_seconds": times[name]}
    base = report["settings"]["fp32 gl10"]["examples_per_s"]
    for entry in report["settings"].values():
        entry["speed_vs_fp32_gl10"] = entry["examples_per_s"] / base
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main)
