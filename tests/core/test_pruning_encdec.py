"""Structural head pruning of encoder-decoders: BART per attention site, T5 refused."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from lightning_attattr.core.adapter import PRUNED_HEADS_KEY, attention_layers, attention_scope, layer_modules
from lightning_attattr.core.attribution import attribute
from lightning_attattr.core.checks import UnsupportedModelError
from lightning_attattr.core.pruning import count_parameters, from_pretrained_pruned, prune_heads, pruned_heads
from tests.core.test_decoder_heads import hooked_logits

V, HEADS, HEAD_DIM = 100, 4, 8
# sites: encoder.0, encoder.1, decoder.0.self, decoder.0.cross, decoder.1.self, decoder.1.cross; the two
# attentions of decoder layer 0 lose different heads, decoder.1.self keeps all of its heads
PRUNE = {0: [1, 3], 1: [2], 2: [0], 3: [1, 2], 5: [0, 1, 2]}
TASKS = {"lm": T.BartForConditionalGeneration, "cls": T.BartForSequenceClassification}
AUTO = {"lm": T.AutoModelForSeq2SeqLM, "cls": T.AutoModelForSequenceClassification}


def make_bart(task: str) -> T.PreTrainedModel:
    config = T.BartConfig(
        vocab_size=V, d_model=HEADS * HEAD_DIM, encoder_layers=2, decoder_layers=2, encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=32,
        init_std=0.2, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    return TASKS[task](config).to(torch.float64).eval()


def bart_batch(task: str) -> dict[str, torch.Tensor]:
    """Two examples, the second right-padded on the encoder side; decoder ids for the LM."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(4, V, (2, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 5:], ids[1, 5:] = 0, 1  # BART's pad id is 1
    ids[0, 6] = ids[1, 4] = 2  # eos closes each example (the classifier reads it)
    batch = {"input_ids": ids, "attention_mask": mask}
    if task == "lm":
        batch["decoder_input_ids"] = torch.randint(4, V, (2, 5), generator=gen)
    return batch


def mask_for(heads: dict[int, list[int]], n_sites: int = 6) -> torch.Tensor:
    mask = torch.ones(n_sites, HEADS, dtype=torch.float64)
    for site, hs in heads.items():
        mask[site, hs] = 0
    return mask


def zeroed_logits(
    model: T.PreTrainedModel, batch: dict[str, torch.Tensor], heads: dict[int, list[int]]
) -> torch.Tensor:
    """Logits with the heads' outputs zeroed at the output projection's input: no attention scope involved."""
    sites = layer_modules(model)
    rows = int(batch["input_ids"].shape[0])
    return hooked_logits(model, batch, [heads] * rows, {site: sites[site].out_proj for site in heads}, HEAD_DIM)


def scoped_logits(model: T.PreTrainedModel, batch: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), attention_scope(model) as ctrl, ctrl.masked(mask):
        return model(**batch).logits


@pytest.mark.parametrize("task", sorted(TASKS))
def test_pruned_bart_equals_zeroed_heads(task):
    model = make_bart(task)
    batch = bart_batch(task)
    expected = zeroed_logits(model, batch, PRUNE)
    torch.testing.assert_close(scoped_logits(model, batch, mask_for(PRUNE)), expected, rtol=1e-10, atol=1e-10)
    unpruned = model(**batch).logits
    report = prune_heads(model, PRUNE)
    assert report.pruned == PRUNE and report.n_heads_pruned == 9
    # 9 heads lose their q/k/v rows (weight + bias) and output-projection columns
    d = HEADS * HEAD_DIM
    assert report.n_parameters_before - report.n_parameters_after == 9 * HEAD_DIM * (3 * (d + 1) + d)
    sites = layer_modules(model)
    assert [s.num_heads for s in sites] == [2, 3, 3, 2, 4, 1]
    assert [s.q_proj.out_features for s in sites] == [16, 24, 24, 16, 32, 8]
    assert sites[3] is model.get_decoder().layers[0].encoder_attn
    with torch.no_grad():
        native = model(**batch).logits  # the default attention implementation, no scope
    torch.testing.assert_close(native, expected, rtol=1e-6, atol=1e-6)
    assert (native - unpruned).abs().max() > 1e-2  # the heads mattered
    torch.testing.assert_close(scoped_logits(model, batch, mask_for({})), expected, rtol=1e-6, atol=1e-6)


