"""The ``train.py`` command line: LightningCLI over :class:`AttAttrClassifier` and the data modules.

The same command is installed as ``attattr-train`` and runs as ``python -m lightning_attattr.cli``
or ``python -m lightning_attattr train``; ``--config`` also takes the name of a shipped config
(``attattr-train fit --config quickstart``). ``python train.py fit --config configs/quickstart.yaml``
and every LightningCLI flag
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

With ``--ckpt_path`` (``validate``, ``test``, ``predict``, resuming ``fit``) the model is built from
the config stored in the checkpoint and the tokenizer comes from the checkpoint when the data
module names none of its own, so no hub access and no original model folder are needed.
The checkpoint is read without unpickling anything but tensors and plain values (``--weights_only``
defaults to ``true``, here and in Lightning's own loading); ``--weights_only false`` is the explicit
opt-in to full unpickling, which executes code from the file.

Before the trainer starts (and so before any run directory is written) the CLI checks what can
be checked: the checkpoint fits the task and label count, the data files exist and parse, the
tokenizer loads, ``max_seq_length`` fits the model's position embeddings, and every AttAttr
callback accepts the model (architecture, ``layers``). A user error is printed as one line and the
process exits with status 2 (``ATTATTR_TRACEBACK=1`` shows the traceback); a run directory created
by a run that failed on a user error is removed.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from jsonargparse import get_loader, set_loader

import lightning_attattr.callbacks  # noqa: F401  (registers our callbacks for `--trainer.callbacks+=Name`)
import lightning_attattr.data.modules  # noqa: F401  (registers the data modules for `--data Name`)
from lightning_attattr.core.adapter import max_sequence_length
from lightning_attattr.core.checks import (
    ArgumentError,
    check_int,
    exit_on_user_error,
    find_user_error,
    program_name,
)
from lightning_attattr.data.synthetic import synthetic_vocab
from lightning_attattr.lightning.checkpoints import (
    MODEL_CONFIG_KEY,
    TOKENIZER_KEY,
    WEIGHTS_ONLY_HELP,
    check_checkpoint_fits,
    read_checkpoint,
    tokenizer_from_files,
)
from lightning_attattr.lightning.classifier import AttAttrClassifier
from lightning_attattr.lightning.compat import pl, to_this_package, trainer_callbacks
from lightning_attattr.lightning.console import quiet_lightning
from lightning_attattr.shipped_configs import resolve_config_args

if TYPE_CHECKING:  # the same classes in both packages: checked against one, like `compat.pl`
    from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
else:  # the LightningCLI of the package chosen in `compat` (both Lightning packages are supported)
    _lightning_cli = importlib.import_module(f"{pl.__name__}.cli")
    LightningCLI = _lightning_cli.LightningCLI
    LightningArgumentParser = _lightning_cli.LightningArgumentParser

#: The program name of usage and error lines of in-process calls (``cli_main(args=[...])``).
PROG = "train.py"
# Lightning's symbolic `ckpt_path` values: resolved by the trainer, not files we can read up front
_SYMBOLIC_CKPT = ("last", "best", "hpc", "registry")


def _load_config(text: str) -> Any:
    """YAML as LightningCLI reads it, with the other Lightning package's class paths moved to this one's.

    A run trained under ``pytorch_lightning`` saves ``class_path: pytorch_lightning.loggers...`` in its
    ``config.yaml``; analysing or resuming it under ``lightning.pytorch`` (or the other way round) reads
    the same classes from the package this process runs on.
    """
    return _YAML_LOADER(to_this_package(text))


#: jsonargparse parser mode of both CLIs: YAML with :func:`to_this_package` applied first
CONFIG_MODE = "attattr_yaml"
_YAML_LOADER = get_loader("yaml")
set_loader(CONFIG_MODE, _load_config, exceptions=(yaml.YAMLError,))


class AttAttrCLI(LightningCLI):
    """LightningCLI with the data <-> model links and the up-front checks of this project (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._new_dirs: list[Path] = []  # directories this run may create; removed after a user error
        self._checkpoint: dict[str, Any] | None = None
        self._tokenizer_from_checkpoint = False
        try:
            super().__init__(*args, **kwargs)
        except Exception as err:
            if find_user_error(err) is not None:
                self._remove_new_dirs()
            raise

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """Lightning's parser, reading configs in :data:`CONFIG_MODE` (Lightning class paths of either package)."""
        return super().init_parser(**{"parser_mode": CONFIG_MODE, **kwargs})

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Lightning's parsing of ``args`` (default ``sys.argv[1:]``), where ``--config NAME`` is a shipped config.

        Raises:
            PathNotFoundError: a ``--config`` value that is neither a file nor a shipped name.
        """
        if args is None:
            resolved = self.rewrite_args(sys.argv[1:])
            if resolved != sys.argv[1:]:  # parsed here: Lightning warns about `args` next to a command line
                self.config = parser.parse_args(resolved)
                return
        elif isinstance(args, (list, tuple)):
            args = self.rewrite_args(list(args))
        super().parse_arguments(parser, args)

    def rewrite_args(self, args: list[str]) -> list[str]:
        """The command line as the parser reads it: ``--config NAME`` of a shipped config made a path."""
        return resolve_config_args(args)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        """The subcommand's parser, with ``--weights_only`` defaulting to ``true`` (no unpickling of code)."""
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        action = next((a for a in parser._actions if a.dest == "weights_only"), None)
        if action is not None:
            parser.set_defaults(weights_only=True)
            action.help = WEIGHTS_ONLY_HELP
        return parser

    def _parse_ckpt_path(self) -> None:
        """Read ``--ckpt_path`` ourselves first: a missing, broken or unsafe file is a user error, not a traceback.

        The file is read with ``torch.load(weights_only=True)`` unless ``--weights_only false``; the
        checkpoint's hyperparameters then go into the model's arguments, as Lightning does.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path is None or str(ckpt_path) in _SYMBOLIC_CKPT:
            super()._parse_ckpt_path()
            return
        weights_only = self.config[subcommand].get("weights_only", True)
        self._checkpoint = read_checkpoint(ckpt_path, name="ckpt_path", weights_only=weights_only)
        # Lightning's `_parse_ckpt_path`, on the checkpoint read above (it would load the file again)
        hparams = dict(self._checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise

    #: The data stage of each subcommand whose data files are checked as soon as the data module is built.
    DATA_STAGES: dict[str, str] = {"fit": "fit", "validate": "validate", "test": "test", "predict": "predict"}

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        """The trainer, with one ``EpochSummary`` (the default one unless the config lists its own)."""
        from lightning_attattr.callbacks import EpochSummary

        trainer = super().instantiate_trainer(**kwargs)
        callbacks = trainer_callbacks(trainer)
        config = self.config[self.subcommand] if self.subcommand else self.config
        if not default_progress_bar(config.trainer.get("enable_progress_bar")):
            bars = tuple(package.callbacks.ProgressBar for package in _packages())
            callbacks[:] = [cb for cb in callbacks if not isinstance(cb, bars)]
        summaries = [cb for cb in callbacks if isinstance(cb, EpochSummary)]
        for default in summaries[1:]:  # the default comes last: the configured one wins
            callbacks.remove(default)
        return trainer

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link the number of labels of the instantiated data module into the model, checking its files first.

        The data module is instantiated before the model (this link), and its files are checked right
        then (:meth:`check_data_files`): a missing, undecodable or malformed data file is reported
        before any model is downloaded or loaded.
        """
        parser.link_arguments("data", "model.num_labels", compute_fn=self.check_data_files, apply_on="instantiate")

    def check_data_files(self, datamodule: Any) -> Any:
        """Check the files the subcommand's stage reads (``check_files``); return the number of labels."""
        stage = self.DATA_STAGES.get(self.subcommand or "")
        check_files = getattr(datamodule, "check_files", None)
        if stage is not None and callable(check_files):
            check_files(stage)
        return datamodule.num_labels

    def before_instantiate_classes(self) -> None:
        """Take model config and tokenizer from ``--ckpt_path``; fill in task, tokenizer source, vocabulary size."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        init = getattr(config.data, "init_args", None)
        self._tokenizer_from_checkpoint = bool(
            self._checkpoint is not None
            and self._checkpoint.get(TOKENIZER_KEY)
            and init is not None
            and "model_name_or_path" in init
            and init.model_name_or_path is None  # the data module's tokenizer follows the model: take the stored one
        )
        if self._checkpoint is not None and self._checkpoint.get(MODEL_CONFIG_KEY) is not None:
            # the checkpoint's weights replace the model's anyway: build it from the stored config
            # (model_name_or_path stays as the record of where the model came from)
            config.model.model_config = dict(self._checkpoint[MODEL_CONFIG_KEY])
        link_data_and_model(config.data, config.model)

    def after_instantiate_classes(self) -> None:
        """Hand the data module the tokenizer stored in ``--ckpt_path`` (no hub, no original folder)."""
        super().after_instantiate_classes()
        if self._tokenizer_from_checkpoint and self._checkpoint is not None:
            self.datamodule.tokenizer = tokenizer_from_files(self._checkpoint[TOKENIZER_KEY])

    def before_fit(self) -> None:
        """Check everything that can be checked before training starts; print the model's line."""
        self.preflight("fit")
        if self.trainer.is_global_zero and not _has_model_summary(self.trainer):
            print(model_line(self.model), file=sys.stderr, flush=True)

    def after_fit(self) -> None:
        """Print where the run is and the exact command that analyses it (rank zero)."""
        log_dir = self.trainer.log_dir  # a collective call under DDP: every rank
        if not self.trainer.is_global_zero:
            return
        for line in next_steps(self.trainer, str(self.parser_kwargs.get("prog") or PROG), log_dir=log_dir):
            print(line, flush=True)

    def before_validate(self) -> None:
        """Check everything that can be checked before validation starts."""
        self.preflight("validate")

    def before_test(self) -> None:
        """Check everything that can be checked before testing starts."""
        self.preflight("test")

    def before_predict(self) -> None:
        """Check everything that can be checked before prediction starts."""
        self.preflight("predict")

    def preflight(self, stage: str, subcommand: str | None = None) -> None:
        """Up-front checks with the instantiated model, data module and trainer (nothing is written yet).

        ``stage`` is the data stage to check (``fit``, ``validate``, ...); ``subcommand`` the config
        section that holds ``ckpt_path`` (default: ``stage``).

        Raises:
            CheckpointError: ``--ckpt_path`` of another task or label count.
            ArgumentError, PathNotFoundError, DataFileError, ModelLoadError: data files, tokenizer,
                sequence length or callback options that cannot work with this model.
        """
        model, datamodule = self.model, self.datamodule
        if self._checkpoint is not None:
            # the data module decides the task: Lightning has already copied the checkpoint's
            # hyperparameters (its task among them) into the model's arguments
            hparams = getattr(model, "hparams", {})
            check_checkpoint_fits(
                self._checkpoint,
                self.config[subcommand or stage].ckpt_path,
                task=getattr(datamodule, "task_name", None) or hparams.get("task"),
                num_labels=getattr(datamodule, "num_labels", None) or hparams.get("num_labels"),
            )
        check_files = getattr(datamodule, "check_files", None)
        if callable(check_files):
            check_files(stage)
        if datamodule is not None and hasattr(type(datamodule), "tokenizer"):
            _ = datamodule.tokenizer  # loads it now: a wrong tokenizer source fails before the run
        hf_config = getattr(getattr(model, "model", None), "config", None)
        limit = max_sequence_length(hf_config) if hf_config is not None else None
        length = getattr(datamodule, "max_length", None)
        if hf_config is not None and limit is not None and isinstance(length, int) and length > limit:
            name = "max_seq_length" if hasattr(datamodule, "max_seq_length") else "max_len"
            raise ArgumentError(
                f"Expected `data.{name}` to give sequences of at most {limit} tokens (the model's position "
                f"embeddings: max_position_embeddings={hf_config.max_position_embeddings}), but sequences can "
                f"have {length} tokens."
            )
        for callback in trainer_callbacks(self.trainer):
            check_model = getattr(callback, "check_model", None)
            if callable(check_model):
                check_model(model)
        self._remember_new_dirs()

    def _remember_new_dirs(self) -> None:
        """Note the highest not-yet-existing ancestor of the run directory, to remove it after a user error."""
        try:
            log_dir = self.trainer.log_dir
        except Exception:  # a logger that cannot tell its directory yet: nothing to remember
            return
        candidates = [Path(p) for p in (log_dir, self.trainer.default_root_dir) if p]
        for path in candidates:
            path = path.resolve()
            highest = None
            while not path.exists():
                highest, path = path, path.parent
            if highest is not None:
                self._new_dirs.append(highest)

    def _remove_new_dirs(self) -> None:
        """Remove the half-made run directory of a run that failed before it produced anything.

        A run that trained (a global step was taken) or wrote a checkpoint keeps its directory: a
        user error late in a run must not cost its checkpoints and logs.
        """
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.global_step > 0:
            return
        for path in self._new_dirs:
            if path.exists() and not any(path.rglob("*.ckpt")):
                shutil.rmtree(path, ignore_errors=True)


def _has_model_summary(trainer: pl.Trainer) -> bool:
    summary_classes = tuple(package.callbacks.ModelSummary for package in _packages())
    return any(isinstance(cb, summary_classes) for cb in trainer_callbacks(trainer))


def _packages() -> list[Any]:
    from lightning_attattr.lightning.compat import available

    return available()


def model_line(module: Any) -> str:
    """One line about ``module``: the class of the model it trains and its parameter counts.

    Example:
        >>> import torch
        >>> model_line(torch.nn.Linear(3, 2))
        'model: Linear | 8 parameters (8 trainable)'
    """
    net = getattr(module, "model", module)
    params = list(module.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return f"model: {type(net).__name__} | {_count(total)} parameters ({_count(trainable)} trainable)"


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


def next_steps(trainer: pl.Trainer, prog: str = PROG, log_dir: str | None = None) -> list[str]:
    """The lines ``train.py fit`` ends with: the run directory and the exact ``analyze.py heads`` command of it.

    ``log_dir``: the trainer's ``log_dir``, read by the caller on every rank (default: read here).
    Empty when the run has no saved config or no checkpoint (nothing to analyse).
    """
    log_dir = trainer.log_dir if log_dir is None else log_dir
    checkpoint = getattr(trainer.checkpoint_callback, "last_model_path", "") or getattr(
        trainer.checkpoint_callback, "best_model_path", ""
    )
    if not log_dir or not checkpoint or not (Path(log_dir) / "config.yaml").is_file():
        return []
    run_dir = _shown(Path(log_dir))
    name = getattr(trainer.logger, "name", None) if trainer.logger is not None else None
    output = f"results/{name}-heads" if isinstance(name, str) and name else "results/heads"
    analyze = analyze_program(prog)
    return [
        f"run: {run_dir} (config.yaml, checkpoints, TensorBoard events, progress.log)",
        f"next: {analyze} heads --config {run_dir / 'config.yaml'} --ckpt_path {_shown(Path(checkpoint))} "
        f"--output_dir {output}",
    ]


def analyze_program(prog: str) -> str:
    """The ``analyze.py`` command that goes with the training command ``prog`` (the way the user ran it).

    Example:
        >>> [analyze_program(p) for p in ("train.py", "attattr-train", "python -m lightning_attattr train")]
        ['python analyze.py', 'attattr-analyze', 'python -m lightning_attattr analyze']
    """
    if prog == "attattr-train":
        return "attattr-analyze"
    if prog.endswith(" train"):
        return prog.removesuffix("train") + "analyze"
    if prog.endswith("lightning_attattr.cli"):
        return prog.removesuffix("cli") + "analysis_cli"
    return "python analyze.py"


def _shown(path: Path) -> Path:
    """``path`` relative to the working directory when it is below it, else absolute."""
    path = Path(os.path.abspath(path))  # not resolve(): last.ckpt may be a link, and its name is the one to show
    try:
        return path.relative_to(Path(os.path.abspath(Path.cwd())))
    except ValueError:
        return path


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
            vocab = len(synthetic_vocab(check_int("n_filler", init.n_filler, 1)))  # before the data module checks it
            given = model.model_config.get("vocab_size")
            if given is None:
                model.model_config = {**model.model_config, "vocab_size": vocab}
            elif given < vocab:
                raise ArgumentError(
                    f"Expected `model.model_config.vocab_size` >= {vocab} (the synthetic vocabulary with "
                    f"n_filler={init.n_filler}), but got {given}."
                )
    if "task_name" in init and model.task is None:
        model.task = init.task_name
    if "model_name_or_path" in init and init.model_name_or_path is None:
        if model.model_name_or_path is None:
            raise ArgumentError(
                f"{name} needs a tokenizer: set `--data.model_name_or_path` (hub name or local directory), "
                "or `--model.model_name_or_path` to fine-tune a pretrained model with its own tokenizer."
            )
        init.model_name_or_path = model.model_name_or_path


def cli_main(args: Any = None, run: bool = True, prog: str | None = None) -> AttAttrCLI:
    """Build (and by default run) the CLI; ``args`` replaces ``sys.argv[1:]`` (in-process tests).

    TensorBoard is Lightning's default logger here (``tensorboard`` is a dependency); the config
    is saved next to the logs of each run. ``--config`` takes a file or the name of a shipped
    config (``--config quickstart``, see :mod:`lightning_attattr.shipped_configs`). A user error exits
    with status 2 after one line on stderr (see :func:`~lightning_attattr.core.checks.exit_on_user_error`).

    Args:
        args: the command line without the program (default ``sys.argv[1:]``).
        run: run the subcommand (``False``: only parse and instantiate, no subcommand in ``args``).
        prog: the program name of usage and error lines (default: the one the user ran, see
            :func:`~lightning_attattr.core.checks.program_name`; ``train.py`` for in-process calls with ``args``).
    """
    if prog is None:
        prog = program_name(PROG) if args is None else PROG
    quiet_lightning()
    return exit_on_user_error(
        AttAttrCLI,
        AttAttrClassifier,
        pl.LightningDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        trainer_defaults=console_defaults(callbacks=[_epoch_summary()]),
        parser_kwargs={"prog": prog},
        args=args,
        run=run,
        prog=prog,
    )


def console_defaults(**defaults: Any) -> dict[str, Any]:
    """The trainer defaults of ``train.py`` (``--trainer.*`` and configs override them), ``defaults`` added.

    ``enable_model_summary`` is off: ``train.py fit`` prints one line with the model's class and
    parameter counts instead (``--trainer.enable_model_summary true`` brings Lightning's table back).
    The progress bar is shown only when stderr is a terminal, unless ``enable_progress_bar`` is set
    (see :func:`default_progress_bar`).
    """
    return {"enable_model_summary": False, **defaults}


def default_progress_bar(setting: bool | None) -> bool:
    """Whether to show a progress bar: ``setting`` when the user set it, else only when stderr is a terminal.

    A log file or pipe gets the lines of :class:`~lightning_attattr.callbacks.EpochSummary` (per epoch,
    and every few seconds within one) instead of the last frame of a bar. Not a trainer default, so that
    a run's saved ``config.yaml`` does not record where its output went.
    """
    from lightning_attattr.callbacks.progress import _is_tty

    return setting if setting is not None else _is_tty(sys.stderr)


def main() -> None:
    """The ``attattr-train`` console script (``cli_main`` returns the CLI, which is no exit status)."""
    cli_main()


def _epoch_summary() -> Any:
    from lightning_attattr.callbacks import EpochSummary

    return EpochSummary()


if __name__ == "__main__":  # python -m lightning_attattr.cli: run the package's module, not a second copy
    from lightning_attattr.cli import main as _main

    _main()
