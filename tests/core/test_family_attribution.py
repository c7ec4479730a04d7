"""`attribute` on every supported family and head, against the slow reference (float64, padded batches).

The fast path shares no integration code with :mod:`lightning_attattr.core.reference`: the reference
runs one example at a time, unpadded, with its own attention function (softcap, sinks and the T5
position bias written independently) and, for encoder-decoders, the whole model per step.
"""

from __future__ import annotations

import pytest
import torch
import transformers as T

from lightning_attattr.core import reference
from lightning_attattr.core.adapter import attention_layers
from lightning_attattr.core.attribution import attribute
from lightning_attattr.core.checks import ArgumentError
from tests.core.test_families import FAMILIES, V, _build
from tests.core.test_targets import assert_maps_close, at

# Relative tolerance of the maps, of the largest entry. Both sides run in float64, but some families
# compute parts in float32 also in a float64 model (the Gemma and T5 norms cast to float32, rotary
# tables are float32): the two paths differ in batch composition, padding and kernels (SDPA in the
# untouched layers), so those float32 roundings (about 1e-7 relative) differ too; 1e-5 leaves 100x margin.
RTOL = 1e-5
# Families with a norm right after attention (Gemma 2/3): the zero baseline can be degenerate (the norm
# undoes the scale of alpha * A), so they are integrated from uniform attention.
UNIFORM = ("gemma2", "gemma3")
# Completeness needs F(B + alpha (A - B)) smooth in alpha; two families are checked on a smooth variant:
# - T5's original ReLU feed-forward has kinks where a unit switches, where Gauss rules converge slowly
#   (measured: 5e-2 relative after 63 nodes on the tiny model): the variant uses gated GELU (T5 v1.1, Flan-T5);
# - gpt-oss routes each token to its top-k experts: when the selection changes along the path, F jumps, and
#   integrated gradients cannot see a jump (measured: up to 0.6 relative): the variant routes to all experts.
# The maps of the original configurations are checked against the reference all the same.
SMOOTH = {
    "t5-lm": dict(dense_act_fn="gelu_new", is_gated_act=True),
    "t5-cls": dict(dense_act_fn="gelu_new", is_gated_act=True),
    "gpt_oss-lm": dict(num_experts_per_tok=4),
    "gpt_oss-cls": dict(num_experts_per_tok=4),
}


def _model(family: str, smooth: bool = False) -> T.PreTrainedModel:
    model = _build(family)
    if smooth and family in SMOOTH:
        cls, config = FAMILIES[family]()
        for key, value in SMOOTH[family].items():
            setattr(config, key, value)
        torch.manual_seed(0)
        model = cls(config).eval()
    if model.config.model_type == "gpt_oss":
        model.set_experts_implementation("eager")  # the default grouped matmul has no float64 kernel
    return model.double()


def _decoder_only(model: T.PreTrainedModel) -> bool:
    return not model.config.is_encoder_decoder and model.config.model_type != "modernbert"


def _batch(model: T.PreTrainedModel, side: str = "right") -> dict[str, torch.Tensor]:
    """Two examples of 8 and 7 real tokens (one length group: the padding runs inside the passes).

    Decoder-only models are padded on ``side``; encoder-decoder LMs get decoder inputs of 5 and 4 real
    tokens (right padding with ``decoder_attention_mask``); classifiers of encoder-decoders (which read the
    hidden state at ``<eos>``) get one ``<eos>`` in every example, as BART's classifier requires.
    """
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (2, 8), generator=gen)
    mask = torch.ones_like(ids)
    pad = 0 if side == "left" and _decoder_only(model) else 7
    ids[1, pad], mask[1, pad] = 0, 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if model.config.is_encoder_decoder:
        if type(model).__name__.endswith("ForSequenceClassification"):
            ids[0, 7] = ids[1, 6] = model.config.eos_token_id
        else:
            batch["decoder_input_ids"] = torch.randint(3, V, (2, 5), generator=gen)
            batch["decoder_attention_mask"] = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    return batch


