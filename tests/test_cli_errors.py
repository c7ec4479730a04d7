"""What a user gets for bad input: one line naming the argument/file/value, exit status 2, no traceback,
no run directory left behind; checks happen before any training."""

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

import lightning_attattr.callbacks
from lightning_attattr.cli import cli_main
from lightning_attattr.core.checks import (
    ArgumentError,
    CheckpointError,
    UnsupportedModelError,
    UserError,
    exit_on_user_error,
    find_user_error,
)
from tests.conftest import TINY_BERT_CONFIG

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {p.stem: str(p) for p in sorted((ROOT / "configs").glob("*.yaml"))}
GLUE_CONFIGS = ("sst2", "rte", "mrpc", "mnli")
TINY = TINY_BERT_CONFIG


def run(args, runs: Path):
    """`train.py ARGS` in-process with every output under `runs`."""
    return cli_main(
        [
            *args,
            "--trainer.logger.init_args.save_dir",
            str(runs),
            "--trainer.default_root_dir",
            str(runs),
            "--trainer.enable_progress_bar=false",
        ]
    )


def user_error(args, tmp_path, capsys) -> str:
    """Run the CLI expecting a user error; check the contract and return the one error line."""
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as info:
        run(args, runs)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("train.py: error: ")
    assert not runs.exists() or not any(runs.rglob("*")), sorted(runs.rglob("*"))  # no half-made run directory
    return lines[0]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tokenizer_dir):
    """A tiny random BERT (160 positions) saved with its tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=160,
    )
    path = tmp_path_factory.mktemp("model")
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def mnli_checkpoint(tmp_path_factory, glue, tiny_model_dir):
    """`last.ckpt` of one short MNLI epoch (3 labels), trained from a copy of the model folder that is then deleted."""
    root = tmp_path_factory.mktemp("mnli_run")
    model_copy = root / "model_copy"
    shutil.copytree(tiny_model_dir, model_copy)
    with pytest.MonkeyPatch.context() as patch:  # module scope: the autouse argv fixture has not run yet
        patch.setattr(sys, "argv", [sys.argv[0]])
        cli = run(
            [
                "fit",
                "--config",
                CONFIGS["mnli"],
                "--model.model_name_or_path",
                str(model_copy),
                "--data.data_dir",
                glue,
                "--trainer.max_epochs=1",
                "--trainer.limit_train_batches=1",
                "--trainer.limit_val_batches=1",
                "--data.train_batch_size=2",
            ],
            root / "runs",
        )
    shutil.rmtree(model_copy)  # the checkpoint must be enough from here on
    return Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"


# ----------------------------------------------------------------------------- arguments and files
def test_missing_data_dir_is_one_line(tmp_path, capsys, tiny_model_dir):
    line = user_error(
        [
            "fit",
            "--config",
            CONFIGS["sst2"],
            "--model.model_name_or_path",
            tiny_model_dir,
            "--data.data_dir",
            str(tmp_path / "no_glue"),
        ],
        tmp_path,
        capsys,
    )
    assert "`data_dir`" in line and "no_glue" in line and "does not exist" in line


def test_missing_local_model_path(tmp_path, capsys, glue):
    missing = str(tmp_path / "models" / "minilm")
    line = user_error(
        ["fit", "--config", CONFIGS["sst2"], "--model.model_name_or_path", missing, "--data.data_dir", glue],
        tmp_path,
        capsys,
    )
    assert "`model_name_or_path`" in line and missing in line and "does not exist" in line
    assert "Repo id" not in line


def test_model_directory_without_config(tmp_path, capsys, glue):
    empty = tmp_path / "empty_model"
    empty.mkdir()
    line = user_error(
        ["fit", "--config", CONFIGS["sst2"], "--model.model_name_or_path", str(empty), "--data.data_dir", glue],
        tmp_path,
        capsys,
    )
    assert "has no config.json" in line and str(empty) in line


def test_non_utf8_data_file_names_file_and_line(tmp_path, capsys, tiny_model_dir):
    data = tmp_path / "glue"
    (data / "SST-2").mkdir(parents=True)
    (data / "SST-2" / "train.tsv").write_bytes(b"sentence\tlabel\ngood\t1\nbad \xff\xfe film\t0\n")
    (data / "SST-2" / "dev.tsv").write_bytes(b"sentence\tlabel\ngood\t1\n")
    line = user_error(
        [
            "fit",
            "--config",
            CONFIGS["sst2"],
            "--model.model_name_or_path",
            tiny_model_dir,
            "--data.data_dir",
            str(data),
        ],
        tmp_path,
        capsys,
    )
    assert "train.tsv" in line and "line 3" in line


@pytest.mark.parametrize(
    "train_tsv, expected",
    [
        (b"sentence\tlabel\ngood\t1\nbad \xff\xfe film\t0\n", "line 3"),  # encoding
        (b"sentence\tlabel\ngood\t1\nbad film\n", "line 3"),  # a column missing
        (None, "train.tsv"),  # no file
    ],
)
def test_data_files_are_checked_before_the_model_loads(tmp_path, capsys, monkeypatch, train_tsv, expected):
    """A bad data file is reported even when the model cannot load (offline hub name): it is read first."""
    from lightning_attattr.lightning.classifier import AttAttrClassifier

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the data files were checked")

    monkeypatch.setattr(AttAttrClassifier, "_build_model", staticmethod(no_model))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "glue"
    (data / "SST-2").mkdir(parents=True)
    if train_tsv is not None:
        (data / "SST-2" / "train.tsv").write_bytes(train_tsv)
    (data / "SST-2" / "dev.tsv").write_bytes(b"sentence\tlabel\ngood\t1\n")
    line = user_error(
        ["fit", "--config", CONFIGS["sst2"], "--model.model_name_or_path", "no-such-org/no-such-model"]
        + ["--data.data_dir", str(data)],
        tmp_path,
        capsys,
    )
    assert expected in line and "no-such-org" not in line, line


def test_cola_with_a_header_line(tmp_path, capsys, tiny_model_dir):
    data = tmp_path / "glue"
    rows = "source\tlabel\toriginal_label\tsentence\ngj04\t1\t\tThe cat sat.\n"
    for split in ("train", "dev"):
        (data / "CoLA").mkdir(parents=True, exist_ok=True)
        (data / "CoLA" / f"{split}.tsv").write_text(rows, encoding="utf-8")
    line = user_error(
        [
            "fit",
            "--config",
            CONFIGS["sst2"],
            "--data.task_name",
            "cola",
            "--model.model_name_or_path",
            tiny_model_dir,
            "--data.data_dir",
            str(data),
        ],
        tmp_path,
        capsys,
    )
    assert "CoLA" in line and "no header" in line


def test_max_seq_length_above_the_position_embeddings(tmp_path, capsys, glue, tiny_model_dir):
    line = user_error(
        [
            "fit",
            "--config",
            CONFIGS["sst2"],
            "--model.model_name_or_path",
            tiny_model_dir,
            "--data.data_dir",
            glue,
            "--data.max_seq_length",
            "512",
        ],
        tmp_path,
        capsys,
    )
    assert "`data.max_seq_length`" in line and "160" in line and "512" in line


def test_synthetic_sequences_longer_than_the_model(tmp_path, capsys):
    line = user_error(
        [
            "fit",
            "--config",
            CONFIGS["quickstart"],
            "--data.init_args.max_len",
            "100",
            "--model.model_config.max_position_embeddings",
            "64",
        ],
        tmp_path,
        capsys,
    )
    assert "`data.max_len`" in line and "64" in line and "102" in line


def test_callback_layers_out_of_range_fail_before_training(tmp_path, capsys):
    line = user_error(
        [
            "fit",
            "--config",
            CONFIGS["quickstart"],
            "--trainer.callbacks+=AttributionMonitor",
            "--trainer.callbacks.layers=[99]",
            "--trainer.max_epochs=1",
        ],
        tmp_path,
        capsys,
    )
    assert "`AttributionMonitor.layers`" in line and "99" in line and "3 layers" in line


@pytest.mark.parametrize(
    ("callback", "option", "value", "match"),
    [
        ("AttributionMonitor", "internal_batch_size", "0", "internal_batch_size"),
        ("HeadImportanceCallback", "internal_batch_size", "-1", "internal_batch_size"),
        ("HeadPruningCallback", "fractions", "[0.5, 2.0]", "fractions"),
        ("HeadPruningCallback", "every_n_epochs", "0", "every_n_epochs"),
    ],
)
def test_callback_option_errors_on_the_command_line(tmp_path, capsys, callback, option, value, match):
    line = user_error(
        [
            "fit",
            "--config",
            CONFIGS["quickstart"],
            f"--trainer.callbacks+={callback}",
            f"--trainer.callbacks.{option}={value}",
            "--trainer.max_epochs=1",
        ],
        tmp_path,
        capsys,
    )
    assert f"`{match}`" in line


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda c: c.AttributionMonitor(internal_batch_size=0), ValueError, "`internal_batch_size` to be a positive"),
        (lambda c: c.AttributionMonitor(layers=[0, 0]), ValueError, "name each layer once"),
        (lambda c: c.AttributionMonitor(layers="all"), TypeError, "`AttributionMonitor.layers` to be an int"),
        (lambda c: c.HeadImportanceCallback(internal_batch_size=0), ValueError, "`internal_batch_size`"),
        (lambda c: c.HeadPruningCallback(seed="0"), TypeError, "`seed` to be an integer, but got '0'"),
        (lambda c: c.HeadPruningCallback(seed=1.5), TypeError, "`seed` to be an integer, but got 1.5"),
        (lambda c: c.HeadPruningCallback(fractions=0.5), TypeError, "`fractions` to be a non-empty list"),
        (lambda c: c.HeadPruningCallback(fractions="0.5"), TypeError, "`fractions` to be a non-empty list"),
        (lambda c: c.HeadPruningCallback(schedule={1: 1.0}), ValueError, r"`schedule\[1\]` to be below 1"),
        (lambda c: c.HeadPruningCallback(max_eval_batches=0), ValueError, "`max_eval_batches`"),
    ],
)
def test_callback_arguments_are_checked_at_construction(make, error, match):
    import lightning_attattr.callbacks as callbacks

    with pytest.raises(error, match=match) as info:
        make(callbacks)
    assert isinstance(info.value, UserError)


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_of_another_task_is_refused_before_anything_is_written(tmp_path, capsys, glue, mnli_checkpoint):
    line = user_error(
        ["validate", "--config", CONFIGS["sst2"], "--data.data_dir", glue, "--ckpt_path", str(mnli_checkpoint)],
        tmp_path,
        capsys,
    )
    assert "task='mnli'" in line and "num_labels=3" in line and "task='sst2'" in line and "num_labels=2" in line


def test_missing_and_invalid_checkpoints(tmp_path, capsys, glue, tiny_model_dir):
    base = [
        "validate",
        "--config",
        CONFIGS["sst2"],
        "--model.model_name_or_path",
        tiny_model_dir,
        "--data.data_dir",
        glue,
    ]
    line = user_error([*base, "--ckpt_path", str(tmp_path / "nope.ckpt")], tmp_path, capsys)
    assert "`ckpt_path`" in line and "nope.ckpt" in line and "does not exist" in line
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    line = user_error([*base, "--ckpt_path", str(junk)], tmp_path, capsys)
    assert "`ckpt_path`" in line and "junk.ckpt" in line and "cannot be read" in line


def test_checkpoint_is_self_contained_and_quiet(tmp_path, capfd, glue, mnli_checkpoint):
    """The model folder the run started from is gone: the checkpoint alone loads, exports and validates."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lightning_attattr.lightning.classifier import AttAttrClassifier

    capfd.readouterr()
    module = AttAttrClassifier.load_from_checkpoint(mnli_checkpoint)
    out = capfd.readouterr()
    assert "newly initialized" not in out.out + out.err and "MISSING" not in out.out + out.err
    assert module.hparams.num_labels == 3 and module.tokenizer is not None
    state = torch.load(mnli_checkpoint, weights_only=False)["state_dict"]
    assert all(torch.equal(state[k], v) for k, v in module.state_dict().items())

    from lightning_attattr.export import main as export_main

    export_main([str(mnli_checkpoint), str(tmp_path / "hf")])
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert model.config.num_labels == 3 and tokenizer("the cat")["input_ids"][0] == tokenizer.cls_token_id
    assert torch.equal(model.classifier.weight, module.model.classifier.weight)

    # validate from the checkpoint only: no model folder, tokenizer from the checkpoint
    cli = run(
        ["validate", "--config", CONFIGS["mnli"], "--data.data_dir", glue, "--ckpt_path", str(mnli_checkpoint)],
        tmp_path / "runs",
    )
    assert "val/acc" in cli.trainer.callback_metrics
    out = capfd.readouterr()
    assert "newly initialized" not in out.out + out.err


