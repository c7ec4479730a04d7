"""Adaptive integration (`n_steps="auto"`): the completeness tolerance is met on every pair, results do not
depend on how the work is split, and pairs that hit the work limit are flagged and warned about."""

import copy
import threading
import warnings

import numpy as np
import pytest
import torch

from lightning_attattr.core.approximation import NESTED_LEVELS, nested_rule
from lightning_attattr.core.attribution import COMPLETENESS_FLOOR, attribute, merge_shards
from tests.conftest import make_model, text_batch


def sharp_model(mult: float = 100.0) -> torch.nn.Module:
    """A float64 tiny BERT whose attention outputs dominate the residual stream: F(alpha A) changes
    sharply at small alpha, so 3 nodes are far from enough (fixed Gauss-Legendre 10 misses by ~1e-7)."""
    model = make_model("bert", dtype=torch.float64, head_scale=30.0)
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            layer.attention.output.dense.weight.mul_(mult)
    return model


def max_rel_diff(a, b) -> float:
    return max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(a.attributions, b.attributions))


@pytest.mark.parametrize("level", range(len(NESTED_LEVELS)))
def test_nested_rule_levels_are_nested_and_exact_to_their_degree(level):
    alphas, weights = map(np.array, nested_rule(level))
    assert len(alphas) == NESTED_LEVELS[level] and abs(weights.sum() - 1) < 1e-14
    if level:
        assert np.array_equal(alphas[: NESTED_LEVELS[level - 1]], np.array(nested_rule(level - 1)[0]))
    degree = (3 * len(alphas) + 1) // 2
    t = 2 * alphas - 1  # back on [-1, 1], where the monomials are well scaled

    def error(d):
        return abs(weights @ t**d - (1 + (-1) ** d) / (2 * (d + 1)))

    assert max(error(d) for d in range(degree + 1)) < 1e-13
    if level <= 2:  # and not beyond (higher levels' errors on monomials vanish below double precision)
        assert error(degree + 1) > 1e-10


def test_tolerance_is_met_on_a_sharp_integrand_and_matches_a_very_fine_fixed_rule():
    model, batch = sharp_model(), text_batch()
    result = attribute(model, batch, completeness_tol=1e-8)  # n_steps="auto" is the default
    assert result.n_steps == "auto" and not bool(result.unconverged.any())
    assert bool((result.completeness_error <= 1e-8).all())
    assert int(result.n_steps_used.min()) > 3  # the sharp integrand needed refining
    gap = (result.prob[:, None] - result.baseline_prob).abs().clamp_min(COMPLETENESS_FLOOR)
    torch.testing.assert_close(result.convergence_delta.abs() / gap, result.completeness_error, rtol=1e-6, atol=1e-14)
    fixed = attribute(model, batch, method="gausslegendre", n_steps=10, return_convergence_delta=True)
    assert float(fixed.completeness_error.max()) > 1e-8  # the old default misses this tolerance here
    fine = attribute(model, batch, method="gausslegendre", n_steps=96)
    assert max_rel_diff(result, fine) < 1e-8


def test_float64_smooth_model_matches_a_very_fine_fixed_rule():
    model, batch = make_model("bert", dtype=torch.float64), text_batch()
    result = attribute(model, batch, completeness_tol=1e-10)
    fine = attribute(model, batch, method="gausslegendre", n_steps=64)
    assert max_rel_diff(result, fine) < 1e-8
    assert bool((result.completeness_error <= 1e-10).all())


@pytest.mark.parametrize("internal_batch_size", [1, 2, 5])
def test_internal_batch_size_never_changes_results(internal_batch_size):
    model, batch = sharp_model(30.0), text_batch()
    full = attribute(model, batch, completeness_tol=1e-9)
    part = attribute(model, batch, completeness_tol=1e-9, internal_batch_size=internal_batch_size)
    assert torch.equal(full.n_steps_used, part.n_steps_used)
    assert max_rel_diff(part, full) < 1e-12


def test_padding_never_changes_results():
    model = sharp_model(30.0)
    batch = text_batch(lengths=(7, 4, 6))
    together = attribute(model, batch, completeness_tol=1e-9)
    for i in range(3):
        n = int(batch["attention_mask"][i].sum())
        alone = attribute(model, {k: v[i : i + 1, :n] for k, v in batch.items()}, completeness_tol=1e-9)
        assert torch.equal(alone.n_steps_used[0], together.n_steps_used[i])
        torch.testing.assert_close(alone.attributions[0], together.attributions[i], rtol=1e-9, atol=1e-12)


