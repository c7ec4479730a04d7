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
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Literal

import torch

from lightning_attattr.analysis.edges import EDGE_METHODS
from lightning_attattr.analysis.faithfulness import DEFAULT_KS, check_ks_fit
from lightning_attattr.analysis.heads import METHODS
from lightning_attattr.analysis.store import ResultsFolder, write_json
from lightning_attattr.analysis.trees import MODES, ROOT_RULES
from lightning_attattr.cli import AttAttrCLI
from lightning_attattr.core.approximation import validate_method, validate_n_steps
from lightning_attattr.core.checks import (
    ArgumentError,
    check_bool,
    check_choice,
    check_existing_dir,
    check_fractions,
    check_int,
    check_number,
    check_positive_int,
    check_seed,
    check_sizes,
    program_name,
)
from lightning_attattr.core.importance import PRUNING_FRACTIONS
from lightning_attattr.lightning.checkpoints import read_checkpoint
from lightning_attattr.lightning.classifier import AttAttrClassifier
from lightning_attattr.lightning.compat import pl, rank_zero_only

PROG = "analyze.py"
SUBCOMMANDS = ("attribute", "tree", "heads", "effectiveness", "faithfulness", "attack")
# the trainer settings an analysis uses; the rest of a training config's `trainer:` is ignored
HARDWARE_KEYS = ("accelerator", "strategy", "devices", "num_nodes", "precision")
#: Layout version of a subcommand's per-example parts, when it changed since its first release: a folder
#: written with another version is refused (or replaced with ``--overwrite true``) instead of resumed.
RESULTS_FORMATS = {"faithfulness": 4}


def _command(command: list[str] | None = None) -> list[str]:
    """The command line of this analysis, for ``summary.json`` and ``progress.log``.

    ``command`` is what ``cli_main`` was given (the program and its arguments); without one (a call from
    Python), the process' own command line.
    """
    return list(command) if command is not None else [Path(sys.argv[0]).name, *sys.argv[1:]]


def _is_main() -> bool:
    """Rank zero of the job (read from the launcher's environment, valid before the trainer sets up)."""
    return rank_zero_only.rank == 0


def _load_weights(model: pl.LightningModule, ckpt_path: str | None, weights_only: bool = True) -> None:
    checkpoint = read_checkpoint(ckpt_path, name="ckpt_path", weights_only=weights_only)
    hook = getattr(model, "on_load_checkpoint", None)
    if callable(hook):
        hook(checkpoint)  # e.g. rebuilds the pruned structure before the weights load
    model.load_state_dict(checkpoint["state_dict"])


