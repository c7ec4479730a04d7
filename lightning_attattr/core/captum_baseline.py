"""Captum's IntegratedGradients over one layer's attention probabilities: the reference AttAttr is checked against.

What a competent Captum user would write: ``captum.attr.IntegratedGradients`` over ONE layer's attention
probabilities of ONE example, fed through the same attention interface (``attention_scope`` +
``ctrl.replacing(layer, x)``), baseline zeros, target the predicted class, output the softmax probability.
The benchmark ``benchmarks/adaptive_speed.py`` times it against :class:`AttentionIntegratedGradients`, and
the tests check that both give the same maps.

captum is not a runtime dependency (it is in the ``dev`` and ``bench`` extras); it is imported only when
an attribution runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from lightning_attattr.core.adapter import attention_scope

__all__ = ["captum_attribution", "captum_layer_attribution"]


def captum_layer_attribution(
    model: torch.nn.Module,
    ctrl,
    inputs: Mapping[str, torch.Tensor],
    layer: int,
    probs: torch.Tensor,
    target: int,
    *,
    n_steps: int = 10,
    method: str = "gausslegendre",
    internal_batch_size: int | None = None,
) -> torch.Tensor:
    """Captum's IntegratedGradients over layer ``layer``'s attention probabilities of ONE example.

    Args:
        model: a Hugging Face classifier (eval mode).
        ctrl: the controller of an enclosing ``attention_scope(model)``.
        inputs: the example's model inputs, each ``[1, ...]`` (no padding needed).
        layer: the layer whose probabilities are integrated.
        probs: the clean probabilities of that layer, ``[1, head, query_pos, key_pos]``.
        target: the class whose softmax probability is attributed.
        n_steps: passed to ``IntegratedGradients.attribute``.
        method: passed to ``IntegratedGradients.attribute``.
        internal_batch_size: passed to ``IntegratedGradients.attribute``.

    Returns:
        ``[head, query_pos, key_pos]``: ``A * sum_k w_k dF(alpha_k A)/dA`` with a zero baseline.
    """
    from captum.attr import IntegratedGradients

    def forward(x: torch.Tensor) -> torch.Tensor:
        # x: [k, head, q, k] scaled copies of the probabilities; repeat the example's inputs to k rows
        rows = {name: t.expand(x.shape[0], *t.shape[1:]) for name, t in inputs.items()}
        with ctrl.replacing(layer, x):
            return torch.softmax(model(**rows).logits, dim=-1)

    ig = IntegratedGradients(forward)
    attr = ig.attribute(
        probs,
        baselines=torch.zeros_like(probs),
        target=target,
        n_steps=n_steps,
        method=method,
        internal_batch_size=internal_batch_size,
    )
    return attr[0].detach()


def captum_attribution(
    model: torch.nn.Module,
    examples: Sequence[Mapping[str, torch.Tensor]],
    layers: Sequence[int] | None = None,
    *,
    n_steps: int = 10,
    method: str = "gausslegendre",
    internal_batch_size: int | None = None,
    use_sdpa: bool = True,
) -> tuple[list[torch.Tensor], list[int]]:
    """Captum maps ``[layer, head, n, n]`` and the predicted class for each single-example input dict.

    One clean forward per example captures every layer's probabilities (and gives the prediction); then
    one :func:`captum_layer_attribution` call per layer. ``use_sdpa`` lets the layers whose probabilities
    are not replaced use the fused kernel (the controller's public switch; same as ours).
    """
    maps, targets = [], []
    with attention_scope(model) as ctrl:
        previous = ctrl.use_sdpa
        ctrl.use_sdpa = use_sdpa
        try:
            n_layers = ctrl.n_layers
            chosen = list(range(n_layers)) if layers is None else list(layers)
            for inputs in examples:
                with torch.no_grad(), ctrl.capturing(iter(chosen)) as clean:
                    target = int(model(**inputs).logits.argmax(-1)[0])
                per_layer = [
                    captum_layer_attribution(
                        model,
                        ctrl,
                        inputs,
                        layer,
                        clean[layer],
                        target,
                        n_steps=n_steps,
                        method=method,
                        internal_batch_size=internal_batch_size,
                    )
                    for layer in chosen
                ]
                maps.append(torch.stack(per_layer))
                targets.append(target)
        finally:
            ctrl.use_sdpa = previous
    return maps, targets
