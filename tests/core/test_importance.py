import math
import subprocess
import sys

import pytest
import torch

from lightning_attattr.core.adapter import ATTN_IMPLEMENTATION, attention_scope
from lightning_attattr.core.attribution import AttentionIntegratedGradients
from lightning_attattr.core.importance import (
    POOLINGS,
    PRUNING_FRACTIONS,
    HeadId,
    accuracy_difference_importance,
    attention_weight_importance,
    attribution_head_scores,
    head_importance,
    heads_to_prune,
    normalize_per_layer,
    prune_mask,
    pruning_order,
    random_importance,
    taylor_importance,
)
from lightning_attattr.core.pruning import prune_heads
from tests.conftest import batch_for, make_model, text_batch

N_LAYERS, N_HEADS, HEAD_DIM = 3, 4, 8
LABELS = torch.tensor([0, 2, 1])


def _no_hooks(model):
    for m in model.modules():
        assert not m._forward_pre_hooks and not m._forward_hooks and not m._backward_hooks, m
        assert "forward" not in vars(m), m


def _unpadded(batch, i):
    n = int(batch["attention_mask"][i].sum())
    return {k: v[i : i + 1, :n] for k, v in batch.items()}


# ------------------------------------------------------------------------------ pooling
def test_pooling_on_hand_made_maps():
    a = torch.tensor([[-1.0, -3.0], [-0.5, -2.0]], dtype=torch.float64)  # all negative: the signed max is -0.5
    b = torch.tensor([[4.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]], dtype=torch.float64)
    maps = [torch.stack([a, 2 * a])[None], torch.stack([b, -b])[None]]  # [layer=1, head=2, q, k], q = 2 and 3
    got = {p: attribution_head_scores(maps, pooling=p) for p in POOLINGS}
    for scores in got.values():
        assert scores.shape == (2, 1, 2) and scores.dtype == torch.float64
    assert got["max"].tolist() == [[[-0.5, -1.0]], [[4.0, 0.0]]]
    assert got["sum"].tolist() == [[[-6.5, -13.0]], [[9.0, -9.0]]]
    assert got["mean"].tolist() == [[[-6.5 / 4, -13.0 / 4]], [[1.0, -1.0]]]  # over 4 and 9 real entries


def test_pooling_accepts_an_attribution_result():
    model = make_model("bert", dtype=torch.float64)
    batch = text_batch()
    result = AttentionIntegratedGradients(model).attribute(batch, target=0, n_steps=2)
    scores = attribution_head_scores(result)
    assert scores.shape == (3, N_LAYERS, N_HEADS)
    for i, a in enumerate(result.attributions):
        torch.testing.assert_close(scores[i], a.flatten(-2).amax(-1))
    torch.testing.assert_close(
        attribution_head_scores(result.attributions, "sum"), attribution_head_scores(result, "sum")
    )


@pytest.mark.parametrize(
    ("attributions", "pooling", "error", "match"),
    [
        (
            [torch.zeros(1, 1, 2, 2)],
            "median",
            ValueError,
            r"`pooling` to be one of \['max', 'mean', 'sum'\], but got 'median'",
        ),
        (torch.zeros(2, 1, 1, 2, 2), "max", TypeError, r"not `result.padded\(\)`"),
        ([], "max", ValueError, "at least one example"),
        ("maps", "max", TypeError, "but got str"),
        (
            [torch.zeros(1, 2, 2)],
            "max",
            ValueError,
            r"`attributions\[0\]` of shape .* = \['\*', '\*', '\*', '\*'\], but got \[1, 2, 2\]",
        ),
        (
            [torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 2, 2)],
            "max",
            ValueError,
            r"`attributions\[1\]` of shape .*\[1, 2, .*but got \[1, 3, 2, 2\]",
        ),
        ([torch.zeros(1, 2, 0, 0)], "max", ValueError, "at least one entry"),
    ],
)
def test_pooling_validation(attributions, pooling, error, match):
    with pytest.raises(error, match=match):
        attribution_head_scores(attributions, pooling=pooling)


def test_head_importance_is_the_mean_over_examples():
    scores = torch.arange(24, dtype=torch.float64).view(2, 3, 4)
    torch.testing.assert_close(head_importance(scores), scores.mean(0))
    with pytest.raises(
        ValueError, match=r"`scores` of shape \[batch, layer, head\] = \['\*', '\*', '\*'\], but got \[3, 4\]"
    ):
        head_importance(scores[0])
    with pytest.raises(RuntimeError, match="at least one example"):
        head_importance(scores[:0])


