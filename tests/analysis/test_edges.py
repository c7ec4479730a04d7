"""Edge explanations against slow hand-written computations, edge removal, deletion-curve helpers."""

from __future__ import annotations

import pytest
import torch

from lightning_attattr.analysis.edges import (
    EDGE_FUNCTIONS,
    attattr_edges,
    attention_edges,
    grad_attention_edges,
    rollout_edges,
)
from lightning_attattr.analysis.faithfulness import (
    check_ks_fit,
    curve_area,
    layer_matched_random,
    planted_hits,
    random_edges,
    removal_probabilities,
    top_edges,
)
from lightning_attattr.analysis.trees import units_from_tokens
from lightning_attattr.core.adapter import attention_scope
from lightning_attattr.core.attribution import AttentionIntegratedGradients, model_logits
from lightning_attattr.core.checks import ArgumentError, ArgumentTypeError, check_sizes
from tests.conftest import make_model, text_batch

LENGTHS = (7, 4, 6)


@pytest.fixture(scope="module")
def model():
    return make_model("bert", num_labels=3)


@pytest.fixture(scope="module")
def batch():
    return text_batch(LENGTHS)


def eager_attentions(model, batch) -> list[torch.Tensor]:
    """Per example ``[layer, head, n, n]`` from transformers' own eager attention (output_attentions)."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(**batch, output_attentions=True)
    finally:
        model.set_attn_implementation(previous)
    att = torch.stack(out.attentions, 1)  # [batch, layer, head, q, k]
    return [att[b, :, :, :n, :n] for b, n in enumerate(LENGTHS)]


def test_every_method_has_the_layout_of_a_head_summed_attattr_map(model, batch):
    for name, fn in EDGE_FUNCTIONS.items():
        maps = fn(model, batch)
        assert [tuple(m.shape) for m in maps] == [(3, n, n) for n in LENGTHS], name
        assert all(m.dtype == torch.float32 and torch.isfinite(m).all() for m in maps), name


def test_raw_attention_is_the_head_mean_of_transformers_eager_attention(model, batch):
    for ours, theirs in zip(attention_edges(model, batch), eager_attentions(model, batch)):
        torch.testing.assert_close(ours, theirs.mean(1), atol=1e-6, rtol=1e-5)


def test_rollout_equals_a_slow_path_sum(model, batch):
    """Edge (i, j) of layer l: the rollout weight of every path from [CLS] at the top down to i at l, times 0.5 A."""
    for ours, att in zip(rollout_edges(model, batch), eager_attentions(model, batch)):
        a = att.mean(1).double()  # [layer, n, n]
        n_layers, n = a.shape[0], a.shape[1]
        slow = torch.zeros(n_layers, n, n, dtype=torch.float64)
        for layer in range(n_layers):
            flow = [1.0 if t == 0 else 0.0 for t in range(n)]  # weight of token t at the output of the top layer
            for upper in range(n_layers - 1, layer, -1):
                new = [0.0] * n
                for i in range(n):
                    for j in range(n):
                        new[j] += flow[i] * (0.5 * float(a[upper, i, j]) + (0.5 if i == j else 0.0))
                flow = new
            for i in range(n):
                for j in range(n):
                    slow[layer, i, j] = flow[i] * 0.5 * float(a[layer, i, j])
        torch.testing.assert_close(ours.double(), slow, atol=1e-6, rtol=1e-5)
        # per layer the attention edges carry half of the flow, the residual the other half
        torch.testing.assert_close(ours.sum((1, 2)).double(), torch.full((n_layers,), 0.5, dtype=torch.float64))


def test_grad_attention_equals_per_layer_replacement_gradients(model, batch):
    """Chefer's relevance from one backward equals the gradient taken layer by layer through replaced probabilities."""
    with torch.no_grad(), attention_scope(model) as ctrl, ctrl.capturing() as probs:
        logits = model_logits(model, batch)
    target = torch.tensor([0, 2, 1])
    ours = grad_attention_edges(model, batch, target=target)
    for layer in range(3):
        a = probs[layer].clone().requires_grad_(True)
        with torch.enable_grad(), attention_scope(model) as ctrl, ctrl.replacing(layer, a):
            out = model_logits(model, batch)
            (grad,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), a)
        torch.testing.assert_close(out, logits)  # replacing with the clean probabilities changes nothing
        relevance = (grad * probs[layer]).clamp(min=0).mean(1)
        for b, n in enumerate(LENGTHS):
            torch.testing.assert_close(ours[b][layer], relevance[b, :n, :n], atol=1e-7, rtol=1e-4)
    assert all(p.requires_grad for p in model.parameters())  # parameters left as they were
    assert not any(p.grad is not None for p in model.parameters())


