"""Behaviour-equality check for refactors: do the quickstart and the README commands give the same results folders?

Runs a fixed, fast set of real commands (``train.py fit`` of the quickstart and of a tiny SST-2 model,
then every ``analyze.py`` subcommand on their checkpoints, ``universality`` over two ``heads`` folders
and ``report``) against a checkout, collects the values of every results folder into one
``values.json``, and compares two such files.

Use it before and after a refactor::

    # before: a worktree of the commit the refactor starts from
    git worktree add /work/baseline ef6f913
    .venv/bin/python benchmarks/behaviour_equal.py --checkout /work/baseline --out /work/behaviour/before
    # after: the refactored checkout, then the comparison (exit status 1 on any difference)
    .venv/bin/python benchmarks/behaviour_equal.py --checkout /work/main --out /work/behaviour/after
    .venv/bin/python benchmarks/behaviour_equal.py --compare /work/behaviour/before/values.json \
        /work/behaviour/after/values.json
    # or both in one go: --compare_to /work/behaviour/before/values.json

How the commands run: with the interpreter ``--python`` (default: ``.venv/bin/python`` of the checkout
holding this script, else ``/work/main/.venv/bin/python``; an editable install of the project may be in
it), ``PYTHONPATH=CHECKOUT`` and the checkout as working directory, so the checkout's
``lightning_attattr`` wins over the installed one (checked: the run records and verifies
``lightning_attattr.__file__``). Every path they write is under ``--out``. For repeatable numbers the
environment is fixed: one thread (``OMP_NUM_THREADS=MKL_NUM_THREADS=1``: the tiny models gain nothing
from a second one, and on the shared 2 cores two threads made the quickstart 6x slower), no GPU
(``CUDA_VISIBLE_DEVICES=``), offline hubs, ``PYTHONHASHSEED=0``, ``ATTATTR_LIGHTNING`` unset (the
default Lightning package).

The commands (README "Set-up", "Analysis" and the Makefile's ``quickstart`` and ``analyze``, made small):

- ``train.py fit --config configs/quickstart.yaml`` as ``make quickstart`` runs it (all its callbacks, 10
  epochs: the model learns the task in epoch 6, so the analyses see a trained model; ``--quickstart_epochs``
  changes it), logger and root dir under ``OUT/runs``;
- ``train.py fit --config configs/sst2.yaml`` (3 epochs) on a from-scratch 2-layer BERT
  (``--model.model_config``, ``--model.model_name_or_path`` = a WordPiece tokenizer built here from the
  SST-2 words) and the first 2000/128 train/dev rows of the GLUE SST-2 files of ``--glue_dir``, copied to
  ``OUT/fixtures/glue`` (``attack`` needs raw training texts, which the synthetic task lacks);
- on the quickstart checkpoint: ``attribute`` (the Makefile's command: indices 0-2, ``--plots false
  --report true``; and raw texts with a fixed rule and chosen layers), ``heads`` (the Makefile's command
  with small counts, all methods, ``--structural true``), a second small ``heads`` with
  ``--transfer_from``, ``effectiveness``, ``tree`` (``--mode tree``) and ``tree --mode graph --root
  official``, ``faithfulness`` (and once more with ``--truth``, a file written into the fixtures);
- on the SST-2 checkpoint: ``attack``, ``faithfulness`` (the ``words`` convention on real wordpieces)
  and ``tree --words true``;
- ``attack`` on RTE (a pair task; its first 200/48 rows) with a random tiny BERT and no checkpoint, as
  ``tests/test_analyze.py`` runs it;
- ``universality`` over the two ``heads`` folders and ``report`` over all results folders.

What ``values.json`` holds (``values``; compared) and leaves out (``meta``; shown, never compared):

- every ``*.json`` of every results folder (``summary.json`` and ``manifest.json`` included), every
  ``*.csv`` (cells that parse as numbers become numbers), every ``*.pt`` (tensors: full values when at
  most 4096 elements, else shape, dtype, sha256, sum and largest magnitude), the data embedded in every
  ``report.html`` and the list of files of each folder; ``parts/`` (the resumable intermediate layout),
  ``tensorboard/``, ``progress.log``, ``.lock``, plots (PNG/SVG) and the other renderings (``.md``,
  ``.txt``, ``.dot``, ``.graphml``) of the same numbers are not collected;
- of the training runs: ``config.yaml``, the checkpoint files' names, ``last.ckpt`` (all its entries;
  tensors of more than 64 elements as digests as above), the AttributionMonitor's ``attributions/*.pt``
  and every scalar the run logged to TensorBoard (step and value; no wall times);
- the exit status of every command, and the sha256 of the fixtures (tokenizer, GLUE rows, truth file).

Dropped as volatile (the reasons, in ``VOLATILE_KEYS`` below): wall-clock times, durations and latencies
(``started``, ``seconds``, ``timings``, ``seconds_per_example``, ``latency*``), the environment
(``versions``, ``commit``, ``cwd``), the argv (``command``: absolute paths; the options themselves are in
``config``), the checkpoint's ``mtime_ns`` and ``size`` in ``manifest.json`` (its size changes with the
length of the ``--out`` path stored inside it). Absolute paths inside values are rewritten:
``--out`` becomes ``$OUT``, the checkout ``$CHECKOUT``.

``--compare A B`` flattens both ``values`` to ``path -> leaf`` and reports keys only in A, only in B,
leaves that differ exactly, and those that differ beyond a relative tolerance of ``--rel_tol`` (1e-6;
absolute floor 1e-12). Exit status 1 when anything differs exactly (``--tolerant`` : only beyond the
tolerance). Prints one JSON document.

Measured on the shared 2-core machine (baseline ef6f913): 2.5 min per run alone (the quickstart's 10
epochs about 50 s, every other command 5-9 s, mostly start-up), 4.5 min with another run beside it. Two
runs gave the same values exactly (121,454 leaves; nothing had to be dropped for nondeterminism beyond
the timings above). A planted change (``round`` for ``floor`` in the number of heads to prune) showed as
21 differing leaves (the pruning callback's curves, ``heads``' pruning files, the report).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
FORMAT = 1
MARKER = ".behaviour_equal"  # marks an --out folder this script made (only such a folder is ever emptied)

#: keys dropped wherever they occur (a dict key equal to one of these, at any depth): the reason
VOLATILE_KEYS = {
    "started": "wall-clock date of the run",
    "finished": "wall-clock date of the run",
    "seconds": "duration",
    "timings": "durations per stage",
    "seconds_per_example": "duration (faithfulness: cost per example of each method)",
    "cwd": "the working directory (the checkout's absolute path)",
    "command": "argv with absolute paths; the options are kept in `config`",
    "versions": "package versions (kept in meta, not compared)",
    "commit": "install metadata of the package, not a result",
    "mtime_ns": "file modification time (manifest.json: the checkpoint's)",
}
#: keys dropped when their name matches (timing-like names anywhere)
VOLATILE_PATTERN = re.compile(r"(^|_)(latency|latencies|elapsed|wall|duration|per_second)($|_)|_seconds$|_ms$|_s$")
#: options whose names match the pattern but are no measurements: kept
NOT_VOLATILE = {"latency_batches", "latency_repeats"}
#: ``(parent key, key)`` pairs dropped: the reason
VOLATILE_NESTED = {
    ("ckpt_path", "size"): "checkpoint size: it embeds absolute paths under --out, so it changes with --out",
}
TENSOR_FULL_LIMIT = 4096  # results: tensors up to this many elements are stored in full, larger ones as digests
CHECKPOINT_FULL_LIMIT = 64  # checkpoints (weights, optimizer state): digests from this size on

QUICKSTART_TEXT = "w1 a1 w2 w3 b0 w4"
#: first rows of the GLUE files copied into the fixtures: (task folder, split, rows)
GLUE_ROWS = (("SST-2", "train", 2000), ("SST-2", "dev", 128), ("RTE", "train", 200), ("RTE", "dev", 48))
#: ``--truth`` lines for the quickstart's dev examples 0-2 (any valid pairs: only the behaviour is compared)
TRUTH = (
    {"index": 2, "pairs": [[3, 1]], "unit": "token", "layer": 0},
    {"index": 0, "pairs": [[1, 4], [2, 5]], "unit": "word"},
    {"index": 1, "pairs": [[5, 2]], "unit": "word", "layer": 2},
)
SST2_TEXT = "the rides are unbelievably fun"


# ----------------------------------------------------------------------------- environment
def default_python() -> str:
    own = HERE.parents[1] / ".venv" / "bin" / "python"
    return str(own if own.exists() else Path("/work/main/.venv/bin/python"))


def ensure_torch(python: str) -> None:
    """Collecting needs torch, yaml and tensorboard: re-run this script under ``python`` when they are missing."""
    try:
        import tensorboard  # noqa: F401
        import torch  # noqa: F401
        import yaml  # noqa: F401
    except ImportError:
        if Path(sys.executable).resolve() == Path(python).resolve():
            raise
        os.execv(python, [python, str(HERE), *sys.argv[1:]])


def run_env(checkout: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTATTR_", "PYTHON", "CUDA_", "HIP_"))}
    env.update(
        PYTHONPATH=str(checkout),
        PYTHONHASHSEED="0",
        PYTHONDONTWRITEBYTECODE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        WANDB_MODE="disabled",
        MPLBACKEND="Agg",
        COLUMNS="120",
    )
    return env


# ----------------------------------------------------------------------------- fixtures (independent of the checkout)
def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_fixtures(out: Path, glue_dir: Path) -> dict[str, Any]:
    """The first rows of GLUE SST-2 and RTE, a WordPiece tokenizer of the SST-2 words and a ``--truth`` file."""
    from transformers import BertTokenizer

    root = out / "fixtures"
    source = {}
    for task, split, rows in GLUE_ROWS:
        src = glue_dir / task / f"{split}.tsv"
        source[str(src)] = sha256_file(src)
        with src.open("rb") as f:
            lines = [f.readline() for _ in range(rows + 1)]  # header + rows, bytes as in the file
        (root / "glue" / task).mkdir(parents=True, exist_ok=True)
        (root / "glue" / task / f"{split}.tsv").write_bytes(b"".join(lines))
    (root / "truth.jsonl").write_text("".join(json.dumps(line) + "\n" for line in TRUTH), encoding="utf-8")
    counts: Counter[str] = Counter()
    chars: set[str] = set()
    for line in (root / "glue" / "SST-2" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        text = line.split("\t")[0].lower()
        counts.update(re.findall(r"\w+|[^\w\s]", text))
        chars.update(c for c in text if not c.isspace())
    words = [w for w, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])) if n >= 3][:1500]
    pieces = sorted(chars)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [t for t in [*words, *pieces, *(f"##{c}" for c in pieces)] if t not in vocab]
    vocab = list(dict.fromkeys(vocab))
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(vocab=str(root / "vocab.txt")).save_pretrained(str(root / "tokenizer"))
    files = {
        str(p.relative_to(out)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file() and p.suffix != ".tmp"
    }
    return {"vocab_size": len(vocab), "files": files, "source": source}


# ----------------------------------------------------------------------------- the commands
def tiny_sst2_config(vocab_size: int) -> str:
    return json.dumps(
        {
            "model_type": "bert",
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "max_position_embeddings": 64,
        }
    )


def commands(out: Path, vocab_size: int, quickstart_epochs: int) -> list[dict[str, Any]]:
    """The fixed command list: ``name``, ``argv`` (after the interpreter), ``needs`` (names), ``results`` dir."""
    runs = out / "runs"
    res = out / "results"
    qs = runs / "quickstart" / "version_0"
    sst = runs / "sst2" / "version_0"
    no_bar = ["--trainer.enable_progress_bar", "false"]
    q = ["--config", str(qs / "config.yaml"), "--ckpt_path", str(qs / "checkpoints" / "last.ckpt"), *no_bar]
    s = ["--config", str(sst / "config.yaml"), "--ckpt_path", str(sst / "checkpoints" / "last.ckpt"), *no_bar]
    logger = ["--trainer.logger.init_args.save_dir", str(runs), "--trainer.default_root_dir", str(runs)]
    steps = [
        {
            "name": "train-quickstart",
            "argv": ["train.py", "fit", "--config", "configs/quickstart.yaml", "--trainer.max_epochs"]
            + [str(quickstart_epochs), *logger, *no_bar],
            "needs": [],
            "run_dir": qs,
        },
        {
            "name": "train-sst2-tiny",
            "argv": [
                "train.py",
                "fit",
                "--config",
                "configs/sst2.yaml",
                "--model.model_name_or_path",  # with model_config: built from the config, the tokenizer from here
                str(out / "fixtures" / "tokenizer"),
                "--model.model_config",
                tiny_sst2_config(vocab_size),
                "--model.learning_rate",
                "2e-3",
                "--data.data_dir",
                str(out / "fixtures" / "glue"),
                "--data.max_seq_length",
                "48",
                "--trainer.max_epochs",
                "3",
                *logger,
                *no_bar,
            ],
            "needs": [],
            "run_dir": sst,
        },
        {  # Makefile `quickstart`, second command
            "name": "quickstart-attribute",
            "argv": ["analyze.py", "attribute", *q, "--indices", "[0, 1, 2]", "--plots", "false", "--report", "true"]
            + ["--overwrite", "true"],
            "needs": ["train-quickstart"],
        },
        {
            "name": "quickstart-attribute-text",
            "argv": ["analyze.py", "attribute", *q, "--text", json.dumps([QUICKSTART_TEXT, "a0 w5 b1"]), "--plots"]
            + ["false", "--n_steps", "20", "--method", "riemann_left", "--layers", "[0, 2]"],
            "needs": ["train-quickstart"],
        },
        {  # Makefile `analyze`, with small counts; of 12 heads 0.1 and 0.3 prune 1.2 and 3.6: floor, not round
            "name": "quickstart-heads",
            "argv": ["analyze.py", "heads", *q, "--overwrite", "true", "--n_examples", "32", "--max_eval_examples"]
            + ["128", "--fractions", "[0, 0.1, 0.3, 0.5, 0.7, 1]", "--random_seeds", "[0, 1]", "--structural", "true"]
            + ["--latency_batches", "1", "--latency_repeats", "1"],
            "needs": ["train-quickstart"],
        },
        {
            "name": "quickstart-heads-small",
            "argv": ["analyze.py", "heads", *q, "--n_examples", "8", "--methods", "[attattr, taylor]", "--fractions"]
            + ["[0, 0.5, 1]", "--max_eval_examples", "64", "--n_steps", "4", "--method", "riemann_left"]
            + ["--transfer_from", json.dumps([str(res / "quickstart-heads")])],
            "needs": ["quickstart-heads"],
        },
        {
            "name": "quickstart-effectiveness",
            "argv": ["analyze.py", "effectiveness", *q, "--n_examples", "16"],
            "needs": ["train-quickstart"],
        },
        {
            "name": "quickstart-tree",
            "argv": ["analyze.py", "tree", *q, "--index", "[0, 3]", "--text", json.dumps([QUICKSTART_TEXT])],
            "needs": ["train-quickstart"],
        },
        {
            "name": "quickstart-graph",
            "argv": ["analyze.py", "tree", *q, "--mode", "graph", "--tau", "0.2", "--root", "official", "--index"]
            + ["[0, 3]", "--text", json.dumps([QUICKSTART_TEXT])],
            "needs": ["train-quickstart"],
        },
        {
            "name": "quickstart-faithfulness",
            "argv": ["analyze.py", "faithfulness", *q, "--n_examples", "16", "--ks", "[1, 2, 4, 8]", "--n_random"]
            + ["2"],
            "needs": ["train-quickstart"],
        },
        {
            "name": "quickstart-faithfulness-truth",
            "argv": ["analyze.py", "faithfulness", *q, "--truth", str(out / "fixtures" / "truth.jsonl"), "--n_examples"]
            + ["3", "--ks", "[1, 4]", "--n_random", "1", "--n_steps", "6", "--method", "riemann_left"],
            "needs": ["train-quickstart"],
        },
        {
            "name": "sst2-faithfulness",
            "argv": ["analyze.py", "faithfulness", *s, "--n_examples", "16", "--ks", "[1, 2, 4]", "--n_random", "2"],
            "needs": ["train-sst2-tiny"],
        },
        {
            "name": "sst2-attack",
            "argv": ["analyze.py", "attack", *s, "--n_source", "64", "--n_eval", "64", "--min_tokens", "0"]
            + ["--threshold", "0", "--n_random", "2"],
            "needs": ["train-sst2-tiny"],
        },
        {
            "name": "sst2-tree-words",
            "argv": ["analyze.py", "tree", *s, "--words", "true", "--index", "[0, 1]", "--text"]
            + [json.dumps([SST2_TEXT])],
            "needs": ["train-sst2-tiny"],
        },
        {  # a pair task, on a random tiny BERT as in tests/test_analyze.py (no checkpoint)
            "name": "rte-attack-random-model",
            "argv": ["analyze.py", "attack", "--seed_everything", "0", "--model.model_config"]
            + [tiny_sst2_config(vocab_size), "--data", "GlueDataModule", "--data.task_name", "rte", "--data.data_dir"]
            + [str(out / "fixtures" / "glue"), "--data.model_name_or_path", str(out / "fixtures" / "tokenizer")]
            + ["--data.max_seq_length", "48", "--n_source", "32", "--min_tokens", "0", "--threshold", "0"]
            + ["--n_random", "2", "--n_steps", "4", "--method", "riemann_left", *no_bar],
            "needs": [],
        },
        {
            "name": "universality",
            "argv": ["analyze.py", "universality", "--results"]
            + [json.dumps([str(res / "quickstart-heads"), str(res / "quickstart-heads-small")])],
            "needs": ["quickstart-heads", "quickstart-heads-small"],
        },
    ]
    for step in steps:
        if step["argv"][0] == "analyze.py":
            step["results"] = res / step["name"]
            step["argv"] += ["--output_dir", str(step["results"])]
    # last: the report of every folder above (per model, its subfolders); written to results/report.html
    steps.append({"name": "report", "argv": ["analyze.py", "report", str(res)], "needs": [], "results": res})
    return steps


def run_steps(steps, python: str, checkout: Path, logs: Path, timeout: float) -> dict[str, dict[str, Any]]:
    env = run_env(checkout)
    done: dict[str, dict[str, Any]] = {}
    for step in steps:
        failed = [n for n in step["needs"] if done.get(n, {}).get("rc") != 0]
        if failed:
            done[step["name"]] = {"rc": None, "skipped": f"needs {failed}"}
            continue
        start = time.perf_counter()
        log = logs / f"{step['name']}.log"
        with log.open("w", encoding="utf-8") as f:
            f.write("$ " + " ".join([python, *step["argv"]]) + "\n\n")
            f.flush()
            try:
                rc = subprocess.run(
                    [python, *step["argv"]], cwd=checkout, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout
                ).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        done[step["name"]] = {"rc": rc, "wall_s": round(time.perf_counter() - start, 1)}
        print(f"[behaviour_equal] {step['name']}: rc {rc}, {done[step['name']]['wall_s']} s", file=sys.stderr)
    return done


# ----------------------------------------------------------------------------- collecting
class Normalizer:
    """Rewrites absolute paths and drops the volatile keys of a JSON-able value."""

    def __init__(self, out: Path, checkout: Path) -> None:
        pairs = {}
        for path, name in ((out, "$OUT"), (checkout, "$CHECKOUT")):
            for variant in {str(path), str(path.resolve())}:
                pairs[variant] = name
        self.pairs = sorted(pairs.items(), key=lambda kv: -len(kv[0]))  # longest first: $OUT may lie in $CHECKOUT

    def text(self, value: str) -> str:
        for old, new in self.pairs:
            value = value.replace(old, new)
        return value

    def __call__(self, value: Any, parent: str | None = None) -> Any:
        if isinstance(value, dict):
            kept = {}
            for key, item in value.items():
                key = str(key)
                if key in VOLATILE_KEYS or (parent, key) in VOLATILE_NESTED:
                    continue
                if VOLATILE_PATTERN.search(key) and key not in NOT_VOLATILE:
                    continue
                kept[self.text(key)] = self(item, key)
            return kept
        if isinstance(value, (list, tuple)):
            return [self(item, parent) for item in value]
        if isinstance(value, str):
            return self.text(value)
        return value


def tensor_value(t: Any, limit: int) -> Any:
    import torch

    t = t.detach().cpu().contiguous()
    if t.numel() <= limit and t.dtype not in (torch.bfloat16, torch.float16):
        return {"tensor": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."), "values": t.tolist()}
    wide = t.double() if t.is_floating_point() else t.long()
    raw = t.reshape(-1).view(torch.uint8)
    return {
        "tensor": list(t.shape),
        "dtype": str(t.dtype).removeprefix("torch."),
        "sha256": hashlib.sha256(raw.numpy().tobytes()).hexdigest(),
        "sum": float(wide.sum()) if t.numel() else 0.0,
        "absmax": float(wide.abs().max()) if t.numel() else 0.0,
    }


def plain(value: Any, limit: int = TENSOR_FULL_LIMIT) -> Any:
    """Tensors and other objects of a ``torch.load`` result as JSON-able values."""
    import torch

    if isinstance(value, torch.Tensor):
        return tensor_value(value, limit)
    if isinstance(value, dict):
        return {str(k): plain(v, limit) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, limit) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def number(cell: str) -> Any:
    try:
        return int(cell)
    except ValueError:
        pass
    try:
        return float(cell)
    except ValueError:
        return cell


SKIP_DIRS = {"parts", "tensorboard"}
SKIP_FILES = {"progress.log", ".lock"}
DATA_SUFFIXES = {".json", ".csv", ".pt", ".html"}


def collect_folder(folder: Path, norm: Normalizer) -> dict[str, Any]:
    """The values of one results folder (``folder`` itself only, not nested results folders)."""
    import torch

    values: dict[str, Any] = {}
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or SKIP_DIRS & set(rel.parts[:-1]) or path.name in SKIP_FILES:
            continue
        if path.name.endswith(".tmp") or (len(rel.parts) > 1 and (folder / rel.parts[0] / "summary.json").exists()):
            continue  # a temporary file, or a file of a nested results folder (collected on its own)
        files.append(str(rel))
        if path.suffix not in DATA_SUFFIXES:
            continue
        if path.suffix == ".json":
            values[str(rel)] = norm(json.loads(path.read_text(encoding="utf-8")))
        elif path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                values[str(rel)] = [[number(norm.text(c)) for c in row] for row in csv.reader(f)]
        elif path.suffix == ".pt":
            values[str(rel)] = norm(plain(torch.load(path, map_location="cpu", weights_only=True)))
        elif path.suffix == ".html":
            page = path.read_text(encoding="utf-8")
            found = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
            values[str(rel)] = {"report-data": norm(json.loads(found.group(1))) if found else None}
    values["(files)"] = files
    return values


def tensorboard_scalars(run_dir: Path) -> dict[str, list[list[float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[list[float]]] = {}
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            if VOLATILE_PATTERN.search(tag.replace("/", "_")):
                continue
            scalars.setdefault(tag, []).extend([e.step, e.value] for e in acc.Scalars(tag))
    return dict(sorted(scalars.items()))


def collect_run(run_dir: Path, norm: Normalizer) -> dict[str, Any]:
    """A ``train.py`` run: config, checkpoint names and ``last.ckpt``, monitor attributions, TensorBoard scalars."""
    import torch
    import yaml

    values: dict[str, Any] = {}
    if (run_dir / "config.yaml").is_file():
        values["config.yaml"] = norm(yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")))
    values["checkpoints"] = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        values["checkpoints/last.ckpt"] = norm(plain(ckpt, CHECKPOINT_FULL_LIMIT))
    for path in sorted((run_dir / "attributions").glob("*.pt")):
        values[f"attributions/{path.name}"] = norm(plain(torch.load(path, map_location="cpu", weights_only=True)))
    values["tensorboard_scalars"] = tensorboard_scalars(run_dir)
    return values


def collect(steps, status, out: Path, checkout: Path, fixtures: dict[str, Any]) -> dict[str, Any]:
    norm = Normalizer(out, checkout)
    values: dict[str, Any] = {
        "exit_status": {name: s.get("rc", None) for name, s in status.items()},
        "fixtures": norm({"vocab_size": fixtures["vocab_size"], "files": fixtures["files"]}),
    }
    for step in steps:
        if "run_dir" in step and step["run_dir"].is_dir():
            values[f"runs/{step['name']}"] = collect_run(step["run_dir"], norm)
        if "results" in step and step["results"].is_dir():
            values[f"results/{step['name']}"] = collect_folder(step["results"], norm)
    return values


# ----------------------------------------------------------------------------- comparing
def flatten(value: Any, prefix: str = "", into: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"a": {"b": [1, 2]}}`` -> ``{"a.b[0]": 1, "a.b[1]": 2}`` (empty dicts and lists are leaves)."""
    into = {} if into is None else into
    if isinstance(value, dict) and value:
        for key, item in value.items():
            flatten(item, f"{prefix}.{key}" if prefix else str(key), into)
    elif isinstance(value, list) and value:
        for i, item in enumerate(value):
            flatten(item, f"{prefix}[{i}]", into)
    else:
        into[prefix] = value
    return into


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def close(a: Any, b: Any, rel_tol: float) -> bool:
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-12)
    return same(a, b)


