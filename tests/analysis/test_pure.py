"""Unit tests of the pure analysis layer (``lightning_attattr.analysis``) and the adapter's per-row head mask."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest
import torch

from lightning_attattr.analysis.effectiveness import (
    CURVES,
    effectiveness_curves,
    effectiveness_masks,
    per_layer_masks,
)
from lightning_attattr.analysis.heads import (
    METHODS,
    RECORD_KEYS,
    curve_summary,
    importance_from_records,
    matthews,
    pruning_plan,
    random_name,
    task_metrics,
)
from lightning_attattr.analysis.store import (
    PARTS_FORMAT,
    FolderInUseError,
    FolderMismatchError,
    PartStore,
    ResultsFolder,
    atomic_write,
    save_figure,
    write_csv,
    write_json,
)
from lightning_attattr.analysis.universality import correlation_matrices, pearson, spearman
from lightning_attattr.core.adapter import attention_scope
from lightning_attattr.core.checks import ArgumentError, UserError
from lightning_attattr.core.importance import random_importance
from tests.conftest import make_model, text_batch

FRACTIONS = [i / 10 for i in range(11)]


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


# ============================================================================= store: files
def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    assert atomic_write(target, lambda f: f.write("old")) == target
    atomic_write(target, lambda f: f.write("new"))
    assert target.read_text() == "new"
    assert _names(tmp_path) == ["out.txt"]


def test_atomic_write_failing_writer_keeps_old_file(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write(target, lambda f: f.write("old"))

    def broken(f):
        f.write("half-writ")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert _names(tmp_path) == ["out.txt"]

    def broken_binary(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):  # a failing first write leaves nothing at all
        atomic_write(tmp_path / "fresh.bin", broken_binary, binary=True)
    assert _names(tmp_path) == ["out.txt"]


def test_write_json_and_csv(tmp_path):
    write_json(tmp_path / "a.json", {"t": torch.tensor([1, 2]), "nan": float("nan"), 3: (tmp_path / "x", 1.5)})
    assert json.loads((tmp_path / "a.json").read_text()) == {"t": [1, 2], "nan": None, "3": [str(tmp_path / "x"), 1.5]}
    write_csv(tmp_path / "b.csv", ["name", "value"], [("a", 1), ("b,c", 2.5)])
    with open(tmp_path / "b.csv", newline="", encoding="utf-8") as f:
        assert list(csv.reader(f)) == [["name", "value"], ["a", "1"], ["b,c", "2.5"]]
    assert _names(tmp_path) == ["a.json", "b.csv"]


def test_save_figure_writes_png_and_svg_and_closes(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    paths = save_figure(fig, tmp_path / "curve")
    assert [p.name for p in paths] == ["curve.png", "curve.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in paths[1].read_bytes()
    assert _names(tmp_path) == ["curve.png", "curve.svg"]
    assert not plt.fignum_exists(fig.number)


# ============================================================================= store: PartStore
def test_part_store_round_trip_in_index_order(tmp_path):
    store = PartStore(tmp_path / "stage")
    assert store.done() == set()
    ragged = {i: torch.arange(float(i + 1)) for i in range(4)}  # example i has i + 1 values
    store.write(
        torch.tensor([3, 1]), {"x": torch.tensor([[30.0], [10.0]]), "v": [ragged[3], ragged[1]], "s": ["d", "b"]}
    )
    store.write(
        torch.tensor([0, 2]), {"x": torch.tensor([[0.0], [20.0]]), "v": [ragged[0], ragged[2]], "s": ["a", "c"]}
    )
    assert store.done() == {0, 1, 2, 3}

    out = store.load([2, 0, 3, 1])
    assert torch.equal(out["x"], torch.tensor([[20.0], [0.0], [30.0], [10.0]]))
    assert isinstance(out["v"], list) and len(out["v"]) == 4
    for got, i in zip(out["v"], [2, 0, 3, 1]):
        assert torch.equal(got, ragged[i])
    assert out["s"] == ["c", "a", "d", "b"]
    assert not list(store.path.glob(".*tmp"))

    store.clear()
    assert store.done() == set() and not store.path.exists()


def test_part_store_duplicates_keep_one_copy(tmp_path):
    store = PartStore(tmp_path / "stage")
    store.write(torch.tensor([0, 1]), {"x": torch.tensor([0.0, 1.0])}, rank=0)
    store.write(torch.tensor([1, 2]), {"x": torch.tensor([1.0, 2.0])}, rank=1)  # example 1 again (another rank)
    store.write(torch.tensor([2]), {"x": torch.tensor([2.0])}, rank=0)  # and example 2 again (a rerun)
    assert len(list(store.path.glob("part-*.safetensors"))) == 3
    assert store.done() == {0, 1, 2}
    out = store.load([0, 1, 2])
    assert torch.equal(out["x"], torch.tensor([0.0, 1.0, 2.0]))


def test_part_store_missing_indices_raise(tmp_path):
    store = PartStore(tmp_path / "stage")
    store.write(torch.tensor([0, 1]), {"x": torch.zeros(2)})
    with pytest.raises(RuntimeError, match=r"1 example\(s\).*\[7\]"):
        store.load([0, 1, 7])
    with pytest.raises(RuntimeError):
        PartStore(tmp_path / "never_written").load([0])


# ============================================================================= store: ResultsFolder
ARGS = {"model": "tiny", "options": {"n_examples": 8, "fractions": [0.0, 0.5]}}


def test_errors_are_user_errors():
    assert issubclass(FolderInUseError, UserError) and issubclass(FolderInUseError, RuntimeError)
    assert issubclass(FolderMismatchError, UserError) and issubclass(FolderMismatchError, ValueError)
    assert issubclass(ArgumentError, UserError)


def test_folder_lock_refuses_second_open_until_closed(tmp_path):
    path = tmp_path / "run"
    with ResultsFolder(path, "heads", ARGS) as first:
        assert first.path == path and (path / ".lock").exists()
        with pytest.raises(FolderInUseError) as info:
            ResultsFolder(path, "heads", ARGS).open()
        message = str(info.value)
        assert str(path) in message
        assert f"process {os.getpid()}" in message
    second = ResultsFolder(path, "heads", ARGS).open()  # released on exit
    second.close()
    second.close()  # idempotent


def test_folder_reopen_same_arguments_keeps_parts(tmp_path):
    path = tmp_path / "run"
    with ResultsFolder(path, "heads", ARGS) as folder:
        folder.parts("importance").write(torch.tensor([0, 1]), {"x": torch.ones(2)})
        folder.file("sub/notes.txt").write_text("keep me")
        folder.log("stage 1 done")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest == {"kind": "heads", "parts_format": PARTS_FORMAT, "arguments": ARGS}
    with ResultsFolder(path, "heads", json.loads(json.dumps(ARGS))) as folder:
        assert folder.parts("importance").done() == {0, 1}
        assert (path / "sub" / "notes.txt").read_text() == "keep me"
        assert "stage 1 done" in (path / "progress.log").read_text()


@pytest.mark.parametrize(
    ("kind", "arguments", "differing"),
    [
        ("heads", {**ARGS, "model": "other"}, "arguments.model"),
        ("heads", {**ARGS, "options": {"n_examples": 9, "fractions": [0.0, 0.5]}}, "arguments.options.n_examples"),
        ("heads", {**ARGS, "seed": 1}, "arguments.seed"),
        ("effectiveness", ARGS, "kind"),
    ],
)
def test_folder_other_arguments_are_refused(tmp_path, kind, arguments, differing):
    path = tmp_path / "run"
    with ResultsFolder(path, "heads", ARGS) as folder:
        folder.parts("importance").write(torch.tensor([0]), {"x": torch.ones(1)})
    with pytest.raises(FolderMismatchError) as info:
        ResultsFolder(path, kind, arguments).open()
    message = str(info.value)
    assert differing in message and str(path) in message
    assert json.loads((path / "manifest.json").read_text())["arguments"] == ARGS  # untouched
    assert PartStore(path / "parts" / "importance").done() == {0}
    ResultsFolder(path, "heads", ARGS).open().close()  # the refused open released the lock


def test_folder_overwrite_clears_old_results(tmp_path):
    path = tmp_path / "run"
    with ResultsFolder(path, "heads", ARGS) as folder:
        folder.parts("importance").write(torch.tensor([0]), {"x": torch.ones(1)})
        write_json(folder.file("importance.json"), {"a": 1})
    new_args = {**ARGS, "model": "other"}
    with ResultsFolder(path, "heads", new_args, overwrite=True) as folder:
        assert _names(path) == [".lock", "manifest.json"]
        assert folder.parts("importance").done() == set()
    assert json.loads((path / "manifest.json").read_text()) == {
        "kind": "heads",
        "parts_format": PARTS_FORMAT,
        "arguments": new_args,
    }


def test_folder_unreadable_manifest_is_refused(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(FolderMismatchError, match="unreadable"):
        ResultsFolder(path, "heads", ARGS).open()


def test_folder_with_foreign_files_is_refused(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    (path / "thesis.tex").write_text("precious")
    with pytest.raises(FolderMismatchError, match="other files"):
        ResultsFolder(path, "heads", ARGS).open()
    assert (path / "thesis.tex").read_text() == "precious"
    assert not (path / "manifest.json").exists()
    with ResultsFolder(path, "heads", ARGS, overwrite=True):
        assert _names(path) == [".lock", "manifest.json"]


def test_folder_empty_existing_folder_is_accepted(tmp_path):
    with ResultsFolder(tmp_path, "heads", ARGS):
        assert (tmp_path / "manifest.json").exists()


def test_folder_path_that_is_a_file(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("x")
    for main in (True, False):
        with pytest.raises(ArgumentError, match="is a file"):
            ResultsFolder(path, "heads", ARGS, main=main).open()
    assert path.read_text() == "x"


def test_folder_non_main_neither_locks_nor_writes_manifest(tmp_path):
    path = tmp_path / "run"
    with ResultsFolder(path, "heads", ARGS, main=False) as worker:
        assert not (path / "manifest.json").exists() and not (path / ".lock").exists()
        worker.log("ignored")
        assert not (path / "progress.log").exists()
    assert not path.exists()
    with ResultsFolder(path, "heads", ARGS) as main:
        with ResultsFolder(path, "heads", ARGS, main=False) as worker:  # no lock taken: the main run's is no obstacle
            worker.parts("s").write(torch.tensor([4]), {"x": torch.ones(1)}, rank=1)
        assert main.parts("s").done() == {4}
        with pytest.raises(FolderInUseError):  # while the main lock is held
            ResultsFolder(path, "heads", ARGS).open()
    assert json.loads((path / "manifest.json").read_text()) == {
        "kind": "heads",
        "parts_format": PARTS_FORMAT,
        "arguments": ARGS,
    }


# ============================================================================= heads: pruning plan
def _permutation_importance(seed, n_layers=12, n_heads=12):
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_layers * n_heads, generator=g).double().view(n_layers, n_heads)


def test_pruning_plan_counts_and_lowest_heads_first():
    importance = _permutation_importance(0)  # values 0 .. 143: the k lowest are exactly those < k
    masks, index, removed = pruning_plan({"attattr": importance}, FRACTIONS)
    assert removed == [0, 14, 28, 43, 57, 72, 86, 100, 115, 129, 144]
    assert masks.dtype == torch.float32 and masks.shape == (11, 12, 12)
    assert index == {"attattr": list(range(11))}
    for k, i in zip(removed, index["attattr"]):
        assert torch.equal(masks[i], (importance >= k).float())


def test_pruning_plan_removed_matches_masks_for_any_fraction():
    # 0.57 * 100 = 56.99999999999999 in floating point: the count reported must be the count the masks remove
    importance = _permutation_importance(1, 10, 10)
    fractions = [0.0, 0.29, 0.57, 0.58, 1.0]
    masks, index, removed = pruning_plan({"a": importance}, fractions)
    assert removed == [int((masks[i] == 0).sum()) for i in index["a"]]


def test_pruning_plan_deduplicates_masks():
    a, b = _permutation_importance(0), _permutation_importance(1)
    importances = {"a": a, "b": b, "a_scaled": 3 * a + 1}  # same ranking as a
    masks, index, removed = pruning_plan(importances, FRACTIONS)
    assert masks.shape[0] == 2 + 2 * 9  # unpruned and all-pruned shared; the rest differ between a and b
    assert index["a"][0] == index["b"][0] and index["a"][-1] == index["b"][-1]
    assert torch.equal(masks[index["a"][0]], torch.ones(12, 12))
    assert torch.equal(masks[index["a"][-1]], torch.zeros(12, 12))
    assert index["a_scaled"] == index["a"]
    assert set(index["a"][1:-1]).isdisjoint(index["b"][1:-1])
    assert len({m.numpy().tobytes() for m in masks}) == masks.shape[0]  # no duplicates left


# ============================================================================= heads: importance
def _records(n_examples=4, n_layers=2, n_heads=3):
    g = torch.Generator().manual_seed(0)
    shape = (n_examples, n_layers, n_heads)
    records = {key: torch.rand(shape, generator=g) for key in ("attattr_max", "attattr_mean", "attattr_sum")}
    records["taylor"] = torch.rand(shape, generator=g) - 0.3
    records["taylor_michel"] = torch.rand(shape, generator=g)
    records["attention"] = torch.rand(shape, generator=g)
    records["correct"] = torch.tensor([True, True, False, True])  # accuracy 0.75
    records["correct_masked"] = torch.tensor(
        [
            [1, 1, 0, 0, 1, 1],
            [1, 0, 0, 1, 1, 1],
            [0, 0, 0, 1, 1, 1],
            [1, 1, 0, 1, 0, 1],
        ],
        dtype=torch.bool,
    )
    return records


def test_importance_from_records_every_method():
    records = _records()
    out = importance_from_records(records, METHODS, n_layers=2, n_heads=3, seeds=(0, 5))
    at = METHODS.index("random")
    assert list(out) == [*METHODS[:at], random_name(0), random_name(5), *METHODS[at + 1 :]]
    for name, value in out.items():
        assert value.shape == (2, 3) and value.dtype == torch.float64, name
    for method in ("attattr", "attattr_mean", "attattr_sum", "taylor_michel", "attention"):
        assert torch.allclose(out[method], records[RECORD_KEYS[method][0]].double().mean(0)), method
    # taylor: the sum over examples, each layer scaled to unit L2 norm
    total = records["taylor"].double().sum(0)
    assert torch.allclose(out["taylor"].norm(dim=1), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(out["taylor"], total / total.norm(dim=1, keepdim=True))
    # accuracy difference: acc(full) - acc(one head masked); masked accuracies per head by hand
    masked_acc = torch.tensor([[0.75, 0.5, 0.0], [0.75, 0.75, 1.0]], dtype=torch.float64)
    assert torch.allclose(out["accuracy_difference"], 0.75 - masked_acc)
    assert torch.equal(out["random_s0"], random_importance(2, 3, 0))
    assert torch.equal(out["random_s5"], random_importance(2, 3, 5))
    assert not torch.equal(out["random_s0"], out["random_s5"])


def test_importance_from_records_keeps_method_order():
    out = importance_from_records(_records(), ["random", "taylor", "attattr"], 2, 3, seeds=(2,))
    assert list(out) == ["random_s2", "taylor", "attattr"]


# ============================================================================= heads: metrics
def test_task_metrics_binary_by_hand():
    preds = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0])
    labels = torch.tensor([1, 0, 0, 1, 1, 0, 1, 1])
    # tp = 3, fp = 1, fn = 2, tn = 2
    out = task_metrics(preds, labels, ["acc", "f1", "mcc"], num_labels=2)
    assert out["acc"] == pytest.approx(5 / 8)
    assert out["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))
    assert out["mcc"] == pytest.approx((3 * 2 - 1 * 2) / math.sqrt(4 * 5 * 3 * 4))
    assert set(task_metrics(preds, labels, ["acc"], num_labels=2)) == {"acc"}
    assert task_metrics(torch.zeros(3), torch.tensor([0, 1, 0]), ["f1"], 2)["f1"] == 0.0  # no true positive
    assert task_metrics(torch.zeros(2), torch.zeros(2), ["f1"], 2)["f1"] == 0.0  # undefined: 0
    assert math.isnan(task_metrics(torch.zeros(0), torch.zeros(0), ["acc"], 2)["acc"])


def _mcc_by_covariance(preds, labels, k):
    # Gorodkin's R_K as the correlation of one-hot encodings: sum_k cov(X_k, Y_k) / sqrt(cov(X, X) cov(Y, Y))
    x = torch.nn.functional.one_hot(preds, k).double()
    y = torch.nn.functional.one_hot(labels, k).double()
    x, y = x - x.mean(0), y - y.mean(0)
    return float((x * y).sum() / math.sqrt(float((x * x).sum() * (y * y).sum())))


def test_matthews_multiclass_matches_covariance_definition():
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 3, (50,), generator=g)
    preds = torch.where(torch.rand(50, generator=g) < 0.6, labels, torch.randint(0, 3, (50,), generator=g))
    value = matthews(preds, labels, 3)
    assert value == pytest.approx(_mcc_by_covariance(preds, labels, 3))
    assert 0.2 < value < 1
    assert matthews(labels, labels, 3) == pytest.approx(1.0)
    assert matthews(1 - torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 0, 1]), 2) == pytest.approx(-1.0)


def test_matthews_undefined_is_zero():
    labels = torch.tensor([0, 1, 2, 1])
    assert matthews(torch.ones(4, dtype=torch.long), labels, 3) == 0.0  # one predicted class
    assert matthews(labels, torch.ones(4, dtype=torch.long), 3) == 0.0  # one true class
    assert task_metrics(torch.zeros(4), torch.tensor([0, 1, 0, 1]), ["mcc"], 2)["mcc"] == 0.0


def test_task_metrics_match_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 2, (40,), generator=g)
    preds = torch.where(torch.rand(40, generator=g) < 0.7, labels, 1 - labels)
    out = task_metrics(preds, labels, ["acc", "f1", "mcc"], 2)
    assert out["acc"] == pytest.approx(metrics.accuracy_score(labels, preds))
    assert out["f1"] == pytest.approx(metrics.f1_score(labels, preds))
    assert out["mcc"] == pytest.approx(metrics.matthews_corrcoef(labels, preds))
    labels3 = torch.randint(0, 3, (40,), generator=g)
    preds3 = torch.randint(0, 3, (40,), generator=g)
    assert matthews(preds3, labels3, 3) == pytest.approx(metrics.matthews_corrcoef(labels3, preds3))


# ============================================================================= heads: curve summary
def test_curve_summary_auc():
    assert curve_summary(FRACTIONS, [1.0] * 11)["auc"] == pytest.approx(1.0)
    assert curve_summary([0.0, 0.2, 1.0], [1.0, 0.0, 1.0])["auc"] == pytest.approx(0.2 * 0.5 + 0.8 * 0.5)
    assert curve_summary([0.0, 1.0], [0.8, 0.4])["auc"] == pytest.approx(0.6)


def test_curve_summary_max_fraction_within_is_a_prefix():
    fractions = [0.0, 0.1, 0.2, 0.3, 0.4]
    # 0.895 is within 0.01 of 0.9, 0.85 is not; the recovery at 0.3 and 0.4 does not count
    assert curve_summary(fractions, [0.9, 0.895, 0.85, 0.9, 0.9])["max_fraction_within"] == pytest.approx(0.1)
    assert curve_summary(fractions, [0.9, 0.89, 0.95, 0.891, 0.7])["max_fraction_within"] == pytest.approx(0.3)
    assert curve_summary(fractions, [0.9] * 5)["max_fraction_within"] == pytest.approx(0.4)
    assert curve_summary(fractions, [0.9, 0.5, 0.9, 0.9, 0.9])["max_fraction_within"] == 0.0
    assert curve_summary(fractions, [0.9, 0.85, 0.9, 0.9, 0.9], tolerance=0.1)["max_fraction_within"] == 0.4


# ============================================================================= effectiveness
def _removed_by_hand(scores, k, largest):
    out = []
    for row in scores.tolist():
        sign = -1 if largest else 1
        out.append(set(sorted(range(len(row)), key=lambda h, row=row: (sign * row[h], h))[:k]))
    return out


@pytest.mark.parametrize("largest", [True, False])
def test_per_layer_masks_remove_top_or_bottom_k(largest):
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(3, 5, generator=g)
    scores[1] = torch.tensor([0.5, 0.2, 0.5, 0.2, 0.5])  # ties go to the lower head index
    masks = per_layer_masks(scores, largest=largest)
    assert masks.shape == (6, 3, 5) and masks.dtype == torch.float32
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    for k in range(6):
        assert (masks[k] == 0).sum(1).tolist() == [k, k, k]
        for layer, expected in enumerate(_removed_by_hand(scores, k, largest)):
            assert set((masks[k, layer] == 0).nonzero().flatten().tolist()) == expected, (k, layer)
    assert torch.equal(masks[0], torch.ones(3, 5)) and torch.equal(masks[-1], torch.zeros(3, 5))


def test_per_layer_masks_ties_by_hand():
    scores = torch.tensor([[0.5, 0.2, 0.5, 0.2]])
    largest, smallest = per_layer_masks(scores, True), per_layer_masks(scores, False)
    assert largest[1, 0].tolist() == [0.0, 1.0, 1.0, 1.0]
    assert largest[3, 0].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert smallest[1, 0].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert smallest[3, 0].tolist() == [0.0, 0.0, 1.0, 0.0]


def test_effectiveness_masks_order_and_curves():
    g = torch.Generator().manual_seed(1)
    attattr, attention = torch.rand(2, 3, generator=g), torch.rand(2, 3, generator=g)
    masks = effectiveness_masks(attattr, attention)
    assert masks.shape == (4, 4, 2, 3)
    assert torch.equal(masks[0], per_layer_masks(attattr, True))
    assert torch.equal(masks[1], per_layer_masks(attattr, False))
    assert torch.equal(masks[2], per_layer_masks(attention, True))
    assert torch.equal(masks[3], per_layer_masks(attention, False))

    correct = torch.zeros(4, 4, 3, dtype=torch.bool)  # [example, curve, k]
    correct[:, :, 0] = True
    correct[:2, 1, 1] = True
    correct[0, 3, 2] = True
    curves = effectiveness_curves(correct)
    assert list(curves) == list(CURVES)
    assert curves["attattr_largest"] == [1.0, 0.0, 0.0]
    assert curves["attattr_smallest"] == [1.0, 0.5, 0.0]
    assert curves["attention_smallest"] == [1.0, 0.0, 0.25]


# ============================================================================= universality
def test_pearson_and_spearman_match_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(2)
    a = torch.rand(4, 6, generator=g)
    b = a + 0.5 * torch.rand(4, 6, generator=g)
    a_tied, b_tied = (a * 4).round(), (b * 3).round()  # many ties
    for x, y in ((a, b), (a_tied, b_tied), (a, -b), (a_tied, b)):
        xs, ys = x.flatten().double().numpy(), y.flatten().double().numpy()
        assert pearson(x, y) == pytest.approx(stats.pearsonr(xs, ys)[0], abs=1e-12)
        assert spearman(x, y) == pytest.approx(stats.spearmanr(xs, ys)[0], abs=1e-12)
    assert spearman(a, a**3) == pytest.approx(1.0)
    assert math.isnan(pearson(torch.ones(5), torch.arange(5.0)))


def test_correlation_matrices_symmetric_unit_diagonal():
    g = torch.Generator().manual_seed(3)
    vectors = {name: torch.rand(3, 4, generator=g) for name in ("sst-2", "mnli", "rte")}
    out = correlation_matrices(vectors)
    assert set(out) == {"pearson", "spearman"}
    for stat, fn in (("pearson", pearson), ("spearman", spearman)):
        m = torch.tensor(out[stat], dtype=torch.float64)
        assert m.shape == (3, 3)
        assert torch.allclose(m.diagonal(), torch.ones(3, dtype=torch.float64))
        assert torch.allclose(m, m.T)
        assert m[0, 2].item() == pytest.approx(fn(vectors["sst-2"], vectors["rte"]))


def test_correlation_matrices_refuse_mismatched_shapes():
    with pytest.raises(ArgumentError, match=r"a: \[2, 3\].*b: \[3, 2\]"):
        correlation_matrices({"a": torch.rand(2, 3), "b": torch.rand(3, 2)})


# ============================================================================= adapter: per-row head mask
def _logits(model, batch, ctrl, mask):
    with ctrl.masked(mask), torch.no_grad():
        return model(**batch).logits


def test_per_row_mask_equals_row_by_row_2d_masks():
    model = make_model("bert")  # 3 layers, 4 heads
    batch = text_batch(lengths=(7, 4, 6))
    g = torch.Generator().manual_seed(0)
    per_row = (torch.rand(3, 3, 4, generator=g) > 0.4).float()
    per_row[2] = torch.rand(3, 4, generator=g)  # soft mask
    with attention_scope(model) as ctrl:
        unmasked = _logits(model, batch, ctrl, None)
        together = _logits(model, batch, ctrl, per_row)
        assert ctrl.head_mask is None  # restored
        for row in range(3):
            alone = _logits(model, batch, ctrl, per_row[row])
            assert torch.allclose(together[row], alone[row], atol=1e-5), row
            assert not torch.allclose(together[row], unmasked[row], atol=1e-4), row  # the mask does something
        broadcast = _logits(model, batch, ctrl, per_row[1:2])  # one row applies to every row
        assert torch.allclose(broadcast, _logits(model, batch, ctrl, per_row[1]), atol=1e-5)


def test_per_row_mask_wrong_row_count_raises():
    model = make_model("bert")
    batch = text_batch(lengths=(7, 4, 6))
    with attention_scope(model) as ctrl, ctrl.masked(torch.ones(2, 3, 4)), torch.no_grad():
        with pytest.raises(ArgumentError, match=r"one row per batch row \(3\).*2 rows"):
            model(**batch)


@pytest.mark.parametrize("shape", [(3, 4, 4), (3, 3, 3), (4, 3), (3, 5), (12,), (1, 1, 3, 4)])
def test_head_mask_of_wrong_shape_is_refused(shape):
    model = make_model("bert")
    with attention_scope(model) as ctrl:
        with pytest.raises(ArgumentError) as info:
            ctrl.set_head_mask(torch.ones(shape))
        message = str(info.value)
        assert "[layer, head] = [3, 4]" in message and "[row, 3, 4]" in message and str(list(shape)) in message
        with pytest.raises(ArgumentError):
            with ctrl.masked(torch.ones(shape)):
                pass
        assert ctrl.head_mask is None
