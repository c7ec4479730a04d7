"""Stages of the ``heads`` runner that need no trainer: the pruning curves and structural pruning."""

from __future__ import annotations

import pytest
import torch

from lightning_attattr.analysis.settings import AttributeSettings, HeadsSettings, Integration
from lightning_attattr.core.attribution import AttentionIntegratedGradients
from lightning_attattr.core.checks import ArgumentError
from lightning_attattr.core.importance import attribution_head_scores
from lightning_attattr.lightning.experiments import (
    _attribute_step,
    _head_scores,
    _pruning_curves,
    check_attribute_examples,
    structural_pruning,
)
from lightning_attattr.lightning.job import Examples
from tests.conftest import make_model, text_batch


def test_pruning_curves_gather_the_random_seeds_into_one_band():
    settings = HeadsSettings(methods=["attattr", "random"], fractions=[0, 0.5], random_seeds=[0, 1])
    mask_index = {"attattr": [0, 1], "random_s0": [0, 2], "random_s1": [0, 3]}
    per_mask = [{"acc": 0.9}, {"acc": 0.8}, {"acc": 0.5}, {"acc": 0.7}]
    curves = _pruning_curves(settings, mask_index, per_mask)
    assert curves["attattr"] == {"acc": [0.9, 0.8]}
    assert curves["random_s0"] == {"acc": [0.9, 0.5]} and curves["random_s1"] == {"acc": [0.9, 0.7]}
    band = curves["random"]
    assert band["acc"] == pytest.approx([0.9, 0.6])
    assert band["acc_min"] == pytest.approx([0.9, 0.5]) and band["acc_max"] == pytest.approx([0.9, 0.7])
    assert band["acc_std"] == pytest.approx([0.0, torch.tensor([0.5, 0.7], dtype=torch.float64).std().item()])


def test_pruning_curves_without_random_seeds_have_no_band():
    settings = HeadsSettings(methods=["attattr"], fractions=[0, 0.5], random_seeds=[])
    curves = _pruning_curves(settings, {"attattr": [0, 1]}, [{"acc": 1.0, "mcc": 0.5}, {"acc": 0.5, "mcc": 0.0}])
    assert curves == {"attattr": {"acc": [1.0, 0.5], "mcc": [0.5, 0.0]}}


def test_structural_pruning_reads_its_options_from_the_settings():
    model = make_model("bert")  # 3 layers, 4 heads
    batch = text_batch(lengths=(7, 4, 6, 5, 3))
    dataset = [{k: v[i] for k, v in batch.items()} for i in range(5)]

    def collator(items):
        return {k: torch.stack([item[k] for item in items]) for k in items[0]}

    importance = torch.arange(12.0).view(3, 4)
    settings = HeadsSettings(fractions=[0, 0.25, 1.0], eval_batch_size=2, latency_batches=2, latency_repeats=1)
    out = structural_pruning(model, importance, settings, dataset, collator)
    assert (out["batches"], out["batch_size"], out["repeats"]) == (2, 2, 1)
    rows = out["rows"]
    assert [r["fraction"] for r in rows] == [0, 0.25, 1.0]
    assert [r["heads_removed"] for r in rows] == [0, 3, 12]
    assert rows[0]["parameters_ratio"] == 1 and rows[1]["parameters_ratio"] < 1
    assert "skipped" in rows[2]  # every head of every layer: no structural removal
    assert sum(p.numel() for p in model.parameters()) == rows[0]["parameters"]  # the model itself is unchanged


# ----------------------------------------------------------------------------- reductions of the maps
FIXED = Integration(n_steps=3, method="gausslegendre")


@pytest.fixture(scope="module")
def tiny():
    """A tiny model, a padded batch with gold labels, and its full-map result (the reference)."""
    model = make_model("bert")  # 3 layers, 4 heads, 3 labels
    batch = {**text_batch(lengths=(7, 4, 6)), "labels": torch.tensor([0, 2, 1])}
    full = AttentionIntegratedGradients(model).attribute(
        batch, target="labels", return_convergence_delta=True, **FIXED.kwargs()
    )
    return model, batch, full


@pytest.mark.parametrize("poolings", [["max"], ["mean"], ["sum"], ["max", "mean", "sum"]])
def test_head_scores_equal_pooling_the_full_maps(tiny, poolings):
    model, batch, full = tiny
    result, scores = _head_scores(AttentionIntegratedGradients(model), batch, FIXED, poolings)
    assert list(scores) == poolings
    for pooling in poolings:
        torch.testing.assert_close(scores[pooling], attribution_head_scores(full, pooling), rtol=1e-6, atol=1e-9)
    # one pooling: reduced while computed (no maps kept); several: one attribution with full maps
    assert (result.reduced is not None) == (len(poolings) == 1)
    assert (result.attributions == []) == (len(poolings) == 1)
    torch.testing.assert_close(result.completeness_error, full.completeness_error, rtol=0, atol=1e-9)


def test_attribute_step_rows_and_top_k_equal_reducing_the_full_maps(tiny):
    model, batch, _ = tiny
    ig = AttentionIntegratedGradients(model)
    base = {"integration": FIXED, "target": "labels", "layers": [0, 2]}
    full = _attribute_step(ig, AttributeSettings(**base))(model, batch)
    rows = _attribute_step(ig, AttributeSettings(**base, rows=[-1, 0]))(model, batch)
    top = _attribute_step(ig, AttributeSettings(**base, top_k=5))(model, batch)
    assert "attributions" not in rows and "attributions" not in top
    for i, (maps, attention) in enumerate(zip(full["attributions"], full["attention"], strict=True)):
        n = maps.shape[-1]
        assert rows["query_positions"][i].tolist() == [n - 1, 0]
        torch.testing.assert_close(rows["rows"][i], maps[:, :, [n - 1, 0]], rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(rows["attention"][i], attention[:, :, [n - 1, 0]])
        flat = maps.flatten(1)  # [layer, head * n * n]
        order = flat.abs().topk(5, dim=1).indices
        torch.testing.assert_close(top["top_values"][i], flat.gather(1, order), rtol=1e-6, atol=1e-9)
        where = top["top_indices"][i]  # [layer, 5, 3]
        layer = torch.arange(2)[:, None].expand(-1, 5)
        torch.testing.assert_close(top["attention"][i], attention[layer, where[..., 0], where[..., 1], where[..., 2]])
    for key in ("completeness_error", "convergence_delta", "probs"):  # the rest is the full run's
        torch.testing.assert_close(rows[key], full[key], rtol=0, atol=1e-9)
        torch.testing.assert_close(top[key], full[key], rtol=0, atol=1e-9)


def test_rows_outside_an_example_are_refused_before_any_work():
    examples = Examples(items=[{}, {}], names=["a", "b"], labels=[None, None], tokens=[["x"] * 5, ["y"] * 3])
    check_attribute_examples(AttributeSettings(rows=[-3, 2]), examples)  # fits both
    with pytest.raises(
        ArgumentError, match=r"^Expected `rows` within every example's tokens \(\[-3, 2\] for 'b'.*\[3\]"
    ):
        check_attribute_examples(AttributeSettings(rows=[0, 3]), examples)
    check_attribute_examples(AttributeSettings(top_k=1000), examples)  # top_k fits any example
