"""Head importance by every method, pruning plans and pruning-curve summaries: pure functions, no Lightning.

The per-example quantities (one row per importance example) are computed by the Lightning layer
(``lightning_attattr.lightning.experiments``); here they are turned into ``[layer, head]``
importance vectors exactly as the paper's protocol prescribes, into the head masks of a pruning
curve, and into the curve's summaries.

Importance methods (``METHODS``); higher = more important, heads are pruned lowest first:

- ``attattr`` / ``attattr_mean`` / ``attattr_sum``: mean over examples of each head's max / mean /
  sum of its AttAttr map (gold label; max pooling is the paper's ``I_h``);
- ``taylor``: the official script's Taylor baseline (gradient of the summed logits, summed over
  examples, each layer's vector L2-normalised);
- ``taylor_michel``: Michel et al.'s ``E|dL/d xi_h|`` (cross-entropy with the gold label);
- ``accuracy_difference``: accuracy on the importance examples minus accuracy with that one head
  masked (the paper's third curve; not in the official code);
- ``attention``: mean over examples of each head's largest attention probability;
- ``random``: i.i.d. uniform scores, one curve per seed (reported as mean and spread).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from lightning_attattr.core.importance import normalize_per_layer, prune_mask, random_importance

METHODS = (
    "attattr",
    "attattr_mean",
    "attattr_sum",
    "taylor",
    "taylor_michel",
    "accuracy_difference",
    "attention",
    "random",
)
# per-example record keys each method needs
RECORD_KEYS = {
    "attattr": ("attattr_max",),
    "attattr_mean": ("attattr_mean",),
    "attattr_sum": ("attattr_sum",),
    "taylor": ("taylor",),
    "taylor_michel": ("taylor_michel",),
    "accuracy_difference": ("correct", "correct_masked"),
    "attention": ("attention",),
    "random": (),
}


def random_name(seed: int) -> str:
    """The method name of one random seed's curve."""
    return f"random_s{seed}"


def importance_from_records(
    records: Mapping[str, Tensor], methods: Sequence[str], n_layers: int, n_heads: int, seeds: Sequence[int] = (0, 1, 2)
) -> dict[str, Tensor]:
    """``[layer, head]`` float64 importance per method from the per-example records.

    Args:
        records: ``[example, layer, head]`` tensors (``attattr_max``, ``taylor``, ...), ``correct``
            ``[example]`` and ``correct_masked`` ``[example, layer * head]`` (bool) for the
            accuracy difference.
        methods: names from ``METHODS``; ``random`` expands to one entry per seed (``random_s0``, ...).
        n_layers: the model's number of layers.
        n_heads: heads per layer.
        seeds: seeds of the random baseline.

    Returns:
        ``{name: [layer, head]}`` in the order of ``methods``, on the records' device (the random
        scores are drawn on the CPU, the same for a seed on every device, and moved there).
    """
    device = next((v.device for v in records.values() if isinstance(v, Tensor)), torch.device("cpu"))
    out: dict[str, Tensor] = {}
    for method in methods:
        if method == "random":
            for seed in seeds:
                out[random_name(seed)] = random_importance(n_layers, n_heads, seed).to(device)
        elif method in ("attattr", "attattr_mean", "attattr_sum", "taylor_michel", "attention"):
            out[method] = records[RECORD_KEYS[method][0]].double().mean(0)
        elif method == "taylor":
            out[method] = normalize_per_layer(records["taylor"].double().sum(0))
        elif method == "accuracy_difference":
            full = records["correct"].double().mean()
            masked = records["correct_masked"].double().mean(0).view(n_layers, n_heads)
            out[method] = full - masked
        else:  # pragma: no cover - checked by the caller
            raise ValueError(method)
    return out


def pruning_plan(
    importances: Mapping[str, Tensor], fractions: Sequence[float]
) -> tuple[Tensor, dict[str, list[int]], list[int]]:
    """The distinct head masks of all pruning curves.

    Returns:
        ``masks`` ``[mask, layer, head]`` (float32 on the CPU, 1 = kept: the plan is a record, saved beside
        the pruning results), ``index`` ``{method: [mask index per fraction]}`` and the number of heads
        removed per fraction (``floor(r * n_heads)`` as computed by
        :func:`~lightning_attattr.core.importance.prune_mask`).
    """
    masks: list[Tensor] = []
    keys: dict[bytes, int] = {}
    index: dict[str, list[int]] = {}
    for name, importance in importances.items():
        index[name] = []
        for fraction in fractions:
            mask = prune_mask(importance, fraction).float().cpu()
            key = mask.numpy().tobytes()
            if key not in keys:
                keys[key] = len(masks)
                masks.append(mask)
            index[name].append(keys[key])
    # the count the masks remove (``prune_mask`` floors ``r * n`` in floating point, as the official script)
    first = next(iter(index.values()), [0] * len(fractions))
    removed = [int((masks[i] == 0).sum()) if masks else 0 for i in first]
    return torch.stack(masks) if masks else torch.zeros(0, device="cpu"), index, removed


def task_metrics(preds: Tensor, labels: Tensor, metrics: Sequence[str], num_labels: int) -> dict[str, float]:
    """The task's metrics for predictions ``[n]`` against ``labels`` ``[n]``: ``acc``, ``f1`` (class 1), ``mcc``."""
    preds, labels = preds.long(), labels.long()
    out = {"acc": float((preds == labels).double().mean()) if len(labels) else float("nan")}
    if "f1" in metrics:
        tp = float(((preds == 1) & (labels == 1)).sum())
        fp = float(((preds == 1) & (labels != 1)).sum())
        fn = float(((preds != 1) & (labels == 1)).sum())
        out["f1"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else 0.0
    if "mcc" in metrics:
        out["mcc"] = matthews(preds, labels, num_labels)
    return out


def matthews(preds: Tensor, labels: Tensor, num_labels: int) -> float:
    """Matthews correlation coefficient (multi-class, Gorodkin's R_K); 0 when undefined."""
    device = labels.device
    confusion = torch.zeros(num_labels, num_labels, dtype=torch.float64, device=device)  # [gold, predicted]
    ones = torch.ones(len(labels), dtype=torch.float64, device=device)
    confusion.index_put_((labels.long(), preds.long().to(device)), ones, accumulate=True)
    t, p = confusion.sum(1), confusion.sum(0)
    c, s = confusion.trace(), confusion.sum()
    denom = math.sqrt(float((s * s - (p * p).sum()) * (s * s - (t * t).sum())))
    return float((c * s - (t * p).sum()) / denom) if denom > 0 else 0.0


def curve_summary(fractions: Sequence[float], values: Sequence[float], tolerance: float = 0.01) -> dict[str, float]:
    """Area under a pruning curve (trapezoid over ``fractions``) and how far it stays near the unpruned value.

    Args:
        fractions: increasing fractions of heads removed; the first must be 0 (the unpruned model).
        values: the metric at each fraction.
        tolerance: the allowed drop (0.01 = 1 point of accuracy).

    Returns:
        ``auc`` and ``max_fraction_within``: the largest fraction ``r`` such that the metric stays at
        least ``values[0] - tolerance`` at every fraction up to ``r``.
    """
    auc = sum((fractions[i + 1] - fractions[i]) * (values[i] + values[i + 1]) / 2 for i in range(len(fractions) - 1))
    within = fractions[0]
    for fraction, value in zip(fractions, values):
        if value < values[0] - tolerance - 1e-12:
            break
        within = fraction
    return {"auc": float(auc), "max_fraction_within": float(within)}
