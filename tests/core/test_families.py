"""Decoder-only and encoder-decoder families in the attention adapter, checked against transformers' eager attention."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
import torch
import transformers as T
from torch import nn

from lightning_attattr.core import adapter, families
from lightning_attattr.core.adapter import (
    PRUNED_HEADS_KEY,
    SUPPORTED_MODEL_TYPES,
    attattr_attention,
    attention_layers,
    attention_scope,
    kv_group_head_mask,
    layer_modules,
)
from lightning_attattr.core.checks import UnsupportedModelError
from lightning_attattr.core.families import HARMLESS_KEYWORDS, IMPLEMENTED_KEYWORDS

V = 100  # vocabulary
# initializer_range 0.2: weights large enough that every family-specific term visibly changes the output
DEC = dict(
    vocab_size=V,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    initializer_range=0.2,
)
GQA = dict(DEC, num_key_value_heads=2, pad_token_id=0)
SEQ2SEQ = dict(num_labels=3, pad_token_id=0)
# a softcap of 1 on scores of order 1 (query_pre_attn_scalar = head_dim: scaling 8 ** -0.5 instead of 256 ** -0.5)
OSS = dict(head_dim=8, num_local_experts=4, num_experts_per_tok=2, sliding_window=3)
GEMMA2 = dict(head_dim=8, attn_logit_softcapping=1.0, query_pre_attn_scalar=8, sliding_window=3)

# id -> (model class, config); every family and head the adapter supports beyond the BERT family
FAMILIES: dict[str, Callable[[], tuple[type, T.PretrainedConfig]]] = {
    "gpt2-lm": lambda: (
        T.GPT2LMHeadModel,
        T.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, initializer_range=0.2),
    ),
    "gpt2-cls": lambda: (
        T.GPT2ForSequenceClassification,
        T.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, initializer_range=0.2, pad_token_id=0),
    ),
    "llama-mha": lambda: (T.LlamaForCausalLM, T.LlamaConfig(**DEC)),
    "llama-gqa": lambda: (T.LlamaForCausalLM, T.LlamaConfig(**GQA)),
    "llama-mqa": lambda: (T.LlamaForCausalLM, T.LlamaConfig(**dict(GQA, num_key_value_heads=1))),
    "llama-cls": lambda: (T.LlamaForSequenceClassification, T.LlamaConfig(**GQA)),
    "qwen2-lm": lambda: (T.Qwen2ForCausalLM, T.Qwen2Config(**GQA)),
    "qwen2-cls": lambda: (T.Qwen2ForSequenceClassification, T.Qwen2Config(**GQA)),
    "qwen3-lm": lambda: (T.Qwen3ForCausalLM, T.Qwen3Config(**GQA, head_dim=8)),
    "mistral-lm": lambda: (T.MistralForCausalLM, T.MistralConfig(**GQA, sliding_window=3)),
    "mistral-cls": lambda: (T.MistralForSequenceClassification, T.MistralConfig(**GQA, sliding_window=3)),
    "qwen3-cls": lambda: (T.Qwen3ForSequenceClassification, T.Qwen3Config(**GQA, head_dim=8)),
    "phi3-lm": lambda: (T.Phi3ForCausalLM, T.Phi3Config(**GQA)),
    "phi3-cls": lambda: (T.Phi3ForSequenceClassification, T.Phi3Config(**GQA)),
    "gemma-lm": lambda: (T.GemmaForCausalLM, T.GemmaConfig(**GQA, head_dim=8)),
    "gemma-cls": lambda: (T.GemmaForSequenceClassification, T.GemmaConfig(**GQA, head_dim=8)),
    "gemma2-lm": lambda: (
        T.Gemma2ForCausalLM,
        T.Gemma2Config(**GQA, **GEMMA2),
    ),
    "gemma2-cls": lambda: (
        T.Gemma2ForSequenceClassification,
        T.Gemma2Config(**GQA, **GEMMA2),
    ),
    "gemma3-lm": lambda: (T.Gemma3ForCausalLM, T.Gemma3TextConfig(**GQA, head_dim=8, sliding_window=3)),
    "gemma3-cls": lambda: (
        T.Gemma3TextForSequenceClassification,
        T.Gemma3TextConfig(**GQA, head_dim=8, sliding_window=3),
    ),
    "gpt_oss-lm": lambda: (T.GptOssForCausalLM, T.GptOssConfig(**GQA, **OSS)),
    "gpt_oss-cls": lambda: (T.GptOssForSequenceClassification, T.GptOssConfig(**GQA, **OSS)),
    "modernbert-cls": lambda: (
        T.ModernBertForSequenceClassification,
        T.ModernBertConfig(**DEC, pad_token_id=0, local_attention=4, global_attn_every_n_layers=2),
    ),
    "bart-lm": lambda: (T.BartForConditionalGeneration, _bart()),
    "bart-cls": lambda: (T.BartForSequenceClassification, _bart()),
    "t5-lm": lambda: (T.T5ForConditionalGeneration, _t5()),
    "t5-cls": lambda: (T.T5ForSequenceClassification, _t5()),
}


def _bart(**kw: int) -> T.BartConfig:
    sizes = dict(encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4)
    sizes.update(kw)
    return T.BartConfig(
        vocab_size=V, d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64, init_std=0.2, **sizes, **SEQ2SEQ
    )


def _t5() -> T.T5Config:
    # 3 decoder layers: the sites' call order interleaves self- and cross-attention
    return T.T5Config(
        vocab_size=V,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=3,
        num_heads=4,
        decoder_start_token_id=0,
        eos_token_id=1,
        **SEQ2SEQ,
    )


def _build(family: str) -> T.PreTrainedModel:
    cls, config = FAMILIES[family]()
    torch.manual_seed(0)
    model = cls(config).eval()
    model.set_attn_implementation("eager")
    return model


def _decoder_only(model: T.PreTrainedModel) -> bool:
    return not model.config.is_encoder_decoder and model.config.model_type != "modernbert"


def _batch(model: T.PreTrainedModel) -> dict[str, torch.Tensor]:
    """Two sequences of 8 tokens, the second with 3 pad tokens: on the left for decoder-only models
    (so that real queries see pad keys), on the right otherwise."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (2, 8), generator=gen)
    mask = torch.ones_like(ids)
    pad = slice(0, 3) if _decoder_only(model) else slice(5, 8)
    mask[1, pad] = 0
    ids[1, pad] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if type(model).__name__.endswith("ForSequenceClassification") and model.config.is_encoder_decoder:
        ids[0, 7] = ids[1, 4] = model.config.eos_token_id  # the decoder inputs are the shifted inputs; cls reads eos
    elif model.config.is_encoder_decoder:
        batch["decoder_input_ids"] = torch.randint(3, V, (2, 5), generator=gen)
    return batch


