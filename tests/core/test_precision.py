"""`attribute(..., precision=...)`: reduced precision in the integrand only, F(A)/F(0) and completeness in fp32,
"auto" escalating to fp32 where bf16 misses the tolerance, and noise told apart from under-resolution."""

import math
import warnings

import pytest
import torch

from lightning_attattr.core import attribution as attribution_module
from lightning_attattr.core.attribution import attribute
from lightning_attattr.core.precision import PRECISION_CODES, integrand_precision, stalled
from tests.conftest import make_model, text_batch

FP32, BF16 = PRECISION_CODES["fp32"], PRECISION_CODES["bf16"]


@pytest.fixture(scope="module")
def model():
    return make_model("bert")


def quiet(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return attribute(*args, **kwargs)


def same_maps(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.attributions, b.attributions))


@pytest.mark.parametrize("rule", [dict(n_steps=10), dict(n_steps="auto"), dict(method="riemann_left", n_steps=5)])
def test_fp32_is_bit_identical_to_the_default(model, rule):
    batch = text_batch()
    default = attribute(model, batch, return_convergence_delta=True, **rule)
    fp32 = attribute(model, batch, return_convergence_delta=True, precision="fp32", **rule)
    assert same_maps(default, fp32) and fp32.precision_used is None and default.precision_used is None
    assert torch.equal(default.convergence_delta, fp32.convergence_delta)
    assert torch.equal(default.n_steps_used, fp32.n_steps_used)


def test_tf32_is_a_no_op_on_the_cpu(model):
    batch = text_batch()
    fp32 = attribute(model, batch, n_steps=6, return_convergence_delta=True)
    tf32 = attribute(model, batch, n_steps=6, return_convergence_delta=True, precision="tf32")
    assert same_maps(fp32, tf32)
    assert bool((tf32.precision_used == FP32).all())  # what ran: no TF32 on the CPU


def test_tf32_scope_sets_and_restores_the_matmul_precision():
    before = torch.get_float32_matmul_precision()
    with integrand_precision("tf32", torch.device("cuda")):  # only sets a flag: runs without a GPU
        assert torch.get_float32_matmul_precision() == "high"
    assert torch.get_float32_matmul_precision() == before
    with pytest.raises(RuntimeError, match="boom"), integrand_precision("tf32", torch.device("cuda")):
        raise RuntimeError("boom")
    assert torch.get_float32_matmul_precision() == before
    with integrand_precision("tf32", torch.device("cpu")):
        assert torch.get_float32_matmul_precision() == before


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left"])  # riemann_left evaluates alpha = 0
def test_bf16_keeps_clean_and_baseline_passes_and_completeness_in_fp32(model, method):
    batch = text_batch()
    fp32 = attribute(model, batch, method=method, n_steps=8, return_convergence_delta=True)
    bf16 = attribute(model, batch, method=method, n_steps=8, return_convergence_delta=True, precision="bf16")
    assert torch.equal(bf16.prob, fp32.prob) and torch.equal(bf16.target, fp32.target)
    if method == "gausslegendre":  # the same fp32 baseline pass
        assert torch.equal(bf16.baseline_prob, fp32.baseline_prob)
    else:  # fp32 takes F(0) from its alpha = 0 node; bf16 never keeps a reduced-precision F(0): an fp32 pass
        torch.testing.assert_close(bf16.baseline_prob, fp32.baseline_prob, rtol=1e-6, atol=0)
    assert bool((bf16.precision_used == BF16).all())
    for li in range(len(bf16.layers)):  # the gap is measured against the fp32 F(A) - F(0), in float64
        sums = torch.stack([a[li].double().sum() for a in bf16.attributions])
        expected = sums - (bf16.prob - bf16.baseline_prob[:, li])
        torch.testing.assert_close(bf16.convergence_delta[:, li], expected, rtol=0, atol=1e-9)  # fp32 sum order
    for a, b in zip(bf16.attributions, fp32.attributions):
        assert a.dtype == torch.float32 and not torch.equal(a, b)  # autocast was applied to the integrand
        assert float((a - b).norm() / b.norm()) < 0.1


def test_auto_meets_the_tolerance_and_recomputed_pairs_are_fp32_results(model):
    batch, tol = text_batch(lengths=(7, 4, 6, 5)), 1e-3
    fp32 = attribute(model, batch, completeness_tol=tol)
    auto = attribute(model, batch, completeness_tol=tol, precision="auto")
    assert not bool(auto.unconverged.any()) and bool((auto.completeness_error <= tol).all())
    assert torch.equal(auto.prob, fp32.prob) and torch.equal(auto.baseline_prob, fp32.baseline_prob)
    codes = auto.precision_used
    assert bool((codes == FP32).any())  # bf16 misses 1e-3 on some pairs of this model
    for i, li in (codes == FP32).nonzero().tolist():
        assert int(auto.n_steps_used[i, li]) == int(fp32.n_steps_used[i, li])  # same decisions as fp32
        torch.testing.assert_close(auto.attributions[i][li], fp32.attributions[i][li], rtol=1e-5, atol=1e-9)