def _thread_shards(model, batch, count: int, **kwargs):
    """Run `count` shards concurrently with an all-reduce made of a barrier, as DDP ranks would."""
    slots: list = [None] * count
    barrier = threading.Barrier(count)
    results: list = [None] * count
    errors: list = []

    def reduce_fn(index):
        def reduce(tensor):
            slots[index] = tensor.clone()
            barrier.wait()
            total = sum(slots)
            barrier.wait()
            return total

        return reduce

    def run(index, replica):
        try:
            results[index] = attribute(replica, batch, shard=(index, count), reduce=reduce_fn(index), **kwargs)
        except Exception as err:  # surfaced below
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i, copy.deepcopy(model))) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return results


@pytest.mark.parametrize("count", [2, 3])
def test_shards_make_the_same_decisions_and_sum_to_the_unsplit_result(count):
    model, batch = sharp_model(), text_batch()
    single = attribute(model, batch, completeness_tol=1e-8)
    shards = _thread_shards(model, batch, count, completeness_tol=1e-8)
    for shard in shards:  # every rank refined the same pairs and knows the achieved error
        assert torch.equal(shard.n_steps_used, single.n_steps_used)
        torch.testing.assert_close(shard.completeness_error, single.completeness_error, rtol=1e-6, atol=1e-12)
    merged = merge_shards(shards)
    assert max_rel_diff(merged, single) < 1e-12
    torch.testing.assert_close(merged.convergence_delta, single.convergence_delta, rtol=1e-6, atol=1e-12)


def test_pairs_over_the_work_limit_are_flagged_and_warned_about_once():
    model, batch = sharp_model(), text_batch()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = attribute(model, batch, completeness_tol=1e-8, max_steps=3)
    messages = [str(w.message) for w in caught if "completeness_tol" in str(w.message)]
    assert len(messages) == 1 and "max_steps=3" in messages[0] and "result.unconverged" in messages[0]
    assert "baseline='uniform'" in messages[0] and "\n" not in messages[0]  # what to try next, on one line
    flagged = result.unconverged
    assert bool(flagged.any()) and bool((result.n_steps_used == 3).all())
    assert bool((result.completeness_error[flagged] > 1e-8).all())
    assert bool((result.completeness_error[~flagged] <= 1e-8).all())


def test_fixed_rules_work_as_before():
    model, batch = make_model("bert"), text_batch()
    result = attribute(model, batch, method="riemann_left", n_steps=20)
    assert result.n_steps == 20 and bool((result.n_steps_used == 20).all()) and result.unconverged is None
    assert result.completeness_error is None and result.convergence_delta is None


def test_bf16_autocast_stops_where_the_quadrature_converged():
    model, batch = make_model("bert"), text_batch()
    fp32 = attribute(model, batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bf16 = attribute(model, batch, autocast_dtype=torch.bfloat16, completeness_tol=1e-2)
    assert int(bf16.n_steps_used.min()) >= 7  # two levels must agree
    for a, b in zip(bf16.attributions, fp32.attributions):
        assert float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)) > 0.99


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(method="riemann_left"), "`method='gausslegendre'` with `n_steps='auto'`"),
        (dict(max_steps=10), r"`max_steps` to be one of \[3, 7, 15, 31, 63, 127, 255\], but got 10"),
        (dict(completeness_tol=0.0), r"`completeness_tol` to be a number in \(0, 1\], but got 0.0"),
        (dict(shard=(0, 2)), "Expected `reduce`"),
        (dict(n_steps="adaptive"), r"`n_steps` to be a positive integer or \"auto\", but got 'adaptive'"),
    ],
)
def test_bad_adaptive_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        attribute(make_model("bert"), text_batch(), **kwargs)


def spiky_llama() -> torch.nn.Module:
    """A float64 tiny Llama whose token embeddings are 100x smaller than its attention outputs, as in a
    trained language model's first layer: RMSNorm(e + alpha * attn) turns within alpha ~ |e| / |attn|,
    so F(alpha A) of layer 0 changes sharply close to alpha = 0 and 15 nested nodes are far off."""
    from tests.core.test_family_attribution import _model

    model = _model("llama-mha").double()
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(1e-2)
    return model


def _composite_rule(method: str, n_steps: int) -> tuple[list[float], list[float]]:
    """A fine composite rule for the slow reference: 8 Gauss-Legendre nodes on each of 48 pieces, graded to 0."""
    breaks = np.concatenate([[0.0], np.geomspace(1e-5, 1.0, 48)])
    x, w = np.polynomial.legendre.leggauss(8)
    alphas = np.concatenate([a + (b - a) * (x + 1) / 2 for a, b in zip(breaks[:-1], breaks[1:])])
    weights = np.concatenate([(b - a) * w / 2 for a, b in zip(breaks[:-1], breaks[1:])])
    return alphas.tolist(), weights.tolist()


