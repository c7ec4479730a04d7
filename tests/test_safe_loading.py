"""No file a user hands us is unpickled unless they opt in: checkpoints and results folders are read
without running code from them; a file that needs full unpickling is refused with one line naming it.

The malicious files below, fully unpickled, create a marker file (the tests check that they do);
through the real entry points (``train.py``, ``analyze.py``, run as subprocesses) the marker never
appears. Also: the results-folder lock (``filelock``) across processes, and ``summary.json``'s
commit taken from the install metadata, never from git.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lightning_attattr.analysis.store import (
    PARTS_FORMAT,
    FolderInUseError,
    FolderMismatchError,
    PartFormatError,
    PartStore,
    ResultsFolder,
    load_tensors,
    save_tensors,
)
from lightning_attattr.core.checks import CheckpointError
from lightning_attattr.lightning.checkpoints import MODEL_CONFIG_KEY, PRUNED_HEADS_CHECKPOINT_KEY, TOKENIZER_KEY
from lightning_attattr.lightning.classifier import AttAttrClassifier

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


class Evil:
    """Fully unpickled, creates the file ``marker`` (through ``exec``, as an attacker's payload would)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"import pathlib; pathlib.Path({self.marker!r}).touch()",)


def entry_point(script: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    """``python SCRIPT ARGS`` from the repository, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ATTATTR_TRACEBACK": ""}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def one_error_line(done: subprocess.CompletedProcess, prog: str) -> str:
    """The contract of a user error: exit status 2, one ``PROG: error:`` line, no traceback."""
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), done.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A quickstart run with every AttAttr callback and structural pruning at epoch 1 (2 tiny epochs)."""
    root = tmp_path_factory.mktemp("safe_run")
    config = yaml.safe_load(QUICKSTART.read_text(encoding="utf-8"))
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(root / "runs")
    for callback in config["trainer"]["callbacks"]:
        init = callback.setdefault("init_args", {})
        if "n_examples" in init:
            init["n_examples"] = 8
        if callback["class_path"].endswith("HeadPruningCallback"):
            init.update(every_n_epochs=1, schedule={1: 0.25}, mode="structural")
    config["data"]["init_args"].update(n_train=64, n_val=32)
    (root / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    done = entry_point(
        "train.py",
        "fit",
        "--config",
        root / "config.yaml",
        "--trainer.max_epochs",
        "2",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        root / "runs",
        cwd=root,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (root / "runs" / "quickstart").iterdir()
    return run_dir


@pytest.fixture(scope="module")
def evil_checkpoint(run, tmp_path_factory):
    """``run``'s last checkpoint with one object that, fully unpickled, creates ``marker``."""
    root = tmp_path_factory.mktemp("evil")
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    path, marker = root / "evil.ckpt", root / "MARKER"
    checkpoint["hyper_parameters"]["note"] = Evil(marker)
    torch.save(checkpoint, path)
    return path, marker


# ----------------------------------------------------------------------------- our checkpoints
def test_every_checkpoint_of_a_run_loads_with_weights_only(run):
    """Config, tokenizer files, pruned heads, our callbacks' states and Lightning's own: all plain."""
    files = sorted((run / "checkpoints").glob("*.ckpt"))
    assert len(files) >= 2
    for file in files:
        checkpoint = torch.load(file, weights_only=True, map_location="cpu")
        assert checkpoint[MODEL_CONFIG_KEY]["model_type"] == "bert" and checkpoint[TOKENIZER_KEY]
        callbacks = " ".join(checkpoint["callbacks"])
        for name in ("AttributionMonitor", "HeadImportanceCallback", "HeadPruningCallback", "EpochCheckpoint"):
            assert name in callbacks, (file.name, name)
        assert checkpoint["optimizer_states"] and checkpoint["loops"]
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert sum(len(h) for h in last[PRUNED_HEADS_CHECKPOINT_KEY].values()) == 3  # 25% of 12 heads, structurally
    module = AttAttrClassifier.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    assert module.pruned_heads == {int(k): v for k, v in last[PRUNED_HEADS_CHECKPOINT_KEY].items()}
    assert module.stored_tokenizer_files == last[TOKENIZER_KEY]


def test_path_hyperparameters_are_stored_as_strings(tmp_path):
    """A `Path` argument would make the checkpoint need full unpickling: it is saved as `str`."""
    from lightning_attattr.lightning.checkpoints import plain_hyperparameters

    checkpoint = {
        "hyper_parameters": {"model_name_or_path": tmp_path, "nested": {"dirs": [tmp_path, 1]}},
        "datamodule_hyper_parameters": {"data_dir": tmp_path / "glue"},
    }
    plain_hyperparameters(checkpoint)
    assert checkpoint["hyper_parameters"] == {
        "model_name_or_path": str(tmp_path),
        "nested": {"dirs": [str(tmp_path), 1]},
    }
    assert checkpoint["datamodule_hyper_parameters"] == {"data_dir": str(tmp_path / "glue")}
    torch.save(checkpoint, tmp_path / "c.pt")
    torch.load(tmp_path / "c.pt", weights_only=True)


def test_train_py_resumes_and_validates_with_weights_only(run, tmp_path, monkeypatch):
    """`fit --ckpt_path` (every callback state restored) and `validate`: every torch.load is weights-only."""
    from lightning_attattr.cli import cli_main

    calls = []
    original = torch.load

    def load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    monkeypatch.chdir(tmp_path)
    common = [
        "--config",
        str(run / "config.yaml"),
        "--trainer.enable_progress_bar=false",
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "runs"),
        "--trainer.default_root_dir",
        str(tmp_path / "runs"),
    ]
    cli = cli_main(
        [
            "fit",
            *common,
            "--ckpt_path",
            str(run / "checkpoints" / "last.ckpt"),
            "--trainer.max_epochs",
            "3",
            "--trainer.limit_train_batches",
            "1",
        ]
    )
    assert cli.trainer.current_epoch == 3  # resumed after epoch 2, one more epoch
    pruning = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "HeadPruningCallback")
    assert pruning.applied and pruning.applied[0]["fraction"] == 0.25  # its state came back from the checkpoint
    cli_main(["validate", *common, "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    assert len(calls) >= 4 and all(w is True for w in calls), calls


def test_weights_only_help_says_false_runs_code(capsys):
    from lightning_attattr.cli import cli_main

    with pytest.raises(SystemExit):
        cli_main(["validate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--weights_only" in text and "executes code from the file" in text and "default: True" in text


# ----------------------------------------------------------------------------- malicious checkpoints
def test_the_malicious_checkpoint_does_run_code_when_fully_unpickled(evil_checkpoint):
    """The check that the refusals below matter: full unpickling of the file runs its code."""
    path, marker = evil_checkpoint
    try:
        payload = torch.load(path, weights_only=False)
        assert payload["hyper_parameters"]["note"] is None and marker.exists()  # None: exec's return value
    finally:
        marker.unlink(missing_ok=True)


@pytest.mark.parametrize(
    "command",
    [
        ["train.py", "validate"],
        ["analyze.py", "heads"],
        ["analyze.py", "attribute"],
    ],
    ids=["train-validate", "analyze-heads", "analyze-attribute"],
)
def test_a_malicious_checkpoint_is_refused_by_the_entry_points(run, evil_checkpoint, tmp_path, command):
    path, marker = evil_checkpoint
    script, subcommand = command
    extra = ["--output_dir", tmp_path / "out"] if script == "analyze.py" else ["--trainer.default_root_dir", tmp_path]
    done = entry_point(script, subcommand, "--config", run / "config.yaml", "--ckpt_path", path, *extra, cwd=tmp_path)
    line = one_error_line(done, script)
    assert str(path) in line and "weights_only" in line and "`ckpt_path`" in line
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_load_from_checkpoint_refuses_a_malicious_file(evil_checkpoint):
    path, marker = evil_checkpoint
    with pytest.raises(CheckpointError, match="evil.ckpt") as info:
        AttAttrClassifier.load_from_checkpoint(path, map_location="cpu")
    assert "\n" not in str(info.value)
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        AttAttrClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=None)  # None: the default
    assert not marker.exists()


def test_weights_only_false_is_the_opt_in(evil_checkpoint):
    path, marker = evil_checkpoint
    try:
        module = AttAttrClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=False)
        assert marker.exists()  # full unpickling ran the file's code: what the opt-in means
        assert module.pruned_heads
    finally:
        marker.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- results parts
def test_parts_round_trip_exactly(tmp_path):
    store = PartStore(tmp_path / "stage")
    dtypes = [
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
    ]
    rows = []
    for i in range(3):
        rows.append(
            {
                "dense": {d: (torch.arange(4) * (i + 1) % 3).to(d) for d in dtypes},
                "scalar": torch.tensor(i, dtype=torch.int64),  # a 0-dim tensor per example
                "empty": torch.zeros(0, i + 1, dtype=torch.int64),
                "ragged": [torch.arange(i + 1, dtype=torch.float64) / 3, torch.zeros((), dtype=torch.float32)],
                "meta": {
                    "name": f"ex{i}",
                    "heads": {1: [0, i], 2: []},
                    "pair": (i, "a", None),
                    "nan": math.nan,
                    "inf": -math.inf,
                    "big": 2**62 + i,
                    "flag": bool(i % 2),
                    "__odd": 1,
                },
            }
        )
    record = {
        "big_int": torch.tensor([2**62 + 1, -(2**62), 7], dtype=torch.int64),  # exact beyond float precision
        "per_row_0dim": torch.tensor([1.5, 2.5, 3.5]),
        **{f"d_{str(d)}": torch.stack([r["dense"][d] for r in rows]) for d in dtypes},
        "scalar": [r["scalar"] for r in rows],
        "empty": [r["empty"] for r in rows],
        "ragged": [r["ragged"] for r in rows],
        "meta": [r["meta"] for r in rows],
        "view": torch.arange(12).view(3, 4)[:, 1:3],  # non-contiguous, shares memory with `shared`
        "shared": torch.arange(12).view(3, 4),
    }
    store.write(torch.tensor([10, 11, 12]), record)
    assert [p.suffix for p in store.path.iterdir()] == [".safetensors"]
    assert store.done() == {10, 11, 12}
    out = store.load([12, 10, 11])
    order = [2, 0, 1]

    def same(a, b):
        if isinstance(a, torch.Tensor):
            return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        if isinstance(a, float) and math.isnan(a):
            return isinstance(b, float) and math.isnan(b)
        if isinstance(a, (list, tuple)):
            return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        if isinstance(a, dict):
            return type(b) is dict and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
        return type(a) is type(b) and a == b

    for key, value in record.items():
        expected = value[order] if isinstance(value, torch.Tensor) else [value[i] for i in order]
        if isinstance(value, torch.Tensor):
            assert same(out[key], expected), key
        elif key in ("scalar",):  # one shape per example: stacked, like any tensor key
            assert same(out[key], torch.stack(expected)), key
        else:
            assert same(out[key], expected), key


def test_parts_refuse_values_only_pickle_could_store(tmp_path):
    with pytest.raises(TypeError, match="payload.x\\[0\\].*set"):
        PartStore(tmp_path).write(torch.tensor([0]), {"x": [{1, 2}]})
    with pytest.raises(TypeError, match="Path"):
        PartStore(tmp_path).write(torch.tensor([0]), {"x": [tmp_path]})
    assert not list(tmp_path.glob("part-*"))


def crafted_parts(folder: Path, marker: Path) -> dict[str, Path]:
    """Files an attacker (or an older version) could leave in a stage's parts folder."""
    from safetensors.torch import save

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    files["old pickle"] = folder / "part-00000000-r0-0badc0de.pt"
    torch.save({"index": torch.tensor([0]), "x": [Evil(marker)]}, files["old pickle"])
    files["pickle named safetensors"] = folder / "part-00000000-r0-0badc0df.safetensors"
    torch.save({"index": torch.tensor([0]), "x": [Evil(marker)]}, files["pickle named safetensors"])
    files["no structure"] = folder / "part-00000000-r0-0badc0e0.safetensors"
    files["no structure"].write_bytes(save({"index": torch.tensor([0])}))
    files["other format"] = folder / "part-00000000-r0-0badc0e1.safetensors"
    files["other format"].write_bytes(
        save(
            {"index": torch.tensor([0])},
            metadata={"attattr_parts_format": "1", "attattr_part": json.dumps({"index": {"__tensor__": "index"}})},
        )
    )
    files["rows do not fit"] = folder / "part-00000000-r0-0badc0e2.safetensors"
    files["rows do not fit"].write_bytes(
        save(
            {"index": torch.tensor([0, 1])},
            metadata={
                "attattr_parts_format": str(PARTS_FORMAT),
                "attattr_part": json.dumps({"index": {"__tensor__": "index"}, "x": [1]}),
            },
        )
    )
    files["missing tensor"] = folder / "part-00000000-r0-0badc0e3.safetensors"
    files["missing tensor"].write_bytes(
        save(
            {"index": torch.tensor([0])},
            metadata={
                "attattr_parts_format": str(PARTS_FORMAT),
                "attattr_part": json.dumps({"index": {"__tensor__": "index"}, "x": {"__tensor__": "nope"}}),
            },
        )
    )
    return files


def test_crafted_part_files_are_refused_naming_the_file(tmp_path):
    marker = tmp_path / "MARKER"
    for what, file in crafted_parts(tmp_path / "crafted", marker).items():
        folder = tmp_path / what.replace(" ", "_")
        folder.mkdir()
        file.rename(folder / file.name)
        store = PartStore(folder)
        for read in (store.done, lambda s=store: s.load([0])):
            try:
                read()
            except PartFormatError as err:
                message = str(err)
                assert str(folder / file.name) in message and "\n" not in message, (what, message)
                assert "--overwrite true" in message
            else:  # done() reads only the index, which is fine in these two
                assert what in ("rows do not fit", "missing tensor") and read == store.done, what
        assert not marker.exists(), what


def test_a_plan_file_is_safetensors_and_a_crafted_one_is_refused(tmp_path):
    masks = torch.rand(5, 3, 4)
    save_tensors(tmp_path / "masks.safetensors", {"masks": masks})
    assert torch.equal(load_tensors(tmp_path / "masks.safetensors")["masks"], masks)
    marker = tmp_path / "MARKER"
    torch.save(Evil(marker), tmp_path / "crafted.safetensors")
    with pytest.raises(PartFormatError, match="crafted.safetensors"):
        load_tensors(tmp_path / "crafted.safetensors")
    assert not marker.exists()


def test_a_folder_of_the_older_parts_format_is_refused_or_replaced(tmp_path):
    path = tmp_path / "old"
    path.mkdir()
    (path / "manifest.json").write_text(json.dumps({"kind": "heads", "arguments": {"a": 1}}), encoding="utf-8")
    torch.save({"index": torch.tensor([0]), "x": [Evil(tmp_path / "MARKER")]}, path / "part-old.pt")
    with pytest.raises(FolderMismatchError, match="parts format 1.*--overwrite true"):
        ResultsFolder(path, "heads", {"a": 1}).open()
    with ResultsFolder(path, "heads", {"a": 1}, overwrite=True):
        assert sorted(p.name for p in path.iterdir()) == [".lock", "manifest.json"]
    assert json.loads((path / "manifest.json").read_text())["parts_format"] == PARTS_FORMAT
    assert not (tmp_path / "MARKER").exists()


def test_analyze_refuses_a_malicious_part_in_a_results_folder(run, tmp_path):
    """A results folder received from someone else: a rerun reads its parts, and refuses a crafted one."""
    out = tmp_path / "maps"
    args = [
        "attribute",
        "--config",
        run / "config.yaml",
        "--ckpt_path",
        run / "checkpoints" / "last.ckpt",
        "--output_dir",
        out,
        "--indices",
        "[0, 1]",
        "--n_steps",
        "4",
        "--plots",
        "false",
        "--trainer.enable_progress_bar",
        "false",
    ]
    done = entry_point("analyze.py", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    parts = sorted((out / "parts" / "attribute").iterdir())
    assert parts and all(p.suffix == ".safetensors" for p in parts)
    for name in json.loads((out / "attributions.json").read_text())["examples"]:  # plain values: weights-only
        saved = torch.load(out / name["file"], weights_only=True)
        assert saved["attributions"].dim() == 4
    marker = tmp_path / "MARKER"
    for what in ("old pickle", "pickle named safetensors"):
        crafted = crafted_parts(tmp_path / "crafted" / what.replace(" ", "_"), marker)[what]
        planted = out / "parts" / "attribute" / crafted.name
        crafted.rename(planted)
        line = one_error_line(entry_point("analyze.py", *args, cwd=tmp_path), "analyze.py")
        assert str(planted) in line and "not loaded" in line, line
        assert not marker.exists()
        planted.unlink()
    assert entry_point("analyze.py", *args, cwd=tmp_path).returncode == 0  # the folder's own parts resume


# ----------------------------------------------------------------------------- the folder lock
def test_the_folder_lock_holds_across_processes_and_dies_with_its_process(tmp_path):
    path = tmp_path / "busy"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from lightning_attattr.analysis.store import ResultsFolder; "
            "f = ResultsFolder(sys.argv[1], 'heads', {}).open(); print('held', flush=True); time.sleep(120)",
            str(path),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUseError) as info:
            ResultsFolder(path, "heads", {}).open()
        message = str(info.value)
        assert f"process {holder.pid}" in message and str(path) in message and "\n" not in message
    finally:
        holder.kill()
        holder.wait()
    deadline = time.time() + 10
    while True:  # a killed run leaves no stale lock
        try:
            ResultsFolder(path, "heads", {}).open().close()
            break
        except FolderInUseError:
            assert time.time() < deadline
            time.sleep(0.1)


# ----------------------------------------------------------------------------- summary.json's commit
class FakeDistribution:
    def __init__(self, direct_url: str | None) -> None:
        self.direct_url = direct_url

    def read_text(self, name: str) -> str | None:
        return self.direct_url if name == "direct_url.json" else None


@pytest.mark.parametrize(
    ("direct_url", "expected"),
    [
        (
            json.dumps({"url": "https://github.com/o/r.git", "vcs_info": {"vcs": "git", "commit_id": "ab12" * 10}}),
            "ab12" * 10,
        ),
        (json.dumps({"url": "file:///src/lightning-attattr", "dir_info": {"editable": True}}), None),
        (json.dumps({"url": "https://example.org/x.whl", "archive_info": {}}), None),
        (None, None),  # a wheel or sdist from an index: no direct_url.json
        ("{not json", None),
    ],
    ids=["vcs", "editable", "archive", "index", "broken"],
)
def test_commit_comes_from_the_install_metadata(monkeypatch, direct_url, expected):
    import importlib.metadata

    from lightning_attattr import analysis_cli

    def no_git(*args, **kwargs):
        raise AssertionError(f"ran a command: {args}")

    monkeypatch.setattr(subprocess, "run", no_git)
    monkeypatch.setattr(subprocess, "Popen", no_git)
    names = []
    monkeypatch.setattr(
        importlib.metadata, "distribution", lambda name: names.append(name) or FakeDistribution(direct_url)
    )
    assert analysis_cli._commit() == expected
    assert names == ["lightning-attattr"]


def test_commit_of_an_uninstalled_package_is_none(monkeypatch):
    import importlib.metadata

    from lightning_attattr import analysis_cli

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    assert analysis_cli._commit() is None
