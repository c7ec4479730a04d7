"""EpochSummary: one line per epoch on stderr and in progress.log."""

from __future__ import annotations

import io
import re
import sys

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from lightning_attattr.callbacks.progress import EpochSummary, format_metrics
from lightning_attattr.core.checks import ArgumentTypeError
from lightning_attattr.data.modules import SyntheticDataModule
from lightning_attattr.lightning.classifier import AttAttrClassifier
from tests.conftest import TINY_BERT_CONFIG

TINY = TINY_BERT_CONFIG


def make_run(tmp_path, callback, **trainer_kwargs):
    torch.manual_seed(0)
    module = AttAttrClassifier(model_config=TINY, num_labels=2, task="synthetic", learning_rate=1e-3)
    data = SyntheticDataModule(n_train=32, n_val=16, train_batch_size=8, eval_batch_size=16)
    kwargs = dict(
        max_epochs=2,
        logger=CSVLogger(tmp_path, name="csv"),
        enable_progress_bar=False,
        enable_checkpointing=False,
        num_sanity_val_steps=1,
    )
    kwargs.update(trainer_kwargs)
    trainer = pl.Trainer(
        default_root_dir=tmp_path, enable_model_summary=False, accelerator="cpu", callbacks=[callback], **kwargs
    )
    return module, data, trainer


def summary_lines(text, start="epoch "):
    return [line for line in text.splitlines() if line.startswith(start)]


def test_one_line_per_epoch_on_stderr_and_in_the_log_file(tmp_path, capsys):
    summary = EpochSummary(to_terminal=True)
    module, data, trainer = make_run(tmp_path, summary)
    trainer.fit(module, data)
    lines = summary_lines(capsys.readouterr().err)
    assert len(lines) == 2, lines
    assert lines[0].startswith("epoch 1/2 | train/loss ") and lines[1].startswith("epoch 2/2 | ")
    for line in lines:
        names = re.findall(r"\| ([\w/]+) ", line)
        assert names == ["train/loss", "train/acc", "val/loss", "val/acc"], line
        assert re.search(r"\| \d+\.\d s$", line)
    # val/acc of the line is this epoch's validation accuracy
    assert f"val/acc {float(trainer.callback_metrics['val/acc']):.3f}" in lines[1]

    log = tmp_path / "csv" / "version_0" / "progress.log"
    assert summary.log_path == log and log.parent == tmp_path / "csv" / "version_0"
    logged = log.read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in logged] == lines  # "<timestamp> <line>"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d epoch 1/2 \|", logged[0])

    # a validate and a test run end with one line each, appended to the same file
    trainer.validate(module, data)
    trainer.test(module, data)
    err = capsys.readouterr().err
    (validate,) = summary_lines(err, "validate |")
    (test,) = summary_lines(err, "test |")
    assert validate.startswith("validate | val/loss ") and "val/acc" in validate and "train/" not in validate
    assert test.startswith("test | test/loss ") and "test/acc" in test and "val/" not in test
    assert len(log.read_text().splitlines()) == 4


