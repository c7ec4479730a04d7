"""torchmetrics metrics over the core's per-example scores (outside the core: imports torchmetrics).

:class:`HeadImportance` accumulates ``[batch, layer, head]`` head scores (AttAttr pooled
attributions, Taylor, attention weight, ...) across batches and, through torchmetrics' state sync,
across DDP ranks. It shares its maths with the functional
:func:`lightning_attattr.core.importance.head_importance`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_attattr.core.checks import check_positive_int, check_shape
from lightning_attattr.core.importance import _head_importance_compute, _head_importance_update

__all__ = ["HeadImportance"]


class HeadImportance(Metric):
    """Mean per-example head score, ``[layer, head]``: the AttAttr head importance ``I_h``.

    States ``score_sum`` (``[layer, head]``) and ``count`` are summed across processes, so the
    result under DDP equals that of one process fed every example. The states are float32 by
    default; call ``metric.set_dtype(torch.float64)`` to accumulate in float64.

    Args:
        n_layers: number of layers.
        n_heads: heads per layer (original count, also for pruned models).
        **kwargs: forwarded to :class:`torchmetrics.Metric`.

    Raises:
        TypeError, ValueError: ``n_layers`` / ``n_heads`` are not positive integers.

    Example:
        >>> import torch
        >>> metric = HeadImportance(n_layers=1, n_heads=2)
        >>> metric.update(torch.tensor([[[1.0, 2.0]]]))
        >>> metric.update(torch.tensor([[[3.0, 0.0]]]))
        >>> metric.compute().tolist()
        [[2.0, 1.0]]
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    score_sum: Tensor
    count: Tensor

    def __init__(self, n_layers: int, n_heads: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_layers = check_positive_int("n_layers", n_layers)
        self.n_heads = check_positive_int("n_heads", n_heads)
        self.add_state("score_sum", default=torch.zeros(n_layers, n_heads), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, scores: Tensor) -> None:
        """Add the ``[batch, layer, head]`` scores of a batch.

        Raises:
            TypeError, ValueError: ``scores`` is not a ``[batch, n_layers, n_heads]`` tensor (the message
                shows the expected and the given shape).
        """
        check_shape("scores", scores, (None, self.n_layers, self.n_heads), "[batch, layer, head]")
        score_sum, count = _head_importance_update(scores)
        self.score_sum += score_sum.to(device=self.score_sum.device, dtype=self.score_sum.dtype)
        self.count += count

    def compute(self) -> Tensor:
        """``[layer, head]`` mean score over every example seen (on every process)."""
        return _head_importance_compute(self.score_sum, self.count)
