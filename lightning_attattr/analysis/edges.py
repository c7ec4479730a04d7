"""Per-layer edge explanations: which (query, key) attention connections matter, by four methods.

Every method returns, per example, a ``[layer, query_pos, key_pos]`` float32 tensor on the CPU over
the example's real tokens (padding cropped): the score of the connection "query token ``i`` attends to
key token ``j`` in layer ``l``", all heads of the layer together. That is the layout of a
head-summed AttAttr map, so trees, deletion curves and the ground-truth test run unchanged on each.

- ``attattr``: AttAttr (integrated gradients over the layer's probabilities), summed over heads.
- ``attention``: the raw attention probabilities, averaged over heads.
- ``rollout``: attention rollout (Abnar and Zuidema 2020, "Quantifying Attention Flow in
  Transformers"). With ``R_l = 0.5 * mean_h A_l + 0.5 * I`` and ``u_l = e_0^T R_L ... R_{l+1}``
  (how much of [CLS]'s final representation flows from token ``i`` at the output of layer ``l``;
  ``u_L = e_0``), the score of edge ``(i, j)`` in layer ``l`` is ``u_l[i] * 0.5 * mean_h A_l[i, j]``:
  the share of [CLS]'s rollout that passes through that attention connection. The residual half
  ``0.5 * I`` is not an attention connection (it cannot be removed), so it gets no edge; per layer
  the edge scores and the residual share sum to 1.
- ``grad_attention``: gradient x attention as in Chefer, Gur and Wolf (2021, "Generic
  Attention-model Explainability"): ``mean_h (dy_c / dA_h * A_h)^+`` with ``y_c`` the target class's
  logit and the gradient the total derivative through every layer above.

The target class is the prediction unless given. Only ``attattr`` and ``grad_attention`` use it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_attattr.core.adapter import attention_scope
from lightning_attattr.core.attribution import (
    AttentionIntegratedGradients,
    AttributionResult,
    frozen_eval,
    model_logits,
)

#: Edge methods, in the order reports list them.
EDGE_METHODS: tuple[str, ...] = ("attattr", "attention", "rollout", "grad_attention")


def real_positions(inputs: Mapping[str, Tensor]) -> list[Tensor]:
    """Indices of the real (non-padding) tokens of every example of a batch: per example ``[n]``.

    The indices are on the device of ``attention_mask`` (of ``input_ids`` without a mask), so they
    index the batch's tensors and the model's outputs where they are.
    """
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    if mask is None:
        return [torch.arange(ids.shape[1], device=ids.device) for _ in range(ids.shape[0])]
    return [row.nonzero().squeeze(1) for row in mask.bool()]


def _crop(maps: Tensor, positions: Sequence[Tensor]) -> list[Tensor]:
    """``[batch, layer, q, k]`` -> per example ``[layer, n, n]`` over its real tokens (CPU, float32)."""
    out = []
    for row, pos in enumerate(positions):
        m = maps[row].index_select(1, pos.to(maps.device)).index_select(2, pos.to(maps.device))
        out.append(m.float().cpu())
    return out


def _inputs(inputs: Mapping[str, Any]) -> dict[str, Tensor]:
    return {k: v for k, v in inputs.items() if k != "labels" and v is not None}


def _probabilities(model: nn.Module, inputs: Mapping[str, Tensor]) -> Tensor:
    """``[batch, layer, head, q, k]`` attention probabilities of a forward without gradients."""
    with torch.no_grad(), attention_scope(model) as ctrl, ctrl.capturing() as store:
        model_logits(model, inputs)
    return torch.stack([store[layer] for layer in sorted(store)], 1)


def _resolve_target(logits: Tensor, target: int | Sequence[int] | Tensor | None) -> Tensor:
    if target is None or (isinstance(target, str) and target == "predicted"):
        return logits.argmax(-1)
    if isinstance(target, int):
        return torch.full((logits.shape[0],), target, dtype=torch.long, device=logits.device)
    return torch.as_tensor(target, dtype=torch.long, device=logits.device).reshape(-1)


def attention_edges(model: nn.Module, inputs: Mapping[str, Tensor], **_: Any) -> list[Tensor]:
    """Raw attention: each layer's probabilities averaged over heads, ``[layer, n, n]`` per example."""
    inputs = _inputs(inputs)
    probs = _probabilities(model, inputs)
    return _crop(probs.mean(2), real_positions(inputs))