# ------------------------------------------------------------------------------ Taylor
def _reference_taylor(model, batch, variant, labels=None):
    """Slow independent reference: forward hooks on BERT's self-attention outputs (heads concatenated)."""
    outputs = {}
    modules = [layer.attention.self for layer in model.bert.encoder.layer]
    handles = [
        m.register_forward_hook(lambda _m, _args, out, layer=layer: outputs.__setitem__(layer, out[0]))
        for layer, m in enumerate(modules)
    ]
    try:
        logits = model(**batch).logits  # parameters require grad: the outputs are on the graph
    finally:
        for h in handles:
            h.remove()
    if variant == "official":
        scalar = logits.sum()
    else:
        scalar = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    grads = torch.autograd.grad(scalar, [outputs[layer] for layer in range(N_LAYERS)])
    real = batch["attention_mask"].to(logits.dtype)  # [batch, pos]
    scores = []
    for layer, grad in enumerate(grads):
        b, pos, _ = grad.shape
        dot = (outputs[layer] * grad).view(b, pos, N_HEADS, HEAD_DIM).sum(-1) * real[:, :, None]  # [batch, pos, head]
        scores.append(dot.abs().sum(1) if variant == "official" else dot.sum(1).abs())
    return torch.stack(scores, dim=1).detach()  # [batch, layer, head]


def _reference_michel_by_gate(model, batch, labels):
    """|dL/d xi| through a head mask with requires_grad, one unpadded example at a time."""
    rows = []
    for i in range(batch["input_ids"].shape[0]):
        gate = torch.ones(N_LAYERS, N_HEADS, dtype=torch.float64, requires_grad=True)
        with attention_scope(model) as ctrl, ctrl.masked(gate):
            logits = model(**_unpadded(batch, i)).logits
        loss = torch.nn.functional.cross_entropy(logits, labels[i : i + 1])
        (grad,) = torch.autograd.grad(loss, gate)
        rows.append(grad.abs())
    return torch.stack(rows)


@pytest.mark.parametrize("variant", ["official", "michel"])
def test_taylor_matches_an_independent_reference(bert64, variant):
    batch = text_batch(seq_len=9)  # extra padding on every example
    labels = LABELS if variant == "michel" else None
    got = taylor_importance(bert64, batch, variant=variant, labels=labels)
    want = _reference_taylor(bert64, batch, variant, LABELS)
    assert got.shape == (3, N_LAYERS, N_HEADS) and got.dtype == torch.float64
    assert (got > 0).all()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for p in bert64.parameters():
        assert p.grad is None


def test_taylor_michel_is_the_gradient_of_a_head_gate(bert64):
    batch = text_batch()
    got = taylor_importance(bert64, {**batch, "labels": LABELS}, variant="michel")  # labels from the inputs
    torch.testing.assert_close(got, _reference_michel_by_gate(bert64, batch, LABELS), rtol=1e-9, atol=1e-12)


def test_taylor_michel_by_finite_differences(bert64):
    batch = _unpadded(text_batch(), 1)
    got = taylor_importance(bert64, batch, variant="michel", labels=LABELS[1:2])[0]
    eps = 1e-6

    def loss(mask):
        with torch.no_grad(), attention_scope(bert64) as ctrl, ctrl.masked(mask):
            logits = bert64(**batch).logits
        return torch.nn.functional.cross_entropy(logits, LABELS[1:2]).item()

    for layer, head in [(0, 0), (1, 3), (2, 2)]:
        up, down = (
            torch.ones(N_LAYERS, N_HEADS, dtype=torch.float64),
            torch.ones(N_LAYERS, N_HEADS, dtype=torch.float64),
        )
        up[layer, head] += eps
        down[layer, head] -= eps
        assert got[layer, head].item() == pytest.approx(abs(loss(up) - loss(down)) / (2 * eps), rel=1e-6)


@pytest.mark.parametrize("variant", ["official", "michel"])
def test_taylor_is_padding_invariant(bert64, variant):
    batch = text_batch(seq_len=10)
    labels = LABELS if variant == "michel" else None
    together = taylor_importance(bert64, batch, variant=variant, labels=labels)
    for i in range(3):
        alone = taylor_importance(
            bert64, _unpadded(batch, i), variant=variant, labels=None if labels is None else labels[i : i + 1]
        )
        torch.testing.assert_close(together[i], alone[0], rtol=1e-10, atol=1e-12)


def test_official_aggregate_is_normalized_per_layer(bert64):
    aggregate = normalize_per_layer(taylor_importance(bert64, text_batch()).sum(0))
    torch.testing.assert_close(aggregate.norm(dim=1), torch.ones(N_LAYERS, dtype=torch.float64))
    assert normalize_per_layer(torch.zeros(2, 3)).abs().max() == 0  # the 1e-20 keeps empty layers finite


