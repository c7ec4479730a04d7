"""`analyze.py` end to end, in-process, on a quickstart model that `train.py` trains in this module's fixture.

Round trip of a real training run (``--config runs/.../config.yaml --ckpt_path .../last.ckpt``), resume after a
crash, results folders that refuse to mix arguments, one-line user errors, the other subcommands, and known
answers (a trained model whose planted interaction sits in layer 0; a head whose output is zero).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from lightning_attattr.analysis.store import PartStore, atomic_write
from lightning_attattr.analysis_cli import cli_main as analyze_main
from lightning_attattr.cli import cli_main as train_main
from lightning_attattr.core.adapter import attention_scope
from lightning_attattr.core.attribution import AttentionIntegratedGradients, model_logits
from lightning_attattr.core.importance import attribution_head_scores, pruning_order, taylor_importance
from lightning_attattr.data.modules import SyntheticDataModule
from lightning_attattr.lightning.classifier import AttAttrClassifier
from tests.conftest import make_model, text_batch

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
N_VAL = 120  # dev examples of the trained run
FRACTIONS = [0, 0.1, 0.3, 0.5, 0.7, 1]  # 0.3 * 12 = 3.6 and 0.7 * 12 = 8.4: floor, not round
HEADS_ARGS = [
    "--n_examples",
    "64",
    "--methods",
    "[attattr, taylor, random]",
    "--random_seeds",
    "[0, 1]",
    "--fractions",
    json.dumps(FRACTIONS),
    "--trainer.enable_progress_bar=false",
]
SMALL_ARGS = [
    "--n_examples",
    "8",
    "--methods",
    "[attattr]",
    "--fractions",
    "[0, 0.5]",
    "--trainer.enable_progress_bar=false",
]


def analyze(args: list[str]):
    """`analyze.py ARGS` in-process."""
    return analyze_main([str(a) for a in args])


def user_error(args: list[str], capsys, output_dir: Path | None = None, prog: str = "analyze.py") -> str:
    """Run `analyze.py` expecting a user error: exit 2, one line on stderr, no traceback, no results written."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        analyze(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    if output_dir is not None:
        assert not (output_dir / "importance.json").exists()
        assert not output_dir.exists(), sorted(output_dir.rglob("*"))  # refused before the folder was made
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a results folder (but the lock file, which each run rewrites) and its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def tmp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written to the working directory by accident


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`python train.py fit --config configs/quickstart.yaml` (120 dev examples, no AttAttr callbacks: faster)."""
    root = tmp_path_factory.mktemp("quickstart")
    config = yaml.safe_load(QUICKSTART.read_text(encoding="utf-8"))
    config["trainer"]["callbacks"] = [
        cb for cb in config["trainer"]["callbacks"] if cb["class_path"].endswith("EpochCheckpoint")
    ]
    (root / "quickstart.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:  # module scope: the autouse fixtures have not run yet
        patch.setattr(sys, "argv", [sys.argv[0]])
        patch.chdir(root)
        runs = str(root / "runs")
        cli = train_main(
            [
                "fit",
                "--config",
                str(root / "quickstart.yaml"),
                "--trainer.enable_progress_bar=false",
                "--trainer.logger.init_args.save_dir",
                runs,
                "--trainer.default_root_dir",
                runs,
                f"--data.n_val={N_VAL}",
            ]
        )
    run_dir = Path(cli.trainer.log_dir)
    init = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["data"]["init_args"]
    return SimpleNamespace(
        config=run_dir / "config.yaml",
        ckpt=run_dir / "checkpoints" / "last.ckpt",
        val_acc=float(cli.trainer.callback_metrics["val/acc"]),
        data_args=init,
        base=["--config", run_dir / "config.yaml", "--ckpt_path", run_dir / "checkpoints" / "last.ckpt"],
    )


@pytest.fixture(scope="module")
def heads_dir(trained, tmp_path_factory):
    """`analyze.py heads` on the trained run, with structural pruning."""
    out = tmp_path_factory.mktemp("heads") / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", [sys.argv[0]])
        analyze(
            [
                "heads",
                *trained.base,
                "--output_dir",
                out,
                *HEADS_ARGS,
                "--structural",
                "true",
                "--latency_batches",
                "1",
                "--latency_repeats",
                "1",
            ]
        )
    return out


@pytest.fixture(scope="module")
def small_heads_dir(trained, tmp_path_factory):
    """A second, cheaper `heads` folder (8 examples, AttAttr only)."""
    out = tmp_path_factory.mktemp("heads_small") / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", [sys.argv[0]])
        analyze(["heads", *trained.base, "--output_dir", out, *SMALL_ARGS])
    return out


def load_trained(trained) -> tuple[torch.nn.Module, SyntheticDataModule]:
    """The checkpoint's Hugging Face model and the run's data module, loaded without the analysis code."""
    module = AttAttrClassifier.load_from_checkpoint(str(trained.ckpt), map_location="cpu")
    datamodule = SyntheticDataModule(**trained.data_args)
    datamodule.setup("validate")
    return module.model.eval(), datamodule


def evaluate(model: torch.nn.Module, datamodule: SyntheticDataModule) -> tuple[float, float]:
    """Plain dev accuracy and mean loss."""
    correct = total = 0
    loss = 0.0
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            out = model(**batch)
            correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
            total += len(batch["labels"])
            loss += float(out.loss) * len(batch["labels"])
    return correct / total, loss / total


def silence_heads(model: torch.nn.Module, heads) -> torch.nn.Module:
    """A copy whose heads `[(layer, head), ...]` output zero (value weights and bias zeroed), like a head mask."""
    model = copy.deepcopy(model)
    size = model.config.hidden_size // model.config.num_attention_heads
    with torch.no_grad():
        for layer, head in heads:
            value = model.bert.encoder.layer[layer].attention.self.value
            value.weight[head * size : (head + 1) * size] = 0
            value.bias[head * size : (head + 1) * size] = 0
    return model


# ----------------------------------------------------------------------------- heads: a real run, round trip
def test_heads_round_trips_a_train_py_run(trained, heads_dir):
    out = heads_dir
    for name in (
        "importance.json",
        "importance.csv",
        "pruning.json",
        "pruning.csv",
        "structural.json",
        "summary.json",
        "manifest.json",
        "progress.log",
    ):
        assert (out / name).is_file(), name
    for stem in ("importance_attattr", "importance_taylor", "pruning_acc"):
        assert (out / "plots" / f"{stem}.png").stat().st_size > 0 and (out / "plots" / f"{stem}.svg").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents*"))
    assert not tmp_files(out)

    summary = read_json(out / "summary.json")
    assert summary["subcommand"] == "heads" and summary["status"] == "complete"
    assert summary["command"][:2] == ["analyze.py", "heads"] and str(trained.ckpt) in summary["command"]
    assert summary["config"]["ckpt_path"] == str(trained.ckpt)
    assert summary["config"]["data"]["class_path"].endswith("SyntheticDataModule")
    assert {"python", "torch", "transformers", "pytorch-lightning"} <= set(summary["versions"])
    assert {"importance_s", "pruning_s", "structural_s"} <= set(summary["timings"])
    assert summary["task"] == "synthetic"
    assert read_json(out / "manifest.json")["kind"] == "heads"

    importance = read_json(out / "importance.json")
    assert importance["n_layers"] == 3 and importance["n_heads"] == 4 and importance["n_examples"] == 64
    assert set(importance["importance"]) == {"attattr", "taylor", "random_s0", "random_s1"}
    pruning = read_json(out / "pruning.json")
    assert pruning["fractions"] == FRACTIONS and pruning["n_eval_examples"] == N_VAL
    assert pruning["heads_removed"] == [math.floor(r * 12) for r in FRACTIONS] == [0, 1, 3, 6, 8, 12]
    assert set(pruning["curves"]) == {"attattr", "taylor", "random_s0", "random_s1", "random"}
    for curve in pruning["curves"].values():
        assert len(curve["acc"]) == len(FRACTIONS)

    # the unpruned accuracy is the model's plain dev accuracy, computed here without the analysis code
    model, datamodule = load_trained(trained)
    accuracy, _ = evaluate(model, datamodule)
    assert pruning["unpruned"]["acc"] == pytest.approx(accuracy, abs=1e-9)
    assert accuracy == pytest.approx(trained.val_acc)  # what train.py logged for the same weights
    assert pruning["curves"]["attattr"]["acc"][0] == pruning["unpruned"]["acc"]
    # and every point of the AttAttr curve: its lowest-ranked heads silenced by zeroing their value weights
    order = pruning_order(torch.tensor(importance["importance"]["attattr"]))
    for removed, acc in zip(pruning["heads_removed"], pruning["curves"]["attattr"]["acc"]):
        assert evaluate(silence_heads(model, order[:removed]), datamodule)[0] == pytest.approx(acc, abs=1.5 / N_VAL)
    assert pruning["curves"]["attattr"]["acc"][-1] == pytest.approx(
        evaluate(silence_heads(model, order), datamodule)[0]
    )

    structural = read_json(out / "structural.json")
    rows = [r for r in structural["rows"] if "parameters" in r]
    assert rows[0]["heads_removed"] == 0 and rows[0]["parameters_ratio"] == 1.0
    assert [r["parameters"] for r in rows] == sorted((r["parameters"] for r in rows), reverse=True)
    assert any("skipped" in r for r in structural["rows"])  # fraction 1 would empty every layer


# ----------------------------------------------------------------------------- resume after a crash
def crash_on_write(monkeypatch, at: int) -> None:
    """`PartStore.write` dies in the middle of its `at`-th write (counted from now), after bytes were written."""
    calls = {"n": 0}
    original = PartStore.write

    def write(self, index, record, rank=0):
        calls["n"] += 1
        if calls["n"] == at:

            def half(f):
                f.write(b"half a part")
                raise RuntimeError("simulated crash while writing a part")

            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path / "part-crash.safetensors", half, binary=True)
        return original(self, index, record, rank)

    monkeypatch.setattr(PartStore, "write", write)


def test_resume_after_crashes_recomputes_only_missing_examples(trained, heads_dir, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    args = ["heads", *trained.base, "--output_dir", out, *HEADS_ARGS]
    # 1. crash in the importance stage, in the 3rd of its 4 batches of 16
    with monkeypatch.context() as patch:
        crash_on_write(patch, at=3)
        with pytest.raises(RuntimeError, match="simulated crash"):
            analyze(args)
    assert not tmp_files(out)  # nothing half-written
    assert not (out / "importance.json").exists() and not (out / "pruning.json").exists()
    assert len(list((out / "parts" / "importance").glob("part-*.safetensors"))) == 2
    # 2. crash in the pruning stage: importance needs 2 more writes, the pruning stage's 2nd batch fails
    with monkeypatch.context() as patch:
        crash_on_write(patch, at=4)
        with pytest.raises(RuntimeError, match="simulated crash"):
            analyze(args)
    assert not tmp_files(out)
    assert not (out / "importance.json").exists() and not (out / "pruning.json").exists()
    assert len(list((out / "parts" / "importance").glob("part-*.safetensors"))) == 4
    assert len(list((out / "parts" / "pruning").glob("part-*.safetensors"))) == 1
    # 3. the same command completes, computing only what is missing
    analyze(args)
    log = (out / "progress.log").read_text(encoding="utf-8")
    assert "importance: 0 of 64 examples already done" in log
    assert "importance: 32 of 64 examples already done" in log
    assert "importance: 64 of 64 examples already done" in log
    assert "pruning: 64 of 120 examples already done" in log
    assert len(list((out / "parts" / "importance").glob("part-*.safetensors"))) == 4  # no batch computed twice
    assert len(list((out / "parts" / "pruning").glob("part-*.safetensors"))) == 2
    assert not tmp_files(out)
    # ... with the results of an uninterrupted run
    resumed, reference = read_json(out / "importance.json"), read_json(heads_dir / "importance.json")
    assert set(resumed["importance"]) == set(reference["importance"])
    for name, values in reference["importance"].items():
        torch.testing.assert_close(
            torch.tensor(resumed["importance"][name]), torch.tensor(values), rtol=0, atol=1e-6, msg=name
        )
    resumed, reference = read_json(out / "pruning.json"), read_json(heads_dir / "pruning.json")
    assert resumed["heads_removed"] == reference["heads_removed"]
    assert resumed["curves"] == reference["curves"] and resumed["unpruned"] == reference["unpruned"]
    assert read_json(out / "summary.json")["status"] == "complete"


# ----------------------------------------------------------------------------- results folders do not mix
def test_other_arguments_in_a_used_folder_are_refused_and_overwrite_replaces(
    trained, heads_dir, small_heads_dir, tmp_path, capsys
):
    out = tmp_path / "used"
    shutil.copytree(heads_dir, out)
    before = snapshot(out)
    line = user_error(["heads", *trained.base, "--output_dir", out, *HEADS_ARGS[:-1], "--n_examples", "32"], capsys)
    assert str(out) in line and "n_examples" in line and "--overwrite true" in line
    assert snapshot(out) == before  # untouched
    line = user_error(["effectiveness", *trained.base, "--output_dir", out, "--n_examples", "4"], capsys)
    assert str(out) in line and "--overwrite true" in line
    assert snapshot(out) == before

    analyze(["heads", *trained.base, "--output_dir", out, *SMALL_ARGS, "--overwrite", "true"])
    assert read_json(out / "importance.json") == read_json(small_heads_dir / "importance.json")
    assert read_json(out / "pruning.json") == read_json(small_heads_dir / "pruning.json")
    assert not (out / "plots" / "importance_taylor.png").exists() and not (out / "structural.json").exists()
    assert read_json(out / "manifest.json") == read_json(small_heads_dir / "manifest.json")


def test_a_folder_in_use_is_refused(trained, small_heads_dir, tmp_path, capsys):
    from filelock import FileLock

    out = tmp_path / "busy"
    shutil.copytree(small_heads_dir, out)
    before = snapshot(out)
    with FileLock(str(out / ".lock")).acquire(blocking=False):  # another run holds the folder
        line = user_error(["heads", *trained.base, "--output_dir", out, *SMALL_ARGS], capsys)
    assert str(out) in line and "to be free" in line
    assert snapshot(out) == before


# ----------------------------------------------------------------------------- bad input: one line, exit 2
def test_missing_and_truncated_checkpoints(trained, tmp_path, capsys):
    out = tmp_path / "out"
    line = user_error(
        ["heads", "--config", trained.config, "--ckpt_path", tmp_path / "nope.ckpt", "--output_dir", out], capsys, out
    )
    assert "`ckpt_path`" in line and "nope.ckpt" in line and "does not exist" in line
    truncated = tmp_path / "truncated.ckpt"
    data = trained.ckpt.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    line = user_error(["heads", "--config", trained.config, "--ckpt_path", truncated, "--output_dir", out], capsys, out)
    assert "`ckpt_path`" in line and "truncated.ckpt" in line and "cannot be read" in line


def test_checkpoint_of_another_task(trained, glue, tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "out"
    line = user_error(
        [
            "heads",
            *trained.base,
            "--output_dir",
            out,
            "--data",
            "GlueDataModule",
            "--data.task_name",
            "mnli",
            "--data.data_dir",
            glue,
            "--data.model_name_or_path",
            tokenizer_dir,
        ],
        capsys,
        out,
    )
    assert str(trained.ckpt) in line
    assert "task='synthetic'" in line and "num_labels=2" in line and "task='mnli'" in line and "num_labels=3" in line


def test_data_dir_without_the_task(trained, glue, tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "out"
    base = [
        "heads",
        "--config",
        trained.config,
        "--output_dir",
        out,
        "--data",
        "GlueDataModule",
        "--data.model_name_or_path",
        tokenizer_dir,
        "--data.max_seq_length",
        "64",
    ]
    line = user_error([*base, "--data.task_name", "qnli", "--data.data_dir", glue], capsys, out)  # QNLI: no dev.tsv
    assert "`data_dir`" in line and glue in line and "dev.tsv" in line and "'qnli'" in line
    empty = tmp_path / "empty_glue"
    empty.mkdir()
    line = user_error([*base, "--data.task_name", "rte", "--data.data_dir", empty], capsys, out)
    assert "`data_dir`" in line and str(empty) in line and "'rte'" in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--n_examples", "1000"], ["`n_examples`", f"at most {N_VAL}", "1000"]),
        (["--n_examples", "8", "--max_eval_examples", "121"], ["`max_eval_examples`", f"at most {N_VAL}", "121"]),
        (["--n_examples", "8", "--methods", "[attattr, shapley]"], ["`methods`", "'shapley'", "'attattr'", "'taylor'"]),
        (["--n_examples", "8", "--fractions", "[0, 1.5]"], ["`fractions`", "[0, 1]", "1.5"]),
        (["--n_examples", "8", "--fractions", "[0.5, 0]"], ["`fractions`", "increasing from 0"]),
    ],
)
def test_bad_heads_options(trained, tmp_path, capsys, args, expected):
    out = tmp_path / "out"
    line = user_error(["heads", *trained.base, "--output_dir", out, *args], capsys, out)
    for text in expected:
        assert text in line, line


def test_effectiveness_n_examples_beyond_the_dev_set(trained, tmp_path, capsys):
    out = tmp_path / "out"
    line = user_error(["effectiveness", *trained.base, "--output_dir", out, "--n_examples", "500"], capsys, out)
    assert "`n_examples`" in line and f"at most {N_VAL}" in line


# ----------------------------------------------------------------------------- effectiveness, attribute, universality
def test_effectiveness_curves(trained, tmp_path):
    out = tmp_path / "effectiveness"
    analyze(
        [
            "effectiveness",
            *trained.base,
            "--output_dir",
            out,
            "--n_examples",
            "12",
            "--trainer.enable_progress_bar=false",
        ]
    )
    data = read_json(out / "effectiveness.json")
    assert data["n_examples"] == 12 and data["heads_pruned_per_layer"] == [0, 1, 2, 3, 4]
    curves = data["curves"]
    assert len(curves) == 4 and all(len(c) == 4 + 1 for c in curves.values())
    assert len({c[0] for c in curves.values()}) == 1  # nothing pruned: the same accuracy for every ranking
    assert len({c[-1] for c in curves.values()}) == 1  # every head pruned: the same again
    assert (out / "effectiveness.csv").is_file() and (out / "plots" / "effectiveness.png").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents*"))
    assert read_json(out / "summary.json")["status"] == "complete"


def test_attribute_completeness(trained, tmp_path):
    out = tmp_path / "attribute"
    analyze(
        [
            "attribute",
            *trained.base,
            "--output_dir",
            out,
            "--indices",
            "0",  # the natural forms: one value, one string (the list forms are tested elsewhere)
            "--text",
            "a0 w3 b1 w7 w2",
            "--plots",
            "true",
            "--trainer.enable_progress_bar=false",
        ]
    )
    index = read_json(out / "attributions.json")["examples"]
    assert [e["name"] for e in index] == ["validation-000000", "text-000"]
    model, datamodule = load_trained(trained)
    inputs = [dict(datamodule.dataset("validation")[0]), dict(datamodule.tokenizer("a0 w3 b1 w7 w2"))]
    for item, example in zip(index, inputs):
        saved = torch.load(out / item["file"], weights_only=True)  # tensors and plain values only
        assert (out / "plots" / f"{item['name']}.png").is_file()
        ids = torch.tensor([example["input_ids"]])
        assert saved["tokens"] == datamodule.tokenizer.convert_ids_to_tokens(example["input_ids"])
        attributions = saved["attributions"]  # [layer, head, query, key]
        assert tuple(attributions.shape) == (3, 4, ids.shape[1], ids.shape[1])
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        with torch.no_grad(), attention_scope(model) as ctrl, ctrl.capturing() as clean:
            probs = torch.softmax(model_logits(model, batch), -1)[0]
        # the raw attention of every layer is saved beside the maps (the report shows both)
        torch.testing.assert_close(saved["attention"], torch.stack([clean[layer][0] for layer in range(3)]))
        target = saved["target"]
        assert target == int(probs.argmax()) == item["predicted"]  # default target: the prediction
        assert saved["probs"] == pytest.approx(probs.tolist(), abs=1e-6)
        n = ids.shape[1]
        for layer in range(3):  # F(A) - F(A^l := 0), the baseline computed here
            with torch.no_grad(), attention_scope(model) as ctrl, ctrl.replacing(layer, torch.zeros(1, 4, n, n)):
                baseline = float(torch.softmax(model_logits(model, batch), -1)[0, target])
            gap = float(probs[target]) - baseline
            total = float(attributions[layer].double().sum())
            error = saved["completeness_error"][layer]
            assert error <= 1e-3  # the default tolerance of n_steps="auto", met on this model
            assert abs(total - gap) <= error * max(abs(gap), 1e-6) + 1e-5
            assert saved["convergence_delta"][layer] == pytest.approx(total - gap, abs=1e-5)


def test_universality(heads_dir, small_heads_dir, tmp_path, capsys):
    out = tmp_path / "universality"
    analyze(["universality", "--results", json.dumps([str(heads_dir), str(small_heads_dir)]), "--output_dir", out])
    data = read_json(out / "universality.json")
    pearson = torch.tensor(data["pearson"])
    assert pearson.shape == (2, 2)
    torch.testing.assert_close(pearson.diagonal(), torch.ones(2, dtype=pearson.dtype))
    a = torch.tensor(read_json(heads_dir / "importance.json")["importance"]["attattr"], dtype=torch.float64).flatten()
    b = torch.tensor(read_json(small_heads_dir / "importance.json")["importance"]["attattr"], dtype=torch.float64)
    expected = float(torch.corrcoef(torch.stack([a, b.flatten()]))[0, 1])
    assert pearson[0, 1] == pytest.approx(expected, abs=1e-9) and pearson[1, 0] == pytest.approx(expected, abs=1e-9)
    assert read_json(out / "summary.json")["command"][:2] == ["analyze.py", "universality"]

    alone = tmp_path / "alone"
    args = ["universality", "--results", json.dumps([str(heads_dir)]), "--output_dir", alone]
    line = user_error(args, capsys, alone, prog="analyze.py universality")
    assert "`results`" in line and "at least two" in line


# ----------------------------------------------------------------------------- known answers
def test_trained_model_importance_is_where_the_planted_interaction_is(trained, heads_dir):
    assert trained.val_acc >= 0.99, f"the quickstart model did not learn the task (dev accuracy {trained.val_acc})"
    attattr = torch.tensor(read_json(heads_dir / "importance.json")["importance"]["attattr"])
    # README: layer 0 holds nearly all the importance
    assert attattr[0].sum() > 0.5 * attattr.sum()
    order = pruning_order(attattr)
    assert order[-1].layer == 0 and order[-2].layer == 0
    # removing the two top-ranked heads costs far more than removing the two lowest-ranked ones
    model, datamodule = load_trained(trained)
    base_acc, base_loss = evaluate(model, datamodule)
    top_acc, top_loss = evaluate(silence_heads(model, order[-2:]), datamodule)
    low_acc, low_loss = evaluate(silence_heads(model, order[:2]), datamodule)
    assert low_acc == base_acc and top_acc <= low_acc
    assert top_loss - base_loss > 0.01 and top_loss - base_loss > 100 * abs(low_loss - base_loss)
    # pruning lowest-AttAttr heads first keeps the accuracy longer than random orders do
    pruning = read_json(heads_dir / "pruning.json")
    assert pruning["curves"]["attattr"]["acc"][FRACTIONS.index(0.5)] == pruning["unpruned"]["acc"]
    assert pruning["summary"]["attattr"]["acc"]["auc"] > pruning["summary"]["random"]["acc"]["auc"]


def test_a_head_with_zero_output_gets_the_lowest_importance():
    model = make_model("bert")  # 3 layers x 4 heads, random
    dead = (1, 2)
    model = silence_heads(model, [dead])
    batch = text_batch()
    result = AttentionIntegratedGradients(model).attribute(batch, n_steps=20, method="riemann_left")
    for pooling in ("max", "mean", "sum"):
        scores = attribution_head_scores(result, pooling)  # [batch, layer, head]
        assert torch.all(scores[:, dead[0], dead[1]] == 0), pooling  # zero gradient: exactly zero attribution
        others = scores.abs().flatten(1)[:, torch.arange(12) != dead[0] * 4 + dead[1]]
        assert torch.all(others.max(1).values > 0)
        mean = scores.mean(0).abs()
        assert mean[dead] == mean.min()
    for maps in result.attributions:
        assert torch.all(maps[dead[0], dead[1]] == 0)
    for variant, kwargs in (("official", {}), ("michel", {"labels": torch.tensor([0, 1, 2])})):
        taylor = taylor_importance(model, batch, variant=variant, **kwargs)
        assert torch.all(taylor[:, dead[0], dead[1]] == 0), variant
        total = taylor.sum(0)
        assert total[dead] == 0 and int(total.flatten().argmin()) == dead[0] * 4 + dead[1]
        assert (total > 0).sum() == 11, variant


# ----------------------------------------------------------------------------- transfer (universality)
def test_transfer_from_prunes_with_another_folders_ranking(trained, heads_dir, small_heads_dir, tmp_path):
    """`--transfer_from` adds a curve pruned with the other folder's AttAttr ranking; universality collects it."""
    out = tmp_path / "transfer"
    analyze(["heads", *trained.base, "--output_dir", out, *SMALL_ARGS, "--transfer_from", json.dumps([str(heads_dir)])])
    pruning = read_json(out / "pruning.json")
    name = next(k for k in pruning["curves"] if k.startswith("transfer:"))
    other = read_json(heads_dir / "importance.json")["importance"]["attattr"]
    mine = read_json(out / "importance.json")["importance"]
    assert mine[name] == other
    # same model, same dev set, same ranking: the transferred curve is the other folder's AttAttr curve
    theirs = read_json(heads_dir / "pruning.json")
    for fraction, acc in zip(pruning["fractions"], pruning["curves"][name]["acc"]):
        assert acc == theirs["curves"]["attattr"]["acc"][theirs["fractions"].index(fraction)]
    universality = tmp_path / "universality"
    analyze(["universality", "--results", json.dumps([str(small_heads_dir), str(out)]), "--output_dir", universality])
    transfer = read_json(universality / "universality.json")["transfer"]
    assert len(transfer) == 1 and set(next(iter(transfer.values()))["acc"]) == {"attattr", name}
    assert list((universality / "plots").glob("transfer_*.png"))


