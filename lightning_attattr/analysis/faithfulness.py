"""Faithfulness of edge explanations: delete the edges a method ranks highest and see what the model does.

For one example and one method's ``[layer, n, n]`` edge scores, :func:`top_edges` takes the ``k``
highest-scoring connections over all layers; :func:`removal_probabilities` runs the model with those
attention probabilities set to 0 in their layer (every head of the layer, no renormalisation) and
returns the class probabilities. The drop of the predicted class's probability and the share of
flipped predictions, for ``k = 1, 2, 4, ...``, form the method's deletion curve; the same number of
uniformly random connections (several seeds) gives the baseline every method must beat. A
faithful explanation's curve falls fast: its top edges are the ones the prediction depends on.
The area under a curve (:func:`curve_area`) is its mean over the ``k`` grid, with every grid point
weighted equally (the trapezoid rule on the grid's index axis, normalised to [0, 1]).

Trees get the same test (:func:`layer_matched_random`): their edges against random connections of
the same layers, as many per layer, none of them a tree edge.

The ground-truth test (:func:`planted_hits`) asks whether a known interacting pair of tokens is
among a method's top edges, in either direction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from lightning_attattr.core.adapter import attention_scope
from lightning_attattr.core.attribution import model_logits
from lightning_attattr.core.checks import ArgumentError

#: Default deletion sizes.
DEFAULT_KS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)


def check_ks_fit(name: str, ks: Sequence[int], n_layers: int, shortest: int) -> None:
    """Refuse a ``k`` larger than the number of connections of the shortest example (``n_layers * n * n``).

    Raises:
        ArgumentError: the largest ``k`` does not fit.
    """
    edges = n_layers * shortest * shortest
    if max(ks) > edges:
        raise ArgumentError(
            f"Expected every value of `{name}` to be at most the number of attention connections of the shortest "
            f"example ({n_layers} layers x {shortest} x {shortest} tokens = {edges}), but got {max(ks)}."
        )


def top_edges(scores: Tensor, k: int) -> Tensor:
    """The ``k`` highest-scoring connections of ``scores`` ``[layer, n, n]`` as ``[k, 3]`` (layer, query, key).

    Ties keep the flat (layer, query, key) order, so the result is deterministic.
    """
    flat = scores.reshape(-1)
    if not 0 <= k <= flat.numel():
        raise ArgumentError(f"Expected `k` in [0, {flat.numel()}] (the number of connections), but got {k}.")
    order = torch.sort(flat, descending=True, stable=True).indices[:k]
    return _unflatten(order, scores.shape)


def _unflatten(flat: Tensor, shape: Sequence[int]) -> Tensor:
    _, n_q, n_k = shape
    return torch.stack([flat // (n_q * n_k), (flat // n_k) % n_q, flat % n_k], 1)


def random_edges(shape: Sequence[int], k: int, generator: torch.Generator) -> Tensor:
    """``k`` distinct connections drawn uniformly from a ``[layer, n, n]`` grid, as ``[k, 3]``."""
    total = int(shape[0]) * int(shape[1]) * int(shape[2])
    if not 0 <= k <= total:
        raise ArgumentError(f"Expected `k` in [0, {total}] (the number of connections), but got {k}.")
    return _unflatten(torch.randperm(total, generator=generator)[:k], shape)


def layer_matched_random(edges: Tensor, shape: Sequence[int], generator: torch.Generator) -> Tensor:
    """As many random connections per layer as ``edges`` ``[m, 3]`` has there, none of them one of ``edges``."""
    _, n_q, n_k = (int(s) for s in shape)
    chosen = []
    for layer in sorted({int(x) for x in edges[:, 0].tolist()}):
        own = edges[edges[:, 0] == layer]
        taken = set((own[:, 1] * n_k + own[:, 2]).tolist())
        free = torch.tensor([f for f in range(n_q * n_k) if f not in taken], dtype=torch.long)
        pick = free[torch.randperm(len(free), generator=generator)[: len(own)]]
        chosen.append(torch.stack([torch.full_like(pick, layer), pick // n_k, pick % n_k], 1))
    return torch.cat(chosen) if chosen else edges.new_zeros(0, 3)


def removal_masks(edge_sets: Sequence[Tensor], n_layers: int, n: int) -> dict[int, Tensor]:
    """Edge masks for :meth:`AttentionController.removing_edges`: row ``r`` zeroes ``edge_sets[r]``."""
    masks = torch.ones(len(edge_sets), n_layers, n, n)
    for row, edges in enumerate(edge_sets):
        if len(edges):
            masks[row, edges[:, 0], edges[:, 1], edges[:, 2]] = 0.0
    return {layer: masks[:, layer] for layer in range(n_layers)}


def removal_probabilities(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    edge_sets: Sequence[Tensor],
    *,
    chunk_rows: int = 64,
) -> Tensor:
    """Class probabilities ``[len(edge_sets), classes]`` of one example with each set of connections removed.

    Args:
        model: the Hugging Face classifier.
        inputs: one example without padding (batch 1: ``input_ids`` ``[1, n]`` and friends).
        edge_sets: per row a ``[m, 3]`` tensor of (layer, query, key) connections to remove.
        chunk_rows: rows per forward.
    """
    n = int(inputs["input_ids"].shape[1])
    device = next(model.parameters()).device
    out = []
    with torch.no_grad(), attention_scope(model) as ctrl:
        for start in range(0, len(edge_sets), chunk_rows):
            part = edge_sets[start : start + chunk_rows]
            masks = {layer: m.to(device) for layer, m in removal_masks(part, ctrl.n_layers, n).items()}
            batch = {k: v.to(device).expand(len(part), *v.shape[1:]) for k, v in inputs.items()}
            with ctrl.removing_edges(masks):
                out.append(torch.softmax(model_logits(model, batch).float(), -1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def curve_area(values: Sequence[float]) -> float:
    """Mean of a curve over its grid by the trapezoid rule on ``[0, 1]`` (one point: the value itself)."""
    values = [float(v) for v in values]
    if len(values) == 1:
        return values[0]
    return sum((a + b) / 2 for a, b in zip(values, values[1:])) / (len(values) - 1)


def planted_hits(scores: Tensor, pair: tuple[int, int], ks: Sequence[int] = (1, 3)) -> dict[str, Tensor]:
    """Whether the connection between the tokens ``pair`` (either direction) is among the top edges.

    Returns:
        ``{"top{k}": bool over all layers, "layer_top{k}": [layer] bool within each layer, "touch{k}": bool,
        one of the top ``k`` edges over all layers has a planted token at either end}`` per ``k``.
    """
    a, b = pair
    n_layers, n, _ = scores.shape
    hit = torch.zeros(n_layers, n, n, dtype=torch.bool)
    hit[:, a, b] = True
    hit[:, b, a] = True
    out: dict[str, Tensor] = {}
    for k in ks:
        edges = top_edges(scores, min(k, scores.numel()))
        out[f"top{k}"] = hit[edges[:, 0], edges[:, 1], edges[:, 2]].any()
        ends = torch.cat([edges[:, 1], edges[:, 2]])
        out[f"touch{k}"] = ((ends == a) | (ends == b)).any()
        per_layer = []
        for layer in range(n_layers):
            e = top_edges(scores[layer : layer + 1], min(k, n * n))
            per_layer.append(hit[layer, e[:, 1], e[:, 2]].any())
        out[f"layer_top{k}"] = torch.stack(per_layer)
    return out