def test_calls_leave_the_model_as_they_found_it():
    model = make_model("bert", dtype=torch.float64)
    model.train()
    model.bert.pooler.eval()
    model.bert.embeddings.requires_grad_(False)
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    impl = model.config._attn_implementation
    batch = text_batch()
    with torch.inference_mode():  # Lightning's evaluation loops
        official = taylor_importance(model, batch)
        michel = taylor_importance(model, batch, variant="michel", labels=LABELS)
        weights = attention_weight_importance(model, batch)
    assert official.shape == michel.shape == weights.shape == (3, N_LAYERS, N_HEADS)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert model.config._attn_implementation == impl != ATTN_IMPLEMENTATION
    _no_hooks(model)
    # train mode was not used for the scores (dropout would make them random)
    torch.testing.assert_close(taylor_importance(model, batch), official, rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["official", "michel"])
def test_pruned_heads_score_zero_and_the_rest_equal_the_masked_model(variant):
    heads = {0: [1, 3], 2: [0]}
    mask = torch.ones(N_LAYERS, N_HEADS, dtype=torch.float64)
    for layer, hs in heads.items():
        mask[layer, hs] = 0
    pruned, reference = make_model("bert", dtype=torch.float64), make_model("bert", dtype=torch.float64)
    prune_heads(pruned, heads)
    batch = text_batch()
    labels = LABELS if variant == "michel" else None
    got = taylor_importance(pruned, batch, variant=variant, labels=labels)
    with attention_scope(reference) as ctrl, ctrl.masked(mask):  # the enclosing scope's mask stays active
        want = taylor_importance(reference, batch, variant=variant, labels=labels)
    assert got[:, mask == 0].abs().max() == 0 and (got[:, mask == 1] > 0).all()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    weights = attention_weight_importance(pruned, batch)
    with attention_scope(reference) as ctrl, ctrl.masked(mask):
        torch.testing.assert_close(weights, attention_weight_importance(reference, batch), rtol=1e-12, atol=0)
    assert weights[:, mask == 0].abs().max() == 0


@pytest.mark.parametrize("arch", ["roberta", "distilbert", "albert", "vit"])
def test_other_architectures(arch):
    model = make_model(arch)
    batch = batch_for(arch)
    n = 2 if arch == "vit" else 3
    for variant in ("official", "michel"):
        scores = taylor_importance(model, batch, variant=variant, labels=None if variant == "official" else LABELS[:n])
        assert scores.shape == (n, N_LAYERS, N_HEADS) and torch.isfinite(scores).all()
        assert (scores >= 0).all() and (scores.sum((0, 2)) > 0).all()
    weights = attention_weight_importance(model, batch)
    assert ((weights > 0) & (weights <= 1)).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(variant="Official"), ValueError, r"`variant` to be one of \['official', 'michel'\], but got 'Official'"),
        (dict(variant="michel"), ValueError, r"gold `labels` for `variant='michel'`.*but got neither"),
        (dict(labels=[0, 1, 2]), ValueError, r"`labels` to be None for `variant='official'`"),
        (dict(variant="michel", labels=[0, 1]), ValueError, r"shape \[3\], but got \[2\]"),
        (dict(variant="michel", labels=[0, 1, 3]), ValueError, r"classes in \[0, 2\], but got \[3\]"),
        (dict(variant="michel", labels=[0.0, 1.0, 2.0]), TypeError, "integer class indices"),
    ],
)
def test_taylor_validation(bert, kwargs, error, match):
    with pytest.raises(error, match=match):
        taylor_importance(bert, text_batch(), **kwargs)


