"""Head importance at epoch end: AttAttr (and optionally Taylor) importance of every head, in TensorBoard."""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor
from typing_extensions import override

from lightning_attattr.analysis.universality import spearman
from lightning_attattr.callbacks._base import EpochEndAnalysis, ValExamples
from lightning_attattr.callbacks._figures import FigureLogger
from lightning_attattr.callbacks._protocol import resolve_model
from lightning_attattr.callbacks.progress import epoch_title
from lightning_attattr.core.approximation import Method, validate_method, validate_n_steps
from lightning_attattr.core.attribution import DEFAULT_METHOD, DEFAULT_N_STEPS, AttentionIntegratedGradients
from lightning_attattr.core.checks import ArgumentError, check_bool, check_choice, check_positive_int
from lightning_attattr.core.importance import (
    POOLINGS,
    Pooling,
    TaylorVariant,
    normalize_per_layer,
    taylor_importance,
)
from lightning_attattr.core.reductions import HeadScores
from lightning_attattr.lightning.compat import pl
from lightning_attattr.metrics import HeadImportance

_TARGETS = ("labels", "predicted")
_TAYLOR_VARIANTS: tuple[TaylorVariant, ...] = ("official", "michel")


def attattr_importance(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    examples: ValExamples,
    *,
    pooling: Pooling,
    target: str,
    n_steps: int | str,
    method: Method,
    batch_size: int,
    internal_batch_size: int | None,
) -> Tensor:
    """``[layer, head]`` AttAttr importance over the examples, summed over ranks (same on every rank).

    Each batch is attributed with ``reduction=HeadScores(pooling)``: every layer's maps are pooled as
    soon as they are done, so the peak memory holds one layer's maps, not all of them. The scores
    equal :func:`~lightning_attattr.core.importance.attribution_head_scores` of the full maps. The
    ranks share the examples (not the integration steps), so every pooling, ``"max"`` included, is
    exact.
    """
    model = resolve_model(pl_module)
    ig = AttentionIntegratedGradients(model)
    metric = HeadImportance(ig.n_layers, int(model.config.num_attention_heads)).to(pl_module.device)
    for batch in examples.my_batches(trainer, batch_size):
        if target == "labels" and "labels" not in batch:
            raise ArgumentError("`target='labels'` needs labels in the validation batches, but they have none.")
        result = ig.attribute(
            batch,
            target=target,
            n_steps=n_steps,
            method=method,
            internal_batch_size=internal_batch_size,
            reduction=HeadScores(pooling),
        )
        assert result.reduced is not None and result.reduced.head_scores is not None  # asked for above
        metric.update(result.reduced.head_scores.to(pl_module.device))  # [batch, layer, head]
    return _synced(metric, trainer)


def taylor_head_importance(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    examples: ValExamples,
    *,
    variant: TaylorVariant,
    batch_size: int,
) -> Tensor:
    """``[layer, head]`` Taylor importance (summed over examples and ranks, then per-layer L2-normalised)."""
    model = resolve_model(pl_module)
    metric: HeadImportance | None = None
    for batch in examples.my_batches(trainer, batch_size):
        labels = batch.get("labels") if variant == "michel" else None
        scores = taylor_importance(
            model, {k: v for k, v in batch.items() if k != "labels"}, variant=variant, labels=labels
        )
        if metric is None:
            metric = HeadImportance(*scores.shape[1:]).to(pl_module.device)
        metric.update(scores.to(pl_module.device))
    if metric is None:  # this rank had no examples
        n_heads = int(model.config.num_attention_heads)
        metric = HeadImportance(AttentionIntegratedGradients(model).n_layers, n_heads).to(pl_module.device)
    return normalize_per_layer(_synced(metric, trainer))


def _synced(metric: HeadImportance, trainer: pl.Trainer) -> Tensor:
    """Mean over all examples of all ranks: torchmetrics sums the states across ranks in ``compute``."""
    import warnings

    with warnings.catch_warnings():  # a rank without examples has no updates; its zero states still sum
        warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
        return metric.compute().cpu()


