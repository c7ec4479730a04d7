"""Captum's IntegratedGradients over one layer's attention probabilities equals our AttAttr maps.

The Captum version (:mod:`lightning_attattr.core.captum_baseline`) is the benchmark baseline of
``benchmarks/adaptive_speed.py``. captum is in the ``dev``
extra (not a runtime dependency); without it this module is skipped.
"""

from __future__ import annotations

import pytest
import torch

from lightning_attattr.core.attribution import AttentionIntegratedGradients
from tests.conftest import make_model, text_batch

pytest.importorskip("captum")

from lightning_attattr.core.captum_baseline import captum_attribution  # noqa: E402


def single_examples(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """One unpadded ``[1, n]`` input dict per row of a right-padded batch."""
    lengths = batch["attention_mask"].sum(1).tolist()
    return [{k: v[i : i + 1, :n] for k, v in batch.items()} for i, n in enumerate(lengths)]


@pytest.mark.parametrize(("method", "n_steps"), [("gausslegendre", 8), ("riemann_left", 4)])
@pytest.mark.parametrize("use_sdpa", [True, False])
def test_captum_equals_ours(method: str, n_steps: int, use_sdpa: bool) -> None:
    model = make_model("bert")
    batch = text_batch()
    res = AttentionIntegratedGradients(model).attribute(batch, method=method, n_steps=n_steps)
    maps, targets = captum_attribution(
        model, single_examples(batch), n_steps=n_steps, method=method, internal_batch_size=n_steps, use_sdpa=use_sdpa
    )
    assert targets == res.target.tolist()
    scale = max(float(a.abs().max()) for a in res.attributions)
    assert scale > 0
    for ours, theirs in zip(res.attributions, maps, strict=True):
        assert ours.shape == theirs.shape
        assert float((ours - theirs).abs().max()) <= 1e-5 * scale


def test_captum_layer_subset_and_small_internal_batch() -> None:
    """Captum splitting the steps over several passes (internal_batch_size < n_steps) changes nothing."""
    model = make_model("bert")
    batch = text_batch(lengths=(5, 7))
    res = AttentionIntegratedGradients(model).attribute(batch, layers=[2, 0], n_steps=6)
    maps, _ = captum_attribution(model, single_examples(batch), layers=[0, 2], n_steps=6, internal_batch_size=2)
    scale = max(float(a.abs().max()) for a in res.attributions)
    for ours, theirs in zip(res.attributions, maps, strict=True):
        assert float((ours - theirs).abs().max()) <= 1e-5 * scale


def test_captum_rules_match_ours() -> None:
    """Same nodes and weights on [0, 1] for the rules the comparison uses.

    Not ``riemann_trapezoid``: Captum (0.9) gives it weights ``1/n`` (halved at both ends) that sum to
    ``(n - 1) / n``, ours are ``1/(n - 1)`` (halved at both ends) and sum to one.
    """
    from captum.attr._utils.approximation_methods import approximation_parameters as captum_parameters

    from lightning_attattr.core.approximation import approximation_parameters

    for method in ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle"):
        step_sizes, alphas = captum_parameters(method)
        ours_alphas, ours_weights = approximation_parameters(method, 7)
        assert alphas(7) == pytest.approx(ours_alphas, abs=1e-7)
        assert step_sizes(7) == pytest.approx(ours_weights, abs=1e-7)
