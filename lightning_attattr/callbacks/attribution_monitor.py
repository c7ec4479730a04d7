"""Watch AttAttr maps of a fixed probe set evolve during training, in TensorBoard and on disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from typing_extensions import override

from lightning_attattr.analysis.settings import maps_reduction, reduction_record
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
    AttributionResult,
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
from lightning_attattr.core.reductions import TopK
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
    layer]``), ``unconverged`` (``[example, layer]`` bool or ``None``) and ``reduction`` (``None``).
    Load it with ``torch.load(path)``.

    **Reduced maps.** For long probes, ``rows`` or ``top_k`` reduce the maps while they are computed
    (``attribute(..., reduction=...)``), so the maps of all layers never exist at once. The file then
    holds, instead of ``attributions``: ``reduction`` (``{"rows": [...]}`` or ``{"top_k": k}``) and
    ``rows`` (per example ``[layer, head, rows, key_pos]``) with ``query_positions`` (``[example, rows]``,
    positions among each example's tokens), or ``top_values`` (per example ``[layer, k]``, signed,
    largest ``|attribution|`` first) with ``top_indices`` (per example ``[layer, k, 3]``: ``(head,
    query_pos, key_pos)``). The histograms hold the kept values; heatmaps, head grids and trees need
    full maps and are skipped (one warning says so).

    Under DDP the integration work is split across ranks (``attribute(..., shard=(rank, world))``)
    and the partial maps (or kept rows) are summed, so every rank ends with the single-process
    result. The largest edges of ``top_k`` do not add up over ranks: with ``top_k`` every rank
    attributes the whole probe set (the same result everywhere, no speed-up from more processes).

    Example:
        Keep the last token's row of every map (e.g. what a prompt's final position attends to):

        >>> monitor = AttributionMonitor(n_examples=4, rows=[-1])
        >>> monitor.reduction
        Rows(positions=(-1,))

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
        rows: keep only these query rows of every map: positions among each example's real tokens,
            negative from the end (``[-1]``: the last token). Default ``None``: full maps.
        top_k: keep only the ``k`` largest edges (by ``|attribution|``) of every (example, layer).
            Default ``None``: full maps. At most one of ``rows`` and ``top_k``.

    Raises:
        ValueError, TypeError: an option of the wrong type or range (one line naming it).
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
        rows: list[int] | None = None,
        top_k: int | None = None,
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
        self.reduction = maps_reduction(rows, top_k)
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
        self._figures_warned = False
        self.analyses_done = 0
        self.last_result: dict[str, Any] | None = None

    @property
    def probe(self) -> list[dict[str, Tensor]] | None:
        """The probe examples (per-example input dicts cropped to their tokens), once chosen."""
        return self.examples.rows

    @property
    @override
    def state_key(self) -> str:
        reduced = {} if self.reduction is None else {"reduction": reduction_record(self.reduction)}
        return self._generate_state_key(n_examples=self.n_examples, layers=self.layers, method=self.method, **reduced)

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
        # the top edges do not add up over shards: with `top_k` every rank attributes everything
        split = size > 1 and not isinstance(self.reduction, TopK)
        batch = pad_examples(self.probe)
        result = AttentionIntegratedGradients(model).attribute(
            batch,
            target=self.target,
            layers=self.layers,
            n_steps=self.n_steps,
            method=self.method,
            internal_batch_size=self.internal_batch_size,
            return_convergence_delta=True,
            shard=(rank, size) if split else None,
            reduce=(lambda t: reduce_sum(trainer, t, pl_module.device)) if split else None,
            reduction=self.reduction,
        )
        assert result.convergence_delta is not None and result.baseline_prob is not None  # asked for above
        delta = result.convergence_delta  # [example, layer]
        if split:
            delta = reduce_sum(trainer, delta, pl_module.device)
        tokenizer = resolve_tokenizer(trainer, pl_module)
        tokens = [tokens_of(tokenizer, row["input_ids"]) if "input_ids" in row else [] for row in self.probe]
        return {
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "layers": list(result.layers),
            "tokens": tokens,
            **self._maps(trainer, pl_module, result, split),
            "target": result.target,
            "prob": result.prob,
            "baseline_prob": result.baseline_prob,
            "convergence_delta": delta,
            "method": result.method,
            "n_steps": result.n_steps,
            "n_steps_used": result.n_steps_used,
            "unconverged": result.unconverged,
            "reduction": reduction_record(self.reduction),
        }

    @staticmethod
    def _maps(
        trainer: pl.Trainer, pl_module: pl.LightningModule, result: AttributionResult, split: bool
    ) -> dict[str, Any]:
        """The saved maps (or what the reduction kept) of the probe set, summed over ranks when ``split``."""

        def summed(maps: list[Tensor]) -> list[Tensor]:  # per example [..., key_pos], partial sums over shards
            if not split:
                return [m.float().clone() for m in maps]
            n = max(m.shape[-1] for m in maps)
            padded = torch.stack([nn.functional.pad(m, (0, n - m.shape[-1])) for m in maps])
            total = reduce_sum(trainer, padded, pl_module.device)
            return [total[i, ..., : m.shape[-1]].float().clone() for i, m in enumerate(maps)]

        reduced = result.reduced
        if reduced is None:
            lengths = [a.shape[-1] for a in result.attributions]
            padded = reduce_sum(trainer, result.padded(), pl_module.device)  # [example, layer, head, q, k]
            return {"attributions": [padded[i, :, :, :n, :n].float().clone() for i, n in enumerate(lengths)]}
        if reduced.rows is not None:
            return {"rows": summed(reduced.rows), "query_positions": reduced.query_positions}
        assert reduced.top_values is not None and reduced.top_indices is not None  # the only other reduction
        return {"top_values": [v.float() for v in reduced.top_values], "top_indices": list(reduced.top_indices)}

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, result: dict[str, Any]) -> None:
        # the relative error n_steps="auto" holds below its tolerance (recomputed: under DDP the delta is reduced here)
        scale = completeness_scale(result["prob"][:, None], result["baseline_prob"])
        gap = result["convergence_delta"].abs() / scale  # [example, layer]
        for li, layer in enumerate(result["layers"]):
            pl_module.log(f"attr/completeness_layer{layer}", float(gap[:, li].mean()), rank_zero_only=True)
            steps = result["n_steps_used"][:, li].double()  # nodes per probe example (adaptive: 3 to max_steps)
            pl_module.log(f"attr/steps_layer{layer}", float(steps.mean()), rank_zero_only=True)
        if not trainer.is_global_zero:
            return
        from lightning_attattr.plotting import head_grid, token_heatmap

        figures = FigureLogger(trainer)
        kept = result.get("attributions")
        if kept is None:  # reduced: what was kept, per example [layer, ...]
            kept = result["rows"] if "rows" in result else result["top_values"]
            if (self.log_images or self.log_trees) and not self._figures_warned:
                rank_zero_warn(
                    "AttributionMonitor: heatmaps, head grids and trees draw full maps, but the maps are reduced "
                    f"({reduction_record(self.reduction)}); only the histograms of the kept values are logged."
                )
                self._figures_warned = True
        step = trainer.global_step
        for li, layer in enumerate(result["layers"]):
            if self.log_histograms:
                values = torch.cat([a[li].flatten() for a in kept])
                figures.histogram(f"attr/values_layer{layer}", values, step)
            if not self.log_images or "attributions" not in result:
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
        if self.log_trees and "attributions" in result:
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