def test_predicted_target_is_the_default(model, batch):
    pred = model_logits(model, batch).argmax(-1)
    for a, b in zip(grad_attention_edges(model, batch), grad_attention_edges(model, batch, target=pred)):
        torch.testing.assert_close(a, b)


def test_attattr_edges_are_attattr_summed_over_heads(model, batch):
    result = AttentionIntegratedGradients(model).attribute(batch, n_steps=8, method="riemann_left")
    for ours, full in zip(attattr_edges(model, batch, n_steps=8, method="riemann_left"), result.attributions):
        torch.testing.assert_close(ours, full.sum(1).float())


def test_edge_removal_zeroes_exactly_the_chosen_probabilities(model):
    one = text_batch((6,))
    with torch.no_grad(), attention_scope(model) as ctrl, ctrl.capturing() as clean:
        model_logits(model, one)
    chosen = torch.tensor([[1, 2, 3], [1, 0, 5], [2, 4, 4]])
    mask = torch.ones(1, 3, 6, 6)
    mask[0, chosen[:, 0], chosen[:, 1], chosen[:, 2]] = 0
    with torch.no_grad(), attention_scope(model) as ctrl, ctrl.capturing() as removed:
        with ctrl.removing_edges({layer: mask[:, layer] for layer in range(3)}):
            model_logits(model, one)
    # layer 0 is below every removal: untouched
    torch.testing.assert_close(removed[0], clean[0])
    # layer 1: exactly the two chosen entries are 0 in every head, the rest is the clean layer
    expected = clean[1].clone()
    expected[:, :, 2, 3] = 0
    expected[:, :, 0, 5] = 0
    torch.testing.assert_close(removed[1], expected)
    assert (removed[1][:, :, 2, 3] == 0).all() and (removed[1][:, :, 0, 5] == 0).all()
    # layer 2 recomputes from changed hidden states; its chosen entry is 0
    assert (removed[2][:, :, 4, 4] == 0).all()
    assert int((removed[2] == 0).sum()) == 4  # one entry x 4 heads