def _is_lm(model: T.PreTrainedModel) -> bool:
    return not type(model).__name__.endswith("ForSequenceClassification")


def _scalar(model: T.PreTrainedModel, targets: torch.Tensor) -> reference.Scalar | torch.Tensor:
    """The reference's target: the class, or the token's probability at the last real (decoder) position."""
    return at(-1, targets.tolist()) if _is_lm(model) else targets


@pytest.mark.parametrize("family", list(FAMILIES))
def test_attribution_matches_the_reference_and_is_complete(family):
    model = _model(family)
    batch = _batch(model)
    baseline = "uniform" if family.split("-")[0] in UNIFORM else "zero"
    ours = attribute(model, batch, method="gausslegendre", n_steps=2, baseline=baseline)
    ref = reference.reference_attattr(
        model, batch, _scalar(model, ours.target), method="gausslegendre", n_steps=2, baseline=baseline
    )
    assert ours.layers == tuple(range(len(attention_layers(model))))
    assert_maps_close(ours.attributions, ref.attributions, rtol=RTOL)
    torch.testing.assert_close(ours.prob, ref.prob, rtol=RTOL, atol=0)
    # completeness with adaptive integration, against the reference's own F(A) and F(baseline)
    smooth = _model(family, smooth=True) if family in SMOOTH else model
    auto = attribute(smooth, batch, n_steps="auto", baseline=baseline, return_convergence_delta=True)
    if smooth is not model:
        ref = reference.reference_attattr(
            smooth, batch, _scalar(smooth, auto.target), method="gausslegendre", n_steps=1, baseline=baseline
        )
    assert not auto.unconverged.any()
    sums = torch.stack([a.flatten(1).sum(1) for a in auto.attributions])  # [example, layer]
    gap = ref.prob[:, None] - ref.baseline_prob
    assert ((sums - gap).abs() / gap.abs().clamp_min(1e-3)).max() <= 1e-3
    assert gap.abs().max() > 1e-3  # attention matters: the check is not trivially met


DECODER_LMS = [f for f in FAMILIES if f.endswith("-lm") and not f.startswith(("bart", "t5"))] + ["llama-gqa"]


@pytest.mark.parametrize("family", DECODER_LMS)
def test_padded_batch_equals_each_example_alone(family):
    model = _model(family)
    sides = ["right"] if family == "gpt2-lm" else ["right", "left"]  # GPT-2: absolute positions move with left pads
    baseline = "uniform" if family.split("-")[0] in UNIFORM else "zero"
    for side in sides:
        batch = _batch(model, side)
        both = attribute(model, batch, n_steps=3, baseline=baseline)
        for i in range(2):
            real = batch["attention_mask"][i].bool()
            alone = attribute(model, {"input_ids": batch["input_ids"][i][real][None]}, n_steps=3, baseline=baseline)
            assert both.target[i] == alone.target[0]
            assert both.position[i] == alone.position[0] == int(real.sum()) - 1
            assert_maps_close([both[i]], [alone[0]], rtol=RTOL)
            torch.testing.assert_close(both.prob[i : i + 1], alone.prob, rtol=RTOL, atol=0)


@pytest.mark.parametrize("family", ["llama-gqa", "llama-mqa", "qwen2-lm"])
def test_grouped_query_models_are_attributed_per_query_head(family):
    model = _model(family)
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    res = attribute(model, _batch(model), n_steps=2)
    assert res[0].shape[1] == model.config.num_attention_heads  # one map per query head, not per key/value head
    # the heads sharing a key/value head still get different maps (their queries differ)
    assert (res[0][:, 0] - res[0][:, 1]).abs().max() > 1e-6 * res[0].abs().max()