class HeadImportanceCallback(EpochEndAnalysis):
    """Accumulate AttAttr head importance ``I_h`` over validation examples every ``every_n_epochs``.

    ``I_h`` is the mean over examples of the pooled (by default signed max, as in the paper)
    attribution map of head ``h``, for the gold label by default (the official code's choice).
    The examples are the first ``n_examples`` of the validation loader, chosen once and kept in the
    callback state. Each layer's maps are pooled as soon as they are done
    (``attribute(..., reduction=HeadScores(pooling))``), so the maps of all layers never exist at
    once; the scores equal pooling the full maps. Under DDP each rank attributes its share of the
    examples and the sums are reduced, so every rank gets the single-process importance.

    Logs ``importance/L{layer}H{head}`` scalars, an ``importance/attattr`` heatmap image, and with
    ``taylor=True`` the ``importance/taylor`` heatmap and ``importance/spearman_taylor`` (rank
    correlation of the two). The latest result is in :attr:`importance` (``[layer, head]``) and every
    analysis in :attr:`history`.

    Args:
        n_examples: number of validation examples (the paper uses 200).
        every_n_epochs: analyse every this many validation epochs (never during sanity checking).
        pooling: ``"max"`` (paper), ``"mean"`` or ``"sum"`` over each head's map.
        target: ``"labels"`` (gold labels, default) or ``"predicted"``.
        n_steps: ``"auto"`` (adaptive, to a completeness tolerance of 1e-3) or a fixed step count.
        method: integration rule.
        batch_size: examples per attribution call.
        internal_batch_size: rows per forward/backward pass (memory cap).
        taylor: also compute Taylor importance and its rank correlation with AttAttr.
        taylor_variant: ``"official"`` (sum of logits, the official script) or ``"michel"`` (loss).
        log_head_scalars: log one scalar per head.
    """

    def __init__(
        self,
        n_examples: int = 64,
        every_n_epochs: int = 1,
        pooling: str = "max",
        target: str = "labels",
        # core.attribution types DEFAULT_N_STEPS as int | str; its value is "auto"
        n_steps: int | Literal["auto"] = DEFAULT_N_STEPS,
        method: str = DEFAULT_METHOD,
        batch_size: int = 16,
        internal_batch_size: int | None = None,
        taylor: bool = False,
        taylor_variant: str = "official",
        log_head_scalars: bool = True,
    ) -> None:
        super().__init__(every_n_epochs)
        check_positive_int("n_examples", n_examples)
        check_positive_int("batch_size", batch_size)
        check_positive_int("internal_batch_size", internal_batch_size, optional=True)
        check_bool("taylor", taylor)
        check_bool("log_head_scalars", log_head_scalars)
        pooling = check_choice("pooling", pooling, POOLINGS)
        check_choice("target", target, _TARGETS)
        taylor_variant = check_choice("taylor_variant", taylor_variant, _TAYLOR_VARIANTS)
        validate_n_steps(n_steps, allow_auto=True)
        method = validate_method(method)
        self.examples = ValExamples(n_examples)
        self.pooling = pooling
        self.target = target
        self.n_steps = n_steps
        self.method = method
        self.batch_size = batch_size
        self.internal_batch_size = internal_batch_size
        self.taylor = taylor
        self.taylor_variant = taylor_variant
        self.log_head_scalars = log_head_scalars
        self.importance: Tensor | None = None
        self.taylor_importance: Tensor | None = None
        self.history: list[dict[str, Any]] = []

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(n_examples=self.examples.n_examples, pooling=self.pooling, target=self.target)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)

    @override
    def analyse(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Compute the importance on this rank's examples, reduce, log the heatmap and scalars."""
        self.examples.ensure(trainer, pl_module)
        importance = attattr_importance(
            trainer,
            pl_module,
            self.examples,
            pooling=self.pooling,
            target=self.target,
            n_steps=self.n_steps,
            method=self.method,
            batch_size=self.batch_size,
            internal_batch_size=self.internal_batch_size,
        )
        record: dict[str, Any] = {"epoch": trainer.current_epoch, "attattr": importance}
        if self.taylor:
            taylor = taylor_head_importance(
                trainer, pl_module, self.examples, variant=self.taylor_variant, batch_size=self.batch_size
            )
            record["taylor"] = taylor
            record["spearman_taylor"] = spearman(importance, taylor)
            self.taylor_importance = taylor
            pl_module.log("importance/spearman_taylor", record["spearman_taylor"], rank_zero_only=True)
        self.importance = importance
        self.history.append(record)
        if self.log_head_scalars:
            for layer in range(importance.shape[0]):
                for head in range(importance.shape[1]):
                    pl_module.log(f"importance/L{layer}H{head}", float(importance[layer, head]), rank_zero_only=True)
        if trainer.is_global_zero:
            from lightning_attattr.plotting import importance_heatmap

            figures = FigureLogger(trainer)

            for name in ("attattr", "taylor"):
                if name in record:
                    fig = importance_heatmap(
                        record[name], title=f"{name} head importance, {epoch_title(record['epoch'])}"
                    )
                    figures.image(f"importance/{name}", fig, trainer.global_step)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.examples.rows, "history": self.history}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.examples.rows = state_dict.get("rows")
        self.history = list(state_dict.get("history", []))
        if self.history:
            self.importance = self.history[-1]["attattr"]
            self.taylor_importance = self.history[-1].get("taylor")
