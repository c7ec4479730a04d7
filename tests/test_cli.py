"""`train.py` end to end, in-process (LightningCLI with `args=`), on tiny models and tiny local data."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_attattr.cli import cli_main
from lightning_attattr.data.modules import GlueDataModule, SyntheticDataModule

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
GLUE_CONFIGS = {"sst2", "rte", "mrpc", "mnli"}
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


def run(args, tmp_path):
    """Run `train.py` in-process with logs under tmp_path; returns the CLI object."""
    return cli_main(
        [
            *args,
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.enable_progress_bar=false",
        ]
    )


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tokenizer_dir):
    """A tiny random BERT saved with its tokenizer, as a local model directory."""
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


def test_every_config_parses(capsys):
    assert {p.stem for p in CONFIGS} >= {"quickstart", *GLUE_CONFIGS}
    for path in CONFIGS:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["fit", "--config", str(path), "--print_config"])
        assert exit_info.value.code == 0
        parsed = yaml.safe_load(capsys.readouterr().out)
        assert parsed["trainer"]["logger"]["class_path"].endswith("TensorBoardLogger")
        assert any(cb["class_path"].endswith("EpochCheckpoint") for cb in parsed["trainer"]["callbacks"])
        if path.stem in GLUE_CONFIGS:  # the paper's fine-tuning setting
            init = parsed["data"]["init_args"]
            assert parsed["data"]["class_path"].endswith("GlueDataModule") and init["task_name"] == path.stem
            assert init["max_seq_length"] == 128 and init["train_batch_size"] == 32
            assert parsed["model"]["model_name_or_path"] == "bert-base-cased"
            assert 2e-5 <= parsed["model"]["learning_rate"] <= 5e-5 and parsed["model"]["warmup_ratio"] == 0.1
            assert parsed["trainer"]["max_epochs"] == 3


def test_quickstart_trains_logs_tensorboard_and_checkpoints(tmp_path):
    cli = run(
        [
            "fit",
            "--config",
            QUICKSTART,
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=4",
            "--trainer.limit_val_batches=2",
            "--trainer.log_every_n_steps=1",
        ],
        tmp_path,
    )
    assert isinstance(cli.datamodule, SyntheticDataModule)
    model = cli.model
    assert model.hparams.task == "synthetic" and model.hparams.num_labels == 2
    assert model.model.config.vocab_size == cli.datamodule.vocab_size  # linked from the data
    assert cli.trainer.global_step == 4
    log_dir = Path(cli.trainer.log_dir)
    assert log_dir.parent.parent == tmp_path and (log_dir / "config.yaml").is_file()
    assert {p.name for p in (log_dir / "checkpoints").iterdir()} >= {"last.ckpt", "best-epoch00.ckpt"}
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "epoch"} <= set(events.Tags()["scalars"])
    assert any(tag.startswith("lr-") for tag in events.Tags()["scalars"])  # LearningRateMonitor
    # the AttAttr callbacks of the quickstart config
    images = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    images.Reload()
    assert {
        "attr/layer0/example0",
        "attr_heads/layer2/example1",
        "importance/attattr",
        "importance/taylor",
        "prune/curve",
    } <= set(images.Tags()["images"])
    scalars = set(events.Tags()["scalars"])
    assert {"attr/completeness_layer0", "importance/spearman_taylor", "prune/acc_r0.50"} <= scalars
    assert (log_dir / "attributions" / "epoch=000.pt").is_file()
    assert cli.trainer.progress_bar_callback is None  # switched off above; on by default (next test)


def test_trainer_flags_and_callbacks_append(tmp_path, monkeypatch):
    cli = run(
        [
            "fit",
            "--config",
            QUICKSTART,
            "--trainer.fast_dev_run=true",
            "--trainer.callbacks+=EarlyStopping",
            "--trainer.callbacks.monitor=val/acc",
            "--trainer.callbacks.mode=max",
            "--model.learning_rate=3e-4",
        ],
        tmp_path,
    )
    names = [type(cb).__name__ for cb in cli.trainer.callbacks]
    assert "EarlyStopping" in names and "EpochCheckpoint" in names and "LearningRateMonitor" in names
    assert cli.model.hparams.learning_rate == 3e-4
    monitor = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "AttributionMonitor")
    assert monitor.analyses_done == 1 and not list(tmp_path.rglob("attributions"))  # ran; a dry run writes nothing
    import lightning_attattr.callbacks.progress as progress

    for terminal in (True, False):  # the Lightning progress bar shows by default on a terminal, not in a log file
        monkeypatch.setattr(progress, "_is_tty", lambda stream, terminal=terminal: terminal)
        default = cli_main(["--config", QUICKSTART, "--trainer.fast_dev_run=true"], run=False)
        assert (default.trainer.progress_bar_callback is not None) == terminal
        assert default.config.trainer.enable_progress_bar is None  # the saved config does not record the terminal
    asked = cli_main(
        ["--config", QUICKSTART, "--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=true"], run=False
    )
    assert asked.trainer.progress_bar_callback is not None  # asked for: shown in a log file too


@pytest.mark.parametrize("task", ["sst2", "rte", "mrpc", "cola", "mnli"])
def test_glue_from_a_local_directory(task, tmp_path, glue, tiny_model_dir):
    config = ROOT / "configs" / f"{'sst2' if task == 'cola' else task}.yaml"
    cli = run(
        [
            "fit",
            "--config",
            str(config),
            "--model.model_name_or_path",
            tiny_model_dir,
            "--data.data_dir",
            glue,
            "--data.task_name",
            task,
            "--trainer.fast_dev_run=true",
            "--data.train_batch_size=2",
        ],
        tmp_path,
    )
    dm, model = cli.datamodule, cli.model
    assert isinstance(dm, GlueDataModule) and dm.hparams.model_name_or_path == tiny_model_dir  # tokenizer linked
    assert model.hparams.task == task and model.hparams.num_labels == dm.num_labels
    assert cli.trainer.state.finished
    metrics = set(cli.trainer.callback_metrics)
    assert {"train/loss", "val/loss", "val/acc"} <= metrics
    if task == "mrpc":
        assert "val/f1" in metrics
    if task == "cola":
        assert "val/mcc" in metrics
    if task == "mnli":
        assert model.hparams.num_labels == 3
        assert {"val_mismatched/acc", "val_mismatched/loss"} <= metrics
    # the texts went through verbatim: quotes, NA and null are words, not missing values
    texts = dm.examples("train").text_a
    if task == "sst2":
        assert "NA" in texts and "null" in texts and '" the ride " is fun .' in texts


def test_validate_and_test_subcommands(tmp_path, glue, tiny_model_dir):
    args = [
        "--config",
        str(ROOT / "configs" / "mnli.yaml"),
        "--model.model_name_or_path",
        tiny_model_dir,
        "--data.data_dir",
        glue,
    ]
    cli = run(["test", *args], tmp_path)
    assert {"test/acc", "test_mismatched/acc"} <= set(cli.trainer.callback_metrics)
    cli = run(["validate", *args], tmp_path)
    assert {"val/acc", "val_mismatched/acc"} <= set(cli.trainer.callback_metrics)


def test_link_errors(tmp_path, glue, capsys):
    args = [
        "fit",
        "--config",
        QUICKSTART,
        "--data",
        "GlueDataModule",
        "--data.data_dir",
        glue,
        "--trainer.fast_dev_run=true",
    ]
    with pytest.raises(SystemExit) as info:
        run(args, tmp_path)
    assert info.value.code == 2
    assert "needs a tokenizer: set `--data.model_name_or_path`" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        run(
            ["fit", "--config", QUICKSTART, "--model.model_config.vocab_size=10", "--trainer.fast_dev_run=true"],
            tmp_path,
        )
    assert info.value.code == 2
    assert "`model.model_config.vocab_size` >= 29 (the synthetic vocabulary with n_filler=20), but got 10" in (
        capsys.readouterr().err
    )


def test_ddp_two_processes_on_cpu(tmp_path):
    """`--trainer.devices 2 --trainer.strategy ddp` as a user types it (ddp re-executes the script)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "fit",
        "--config",
        QUICKSTART,
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
    ]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in done.stderr + done.stdout
    checkpoints = list(tmp_path.glob("quickstart/version_*/checkpoints/last.ckpt"))
    assert len(checkpoints) == 1  # rank zero writes once
    assert torch.load(checkpoints[0], weights_only=False)["global_step"] == 2


@pytest.mark.slow
def test_quickstart_learns_the_synthetic_task(tmp_path):
    """The README's main job: the tiny BERT reaches >= 95 % dev accuracy (under two minutes on 2 cores)."""
    cli = run(["fit", "--config", QUICKSTART], tmp_path)
    best = cli.trainer.checkpoint_callback.best_model_score
    assert best is not None and float(best) >= 0.95