def test_family_terms_change_the_attribution():
    """Gemma 2's softcap and gpt-oss's sinks are on in the families above, and the maps depend on them."""
    gemma2 = _model("gemma2-lm")
    assert gemma2.config.attn_logit_softcapping == 1.0
    batch = _batch(gemma2)
    capped = attribute(gemma2, batch, n_steps=2, baseline="uniform")
    for layer in gemma2.model.layers:
        layer.self_attn.attn_logit_softcapping = None
    plain = attribute(gemma2, batch, n_steps=2, baseline="uniform", target=int(capped.target[0]))
    assert (capped[0] - plain[0]).abs().max() > 1e-2 * capped[0].abs().max()

    oss = _model("gpt_oss-lm")
    batch = _batch(oss)
    with_sinks = attribute(oss, batch, n_steps=2)
    for layer in oss.model.layers:
        layer.self_attn.sinks.data.fill_(-1e4)  # a sink logit that takes no probability mass
    without = attribute(oss, batch, n_steps=2, target=int(with_sinks.target[0]))
    assert (with_sinks[0] - without[0]).abs().max() > 1e-2 * with_sinks[0].abs().max()


@pytest.mark.parametrize("family", ["bart-lm", "t5-lm"])
def test_encoder_decoder_sites_are_selectable_and_cropped_to_their_axes(family):
    model = _model(family)
    batch = _batch(model)
    names = attention_layers(model)
    full = attribute(model, batch, n_steps=2)
    picked = [names.index("encoder.1"), names.index("decoder.0.self"), names.index("decoder.1.cross")]
    some = attribute(model, batch, n_steps=2, layers=picked, target=full.target.tolist())
    assert some.layers == tuple(picked)
    for i, (n_enc, n_dec) in enumerate([(8, 5), (7, 4)]):
        assert some[i].shape == (3, 4, n_enc, n_enc)
        shapes = [(n_enc, n_enc), (n_dec, n_dec), (n_dec, n_enc)]
        for j, (layer, (q, k)) in enumerate(zip(picked, shapes)):
            torch.testing.assert_close(some[i][j, :, :q, :k], full[i][layer, :, :q, :k], rtol=1e-6, atol=1e-12)
            assert not some[i][j, :, q:].any() and not some[i][j, :, :, k:].any()  # zero padding
            assert some[i][j, :, :q, :k].abs().max() > 0


@pytest.mark.parametrize("family", ["bart-lm", "t5-lm"])
def test_seq2seq_targets_follow_the_decoder_inputs(family):
    model = _model(family)
    batch = _batch(model)
    res = attribute(model, batch, n_steps=2)
    with torch.no_grad():
        logits = model(**batch).logits  # [example, decoder_pos, vocab]
    assert res.position.tolist() == [4, 3]  # the last real decoder token, not the encoder's
    assert res.target.tolist() == [int(logits[0, 4].argmax()), int(logits[1, 3].argmax())]
    torch.testing.assert_close(
        res.prob, torch.stack([logits[0, 4].softmax(-1).max(), logits[1, 3].softmax(-1).max()]), rtol=1e-9, atol=0
    )
    encoder_only = {k: v for k, v in batch.items() if not k.startswith("decoder_")}
    with pytest.raises(ArgumentError, match=r"Expected `inputs\['decoder_input_ids'\]`.*decoder_start_token_id"):
        attribute(model, encoder_only, n_steps=2)


def test_decoder_inputs_keep_their_length_when_the_inputs_are_trimmed():
    """Encoder padding is trimmed per length group; decoder inputs of the same length must not be."""
    model = _model("bart-lm")
    gen = torch.Generator().manual_seed(2)
    mask = torch.tensor([[1] * 7 + [0], [1] * 6 + [0] * 2])  # the group's inputs are trimmed to 7 tokens
    batch = {
        "input_ids": torch.randint(3, V, (2, 8), generator=gen) * mask,
        "attention_mask": mask,
        "decoder_input_ids": torch.randint(3, V, (2, 8), generator=gen),  # 8 real decoder tokens each
    }
    ours = attribute(model, batch, method="gausslegendre", n_steps=2)
    ref = reference.reference_attattr(model, batch, _scalar(model, ours.target), method="gausslegendre", n_steps=2)
    assert ours.position.tolist() == [7, 7]
    assert_maps_close(ours.attributions, ref.attributions, rtol=RTOL)