# ----------------------------------------------------------------- part 2: tree, faithfulness, attack


@pytest.fixture(scope="module")
def faithfulness_dir(trained, tmp_path_factory):
    """`analyze.py faithfulness` on the trained quickstart run (planted pairs known); stdout in `../stdout.txt`."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("faithfulness") / "out"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(sys, "argv", [sys.argv[0]])
        analyze(
            [
                "faithfulness",
                *trained.base,
                "--output_dir",
                out,
                "--n_examples",
                "48",
                "--ks",
                "[1, 2, 4, 8, 16]",
                "--n_random",
                "2",
                "--trainer.enable_progress_bar=false",
            ]
        )
    (out.parent / "stdout.txt").write_text(printed.getvalue(), encoding="utf-8")
    return out


def test_faithfulness_attattr_beats_random_deletions(faithfulness_dir):
    summary = read_json(faithfulness_dir / "faithfulness.json")
    curves = summary["curves"]
    assert set(curves) == {"attattr", "attention", "rollout", "grad_attention", "random"}
    assert summary["n_examples"] == 48 and summary["ks"] == [1, 2, 4, 8, 16]
    # deleting AttAttr's top connections hurts the prediction far more than deleting random ones
    assert curves["attattr"]["drop_area"] > 0.2 > 10 * max(curves["random"]["drop_area"], 0.0)
    assert curves["attattr"]["drop"][-1] >= curves["attattr"]["drop"][0]
    # the tree's own edges matter more than as many random connections of the same layers
    tree = summary["trees"]["attattr"]
    assert tree["mean_edges"] > 0 and tree["drop"] > tree["random_drop"] + 0.01
    assert set(summary["seconds_per_example"]) == {"attattr", "attention", "rollout", "grad_attention"}
    for name in ("deletion_curves.csv", "deletion_curves_all_layers.csv"):
        rows = (faithfulness_dir / name).read_text().splitlines()
        assert rows[0] == "method,k,mean_prob_drop,flip_rate" and len(rows) == 1 + 5 * 5
        assert (faithfulness_dir / "plots" / name.replace(".csv", ".png")).stat().st_size > 0
    assert "| attattr |" in (faithfulness_dir / "faithfulness.md").read_text()


def test_cross_layer_removal_and_completeness_beside_the_rankings(faithfulness_dir):
    """Word pairs removed in every layer: a curve per method and random; the completeness of the ranked maps."""
    summary = read_json(faithfulness_dir / "faithfulness.json")
    cross = summary["cross_layer"]
    assert set(cross["curves"]) == set(summary["curves"]) and "sum over layers" in cross["rule"]
    assert cross["curves"]["attattr"]["drop_area"] > 0.2 > 5 * max(cross["curves"]["random"]["drop_area"], 0.0)
    assert len(cross["curves"]["random"]["drop_area_per_seed"]) == 2 and "attattr vs random" in cross["paired"]
    # removing a pair in every layer removes at least what removing it in one layer does: at k = 1 the
    # cross-layer curve starts at or above the per-layer one for AttAttr's own ranking
    assert cross["curves"]["attattr"]["drop"][0] >= summary["curves"]["attattr"]["drop"][0] - 0.05
    completeness = summary["completeness"]
    assert completeness["method"] == "attattr" and completeness["n_maps"] == 48 * 3
    assert 0 <= completeness["median"] <= completeness["worst"] < 0.1  # adaptive integration, tolerance 1e-3
    md = (faithfulness_dir / "faithfulness.md").read_text()
    assert "Cross-layer removal: word pairs across layers" in md and "Completeness of the 144 AttAttr maps" in md
    printed = (faithfulness_dir.parent / "stdout.txt").read_text()
    assert "| method | drop area, per layer | drop area, all layers | top-1 (words) |" in printed
    assert f"results: {faithfulness_dir}" in printed and "relative error worst" in printed
    areas = summary["curves"]["attattr"]["drop_area"], cross["curves"]["attattr"]["drop_area"]
    assert "| attattr | {:.3f} | {:.3f} |".format(*areas) in printed


def test_attattr_finds_the_planted_pair(faithfulness_dir):
    """The synthetic task's label is the XOR of two planted words: AttAttr ranks their connection near the top."""
    truth = read_json(faithfulness_dir / "groundtruth.json")
    assert truth["n_examples"] == 48 and truth["default_convention"] == "words"
    assert truth["source"] == "the data module's planted pairs" and "either direction" in truth["hit"]
    assert list(truth["conventions"]) == ["words", "tokens"]
    tokens, words = (truth["conventions"][c]["methods"] for c in ("tokens", "words"))
    attattr = tokens["attattr"]
    # ~14 tokens x 3 layers: ~600 connections, 2 of them planted; chance of a top-3 hit is about 1 %
    assert attattr["best_layer_top3_rate"] >= 0.25, attattr
    assert attattr["top3"] >= 0.15, attattr
    assert set(tokens) == set(words) == {"attattr", "attention", "rollout", "grad_attention"}
    for name in tokens:
        # one token per word here: the word maps are the token maps, the words convention only drops
        # competitors ([CLS]/[SEP] and self-edges), so it finds the pair at least as often
        for key in ("top1", "top3", "best_layer_top1_rate", "best_layer_top3_rate"):
            assert words[name][key] >= tokens[name][key], (name, key)
        assert words[name]["tree_connects"] == tokens[name]["tree_connects"]
        # the graph keeps every tree edge, so it joins the pair at least as often as the tree
        assert words[name]["graph_connects"] >= words[name]["tree_connects"]
        assert 0 <= words[name]["touch1"] <= 1
    removal = truth["removal"]
    assert len(removal["per_layer"]["drop"]) == 3
    assert removal["largest_single_layer_drop"] >= max(removal["per_layer"]["drop"]) - 1e-6
    md = (faithfulness_dir / "faithfulness.md").read_text()
    assert "Convention `words` (default): edges between two distinct non-special words" in md
    assert "Convention `tokens`: every token edge" in md


