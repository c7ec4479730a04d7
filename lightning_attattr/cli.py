"""The ``train.py`` command line: LightningCLI over :class:`AttAttrClassifier` and the data modules.

``python train.py fit --config configs/quickstart.yaml`` and every LightningCLI flag
(``--trainer.max_epochs 3``, ``--trainer.devices 2 --trainer.strategy ddp``,
``--trainer.callbacks+=...``, ``--print_config``) work as in any Lightning project. ``--data``
picks a data module by class name (``GlueDataModule``, ``SyntheticDataModule`` or any other
``LightningDataModule`` importable by its class path).

Links between data and model, applied before anything is instantiated:

- ``data.num_labels`` -> ``model.num_labels`` (the task decides the number of classes);
- the task name -> ``model.task`` (chooses the metrics) unless ``model.task`` is set;
- ``model.model_name_or_path`` -> ``data.model_name_or_path`` (the tokenizer) unless the data
  module names its own tokenizer;
- the synthetic vocabulary size -> ``model.model_config.vocab_size`` for models trained from
  scratch on the synthetic task.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

import lightning_attattr.data.modules  # noqa: F401  (registers the data modules for `--data Name`)
from lightning_attattr.data.synthetic import synthetic_vocab
from lightning_attattr.lightning.classifier import AttAttrClassifier


class AttAttrCLI(LightningCLI):
    """LightningCLI with the data <-> model links of this project (see the module docstring)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link the number of labels of the instantiated data module into the model."""
        parser.link_arguments("data.num_labels", "model.num_labels", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        """Fill in the task, the tokenizer source and the synthetic vocabulary size."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        link_data_and_model(config.data, config.model)


def _class_name(data: Any) -> str:
    return str(getattr(data, "class_path", "")).rpartition(".")[2]


def link_data_and_model(data: Any, model: Any) -> None:
    """Apply the links of :class:`AttAttrCLI` to the parsed ``data`` and ``model`` namespaces.

    Raises:
        ValueError: a GLUE data module without a tokenizer source (no ``data.model_name_or_path``
            and a model trained from scratch), or a synthetic vocabulary larger than
            ``model.model_config.vocab_size``.
    """
    init = getattr(data, "init_args", None)
    if init is None:
        return
    name = _class_name(data)
    if name == "SyntheticDataModule":
        if model.task is None:
            model.task = "synthetic"
        if model.model_config is not None:
            vocab = len(synthetic_vocab(init.n_filler))
            given = model.model_config.get("vocab_size")
            if given is None:
                model.model_config = {**model.model_config, "vocab_size": vocab}
            elif given < vocab:
                raise ValueError(
                    f"Expected `model.model_config.vocab_size` >= {vocab} (the synthetic vocabulary with "
                    f"n_filler={init.n_filler}), but got {given}."
                )
    if "task_name" in init and model.task is None:
        model.task = init.task_name
    if "model_name_or_path" in init and init.model_name_or_path is None:
        if model.model_name_or_path is None:
            raise ValueError(
                f"{name} needs a tokenizer: set `--data.model_name_or_path` (hub name or local directory), "
                "or `--model.model_name_or_path` to fine-tune a pretrained model with its own tokenizer."
            )
        init.model_name_or_path = model.model_name_or_path


def cli_main(args: Any = None, run: bool = True) -> AttAttrCLI:
    """Build (and by default run) the CLI; ``args`` replaces ``sys.argv[1:]`` (in-process tests).

    TensorBoard is Lightning's default logger here (``tensorboard`` is a dependency); the config
    is saved next to the logs of each run.
    """
    return AttAttrCLI(
        AttAttrClassifier,
        pl.LightningDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