def test_removal_probabilities_batches_edge_sets(model):
    one = text_batch((6,))
    clean = torch.softmax(model_logits(model, one).detach(), -1)
    sets = [torch.zeros(0, 3, dtype=torch.long), torch.tensor([[0, 0, 0]]), torch.tensor([[2, 0, 1], [2, 0, 2]])]
    probs = removal_probabilities(model, one, sets, chunk_rows=2)
    assert probs.shape == (3, 3)
    torch.testing.assert_close(probs[0:1], clean, atol=1e-6, rtol=1e-5)
    for row, edges in enumerate(sets[1:], 1):  # the same as one removal at a time
        alone = removal_probabilities(model, one, [edges])
        torch.testing.assert_close(probs[row : row + 1], alone, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(probs[1], probs[0])


def test_removing_edges_refuses_bad_masks(model):
    with attention_scope(model) as ctrl:
        with pytest.raises(ArgumentError, match="layers in \\[0, 2\\]"):
            with ctrl.removing_edges({3: torch.ones(1, 6, 6)}):
                pass
        with pytest.raises(ArgumentError, match="\\[rows, query, key\\]"):
            with ctrl.removing_edges({0: torch.ones(6, 6)}):
                pass


def test_top_edges_orders_by_score_and_keeps_flat_order_on_ties():
    scores = torch.zeros(2, 3, 3)
    scores[1, 2, 0] = 5
    scores[0, 1, 1] = 3
    scores[1, 0, 0] = 3
    assert top_edges(scores, 3).tolist() == [[1, 2, 0], [0, 1, 1], [1, 0, 0]]
    assert top_edges(scores, 0).shape == (0, 3)
    with pytest.raises(ArgumentError, match="`k` in \\[0, 18\\]"):
        top_edges(scores, 19)


def test_random_edges_are_distinct_and_seeded():
    a = random_edges((3, 4, 4), 48, torch.Generator().manual_seed(1))
    assert len({tuple(e) for e in a.tolist()}) == 48  # all connections, each once
    b = random_edges((3, 4, 4), 5, torch.Generator().manual_seed(1))
    c = random_edges((3, 4, 4), 5, torch.Generator().manual_seed(1))
    assert b.tolist() == c.tolist()


def test_layer_matched_random_keeps_counts_per_layer_and_avoids_the_given_edges():
    edges = torch.tensor([[0, 1, 2], [2, 0, 0], [2, 3, 1]])
    for seed in range(5):
        other = layer_matched_random(edges, (3, 4, 4), torch.Generator().manual_seed(seed))
        assert sorted(other[:, 0].tolist()) == [0, 2, 2]
        assert not {tuple(e) for e in other.tolist()} & {tuple(e) for e in edges.tolist()}
    assert layer_matched_random(edges[:0], (3, 4, 4), torch.Generator()).shape == (0, 3)


def test_curve_area_and_planted_hits():
    assert curve_area([0.0, 1.0]) == 0.5
    assert curve_area([0.2]) == 0.2
    assert curve_area([0, 1, 1]) == 0.75
    scores = torch.zeros(2, 4, 4)
    scores[1, 3, 1] = 2.0  # the planted pair (1, 3), key->query direction
    scores[0, 0, 0] = 1.0
    scores[0, 2, 2] = 0.9
    hits = planted_hits(scores, (1, 3))
    assert bool(hits["top1"]) and bool(hits["top3"])
    assert hits["layer_top1"].tolist() == [False, True]
    scores[1, 3, 1] = 0.5
    hits = planted_hits(scores, (1, 3))
    assert not bool(hits["top1"]) and bool(hits["top3"])
    assert not bool(hits["touch1"]) and bool(hits["touch3"])  # top-1 is (0, 0): no planted token
    scores[0, 0, 3] = 5.0
    assert bool(planted_hits(scores, (1, 3))["touch1"])


def test_ks_checks():
    assert check_sizes("ks", [4, 1, 4, 2]) == [1, 2, 4]
    with pytest.raises(ArgumentTypeError, match="`ks`"):
        check_sizes("ks", "1,2")
    with pytest.raises(ArgumentError, match="`ks`.*>= 1"):
        check_sizes("ks", [0, 1])
    check_ks_fit("ks", [1, 48], n_layers=3, shortest=4)
    with pytest.raises(ArgumentError, match="3 layers x 4 x 4 tokens = 48\\), but got 49"):
        check_ks_fit("ks", [1, 49], n_layers=3, shortest=4)


def test_units_from_tokens_word_rule():
    assert units_from_tokens(["[CLS]", "un", "##believ", "##able", ",", "film", "[SEP]", "##x"]) == [
        0,
        1,
        1,
        1,
        2,
        3,
        4,
        5,
    ]
    assert units_from_tokens(["<s>", "The", "Ġfil", "m", "Ġrocks", "</s>"], ["<s>", "</s>"]) == [0, 1, 2, 2, 3, 4]