def truth_file(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def test_truth_file_scores_the_examples_it_names(trained, tmp_path):
    """`--truth`: the file's examples, in its order, the first `n_examples`; word and token units agree."""
    _, datamodule = load_trained(trained)
    positions = [datamodule.examples("validation")[i].positions for i in range(3)]
    lines = [
        {"index": 1, "pairs": [[positions[1][1] + 1, positions[1][0] + 1]], "unit": "token", "layer": 0},
        {"index": 0, "pairs": [list(positions[0])], "unit": "word"},
        {"index": 2, "pairs": [list(positions[2])], "unit": "word"},
    ]
    common = [
        *trained.base,
        "--ks",
        "[1, 4]",
        "--n_random",
        "1",
        "--n_steps",
        "6",
        "--method",
        "riemann_left",
        "--trainer.enable_progress_bar=false",
    ]
    path = truth_file(tmp_path / "truth.jsonl", lines)
    analyze(["faithfulness", *common, "--output_dir", tmp_path / "file", "--truth", path, "--n_examples", "2"])
    analyze(["faithfulness", *common, "--output_dir", tmp_path / "module", "--n_examples", "2"])
    a, b = (read_json(tmp_path / name / "groundtruth.json") for name in ("file", "module"))
    assert a["n_examples"] == b["n_examples"] == 2 and a["source"] == f"truth file {path}"
    assert a["n_examples_with_layer"] == 1 and b["n_examples_with_layer"] == 0
    for convention in ("words", "tokens"):
        for name, row in b["conventions"][convention]["methods"].items():
            mine = a["conventions"][convention]["methods"][name]
            assert 0 <= mine["planted_layer_top1"] <= 1 and "planted_layer_top1" not in row
            for key in ("top1", "top3", "touch1", "layer_top1", "tree_connects", "graph_connects"):
                assert mine[key] == pytest.approx(row[key]), (convention, name, key)
    assert a["removal"]["all_layers"] == pytest.approx(b["removal"]["all_layers"], abs=1e-6)
    assert a["removal"]["per_layer"]["drop"] == pytest.approx(b["removal"]["per_layer"]["drop"], abs=1e-6)
    fa, fb = (read_json(tmp_path / name / "faithfulness.json") for name in ("file", "module"))
    for part in ("curves", "cross_layer"):
        for name, curve in (fb[part] if part == "curves" else fb[part]["curves"]).items():
            other = fa[part][name] if part == "curves" else fa[part]["curves"][name]
            assert other["drop"] == pytest.approx(curve["drop"], abs=1e-6), (part, name)
    summary = read_json(tmp_path / "file" / "summary.json")
    assert summary["options"]["truth"] == str(path) and len(summary["options"]["truth_sha256"]) == 64
    assert sorted(PartStore(tmp_path / "file" / "parts" / "faithfulness").done()) == [0, 1]
    assert "top-1 in the planted layer" in (tmp_path / "file" / "faithfulness.md").read_text()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{'index': 0}", "line 2: expected one JSON object per line, but got invalid JSON"),
        ('{"index": 0, "pairs": [[1, 2]]}', "line 2: expected the keys 'index', 'pairs' and 'unit'"),
        ('{"index": 120, "pairs": [[1, 2]], "unit": "word"}', f"line 2: expected `index` in [0, {N_VAL - 1}]"),
        ('{"index": 3, "pairs": [[1, 40]], "unit": "token"}', "line 2: expected token positions in [0, "),
        ('{"index": 3, "pairs": [[1, 2]], "unit": "word", "layer": 3}', "line 2: expected `layer` in [0, 2]"),
    ],
)
def test_bad_truth_files(trained, tmp_path, capsys, line, expected):
    path = tmp_path / "truth.jsonl"
    path.write_text('{"index": 1, "pairs": [[1, 2]], "unit": "word"}\n' + line + "\n", encoding="utf-8")
    out = tmp_path / "out"
    error = user_error(["faithfulness", *trained.base, "--output_dir", out, "--truth", path], capsys, out)
    assert f"`truth` {path}, {expected}" in error, error


