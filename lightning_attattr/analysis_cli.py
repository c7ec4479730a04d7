"""The ``analyze.py`` command line (``attattr-analyze``): the paper's experiments on a trained model, offline.

Subcommands on one model (LightningCLI, exactly like ``train.py``: ``--config``, ``--print_config``,
``--model.*``, ``--data.*``, ``--trainer.*``):

- ``attribute``: AttAttr maps of chosen dev examples (``--indices``) or raw text (``--text``);
- ``heads``: head importance by every method, pruning curves, optional structural pruning;
- ``effectiveness``: per-example AttAttr vs attention rankings, ``k`` heads pruned per layer;
- ``tree``: attribution trees (or graphs, ``--mode graph``) of dev examples or raw text;
- ``faithfulness``: deletion curves of four edge explanations (per layer and across layers) against random
  deletions, trees, and planted truth (the synthetic task's pairs or a ``--truth`` file);
- ``attack``: adversarial triggers mined from training examples, per-class accuracy against random insertions.

and one over several ``heads`` results folders:

- ``universality``: correlations of importance across tasks, transferred pruning curves.

A run is read the way ``train.py`` left it: ``--config runs/<name>/version_N/config.yaml --ckpt_path
runs/<name>/version_N/checkpoints/last.ckpt`` rebuilds model, data module and tokenizer; a Hugging
Face model directory or hub name with ``--data.*`` options works too. Only the trainer's hardware
settings are used (``accelerator``, ``devices``, ``strategy``, ``num_nodes``, ``precision``): the
config's callbacks and logger belong to training and are dropped; the analysis writes its own
TensorBoard events under ``<output_dir>/tensorboard``.

List options take one value, several, or a list: ``--text "a film"``, ``--text "a film" "a play"``,
``--results DIR1 DIR2``, ``--indices "[0, 3]"`` (see :func:`natural_lists`). A finished analysis
prints one line with its results folder; progress bars (on a terminal) are named by stage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from lightning_attattr.analysis.settings import (
    AnalysisSettings,
    AttackSettings,
    AttributeSettings,
    EffectivenessSettings,
    FaithfulnessSettings,
    HeadsSettings,
    TreeSettings,
)
from lightning_attattr.analysis.store import ResultsFolder, write_json
from lightning_attattr.cli import AttAttrCLI, default_progress_bar
from lightning_attattr.core.checks import (
    ArgumentError,
    check_bool,
    check_existing_dir,
    check_positive_int,
    program_name,
)
from lightning_attattr.lightning.checkpoints import read_checkpoint
from lightning_attattr.lightning.classifier import AttAttrClassifier
from lightning_attattr.lightning.compat import pl, rank_zero_only
from lightning_attattr.lightning.console import quiet_lightning
from lightning_attattr.lightning.job import Examples, Job
from lightning_attattr.lightning.subcommands import Run, subcommand

if TYPE_CHECKING:
    from transformers import PreTrainedModel

PROG = "analyze.py"
# the trainer settings an analysis uses; the rest of a training config's `trainer:` is ignored
HARDWARE_KEYS = ("accelerator", "strategy", "devices", "num_nodes", "precision")
#: Layout version of a subcommand's per-example parts, when it changed since its first release: a folder
#: written with another version is refused (or replaced with ``--overwrite true``) instead of resumed.
RESULTS_FORMATS = {"faithfulness": 4}
#: The settings class of each subcommand (its options).
SETTINGS: dict[str, type[AnalysisSettings]] = {
    "attribute": AttributeSettings,
    "tree": TreeSettings,
    "heads": HeadsSettings,
    "effectiveness": EffectivenessSettings,
    "faithfulness": FaithfulnessSettings,
    "attack": AttackSettings,
}
# options that do not change results (batch sizes, plots, timing): left out of the results folder's fingerprint
_NOT_DECIDING = sorted({f.name for s in SETTINGS.values() for f in s.options() if not f.metadata["decides"]})


def _command(command: list[str] | None = None) -> list[str]:
    """The command line of this analysis, for ``summary.json`` and ``progress.log``.

    ``command`` is what ``cli_main`` was given (the program and its arguments); without one (a call from
    Python), the process' own command line.
    """
    return list(command) if command is not None else [Path(sys.argv[0]).name, *sys.argv[1:]]


def _is_main() -> bool:
    """Rank zero of the job (read from the launcher's environment, valid before the trainer sets up)."""
    return rank_zero_only.rank == 0  # type: ignore[attr-defined]  # Lightning sets `rank` on the function


def _load_weights(model: pl.LightningModule, ckpt_path: str, weights_only: bool = True) -> None:
    checkpoint = read_checkpoint(ckpt_path, name="ckpt_path", weights_only=weights_only)
    hook = getattr(model, "on_load_checkpoint", None)
    if callable(hook):
        hook(checkpoint)  # e.g. rebuilds the pruned structure before the weights load
    model.load_state_dict(checkpoint["state_dict"])


def _hf_model(model: pl.LightningModule) -> PreTrainedModel:
    from lightning_attattr.callbacks._protocol import resolve_model

    return resolve_model(model)


def _task(datamodule: Any, model: Any) -> tuple[str | None, tuple[str, ...]]:
    name = getattr(datamodule, "task_name", None) or getattr(getattr(model, "hparams", {}), "get", lambda *_: None)(
        "task"
    )
    metrics: tuple[str, ...] = ("acc",)
    if name:
        try:
            from lightning_attattr.data.glue import get_task

            metrics = tuple(get_task(name).metrics)
        except ArgumentError:
            pass
    return name, metrics


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    lightning = "lightning" if pl.__name__ == "lightning.pytorch" else "pytorch-lightning"
    for package in ("torch", "transformers", lightning, "lightning-attattr"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    out["lightning_package"] = pl.__name__  # the Lightning package the run used (see lightning/compat.py)
    return out


def _commit() -> str | None:
    """The commit the installed ``lightning-attattr`` was built from, or ``None`` when it is not recorded.

    Read from the install metadata: the PEP 610 ``direct_url.json`` that pip writes for an install
    from a VCS URL (``pip install git+https://...@COMMIT``) holds ``vcs_info.commit_id``. Git is
    never run: the files next to the installed package need not be the package's repository (a
    wheel, a virtual environment inside another repository).
    """
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        text = distribution("lightning-attattr").read_text("direct_url.json")
    except (PackageNotFoundError, OSError):
        return None
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return None
    vcs = data.get("vcs_info") if isinstance(data, dict) else None
    commit = vcs.get("commit_id") if isinstance(vcs, dict) else None
    return commit if isinstance(commit, str) and commit else None


class AnalysisTrainer(pl.Trainer):
    """A Lightning ``Trainer`` with the analysis experiments as methods (the subcommands of ``analyze.py``).

    Each method runs its per-example work through ``self.predict`` (so the trainer's strategy
    splits it across processes) and writes an ``output_dir`` results folder; from Python::

        trainer = AnalysisTrainer(accelerator="cpu", devices=1, logger=False)
        trainer.heads(module, datamodule, output_dir="results/sst2-heads")
    """

    analysis_arguments: dict[str, Any] | None = None  # set by the CLI: the config that decides the results
    analysis_config: dict[str, Any] | None = None  # set by the CLI: the whole config, for summary.json
    analysis_command: list[str] | None = None  # set by the CLI: its command line, for summary.json

    # ----------------------------------------------------------------- subcommands
    @subcommand(
        AttributeSettings,
        output_dir="results/attribute",
        outputs="``examples/*.pt``, ``attributions.json``, ``plots/``, ``summary.json``",
        data="dev examples, tokenizer",
    )
    def attribute(self, run: Run, settings: AttributeSettings) -> dict[str, Any]:
        """AttAttr maps of chosen dev examples or raw text, saved per example with plots."""
        net, datamodule = self._prepare(run)
        examples = _chosen_examples(datamodule, settings.indices, settings.text, settings.text_pair)
        from lightning_attattr.lightning.experiments import check_attribute_examples, run_attribute

        check_attribute_examples(settings, examples)  # before the results folder is opened

        result = self._run_analysis(
            run, "attribute", settings.decisive(), (net, datamodule), lambda job: run_attribute(job, settings, examples)
        )
        if settings.report and _is_main():
            write_report(run.output_dir)
        return result

    @subcommand(
        HeadsSettings,
        output_dir="results/heads",
        outputs="``importance.json/csv``, ``pruning.json/csv``, ``plots/``, ``tensorboard/``, ``summary.json``",
    )
    def heads(self, run: Run, settings: HeadsSettings) -> dict[str, Any]:
        """Head importance by every method on the first dev examples, then pruning curves on the dev set."""
        transfer = _read_transfer(settings.transfer_from)
        net, datamodule = self._prepare(run)
        from lightning_attattr.lightning.experiments import check_dev_size, model_shape, run_heads

        check_dev_size(datamodule, n_examples=settings.n_examples, max_eval_examples=settings.max_eval_examples)

        shape = model_shape(net)
        for name, vector in transfer.items():
            if tuple(vector.shape) != shape:
                raise ArgumentError(
                    f"Expected `transfer_from` importance of this model's shape [layer, head] = {list(shape)}, but "
                    f"{name!r} has {list(vector.shape)}."
                )
        task, metric_names = _task(datamodule, run.model)
        options = settings.decisive(transfer_from={k: v.tolist() for k, v in transfer.items()})
        return self._run_analysis(
            run,
            "heads",
            options,
            (net, datamodule),
            lambda job: run_heads(job, settings, transfer_from=transfer, task=task, metric_names=metric_names),
            extra={"task": task},
        )

    @subcommand(
        EffectivenessSettings,
        output_dir="results/effectiveness",
        outputs="``effectiveness.json/csv``, ``plots/``, ``tensorboard/``, ``summary.json``",
    )
    def effectiveness(self, run: Run, settings: EffectivenessSettings) -> dict[str, Any]:
        """Paper section 4.1: per example, heads ranked by AttAttr vs by attention weight; k heads pruned per layer."""
        net, datamodule = self._prepare(run)
        from lightning_attattr.lightning.experiments import check_dev_size, run_effectiveness

        check_dev_size(datamodule, n_examples=settings.n_examples)
        task, _ = _task(datamodule, run.model)

        return self._run_analysis(
            run,
            "effectiveness",
            settings.decisive(),
            (net, datamodule),
            lambda job: run_effectiveness(job, settings, task=task),
            extra={"task": task},
        )

    @subcommand(
        FaithfulnessSettings,
        output_dir="results/faithfulness",
        outputs="``faithfulness.json/md``, ``deletion_curves.csv``, ``plots/``",
    )
    def faithfulness(self, run: Run, settings: FaithfulnessSettings) -> dict[str, Any]:
        """Is the explanation faithful? Delete each edge method's top-k attention connections; compare with random.

        For the first ``n_examples`` dev examples, every edge method (``attattr``, raw ``attention``,
        attention ``rollout``, ``grad_attention`` of Chefer et al.) scores every (layer, query, key)
        connection; the top ``k`` over all layers are removed (their probabilities set to 0 in every
        head of their layer) and the drop of the predicted class's probability and the flips are
        recorded, against ``k`` random connections (``n_random`` seeds) and, for each method's
        attribution tree, against random connections of the tree's layers. Cross-layer removal: the
        top ``k`` word pairs across layers (a pair's score summed over layers and over both words'
        pieces) are removed in every layer at once, against ``k`` random word pairs. The completeness
        error of the AttAttr maps is reported beside the rankings, and a summary table is printed.

        Planted truth (``groundtruth.json``): the synthetic task's planted pairs, or a ``truth`` file
        for any dataset. Hit rates are reported under two conventions: ``words`` (the default of
        every summary: only edges between two distinct non-special words, word pieces merged, the
        scores summed over a word's pieces on both axes) and ``tokens`` (every token edge, [CLS],
        [SEP] and self-edges included).
        """
        from lightning_attattr.analysis.faithfulness import check_ks_fit, read_truth

        truth = None if settings.truth is None else read_truth(settings.truth)  # the file's checks, before loading
        net, datamodule = self._prepare(run)
        from lightning_attattr.lightning.experiments import model_shape
        from lightning_attattr.lightning.faithfulness import choose_examples, run_faithfulness

        n_layers = model_shape(net)[0]
        chosen = choose_examples(datamodule, settings, truth, n_layers=n_layers)
        check_ks_fit("ks", settings.ks, n_layers, chosen.shortest)
        task, _ = _task(datamodule, run.model)
        digest = None if settings.truth is None else hashlib.sha256(Path(settings.truth).read_bytes()).hexdigest()
        return self._run_analysis(
            run,
            "faithfulness",
            settings.decisive(truth_sha256=digest),  # resume only with the same file
            (net, datamodule),
            lambda job: run_faithfulness(job, settings, chosen),
            extra={"task": task},
        )

    @subcommand(
        TreeSettings,
        output_dir="results/tree",
        outputs="``trees/``, ``plots/``, ``trees.json``, ``summary.json``",
        data="dev examples, tokenizer",
    )
    def tree(self, run: Run, settings: TreeSettings) -> dict[str, Any]:
        """Attribution trees (paper section 5): how information flows between tokens, layer by layer, into [CLS].

        Per example, AttAttr of the predicted class for every layer, summed over heads; in each layer
        the connections above ``tau`` times the layer's largest attribution are candidates, and from
        the top layer down a token joins the tree under the first token already in it that attends
        to it (one parent per token). ``--mode graph`` keeps every candidate edge whose query is in
        (the tree's tokens and edges plus the edges the one-parent rule drops). Writes JSON, GraphML,
        DOT, a text rendering (also printed, with the worst completeness error of the maps) and a
        PNG/SVG drawing per example.
        """
        net, datamodule = self._prepare(run)
        examples = _chosen_examples(datamodule, settings.index, settings.text, settings.text_pair, indices_name="index")
        from lightning_attattr.lightning.trees import run_trees

        return self._run_analysis(
            run, "tree", settings.decisive(), (net, datamodule), lambda job: run_trees(job, settings, examples)
        )

    @subcommand(
        AttackSettings,
        output_dir="results/attack",
        outputs="``attack.json``, ``attack.md``, ``summary.json``",
        data="train and dev sets, tokenizer",
    )
    def attack(self, run: Run, settings: AttackSettings) -> dict[str, Any]:
        """Adversarial triggers (paper section 6) mined from training texts: needs raw texts (GLUE), not synthetic data.

        Each of the first ``n_source`` training examples gives a pattern: in the head holding its
        largest AttAttr entry (predicted class), the two strongest (query, key) connections. The
        patterns are ranked by the sum of the two; the ``top`` best make triggers, whose wordpieces
        are inserted into every dev example at the same relative positions of the same segment.
        Accuracy per gold class: clean, under each trigger, and under random tokens inserted at the
        same positions (``n_random`` seeds). Writes ``attack.json`` and ``attack.md``.

        Needs a text data module: ``examples(split)`` giving raw texts and labels (``text_a``,
        ``text_b``, ``labels``), as ``GlueDataModule`` does with GLUE files or a hub dataset. The
        quickstart's synthetic task has none, so it is refused before the model is built.
        """
        from lightning_attattr.lightning.attack import attack_data, check_text_data, run_attack

        check_text_data(run.datamodule)  # before the checkpoint loads (the CLI checks it even earlier)
        net, datamodule = self._prepare(run)

        n_labels = net.config.num_labels
        assert n_labels is not None, "a sequence classifier's config sets num_labels"
        data = attack_data(datamodule, settings, n_labels=n_labels)
        settings = dataclasses.replace(settings, min_tokens=data.min_tokens)  # the default resolved for the task
        task, _ = _task(datamodule, run.model)
        return self._run_analysis(
            run,
            "attack",
            settings.decisive(),
            (net, datamodule),
            lambda job: run_attack(job, settings, data),
            extra={"task": task},
        )

    # ----------------------------------------------------------------- shared
    def _prepare(self, run: Run) -> tuple[PreTrainedModel, Any]:
        """The Hugging Face model (weights of ``run.ckpt_path``, in eval mode) and the set-up data module."""
        datamodule = run.datamodule
        if datamodule is None:
            raise ArgumentError("Expected a data module (`--data ...` or a `--config` that has one), but got none.")
        if run.ckpt_path is not None:
            _load_weights(run.model, run.ckpt_path, weights_only=run.weights_only is not False)
        net = _hf_model(run.model)
        from lightning_attattr.lightning.experiments import model_shape

        model_shape(net)  # refuses unsupported architectures before any work
        datamodule.setup("validate")
        net.eval()
        return net, datamodule

    def _run_analysis(
        self,
        run: Run,
        kind: str,
        options: dict[str, Any],
        prepared: tuple[torch.nn.Module, Any],
        work: Callable[[Job], dict[str, Any]],
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Open the results folder of ``run`` (refused if it holds other arguments), run ``work``, write the summary."""
        arguments = {**(self.analysis_arguments or {}), "options": options}
        if kind in RESULTS_FORMATS:  # parts written by an older layout are never mixed with new ones
            arguments["format"] = RESULTS_FORMATS[kind]
        folder = ResultsFolder(run.output_dir, kind, arguments, overwrite=run.overwrite, main=_is_main())
        start = time.time()
        with folder:
            folder.log(f"{kind}: started ({' '.join(_command(self.analysis_command))})")
            result = work(Job(self, *prepared, folder))
            if folder.main:
                summary = {
                    "subcommand": kind,
                    "status": "complete",
                    "command": _command(self.analysis_command),
                    "cwd": os.getcwd(),
                    "config": self.analysis_config,
                    "options": options,
                    **(extra or {}),
                    "versions": _versions(),
                    "commit": _commit(),
                    "world_size": self.world_size,
                    "device": str(self.strategy.root_device),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start)),
                    "seconds": round(time.time() - start, 2),
                    "timings": {k: round(v, 2) for k, v in result.get("timings", {}).items()},
                    "result": {k: v for k, v in result.items() if k != "timings"},
                }
                write_json(folder.file("summary.json"), summary)
                done = f"{kind}: complete in {summary['seconds']} s; results in {folder.path}"
                folder.log(done)
                print(done, flush=True)
        return result


def _chosen_examples(
    datamodule: Any,
    indices: list[int] | None,
    text: list[str] | None,
    text_pair: list[str] | None,
    indices_name: str = "indices",
) -> Examples:
    """Dev examples ``indices`` (default ``[0]`` without ``text``) and raw texts, tokenized.

    Raises:
        ArgumentError: an index outside the dev set, or ``text_pair`` for a single-sentence task.
    """
    from lightning_attattr.lightning.experiments import dev_split

    tokenizer = datamodule.tokenizer
    split = dev_split(datamodule)
    items: list[dict[str, Any]] = []
    names: list[str] = []
    if indices or not text:
        dev = datamodule.dataset(split)
        for i in indices or [0]:
            if not 0 <= i < len(dev):
                raise ArgumentError(f"Expected `{indices_name}` in [0, {len(dev) - 1}] (the {split} set), but got {i}.")
            items.append(dict(dev[i]))
            names.append(f"{split}-{i:06d}")
    if text_pair is not None and not _is_pair_task(datamodule, split):
        raise ArgumentError(
            f"Expected no `text_pair`: the task of this data module has single sentences, but got {len(text_pair)} "
            "second segment(s)."
        )
    for k, sentence in enumerate(text or []):
        args = (sentence,) if text_pair is None else (sentence, text_pair[k])
        encoded = tokenizer(*args, truncation=True, max_length=getattr(datamodule, "max_length", 512))
        items.append({key: list(v) for key, v in encoded.items()})
        names.append(f"text-{k:03d}")
    gold = [item.get("labels") for item in items]
    if text:  # one batch may mix dev examples and texts: labels only in the index, not in the batch
        items = [{k: v for k, v in item.items() if k != "labels"} for item in items]
    tokens = [tokenizer.convert_ids_to_tokens(item["input_ids"]) for item in items]
    return Examples(items, names, gold, tokens)


def _is_pair_task(datamodule: Any, split: str) -> bool:
    """Whether the data module's examples have a second segment (GLUE pair tasks); ``True`` when it cannot tell."""
    examples = getattr(datamodule, "examples", None)
    if examples is None:
        return True
    data = examples(split)
    if isinstance(data, list):  # the synthetic task: single sequences
        return False
    return getattr(data, "text_b", None) is not None


def _read_transfer(folders: list[str]) -> dict[str, torch.Tensor]:
    """The AttAttr importance of other ``heads`` results folders, named by their task (or folder name)."""
    out: dict[str, torch.Tensor] = {}
    for path in folders:
        folder = check_existing_dir("transfer_from", path)
        importance, name = _read_importance(folder, "attattr", "transfer_from")
        out[name if name not in out else str(folder)] = importance
    return out


def _read_importance(folder: Path, method: str, argument: str) -> tuple[torch.Tensor, str]:
    file = folder / "importance.json"
    if not file.is_file():
        raise ArgumentError(
            f"Expected `{argument}` to be a results folder of `analyze.py heads` (with importance.json), but "
            f"{str(folder)!r} has none."
        )
    data = json.loads(file.read_text(encoding="utf-8"))
    if method not in data.get("importance", {}):
        raise ArgumentError(
            f"Expected {str(file)!r} to hold {method!r} importance (methods: {sorted(data.get('importance', {}))}), "
            "but it does not."
        )
    name = folder.name
    summary = folder / "summary.json"
    if summary.is_file():
        name = json.loads(summary.read_text(encoding="utf-8")).get("task") or name
    return torch.tensor(data["importance"][method], dtype=torch.float64), name


class AnalyzeCLI(AttAttrCLI):
    """LightningCLI whose subcommands are :class:`AnalysisTrainer`'s experiments (see the module docstring)."""

    def __init__(self, *args: Any, command: list[str] | None = None, only: str | None = None, **kwargs: Any) -> None:
        """``command``: the command line the trainer records in ``summary.json`` (default: the process').

        ``only``: the subcommand the command line names; only its parser is built (each parser
        introspects trainer, model and data: building all six takes seconds, e.g. before ``--help``).
        """
        self.command = command
        if only in SETTINGS:
            setattr(self, "subcommands", lambda: {only: {"model", "datamodule"}})  # noqa: B010  (shadows the static method)
        super().__init__(*args, **kwargs)

    #: The data each analysis reads (its files are checked before the model loads): the dev set; attack also train.
    DATA_STAGES = {**{name: "validate" for name in SETTINGS}, "attack": "fit"}

    def check_data_files(self, datamodule: Any) -> Any:
        """The data checks of :class:`AttAttrCLI`, and for ``attack`` its raw texts, before the model is built."""
        if self.subcommand == "attack":
            from lightning_attattr.lightning.attack import check_text_data

            check_text_data(datamodule)
        return super().check_data_files(datamodule)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """The analysis subcommands; ``model`` and ``datamodule`` come from the config, not from flags."""
        return {name: {"model", "datamodule"} for name in SETTINGS}

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> Any:
        """The subcommand's parser, its help led by its own options (see :func:`arrange_help`)."""
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        arrange_help(parser, self._subcommand_method_arguments[subcommand], subcommand)
        return parser

    def rewrite_args(self, args: list[str]) -> list[str]:
        """Shipped config names resolved, and the natural forms of list options (:func:`natural_lists`)."""
        args = super().rewrite_args(args)
        if args and args[0] in SETTINGS:
            return [args[0], *natural_lists(args[1:], list_options(args[0]))]
        return args

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> pl.Trainer:
        """Only the hardware settings of the config's trainer; no training callbacks, logger or checkpoints."""
        kept = {k: config[k] for k in HARDWARE_KEYS if k in config and config[k] is not None}
        kept.update(
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            inference_mode=False,
            callbacks=[],
        )
        kept["enable_progress_bar"] = default_progress_bar(config.get("enable_progress_bar"))
        return self.trainer_class(**kept)

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        """The analysis trainer, told the config (for ``summary.json``) and what decides the results."""
        trainer = cast(AnalysisTrainer, super().instantiate_trainer(**kwargs))
        config = self.config[self.subcommand]
        trainer.analysis_config = _plain(config, drop=("config",))
        trainer.analysis_arguments = _fingerprint(config)
        trainer.analysis_command = self.command
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        self.preflight("validate", subcommand=subcommand)
        super()._run_subcommand(subcommand)


#: The help line of list options (the forms :func:`natural_lists` accepts).
LIST_FORMS = "List options ([ITEM,...]) take one value, several (--NAME a b) or a list (--NAME '[a, b]')."


def arrange_help(parser: Any, own: Iterable[str], name: str) -> None:
    """Order the ``--help`` of an analysis subcommand: its own options first, then model and data, then hardware.

    The trainer options an analysis ignores (everything but :data:`HARDWARE_KEYS` and
    ``enable_progress_bar``) and the optimizer and scheduler options (training only) are hidden
    from the help and usage; they are still accepted, so a training config parses unchanged.

    Args:
        parser: the subcommand's parser (jsonargparse/argparse).
        own: the destinations of the subcommand's own arguments (``ckpt_path``, ``n_examples``...).
        name: the subcommand (the title of its options' group).
    """
    import argparse

    own = set(own)
    shown_trainer = {f"trainer.{k}" for k in (*HARDWARE_KEYS, "enable_progress_bar")}
    hidden_prefixes = ("trainer.", "optimizer", "lr_scheduler")
    for action in parser._actions:
        dest = str(action.dest)
        if dest.startswith(hidden_prefixes) and dest not in shown_trainer and dest != "trainer":
            action.help = argparse.SUPPRESS
        elif dest in ("trainer", "optimizer", "lr_scheduler"):
            action.help = argparse.SUPPRESS

    def rank(dest: str) -> int:
        if dest in own:
            return 1
        if dest.startswith(("model", "data")):
            return 2
        if dest.startswith("trainer"):
            return 3
        return 0 if dest in ("help", "config", "print_config", "seed_everything") else 4

    parser._actions.sort(key=lambda a: rank(str(a.dest)))  # usage order; a stable sort
    groups = parser._action_groups
    own_groups = [g for g in groups if any(str(a.dest) in own for a in g._group_actions)]
    trainer_groups = [g for g in groups if any(str(a.dest).startswith("trainer.") for a in g._group_actions)]
    for group in trainer_groups:
        group.title = "hardware (the only trainer options an analysis uses)"
        group.description = None
    for group in own_groups:
        group.title = f"{name} options"
        group.description = LIST_FORMS
    rest = [g for g in groups if g not in own_groups and g not in trainer_groups]
    parser._action_groups = [*rest[:1], *own_groups, *rest[1:], *trainer_groups]


def universality(
    results: list[str],
    output_dir: str = "results/universality",
    method: str = "attattr",
    names: list[str] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Universality of important heads across tasks: correlations of importance, transferred pruning curves.

    Reads ``analyze.py heads`` results folders of models fine-tuned on different tasks (same model
    shape) and writes Pearson and Spearman matrices (JSON, CSV, heatmaps), pairwise scatter plots
    (one point per head), and, for every folder whose ``heads`` run had ``--transfer_from``, its
    own ranking's pruning curve next to the curves of the other tasks' rankings.

    Args:
        results: two or more ``heads`` results folders.
        output_dir: results folder (``universality.json``, ``correlation_*.csv``, ``plots/``, ``summary.json``).
        method: which importance to compare (any method the folders hold; default the paper's attattr).
        names: display names, one per folder (default: each folder's task, else its name).
        overwrite: replace a results folder that holds results of other arguments.
    """
    return _universality(results, output_dir, method, names, overwrite)


def _universality(
    results: list[str],
    output_dir: str,
    method: str,
    names: list[str] | None,
    overwrite: bool,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """:func:`universality`, recording ``command`` (default: the process' command line) in ``summary.json``."""
    from lightning_attattr.analysis.universality import correlation_matrices

    if len(results) < 2:
        raise ArgumentError(f"Expected `results` to list at least two `heads` results folders, but got {len(results)}.")
    if names is not None and len(names) != len(results):
        raise ArgumentError(f"Expected one name per results folder ({len(results)}), but got {len(names)} names.")
    check_bool("overwrite", overwrite)
    vectors, folders = _read_heads_folders(results, method, names)
    matrices = correlation_matrices(vectors)
    arguments = {"results": [str(f.resolve()) for _, f in folders], "method": method, "names": list(vectors)}
    with ResultsFolder(output_dir, "universality", arguments, overwrite=overwrite) as out:
        labels = list(vectors)
        transfer = _transfer_curves(out, folders)
        _write_correlations(out, method, vectors, matrices)
        write_json(out.file("universality.json"), {"method": method, "tasks": labels, **matrices, "transfer": transfer})
        write_json(
            out.file("summary.json"),
            {
                "subcommand": "universality",
                "status": "complete",
                "command": _command(command),
                "arguments": arguments,
                "versions": _versions(),
                "commit": _commit(),
            },
        )
    return {"pearson": matrices["pearson"], "spearman": matrices["spearman"], "tasks": labels}


def _read_heads_folders(
    results: list[str], method: str, names: list[str] | None
) -> tuple[dict[str, torch.Tensor], list[tuple[str, Path]]]:
    """The ``method`` importance of each ``heads`` folder by display name (made unique), and the named folders."""
    vectors: dict[str, torch.Tensor] = {}
    folders = []
    for k, path in enumerate(results):
        folder = check_existing_dir("results", path)
        vector, name = _read_importance(folder, method, "results")
        name = names[k] if names is not None else name
        if name in vectors:
            name = f"{name} ({folder.name})"
        vectors[name] = vector
        folders.append((name, folder))
    return vectors, folders


def _transfer_curves(out: ResultsFolder, folders: list[tuple[str, Path]]) -> dict[str, Any]:
    """Per folder whose ``heads`` run had ``--transfer_from``: its own and the other rankings' curves (and plot)."""
    from lightning_attattr.analysis.store import save_figure
    from lightning_attattr.plotting import pruning_curve

    transfer: dict[str, Any] = {}
    for name, folder in folders:
        pruning = folder / "pruning.json"
        if not pruning.is_file():
            continue
        data = json.loads(pruning.read_text(encoding="utf-8"))
        curves = {k: v["acc"] for k, v in data["curves"].items() if k == "attattr" or k.startswith("transfer:")}
        if len(curves) > 1:
            transfer[name] = {"fractions": data["fractions"], "acc": curves}
            fig = pruning_curve(
                data["fractions"],
                {("own ranking" if k == "attattr" else f"{k[9:]}'s ranking"): v for k, v in curves.items()},
                title=f"{name}: pruned with its own and other tasks' AttAttr rankings",
            )
            save_figure(fig, out.file(f"plots/transfer_{_file_name(name)}"))
    return transfer


def _write_correlations(
    out: ResultsFolder, method: str, vectors: dict[str, torch.Tensor], matrices: dict[str, Any]
) -> None:
    """The Pearson and Spearman matrices as CSV and heatmaps, and the pairwise scatter plots."""
    from lightning_attattr.analysis.store import save_figure, write_csv
    from lightning_attattr.plotting import correlation_heatmap, scatter_grid

    labels = list(vectors)
    for stat in ("pearson", "spearman"):
        write_csv(
            out.file(f"correlation_{stat}.csv"),
            ["task", *labels],
            [[a, *matrices[stat][i]] for i, a in enumerate(labels)],
        )
        save_figure(
            correlation_heatmap(matrices[stat], labels, title=f"{stat} correlation of {method} importance"),
            out.file(f"plots/correlation_{stat}"),
        )
    save_figure(scatter_grid(vectors, title=f"{method} head importance across tasks"), out.file("plots/scatter"))


def write_report(
    results_dir: str, output: str | None = None, max_examples: int | None = 50, attention: bool = True
) -> str:
    """Write the interactive HTML report of a results folder: one offline page that opens by double-click.

    Per example of an ``attribute`` folder: the AttAttr map of any layer and head (or all heads summed)
    with the raw attention beside it, hover values, top edges, the attribution tree, prediction and
    completeness; per model: whatever ``heads``, ``effectiveness``, ``universality``, ``attack`` and
    ``faithfulness`` wrote; per ``tree`` folder: each example's tree or graph, its tokens and the summary
    numbers of ``trees.json``. ``results_dir`` may also be a folder with such folders below it, at any depth
    (e.g. ``results``); the folders shown and those skipped (with the reason) are printed.

    Args:
        results_dir: the results folder (or a parent of several).
        output: where to write the page (default ``RESULTS_DIR/report.html``).
        max_examples: show at most this many examples of ``attribute`` folders (``null``: all).
        attention: show the raw attention maps beside the AttAttr maps.
    """
    from lightning_attattr.report import build_report

    check_positive_int("max_examples", max_examples, optional=True)
    check_bool("attention", attention)
    report = build_report(results_dir, max_examples=max_examples, include_attention=attention)
    path = report.save(output)
    print(f"report of {len(report.included)} results folders: {', '.join(report.included)}")
    for folder, reason in report.skipped:
        print(f"not in the report: {folder}: {reason}")
    print(f"report written: {path}\nopen it in a browser: xdg-open {path}   (macOS: open {path})")
    return str(path)


def _file_name(name: str) -> str:
    """``name`` with every character other than letters, digits, ``-`` and ``_`` replaced by ``_``."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _plain(config: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    data = config.clone().as_dict() if hasattr(config, "as_dict") else dict(config)
    for key in drop:
        data.pop(key, None)
    return json.loads(json.dumps(data, default=str))


def _fingerprint(config: Any) -> dict[str, Any]:
    """What decides an analysis' results: model, data, checkpoint (path, size, time) and seed; not the trainer."""
    data = _plain(config, drop=("config", "trainer", "output_dir", "overwrite", "weights_only", *_NOT_DECIDING))
    ckpt = data.get("ckpt_path")
    if ckpt and Path(ckpt).is_file():
        stat = Path(ckpt).stat()
        data["ckpt_path"] = {"path": str(Path(ckpt).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return data


def cli_main(args: list[str] | None = None, run: bool = True, prog: str | None = None) -> Any:
    """``analyze.py``: dispatch to ``universality`` or the LightningCLI subcommands; user errors are one line.

    The same command is installed as ``attattr-analyze`` and runs as ``python -m lightning_attattr.analysis_cli``
    or ``python -m lightning_attattr analyze``; ``--config`` also takes the name of a shipped config.

    Args:
        args: the command line without the program (default ``sys.argv[1:]``).
        run: run the subcommand.
        prog: the program name of usage and error lines (default: the one the user ran; ``analyze.py``
            for in-process calls with ``args``).
    """
    argv = list(sys.argv[1:] if args is None else args)
    if prog is None:
        prog = program_name(PROG) if args is None else PROG
    return _dispatch(argv, args, run, prog)


def main() -> None:
    """The ``attattr-analyze`` console script (``cli_main`` returns results, which are no exit status)."""
    cli_main()


def list_options(subcommand: str) -> dict[str, type]:
    """The list-valued options of ``subcommand`` (``--text``, ``--indices``, ``--results``...) and their item types."""
    import typing

    from lightning_attattr.analysis.settings import Integration

    if subcommand == "universality":
        return {"results": str, "names": str}
    settings = SETTINGS.get(subcommand)
    if settings is None:
        return {}
    hints = {**typing.get_type_hints(Integration), **typing.get_type_hints(settings)}
    out: dict[str, type] = {}
    for f in settings.options():
        for candidate in (hints[f.name], *typing.get_args(hints[f.name])):  # `list[int]` or `list[int] | None`
            if typing.get_origin(candidate) is list:
                (item,) = typing.get_args(candidate)
                out[f.name] = item if isinstance(item, type) else str
    return out


def natural_lists(argv: list[str], options: dict[str, type]) -> list[str]:
    """``argv`` with the natural forms of list options rewritten to the list form the parser reads.

    ``--text "a film"`` (one value), ``--results a b`` (several values up to the next option) and
    ``--indices=3`` become ``--text '["a film"]'``, ``--results '["a", "b"]'`` and ``--indices=[3]``;
    a value that already is a list (``"[0, 1]"``) or ``null`` is left as it is.

    Args:
        argv: the command line (options and values).
        options: the list options (names without ``--``) and the type of their items.

    Returns:
        The rewritten command line.

    Example:
        >>> argv = ["--text", "a film", "--indices", "0", "2", "--overwrite", "true"]
        >>> natural_lists(argv, {"text": str, "indices": int})
        ['--text', '["a film"]', '--indices', '[0, 2]', '--overwrite', 'true']
    """

    def as_list(name: str, values: list[str]) -> str:
        if options[name] is str:
            return json.dumps(values)
        return "[" + ", ".join(v.strip() for v in values) + "]"

    def kept(values: list[str]) -> bool:
        return len(values) == 1 and (values[0].lstrip().startswith("[") or values[0].strip() in ("null", "None"))

    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name, eq, value = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        if name not in options:
            out.append(token)
            i += 1
        elif eq:
            out.append(token if kept([value]) else f"--{name}={as_list(name, [value])}")
            i += 1
        else:
            j = i + 1
            while j < len(argv) and not argv[j].startswith("--") and argv[j] not in ("-h",):
                j += 1
            values = argv[i + 1 : j]
            out.append(token)
            if values:
                out.append(values[0] if kept(values) else as_list(name, values))
            i = j
    return out


def _dispatch(argv: list[str], args: list[str] | None, run: bool, prog: str) -> Any:
    from jsonargparse import auto_cli

    from lightning_attattr.core.checks import exit_on_user_error

    command = [prog, *argv]  # what summary.json records (also when called in-process with `args`)
    if argv and argv[0] == "report":
        sub = f"{prog} report"
        return exit_on_user_error(lambda: auto_cli(write_report, args=argv[1:], prog=sub), prog=sub)
    if argv and argv[0] == "universality":
        sub = f"{prog} universality"
        rest = natural_lists(argv[1:], list_options("universality"))
        return exit_on_user_error(lambda: _universality_cli(rest, sub, command), prog=sub)
    if not argv or argv[0] in ("-h", "--help"):
        print(overview(prog))
        return None
    quiet_lightning()
    return exit_on_user_error(
        AnalyzeCLI,
        AttAttrClassifier,
        pl.LightningDataModule,
        trainer_class=AnalysisTrainer,
        subclass_mode_data=True,
        save_config_callback=None,
        parser_kwargs={"prog": prog},
        args=None if args is None else argv,
        run=run,
        prog=prog,
        command=command,
        only=argv[0] if argv else None,
    )


def _universality_cli(args: list[str], prog: str, command: list[str]) -> dict[str, Any]:
    """``auto_cli(universality)`` (the same parser), run with the command line it records."""
    from jsonargparse import auto_parser

    parser = auto_parser(universality, as_positional=False, prog=prog)
    init = parser.instantiate(parser.parse_args(args))
    init.pop("config", None)
    init.pop("subcommand", None)
    return _universality(**init, command=command)


def overview(prog: str = PROG) -> str:
    """The overview of the subcommands (``analyze.py --help`` and no arguments)."""
    return _OVERVIEW.replace("{PROG}", prog)


_OVERVIEW = """usage: {PROG} SUBCOMMAND [options]   ({PROG} SUBCOMMAND --help for every option)

The paper's experiments on a trained model, offline. Subcommands:
  attribute      AttAttr maps of dev examples (--indices) or raw text (--text), saved per example
  tree           attribution trees or graphs (--mode) of dev examples (--index) or text: JSON/GraphML/DOT/PNG/text
  heads          head importance by every method + pruning curves (+ structural pruning)
  effectiveness  per-example AttAttr vs attention rankings, k heads pruned per layer (paper 4.1)
  faithfulness   deletion curves of AttAttr, attention, rollout, gradxattention vs random; trees; planted truth
  attack         adversarial triggers mined from training texts, accuracy per class vs random insertions
                 (needs a text data module such as GLUE; the synthetic quickstart task has no raw texts)
  universality   importance correlations across tasks + transferred pruning curves (--results DIR ...)
  report         the interactive HTML report of a results folder: {PROG} report RESULTS_DIR

Read a training run: --config runs/NAME/version_N/config.yaml --ckpt_path .../checkpoints/last.ckpt
Results: --output_dir DIR (JSON, CSV, PNG/SVG, TensorBoard events, summary.json); rerun to resume.
"""


if __name__ == "__main__":  # python -m lightning_attattr.analysis_cli: run the package's module, not a second copy
    from lightning_attattr.analysis_cli import main as _main

    _main()
