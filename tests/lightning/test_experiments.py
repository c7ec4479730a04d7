"""Stages of the ``heads`` runner that need no trainer: the pruning curves and structural pruning."""

from __future__ import annotations

import pytest
import torch

from lightning_attattr.analysis.settings import HeadsSettings
from lightning_attattr.lightning.experiments import _pruning_curves, structural_pruning
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