def rollout_scores(attention: Tensor) -> Tensor:
    """Attention rollout's edge scores of one example (module docstring), on ``attention``'s device and dtype.

    Args:
        attention: ``[layer, n, n]`` head-averaged attention probabilities over the example's real
            tokens (each row sums to 1).

    Returns:
        ``[layer, n, n]``: ``u_l[i] * 0.5 * attention[l, i, j]``, the share of [CLS]'s rollout that
        flows through the connection ``(i, j)`` of layer ``l``.
    """
    n_layers, n = attention.shape[0], attention.shape[1]
    flow = torch.zeros(n, dtype=attention.dtype, device=attention.device)  # [n]: u_L = e_0
    flow[0] = 1.0
    half_eye = 0.5 * torch.eye(n, dtype=attention.dtype, device=attention.device)  # the residual half
    scores = torch.empty_like(attention)
    for layer in reversed(range(n_layers)):
        scores[layer] = flow[:, None] * 0.5 * attention[layer]
        flow = flow @ (0.5 * attention[layer] + half_eye)
    return scores


def rollout_edges(model: nn.Module, inputs: Mapping[str, Tensor], **_: Any) -> list[Tensor]:
    """Attention rollout's flow through each attention connection into [CLS] (module docstring)."""
    inputs = _inputs(inputs)
    probs = _probabilities(model, inputs).mean(2).double()  # [batch, layer, q, k]
    out = []
    for row, pos in enumerate(real_positions(inputs)):
        pos = pos.to(probs.device)
        a = probs[row].index_select(1, pos).index_select(2, pos)  # [layer, n, n]; rows sum to 1 over real keys
        out.append(rollout_scores(a).float().cpu())
    return out


def grad_attention_edges(
    model: nn.Module, inputs: Mapping[str, Tensor], *, target: int | Sequence[int] | Tensor | None = None, **_: Any
) -> list[Tensor]:
    """Chefer et al.'s head-averaged positive gradient x attention per layer, ``[layer, n, n]`` per example."""
    inputs = _inputs(inputs)
    with torch.inference_mode(False), torch.enable_grad():
        batch = {k: v.clone() for k, v in inputs.items()}
        with frozen_eval(model), attention_scope(model) as ctrl, ctrl.probing() as store:
            logits = model_logits(model, batch).float()
            chosen = _resolve_target(logits.detach(), target)
            layers = sorted(store)
            handles = [store[layer][1] for layer in layers]
            grads = torch.autograd.grad(logits.gather(1, chosen[:, None]).sum(), handles)
    relevance = torch.stack([(g * store[layer][0]).clamp(min=0).mean(1) for layer, g in zip(layers, grads)], 1)
    return _crop(relevance, real_positions(inputs))


def attattr_edges(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    *,
    target: int | Sequence[int] | Tensor | None = None,
    **attribute_kwargs: Any,
) -> list[Tensor]:
    """AttAttr summed over heads, ``[layer, n, n]`` per example; keyword arguments go to ``attribute``."""
    return attattr_edges_and_result(model, inputs, target=target, **attribute_kwargs)[0]


def attattr_edges_and_result(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    *,
    target: int | Sequence[int] | Tensor | None = None,
    **attribute_kwargs: Any,
) -> tuple[list[Tensor], AttributionResult]:
    """:func:`attattr_edges` and the full attribution result (``completeness_error``, ``prob``, ...)."""
    inputs = _inputs(inputs)
    result = AttentionIntegratedGradients(model).attribute(
        inputs, target="predicted" if target is None else target, **attribute_kwargs
    )
    return [a.sum(1).float().cpu() for a in result.attributions], result


#: The function of each method: ``fn(model, inputs, target=..., **options) -> list of [layer, n, n]``.
EDGE_FUNCTIONS: dict[str, Callable[..., list[Tensor]]] = {
    "attattr": attattr_edges,
    "attention": attention_edges,
    "rollout": rollout_edges,
    "grad_attention": grad_attention_edges,
}
