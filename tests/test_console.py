"""What a new user sees in the console: `train.py` and `analyze.py` on the quickstart config (tiny, few steps).

The two commands run as subprocesses with their output going to a pipe (as in a log file): the finishing
lines name the run and the results, the next command printed is the one that works, and the noise that
was removed (Lightning's litlogger tip, its LeafSpec deprecation warning, the model summary's FLOPs column,
the last frame of a progress bar, "Predicting" bars) stays away.
"""

from __future__ import annotations

import logging
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import yaml

from lightning_attattr.lightning.analysis import stage_label
from lightning_attattr.lightning.console import LEAFSPEC_WARNING, LITLOGGER_TIP, quiet_lightning

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
NOISE = ("litlogger", "LeafSpec", "FLOPs", "Predicting", "Epoch ", "\r")


def tiny_quickstart(path: Path, epochs: int, callbacks: str = "all") -> Path:
    """The quickstart config with a few examples and epochs (and the AttAttr callbacks on a few examples)."""
    config = yaml.safe_load(QUICKSTART.read_text(encoding="utf-8"))
    config["trainer"]["max_epochs"] = epochs
    config["data"]["init_args"].update(n_train=64, n_val=16, train_batch_size=16)
    kept = []
    for callback in config["trainer"]["callbacks"]:
        if callbacks == "checkpoint" and not callback["class_path"].endswith("EpochCheckpoint"):
            continue
        if "n_examples" in callback.get("init_args", {}):
            callback["init_args"]["n_examples"] = 2
        if callback["class_path"].endswith("HeadPruningCallback"):
            callback["init_args"].update(every_n_epochs=1, fractions=[0.0, 0.5])
        kept.append(callback)
    config["trainer"]["callbacks"] = kept
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def run(command: list[str], cwd: Path) -> str:
    """Run a command with its output in a pipe; returns stdout and stderr together (it must succeed)."""
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return done.stdout, output


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    """`train.py fit` on the tiny quickstart, then the `next:` command it printed, as a user would run them."""
    cwd = tmp_path_factory.mktemp("console")
    config = tiny_quickstart(cwd / "quickstart.yaml", epochs=2)
    train_stdout, train = run([sys.executable, str(ROOT / "train.py"), "fit", "--config", str(config)], cwd)
    (next_line,) = [line for line in train_stdout.splitlines() if line.startswith("next: ")]
    command = shlex.split(next_line.removeprefix("next: "))
    assert command[:2] == ["python", "analyze.py"]
    small = ["--n_examples", "4", "--methods", "attattr", "random", "--fractions", "0", "0.5"]
    analyze_stdout, analyze = run([sys.executable, str(ROOT / "analyze.py"), *command[2:], *small], cwd)
    return SimpleNamespace(
        cwd=cwd, train=train, train_stdout=train_stdout, analyze=analyze, analyze_stdout=analyze_stdout
    )


def test_train_ends_with_the_run_and_the_exact_next_command(console):
    lines = console.train_stdout.strip().splitlines()
    run_dir = "runs/quickstart/version_0"
    assert lines[-2].startswith(f"run: {run_dir} ")
    assert lines[-1] == (
        f"next: python analyze.py heads --config {run_dir}/config.yaml "
        f"--ckpt_path {run_dir}/checkpoints/last.ckpt --output_dir results/quickstart-heads"
    )
    assert (console.cwd / run_dir / "checkpoints" / "last.ckpt").is_file()
    epochs = [line.split(" |")[0] for line in console.train.splitlines() if line.startswith("epoch ")]
    assert epochs[-2:] == ["epoch 1/2", "epoch 2/2"]  # counted from 1, as in the figure titles
    assert re.search(r"^model: BertForSequenceClassification \| [\d.]+ K parameters", console.train, re.M)


def test_analyze_ends_with_the_results_path_and_leaves_no_lock(console):
    last = console.analyze_stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"heads: complete in [\d.]+ s; results in results/quickstart-heads", last), last
    results = console.cwd / "results" / "quickstart-heads"
    assert (results / "importance.json").is_file() and not (results / ".lock").exists()


@pytest.mark.parametrize("command", ["train", "analyze"])
def test_no_noise(console, command):
    output = getattr(console, command)
    for noise in NOISE:
        assert noise not in output, (noise, output)
    assert "Tip:" not in output and "deprecated" not in output, output


def test_a_second_run_prints_its_own_folder(console):
    config = tiny_quickstart(console.cwd / "second.yaml", epochs=1, callbacks="checkpoint")
    stdout, _ = run([sys.executable, str(ROOT / "train.py"), "fit", "--config", str(config)], console.cwd)
    assert "--config runs/quickstart/version_1/config.yaml" in stdout.splitlines()[-1]


def test_the_filters_are_narrow():
    quiet_lightning()
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    record = logging.makeLogRecord({"msg": f"{LITLOGGER_TIP}, try installing [litlogger]..."})
    assert not all(f.filter(record) for f in logger.filters)
    other = logging.makeLogRecord({"msg": "GPU available: False, used: False"})
    assert all(f.filter(other) for f in logger.filters)
    message = re.sub(r"\\(.)", r"\1", LEAFSPEC_WARNING)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_lightning()
        warnings.warn_explicit(message, FutureWarning, "_pytree.py", 21, module="pytorch_lightning.utilities._pytree")
        warnings.warn_explicit(message, FutureWarning, "mine.py", 1, module="my_project.trees")  # not Lightning's
        warnings.warn_explicit("another", FutureWarning, "_pytree.py", 22, module="pytorch_lightning.utilities._pytree")
    assert [str(w.message) for w in caught] == [message, "another"]


@pytest.mark.parametrize("bar", ["TQDMProgressBar", "RichProgressBar"])
def test_stage_label_names_the_predict_bar(bar):
    callback = getattr(pl.callbacks, bar)()
    trainer = pl.Trainer(accelerator="cpu", logger=False, callbacks=[callback], enable_model_summary=False)
    assert trainer.progress_bar_callback.predict_description == "Predicting"
    with stage_label(trainer, "importance"):
        assert trainer.progress_bar_callback.predict_description == "importance"
        assert isinstance(trainer.progress_bar_callback, getattr(pl.callbacks, bar))
    assert trainer.progress_bar_callback.predict_description == "Predicting"
    assert type(trainer.progress_bar_callback) is getattr(pl.callbacks, bar)


def test_makefile_prints_the_next_command_and_names_the_browser_tests():
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    quickstart = text.split("\nquickstart:")[1].split("\n\n")[0]
    assert quickstart.strip().splitlines()[-1].lstrip().startswith('@echo "next: make analyze')
    assert "$(LAST_QUICKSTART)/checkpoints/last.ckpt" in quickstart.splitlines()[-1]
    test = text.split("\ntest:")[1].split("\n\n")[0]
    assert "make test-browser" in test
    browser = text.split("\ntest-browser:")[1].split("\n\n")[0]
    assert "chromium chromium-driver" in browser and "tests/report/test_browser.py" in browser