def test_export_errors_are_one_line(tmp_path, capsys):
    from lightning_attattr.export import main as export_main

    with pytest.raises(SystemExit) as info:
        export_main([str(tmp_path / "missing.ckpt"), str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "missing.ckpt" in err and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- documented flags
@pytest.mark.parametrize("config", [*GLUE_CONFIGS, "quickstart"])
@pytest.mark.parametrize(
    "callback",
    ["AttributionMonitor", "HeadImportanceCallback", "HeadPruningCallback", "EpochCheckpoint", "EpochSummary"],
)
def test_every_callback_by_short_name_in_every_config(config, callback, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["fit", "--config", CONFIGS[config], f"--trainer.callbacks+={callback}", "--print_config"])
    assert info.value.code == 0
    parsed = yaml.safe_load(capsys.readouterr().out)
    # jsonargparse writes the shortest import path: the package root's (`lightning_attattr.AttributionMonitor`),
    # or the one a config of this process already spelled out (`lightning_attattr.callbacks.EpochCheckpoint`)
    module, _, name = parsed["trainer"]["callbacks"][-1]["class_path"].rpartition(".")
    assert module in ("lightning_attattr", "lightning_attattr.callbacks") and name == callback
    assert getattr(importlib.import_module(module), name) is getattr(lightning_attattr.callbacks, callback)


# ----------------------------------------------------------------------------- the contract itself
def test_deberta_fine_tunes_but_attattr_callbacks_refuse_it(tmp_path):

    from lightning_attattr.callbacks import AttributionMonitor
    from lightning_attattr.data.modules import SyntheticDataModule
    from lightning_attattr.lightning.classifier import AttAttrClassifier

    config = {**TINY, "model_type": "deberta-v2"}
    module = AttAttrClassifier(model_config=config, num_labels=2, task="synthetic")
    dm = SyntheticDataModule(n_train=16, n_val=8, train_batch_size=8, eval_batch_size=8)
    kwargs = dict(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer = pl.Trainer(max_epochs=1, enable_checkpointing=False, **kwargs)
    trainer.fit(module, dm)  # plain fine-tuning works
    assert trainer.state.finished and trainer.global_step == 2
    trainer = pl.Trainer(fast_dev_run=True, callbacks=[AttributionMonitor()], **kwargs)
    with pytest.raises(UnsupportedModelError, match="'deberta-v2' is not supported"):
        trainer.fit(module, dm)
    assert trainer.global_step == 0  # refused in setup, before any training step


def test_user_errors_are_found_through_wrapping_and_bugs_keep_their_traceback(monkeypatch, capsys):
    def wrapped():
        try:
            raise ArgumentError("Expected `x` to be 1, but got 2.")
        except ValueError as err:
            raise ValueError("Does not validate against any of the Union subtypes ...") from err

    assert isinstance(find_user_error(_catch(wrapped)), ArgumentError)
    with pytest.raises(SystemExit) as info:
        exit_on_user_error(wrapped, prog="tool")
    assert info.value.code == 2 and capsys.readouterr().err == "tool: error: Expected `x` to be 1, but got 2.\n"

    def bug():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        exit_on_user_error(bug)
    monkeypatch.setenv("ATTATTR_TRACEBACK", "1")
    with pytest.raises(ValueError, match="Union subtypes") as info:  # the whole chain, as raised
        exit_on_user_error(wrapped)
    assert isinstance(info.value.__cause__, ArgumentError)
    assert issubclass(CheckpointError, ValueError)


def _catch(fn):
    try:
        fn()
    except Exception as err:
        return err
    raise AssertionError("expected an exception")


def test_train_py_in_a_subprocess_prints_one_line_and_no_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ATTATTR_TRACEBACK"}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "fit",
            "--config",
            CONFIGS["sst2"],
            "--data.data_dir",
            str(tmp_path / "missing"),
        ],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("train.py: error: Expected `data_dir`")
    assert str(tmp_path / "missing") in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written in the working directory


def test_fast_dev_run_writes_nothing_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # upstream ModelCheckpoint wrote checkpoints/last.ckpt, then last-v1.ckpt, ...
        cli = cli_main(["fit", "--config", CONFIGS["quickstart"], "--trainer.fast_dev_run=true"])
        assert cli.trainer.state.finished
    assert sorted(tmp_path.rglob("*")) == []


def test_callback_layers_are_checked_in_setup_outside_the_cli(tmp_path):

    from lightning_attattr.callbacks import AttributionMonitor
    from lightning_attattr.data.modules import SyntheticDataModule
    from lightning_attattr.lightning.classifier import AttAttrClassifier

    module = AttAttrClassifier(model_config=TINY, num_labels=2, task="synthetic")
    dm = SyntheticDataModule(n_train=16, n_val=8, train_batch_size=8, eval_batch_size=8)
    trainer = pl.Trainer(
        max_epochs=1,
        default_root_dir=tmp_path,
        callbacks=[AttributionMonitor(layers=[99])],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(ValueError, match=r"`AttributionMonitor.layers` to be in \[-2, 1\].*but got 99"):
        trainer.fit(module, dm)
    assert trainer.global_step == 0  # refused before the first training step, not after an epoch


class FailLate(pl.Callback):
    """Raises a user error at the end of the first training epoch (after a checkpoint could exist)."""

    def on_train_epoch_end(self, trainer, pl_module):
        raise ArgumentError("Expected `late` to be fine, but got a late failure.")


def test_a_user_error_late_in_a_run_keeps_its_directory(tmp_path, capsys):
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as info:
        late = "--trainer.callbacks+=tests.test_cli_errors.FailLate"
        args = [
            "fit",
            "--config",
            CONFIGS["quickstart"],
            late,
            "--trainer.max_epochs=2",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
        ]
        run(args, runs)
    assert info.value.code == 2 and "a late failure" in capsys.readouterr().err
    assert any(runs.rglob("events.out.tfevents*"))  # logs of the steps it took are kept