def _hf_model(model: pl.LightningModule) -> torch.nn.Module:
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
    def attribute(
        self,
        model: pl.LightningModule,
        datamodule: pl.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        weights_only: bool = True,
        output_dir: str = "results/attribute",
        overwrite: bool = False,
        indices: list[int] | None = None,
        text: list[str] | None = None,
        text_pair: list[str] | None = None,
        target: str | int = "predicted",
        layers: list[int] | None = None,
        n_steps: int | Literal["auto"] = "auto",
        method: str = "gausslegendre",
        completeness_tol: float = 1e-3,
        batch_size: int = 8,
        plots: bool = True,
        report: bool = False,
    ) -> dict[str, Any]:
        """AttAttr maps of chosen dev examples or raw text, saved per example with plots.

        Args:
            model: the classifier (built from ``--config``/``--model``).
            datamodule: the data module (dev examples, tokenizer).
            ckpt_path: checkpoint whose weights are analysed (``None``: the model as built).
            weights_only: read ``ckpt_path`` with ``torch.load(weights_only=True)`` (tensors and plain values
                only; a file with other objects is refused unread). ``false`` unpickles it fully, which
                executes code from the file: only for checkpoints you trust.
            output_dir: results folder (``examples/*.pt``, ``attributions.json``, ``plots/``, ``summary.json``).
            overwrite: replace a results folder that holds results of other arguments.
            indices: dev-set example indices (0-based, file order); default ``[0]`` when no ``text`` is given.
            text: raw input texts (first segments).
            text_pair: second segments for pair tasks, one per ``text``.
            target: ``"predicted"``, ``"labels"`` (gold, dev examples only) or a class index.
            layers: layers to attribute (default all; negative counts from the end).
            n_steps: ``"auto"`` (adaptive, meets ``completeness_tol``) or a fixed number of steps.
            method: integration rule (``gausslegendre``, ``riemann_left``, ...).
            completeness_tol: relative completeness tolerance of ``n_steps="auto"``.
            batch_size: examples per attribution batch.
            plots: write one PNG/SVG per example (head-summed map of every layer).
            report: also write the interactive page ``output_dir/report.html`` (``analyze.py report``).
        """
        check_positive_int("batch_size", batch_size)
        validate_n_steps(n_steps, allow_auto=True)
        validate_method(method)
        check_bool("plots", plots)
        check_bool("report", report)
        if target not in ("predicted", "labels") and not (isinstance(target, int) and not isinstance(target, bool)):
            raise ArgumentError(f"Expected `target` to be 'predicted', 'labels' or a class index, but got {target!r}.")
        _check_text(text, text_pair)
        if text and target == "labels":
            raise ArgumentError(
                "Expected `target` 'predicted' or a class index for `text` inputs (they have no gold label), "
                "but got 'labels'."
            )
        net, datamodule = self._prepare(model, datamodule, ckpt_path, weights_only)
        items, names, gold, tokens = _chosen_examples(datamodule, indices, text, text_pair)
        from lightning_attattr.lightning.experiments import run_attribute

        options = dict(
            indices=indices,
            text=text,
            text_pair=text_pair,
            target=target,
            layers=layers,
            n_steps=n_steps,
            method=method,
            completeness_tol=completeness_tol,
        )
        result = self._run_analysis(
            "attribute",
            output_dir,
            overwrite,
            options,
            lambda folder: run_attribute(
                self,
                net,
                datamodule,
                folder,
                dataset=items,
                indices=list(range(len(items))),
                names=names,
                tokens=tokens,
                labels=gold,
                target=target,
                layers=layers,
                n_steps=n_steps,
                method=method,
                completeness_tol=completeness_tol,
                batch_size=batch_size,
                plots=plots,
            ),
        )
        if report and _is_main():
            write_report(output_dir)
        return result

    def heads(
        self,
        model: pl.LightningModule,
        datamodule: pl.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        weights_only: bool = True,
        output_dir: str = "results/heads",
        overwrite: bool = False,
        methods: list[str] = list(METHODS),  # noqa: B006 (jsonargparse shows the default)
        n_examples: int = 200,
        fractions: list[float] = list(PRUNING_FRACTIONS),  # noqa: B006
        random_seeds: list[int] = [0, 1, 2],  # noqa: B006
        n_steps: int | Literal["auto"] = "auto",
        method: str = "gausslegendre",
        completeness_tol: float = 1e-3,
        batch_size: int = 16,
        eval_batch_size: int = 64,
        max_eval_examples: int | None = None,
        structural: bool = False,
        latency_batches: int = 8,
        latency_repeats: int = 5,
        transfer_from: list[str] = [],  # noqa: B006
    ) -> dict[str, Any]:
        """Head importance by every method on the first dev examples, then pruning curves on the dev set.

        Args:
            model: the classifier (built from ``--config``/``--model``).
            datamodule: the data module (dev set, tokenizer).
            ckpt_path: checkpoint whose weights are analysed (``None``: the model as built).
            weights_only: read ``ckpt_path`` with ``torch.load(weights_only=True)`` (tensors and plain values
                only; a file with other objects is refused unread). ``false`` unpickles it fully, which
                executes code from the file: only for checkpoints you trust.
            output_dir: results folder (``importance.json/csv``, ``pruning.json/csv``, ``plots/``, ``tensorboard/``,
                ``summary.json``).
            overwrite: replace a results folder that holds results of other arguments.
            methods: importance methods: attattr (max pooling, the paper), attattr_mean, attattr_sum, taylor
                (official script), taylor_michel, accuracy_difference, attention, random.
            n_examples: the first N dev examples score the heads (the official protocol: 200, gold labels).
            fractions: fractions of all heads removed for the pruning curves, lowest importance first; must start
                with 0.
            random_seeds: seeds of the random baseline (one curve each; reported as mean and spread).
            n_steps: AttAttr integration: ``"auto"`` (adaptive) or a fixed count (``method=riemann_left,
                n_steps=20`` is the official computation).
            method: integration rule.
            completeness_tol: relative completeness tolerance of ``n_steps="auto"``.
            batch_size: examples per importance batch.
            eval_batch_size: examples per pruning-evaluation batch.
            max_eval_examples: evaluate the pruning curves on the first N dev examples (default: all).
            structural: also remove the heads physically (AttAttr ranking) and report parameters and latency.
            latency_batches: dev batches timed per structurally pruned model.
            latency_repeats: timing repeats (models interleaved; the median is reported).
            transfer_from: other ``heads`` results folders: prune this model with their AttAttr ranking too
                (universality).
        """
        for name in methods:
            check_choice("methods", name, METHODS)
        if not methods:
            raise ArgumentError(f"Expected `methods` to name at least one of {list(METHODS)}, but got [].")
        check_positive_int("n_examples", n_examples)
        check_fractions("fractions", fractions)
        if list(fractions) != sorted(fractions) or fractions[0] != 0:
            raise ArgumentError(
                f"Expected `fractions` increasing from 0 (the unpruned model), but got {list(fractions)}."
            )
        for seed in random_seeds:
            check_seed("random_seeds", seed)
        validate_n_steps(n_steps, allow_auto=True)
        validate_method(method)
        check_number("completeness_tol", completeness_tol, 0.0, low_open=True)
        check_positive_int("batch_size", batch_size)
        check_positive_int("eval_batch_size", eval_batch_size)
        check_positive_int("max_eval_examples", max_eval_examples, optional=True)
        check_bool("structural", structural)
        check_positive_int("latency_batches", latency_batches)
        check_positive_int("latency_repeats", latency_repeats)
        transfer = _read_transfer(transfer_from)
        net, datamodule = self._prepare(model, datamodule, ckpt_path, weights_only)
        _check_dev_size(datamodule, n_examples=n_examples, max_eval_examples=max_eval_examples)
        from lightning_attattr.lightning.experiments import model_shape

        shape = model_shape(net)
        for name, vector in transfer.items():
            if tuple(vector.shape) != shape:
                raise ArgumentError(
                    f"Expected `transfer_from` importance of this model's shape [layer, head] = {list(shape)}, but "
                    f"{name!r} has {list(vector.shape)}."
                )
        task, metric_names = _task(datamodule, model)
        from lightning_attattr.lightning.experiments import run_heads

        options = dict(
            methods=methods,
            n_examples=n_examples,
            fractions=fractions,
            random_seeds=random_seeds,
            n_steps=n_steps,
            method=method,
            completeness_tol=completeness_tol,
            max_eval_examples=max_eval_examples,
            transfer_from={k: v.tolist() for k, v in transfer.items()},
        )
        return self._run_analysis(
            "heads",
            output_dir,
            overwrite,
            options,
            lambda folder: run_heads(
                self,
                net,
                datamodule,
                folder,
                methods=methods,
                n_examples=n_examples,
                fractions=fractions,
                random_seeds=random_seeds,
                n_steps=n_steps,
                method=method,
                completeness_tol=completeness_tol,
                batch_size=batch_size,
                eval_batch_size=eval_batch_size,
                max_eval_examples=max_eval_examples,
                structural=structural,
                latency_batches=latency_batches,
                latency_repeats=latency_repeats,
                transfer_from=transfer,
                task=task,
                metric_names=metric_names,
                num_labels=int(net.config.num_labels),
            ),
            extra={"task": task},
        )

    def effectiveness(
        self,
        model: pl.LightningModule,
        datamodule: pl.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        weights_only: bool = True,
        output_dir: str = "results/effectiveness",
        overwrite: bool = False,
        n_examples: int | None = 200,
        n_steps: int | Literal["auto"] = "auto",
        method: str = "gausslegendre",
        completeness_tol: float = 1e-3,
        batch_size: int = 8,
    ) -> dict[str, Any]:
        """Paper section 4.1: per example, heads ranked by AttAttr vs by attention weight; k heads pruned per layer.

        Args:
            model: the classifier (built from ``--config``/``--model``).
            datamodule: the data module (dev set, tokenizer).
            ckpt_path: checkpoint whose weights are analysed (``None``: the model as built).
            weights_only: read ``ckpt_path`` with ``torch.load(weights_only=True)`` (tensors and plain values
                only; a file with other objects is refused unread). ``false`` unpickles it fully, which
                executes code from the file: only for checkpoints you trust.
            output_dir: results folder (``effectiveness.json/csv``, ``plots/``, ``tensorboard/``, ``summary.json``).
            overwrite: replace a results folder that holds results of other arguments.
            n_examples: the first N dev examples (``null``: the whole dev set).
            n_steps: AttAttr integration: ``"auto"`` (adaptive) or a fixed count.
            method: integration rule.
            completeness_tol: relative completeness tolerance of ``n_steps="auto"``.
            batch_size: examples per attribution batch.
        """
        check_positive_int("n_examples", n_examples, optional=True)
        validate_n_steps(n_steps, allow_auto=True)
        validate_method(method)
        check_positive_int("batch_size", batch_size)
        net, datamodule = self._prepare(model, datamodule, ckpt_path, weights_only)
        _check_dev_size(datamodule, n_examples=n_examples)
        task, _ = _task(datamodule, model)
        from lightning_attattr.lightning.experiments import run_effectiveness

        options = dict(n_examples=n_examples, n_steps=n_steps, method=method, completeness_tol=completeness_tol)
        return self._run_analysis(
            "effectiveness",
            output_dir,
            overwrite,
            options,
            lambda folder: run_effectiveness(
                self,
                net,
                datamodule,
                folder,
                n_examples=n_examples,
                n_steps=n_steps,
                method=method,
                completeness_tol=completeness_tol,
                batch_size=batch_size,
                task=task,
            ),
            extra={"task": task},
        )

    def faithfulness(
        self,
        model: pl.LightningModule,
        datamodule: pl.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        weights_only: bool = True,
        output_dir: str = "results/faithfulness",
        overwrite: bool = False,
        n_examples: int | None = 100,
        edge_methods: list[str] = list(EDGE_METHODS),  # noqa: B006 (jsonargparse shows the default)
        ks: list[int] = list(DEFAULT_KS),  # noqa: B006
        n_random: int = 3,
        tau: float = 0.4,
        seed: int = 0,
        n_steps: int | Literal["auto"] = "auto",
        method: str = "gausslegendre",
        completeness_tol: float = 1e-3,
        batch_size: int = 8,
        truth: str | None = None,
    ) -> dict[str, Any]:
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

        Args:
            model: the classifier (built from ``--config``/``--model``).
            datamodule: the data module (dev set, tokenizer).
            ckpt_path: checkpoint whose weights are analysed (``None``: the model as built).
            weights_only: read ``ckpt_path`` with ``torch.load(weights_only=True)`` (tensors and plain values
                only; a file with other objects is refused unread). ``false`` unpickles it fully, which
                executes code from the file: only for checkpoints you trust.
            output_dir: results folder (``faithfulness.json/md``, ``deletion_curves.csv``, ``plots/``).
            overwrite: replace a results folder that holds results of other arguments.
            n_examples: the first N dev examples (``null``: the whole dev set).
            edge_methods: edge explanations to compare (any of attattr, attention, rollout, grad_attention).
            ks: numbers of connections to delete (each at most layers x n x n of the shortest example).
            n_random: random-deletion seeds.
            tau: tree threshold, a fraction of each layer's largest score, in (0, 1].
            seed: seed of the random deletions (per example: the same whatever the batch or process).
            n_steps: AttAttr integration: ``"auto"`` (adaptive) or a fixed count.
            method: AttAttr integration rule.
            completeness_tol: relative completeness tolerance of ``n_steps="auto"``.
            batch_size: examples per batch.
            truth: a JSON Lines file of planted pairs, one dev example per line:
                ``{"index": 3, "pairs": [[5, 2]], "unit": "word", "layer": 1}`` (``index`` in the dev split;
                ``pairs`` ``[query, key]`` positions, either order counts as a hit, any number of pairs;
                ``unit`` ``"token"``: token positions of the model input, 0 = [CLS], or ``"word"``: positions
                over the non-special words from 0, word pieces merged; ``layer`` optional). With ``truth``
                the examples are the file's, in file order, the first ``n_examples`` of them (``null``:
                all); without it the first ``n_examples`` dev examples, with the synthetic task's pairs.
        """
        check_positive_int("n_examples", n_examples, optional=True)
        if not isinstance(edge_methods, list) or not edge_methods:
            raise ArgumentError(
                f"Expected `edge_methods` to be a non-empty list of {list(EDGE_METHODS)}, but got {edge_methods!r}."
            )
        for name in edge_methods:
            check_choice("edge_methods", name, EDGE_METHODS)
        ks = check_sizes("ks", ks)
        check_positive_int("n_random", n_random)
        check_number("tau", tau, 0.0, 1.0, low_open=True)
        check_seed("seed", seed)
        validate_n_steps(n_steps, allow_auto=True)
        validate_method(method)
        check_positive_int("batch_size", batch_size)
        from lightning_attattr.analysis.faithfulness import check_truth, read_truth

        planted_truth = None if truth is None else read_truth(truth)  # the file's own checks, before any loading
        net, datamodule = self._prepare(model, datamodule, ckpt_path, weights_only)
        from lightning_attattr.lightning.experiments import dev_split, model_shape
        from lightning_attattr.lightning.faithfulness import example_layout, planted_pairs, run_faithfulness

        split = dev_split(datamodule)
        dev = datamodule.dataset(split)
        n_layers = model_shape(net)[0]
        if planted_truth is None:
            _check_dev_size(datamodule, n_examples=n_examples)
            indices = list(range(len(dev) if n_examples is None else n_examples))
            planted = planted_pairs(datamodule, split)
            source = None if planted is None else "the data module's planted pairs"
        else:

            def size(i: int) -> tuple[int, int]:
                ids = dev[i]["input_ids"]
                return len(ids), len(example_layout(datamodule.tokenizer, ids).words)

            check_truth(planted_truth, truth, n_dev=len(dev), split=split, n_layers=n_layers, size=size)
            chosen = planted_truth if n_examples is None else planted_truth[:n_examples]
            indices = [t.index for t in chosen]
            planted = {t.index: t for t in chosen}
            source = f"truth file {truth}"
        check_ks_fit("ks", ks, n_layers, min(len(dev[i]["input_ids"]) for i in indices))
        task, _ = _task(datamodule, model)
        digest = None if truth is None else hashlib.sha256(Path(truth).read_bytes()).hexdigest()  # resume: same file
        options = dict(
            n_examples=n_examples,
            edge_methods=list(dict.fromkeys(edge_methods)),
            ks=ks,
            n_random=n_random,
            tau=tau,
            seed=seed,
            n_steps=n_steps,
            method=method,
            completeness_tol=completeness_tol,
            truth=truth,
            truth_sha256=digest,
        )
        attattr_options = dict(n_steps=n_steps, method=method, completeness_tol=completeness_tol)
        return self._run_analysis(
            "faithfulness",
            output_dir,
            overwrite,
            options,
            lambda folder: run_faithfulness(
                self,
                net,
                datamodule,
                folder,
                dataset=dev,
                indices=indices,
                edge_methods=options["edge_methods"],
                ks=ks,
                n_random=n_random,
                seed=seed,
                tau=tau,
                attattr_options=attattr_options,
                batch_size=batch_size,
                planted=planted,
                truth_source=source,
            ),
            extra={"task": task},
        )

    def tree(
        self,
        model: pl.LightningModule,
        datamodule: pl.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        weights_only: bool = True,
        output_dir: str = "results/tree",
        overwrite: bool = False,
        index: list[int] | None = None,
        text: list[str] | None = None,
        text_pair: list[str] | None = None,
        tau: float = 0.4,
        root: str = "cls",
        mode: str = "tree",
        words: bool = False,
        n_steps: int | Literal["auto"] = "auto",
        method: str = "gausslegendre",
        completeness_tol: float = 1e-3,
        batch_size: int = 8,
    ) -> dict[str, Any]:
        """Attribution trees (paper section 5): how information flows between tokens, layer by layer, into [CLS].

        Per example, AttAttr of the predicted class for every layer, summed over heads; in each layer
        the connections above ``tau`` times the layer's largest attribution are candidates, and from
        the top layer down a token joins the tree under the first token already in it that attends
        to it (one parent per token). ``--mode graph`` keeps every candidate edge whose query is in
        (the tree's tokens and edges plus the edges the one-parent rule drops). Writes JSON, GraphML,
        DOT, a text rendering (also printed, with the worst completeness error of the maps) and a
        PNG/SVG drawing per example.

        Args:
            model: the classifier (built from ``--config``/``--model``).
            datamodule: the data module (dev examples, tokenizer).
            ckpt_path: checkpoint whose weights are analysed (``None``: the model as built).
            weights_only: read ``ckpt_path`` with ``torch.load(weights_only=True)`` (tensors and plain values
                only; a file with other objects is refused unread). ``false`` unpickles it fully, which
                executes code from the file: only for checkpoints you trust.
            output_dir: results folder (``trees/``, ``plots/``, ``trees.json``, ``summary.json``).
            overwrite: replace a results folder that holds results of other arguments.
            index: dev-set example indices (0-based, file order); default ``[0]`` when no ``text`` is given.
            text: raw input texts (first segments).
            text_pair: second segments for pair tasks, one per ``text``.
            tau: threshold in (0, 1], a fraction of each layer's largest attribution (paper: 0.4).
            root: ``cls``: [CLS] is the root with its last-layer edges (the paper); ``official``: the official
                script's root heuristic (the token with the largest total attribution, last layer unused).
            mode: ``tree``: the paper's tree (one parent per token); ``graph``: every connection above ``tau``
                whose query is in, a DAG with the layers as ranks (same exports).
            words: merge WordPiece/BPE tokens into words first (attributions summed over a word's pieces on
                both axes, so each layer's total is kept).
            n_steps: AttAttr integration: ``"auto"`` (adaptive) or a fixed count.
            method: AttAttr integration rule.
            completeness_tol: relative completeness tolerance of ``n_steps="auto"``.
            batch_size: examples per attribution batch.
        """
        check_number("tau", tau, 0.0, 1.0, low_open=True)
        check_choice("root", root, ROOT_RULES)
        check_choice("mode", mode, MODES)
        check_bool("words", words)
        check_positive_int("batch_size", batch_size)
        validate_n_steps(n_steps, allow_auto=True)
        validate_method(method)
        _check_text(text, text_pair)
        net, datamodule = self._prepare(model, datamodule, ckpt_path, weights_only)
        items, names, _, tokens = _chosen_examples(datamodule, index, text, text_pair, indices_name="index")
        from lightning_attattr.lightning.analysis import special_tokens
        from lightning_attattr.lightning.trees import run_trees

        specials = special_tokens(datamodule.tokenizer)
        options = dict(
            index=index,
            text=text,
            text_pair=text_pair,
            tau=tau,
            root=root,
            mode=mode,
            words=words,
            n_steps=n_steps,
            method=method,
            completeness_tol=completeness_tol,
        )
        attattr_options = dict(n_steps=n_steps, method=method, completeness_tol=completeness_tol)
        return self._run_analysis(
            "tree",
            output_dir,
            overwrite,
            options,
            lambda folder: run_trees(
                self,
                net,
                datamodule,
                folder,
                items=items,
                names=names,
                tokens=tokens,
                tau=tau,
                root=root,
                mode=mode,
                words=words,
                attattr_options=attattr_options,
                batch_size=batch_size,
                special_tokens=specials,
            ),
        )

    def attack(
        self,
        model: pl.LightningModule,
        datamodule: pl.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        weights_only: bool = True,
        output_dir: str = "results/attack",
        overwrite: bool = False,
        n_source: int = 500,
        min_tokens: int | None = None,
        n_eval: int | None = None,
        top: int = 3,
        threshold: float = 0.02,
        ratio: float = 0.2,
        use_both: bool = False,
        n_random: int = 3,
        seed: int = 0,
        n_steps: int | Literal["auto"] = "auto",
        method: str = "gausslegendre",
        completeness_tol: float = 1e-3,
        batch_size: int = 8,
    ) -> dict[str, Any]:
        """Adversarial triggers (paper section 6): attribution patterns mined from training examples, pasted into dev.

        Each of the first ``n_source`` training examples gives a pattern: in the head holding its
        largest AttAttr entry (predicted class), the two strongest (query, key) connections. The
        patterns are ranked by the sum of the two; the ``top`` best make triggers, whose wordpieces
        are inserted into every dev example at the same relative positions of the same segment.
        Accuracy per gold class: clean, under each trigger, and under random tokens inserted at the
        same positions (``n_random`` seeds). Writes ``attack.json`` and ``attack.md``.

        Args:
            model: the classifier (built from ``--config``/``--model``).
            datamodule: the data module (train and dev sets, tokenizer).
            ckpt_path: checkpoint whose weights are analysed (``None``: the model as built).
            weights_only: read ``ckpt_path`` with ``torch.load(weights_only=True)`` (tensors and plain values
                only; a file with other objects is refused unread). ``false`` unpickles it fully, which
                executes code from the file: only for checkpoints you trust.
            output_dir: results folder (``attack.json``, ``attack.md``, ``summary.json``).
            overwrite: replace a results folder that holds results of other arguments.
            n_source: mine the first N training examples (file order; official: 500).
            min_tokens: skip source examples with fewer wordpieces (special tokens included); default 15
                for single-sentence tasks (the official SST-2 setting), 0 for pairs.
            n_eval: attack the first N dev examples (``null``: all).
            top: number of triggers (the paper reports 3).
            threshold: patterns scoring below this are not used (official: 0.02).
            ratio: use the second pair too when its value is at least this fraction of the first's (official: 0.2).
            use_both: always use both pairs.
            n_random: random-control seeds per trigger.
            seed: seed of the random controls.
            n_steps: AttAttr integration: ``"auto"`` (adaptive) or a fixed count (official: 64, riemann_right).
            method: AttAttr integration rule.
            completeness_tol: relative completeness tolerance of ``n_steps="auto"``.
            batch_size: examples per batch.
        """
        check_positive_int("n_source", n_source)
        check_positive_int("n_eval", n_eval, optional=True)
        if min_tokens is not None:
            check_int("min_tokens", min_tokens, 0)
        check_positive_int("top", top)
        check_number("threshold", threshold, 0.0, float("inf"))
        check_number("ratio", ratio, 0.0, 1.0)
        check_bool("use_both", use_both)
        check_positive_int("n_random", n_random)
        check_seed("seed", seed)
        validate_n_steps(n_steps, allow_auto=True)
        validate_method(method)
        check_positive_int("batch_size", batch_size)
        net, datamodule = self._prepare(model, datamodule, ckpt_path, weights_only)
        from lightning_attattr.lightning.experiments import dev_split

        examples = getattr(datamodule, "examples", None)
        if examples is None or not hasattr(examples("train"), "text_a"):
            raise ArgumentError(
                "Expected a text data module with raw training and dev texts (e.g. GlueDataModule) for `attack`, "
                f"but got {type(datamodule).__name__}."
            )
        _check_dev_size(datamodule, n_eval=n_eval)
        train, dev = examples("train"), examples(dev_split(datamodule))
        pair = dev.text_b is not None
        min_tokens = (0 if pair else 15) if min_tokens is None else min_tokens
        source = _source_examples(datamodule, train, n_source, min_tokens)
        if n_eval is not None:
            dev = type(dev)(
                dev.split, dev.text_a[:n_eval], None if dev.text_b is None else dev.text_b[:n_eval], dev.labels[:n_eval]
            )
        task, _ = _task(datamodule, model)
        label_names = list(getattr(datamodule, "label_names", None) or [])
        from lightning_attattr.lightning.attack import run_attack

        options = dict(
            n_source=n_source,
            min_tokens=min_tokens,
            n_eval=n_eval,
            top=top,
            threshold=threshold,
            ratio=ratio,
            use_both=use_both,
            n_random=n_random,
            seed=seed,
            n_steps=n_steps,
            method=method,
            completeness_tol=completeness_tol,
        )
        attattr_options = dict(n_steps=n_steps, method=method, completeness_tol=completeness_tol)
        names = label_names or [str(k) for k in range(int(net.config.num_labels))]
        return self._run_analysis(
            "attack",
            output_dir,
            overwrite,
            options,
            lambda folder: run_attack(
                self,
                net,
                datamodule,
                folder,
                source=source,
                dev=dev,
                label_names=names,
                top=top,
                threshold=threshold,
                ratio=ratio,
                use_both=use_both,
                n_random=n_random,
                seed=seed,
                attattr_options=attattr_options,
                batch_size=batch_size,
            ),
            extra={"task": task},
        )

    # ----------------------------------------------------------------- shared
    def _prepare(
        self, model: pl.LightningModule, datamodule: Any, ckpt_path: str | None, weights_only: bool = True
    ) -> tuple[torch.nn.Module, Any]:
        if datamodule is None:
            raise ArgumentError("Expected a data module (`--data ...` or a `--config` that has one), but got none.")
        if ckpt_path is not None:
            _load_weights(model, ckpt_path, weights_only=weights_only is not False)
        net = _hf_model(model)
        from lightning_attattr.lightning.experiments import model_shape

        model_shape(net)  # refuses unsupported architectures before any work
        datamodule.setup("validate")
        net.eval()
        return net, datamodule

    def _run_analysis(
        self,
        kind: str,
        output_dir: str,
        overwrite: bool,
        options: dict[str, Any],
        work: Any,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        check_bool("overwrite", overwrite)
        arguments = {**(self.analysis_arguments or {}), "options": options}
        if kind in RESULTS_FORMATS:  # parts written by an older layout are never mixed with new ones
            arguments["format"] = RESULTS_FORMATS[kind]
        folder = ResultsFolder(output_dir, kind, arguments, overwrite=overwrite, main=_is_main())
        start = time.time()
        with folder:
            folder.log(f"{kind}: started ({' '.join(_command(self.analysis_command))})")
            result = work(folder)
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
                folder.log(f"{kind}: complete in {summary['seconds']} s; results in {folder.path}")
        return result


def _source_examples(datamodule: Any, train: Any, n_source: int, min_tokens: int) -> list[dict[str, Any]]:
    """The first ``n_source`` training examples, tokenized, without those shorter than ``min_tokens`` wordpieces."""
    tokenizer = datamodule.tokenizer
    n = min(n_source, len(train))
    texts = (train.text_a[:n],) if train.text_b is None else (train.text_a[:n], train.text_b[:n])
    encoded = tokenizer(*texts, truncation=True, max_length=datamodule.max_length)
    out = []
    for i in range(n):
        ids = list(encoded["input_ids"][i])
        if len(ids) < min_tokens:
            continue
        item = {k: list(v[i]) for k, v in encoded.items()}
        out.append({**item, "labels": int(train.labels[i]), "tokens": tokenizer.convert_ids_to_tokens(ids)})
    if not out:
        raise ArgumentError(
            f"Expected some of the first {n} training examples to have at least `min_tokens` ({min_tokens}) "
            "wordpieces, but none has; lower `min_tokens`."
        )
    return out


def _check_text(text: list[str] | None, text_pair: list[str] | None) -> None:
    """``text``/``text_pair`` checks that need no model: non-empty texts, one pair per text."""
    for name, values in (("text", text), ("text_pair", text_pair)):
        for k, value in enumerate(values or []):
            if not isinstance(value, str) or not value.strip():
                raise ArgumentError(f"Expected every `{name}` to be a non-empty string, but item {k} is {value!r}.")
    if text_pair is not None and (text is None or len(text_pair) != len(text)):
        raise ArgumentError(
            f"Expected `text_pair` to give one second segment per `text` ({0 if text is None else len(text)}), "
            f"but got {len(text_pair)}."
        )


def _chosen_examples(
    datamodule: Any,
    indices: list[int] | None,
    text: list[str] | None,
    text_pair: list[str] | None,
    indices_name: str = "indices",
) -> tuple[list[dict[str, Any]], list[str], list[int | None], list[list[str]]]:
    """Dev examples ``indices`` (default ``[0]`` without ``text``) and raw texts, tokenized: items, names, gold, tokens.

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
    return items, names, gold, tokens


def _is_pair_task(datamodule: Any, split: str) -> bool:
    """Whether the data module's examples have a second segment (GLUE pair tasks); ``True`` when it cannot tell."""
    examples = getattr(datamodule, "examples", None)
    if examples is None:
        return True
    data = examples(split)
    if isinstance(data, list):  # the synthetic task: single sequences
        return False
    return getattr(data, "text_b", None) is not None


def _check_dev_size(datamodule: Any, **counts: int | None) -> None:
    """Example counts checked against the dev set before the results folder is opened (a refused run writes nothing)."""
    from lightning_attattr.lightning.experiments import check_n_examples, dev_split

    split = dev_split(datamodule)
    size = len(datamodule.dataset(split))
    for name, n in counts.items():
        check_n_examples(name, n, size, split)


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

    def __init__(self, *args: Any, command: list[str] | None = None, **kwargs: Any) -> None:
        """``command``: the command line the trainer records in ``summary.json`` (default: the process')."""
        self.command = command
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """The analysis subcommands; ``model`` and ``datamodule`` come from the config, not from flags."""
        return {name: {"model", "datamodule"} for name in SUBCOMMANDS}

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
        if "enable_progress_bar" in config and config["enable_progress_bar"] is not None:
            kept["enable_progress_bar"] = config["enable_progress_bar"]
        return self.trainer_class(**kept)

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        """The analysis trainer, told the config (for ``summary.json``) and what decides the results."""
        trainer = super().instantiate_trainer(**kwargs)
        config = self.config[self.subcommand]
        trainer.analysis_config = _plain(config, drop=("config",))
        trainer.analysis_arguments = _fingerprint(config)
        trainer.analysis_command = self.command
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        self.preflight("validate", subcommand=subcommand)
        super()._run_subcommand(subcommand)


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
    from lightning_attattr.analysis.store import write_csv
    from lightning_attattr.analysis.universality import correlation_matrices
    from lightning_attattr.plotting import correlation_heatmap, pruning_curve, scatter_grid

    if len(results) < 2:
        raise ArgumentError(f"Expected `results` to list at least two `heads` results folders, but got {len(results)}.")
    if names is not None and len(names) != len(results):
        raise ArgumentError(f"Expected one name per results folder ({len(results)}), but got {len(names)} names.")
    check_bool("overwrite", overwrite)
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
    matrices = correlation_matrices(vectors)
    arguments = {"results": [str(f.resolve()) for _, f in folders], "method": method, "names": list(vectors)}
    from lightning_attattr.analysis.store import save_figure

    with ResultsFolder(output_dir, "universality", arguments, overwrite=overwrite) as out:
        labels = list(vectors)
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


def write_report(
    results_dir: str, output: str | None = None, max_examples: int | None = 50, attention: bool = True
) -> str:
    """Write the interactive HTML report of a results folder: one offline page that opens by double-click.

    Per example of an ``attribute`` folder: the AttAttr map of any layer and head (or all heads summed)
    with the raw attention beside it, hover values, top edges, the attribution tree, prediction and
    completeness; per model: whatever ``heads``, ``effectiveness``, ``universality``, ``attack`` and
    ``faithfulness`` wrote. ``results_dir`` may also be a folder of such folders (e.g. ``results/minilm``).

    Args:
        results_dir: the results folder (or a parent of several).
        output: where to write the page (default ``RESULTS_DIR/report.html``).
        max_examples: show at most this many examples of ``attribute`` folders (``null``: all).
        attention: show the raw attention maps beside the AttAttr maps.
    """
    from lightning_attattr.report import build_report

    check_positive_int("max_examples", max_examples, optional=True)
    check_bool("attention", attention)
    path = build_report(results_dir, max_examples=max_examples, include_attention=attention).save(output)
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
    data = _plain(
        config,
        drop=(
            "config",
            "trainer",
            "output_dir",
            "overwrite",
            "batch_size",
            "eval_batch_size",
            "latency_batches",
            "latency_repeats",
            "plots",
            "structural",
            "weights_only",
        ),
    )
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


def _dispatch(argv: list[str], args: list[str] | None, run: bool, prog: str) -> Any:
    from jsonargparse import auto_cli

    from lightning_attattr.core.checks import exit_on_user_error

    if argv and argv[0] == "report":
        sub = f"{prog} report"
        return exit_on_user_error(lambda: auto_cli(write_report, args=argv[1:], prog=sub), prog=sub)
    command = [prog, *argv]  # what summary.json records (also when called in-process with `args`)
    if argv and argv[0] == "universality":
        sub = f"{prog} universality"
        return exit_on_user_error(lambda: _universality_cli(argv[1:], sub, command), prog=sub)
    if not argv or argv[0] in ("-h", "--help"):
        print(overview(prog))
        if not argv:
            return None
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
  attack         adversarial triggers mined from training examples, accuracy per class vs random insertions
  universality   importance correlations across tasks + transferred pruning curves (--results DIR ...)
  report         the interactive HTML report of a results folder: {PROG} report RESULTS_DIR

Read a training run: --config runs/NAME/version_N/config.yaml --ckpt_path .../checkpoints/last.ckpt
Results: --output_dir DIR (JSON, CSV, PNG/SVG, TensorBoard events, summary.json); rerun to resume.
"""


if __name__ == "__main__":  # python -m lightning_attattr.analysis_cli: run the package's module, not a second copy
    from lightning_attattr.analysis_cli import main as _main

    _main()
