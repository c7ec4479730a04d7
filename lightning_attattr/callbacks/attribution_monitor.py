"""Watch AttAttr maps of a fixed probe set evolve during training, in TensorBoard and on disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from typing_extensions import override

from lightning_attattr.callbacks._base import EpochEndAnalysis, ValExamples
from lightning_attattr.callbacks._figures import FigureLogger
from lightning_attattr.callbacks._protocol import (
    pad_examples,
    reduce_sum,
    resolve_model,
    resolve_tokenizer,
    tokens_of,
    world,
)
from lightning_attattr.callbacks.progress import epoch_title
from lightning_attattr.core.adapter import layer_modules
from lightning_attattr.core.approximation import validate_method, validate_n_steps
from lightning_attattr.core.attribution import (
    DEFAULT_METHOD,
    DEFAULT_N_STEPS,
    AttentionIntegratedGradients,
    completeness_scale,
)
from lightning_attattr.core.checks import (
    ArgumentTypeError,
    check_bool,
    check_choice,
    check_int,
    check_layers,
    check_number,
    check_positive_int,
)
from lightning_attattr.lightning.compat import is_fast_dev_run, pl, rank_zero_warn

_TARGETS = ("predicted", "labels")


class AttributionMonitor(EpochEndAnalysis):
    """Compute AttAttr maps of a fixed probe set every ``every_n_epochs`` validation epochs.

    The probe set is the first ``n_examples`` examples of the validation loader, chosen once (at
    the first analysis), kept in the callback state (so a resumed run uses the same examples) and
    written to ``<save_dir>/probe.pt``. Each analysis logs, per layer,

    - ``attr/layer{l}/example{i}``: a token x token heatmap of the map summed over heads (image),
    - ``attr_heads/layer{l}/example{i}``: a grid of the per-head maps (image),
    - ``attr/completeness_layer{l}``: mean relative completeness gap over the probe set, relative to
      ``max(|F(A) - F(A := 0)|, 1e-3)`` as ``n_steps="auto"`` measures it (scalar),
    - ``attr/steps_layer{l}``: mean integration nodes used per probe example (scalar; with the
      adaptive default it shows where the integrand got harder),
    - ``attr/values_layer{l}``: histogram of the attribution values,

    and, with ``log_trees=True``, per image example ``attr_tree/example{i}``: a figure of the attribution
    tree (:func:`~lightning_attattr.analysis.trees.build_tree` with the paper's ``[CLS]`` root and
    ``tau=tree_tau``) built from the head-summed maps of all layers. Trees need every layer, so they
    are skipped (with one warning) when ``layers`` names only some of them.

    and writes ``<save_dir>/epoch={epoch:03d}.pt`` (only on rank zero), a dict with ``epoch``,
    ``global_step``, ``layers``, ``tokens`` (per example), ``attributions`` (per example,
    ``[layer, head, query_pos, key_pos]`` float32 cropped to the real tokens), ``target``, ``prob``,
    ``convergence_delta`` (``[example, layer]``), ``method``, ``n_steps``, ``n_steps_used`` (``[example,
    layer]``) and ``unconverged`` (``[example, layer]`` bool or ``None``). Load it with
    ``torch.load(path)``.

    Under DDP the integration work is split across ranks (``attribute(..., shard=(rank, world))``)
    and the partial maps are summed, so every rank ends with the single-process result.

    Args:
        n_examples: probe-set size.
        every_n_epochs: analyse every this many validation epochs (never during sanity checking).
        layers: layers to attribute (default all).
        n_steps: ``"auto"`` (adaptive, to a completeness tolerance of 1e-3) or a fixed step count.
        method: integration rule (see ``AttentionIntegratedGradients.attribute``).
        target: ``"predicted"`` (default) or ``"labels"``.
        internal_batch_size: rows per forward/backward pass (memory cap; results unchanged).
        log_images: log heatmaps and head grids (needs a TensorBoard logger; else skipped with a warning).
        log_histograms: log histograms of attribution values.
        max_image_examples: log images for at most this many probe examples.
        log_trees: also log an attribution-tree figure per image example (needs a TensorBoard logger
            and all layers attributed). Default ``False``.
        tree_tau: threshold of the attribution tree, in ``(0, 1]``. Default ``0.4``.
        save_dir: where maps are written; default ``<trainer.log_dir>/attributions``. Nothing is
            written under ``fast_dev_run`` (as Lightning does for checkpoints).
    """

    def __init__(
        self,
        n_examples: int = 2,
        every_n_epochs: int = 1,
        layers: list[int] | None = None,
        # core.attribution types DEFAULT_N_STEPS as int | str; its value is "auto"
        n_steps: int | Literal["auto"] = DEFAULT_N_STEPS,
        method: str = DEFAULT_METHOD,
        target: str = "predicted",
        internal_batch_size: int | None = None,
        log_images: bool = True,
        log_histograms: bool = True,
        max_image_examples: int = 2,
        save_dir: str | None = None,
        log_trees: bool = False,
        tree_tau: float = 0.4,
    ) -> None:
        super().__init__(every_n_epochs)
        check_positive_int("n_examples", n_examples)
        check_int("max_image_examples", max_image_examples, 0)
        check_positive_int("internal_batch_size", internal_batch_size, optional=True)
        # types and duplicates; the range is checked in `setup`
        chosen_layers = check_layers("AttributionMonitor.layers", layers)
        validate_n_steps(n_steps, allow_auto=True)
        method = validate_method(method)
        check_choice("target", target, _TARGETS)
        for name, flag in (("log_images", log_images), ("log_histograms", log_histograms), ("log_trees", log_trees)):
            check_bool(name, flag)
        tree_tau = check_number("tree_tau", tree_tau, 0.0, 1.0, low_open=True)
        if save_dir is not None and (not isinstance(save_dir, str) or not save_dir):
            raise ArgumentTypeError(f"Expected `save_dir` to be a directory path or None, but got {save_dir!r}.")
        self.n_examples = n_examples
        self.examples = ValExamples(n_examples)
        self.layers = None if chosen_layers is None else list(chosen_layers)
        self.n_steps = n_steps
        self.method = method
        self.target = target
        self.internal_batch_size = internal_batch_size
        self.log_images = log_images
        self.log_histograms = log_histograms
        self.max_image_examples = max_image_examples
        self.save_dir = save_dir
        self.log_trees = log_trees
        self.tree_tau = tree_tau
        self._n_model_layers: int | None = None
        self._tree_warned = False
        self.analyses_done = 0
        self.last_result: dict[str, Any] | None = None

    @property
    def probe(self) -> list[dict[str, Tensor]] | None:
        """The probe examples (per-example input dicts cropped to their tokens), once chosen."""
        return self.examples.rows

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(n_examples=self.n_examples, layers=self.layers, method=self.method)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # model, architecture and layer range, before any training
        self._n_model_layers = len(layer_modules(resolve_model(pl_module)))

    def _directory(self, trainer: pl.Trainer) -> Path:
        root = self.save_dir or os.path.join(trainer.log_dir or trainer.default_root_dir, "attributions")
        return Path(root)

    @override
    def analyse(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Attribute the probe set, log it, and save it as ``epoch=NNN.pt`` (rank zero)."""
        first = self.examples.rows is None
        self.examples.ensure(trainer, pl_module)
        directory = self._directory(trainer)  # on every rank: `trainer.log_dir` is a collective call
        result = self.attribute_probe(trainer, pl_module)
        self.analyses_done += 1
        self._log(trainer, pl_module, result)
        if trainer.is_global_zero and not is_fast_dev_run(trainer):  # like checkpoints: nothing written in a dry run
            directory.mkdir(parents=True, exist_ok=True)
            if first:
                torch.save(self.probe, directory / "probe.pt")
            torch.save(result, directory / f"epoch={trainer.current_epoch:03d}.pt")
        self.last_result = result

    def attribute_probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """Attribute the probe set (this rank's shard, then summed over ranks); the saved dict."""
        assert self.probe is not None
        model = resolve_model(pl_module)
        rank, size = world(trainer)
        batch = pad_examples(self.probe)
        result = AttentionIntegratedGradients(model).attribute(
            batch,
            target=self.target,
            layers=self.layers,
            n_steps=self.n_steps,
            method=self.method,
            internal_batch_size=self.internal_batch_size,
            return_convergence_delta=True,
            shard=(rank, size) if size > 1 else None,
            reduce=(lambda t: reduce_sum(trainer, t, pl_module.device)) if size > 1 else None,
        )
        assert result.convergence_delta is not None  # asked for above
        padded = reduce_sum(trainer, result.padded(), pl_module.device)  # [example, layer, head, q, k]
        delta = reduce_sum(trainer, result.convergence_delta, pl_module.device)  # [example, layer]
        lengths = [a.shape[-1] for a in result.attributions]
        tokenizer = resolve_tokenizer(trainer, pl_module)
        tokens = [tokens_of(tokenizer, row["input_ids"]) if "input_ids" in row else [] for row in self.probe]
        assert result.baseline_prob is not None
        return {
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "layers": list(result.layers),
            "tokens": tokens,
            "attributions": [padded[i, :, :, :n, :n].float().clone() for i, n in enumerate(lengths)],
            "target": result.target,
            "prob": result.prob,
            "baseline_prob": result.baseline_prob,
            "convergence_delta": delta,
            "method": result.method,
            "n_steps": result.n_steps,
            "n_steps_used": result.n_steps_used,
            "unconverged": result.unconverged,
        }

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, result: dict[str, Any]) -> None:
        # the relative error n_steps="auto" holds below its tolerance (recomputed: under DDP the delta is reduced here)
        scale = completeness_scale(result["prob"][:, None], result["baseline_prob"])
        gap = result["convergence_delta"].abs() / scale  # [example, layer]
        for li, layer in enumerate(result["layers"]):
            pl_module.log(f"attr/completeness_layer{layer}", float(gap[:, li].mean()), rank_zero_only=True)
            steps = result["n_steps_used"][:, li].double()  # integration nodes per probe example (adaptive: 3..63)
            pl_module.log(f"attr/steps_layer{layer}", float(steps.mean()), rank_zero_only=True)
        if not trainer.is_global_zero:
            return
        from lightning_attattr.plotting import head_grid, token_heatmap

        figures = FigureLogger(trainer)

        step = trainer.global_step
        for li, layer in enumerate(result["layers"]):
            if self.log_histograms:
                values = torch.cat([a[li].flatten() for a in result["attributions"]])
                figures.histogram(f"attr/values_layer{layer}", values, step)
            if not self.log_images:
                continue
            for i, attr in enumerate(result["attributions"][: self.max_image_examples]):
                tokens = result["tokens"][i] or None
                heat = token_heatmap(
                    attr[li].sum(0),
                    tokens or [str(j) for j in range(attr.shape[-1])],
                    title=f"layer {layer}, example {i}, {epoch_title(result['epoch'])}",
                )
                figures.image(f"attr/layer{layer}/example{i}", heat, step)
                grid = head_grid(attr[li], tokens=tokens, title=f"layer {layer}, example {i}")
                figures.image(f"attr_heads/layer{layer}/example{i}", grid, step)
        if self.log_trees:
            self._log_trees(figures, result, step)

    def _log_trees(self, figures: FigureLogger, result: dict[str, Any], step: int) -> None:
        """Log ``attr_tree/example{i}``: the attribution tree of each image example (all layers needed)."""
        if self._n_model_layers is not None and list(result["layers"]) != list(range(self._n_model_layers)):
            if not self._tree_warned:
                rank_zero_warn(
                    f"AttributionMonitor: `log_trees` needs all {self._n_model_layers} layers attributed, but "
                    f"`layers` is {result['layers']}; no attribution trees are logged."
                )
                self._tree_warned = True
            return
        from lightning_attattr.analysis.trees import build_tree
        from lightning_attattr.plotting import tree_figure

        for i, attr in enumerate(result["attributions"][: self.max_image_examples]):
            tokens = result["tokens"][i] or None
            tree = build_tree(attr.sum(1), tokens, tau=self.tree_tau)  # [layer, query_pos, key_pos]
            fig = tree_figure(tree, tokens, title=f"attribution tree, example {i}, {epoch_title(result['epoch'])}")
            figures.image(f"attr_tree/example{i}", fig, step)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"probe": self.probe, "analyses_done": self.analyses_done}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.examples.rows = state_dict.get("probe")
        self.analyses_done = int(state_dict.get("analyses_done", 0))