def test_tree_outputs_for_dev_examples_and_text(trained, tmp_path, capsys):
    import networkx as nx

    out = tmp_path / "trees"
    capsys.readouterr()
    analyze(
        [
            "tree",
            *trained.base,
            "--output_dir",
            out,
            "--index",
            "[0, 5]",
            "--text",
            '["w1 a1 w2 w3 b0 w4"]',
            "--trainer.enable_progress_bar=false",
        ]
    )
    printed = capsys.readouterr().out
    index = read_json(out / "trees.json")
    assert [e["name"] for e in index["examples"]] == ["validation-000000", "validation-000005", "text-000"]
    for item in index["examples"]:
        name = item["name"]
        data = read_json(out / "trees" / f"{name}.json")
        assert data["root"] == 0 and data["tau"] == 0.4
        graph = nx.read_graphml(out / "trees" / f"{name}.graphml")
        assert graph.number_of_edges() == len(data["edges"]) == item["n_edges"]
        assert all(d <= 1 for _, d in graph.in_degree())  # one parent per token
        assert (out / "trees" / f"{name}.dot").read_text().startswith("digraph")
        assert (out / "plots" / f"{name}.png").stat().st_size > 0 and (out / "plots" / f"{name}.svg").exists()
        assert f"{name} (predicted" in printed
    assert "[CLS]" in printed and "(root)" in printed
    assert index["examples"][2]["tokens"] == ["[CLS]", "w1", "a1", "w2", "w3", "b0", "w4", "[SEP]"]
    saved = torch.load(out / "trees" / "text-000.pt", weights_only=True)
    assert saved["tokens"] == index["examples"][2]["tokens"] and tuple(saved["maps"].shape) == (3, 8, 8)
    for edge in read_json(out / "trees" / "text-000.json")["edges"]:  # the edges come from these maps
        assert saved["maps"][edge["layer"], edge["parent"], edge["child"]] == pytest.approx(edge["attribution"])
    # completeness beside the tree: per layer in each file, the worst printed and in the index
    for item in index["examples"]:
        data = read_json(out / "trees" / f"{item['name']}.json")
        assert data["mode"] == "tree" and len(data["completeness_error"]) == len(data["convergence_delta"]) == 3
        worst = max(data["completeness_error"])
        assert data["max_completeness_error"] == item["max_completeness_error"] == worst
        assert data["completeness_error"][data["max_completeness_error_layer"]] == worst
        line = f"worst completeness error of these maps: {worst:.2e} (layer {data['max_completeness_error_layer']})"
        assert line in printed
    assert index["mode"] == "tree"
    assert index["max_completeness_error"] == max(item["max_completeness_error"] for item in index["examples"])
    assert read_json(out / "summary.json")["result"]["max_completeness_error"] == index["max_completeness_error"]