def compare(path_a: Path, path_b: Path, rel_tol: float, limit: int) -> dict[str, Any]:
    doc_a, doc_b = (json.loads(Path(p).read_text(encoding="utf-8")) for p in (path_a, path_b))
    a, b = flatten(doc_a["values"]), flatten(doc_b["values"])
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    exact = [k for k in a if k in b and not same(a[k], b[k])]
    beyond = [k for k in exact if not close(a[k], b[k], rel_tol)]

    def rows(keys: list[str]) -> list[dict[str, Any]]:
        return [{"key": k, "a": a[k], "b": b[k]} for k in keys[:limit]]

    def by_group(keys: list[str]) -> dict[str, int]:
        return dict(Counter(k.split(".", 1)[0] for k in keys))

    meta = {}  # what the two runs were, and settings that make their values incomparable when they differ
    for key in ("checkout", "git_head", "environment", "quickstart_epochs", "commands"):
        got = [doc.get("meta", {}).get(key) for doc in (doc_a, doc_b)]
        if got[0] != got[1]:
            meta[key] = {"a": got[0], "b": got[1]} if key != "commands" else "differ (see both files)"
    if doc_a.get("format") != doc_b.get("format"):
        meta["format"] = {"a": doc_a.get("format"), "b": doc_b.get("format")}
    return {
        "a": str(path_a),
        "b": str(path_b),
        "n_leaves": {"a": len(a), "b": len(b)},
        "rel_tol": rel_tol,
        "equal_exactly": not (only_a or only_b or exact),
        "equal_within_tolerance": not (only_a or only_b or beyond),
        "n_only_in_a": len(only_a),
        "n_only_in_b": len(only_b),
        "n_differ_exactly": len(exact),
        "n_differ_beyond_tolerance": len(beyond),
        "differ_exactly_by_group": by_group(exact),
        "differ_beyond_tolerance_by_group": by_group(beyond),
        "only_in_a": only_a[:limit],
        "only_in_b": only_b[:limit],
        "differ_beyond_tolerance": rows(beyond),
        "differ_exactly": rows(exact),
        "meta_differences (not compared)": meta,
        "shown": f"at most {limit} keys per list",
    }