def test_default_prints_when_stderr_is_not_a_tty(tmp_path, capsys):
    # capsys' stderr is no terminal: the line is printed although the progress bar is enabled
    module, data, trainer = make_run(
        tmp_path, EpochSummary(log_file=None), max_epochs=1, enable_progress_bar=True, logger=False
    )
    trainer.fit(module, data)
    assert sys.stderr.isatty() is False
    assert capsys.readouterr().err.count("epoch 1/1 | train/loss") == 1
    assert list(tmp_path.rglob("progress.log")) == []  # log_file=None


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_default_stays_quiet_next_to_the_progress_bar_on_a_terminal(tmp_path, monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    summary = EpochSummary()
    module, data, trainer = make_run(tmp_path, summary, max_epochs=1, enable_progress_bar=True)
    trainer.fit(module, data)
    assert "epoch 1/1 |" not in terminal.getvalue()
    assert "epoch 1/1 | train/loss" in summary.log_path.read_text()  # the log file still has it


def test_default_prints_without_progress_bar_and_false_never_prints(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    module, data, trainer = make_run(tmp_path / "a", EpochSummary(), max_epochs=1, logger=False)
    trainer.fit(module, data)
    assert sys.stderr.getvalue().count("epoch 1/1 |") == 1
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    module, data, trainer = make_run(tmp_path / "b", EpochSummary(to_terminal=False), max_epochs=1, logger=False)
    trainer.fit(module, data)
    assert "epoch 1/1" not in sys.stderr.getvalue()
    assert "epoch 1/1 | train/loss" in (tmp_path / "b" / "progress.log").read_text()  # no logger: default_root_dir


def test_epochs_without_validation_show_no_stale_val_metrics(tmp_path, capsys):
    module, data, trainer = make_run(tmp_path, EpochSummary(to_terminal=True), max_epochs=3, check_val_every_n_epoch=2)
    trainer.fit(module, data)
    lines = summary_lines(capsys.readouterr().err)
    assert [("val/acc" in line) for line in lines] == [False, True, False]


def test_fast_dev_run_writes_no_log_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = EpochSummary(to_terminal=True)
    module, data, trainer = make_run(tmp_path, summary, fast_dev_run=True, logger=True)
    trainer.fit(module, data)
    assert summary.log_path is None and list(tmp_path.rglob("progress.log")) == []
    assert summary_lines(capsys.readouterr().err)[0].startswith("epoch 1/1 | train/loss")


def test_absolute_log_file(tmp_path):
    target = tmp_path / "elsewhere" / "run.log"
    module, data, trainer = make_run(tmp_path, EpochSummary(to_terminal=False, log_file=str(target)), max_epochs=1)
    trainer.fit(module, data)
    assert "epoch 1/1 | train/loss" in target.read_text()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"to_terminal": "yes"}, "to_terminal"),
        ({"to_terminal": 1}, "to_terminal"),
        ({"log_file": 3}, "log_file"),
        ({"log_file": ""}, "log_file"),
    ],
)
def test_argument_errors_name_the_argument(kwargs, name):
    with pytest.raises(ArgumentTypeError, match=f"`{name}`.* but got") as error:
        EpochSummary(**kwargs)
    assert isinstance(error.value, TypeError) and isinstance(error.value, ValueError)
    assert repr(next(iter(kwargs.values()))) in str(error.value)


def test_format_metrics_orders_filters_and_shortens():
    metrics = {
        "val/acc": torch.tensor(0.98234),
        "val/loss": torch.tensor(0.1),
        "train/loss_step": torch.tensor(2.0),
        "train/loss_epoch": torch.tensor(1.0),
        "val_mismatched/acc": 0.5,
        "importance/L0H0": 0.3,
        "val/prune/acc_r0.50": 0.2,
        "val/per_class": torch.ones(3),
        "lr": 1e-3,
        "train/tiny": 1e-6,
    }
    assert format_metrics(metrics, ("train/", "val")) == [
        "train/loss_epoch 1.000",
        "train/tiny 1.00e-06",
        "val/loss 0.100",
        "val/acc 0.982",
        "val_mismatched/acc 0.500",
    ]
    many = {f"val/m{i}": float(i) for i in range(10)}
    parts = format_metrics(many, ("val",))
    assert len(parts) == 9 and parts[-1] == "+2 more"


class Clock:
    """A `time` stand-in whose monotonic clock advances one second per reading."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 1.0
        return self.now


def test_lines_at_a_steady_interval_within_an_epoch(tmp_path, capsys, monkeypatch):
    import lightning_attattr.callbacks.progress as progress

    monkeypatch.setattr(progress, "time", Clock())
    summary = EpochSummary(to_terminal=True, every_n_seconds=0.5)
    module, data, trainer = make_run(tmp_path, summary)  # 4 batches of 8 per epoch, 2 epochs
    trainer.fit(module, data)
    lines = summary_lines(capsys.readouterr().err)
    within = [line for line in lines if "| batch " in line]
    expected = [(e, b, (e - 1) * 4 + b) for e in (1, 2) for b in (1, 2, 3, 4)]
    assert [
        tuple(map(int, re.match(r"epoch (\d)/2 \| batch (\d)/4 \| step (\d)/8 \|", x).groups())) for x in within
    ] == (expected)
    assert all("train/loss" in line and re.search(r"\| \d+\.\d s$", line) for line in within)
    logged = (tmp_path / "csv" / "version_0" / "progress.log").read_text().splitlines()
    assert len(logged) == len(lines) == len(within) + 2  # the log file gets them too, and the two epoch lines

    quiet = EpochSummary(to_terminal=True, every_n_seconds=None)
    module, data, trainer = make_run(tmp_path / "quiet", quiet)
    trainer.fit(module, data)
    assert [line.split(" |")[0] for line in summary_lines(capsys.readouterr().err)] == ["epoch 1/2", "epoch 2/2"]


def test_every_n_seconds_must_be_positive():
    from lightning_attattr.core.checks import ArgumentError

    with pytest.raises(ArgumentError, match="`every_n_seconds`"):
        EpochSummary(every_n_seconds=0)