def test_tree_graph_mode(trained, tmp_path, capsys):
    """`--mode graph`: the tree's tokens and edges plus every edge the one-parent rule drops, same files."""
    import networkx as nx

    from lightning_attattr.analysis.trees import build_graph, build_tree, tree_to_json

    out = tmp_path / "graphs"
    capsys.readouterr()
    analyze(
        [
            "tree",
            *trained.base,
            "--output_dir",
            out,
            "--mode",
            "graph",
            "--text",
            '["w1 a1 w2 w3 b0 w4"]',
            "--tau",
            "0.2",
            "--trainer.enable_progress_bar=false",
        ]
    )
    printed = capsys.readouterr().out
    assert read_json(out / "trees.json")["mode"] == "graph"
    data = read_json(out / "trees" / "text-000.json")
    saved = torch.load(out / "trees" / "text-000.pt", weights_only=True)
    graph = build_graph(saved["maps"], saved["tokens"], tau=0.2)
    assert data["mode"] == "graph" and {k: data[k] for k in tree_to_json(graph)} == tree_to_json(graph)
    tree_edges = {
        (e["parent"], e["child"], e["layer"]) for e in tree_to_json(build_tree(saved["maps"], tau=0.2))["edges"]
    }
    assert {(e["parent"], e["child"], e["layer"]) for e in data["edges"] if e["in_tree"]} == tree_edges
    assert len(data["edges"]) >= len(tree_edges) > 0
    read = nx.read_graphml(out / "trees" / "text-000.graphml", force_multigraph=True)
    assert read.number_of_edges() == len(data["edges"]) and read.graph["mode"] == "graph"
    assert (out / "trees" / "text-000.dot").read_text().startswith("digraph attribution_graph {")
    assert (out / "plots" / "text-000.png").stat().st_size > 0
    assert "not in the tree (marked +)" in printed and "worst completeness error of these maps" in printed