# ----------------------------------------------------------------------------- main
def environment(python: str, checkout: Path) -> dict[str, Any]:
    code = (
        "import json, importlib.metadata as m, lightning_attattr, torch\n"
        "v = {}\n"
        "for p in ('torch', 'transformers', 'pytorch-lightning', 'jsonargparse', 'tensorboard', 'networkx'):\n"
        "    try: v[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: v[p] = None\n"
        "print(json.dumps({'lightning_attattr': lightning_attattr.__file__, 'python': __import__('sys').version,\n"
        "                  'threads': torch.get_num_threads(), 'versions': v}))"
    )
    done = subprocess.run(
        [python, "-c", code], cwd=checkout, env=run_env(checkout), capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def git_state(checkout: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    return {"head": git("rev-parse", "HEAD"), "status": git("status", "--porcelain").splitlines()}


def prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            sys.exit(f"behaviour_equal: --out {out} is not empty and was not made by this script; choose another")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by benchmarks/behaviour_equal.py; emptied by its next run\n", encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    checkout = Path(args.checkout).resolve()
    out = Path(args.out).resolve()
    python = args.python
    ensure_torch(python)
    if not (checkout / "analyze.py").is_file() or not (checkout / "lightning_attattr").is_dir():
        sys.exit(f"behaviour_equal: --checkout {checkout} holds no analyze.py / lightning_attattr")
    if args.compare_to and Path(args.compare_to).resolve().is_relative_to(out):
        sys.exit(f"behaviour_equal: --compare_to {args.compare_to} lies in --out {out}, which is emptied first")
    prepare_out(out)
    (out / "logs").mkdir()
    start = time.perf_counter()
    env_info = environment(python, checkout)
    package = env_info.get("lightning_attattr")  # None: the import failed (recorded; every command will fail too)
    if package is not None and not str(package).startswith(str(checkout) + os.sep):
        sys.exit(f"behaviour_equal: the checkout's package does not win: lightning_attattr is {package}")
    before = git_state(checkout)
    fixtures = build_fixtures(out, Path(args.glue_dir))
    steps = commands(out, fixtures["vocab_size"], args.quickstart_epochs)
    status = run_steps(steps, python, checkout, out / "logs", args.timeout)
    values = collect(steps, status, out, checkout, fixtures)
    after = git_state(checkout)
    meta = {
        "checkout": str(checkout),
        "out": str(out),
        "git_head": before["head"],
        "git_status": before["status"],
        "checkout_files_changed_during_run": sorted(set(after["status"]) - set(before["status"])),
        "python": python,
        "environment": env_info,
        "glue_source_sha256": fixtures["source"],
        "quickstart_epochs": args.quickstart_epochs,
        "steps": status,
        "wall_s": round(time.perf_counter() - start, 1),
        "commands": {s["name"]: [Normalizer(out, checkout).text(a) for a in s["argv"]] for s in steps},
        "volatile_keys_dropped": {**VOLATILE_KEYS, "pattern": VOLATILE_PATTERN.pattern}
        | {".".join(k): v for k, v in VOLATILE_NESTED.items()},
    }
    (out / "values.json").write_text(
        json.dumps({"format": FORMAT, "meta": meta, "values": values}, indent=1, sort_keys=False, allow_nan=True)
        + "\n",
        encoding="utf-8",
    )
    failed = {name: s for name, s in status.items() if s.get("rc") != 0}
    report: dict[str, Any] = {
        "values": str(out / "values.json"),
        "checkout": str(checkout),
        "git_head": before["head"],
        "wall_s": meta["wall_s"],
        "steps": status,
        "failed": sorted(failed),
        "logs": str(out / "logs"),
        "checkout_files_changed_during_run": meta["checkout_files_changed_during_run"],
    }
    code = 1 if failed else 0
    if args.compare_to:
        report["comparison"] = compare(Path(args.compare_to), out / "values.json", args.rel_tol, args.limit)
        key = "equal_within_tolerance" if args.tolerant else "equal_exactly"
        code = max(code, 0 if report["comparison"][key] else 1)
    print(json.dumps(report, indent=1, default=str))
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--checkout", help="the checkout to run (repository root)")
    parser.add_argument("--out", help="folder for runs, results, logs and values.json (emptied if made by this script)")
    parser.add_argument("--python", default=default_python(), help="interpreter of the commands (default %(default)s)")
    parser.add_argument("--glue_dir", default="/work/shared/data/glue", help="GLUE root holding SST-2/ (the fixtures)")
    parser.add_argument(
        "--quickstart_epochs", type=int, default=10, help="--trainer.max_epochs of the quickstart (its config: 10)"
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per command")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two values.json files")
    parser.add_argument("--compare_to", help="with --checkout: compare the new values.json to this one")
    parser.add_argument("--rel_tol", type=float, default=1e-6, help="relative tolerance of numbers (default 1e-6)")
    parser.add_argument("--tolerant", action="store_true", help="exit 1 only on differences beyond --rel_tol")
    parser.add_argument("--limit", type=int, default=50, help="keys shown per list of differences")
    args = parser.parse_args()
    if args.compare:
        result = compare(Path(args.compare[0]), Path(args.compare[1]), args.rel_tol, args.limit)
        print(json.dumps(result, indent=1, default=str))
        key = "equal_within_tolerance" if args.tolerant else "equal_exactly"
        return 0 if result[key] else 1
    if not (args.checkout and args.out):
        parser.error("give --checkout and --out (run), or --compare A B")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
