"""Language-model targets, output kinds and callable targets of `attribute`, against the slow reference."""

import pytest
import torch
import transformers

from lightning_attattr.core import reference
from lightning_attattr.core.attribution import AttentionController, attribute
from lightning_attattr.core.checks import UserError
from lightning_attattr.core.targets import Continuation, Contrast, Token, Tokens, is_language_model
from tests.conftest import make_model, text_batch

LM_KW = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
LM_ARCHS = ("llama", "mistral", "phi3", "gemma")


def lm_config(arch: str, num_labels: int = 3) -> transformers.PretrainedConfig:
    kw = dict(LM_KW, num_key_value_heads=4, pad_token_id=0, num_labels=num_labels)
    if arch == "gemma":
        kw["head_dim"] = 8
    return transformers.AutoConfig.for_model(arch, **kw)


def make_lm(arch: str = "llama", dtype: torch.dtype = torch.float64, head: str = "CausalLM") -> torch.nn.Module:
    torch.manual_seed(0)
    cls = getattr(transformers, f"{type(lm_config(arch)).__name__[: -len('Config')]}For{head}")
    return cls(lm_config(arch)).to(dtype).eval()


@pytest.fixture(scope="module", params=LM_ARCHS)
def lm(request):
    return make_lm(request.param)


@pytest.fixture(scope="module")
def llama():
    return make_lm("llama")


UNPADDED = [[5, 17, 33, 2, 9], [7, 8, 9]]


def padded(side: str) -> dict:
    """The two examples of UNPADDED in one batch, padded on ``side`` with token 0."""
    n = max(len(r) for r in UNPADDED) + 1  # one more pad than needed
    ids, mask = [], []
    for r in UNPADDED:
        pad = [0] * (n - len(r))
        ids.append(r + pad if side == "right" else pad + r)
        mask.append([1] * len(r) + [0] * len(pad) if side == "right" else [0] * len(pad) + [1] * len(r))
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}


def single(i: int) -> dict:
    return {"input_ids": torch.tensor([UNPADDED[i]])}


def at(position, token, output="prob"):
    """Independent scalar for the reference: ``output`` of ``token`` at real position ``position`` (per example)."""

    def scalar(logits, example):
        row = logits[:, position[example] if isinstance(position, list) else position]
        values = {"prob": row.softmax(-1), "logprob": row.log_softmax(-1), "logit": row}[output]
        return values[:, token[example] if isinstance(token, list) else token]

    return scalar


def assert_maps_close(ours, ref, rtol=1e-5):
    """Equal to ``rtol`` of the largest entry (the models' norms compute in float32, also in a float64 model)."""
    for a, r in zip(ours, ref):
        assert a.shape == r.shape
        assert (a - r).abs().max() <= rtol * r.abs().max(), ((a - r).abs().max(), r.abs().max())
        assert r.abs().max() > 1e-8  # not trivially zero


def test_language_models_are_recognised(lm):
    assert is_language_model(lm)
    assert not is_language_model(make_model("bert"))


def test_default_target_is_the_predicted_next_token_with_any_padding(lm):
    alone = [attribute(lm, single(i), n_steps=4) for i in range(2)]
    for i, one in enumerate(alone):
        expected = int(lm(**single(i)).logits[0, -1].argmax())
        assert one.target.tolist() == [expected]
    for side in ("left", "right"):
        both = attribute(lm, padded(side), n_steps=4)
        assert both.target.tolist() == [int(a.target) for a in alone]
        # float32 inside the models' norms and rotary tables (also in float64); left padding shifts positions
        assert_maps_close([both[i] for i in range(2)], [a[0] for a in alone])
        torch.testing.assert_close(both.prob, torch.cat([a.prob for a in alone]), rtol=1e-5, atol=0)


def test_default_target_matches_the_reference(lm):
    batch = padded("left")
    ours = attribute(lm, batch, method="gausslegendre", n_steps=4, return_convergence_delta=True)
    ref = reference.reference_attattr(lm, batch, at(-1, ours.target.tolist()), method="gausslegendre", n_steps=4)
    assert_maps_close(ours.attributions, ref.attributions)
    torch.testing.assert_close(ours.prob, ref.prob)
    torch.testing.assert_close(ours.baseline_prob, ref.baseline_prob)