def test_a_sharp_transition_near_zero_is_split_into_pieces_until_complete(monkeypatch):
    from lightning_attattr.core import reference
    from tests.core.test_family_attribution import _batch, _scalar

    model = spiky_llama()
    batch = _batch(model)
    with pytest.warns(UserWarning, match="max_steps=255 splits the path further"):
        nested = attribute(model, batch, max_steps=15, return_convergence_delta=True)
    assert bool(nested.unconverged[:, 0].all()) and float(nested.completeness_error[:, 0].min()) > 1e-2
    result = attribute(model, batch, return_convergence_delta=True)  # default max_steps=255: pieces
    assert not bool(result.unconverged.any()) and float(result.completeness_error.max()) <= 1e-3
    assert bool((result.n_steps_used[:, 0] > 15).all()) and bool((result.n_steps_used[:, 1] <= 15).all())
    monkeypatch.setattr(reference, "approximation_parameters", _composite_rule)
    ref = reference.reference_attattr(model, batch, _scalar(model, result.target), n_steps=384)
    gap = ref.prob[:, None] - ref.baseline_prob  # [example, layer]: the reference's own F(A) - F(0)
    sums = torch.stack([a.flatten(1).sum(1) for a in result.attributions])
    assert float(((sums - gap).abs() / gap.abs()).max()) <= 1e-3
    for ours, slow, coarse in zip(result.attributions, ref.attributions, nested.attributions):
        for layer in range(2):
            scale = slow[layer].abs().max()
            assert float((ours[layer] - slow[layer]).abs().max() / scale) < 1e-3
        assert float((coarse[0] - slow[0]).abs().max() / slow[0].abs().max()) > 1e-2  # what the pieces fixed


def test_pieces_under_shards_make_the_same_decisions_and_sum_to_the_unsplit_result():
    from tests.core.test_family_attribution import _batch

    model = spiky_llama()
    batch = _batch(model)
    single = attribute(model, batch)
    assert int(single.n_steps_used.max()) > 15
    shards = _thread_shards(model, batch, 2)
    for shard in shards:
        assert torch.equal(shard.n_steps_used, single.n_steps_used)
        torch.testing.assert_close(shard.completeness_error, single.completeness_error, rtol=1e-6, atol=1e-12)
    assert max_rel_diff(merge_shards(shards), single) < 1e-9


def test_max_steps_below_the_first_pieces_keeps_the_nested_levels():
    from tests.core.test_family_attribution import _batch

    model = spiky_llama()
    batch = _batch(model)
    with pytest.warns(UserWarning, match="did not reach"):
        result = attribute(model, batch, max_steps=31)
    assert bool((result.n_steps_used[:, 0] == 31).all())  # the 31-node level, not pieces


def test_a_transition_the_pieces_resolve_is_not_called_degenerate():
    # attention outputs far above the residual: F(alpha A) is flat for alpha >= 0.1 and turns close to 0
    model, batch = sharp_model(3e4), text_batch()
    with pytest.warns(UserWarning, match="zero baseline is degenerate"):
        attribute(model, batch, method="gausslegendre", n_steps=10, return_convergence_delta=True)  # cannot tell
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither degenerate nor unconverged
        result = attribute(model, batch, return_convergence_delta=True)
    assert float(result.completeness_error.max()) <= 1e-3 and int(result.n_steps_used.max()) > 15


def test_large_piece_maps_are_not_kept_and_the_result_is_the_same(monkeypatch):
    from lightning_attattr.core import attribution
    from tests.core.test_family_attribution import _batch

    model = spiky_llama()
    batch = _batch(model)
    kept = attribute(model, batch)
    calls = []
    total = attribution._Pieces.total

    def spy(self):
        kept_map = total(self)
        calls.append(kept_map is not None)
        return kept_map

    monkeypatch.setattr(attribution, "PIECE_MAPS_BYTES", 0)  # every map is "large": sums only, nodes once more
    monkeypatch.setattr(attribution._Pieces, "total", spy)
    recomputed = attribute(model, batch)
    assert calls and not any(calls)
    assert torch.equal(recomputed.n_steps_used, kept.n_steps_used)
    assert max_rel_diff(recomputed, kept) < 1e-12


@pytest.mark.parametrize("internal_batch_size", [1, 7])
def test_pieces_in_small_passes_give_the_same_result(internal_batch_size):
    from tests.core.test_family_attribution import _batch

    model = spiky_llama()
    batch = _batch(model)
    full = attribute(model, batch)
    small = attribute(model, batch, internal_batch_size=internal_batch_size)
    assert int(full.n_steps_used.max()) > 15
    assert torch.equal(small.n_steps_used, full.n_steps_used)
    assert max_rel_diff(small, full) < 1e-10
