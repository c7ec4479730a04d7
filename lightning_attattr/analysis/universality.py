"""Universality of important heads: correlations of importance vectors across tasks (pure functions).

The paper shows that the heads AttAttr finds important are largely shared across similar tasks
(scatter plots, one point per head, with a correlation per pair of tasks). Here: Pearson and
Spearman matrices over any number of importance vectors of the same ``[layer, head]`` shape.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from lightning_attattr.core.checks import ArgumentError


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two flattened tensors (NaN when one is constant)."""
    x, y = a.flatten().double(), b.flatten().double()
    x, y = x - x.mean(), y - y.mean()
    denom = float(x.norm() * y.norm())
    return float((x @ y) / denom) if denom > 0 else float("nan")


def _ranks(x: Tensor) -> Tensor:
    """Average ranks (ties share the mean rank), as Spearman's rho needs."""
    x = x.flatten().double()
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=torch.float64, device=x.device)
    for value in torch.unique(x):
        tied = x == value
        if int(tied.sum()) > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two flattened tensors (ties get average ranks)."""
    return pearson(_ranks(a), _ranks(b))


def correlation_matrices(vectors: Mapping[str, Tensor]) -> dict[str, list[list[float]]]:
    """``{"pearson": [[...]], "spearman": [[...]]}`` over the named importance vectors, in their order.

    Raises:
        ArgumentError: the vectors do not all have the same shape.
    """
    names = list(vectors)
    shapes = {tuple(v.shape) for v in vectors.values()}
    if len(shapes) > 1:
        raise ArgumentError(
            "Expected importance vectors of one model shape [layer, head] to compare, but got "
            + ", ".join(f"{n}: {list(vectors[n].shape)}" for n in names)
            + "."
        )
    out: dict[str, list[list[float]]] = {}
    for stat, fn in (("pearson", pearson), ("spearman", spearman)):
        out[stat] = [[fn(vectors[a], vectors[b]) for b in names] for a in names]
    return out
