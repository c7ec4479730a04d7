"""Pruning curves at epoch end (accuracy with the least important heads masked), and optional pruning."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, TypeGuard

import torch
from torch import Tensor
from typing_extensions import override

from lightning_attattr.callbacks._base import EpochEndAnalysis, ValExamples
from lightning_attattr.callbacks._figures import FigureLogger
from lightning_attattr.callbacks._protocol import reduce_sum, resolve_inputs, resolve_model
from lightning_attattr.callbacks.head_importance import attattr_importance, taylor_head_importance
from lightning_attattr.callbacks.progress import epoch_title
from lightning_attattr.core.adapter import attention_scope
from lightning_attattr.core.approximation import validate_method, validate_n_steps
from lightning_attattr.core.attribution import DEFAULT_METHOD, DEFAULT_N_STEPS, model_logits
from lightning_attattr.core.checks import (
    ArgumentError,
    ArgumentTypeError,
    check_choice,
    check_fractions,
    check_int,
    check_number,
    check_positive_int,
    check_seed,
)
from lightning_attattr.core.families import kv_head_count
from lightning_attattr.core.importance import POOLINGS, PRUNING_FRACTIONS, heads_to_prune, prune_mask, random_importance
from lightning_attattr.core.pruning import prune_heads
from lightning_attattr.lightning.compat import pl, rank_zero_info

_IMPORTANCE = ("attattr", "taylor", "random")
_MODES = ("mask", "structural")


class HeadPruningCallback(EpochEndAnalysis):
    """Rank heads by importance and measure validation accuracy with the lowest fraction ``r`` removed.

    Every ``every_n_epochs`` validation epochs the callback computes head importance (AttAttr by
    default, on the first ``n_examples`` validation examples), then for each ``r`` in ``fractions``
    masks the ``floor(r * n_heads_total)`` least important heads (the official protocol: attention
    probabilities multiplied by 0) and evaluates accuracy on the validation loader. It logs
    ``prune/acc_r{r:.2f}`` scalars and a ``prune/curve`` figure; results are in :attr:`curves`.

    With ``schedule`` (``{epoch: fraction}``) it also prunes during training: at the start of
    that training epoch the least important heads (from the latest analysis, or computed then) are
    masked (``mode="mask"``: any module; one with ``set_head_mask``, such as ``AttAttrClassifier``,
    keeps the mask itself, every other gets it from this callback in each batch of every loop) or
    removed (``mode="structural"``, single process only: the optimizer is rebuilt). Importance is
    identical on every rank (metric states are summed across ranks) and the chosen mask is broadcast
    from rank zero, so every rank removes the same heads, as Lightning's ``ModelPruning`` does.

    The model is never changed by the analysis itself (the masks are scoped to the evaluation).

    Args:
        fractions: fractions of all heads to remove, in [0, 1] (default 0, 0.1, ..., 1.0).
        importance: ``"attattr"``, ``"taylor"`` or ``"random"`` ranking.
        n_examples: validation examples used for the importance.
        every_n_epochs: analyse every this many validation epochs (never during sanity checking).
        max_eval_batches: evaluate each fraction on at most this many validation batches (default:
            the batches of Lightning's validation loop, so ``limit_val_batches`` applies).
        pooling: AttAttr pooling (``"max"``, ``"mean"``, ``"sum"``).
        target: ``"labels"`` or ``"predicted"`` for AttAttr importance.
        n_steps: ``"auto"`` (adaptive, to a completeness tolerance of 1e-3) or a fixed step count.
        method: integration rule.
        batch_size: examples per attribution call.
        seed: seed of the random ranking.
        schedule: ``{training epoch: fraction}`` of heads to prune at the start of that epoch.
        mode: ``"mask"`` or ``"structural"`` for scheduled pruning. A mask can remove any query head;
            structural pruning makes the model smaller, and on a grouped-query model removes whole
            key/value groups (the fraction counts groups; each takes all of its query heads).
    """

    def __init__(
        self,
        fractions: Sequence[float] = PRUNING_FRACTIONS,
        importance: str = "attattr",
        n_examples: int = 64,
        every_n_epochs: int = 1,
        max_eval_batches: int | None = None,
        pooling: str = "max",
        target: str = "labels",
        # core.attribution types DEFAULT_N_STEPS as int | str; its value is "auto"
        n_steps: int | Literal["auto"] = DEFAULT_N_STEPS,
        method: str = DEFAULT_METHOD,
        batch_size: int = 16,
        seed: int = 0,
        schedule: Mapping[int, float] | None = None,
        mode: str = "mask",
    ) -> None:
        fractions = check_fractions("fractions", fractions)
        super().__init__(every_n_epochs)
        check_choice("importance", importance, _IMPORTANCE)
        pooling = check_choice("pooling", pooling, POOLINGS)
        check_choice("target", target, ("labels", "predicted"))
        check_choice("mode", mode, _MODES)
        check_positive_int("n_examples", n_examples)
        check_positive_int("batch_size", batch_size)
        check_positive_int("max_eval_batches", max_eval_batches, optional=True)
        check_seed("seed", seed)
        if schedule is not None and not isinstance(schedule, Mapping):
            raise ArgumentTypeError(
                f"Expected `schedule` to be a mapping {{training epoch: fraction}} or None, but got {schedule!r}."
            )
        schedule = dict(schedule or {})
        for epoch, fraction in schedule.items():
            check_int(f"schedule key {epoch!r}", epoch, 0)
            check_number(f"schedule[{epoch}]", fraction, 0.0, 1.0)
            if float(fraction) == 1.0:
                raise ArgumentError(f"Expected `schedule[{epoch}]` to be below 1 (some heads must stay), but got 1.0.")
        validate_n_steps(n_steps, allow_auto=True)
        method = validate_method(method)
        self.fractions = fractions
        self.importance_kind = importance
        self.examples = ValExamples(n_examples)
        self.max_eval_batches = max_eval_batches
        self.pooling = pooling
        self.target = target
        self.n_steps = n_steps
        self.method = method
        self.batch_size = batch_size
        self.seed = seed
        self.schedule = {int(k): float(v) for k, v in schedule.items()}
        self.mode = mode
        self.importance: Tensor | None = None
        self.curves: list[dict[str, Any]] = []
        self.applied: list[dict[str, Any]] = []  # scheduled pruning done so far
        self.pruned_mask: Tensor | None = None
        self._mask_scope: contextlib.ExitStack | None = None  # open during a batch (mask-mode pruning)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(importance=self.importance_kind, fractions=tuple(self.fractions))

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.schedule and self.mode == "structural" and trainer.world_size > 1:
            raise ArgumentError(
                "`mode='structural'` scheduled pruning runs in a single process only; use `mode='mask'`."
            )

    # ----------------------------------------------------------------- importance and evaluation
    def compute_importance(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Tensor:
        """``[layer, head]`` importance of the configured kind (identical on every rank)."""
        model = resolve_model(pl_module)
        if self.importance_kind == "random":
            from lightning_attattr.core.adapter import layer_modules

            return random_importance(len(layer_modules(model)), int(model.config.num_attention_heads), self.seed)
        self.examples.ensure(trainer, pl_module)
        if self.importance_kind == "taylor":
            return taylor_head_importance(
                trainer, pl_module, self.examples, variant="official", batch_size=self.batch_size
            )
        return attattr_importance(
            trainer,
            pl_module,
            self.examples,
            pooling=self.pooling,
            target=self.target,
            n_steps=self.n_steps,
            method=self.method,
            batch_size=self.batch_size,
            internal_batch_size=None,
        )

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, mask: Tensor | None) -> float:
        """Validation accuracy with ``mask`` (``[layer, head]``) applied, summed over ranks' shards."""
        model = resolve_model(pl_module)
        loaders: Any = trainer.val_dataloaders
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0]
        if loaders is None:
            raise RuntimeError("HeadPruningCallback needs a validation dataloader to evaluate accuracy.")
        limit = self.max_eval_batches
        if limit is None:  # the batches Lightning's validation loop runs (honours `limit_val_batches`)
            seen = trainer.num_val_batches[0] if trainer.num_val_batches else float("inf")
            limit = None if seen == float("inf") else int(seen)
        counts = torch.zeros(2, dtype=torch.long, device=pl_module.device)  # correct, total: summed where they arise
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), attention_scope(model) as ctrl, ctrl.masked(mask):
                for index, batch in enumerate(loaders):
                    if limit is not None and index >= limit:
                        break
                    inputs = resolve_inputs(pl_module, batch)
                    if "labels" not in inputs:
                        raise ArgumentError("HeadPruningCallback needs `labels` in the validation batches.")
                    labels = inputs.pop("labels").to(pl_module.device)
                    logits = model_logits(model, {k: v.to(pl_module.device) for k, v in inputs.items()})
                    counts[0] += (logits.argmax(-1) == labels).sum()
                    counts[1] += labels.numel()
        finally:
            model.train(was_training)
        correct, total = reduce_sum(trainer, counts, pl_module.device).tolist()
        return correct / total if total > 0 else float("nan")

    # ----------------------------------------------------------------- hooks
    @override
    def analyse(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Importance, then validation accuracy for every fraction of heads removed; log the curve."""
        importance = self.compute_importance(trainer, pl_module)
        self.importance = importance
        base = self.pruned_mask
        accuracies = []
        for fraction in self.fractions:
            mask = prune_mask(importance, fraction)
            if base is not None:
                mask = mask * base
            mask = trainer.strategy.broadcast(mask, src=0)
            accuracies.append(self.evaluate(trainer, pl_module, mask))
        curve = {
            "epoch": trainer.current_epoch,
            "fractions": list(self.fractions),
            "accuracy": accuracies,
            "importance": importance,
        }
        self.curves.append(curve)
        for fraction, acc in zip(self.fractions, accuracies):
            pl_module.log(f"prune/acc_r{fraction:.2f}", acc, rank_zero_only=True)
        if trainer.is_global_zero:
            from lightning_attattr.plotting import pruning_curve

            fig = pruning_curve(
                self.fractions,
                {self.importance_kind: accuracies},
                title=f"pruning curve, {epoch_title(trainer.current_epoch)}",
            )
            FigureLogger(trainer).image("prune/curve", fig, trainer.global_step)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fraction = self.schedule.get(trainer.current_epoch)
        if fraction is None or any(a["epoch"] == trainer.current_epoch for a in self.applied):
            return
        importance = self.importance if self.importance is not None else self.compute_importance(trainer, pl_module)
        # structural pruning removes whole key/value groups of a grouped-query model; a mask any query head
        groups = kv_head_count(resolve_model(pl_module).config) if self.mode == "structural" else None
        mask = trainer.strategy.broadcast(prune_mask(importance, fraction, groups), src=0)
        if self.pruned_mask is not None:
            mask = mask * self.pruned_mask
        self.pruned_mask = mask
        heads = heads_to_prune(importance, fraction, groups)
        self._apply(trainer, pl_module, mask)
        self.applied.append({"epoch": trainer.current_epoch, "fraction": fraction, "heads": heads})
        rank_zero_info(
            f"HeadPruningCallback: {epoch_title(trainer.current_epoch)}, pruned {int((mask == 0).sum())} heads."
        )

    def _apply(self, trainer: pl.Trainer, pl_module: pl.LightningModule, mask: Tensor) -> None:
        if self.mode == "mask":
            if _sets_its_own_mask(pl_module):
                pl_module.set_head_mask(mask)
            return  # otherwise the batch hooks below mask every forward of the module's model
        model = resolve_model(pl_module)
        prune_heads(model, mask)
        trainer.strategy.setup_optimizers(trainer)  # the optimizer must hold the new, smaller parameters

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "rows": self.examples.rows,
            "curves": self.curves,
            "applied": self.applied,
            "pruned_mask": self.pruned_mask,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.examples.rows = state_dict.get("rows")
        self.curves = list(state_dict.get("curves", []))
        self.applied = list(state_dict.get("applied", []))
        self.pruned_mask = state_dict.get("pruned_mask")
        if self.curves:
            self.importance = self.curves[-1]["importance"]

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a resumed run re-applies the mask pruning it had done (structural pruning is in the checkpoint)
        if self.pruned_mask is not None and self.mode == "mask" and _sets_its_own_mask(pl_module):
            pl_module.set_head_mask(self.pruned_mask)

    # ----------------------------------------------------------------- mask-mode pruning of any module
    # A module without `set_head_mask` gets the mask from here: every batch of every loop runs inside
    # an attention scope with the pruned heads masked, entered at the batch start and left at its end
    # (or on an exception), so no hook stays on the model between batches, as with `attention_scope`.
    def _enter_mask(self, pl_module: pl.LightningModule) -> None:
        if self.mode != "mask" or self.pruned_mask is None or _sets_its_own_mask(pl_module):
            return
        self._leave_mask()
        stack = contextlib.ExitStack()
        try:
            ctrl = stack.enter_context(attention_scope(resolve_model(pl_module)))
            stack.enter_context(ctrl.masked(self.pruned_mask.to(pl_module.device)))
        except BaseException:
            stack.close()
            raise
        self._mask_scope = stack

    def _leave_mask(self) -> None:
        if self._mask_scope is not None:
            scope, self._mask_scope = self._mask_scope, None
            scope.close()

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._enter_mask(pl_module)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._leave_mask()

    @override
    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._enter_mask(pl_module)

    @override
    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._leave_mask()

    @override
    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._enter_mask(pl_module)

    @override
    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._leave_mask()

    @override
    def on_predict_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._enter_mask(pl_module)

    @override
    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._leave_mask()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._leave_mask()


class _KeepsHeadMask(Protocol):
    def set_head_mask(self, mask: Tensor | None) -> None: ...


def _sets_its_own_mask(pl_module: pl.LightningModule) -> TypeGuard[_KeepsHeadMask]:
    """Whether the module keeps a head mask itself (``set_head_mask``, as :class:`AttAttrClassifier`)."""
    return callable(getattr(pl_module, "set_head_mask", None))
