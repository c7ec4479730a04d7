import pytest
import torch
import transformers

from lightning_attattr.core.adapter import ATTN_IMPLEMENTATION, SUPPORTED_MODEL_TYPES, attention_scope, layer_modules
from tests.conftest import batch_for, make_model

ARCHS = ["bert", "roberta", "electra", "xlm-roberta", "distilbert", "albert", "vit"]


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _no_hooks(model):
    for m in model.modules():
        assert not m._forward_pre_hooks and not m._forward_hooks and not m._backward_hooks, m
        assert "forward" not in vars(m), m


def test_registered_with_both_interfaces():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    assert ATTN_IMPLEMENTATION in AttentionInterface._global_mapping
    assert ATTN_IMPLEMENTATION in AttentionMaskInterface._global_mapping


@pytest.mark.parametrize("arch", ARCHS)
def test_scope_is_exact_and_leaves_nothing_behind(arch):
    model = make_model(arch)
    batch = batch_for(arch)
    before_impl = model.config._attn_implementation
    reference = _logits(model, batch)
    n = len(layer_modules(model))
    with attention_scope(model) as ctrl:
        assert model.config._attn_implementation == ATTN_IMPLEMENTATION
        with ctrl.capturing() as probs:
            inside = _logits(model, batch)
        assert ctrl.layers_seen == list(range(n))
        ctrl.use_sdpa = True
        fused = _logits(model, batch)
    torch.testing.assert_close(inside, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)
    assert sorted(probs) == list(range(n))
    rows = probs[0].sum(-1)
    torch.testing.assert_close(rows, torch.ones_like(rows))  # every query row is a distribution
    if "attention_mask" in batch:  # padded keys get no attention: the mask was applied
        pad = batch["attention_mask"] == 0
        assert probs[0].permute(0, 2, 3, 1)[pad[:, None, :].expand(-1, probs[0].shape[2], -1)].abs().max() == 0
    assert model.config._attn_implementation == before_impl
    _no_hooks(model)
    torch.testing.assert_close(_logits(model, batch), reference, rtol=0, atol=0)


def test_padding_is_not_silently_dropped(bert):
    batch = batch_for("bert")
    short = {k: v[1:2, :4] for k, v in batch.items()}  # example 1 alone, unpadded (length 4)
    with attention_scope(bert):
        padded = _logits(bert, batch)[1]
        alone = _logits(bert, short)[0]
    torch.testing.assert_close(padded, alone, rtol=0, atol=1e-6)


def _manual_head_removal(model, batch, head_scale):
    """Scale each head's context vector (input slice of the attention output projection) by hand."""
    d = model.config.hidden_size // model.config.num_attention_heads
    handles = []
    for layer, module in enumerate(model.bert.encoder.layer):

        def pre_hook(_m, args, layer=layer):
            x = args[0].clone()
            for h in range(head_scale.shape[1]):
                x[..., h * d : (h + 1) * d] *= head_scale[layer, h]
            return (x,)

        handles.append(module.attention.output.dense.register_forward_pre_hook(pre_hook))
    try:
        return _logits(model, batch)
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("kind", ["binary", "soft"])
def test_head_mask_equals_removing_the_heads_contribution(kind):
    model = make_model("bert")
    model.set_attn_implementation("eager")
    batch = batch_for("bert")
    g = torch.Generator().manual_seed(3)
    mask = (torch.rand(3, 4, generator=g) > 0.5).float() if kind == "binary" else torch.rand(3, 4, generator=g)
    expected = _manual_head_removal(model, batch, mask)
    with attention_scope(model) as ctrl, ctrl.masked(mask):
        got = _logits(model, batch)
    assert not torch.allclose(expected, _logits(model, batch), atol=1e-4)  # the mask does matter
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_head_mask_of_ones_changes_nothing_and_zero_mask_is_total(bert):
    batch = batch_for("bert")
    reference = _logits(bert, batch)
    with attention_scope(bert) as ctrl:
        ctrl.set_head_mask(torch.ones(3, 4))
        torch.testing.assert_close(_logits(bert, batch), reference, rtol=0, atol=1e-6)
        ctrl.set_head_mask(None)
        with ctrl.masked(torch.zeros(3, 4)), ctrl.capturing([1]) as probs:
            _logits(bert, batch)
        assert probs[1].abs().max() == 0 and ctrl.head_mask is None


def test_head_mask_validation(bert):
    with attention_scope(bert) as ctrl:
        expected = r"`head_mask` of shape \[layer, head\] = \[3, 4\] or \[row, 3, 4\], but got \[4, 3\]"
        with pytest.raises(ValueError, match=expected):
            ctrl.set_head_mask(torch.ones(4, 3))
        with pytest.raises(TypeError, match="`head_mask` to be a tensor or None"):
            ctrl.set_head_mask([[1.0]])


def test_scope_restores_on_exception(bert):
    batch = batch_for("bert")
    reference = _logits(bert, batch)
    with pytest.raises(RuntimeError, match="boom"):
        with attention_scope(bert) as ctrl:
            ctrl.set_head_mask(torch.zeros(3, 4))
            _logits(bert, batch)
            raise RuntimeError("boom")
    assert bert.config._attn_implementation != ATTN_IMPLEMENTATION
    _no_hooks(bert)
    torch.testing.assert_close(_logits(bert, batch), reference, rtol=0, atol=0)


def test_nested_scopes_share_one_controller(bert):
    with attention_scope(bert) as outer:
        with attention_scope(bert) as inner:
            assert inner is outer
        assert bert.config._attn_implementation == ATTN_IMPLEMENTATION  # inner exit keeps the outer scope
    _no_hooks(bert)


def test_albert_shares_one_module_across_layers():
    model = make_model("albert")
    modules = layer_modules(model)
    assert len(modules) == 3 and all(m is modules[0] for m in modules)
    with attention_scope(model) as ctrl:
        _logits(model, batch_for("albert"))
        _logits(model, batch_for("albert"))  # the per-forward counter restarts
        assert ctrl.layers_seen == [0, 1, 2]


def test_unsupported_models_are_refused_with_the_supported_list():
    torch.manual_seed(0)
    cfg = transformers.DebertaV2Config(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
    )
    deberta = transformers.DebertaV2ForSequenceClassification(cfg)
    with pytest.raises(ValueError, match=r"'deberta-v2' is not supported.*Supported model types: bert, roberta"):
        with attention_scope(deberta):
            pass
    with pytest.raises(TypeError, match="Expected `model` to be a Hugging Face `PreTrainedModel`"):
        layer_modules(torch.nn.Linear(2, 2))
    assert set(ARCHS) <= set(SUPPORTED_MODEL_TYPES)
