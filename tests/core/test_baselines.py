"""The uniform-attention baseline and the warning for a degenerate zero baseline."""

import warnings

import pytest
import torch
import transformers

from lightning_attattr.core import reference
from lightning_attattr.core.attribution import attribute, uniform_attention
from lightning_attattr.core.checks import UserError
from tests.conftest import text_batch
from tests.core.test_families import DEC
from tests.core.test_targets import assert_maps_close, make_lm, padded


def post_norm_lm() -> torch.nn.Module:
    """Gemma 2: a norm right after attention. No attention softcap (the adapter does not apply it), and a tiny
    norm epsilon so that, as in a trained model, scaling the attention output leaves the norm's output unchanged."""
    torch.manual_seed(0)
    cfg = transformers.Gemma2Config(
        **DEC,  # initializer_range 0.2: outputs that move noticeably when attention changes
        num_key_value_heads=4,
        head_dim=8,
        query_pre_attn_scalar=8,
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
        rms_norm_eps=1e-12,
        pad_token_id=0,
    )
    return transformers.Gemma2ForCausalLM(cfg).double().eval()


@pytest.fixture(scope="module")
def gemma2():
    return post_norm_lm()


@pytest.mark.filterwarnings("ignore:.*did not reach completeness_tol")  # the degenerate pairs cannot converge
@pytest.mark.parametrize("n_steps", [8, "auto"])
def test_degenerate_zero_baseline_warns_once(gemma2, n_steps):
    with pytest.warns(
        UserWarning, match=r"zero baseline is degenerate for layer\(s\) \[0, 1\].*baseline='uniform'"
    ) as w:
        res = attribute(gemma2, padded("left"), n_steps=n_steps, max_steps=7)
    assert sum("degenerate" in str(x.message) for x in w) == 1
    # what the warning says: F(alpha A) does not move for alpha in (0, 1] while F(0) differs
    with pytest.warns(UserWarning, match="degenerate"):
        full = attribute(gemma2, padded("left"), n_steps=8, return_convergence_delta=True)
    assert (full.prob[:, None] - full.baseline_prob).abs().min() > 1e-2
    assert full.relative_convergence_delta().min() > 0.99  # the attributions explain none of it
    assert res.baseline == "zero"


def test_degenerate_check_needs_no_delta_from_the_caller(gemma2):
    with pytest.warns(UserWarning, match="degenerate"):
        res = attribute(gemma2, padded("right"), n_steps=6, method="riemann_middle")
    assert res.baseline_prob is None  # F(0) was evaluated for the check only


@pytest.mark.parametrize("model_name", ["bert", "llama"])
@pytest.mark.parametrize("n_steps", [8, "auto"])
def test_no_warning_for_models_without_a_post_attention_norm(model_name, n_steps, bert64, llama_lm):
    model, batch = (bert64, text_batch(lengths=(5, 7))) if model_name == "bert" else (llama_lm, padded("left"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attribute(model, batch, n_steps=n_steps, return_convergence_delta=True)


@pytest.fixture(scope="module")
def llama_lm():
    return make_lm("llama")


@pytest.mark.parametrize("n_steps", [12, "auto"])
def test_uniform_baseline_is_complete_and_not_degenerate(gemma2, n_steps):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = attribute(gemma2, padded("left"), baseline="uniform", n_steps=n_steps, return_convergence_delta=True)
    assert res.baseline == "uniform"
    sums = torch.stack([a.sum(dim=(1, 2, 3)) for a in res.attributions])
    torch.testing.assert_close(sums - (res.prob[:, None] - res.baseline_prob), res.convergence_delta)
    assert (res.prob[:, None] - res.baseline_prob).abs().min() > 1e-3
    assert res.relative_convergence_delta().max() < (1e-3 if n_steps == "auto" else 1e-4)


@pytest.mark.parametrize("model_name", ["bert", "llama", "gemma2"])
def test_uniform_baseline_equals_the_reference(model_name, bert64, llama_lm, gemma2):
    if model_name == "bert":
        model, batch, target = bert64, text_batch(lengths=(5, 7)), torch.tensor([0, 2])
        ref_target = target
    else:
        model, batch, target = {"llama": llama_lm, "gemma2": gemma2}[model_name], padded("right"), [3, 4]
        ref_target = lambda logits, i: logits[:, -1].softmax(-1)[:, target[i]]  # noqa: E731
    res = attribute(
        model,
        batch,
        target=target,
        baseline="uniform",
        method="gausslegendre",
        n_steps=5,
        return_convergence_delta=True,
    )
    # the reference's uniform baseline comes from the attention masks, ours from the probabilities' support
    ref = reference.reference_attattr(model, batch, ref_target, method="gausslegendre", n_steps=5, baseline="uniform")
    assert_maps_close(res.attributions, ref.attributions, rtol=1e-10 if model_name == "bert" else 1e-5)
    torch.testing.assert_close(res.baseline_prob, ref.baseline_prob)
    # and it is not the zero baseline's result
    zero = reference.reference_attattr(model, batch, ref_target, method="gausslegendre", n_steps=5)
    assert (res.baseline_prob - zero.baseline_prob).abs().max() > 1e-6


def test_uniform_attention_respects_padding_and_the_causal_mask(llama_lm):
    from lightning_attattr.core.adapter import attention_scope

    batch = padded("left")
    with attention_scope(llama_lm) as ctrl, ctrl.capturing([0]) as store:
        llama_lm(**batch)
    u = uniform_attention(store[0])  # [batch, head, query, key]
    n = batch["input_ids"].shape[1]
    for i, mask in enumerate(batch["attention_mask"].bool()):
        allowed = torch.tril(torch.ones(n, n, dtype=torch.bool)) & mask[None, :] & mask[:, None]
        expected = allowed / allowed.sum(-1, keepdim=True).clamp_min(1)
        for h in range(u.shape[1]):
            torch.testing.assert_close(u[i, h][mask], expected.to(u)[mask])  # real query rows


def test_bad_baseline_is_refused(bert64):
    with pytest.raises(UserError, match=r"Expected `baseline` to be one of \['zero', 'uniform'\], but got 'mean'"):
        attribute(bert64, text_batch(), baseline="mean", n_steps=2)