# ------------------------------------------------------------------------------ attention weight
def test_attention_weight_is_the_max_probability_over_real_entries():
    model = make_model("bert", dtype=torch.float64)
    model.set_attn_implementation("eager")
    batch = text_batch(seq_len=9)
    with torch.no_grad():
        attentions = model(**batch, output_attentions=True).attentions  # per layer [batch, head, q, k]
    want = torch.zeros(3, N_LAYERS, N_HEADS, dtype=torch.float64)
    for i, n in enumerate(batch["attention_mask"].sum(1).tolist()):
        for layer in range(N_LAYERS):
            want[i, layer] = attentions[layer][i, :, :n, :n].flatten(1).max(1).values
    torch.testing.assert_close(attention_weight_importance(model, batch), want, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------ other baselines
def test_accuracy_difference_with_a_fake_evaluate():
    weight = torch.tensor([[0.0, 0.1, -0.05], [0.2, 0.0, 0.0]], dtype=torch.float64)  # accuracy carried per head
    calls = []

    def evaluate(mask):
        calls.append(None if mask is None else mask.clone())
        if mask is None:
            return 0.8
        assert mask.shape == (2, 3) and mask.dtype == torch.float32 and int((mask == 0).sum()) == 1
        return 0.8 - float((weight * (1 - mask.double())).sum())

    got = accuracy_difference_importance(evaluate, n_layers=2, n_heads=3)
    torch.testing.assert_close(got, weight)
    assert calls[0] is None and len(calls) == 7
    assert pruning_order(got)[:4] == [HeadId(0, 2), HeadId(0, 0), HeadId(1, 1), HeadId(1, 2)]  # ties by index
    assert accuracy_difference_importance(lambda mask: torch.tensor(0.5), 1, 1).tolist() == [[0.0]]


@pytest.mark.parametrize(
    ("evaluate", "n_layers", "error", "match"),
    [
        ("acc", 2, TypeError, "`evaluate` to be a callable"),
        (lambda mask: 0.5, 0, ValueError, "`n_layers` to be a positive integer, but got 0"),
        (lambda mask: 0.5, 2.0, TypeError, "`n_layers` to be a positive integer, but got 2.0"),
        (lambda mask: "high", 2, TypeError, "`evaluate` to return a number.*'high'"),
        (lambda mask: math.nan, 2, ValueError, "returned NaN"),
    ],
)
def test_accuracy_difference_validation(evaluate, n_layers, error, match):
    with pytest.raises(error, match=match):
        accuracy_difference_importance(evaluate, n_layers, 2)


def test_random_importance_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a, b, c = random_importance(3, 4, seed=0), random_importance(3, 4, seed=0), random_importance(3, 4, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.shape == (3, 4) and a.dtype == torch.float64 and ((a >= 0) & (a < 1)).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(TypeError, match="`seed` to be an integer, but got '0'"):
        random_importance(3, 4, seed="0")


# ------------------------------------------------------------------------------ pruning protocol
def test_pruning_fractions_are_exact_decimals():
    assert PRUNING_FRACTIONS == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def test_counts_for_144_heads_match_the_official_protocol():
    importance = random_importance(12, 12, seed=0)
    counts = [sum(len(h) for h in heads_to_prune(importance, r).values()) for r in PRUNING_FRACTIONS]
    assert counts == [0, 14, 28, 43, 57, 72, 86, 100, 115, 129, 144]
    masks = [prune_mask(importance, r) for r in PRUNING_FRACTIONS]
    assert [int((m == 0).sum()) for m in masks] == counts
    for smaller, larger in zip(masks, masks[1:]):  # nested: a head once removed stays removed
        assert ((smaller == 0) <= (larger == 0)).all()


def test_order_is_ascending_with_stable_ties():
    importance = torch.tensor([[0.3, 0.1, 0.3], [0.1, -1.0, 0.3]])
    order = pruning_order(importance)
    assert order == [HeadId(1, 1), HeadId(0, 1), HeadId(1, 0), HeadId(0, 0), HeadId(0, 2), HeadId(1, 2)]
    values = [importance[h.layer, h.head].item() for h in order]
    assert values == sorted(values)
    assert heads_to_prune(importance, 0.5) == {0: [1], 1: [0, 1]}
    assert heads_to_prune(importance, 0.0) == {}
    mask = prune_mask(importance, 0.5)
    assert mask.tolist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]] and mask.dtype == torch.float32
    assert prune_mask(torch.tensor([[2, 1]]), 0.5).tolist() == [[1.0, 0.0]]  # integer scores: float32 mask


@pytest.mark.parametrize(
    ("importance", "fraction", "error", "match"),
    [
        (torch.zeros(2, 2), 1.1, ValueError, r"`fraction` to be a number in \[0, 1\], but got 1.1"),
        (torch.zeros(2, 2), -0.1, ValueError, r"`fraction` to be a number in \[0, 1\], but got -0.1"),
        (torch.zeros(2, 2), math.nan, ValueError, r"`fraction` to be a number in \[0, 1\], but got nan"),
        (torch.zeros(2, 2), True, TypeError, r"`fraction` to be a number in \[0, 1\], but got True"),
        (torch.zeros(4), 0.5, ValueError, r"`importance` of shape \[layer, head\] = \['\*', '\*'\], but got \[4\]"),
        ([[0.0]], 0.5, TypeError, r"`importance` to be a tensor of shape \[layer, head\], but got list"),
        (torch.tensor([[0.0, math.nan]]), 0.5, ValueError, "without NaN"),
        (torch.zeros(0, 3), 0.5, ValueError, "at least one head"),
    ],
)
def test_pruning_validation(importance, fraction, error, match):
    with pytest.raises(error, match=match):
        heads_to_prune(importance, fraction)


def test_importing_importance_does_not_import_lightning():
    code = (
        "import sys, lightning_attattr.core.importance; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'torchmetrics')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