def test_tree_on_words_merges_wordpieces(glue, tmp_path):
    """`--words true`: maps summed over a word's pieces (each layer's total kept), tree on words."""
    from transformers import BertTokenizer

    vocab = tmp_path / "vocab.txt"
    vocab.write_text(
        "\n".join(
            [
                "[PAD]",
                "[UNK]",
                "[CLS]",
                "[SEP]",
                "[MASK]",
                "the",
                "ride",
                "##s",
                "are",
                "fun",
                "un",
                "##bel",
                "##iev",
                "##able",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    BertTokenizer(vocab=str(vocab)).save_pretrained(str(tmp_path / "tok"))
    out = tmp_path / "words"
    base = [
        "tree",
        "--model.model_config",
        TINY_BERT,
        "--data",
        "GlueDataModule",
        "--data.task_name",
        "sst2",
        "--data.data_dir",
        glue,
        "--data.model_name_or_path",
        tmp_path / "tok",
        "--data.max_seq_length",
        "48",
        "--text",
        '["the rides are unbelievable fun"]',
        "--n_steps",
        "4",
        "--method",
        "riemann_left",
        "--trainer.enable_progress_bar=false",
    ]
    analyze([*base, "--output_dir", out, "--words", "true", "--mode", "graph", "--seed_everything", "3"])
    analyze([*base, "--output_dir", tmp_path / "pieces", "--seed_everything", "3"])
    words = torch.load(out / "trees" / "text-000.pt", weights_only=True)
    pieces = torch.load(tmp_path / "pieces" / "trees" / "text-000.pt", weights_only=True)
    assert pieces["tokens"] == ["[CLS]", "the", "ride", "##s", "are", "un", "##bel", "##iev", "##able", "fun", "[SEP]"]
    assert words["tokens"] == ["[CLS]", "the", "rides", "are", "unbelievable", "fun", "[SEP]"]
    assert words["words"] and not pieces["words"]
    assert "".join(words["tokens"]) == "".join(t.removeprefix("##") for t in pieces["tokens"])
    torch.testing.assert_close(words["maps"].sum((1, 2)), pieces["maps"].sum((1, 2)), atol=1e-6, rtol=1e-5)
    graph = read_json(out / "trees" / "text-000.json")  # a graph over the words
    assert graph["mode"] == "graph" and [node["token"] for node in graph["nodes"]] == [
        words["tokens"][node["index"]] for node in graph["nodes"]
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["tree", "--tau", "0"], ["`tau`", "(0, 1]", "0"]),
        (["tree", "--tau", "1.5"], ["`tau`", "1.5"]),
        (["tree", "--root", "top"], ["`root`", "'cls'", "'official'", "'top'"]),
        (["tree", "--mode", "dag"], ["`mode`", "'tree'", "'graph'", "'dag'"]),
        (["tree", "--index", f"[{N_VAL}]"], ["`index`", f"[0, {N_VAL - 1}]", str(N_VAL)]),
        (["tree", "--text", '["  "]'], ["`text`", "non-empty", "item 0"]),
        (["tree", "--text", '["a0 b1"]', "--text_pair", '["w1"]'], ["`text_pair`", "single sentences"]),
        (["faithfulness", "--ks", "[1, 100000]"], ["`ks`", "shortest example", "100000"]),
        (["faithfulness", "--ks", "[0]"], ["`ks`", ">= 1"]),
        (["faithfulness", "--edge_methods", "[attattr, lime]"], ["`edge_methods`", "'lime'", "'rollout'"]),
        (["faithfulness", "--n_examples", "1000"], ["`n_examples`", f"at most {N_VAL}"]),
        (["attack"], ["text data module", "SyntheticDataModule"]),
    ],
)
def test_bad_part2_options(trained, tmp_path, capsys, args, expected):
    out = tmp_path / "out"
    line = user_error([args[0], *trained.base, "--output_dir", out, *args[1:]], capsys, out)
    for text in expected:
        assert text in line, line


def test_attack_refuses_the_synthetic_task_before_the_model_is_built(trained, tmp_path, capsys, monkeypatch):
    """The quickstart has no raw texts: one line naming what attack needs and what it got, and no model work."""
    built = []
    original = AttAttrClassifier.__init__

    @functools.wraps(original)  # keeps the signature the parser reads
    def spy(self, *args, **kwargs):
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(AttAttrClassifier, "__init__", spy)
    out = tmp_path / "out"
    line = user_error(["attack", *trained.base, "--output_dir", out], capsys, out)
    for text in ("`data`", "text_a, text_b, labels", "GlueDataModule", "SyntheticDataModule", "SyntheticExample"):
        assert text in line, line
    assert built == []  # refused before the model (and its checkpoint) was touched

    # the same check guards the Python entry point, before the checkpoint loads
    from lightning_attattr.core.checks import ArgumentError
    from lightning_attattr.data.modules import TextExamples
    from lightning_attattr.lightning.attack import check_text_data

    class Texts:
        def examples(self, split):
            return TextExamples(split, ["a b"], None, [0])

    check_text_data(Texts())  # raw texts: accepted
    with pytest.raises(ArgumentError, match="no `examples"):
        check_text_data(object())


TINY_BERT = json.dumps(
    {
        "model_type": "bert",
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 64,
    }
)


def glue_attack_args(task, glue, tokenizer_dir, out) -> list:
    """`attack` with the tiny BERT on the GLUE files of ``task``, writing to ``out``, every trigger length allowed."""
    return [
        "attack",
        "--model.model_config",
        TINY_BERT,
        "--data",
        "GlueDataModule",
        "--data.task_name",
        task,
        "--data.data_dir",
        glue,
        "--data.model_name_or_path",
        tokenizer_dir,
        "--data.max_seq_length",
        "48",
        "--output_dir",
        out,
        "--min_tokens",
        "0",
    ]


@pytest.mark.parametrize("task", ["sst2", "rte"])
def test_attack_end_to_end_on_glue_files(glue, tokenizer_dir, tmp_path, task):
    """Mining on the training file, insertion into every dev example, per-class table with a random control."""
    out = tmp_path / "attack"
    analyze(
        [
            *glue_attack_args(task, glue, tokenizer_dir, out),
            "--threshold",
            "0",
            "--n_random",
            "2",
            "--n_steps",
            "4",
            "--method",
            "riemann_left",
            "--trainer.enable_progress_bar=false",
        ]
    )
    report = read_json(out / "attack.json")
    assert 1 <= len(report["triggers"]) <= 3
    assert all(t["tokens"] and not {"[CLS]", "[SEP]"} & set(t["tokens"]) for t in report["triggers"])
    if task == "sst2":
        assert all(s == "a" for t in report["triggers"] for s in t["segments"])
    table = report["table"]
    assert table["classes"] == (["0", "1"] if task == "sst2" else ["entailment", "not_entailment"])
    for row in table["rows"]:
        assert len(row["triggers"]) == len(report["triggers"])
        if row["clean"] is not None:
            assert row["control"]["n"] == 2 * len(report["triggers"])
    overall = report["overall_accuracy"]
    assert 0 <= overall["clean"] <= 1 and len(overall["controls"][0]) == 2
    md = (out / "attack.md").read_text()
    assert "random control" in md and "mean change" in md
    assert read_json(out / "summary.json")["status"] == "complete"


def test_parts_of_an_older_layout_are_not_resumed(trained, faithfulness_dir, tmp_path, capsys):
    """A folder whose manifest records another parts layout is refused (its parts lack newer keys)."""
    old = tmp_path / "old"
    shutil.copytree(faithfulness_dir, old, ignore=shutil.ignore_patterns(".lock"))
    manifest = read_json(old / "manifest.json")
    assert manifest["arguments"]["format"] == 4
    manifest["arguments"]["format"] = 3
    (old / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    args = [
        "faithfulness",
        *trained.base,
        "--output_dir",
        old,
        "--n_examples",
        "48",
        "--ks",
        "[1, 2, 4, 8, 16]",
        "--n_random",
        "2",
        "--trainer.enable_progress_bar=false",
    ]
    line = user_error(args, capsys)
    assert "format" in line and "--overwrite true" in line


@pytest.mark.parametrize("pair", [False, True])
def test_trigger_framing_reproduces_the_tokenizer(tokenizer_dir, pair):
    """Wordpieces framed by `Framing` equal the tokenizer's own encoding: ids, token types and pair truncation."""
    from transformers import AutoTokenizer

    from lightning_attattr.analysis.triggers import Trigger, insert_trigger
    from lightning_attattr.lightning.attack import Framing

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    framing = Framing(tok)
    texts = [("the ride is fun", "very good"), ("hello world " * 9, "very bad " * 4), ("nan", "the ride " * 20)]
    for a, b in texts:
        for max_length in (8, 13, 64):
            args = (a, b) if pair else (a,)
            expected = tok(*args, truncation=True, max_length=max_length, return_token_type_ids=True)
            pieces_a, pieces_b = insert_trigger(
                tok.tokenize(a),
                tok.tokenize(b) if pair else None,
                Trigger((), (), ()),
                max_tokens=max_length - framing.n_special(pair),
            )
            ids_b = None if pieces_b is None else tok.convert_tokens_to_ids(pieces_b)
            got = framing.frame(tok.convert_tokens_to_ids(pieces_a), ids_b)
            assert got["input_ids"] == expected["input_ids"], (a, b, max_length)
            assert got["token_type_ids"] == expected["token_type_ids"], (a, b, max_length)


def test_attribute_rows_and_top_k_keep_what_the_full_maps_give(trained, tmp_path, capsys):
    """`--rows -1` / `--top_k 6` save the reduction of the maps the plain run saves; the report skips them."""
    common = [*trained.base, "--indices", "0", "1", "--n_steps", "3", "--trainer.enable_progress_bar=false"]
    analyze(["attribute", *common, "--output_dir", tmp_path / "full"])
    analyze(["attribute", *common, "--output_dir", tmp_path / "rows", "--rows", "-1", "0"])
    analyze(["attribute", *common, "--output_dir", tmp_path / "top", "--top_k=6"])
    assert read_json(tmp_path / "full" / "attributions.json")["reduction"] is None
    assert read_json(tmp_path / "rows" / "attributions.json")["reduction"] == {"rows": [-1, 0]}
    assert read_json(tmp_path / "top" / "attributions.json")["reduction"] == {"top_k": 6}
    for item in read_json(tmp_path / "full" / "attributions.json")["examples"]:
        full = torch.load(tmp_path / "full" / item["file"], weights_only=True)
        rows = torch.load(tmp_path / "rows" / item["file"], weights_only=True)
        top = torch.load(tmp_path / "top" / item["file"], weights_only=True)
        maps, n = full["attributions"], len(full["tokens"])  # [layer, head, n, n]
        assert "attributions" not in rows and rows["reduction"] == {"rows": [-1, 0]}
        assert rows["query_positions"].tolist() == [n - 1, 0]
        torch.testing.assert_close(rows["rows"], maps[:, :, [n - 1, 0]], rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(rows["attention"], full["attention"][:, :, [n - 1, 0]])
        flat = maps.flatten(1)  # [layer, head * n * n]
        torch.testing.assert_close(
            top["top_values"], flat.gather(1, flat.abs().topk(6, dim=1).indices), rtol=1e-6, atol=1e-9
        )
        assert top["top_indices"].shape == (3, 6, 3) and top["completeness_error"] == full["completeness_error"]
    # the report draws full maps: a reduced folder is skipped, with the reason
    line = user_error(["report", tmp_path / "rows"], capsys, prog="analyze.py report")
    assert "reduced (rows=[-1, 0])" in line and "full maps only" in line
    analyze(["report", tmp_path, "--output", tmp_path / "all.html"])  # the full folder is drawn, the others skipped
    page = (tmp_path / "all.html").read_text(encoding="utf-8")
    assert "full/validation-000001" in page and "rows/validation-000000" not in page


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--rows", "0", "0"], ["`rows`", "distinct int query positions", "[0, 0]"]),
        (["--rows", "[]"], ["`rows`", "[]"]),
        (["--top_k", "0"], ["`top_k`", "positive integer", "0"]),
        (["--rows", "-1", "--top_k", "3"], ["at most one of `rows` and `top_k`"]),
        (["--rows", "-1", "--plots", "true"], ["`plots` false with `rows` or `top_k`"]),
        (["--top_k", "3", "--report", "true"], ["`report` false with `rows` or `top_k`"]),
        (["--rows", "500"], ["`rows` within every example's tokens", "[500]"]),
    ],
)
def test_bad_reduction_options(trained, tmp_path, capsys, args, expected):
    out = tmp_path / "out"
    line = user_error(["attribute", *trained.base, "--output_dir", out, *args], capsys, out)
    for text in expected:
        assert text in line, line


def test_report_subcommand_and_attribute_report(trained, tmp_path, capsys):
    """`attribute --report true` writes report.html beside the maps; `analyze.py report DIR` rewrites it."""
    out = tmp_path / "attribute"
    analyze(
        [
            "attribute",
            *trained.base,
            "--output_dir",
            out,
            "--indices",
            "[0, 1]",
            "--report",
            "true",
            "--plots",
            "false",
            "--trainer.enable_progress_bar=false",
        ]
    )
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "validation-000001" in page and "http://" not in page.replace("http://www.w3.org", "")
    assert f"xdg-open {out / 'report.html'}" in capsys.readouterr().out
    (out / "report.html").unlink()
    analyze(["report", out, "--output", tmp_path / "elsewhere.html"])
    assert (tmp_path / "elsewhere.html").read_text(encoding="utf-8") == page
    line = user_error(["report", tmp_path / "missing"], capsys, prog="analyze.py report")
    assert "`results_dir`" in line and "missing" in line


# ----------------------------------------------------------------------------- the console and the command line
def documented_commands() -> list[list[str]]:
    """Every `analyze.py SUBCOMMAND ...` example of analyze.py's docstring, README, docs/ and Makefile, as argv."""
    import re
    import shlex

    texts = [(ROOT / "analyze.py").read_text(encoding="utf-8"), (ROOT / "README.md").read_text(encoding="utf-8")]
    texts += [page.read_text(encoding="utf-8") for page in sorted((ROOT / "docs").rglob("*.md"))]
    texts.append((ROOT / "Makefile").read_text(encoding="utf-8").replace("$(LAST_QUICKSTART)", "RUN"))
    commands = []
    for text in texts:
        text = text.replace("\\\n", " ")
        for line in text.splitlines():
            match = re.match(  # command lines (not prose): `python analyze.py SUB ...`, `$(PY) analyze.py SUB ...`
                r"\s*(?:\.venv/bin/python|python|\$\(PY\)) analyze\.py "
                r"((attribute|tree|heads|effectiveness|faithfulness|attack|universality) .*)",
                line,
            )
            if match and "--help" not in match.group(1):
                commands.append(shlex.split(match.group(1).split("  #")[0]))
    return commands


def test_every_documented_command_line_parses_to_what_it_says(trained, tmp_path, monkeypatch):
    """The natural forms (`--text "a film"`, `--results a b`) and the list forms, as the docs show them."""
    from lightning_attattr.analysis_cli import AnalyzeCLI, list_options

    parsed: list[tuple[str, dict]] = []
    monkeypatch.setattr(AnalyzeCLI, "_run_subcommand", lambda self, sub: parsed.append((sub, self.config[sub])))
    monkeypatch.setattr(
        "lightning_attattr.analysis_cli._universality", lambda **kw: parsed.append(("universality", kw))
    )
    # the commands run on this test's synthetic checkpoint: `attack`'s check for raw GLUE texts is not what is tested
    monkeypatch.setattr("lightning_attattr.lightning.attack.check_text_data", lambda datamodule: None)
    commands = documented_commands()
    forms = {(c[0], c[i]) for c in commands for i in range(len(c)) if c[i].startswith("--")}
    assert {("universality", "--results"), ("attribute", "--text"), ("tree", "--index")} <= forms, forms
    for command in commands:
        sub, options = command[0], list_options(command[0])
        argv = []
        for k, token in enumerate(command):  # this run's config, checkpoint and folders for the placeholders
            before = command[k - 1] if k else ""
            if before == "--config" or token.endswith("config.yaml"):
                token = str(trained.config)
            elif before == "--ckpt_path" or token.endswith(".ckpt"):
                token = str(trained.ckpt)
            elif before == "--output_dir":
                token = str(tmp_path / "out")
            argv.append(token)
        parsed.clear()
        analyze(argv)
        ((name, got),) = parsed
        assert name == sub
        for k, token in enumerate(command):
            option = token.removeprefix("--")
            if not token.startswith("--") or option not in options:
                continue
            values = []
            for value in command[k + 1 :]:
                if value.startswith("--"):
                    break
                values.append(value)
            if len(values) == 1 and values[0].startswith("["):
                expected = yaml.safe_load(values[0])  # the list form
            else:
                expected = [options[option](v) for v in values]  # the natural form: one value or several
            assert got[option] == expected, (command, option, got[option])


def test_list_options_accept_one_value_several_or_a_list(heads_dir, small_heads_dir, tmp_path):
    from lightning_attattr.analysis_cli import natural_lists

    kinds = {"text": str, "indices": int, "fractions": float}
    assert natural_lists(["--text", "a, b", "--indices", "0", "3", "--fractions=0.5"], kinds) == [
        "--text",
        '["a, b"]',
        "--indices",
        "[0, 3]",
        "--fractions=[0.5]",
    ]
    untouched = ["--text", '["x"]', "--indices", "null", "--fractions=[0, 1]", "--other", "a", "b"]
    assert natural_lists(untouched, kinds) == untouched
    # several folders after --results, end to end: the same matrices as the list form
    one = analyze(["universality", "--results", heads_dir, small_heads_dir, "--output_dir", tmp_path / "a"])
    two = analyze(
        [
            "universality",
            "--results",
            json.dumps([str(heads_dir), str(small_heads_dir)]),
            "--output_dir",
            tmp_path / "b",
        ]
    )
    assert one["pearson"] == two["pearson"] and len(one["tasks"]) == 2


def test_subcommand_help_shows_its_own_options_first_and_one_usage(capsys, monkeypatch):
    from lightning_attattr.analysis_cli import AnalyzeCLI

    built = []
    original = AnalyzeCLI._prepare_subcommand_parser
    monkeypatch.setattr(
        AnalyzeCLI,
        "_prepare_subcommand_parser",
        lambda self, klass, sub, **kw: built.append(sub) or original(self, klass, sub, **kw),
    )
    with pytest.raises(SystemExit) as info:
        analyze(["heads", "--help"])
    assert info.value.code == 0 and built == ["heads"]  # only the parser asked for is built
    out = capsys.readouterr().out
    assert len(out.splitlines()) < 300, len(out.splitlines())
    help_part = out[out.index("heads options:") :]
    order = [help_part.index(o) for o in ("--n_examples", "--model.model_name_or_path", "--trainer.devices")]
    assert order == sorted(order), order
    assert "--trainer.max_epochs" not in out and "--optimizer" not in out  # ignored by an analysis: hidden
    assert "several (--NAME a b)" in help_part
    analyze(["--help"])
    out = capsys.readouterr().out
    assert out.count("usage:") == 1 and all(f"  {s} " in out for s in ("attribute", "universality", "report"))


def test_attribute_writes_no_plots_unless_asked_and_ends_with_the_results_path(trained, tmp_path, capsys):
    out = tmp_path / "attribute"
    analyze(["attribute", *trained.base, "--output_dir", out, "--indices", "1", "--trainer.enable_progress_bar=false"])
    assert (out / "attributions.json").is_file() and not (out / "plots").exists()
    assert not (out / ".lock").exists()
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("attribute: complete in ") and last.endswith(f"; results in {out}"), last


def test_progress_bars_are_named_by_stage(trained, tmp_path, capfd):
    analyze(
        [
            "heads",
            *trained.base,
            *SMALL_ARGS[:-1],
            "--output_dir",
            tmp_path / "heads",
            "--trainer.enable_progress_bar=true",
        ]
    )
    captured = capfd.readouterr()
    err = captured.out + captured.err
    assert "importance" in err and "pruning" in err and "Predicting" not in err, err


def test_a_failed_attack_does_not_block_its_retry(glue, tokenizer_dir, tmp_path, capsys):
    """The advice of the error ("lower `threshold`") works on the same folder: the failed run left nothing."""
    out = tmp_path / "attack"
    args = [
        *glue_attack_args("sst2", glue, tokenizer_dir, out),
        "--n_random",
        "1",
        "--n_steps",
        "2",
        "--method",
        "riemann_left",
        "--trainer.enable_progress_bar=false",
    ]
    line = user_error([*args, "--threshold", "1e9"], capsys)
    assert "lower `threshold`" in line and not out.exists()
    analyze([*args, "--threshold", "0"])
    assert read_json(out / "summary.json")["status"] == "complete"


def test_results_folder_after_a_user_error_keeps_only_what_was_there(tmp_path):
    from lightning_attattr.analysis.store import ResultsFolder
    from lightning_attattr.core.checks import ArgumentError

    def fail(folder: ResultsFolder, error: Exception) -> None:
        with pytest.raises(type(error)), folder:
            folder.file("parts/x/part.bin").write_bytes(b"1")
            raise error

    new = tmp_path / "new"
    fail(ResultsFolder(new, "attack", {"threshold": 1}), ArgumentError("lower `threshold`"))
    assert not new.exists()  # made by the failed run: removed
    empty = tmp_path / "empty"
    empty.mkdir()
    fail(ResultsFolder(empty, "attack", {"threshold": 1}), ArgumentError("no"))
    assert empty.is_dir() and not any(empty.iterdir())  # the user's folder stays, emptied of what the run wrote
    crash = tmp_path / "crash"
    fail(ResultsFolder(crash, "attack", {"threshold": 1}), RuntimeError("a bug or a kill: resume later"))
    assert (crash / "manifest.json").is_file() and (crash / "parts/x/part.bin").is_file()
    fail(ResultsFolder(crash, "attack", {"threshold": 1}), ArgumentError("resumed run: its parts stay"))
    assert (crash / "parts/x/part.bin").is_file() and not (crash / ".lock").exists()
    with ResultsFolder(crash, "attack", {"threshold": 1}):  # and it resumes
        assert (crash / ".lock").exists()
    assert not (crash / ".lock").exists()
