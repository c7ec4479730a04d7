"""The effectiveness analysis (paper section 4.1): per-example head rankings by AttAttr vs attention weight.

For every example, heads are ranked within each layer by that example's own score (max over the
(query, key) map, gold label), and ``k`` heads are pruned in every layer (``k = 0 .. H``), either
the ``k`` largest or the ``k`` smallest. Four curves: {AttAttr, attention} x {largest, smallest
first}. Pure functions; the Lightning layer computes the scores and runs the masked forwards.
"""

from __future__ import annotations

import torch
from torch import Tensor

# the order of the four curves in masks and results
CURVES = ("attattr_largest", "attattr_smallest", "attention_largest", "attention_smallest")


def per_layer_masks(scores: Tensor, largest: bool) -> Tensor:
    """Masks removing ``k`` heads per layer, ``k = 0 .. H``: ``[H + 1, layer, head]`` (float32, 1 = kept).

    Within a layer, heads are taken by ``scores`` (``[layer, head]``), largest or smallest first;
    ties go to the lower head index. The masks are on ``scores``' device.
    """
    n_layers, n_heads = scores.shape
    # stable ranking: position of each head in the removal order of its layer
    order = torch.sort(scores.double(), dim=1, descending=largest, stable=True).indices  # [layer, head]
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n_heads, device=order.device).expand(n_layers, n_heads))
    k = torch.arange(n_heads + 1, device=order.device).view(-1, 1, 1)  # [H + 1, 1, 1]: heads removed per layer
    return (rank.unsqueeze(0) >= k).float()


def effectiveness_masks(attattr: Tensor, attention: Tensor) -> Tensor:
    """The four curves' masks of one example: ``[4, H + 1, layer, head]`` in the order of ``CURVES``."""
    return torch.stack(
        [
            per_layer_masks(attattr, largest=True),
            per_layer_masks(attattr, largest=False),
            per_layer_masks(attention, largest=True),
            per_layer_masks(attention, largest=False),
        ]
    )


def effectiveness_curves(correct: Tensor) -> dict[str, list[float]]:
    """Accuracy per curve and ``k`` from per-example correctness ``[example, 4, H + 1]``."""
    acc = correct.double().mean(0)  # [4, H + 1]
    return {name: acc[i].tolist() for i, name in enumerate(CURVES)}
