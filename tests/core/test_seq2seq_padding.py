"""Padding of encoder-decoder language models (BART, T5): a padded batch against each example alone.

Two examples with different encoder (6, 4) and decoder (5, 2) lengths are batched with either side
padded on the left or on the right. T5 (relative position bias: a shift of all positions changes
nothing) gives each example's unpadded result for every padding. BART's learned positions count the
pad tokens, so left padding (of the encoder or the decoder) changes the native model's own output:
there the attribution must follow the native model on the padded inputs.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import transformers as T

from lightning_attattr.core.attribution import attribute
from tests.core.test_targets import assert_maps_close

V = 100
ENCODER, DECODER = (6, 4), (5, 2)  # real tokens per example
RTOL = 1e-5  # of the largest entry (T5's norms compute in float32, also in a float64 model)
SIDES = list(itertools.product(("right", "left"), ("right", "left")))  # (encoder side, decoder side)


def make_lm(family: str) -> T.PreTrainedModel:
    torch.manual_seed(0)
    if family == "bart":
        model = T.BartForConditionalGeneration(
            T.BartConfig(
                vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=32,
                init_std=0.2,
            )
        )  # fmt: skip
    else:
        model = T.T5ForConditionalGeneration(
            T.T5Config(
                vocab_size=V, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_decoder_layers=2, num_heads=4,
                decoder_start_token_id=0, eos_token_id=1, pad_token_id=0,
            )
        )  # fmt: skip
    return model.to(torch.float64).eval()


def examples() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    encoder = [torch.randint(3, V, (n,), generator=gen) for n in ENCODER]
    decoder = [torch.randint(3, V, (n,), generator=gen) for n in DECODER]
    return encoder, decoder


def padded(rows: list[torch.Tensor], side: str, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and mask ``[example, max length]`` with the padding on ``side``."""
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad_id)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    for i, row in enumerate(rows):
        real = slice(n - len(row), n) if side == "left" else slice(0, len(row))
        ids[i, real], mask[i, real] = row, 1
    return ids, mask


def batch_of(model: T.PreTrainedModel, encoder_side: str, decoder_side: str) -> dict[str, torch.Tensor]:
    encoder, decoder = examples()
    pad = model.config.pad_token_id
    input_ids, attention_mask = padded(encoder, encoder_side, pad)
    decoder_input_ids, decoder_attention_mask = padded(decoder, decoder_side, pad)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "decoder_input_ids": decoder_input_ids,
        "decoder_attention_mask": decoder_attention_mask,
    }


def last_real_logits(model: T.PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The native model's logits at each example's last real decoder token, ``[example, vocab]``."""
    with torch.no_grad():
        logits = model(**batch).logits
    last = [int(row.nonzero().max()) for row in batch["decoder_attention_mask"]]
    return torch.stack([logits[i, pos] for i, pos in enumerate(last)])


@pytest.fixture(scope="module")
def alone() -> dict[str, list]:
    """Each example attributed alone, unpadded (no masks)."""
    out = {}
    encoder, decoder = examples()
    for family in ("bart", "t5"):
        model = make_lm(family)
        out[family] = [
            attribute(model, {"input_ids": e[None], "decoder_input_ids": d[None]}, n_steps=2)
            for e, d in zip(encoder, decoder)
        ]
    return out


def test_default_target_is_the_prediction_at_the_last_real_decoder_token(alone):
    encoder, decoder = examples()
    for family, results in alone.items():
        model = make_lm(family)
        for res, e, d in zip(results, encoder, decoder):
            ones = torch.ones(1, len(d), dtype=torch.long)
            logits = last_real_logits(
                model, {"input_ids": e[None], "decoder_input_ids": d[None], "decoder_attention_mask": ones}
            )
            assert res.position.tolist() == [len(d) - 1]
            assert res.target.tolist() == [int(logits[0].argmax())]
            torch.testing.assert_close(res.prob, logits.softmax(-1).max(-1).values, rtol=1e-9, atol=0)


@pytest.mark.parametrize(
    ("family", "encoder_side", "decoder_side"), [("t5", *s) for s in SIDES] + [("bart", "right", "right")]
)
def test_padded_batch_equals_each_example_alone(alone, family, encoder_side, decoder_side):
    model = make_lm(family)
    batch = batch_of(model, encoder_side, decoder_side)
    both = attribute(model, batch, n_steps=2)
    assert both.position.tolist() == [n - 1 for n in DECODER]  # counted on the real decoder tokens
    assert both.target.tolist() == last_real_logits(model, batch).argmax(-1).tolist()
    for i, single in enumerate(alone[family]):
        assert both.target[i] == single.target[0]
        # every site (encoder, decoder self, cross), cropped to its real query and key tokens, zero beyond
        assert_maps_close([both[i]], [single[0]], rtol=RTOL)
        torch.testing.assert_close(both.prob[i : i + 1], single.prob, rtol=RTOL, atol=0)


@pytest.mark.parametrize(("encoder_side", "decoder_side"), [s for s in SIDES if "left" in s])
def test_left_padded_bart_follows_the_native_model(alone, encoder_side, decoder_side):
    """BART's learned positions count pad tokens: left padding changes the model itself, and the attribution
    is that of the padded inputs (row by row the same as alone with the same padding), not the unpadded ones."""
    model = make_lm("bart")
    batch = batch_of(model, encoder_side, decoder_side)
    native = last_real_logits(model, batch).softmax(-1)
    unpadded = torch.cat([a.prob for a in alone["bart"]])
    # the example padded on the left (the shorter one) changes natively
    assert (native.max(-1).values[1] - unpadded[1]).abs() > 1e-4
    both = attribute(model, batch, n_steps=2)
    assert both.position.tolist() == [n - 1 for n in DECODER]
    assert both.target.tolist() == native.argmax(-1).tolist()
    torch.testing.assert_close(both.prob, native.max(-1).values, rtol=1e-9, atol=0)
    for i in range(2):
        row = {k: v[i : i + 1] for k, v in batch.items()}
        single = attribute(model, row, n_steps=2)
        assert_maps_close([both[i]], [single[0]], rtol=RTOL)