@pytest.mark.parametrize("output", ["prob", "logprob", "logit"])
def test_token_at_a_position_matches_the_reference_for_every_output(llama, output):
    batch = padded("right")
    ours = attribute(llama, batch, target=Token(42, position=1), output=output, method="gausslegendre", n_steps=5)
    ref = reference.reference_attattr(llama, batch, at(1, 42, output), method="gausslegendre", n_steps=5)
    assert ours.target.tolist() == [42, 42] and ours.position.tolist() == [1, 1] and ours.output == output
    assert_maps_close(ours.attributions, ref.attributions)
    torch.testing.assert_close(ours.prob, ref.prob)
    # negative positions count from the last real token: -2 is position 3 of the first example, 1 of the second
    neg = attribute(llama, batch, target=Token(42, position=-2), output=output, n_steps=3)
    assert neg.position.tolist() == [3, 1]


@pytest.mark.parametrize("output", ["prob", "logprob", "logit"])
@pytest.mark.parametrize("n_steps", ["auto", 16])
def test_completeness_holds_for_every_output(llama, output, n_steps):
    res = attribute(
        llama, padded("left"), target=Token(3, -1), output=output, n_steps=n_steps, return_convergence_delta=True
    )
    sums = torch.stack([a.sum(dim=(1, 2, 3)) for a in res.attributions])
    torch.testing.assert_close(sums - (res.prob[:, None] - res.baseline_prob), res.convergence_delta)
    assert (res.prob[:, None] - res.baseline_prob).abs().min() > 1e-6  # a real change to explain
    assert res.completeness_error.max() < (1e-3 if n_steps == "auto" else 1e-5), res.completeness_error
    if output == "logprob":  # log p = logit - logsumexp: F(A) is the log of the probability output
        prob = attribute(llama, padded("left"), target=Token(3, -1), n_steps=3)
        torch.testing.assert_close(res.prob.exp(), prob.prob)


def test_several_positions_give_one_row_per_example_and_position(llama):
    batch = padded("left")
    ids, positions = [11, 12, 13], [0, 2, -1]
    res = attribute(llama, batch, target=Tokens(ids, positions), n_steps=4, return_convergence_delta=True)
    assert len(res) == 6 and res.example.tolist() == [0, 0, 0, 1, 1, 1]
    assert res.position.tolist() == [0, 2, 4, 0, 2, 2] and res.target.tolist() == ids * 2
    assert res.baseline_prob.shape == (6, 2)
    assert [tuple(a.shape) for a in res.attributions] == [(2, 4, 5, 5)] * 3 + [(2, 4, 3, 3)] * 3
    for row in range(6):  # each row is the single-token attribution of its (example, position)
        i, pos = int(res.example[row]), int(res.position[row])
        one = attribute(llama, single(i), target=Token(int(res.target[row]), pos), n_steps=4)
        assert_maps_close([res[row]], [one[0]], rtol=1e-5)
    # causal: a query after the attributed position cannot matter
    assert res[0][:, :, 1:].abs().max() == 0


def test_continuation_attributes_each_generated_token(llama):
    prompt = [5, 17, 33]
    generated = llama.generate(torch.tensor([prompt]), max_new_tokens=2, do_sample=False)[0, 3:].tolist()
    batch = {"input_ids": torch.tensor([prompt + generated])}
    res = attribute(llama, batch, target=Continuation(generated), n_steps=4)
    assert res.position.tolist() == [2, 3] and res.target.tolist() == generated
    ref = reference.reference_attattr(llama, batch, at(2, generated[0]), method="gausslegendre", n_steps=4)
    assert_maps_close([res[0]], ref.attributions)
    torch.testing.assert_close(res[1], attribute(llama, batch, target=Token(generated[1], 3), n_steps=4)[0])
    # greedy generation: each generated token is the predicted one
    assert int(attribute(llama, {"input_ids": batch["input_ids"][:, :4]}, n_steps=3).target) == generated[1]


def test_contrast_is_the_difference_of_the_two_tokens(llama):
    batch = padded("right")
    res = attribute(llama, batch, target=Contrast(3, 4, position=-1), output="logit", n_steps=5)
    ref = reference.reference_attattr(
        llama,
        batch,
        lambda lg, i: at(-1, 3, "logit")(lg, i) - at(-1, 4, "logit")(lg, i),
        method="gausslegendre",
        n_steps=5,
    )
    assert_maps_close(res.attributions, ref.attributions)
    a = attribute(llama, batch, target=Token(3), output="logit", n_steps=5)
    b = attribute(llama, batch, target=Token(4), output="logit", n_steps=5)
    for i in range(2):  # linear in the scalar: the contrast's map is the difference of the two maps
        assert_maps_close([res[i]], [a[i] - b[i]], rtol=1e-5)
    assert res.contrast.tolist() == [4, 4] and res.target.tolist() == [3, 3]