def test_auto_with_a_fixed_rule_recomputes_missed_pairs_in_fp32_at_the_same_nodes(model):
    batch, tol = text_batch(lengths=(7, 4, 6, 5)), 1e-3
    fp32 = attribute(model, batch, n_steps=10, return_convergence_delta=True)
    bf16 = attribute(model, batch, n_steps=10, return_convergence_delta=True, precision="bf16")
    auto = attribute(model, batch, n_steps=10, completeness_tol=tol, precision="auto")
    missed = bf16.completeness_error > tol
    assert bool(missed.any()) and bool((auto.precision_used == torch.where(missed, FP32, BF16)).all())
    assert bool((auto.completeness_error <= tol).all()) and bool((auto.n_steps_used == 10).all())
    for i, li in missed.nonzero().tolist():
        torch.testing.assert_close(auto.attributions[i][li], fp32.attributions[i][li], rtol=1e-5, atol=1e-9)
    for i, li in (~missed).nonzero().tolist():
        assert torch.equal(auto.attributions[i][li], bf16.attributions[i][li])


def _count_nodes(monkeypatch) -> dict[str, int]:
    """Gradient evaluations (example x node) per integrand precision."""
    counts = {"fp32": 0, "bf16": 0}
    original = attribution_module._LayerIntegration.gradients

    def counting(self, alphas):
        counts[self.precision] += len(self.probs) * len(alphas)
        return original(self, alphas)

    monkeypatch.setattr(attribution_module._LayerIntegration, "gradients", counting)
    return counts


def test_noise_is_not_refined_to_the_node_limit(model, monkeypatch):
    # bf16 rounding puts the completeness error near 1e-2 on this model; 1e-4 is reachable only in fp32
    batch, tol = text_batch(), 1e-4
    counts = _count_nodes(monkeypatch)
    with pytest.warns(UserWarning, match="precision='auto' recomputes them in fp32"):
        bf16 = attribute(model, batch, completeness_tol=tol, precision="bf16")
    pairs = bf16.n_steps_used.numel()
    assert bool(bf16.unconverged.all())  # honest: bf16 cannot meet the tolerance ...
    assert int(bf16.n_steps_used.max()) == 7  # ... and it stops once the error stalls (3 -> 7), not at 63
    assert counts == {"fp32": 0, "bf16": 7 * pairs}

    counts.update(fp32=0, bf16=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every pair converges: no warning
        auto = attribute(model, batch, completeness_tol=tol, precision="auto")
    assert bool((auto.completeness_error <= tol).all()) and bool((auto.precision_used == FP32).all())
    assert counts["bf16"] == 7 * pairs  # escalated at the first stall, not refined to 63 nodes in bf16
    assert counts["fp32"] == int(auto.n_steps_used.sum())  # fp32 restarted from 3 nodes, no more than needed


def test_stalled():
    inf, nan = math.inf, math.nan
    error = torch.tensor([1e-2, 1e-4, 1e-2, 1e-3, 1e-3])
    previous_error = torch.tensor([1.5e-2, 1e-2, inf, 1e-1, 1e-1])
    change = torch.tensor([nan, nan, nan, 5e-2, 1e-3])
    previous_change = torch.tensor([nan, nan, nan, 6e-2, 1e-1])
    # stagnating error; shrinking error; first level; error shrinks but the change does not; both shrink
    assert stalled(error, previous_error, change, previous_change).tolist() == [True, False, False, True, False]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(precision="fp16"), r"Expected `precision` to be one of \['fp32', 'tf32', 'bf16', 'auto'\], but got"),
        (dict(precision=None), r"Expected `precision` to be one of .* but got None"),
        (dict(precision="bf16", autocast_dtype=torch.bfloat16), "at most one of `precision` and `autocast_dtype`"),
        (dict(precision="auto", n_steps=8, shard=(0, 2)), "Expected `shard` to be None with `precision='auto'`"),
        (dict(precision="auto", n_steps=8, completeness_tol=0.0), r"`completeness_tol` to be a number in \(0, 1\]"),
    ],
)
def test_bad_precision_arguments_give_one_line_errors(model, kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        attribute(model, text_batch(), **kwargs)
    assert "\n" not in str(info.value)


def test_legacy_autocast_dtype_with_fp32_precision_works_as_before(model):
    batch = text_batch()
    old = quiet(model, batch, n_steps=6, autocast_dtype=torch.bfloat16)
    new = quiet(model, batch, n_steps=6, autocast_dtype=torch.bfloat16, precision="fp32")
    assert same_maps(old, new) and new.precision_used is None


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_callers_autocast_does_not_leak_into_the_passes(model, precision):
    # Lightning's "16-mixed"/"bf16-mixed" steps and user code may call attribute() inside autocast: the
    # result must be the one the `precision` option asks for, not the caller's precision
    batch = text_batch()
    expected = attribute(model, batch, n_steps=4, precision=precision, return_convergence_delta=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attribute(model, batch, n_steps=4, precision=precision, return_convergence_delta=True)
    assert same_maps(got, expected)
    assert torch.equal(got.prob, expected.prob) and torch.equal(got.baseline_prob, expected.baseline_prob)
