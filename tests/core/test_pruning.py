import pytest
import torch
import transformers

from lightning_attattr.core.adapter import attention_scope
from lightning_attattr.core.attribution import AttentionIntegratedGradients
from lightning_attattr.core.pruning import (
    PRUNED_HEADS_KEY,
    count_parameters,
    from_pretrained_pruned,
    kept_heads,
    prune_heads,
    pruned_heads,
)
from tests.conftest import batch_for, make_model

HEADS = {0: [1, 3], 2: [0]}  # tiny models: 3 layers x 4 heads


def mask_for(heads, n_layers=3, n_heads=4):
    mask = torch.ones(n_layers, n_heads)
    for layer, hs in heads.items():
        mask[layer, hs] = 0
    return mask


def masked_logits(model, batch, mask):
    with torch.no_grad(), attention_scope(model) as ctrl, ctrl.masked(mask):
        return model(**batch).logits


@pytest.mark.parametrize("model_type", ["bert", "roberta", "electra", "distilbert", "vit"])
def test_pruned_logits_equal_masked_logits(model_type):
    model = make_model(model_type, dtype=torch.float64)
    batch = batch_for(model_type, dtype=torch.float64)
    expected = masked_logits(model, batch, mask_for(HEADS))
    unpruned = model(**batch).logits
    n_before = count_parameters(model)
    report = prune_heads(model, HEADS)
    got = model(**batch).logits  # plain forward, default attention implementation
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(got, unpruned)  # the heads mattered
    assert report.pruned == HEADS and report.newly_pruned == HEADS and report.n_heads_pruned == 3
    hidden = 32
    # 3 heads of dim 8 lose q/k/v rows (weight + bias) and output-projection columns
    assert report.n_parameters_before == n_before
    assert n_before - report.n_parameters_after == 3 * 8 * (3 * (hidden + 1) + hidden)
    assert report.n_parameters_after == count_parameters(model)


def test_mask_form_and_idempotence():
    model = make_model("bert")
    report = prune_heads(model, mask_for(HEADS))
    assert report.pruned == HEADS
    again = prune_heads(model, {0: [1], 1: [2]})  # head 1 of layer 0 is already gone
    assert again.newly_pruned == {1: [2]}
    assert pruned_heads(model) == {0: [1, 3], 1: [2], 2: [0]}
    assert kept_heads(model) == {0: [0, 2], 1: [0, 1, 3], 2: [1, 2, 3]}
    assert model.bert.encoder.layer[1].attention.self.num_attention_heads == 3


def test_successive_pruning_matches_mask():
    model = make_model("bert", dtype=torch.float64)
    batch = batch_for("bert", dtype=torch.float64)
    expected = masked_logits(model, batch, mask_for({0: [1, 3], 1: [2], 2: [0]}))
    prune_heads(model, {0: [3]})
    prune_heads(model, {0: [1], 1: [2], 2: [0]})
    torch.testing.assert_close(model(**batch).logits, expected, rtol=1e-10, atol=1e-10)


def test_scope_keeps_original_head_indices():
    """After pruning, masks, captured probabilities and attributions still use original head indices."""
    model = make_model("bert", dtype=torch.float64)
    batch = batch_for("bert", dtype=torch.float64)
    reference = make_model("bert", dtype=torch.float64)
    extra = mask_for({1: [0]})
    expected = masked_logits(reference, batch, mask_for({0: [1, 3], 1: [0], 2: [0]}))
    prune_heads(model, HEADS)
    torch.testing.assert_close(masked_logits(model, batch, extra), expected, rtol=1e-10, atol=1e-10)

    with attention_scope(model) as ctrl, ctrl.capturing() as probs, torch.no_grad():
        model(**batch)
    assert probs[0].shape[1] == 4
    assert probs[0][:, [1, 3]].abs().max() == 0 and probs[0][:, [0, 2]].sum() > 0

    # attributions of the pruned model equal those of the masked unpruned model; removed heads get 0
    ig = AttentionIntegratedGradients(model)
    result = ig.attribute(batch, target=0, n_steps=6)
    with attention_scope(reference) as ctrl, ctrl.masked(mask_for(HEADS)):
        masked = AttentionIntegratedGradients(reference).attribute(batch, target=0, n_steps=6)
    for got, want in zip(result.attributions, masked.attributions):
        assert got.shape[:2] == (3, 4)
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12)
        assert got[0, [1, 3]].abs().max() == 0


def test_save_load_round_trip(tmp_path):
    model = make_model("bert")
    batch = batch_for("bert")
    prune_heads(model, HEADS)
    model.save_pretrained(tmp_path)
    loaded = from_pretrained_pruned(str(tmp_path))
    assert not loaded.training  # like from_pretrained
    assert pruned_heads(loaded) == HEADS
    assert count_parameters(loaded) == count_parameters(model)
    torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)
    assert getattr(loaded.config, PRUNED_HEADS_KEY) == {"0": [1, 3], "2": [0]}


def test_plain_from_pretrained_cannot_load_pruned(tmp_path):
    """Why `from_pretrained_pruned` exists: transformers builds the full-size structure."""
    model = make_model("bert")
    prune_heads(model, HEADS)
    model.save_pretrained(tmp_path)
    with pytest.raises(Exception, match="(?i)size"):
        transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path)


def test_unpruned_round_trip_is_plain_from_pretrained(tmp_path):
    model = make_model("bert")
    model.save_pretrained(tmp_path)
    loaded = from_pretrained_pruned(str(tmp_path))
    torch.testing.assert_close(loaded(**batch_for("bert")).logits, model(**batch_for("bert")).logits)


@pytest.mark.parametrize(
    ("heads", "error", "match"),
    [
        ({3: [0]}, ValueError, r"layer indices in \[0, 2\].*3"),
        ({0: [4]}, ValueError, r"head indices in \[0, 3\] in `heads\[0\]`.*4"),
        ({0: [0, 1, 2, 3]}, ValueError, "every head of layer 0"),
        (torch.ones(2, 4), ValueError, r"shape \[3, 4\].*\[2, 4\]"),
        ([0, 1], TypeError, "mapping"),
    ],
)
def test_bad_heads(heads, error, match):
    model = make_model("bert")
    with pytest.raises(error, match=match):
        prune_heads(model, heads)
    assert pruned_heads(model) == {}  # nothing half-done


def test_last_head_of_layer_counts_earlier_pruning():
    model = make_model("bert")
    prune_heads(model, {0: [0, 1, 2]})
    with pytest.raises(ValueError, match="every head of layer 0"):
        prune_heads(model, {0: [3]})


def test_refuses_albert_and_inside_scope():
    with pytest.raises(ValueError, match="shares one layer module"):
        prune_heads(make_model("albert"), HEADS)
    model = make_model("bert")
    with attention_scope(model), pytest.raises(RuntimeError, match="inside an `attention_scope`"):
        prune_heads(model, HEADS)


def test_pruned_model_loads_with_another_head_size(tmp_path):
    model = make_model("bert", num_labels=2)
    prune_heads(model, HEADS)
    model.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="size mismatch for classifier.weight"):
        from_pretrained_pruned(str(tmp_path), num_labels=3)
    loaded = from_pretrained_pruned(str(tmp_path), num_labels=3, ignore_mismatched_sizes=True)
    assert loaded.classifier.out_features == 3 and pruned_heads(loaded) == HEADS
    torch.testing.assert_close(
        loaded.bert.encoder.layer[0].attention.self.query.weight,
        model.bert.encoder.layer[0].attention.self.query.weight,
    )