def test_callable_target_matches_the_reference(llama):
    batch = padded("left")  # left padding: the last position is every example's last real token

    def fn(outputs):
        return outputs.logits[:, -1, 7] - outputs.logits[:, -1].mean(-1)

    res = attribute(llama, batch, target=fn, n_steps=4, return_convergence_delta=True)
    ref = reference.reference_attattr(
        llama, batch, lambda lg, i: lg[:, -1, 7] - lg[:, -1].mean(-1), method="gausslegendre", n_steps=4
    )
    assert_maps_close(res.attributions, ref.attributions)
    assert res.output == "callable" and res.target.tolist() == [-1, -1]
    assert res.relative_convergence_delta().max() < 1e-4


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_decoder_sequence_classifiers_attribute(arch):
    model = make_lm(arch, head="SequenceClassification")
    batch = padded("right")  # the head reads the last non-pad token of every row
    res = attribute(model, batch, method="gausslegendre", n_steps=4, target=[2, 1], return_convergence_delta=True)
    ref = reference.reference_attattr(model, batch, torch.tensor([2, 1]), method="gausslegendre", n_steps=4)
    assert_maps_close(res.attributions, ref.attributions)
    torch.testing.assert_close(res.baseline_prob, ref.baseline_prob)


def test_classifier_outputs_match_the_reference(bert64):
    batch = text_batch(lengths=(5, 7))
    for output in ("logit", "logprob"):
        res = attribute(bert64, batch, target=[0, 2], output=output, method="gausslegendre", n_steps=5)
        ref = reference.reference_attattr(
            bert64, batch, torch.tensor([0, 2]), output=output, method="gausslegendre", n_steps=5
        )
        assert_maps_close(res.attributions, ref.attributions, rtol=1e-10)


def test_the_whole_model_runs_when_the_controller_cannot_skip_layers(llama, monkeypatch):
    batch = padded("left")
    skipping = attribute(llama, batch, n_steps=4)
    monkeypatch.setattr(AttentionController, "can_skip_below", False, raising=False)
    whole = attribute(llama, batch, n_steps=4)
    for a, b in zip(skipping.attributions, whole.attributions):
        assert_maps_close([a], [b], rtol=1e-12)


@pytest.mark.parametrize(
    ("target", "output", "match"),
    [
        (Token(3, position=5), "prob", r"Expected `target.position` in \[-5, 4\] \(example 0 has 5 real tokens\)"),
        (Token(3, position=-6), "prob", r"`target.position` in \[-5, 4\]"),
        (Token(100), "prob", r"Expected `target.id` in \[0, 99\]"),
        (Contrast(4, 4), "logit", "Expected `target.a` and `target.b` to be different tokens, but both are 4"),
        (Tokens([1, 2], [0]), "prob", "one position per id"),
        (Continuation([9, 9]), "prob", "end with the continuation"),
        ("labels", "prob", "Expected `target` of a language model"),
        (Token(3), "probability", "Expected `output` to be one of"),
        (lambda out: out.logits[:, -1], "prob", r"Expected the callable `target` to return one value per row"),
    ],
)
def test_bad_targets_give_one_line_errors(llama, target, output, match):
    batch = {"input_ids": torch.tensor([UNPADDED[0]])}
    with pytest.raises(UserError, match=match) as err:
        attribute(llama, batch, target=target, output=output, n_steps=2)
    assert "\n" not in str(err.value)


def test_token_targets_are_refused_for_classifiers(bert64):
    with pytest.raises(UserError, match="token targets need a language model") as err:
        attribute(bert64, text_batch(), target=Token(1), n_steps=2)
    assert "\n" not in str(err.value)


def test_bad_targets_are_refused_before_any_forward(llama):
    calls = []
    handle = llama.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(UserError):
            attribute(llama, {"input_ids": torch.tensor([UNPADDED[0]])}, target=Token(3, position=9))
    finally:
        handle.remove()
    assert calls == []