def _logits(model: T.PreTrainedModel, batch: dict[str, torch.Tensor], **kw: object) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch, **kw).logits


def _hooks(model: T.PreTrainedModel) -> list[tuple[int, int, int, bool]]:
    """Hook counts and instance ``forward`` overrides of every module (transformers adds its own output hooks)."""
    return [
        (len(m._forward_pre_hooks), len(m._forward_hooks), len(m._backward_hooks), "forward" in vars(m))
        for m in model.modules()
    ]


def _native_attentions(model: T.PreTrainedModel, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Eager attention weights of every site, in the order of :func:`attention_layers`."""
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    if not model.config.is_encoder_decoder:
        return list(out.attentions)
    sites = list(out.encoder_attentions)
    for self_attn, cross_attn in zip(out.decoder_attentions, out.cross_attentions, strict=True):
        sites += [self_attn, cross_attn]
    return sites


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_matches_eager_attention(family):
    model = _build(family)
    batch = _batch(model)
    reference = _logits(model, batch)
    native = _native_attentions(model, batch)
    n = len(layer_modules(model))
    assert len(native) == n
    hooks = _hooks(model)
    with attention_scope(model) as ctrl:
        plain = _logits(model, batch)
        assert ctrl.layers_seen == list(range(n))
        with ctrl.capturing() as probs:
            captured = _logits(model, batch)
        ctrl.use_sdpa = True
        fused = _logits(model, batch)
        ctrl.use_sdpa = False
        for layer in range(n):
            with ctrl.replacing(layer, probs[layer]):
                same = _logits(model, batch)
            with ctrl.replacing(layer, torch.zeros_like(probs[layer])):
                zeroed = _logits(model, batch)
            torch.testing.assert_close(same, reference, rtol=1e-5, atol=1e-5)
            assert (zeroed - reference).abs().max() > 1e-4, (family, layer)
    for logits in (plain, captured, fused):
        torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)
    for layer in range(n):
        torch.testing.assert_close(probs[layer], native[layer], rtol=1e-5, atol=1e-6)
    assert model.config._attn_implementation == "eager"
    assert _hooks(model) == hooks


def test_features_the_families_add_are_visible():
    """Each family-specific term changes the probabilities: ignoring it could not pass the eager comparison."""
    gemma2 = _build("gemma2-lm")
    batch = _batch(gemma2)
    capped = _native_attentions(gemma2, batch)[0]
    gemma2.config.attn_logit_softcapping = None
    for layer in gemma2.model.layers:
        layer.self_attn.attn_logit_softcapping = None
    assert (_native_attentions(gemma2, batch)[0] - capped).abs().max() > 1e-3

    oss = _build("gpt_oss-lm")
    rows = _native_attentions(oss, _batch(oss))[0].sum(-1)  # the sink takes part of every row's mass
    assert rows.min() < 0.9

    t5 = _build("t5-lm")
    batch = _batch(t5)
    with attention_scope(t5) as ctrl, ctrl.capturing() as probs:
        _logits(t5, batch)
    with torch.no_grad():  # without the position bias the encoder's first layer would differ
        hidden = t5.encoder.block[0].layer[0].layer_norm(t5.shared(batch["input_ids"][:1]))
        attn = t5.encoder.block[0].layer[0].SelfAttention
        qs = attn.q(hidden).view(1, 8, 4, 8).transpose(1, 2)
        ks = attn.k(hidden).view(1, 8, 4, 8).transpose(1, 2)
        unbiased = torch.softmax(qs @ ks.transpose(-1, -2), -1)  # T5 does not scale the scores
        biased = torch.softmax(qs @ ks.transpose(-1, -2) + attn.compute_bias(8, 8), -1)
    torch.testing.assert_close(probs[0][:1], biased, rtol=1e-5, atol=1e-6)
    assert (probs[0][:1] - unbiased).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["mistral-lm", "modernbert-cls"])
def test_sliding_window_is_carried_by_the_mask(family):
    model = _build(family)
    batch = _batch(model)
    with attention_scope(model) as ctrl, ctrl.capturing() as probs:
        _logits(model, batch)
    pos = torch.arange(8)
    distance = pos[:, None] - pos[None, :]  # query - key
    if family == "mistral-lm":  # causal window of 3: keys q-2 .. q
        outside, inside = (distance >= 3) | (distance < 0), (distance >= 0) & (distance < 3)
        layers = [0, 1]
    else:  # ModernBERT local layer (layer 1 with global_attn_every_n_layers=2): |q - k| <= local_attention / 2
        outside, inside = distance.abs() > 2, distance.abs() <= 2
        layers = [1]
    for layer in layers:
        first = probs[layer][0]  # the unpadded example: [head, query_pos, key_pos]
        assert first[:, outside].abs().max() == 0
        assert first[:, inside].min() > 0


def test_allowed_keywords_reach_the_function_and_stay_exact(monkeypatch):
    """Every implemented or harmless keyword is passed by some model, and the results still equal eager."""
    seen: set[str] = set()
    check = adapter.attention_extras

    def spy(module, kwargs, *args):
        seen.update(kwargs)
        return check(module, kwargs, *args)

    monkeypatch.setattr(adapter, "attention_extras", spy)
    runs = [
        ("llama-gqa", {"output_attentions": True, "output_hidden_states": True}),
        ("llama-gqa", {"position_ids": torch.arange(8)[None], "is_causal": True}),
        ("gpt_oss-lm", {"output_router_logits": True}),
        ("gemma2-lm", {}),
        ("modernbert-cls", {}),
        ("t5-lm", {}),
    ]
    for family, kw in runs:
        model = _build(family)
        batch = _batch(model)
        reference = _logits(model, batch, **kw)
        with attention_scope(model):
            torch.testing.assert_close(_logits(model, batch, **kw), reference, rtol=1e-5, atol=1e-5)
    assert set(HARMLESS_KEYWORDS) | set(IMPLEMENTED_KEYWORDS) <= seen


def test_unknown_keywords_are_refused_in_one_line(monkeypatch):
    model = _build("llama-gqa")
    module = model.model.layers[0].self_attn
    q, k = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 3, 8)
    # a keyword the family's eager attention computes with (as a future variant would) and we do not
    modeling = sys.modules[type(module).__module__]
    eager = modeling.eager_attention_forward

    def with_window_mix(module, query, key, value, attention_mask, scaling, dropout=0.0, window_mix=None, **kwargs):
        return eager(module, query, key, value, attention_mask, scaling, dropout, **kwargs)

    monkeypatch.setattr(modeling, "eager_attention_forward", with_window_mix)
    families._eager_parameters.cache_clear()
    match = r"^Expected the attention keywords of model type 'llama' to be among \[.*\], but got `window_mix`"
    with pytest.raises(UnsupportedModelError, match=match) as error:
        attattr_attention(module, q, k, k, None, window_mix=2)
    assert "\n" not in str(error.value)
    with attention_scope(model), pytest.raises(UnsupportedModelError, match=match):
        attattr_attention(module, q, k, k, None, window_mix=2)
    monkeypatch.undo()
    families._eager_parameters.cache_clear()
    # a family without an eager function of its own beside its attention module: only the listed keywords
    stranger = nn.Linear(2, 2)
    with pytest.raises(UnsupportedModelError, match="but got `window_mix`"):
        attattr_attention(stranger, q, k, k, None, window_mix=2)
    # harmless only when the mask carries them
    with pytest.raises(UnsupportedModelError, match="Expected an attention mask that carries `sliding_window`"):
        attattr_attention(module, q, k, k, None, sliding_window=2)
    with pytest.raises(UnsupportedModelError, match="Expected an attention mask that carries `is_causal`"):
        attattr_attention(module, q, k, k, None, is_causal=True)
    out, _ = attattr_attention(module, q, k, k, None, is_causal=False, sliding_window=3, position_ids=None)
    assert out.shape == (1, 3, 4, 8)


def test_layer_lists_and_site_names():
    assert attention_layers(_build("gpt2-lm")) == ["layer.0", "layer.1"]
    assert len(layer_modules(_build("gpt2-cls"))) == 2
    bart = _build("bart-lm")
    assert attention_layers(bart) == [
        "encoder.0",
        "encoder.1",
        "decoder.0.self",
        "decoder.0.cross",
        "decoder.1.self",
        "decoder.1.cross",
    ]
    assert layer_modules(bart)[3] is bart.model.decoder.layers[0].encoder_attn
    t5 = _build("t5-lm")
    names = attention_layers(t5)
    assert names[:2] == ["encoder.0", "encoder.1"] and names[-2:] == ["decoder.2.self", "decoder.2.cross"]
    assert layer_modules(t5)[2] is t5.decoder.block[0].layer[0].SelfAttention
    with attention_scope(t5) as ctrl:
        assert ctrl.layer_names == names and not ctrl.can_skip_below and ctrl.n_layers == 8
        with ctrl.capturing() as probs:
            _logits(t5, _batch(t5))
        assert list(probs[names.index("decoder.0.cross")].shape) == [2, 4, 5, 8]  # [batch, head, decoder, encoder]
        with ctrl._state(_skip_below=1), pytest.raises(RuntimeError, match="cannot be replayed"):
            _logits(t5, _batch(t5))
    with attention_scope(_build("llama-gqa")) as ctrl:
        assert ctrl.can_skip_below and ctrl.layer_names == ["layer.0", "layer.1"]
    assert {"gpt2", "llama", "gemma3_text", "gpt_oss", "bart", "t5", "modernbert"} <= set(SUPPORTED_MODEL_TYPES)


def test_encoder_decoder_head_count_mismatch_is_refused():
    model = T.BartForConditionalGeneration(_bart(decoder_attention_heads=2))
    with pytest.raises(UnsupportedModelError, match="encoder has 4 attention heads and its decoder 2"):
        attention_layers(model)


def _zero_heads_by_hand(model: T.PreTrainedModel, layer: int, heads: list[int]) -> torch.utils.hooks.RemovableHandle:
    """Zero the given query heads' context vectors at the input of the output projection."""
    d = model.config.head_dim

    def pre_hook(_module, args):
        x = args[0].clone()
        for h in heads:
            x[..., h * d : (h + 1) * d] = 0
        return (x,)

    return model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(pre_hook)


def test_kv_group_head_mask():
    model = _build("llama-gqa")
    batch = _batch(model)
    handle = _zero_heads_by_hand(model, 1, [2, 3])  # group 1 of layer 1: query heads 2 and 3
    try:
        reference = _logits(model, batch)
    finally:
        handle.remove()
    mask = kv_group_head_mask(torch.tensor([[1.0, 1.0], [1.0, 0.0]]), n_heads=4)
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    with attention_scope(model) as ctrl, ctrl.masked(mask):
        assert ctrl.n_kv_heads == 2
        torch.testing.assert_close(_logits(model, batch), reference, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"Expected `n_heads` to be a positive multiple .* \(2\), but got 3"):
        kv_group_head_mask(torch.ones(2, 2), n_heads=3)
    with attention_scope(_build("gpt2-lm")) as ctrl:
        assert ctrl.n_kv_heads == ctrl.n_heads == 4


@pytest.mark.parametrize("family", ["llama-gqa", "gpt_oss-lm"])
def test_pruned_query_heads_keep_their_key_value_group(family):
    """Query heads 2 and 3 pruned from layer 0: the two left both read key/value group 0 (gpt-oss: and their sinks)."""
    model = _build(family)
    batch = _batch(model)
    handle = _zero_heads_by_hand(model, 0, [2, 3])
    try:
        reference = _logits(model, batch)
    finally:
        handle.remove()
    attn, d = model.model.layers[0].self_attn, model.config.head_dim
    keep = torch.arange(2 * d)  # the rows of query heads 0 and 1
    q_proj = torch.nn.Linear(32, 2 * d, bias=attn.q_proj.bias is not None)
    o_proj = torch.nn.Linear(2 * d, 32, bias=attn.o_proj.bias is not None)
    with torch.no_grad():
        q_proj.weight.copy_(attn.q_proj.weight[keep])
        o_proj.weight.copy_(attn.o_proj.weight[:, keep])
        if attn.q_proj.bias is not None:
            q_proj.bias.copy_(attn.q_proj.bias[keep])
        if attn.o_proj.bias is not None:
            o_proj.bias.copy_(attn.o_proj.bias)
    attn.q_proj, attn.o_proj = q_proj, o_proj
    setattr(model.config, PRUNED_HEADS_KEY, {"0": [2, 3]})
    with attention_scope(model) as ctrl, ctrl.capturing() as probs:
        torch.testing.assert_close(_logits(model, batch), reference, rtol=1e-5, atol=1e-5)
    assert probs[0][:, 2:].abs().max() == 0 and probs[0][:, :2].abs().max() > 0


@pytest.mark.parametrize("family", ["llama-gqa", "gemma2-lm", "gpt_oss-lm", "gpt2-lm"])
def test_decoder_only_replays_cached_lower_layers(family):
    """``can_skip_below``: layer 1 replaced by its own probabilities, the inputs and layer 0's replayed output
    repeated 3x per example (as the integration passes do)."""
    from lightning_attattr.core.attribution import _repeat_rows

    model = _build(family)
    batch = _batch(model)
    reference = _logits(model, batch)
    with attention_scope(model) as ctrl:
        recorded: dict = {}
        with ctrl.capturing([1]) as probs, ctrl._state(_record=frozenset({0}), _recorded=recorded):
            _logits(model, batch)
        steps, n = 3, len(batch["input_ids"])
        replacement = probs[1].repeat_interleave(steps, dim=0)  # [batch * step, head, query_pos, key_pos]
        below = _repeat_rows(recorded[0], n, steps)
        with ctrl._state(_replace_layer=1, _replacement=replacement, _skip_below=1, _skip_output=below):
            expanded = _logits(model, _repeat_rows(batch, n, steps))
        assert ctrl.layers_seen == [1]
    torch.testing.assert_close(expanded, reference.repeat_interleave(steps, dim=0), rtol=1e-5, atol=1e-5)


def test_keywords_the_familys_eager_attention_ignores_pass_as_in_the_native_model():
    # model-level inputs reach every attention call; Llama's eager attention drops them, and so do we
    model = _build("llama-cls")
    batch = _batch(model)
    kw = {"token_type_ids": torch.zeros_like(batch["input_ids"])}
    reference = _logits(model, batch, **kw)
    with attention_scope(model) as ctrl, ctrl.capturing():
        torch.testing.assert_close(_logits(model, batch, **kw), reference, rtol=1e-5, atol=1e-5)