def test_pruned_bart_in_scope_keeps_original_heads():
    """Full-width masks, captured zeros at removed heads, attributions equal the masked unpruned model's."""
    model, reference = make_bart("lm"), make_bart("lm")
    batch = bart_batch("lm")
    prune_heads(model, PRUNE)
    extra = {4: [3], 3: [0]}  # decoder.1.self (unpruned) and decoder.0.cross (pruned: heads 1, 2)
    both = mask_for(PRUNE) * mask_for(extra)
    torch.testing.assert_close(
        scoped_logits(model, batch, mask_for(extra)), scoped_logits(reference, batch, both), rtol=1e-10, atol=1e-10
    )
    with torch.no_grad(), attention_scope(model) as ctrl, ctrl.capturing() as probs:
        model(**batch)
    names = attention_layers(model)
    for site, hs in PRUNE.items():
        assert probs[site].shape[1] == HEADS, names[site]
        assert probs[site][:, hs].abs().max() == 0
        kept = [h for h in range(HEADS) if h not in hs]
        torch.testing.assert_close(probs[site][:, kept].sum(-1), torch.ones_like(probs[site][:, kept].sum(-1)))

    ours = attribute(model, batch, n_steps=3)
    with attention_scope(reference) as ctrl, ctrl.masked(mask_for(PRUNE)):
        masked = attribute(reference, batch, n_steps=3, target=ours.target.tolist())
    for got, want in zip(ours.attributions, masked.attributions):
        assert got.shape[:2] == (6, HEADS)
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12)
        for site, hs in PRUNE.items():
            assert got[site, hs].abs().max() == 0
    torch.testing.assert_close(ours.prob, masked.prob, rtol=1e-10, atol=0)


def test_pruned_bart_generates_like_the_masked_model():
    model, reference = make_bart("lm"), make_bart("lm")
    batch = {k: v for k, v in bart_batch("lm").items() if not k.startswith("decoder_")}
    unpruned = model.generate(**batch, max_new_tokens=4, do_sample=False)
    prune_heads(model, PRUNE)
    generated = model.generate(**batch, max_new_tokens=4, do_sample=False)  # with the key/value cache
    assert not torch.equal(generated, unpruned)
    with attention_scope(reference) as ctrl, ctrl.masked(mask_for(PRUNE)):
        expected = reference.generate(**batch, max_new_tokens=4, do_sample=False)
    assert torch.equal(generated, expected)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_pruned_bart_save_load_round_trip(task, tmp_path):
    model = make_bart(task)
    batch = bart_batch(task)
    prune_heads(model, PRUNE)
    model.save_pretrained(tmp_path)
    with pytest.raises(Exception, match="(?i)size"):  # transformers builds the full-size structure
        TASKS[task].from_pretrained(tmp_path)
    loaded = from_pretrained_pruned(str(tmp_path), AUTO[task]).to(torch.float64)
    assert type(loaded) is TASKS[task] and not loaded.training
    assert pruned_heads(loaded) == PRUNE
    assert getattr(loaded.config, PRUNED_HEADS_KEY) == {str(k): v for k, v in PRUNE.items()}
    assert count_parameters(loaded) == count_parameters(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=1e-10, atol=1e-10)


def test_bart_refusals():
    model = make_bart("lm")
    with pytest.raises(ValueError, match=r"layer indices in \[0, 5\].*6"):
        prune_heads(model, {6: [0]})
    with pytest.raises(ValueError, match="every head of layer 3"):
        prune_heads(model, {3: [0, 1, 2, 3]})
    assert pruned_heads(model) == {}


@pytest.mark.parametrize("cls", [T.T5ForConditionalGeneration, T.T5ForSequenceClassification])
def test_t5_is_refused_with_the_reason(cls):
    config = T.T5Config(
        vocab_size=V, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_decoder_layers=2, num_heads=HEADS,
        decoder_start_token_id=0, num_labels=3,
    )  # fmt: skip
    model = cls(config).eval()
    n_params = count_parameters(model)
    with pytest.raises(UnsupportedModelError, match="position bias .* all heads .*use a head mask") as caught:
        prune_heads(model, {1: [0]})  # encoder.1: a later layer of the encoder stack
    assert "\n" not in str(caught.value)
    assert pruned_heads(model) == {} and count_parameters(model) == n_params
