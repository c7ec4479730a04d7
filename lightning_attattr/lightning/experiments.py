"""The experiments of ``analyze.py`` on one model: ``attribute``, ``heads`` and ``effectiveness``.

Each runner takes a :class:`~lightning_attattr.lightning.job.Job` (the trainer, whose strategy decides
how many processes share the work, the Hugging Face model, the data module and an open
:class:`~lightning_attattr.analysis.store.ResultsFolder`) and the subcommand's settings
(:mod:`lightning_attattr.analysis.settings`). It runs the per-example work through
:meth:`~lightning_attattr.lightning.job.Job.examples` (resumable, distributed) and writes the results
folder on rank zero: JSON, CSV, PNG/SVG plots and TensorBoard events. The maths lives in
:mod:`lightning_attattr.core` and :mod:`lightning_attattr.analysis`.

``run_heads`` reads top-down as its stages: the per-example importance records
(:func:`_importance_records`), the dev set under every pruning mask (:func:`_pruning_predictions`),
then the outputs (:func:`_write_importance`, :func:`_write_pruning`, :func:`_plot_heads`) and, when
asked, :func:`_structural`.
"""

from __future__ import annotations

import copy
import functools
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lightning_attattr.analysis.edges import real_positions
from lightning_attattr.analysis.effectiveness import CURVES, effectiveness_curves, effectiveness_masks
from lightning_attattr.analysis.heads import (
    RECORD_KEYS,
    curve_summary,
    importance_from_records,
    pruning_plan,
    random_name,
    task_metrics,
)
from lightning_attattr.analysis.settings import (
    AttributeSettings,
    EffectivenessSettings,
    HeadsSettings,
    Integration,
    reduction_record,
)
from lightning_attattr.analysis.store import (
    ResultsFolder,
    atomic_write,
    load_tensors,
    save_figure,
    save_tensors,
    write_csv,
    write_json,
)
from lightning_attattr.core.adapter import attention_scope, layer_modules
from lightning_attattr.core.attribution import AttentionIntegratedGradients, AttributionResult, model_logits
from lightning_attattr.core.checks import ArgumentError
from lightning_attattr.core.families import kv_head_count
from lightning_attattr.core.importance import (
    attention_weight_importance,
    attribution_head_scores,
    heads_to_prune,
    pruning_order,
    taylor_importance,
)
from lightning_attattr.core.pruning import count_parameters, prune_heads
from lightning_attattr.core.reductions import POOLINGS, HeadScores, Pooling, Rows, TopK
from lightning_attattr.lightning.analysis import model_inputs
from lightning_attattr.lightning.job import Examples, Job

#: the per-batch work of :meth:`Job.examples`: the model and a collated batch in, the batch's records out
_Step = Callable[[nn.Module, dict[str, Tensor]], dict[str, Any]]


def model_shape(model: nn.Module) -> tuple[int, int]:
    """``(n_layers, n_heads)`` of a supported model (raises for unsupported architectures)."""
    config: Any = model.config
    return len(layer_modules(model)), int(config.num_attention_heads)


def dev_split(datamodule: Any) -> str:
    """The first validation split of the data module (``validation``, or MNLI's ``validation_matched``)."""
    names = getattr(datamodule, "val_split_names", None)
    return names[0] if names else "validation"


def check_n_examples(name: str, n: int | None, available: int, split: str) -> int:
    """``n`` (``None`` = all), checked against the split's size before any work starts."""
    if n is None:
        return available
    if n > available:
        raise ArgumentError(f"Expected `{name}` to be at most {available} (the {split} set's size), but got {n}.")
    return n


def check_dev_size(datamodule: Any, **counts: int | None) -> None:
    """Example counts (``name=n``) checked against the dev split before any work (a refused run writes nothing)."""
    split = dev_split(datamodule)
    size = len(datamodule.dataset(split))
    for name, n in counts.items():
        check_n_examples(name, n, size, split)


def _predict_all(model: nn.Module, batch: Mapping[str, Tensor], masks: Tensor, chunk_rows: int = 512) -> Tensor:
    """Predicted class ``[batch, mask]`` under each ``[mask, layer, head]`` head mask (int16)."""
    inputs = model_inputs(batch)
    n, m = len(next(iter(inputs.values()))), len(masks)
    per_chunk = max(1, chunk_rows // max(n, 1))
    preds = []
    with torch.no_grad(), attention_scope(model) as ctrl:
        for start in range(0, m, per_chunk):
            sub = masks[start : start + per_chunk].to(next(model.parameters()).device)
            k = len(sub)
            rows = {key: value.repeat(k, *[1] * (value.dim() - 1)) for key, value in inputs.items()}  # mask-major
            with ctrl.masked(sub.repeat_interleave(n, dim=0)):
                logits = model_logits(model, rows)
            preds.append(logits.argmax(-1).view(k, n).T)
    return torch.cat(preds, dim=1).to(torch.int16).cpu()


def _attribute(
    ig: AttentionIntegratedGradients, inputs: Mapping[str, Any], integration: Integration, **kwargs: Any
) -> AttributionResult:
    """``ig.attribute`` with the run's integration and the convergence fields filled."""
    return ig.attribute(inputs, **integration.kwargs(), return_convergence_delta=True, **kwargs)


class _TensorBoard:
    """Rank zero's TensorBoard writer under ``<folder>/tensorboard`` (nothing on other ranks)."""

    def __init__(self, folder: ResultsFolder) -> None:
        self.writer = None
        if folder.main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(folder.file("tensorboard/x").parent))

    def scalar(self, tag: str, value: float, step: int = 0) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def figure(self, tag: str, fig: Any) -> None:
        if self.writer is not None:
            self.writer.add_figure(tag, fig, close=False)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _save_plot(folder: ResultsFolder, tb: _TensorBoard, name: str, fig: Any) -> None:
    tb.figure(name, fig)
    save_figure(fig, folder.file(f"plots/{name}"))


# ============================================================================ heads
@dataclass(frozen=True)
class _HeadsRun:
    """What the stages of one ``heads`` run share: the job, its settings, the dev split and its checked sizes."""

    job: Job
    settings: HeadsSettings
    split: str
    dataset: Any
    n_layers: int
    n_heads: int
    n_examples: int  # examples that score the heads
    n_eval: int  # examples of the pruning curves
    tb: _TensorBoard
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def start(cls, job: Job, settings: HeadsSettings) -> _HeadsRun:
        """The model's shape and the dev split; the example counts checked before any work; TensorBoard opened."""
        n_layers, n_heads = model_shape(job.model)
        split = dev_split(job.datamodule)
        dataset = job.datamodule.dataset(split)
        n_examples = check_n_examples("n_examples", settings.n_examples, len(dataset), split)
        n_eval = check_n_examples("max_eval_examples", settings.max_eval_examples, len(dataset), split)
        tb = _TensorBoard(job.folder)
        return cls(job, settings, split, dataset, n_layers, n_heads, n_examples, n_eval, tb)


def run_heads(
    job: Job,
    settings: HeadsSettings,
    *,
    transfer_from: Mapping[str, Tensor],
    task: str | None,
    metric_names: Sequence[str],
) -> dict[str, Any]:
    """Head importance by every method on the first ``n_examples`` dev examples, then pruning curves on the dev set.

    Args:
        job: the trainer, model, data module and results folder.
        settings: the ``heads`` options (methods, fractions, seeds, integration, batch sizes, ...).
        transfer_from: other models' ``[layer, head]`` AttAttr importance by name, pruned with as well
            (shapes checked by the caller before any work).
        task: the task's name, for plot titles (``None``: "task").
        metric_names: the task's metrics of the pruning curves (``acc``, ``mcc``, ...).

    Returns:
        ``timings``; on rank zero also ``structural`` (when asked), ``curves`` (their summaries),
        ``n_examples`` and ``n_eval_examples``.
    """
    run = _HeadsRun.start(job, settings)
    records = _importance_records(run)  # stage 1: per-example importance records
    importances = importance_from_records(records, settings.methods, run.n_layers, run.n_heads, settings.random_seeds)
    for name, vector in transfer_from.items():  # shapes checked by the caller before any work
        importances[f"transfer:{name}"] = vector.double()
    masks, mask_index, removed = pruning_plan(importances, settings.fractions)
    per_mask = _pruning_predictions(run, masks, metric_names)  # stage 2: the dev set under every mask
    result: dict[str, Any] = {"timings": run.timings}
    if not job.folder.main:
        return result
    _write_importance(run, importances, records)
    curves = _pruning_curves(settings, mask_index, per_mask)
    summaries = _write_pruning(run, mask_index, removed, per_mask, curves)
    _plot_heads(run, curves, list(per_mask[0]), importances, task)
    if settings.structural:
        result["structural"] = _structural(run, importances)
    run.tb.close()
    result.update({"curves": summaries, "n_examples": run.n_examples, "n_eval_examples": run.n_eval})
    return result


def _importance_records(run: _HeadsRun) -> dict[str, Any]:
    """Stage 1: what every chosen method needs, per example of the first ``n_examples`` (timed)."""
    step = _importance_step(run)
    start = time.perf_counter()
    records = run.job.examples("importance", run.dataset, range(run.n_examples), run.settings.batch_size, step)
    run.timings["importance_s"] = time.perf_counter() - start
    return records


def _importance_step(run: _HeadsRun) -> _Step:
    """The per-batch work of stage 1: the records (``RECORD_KEYS``) of the chosen methods, gold labels."""
    keys = {k for m in run.settings.methods for k in RECORD_KEYS[m]}
    poolings: list[Pooling] = [p for p in POOLINGS if f"attattr_{p}" in keys]
    ig = AttentionIntegratedGradients(run.job.model)
    integration = run.settings.integration

    def importance_step(net: nn.Module, batch: dict[str, Tensor]) -> dict[str, Any]:
        labels = batch["labels"]
        inputs = model_inputs(batch)
        out: dict[str, Any] = {}
        if poolings:
            result, scores = _head_scores(ig, {**inputs, "labels": labels}, integration, poolings)
            out.update({f"attattr_{pooling}": s.float().cpu() for pooling, s in scores.items()})
            out["completeness_error"] = result.require("completeness_error").float().cpu()
            out["n_steps_used"] = result.require("n_steps_used").cpu()
        if "taylor" in keys:
            out["taylor"] = taylor_importance(net, inputs).double()
        if "taylor_michel" in keys:
            out["taylor_michel"] = taylor_importance(net, inputs, variant="michel", labels=labels).double()
        if "attention" in keys:
            out["attention"] = attention_weight_importance(net, inputs).float()
        if "correct" in keys:
            preds = _predict_all(net, inputs, _single_head_masks(run.n_layers, run.n_heads))  # [batch, 1 + L*H]
            correct = preds == labels.cpu()[:, None]
            out["correct"], out["correct_masked"] = correct[:, 0], correct[:, 1:]
        return out

    return importance_step


def _head_scores(
    ig: AttentionIntegratedGradients, inputs: Mapping[str, Any], integration: Integration, poolings: Sequence[Pooling]
) -> tuple[AttributionResult, dict[Pooling, Tensor]]:
    """The gold label's ``[batch, layer, head]`` head scores of each pooling, and the result they come from.

    One pooling is computed with ``reduction=HeadScores(pooling)``: each layer's maps are pooled as
    soon as they are done, so the maps of all layers never exist at once. Several poolings share one
    attribution with full maps, pooled each way: a reduction per pooling would repeat the whole
    integration (about 2.6x the time for the three poolings, for about 40% less peak memory).
    """
    if len(poolings) == 1:
        result = _attribute(ig, inputs, integration, target="labels", reduction=HeadScores(poolings[0]))
        assert result.reduced is not None and result.reduced.head_scores is not None  # asked for above
        return result, {poolings[0]: result.reduced.head_scores}
    result = _attribute(ig, inputs, integration, target="labels")
    return result, {pooling: attribution_head_scores(result, pooling) for pooling in poolings}


def _single_head_masks(n_layers: int, n_heads: int) -> Tensor:
    """``[1 + L*H, layer, head]``: no head masked, then each head masked alone (the accuracy difference)."""
    single = torch.ones(n_layers * n_heads + 1, n_layers, n_heads)
    single[1:].view(-1, n_layers * n_heads)[torch.arange(n_layers * n_heads), torch.arange(n_layers * n_heads)] = 0
    return single


def _pruning_predictions(run: _HeadsRun, masks: Tensor, metric_names: Sequence[str]) -> list[dict[str, float]]:
    """Stage 2: the first ``n_eval`` dev examples under every head mask (timed); the metrics per mask."""
    _save_pruning_plan(run.job.folder, masks)

    def pruning_step(net: nn.Module, batch: dict[str, Tensor]) -> dict[str, Any]:
        return {"preds": _predict_all(net, batch, masks), "labels": batch["labels"].cpu()}

    start = time.perf_counter()
    evaluated = run.job.examples("pruning", run.dataset, range(run.n_eval), run.settings.eval_batch_size, pruning_step)
    run.timings["pruning_s"] = time.perf_counter() - start
    labels = evaluated["labels"]
    config: Any = run.job.model.config
    num_labels = int(config.num_labels)
    return [task_metrics(evaluated["preds"][:, j], labels, metric_names, num_labels) for j in range(len(masks))]


def _save_pruning_plan(folder: ResultsFolder, masks: Tensor) -> None:
    """Record the masks beside the pruning parts; parts of another plan (another ranking) are dropped."""
    store = folder.parts("pruning")
    if folder.main:
        plan_file = store.path / "masks.safetensors"
        if plan_file.exists() and not torch.equal(load_tensors(plan_file).get("masks", torch.empty(0)), masks):
            store.clear()  # the ranking changed (other importance): earlier predictions do not apply
        if not plan_file.exists():
            store.path.mkdir(parents=True, exist_ok=True)
            save_tensors(plan_file, {"masks": masks})


def _write_importance(run: _HeadsRun, importances: Mapping[str, Tensor], records: Mapping[str, Any]) -> None:
    """``importance.json`` (every method's ``[layer, head]`` scores, the integration) and ``importance.csv``."""
    folder = run.job.folder
    write_json(
        folder.file("importance.json"),
        {
            "n_layers": run.n_layers,
            "n_heads": run.n_heads,
            "n_examples": run.n_examples,
            "split": run.split,
            "target": "gold label",
            "integration": run.settings.integration.kwargs(),
            "importance": {k: v.tolist() for k, v in importances.items()},
            "completeness_error_max": float(records["completeness_error"].max())
            if "completeness_error" in records
            else None,
            "n_steps_used_mean": float(records["n_steps_used"].double().mean()) if "n_steps_used" in records else None,
        },
    )
    rows = []
    for name, vector in importances.items():
        rank_of: dict[tuple[int, int], int] = {head: r for r, head in enumerate(pruning_order(vector))}
        for layer in range(run.n_layers):
            for head in range(run.n_heads):
                rows.append([name, layer, head, float(vector[layer, head]), rank_of[(layer, head)]])
    write_csv(folder.file("importance.csv"), ["method", "layer", "head", "score", "prune_order"], rows)


def _pruning_curves(
    settings: HeadsSettings, mask_index: Mapping[str, list[int]], per_mask: Sequence[Mapping[str, float]]
) -> dict[str, dict[str, list[float]]]:
    """Each method's metric per fraction; the random seeds' curves also as ``random``: mean, std, min, max."""
    curves: dict[str, dict[str, list[float]]] = {}
    for name, idx in mask_index.items():
        curves[name] = {m: [per_mask[j][m] for j in idx] for m in per_mask[0]}
    random_names = [random_name(s) for s in settings.random_seeds if random_name(s) in curves]
    if random_names:
        for m in per_mask[0]:
            values = torch.tensor([curves[r][m] for r in random_names], dtype=torch.float64)
            curves.setdefault("random", {})[m] = values.mean(0).tolist()
            curves["random"][f"{m}_std"] = (values.std(0) if len(random_names) > 1 else values[0] * 0).tolist()
            curves["random"][f"{m}_min"] = values.min(0).values.tolist()
            curves["random"][f"{m}_max"] = values.max(0).values.tolist()
    return curves


def _write_pruning(
    run: _HeadsRun,
    mask_index: Mapping[str, list[int]],
    removed: Sequence[int],
    per_mask: Sequence[Mapping[str, float]],
    curves: Mapping[str, Mapping[str, list[float]]],
) -> dict[str, dict[str, dict[str, float]]]:
    """``pruning.json`` (the curves and their summaries) and ``pruning.csv``; returns the summaries."""
    folder, fractions = run.job.folder, run.settings.fractions
    summaries = {name: {m: curve_summary(fractions, c[m]) for m in per_mask[0]} for name, c in curves.items()}
    write_json(
        folder.file("pruning.json"),
        {
            "fractions": list(fractions),
            "heads_removed": removed,
            "n_eval_examples": run.n_eval,
            "split": run.split,
            "unpruned": per_mask[mask_index[next(iter(mask_index))][0]] if fractions[0] == 0 else None,
            "curves": curves,
            "summary": summaries,
            "summary_definition": "auc: trapezoid area over the fractions; max_fraction_within: largest fraction r "
            "such that the metric stays >= unpruned - 0.01 at every fraction up to r",
        },
    )
    rows = []
    for name, idx in mask_index.items():
        for i, j in enumerate(idx):
            rows.append([name, fractions[i], removed[i], *[per_mask[j][m] for m in per_mask[0]]])
    write_csv(folder.file("pruning.csv"), ["method", "fraction", "heads_removed", *per_mask[0]], rows)
    return summaries


def _plot_heads(
    run: _HeadsRun,
    curves: Mapping[str, Mapping[str, list[float]]],
    metrics: Sequence[str],
    importances: Mapping[str, Tensor],
    task: str | None,
) -> None:
    """Pruning curves per metric (random seeds as one band) and importance heatmaps: PNG/SVG and TensorBoard."""
    from lightning_attattr.plotting import importance_heatmap, pruning_curve

    folder, fractions = run.job.folder, run.settings.fractions
    shown = {n: c for n, c in curves.items() if not n.startswith("random_s")}
    for metric in metrics:
        bands = {}
        if "random" in shown:
            bands["random"] = (shown["random"][f"{metric}_min"], shown["random"][f"{metric}_max"])
        fig = pruning_curve(
            list(fractions),
            {n: c[metric] for n, c in shown.items()},
            metric_name=metric,
            title=f"{task or 'task'}: pruning lowest-ranked heads first ({run.n_eval} dev)",
            bands=bands,
        )
        _save_plot(folder, run.tb, f"pruning_{metric}", fig)
        for name, c in shown.items():
            for f, v in zip(fractions, c[metric]):
                run.tb.scalar(f"pruning/{metric}/{name}", v, int(round(f * 100)))
    for name, vector in importances.items():
        if name.startswith("random_s"):
            continue
        fig = importance_heatmap(vector, title=f"{name} head importance")
        _save_plot(folder, run.tb, f"importance_{name.replace(':', '_')}", fig)


def _structural(run: _HeadsRun, importances: Mapping[str, Tensor]) -> dict[str, Any]:
    """Structural pruning by the first AttAttr ranking (else the first method); ``structural.json`` (timed)."""
    start = time.perf_counter()
    primary = next((n for n in importances if n.startswith("attattr")), next(iter(importances)))
    collator = run.job.datamodule.collator
    structural = structural_pruning(run.job.model, importances[primary], run.settings, run.dataset, collator)
    structural["ranking"] = primary
    write_json(run.job.folder.file("structural.json"), structural)
    run.timings["structural_s"] = time.perf_counter() - start
    return structural


def structural_pruning(
    model: nn.Module, importance: Tensor, settings: HeadsSettings, dataset: Any, collator: Any
) -> dict[str, Any]:
    """Remove the heads physically per fraction; parameter counts and measured inference latency.

    Latency: the first ``latency_batches`` dev batches (of ``eval_batch_size`` examples), timed
    ``latency_repeats`` times per model with the models interleaved (so drifting machine load hits all
    alike); the median per model, and its ratio to the unpruned model.

    Args:
        model: the unpruned model (left unchanged: each fraction prunes a copy).
        importance: ``[layer, head]`` ranking, lowest removed first.
        settings: ``fractions``, ``eval_batch_size``, ``latency_batches`` and ``latency_repeats``.
        dataset: the dev examples that are timed.
        collator: makes a batch of examples.

    Returns:
        ``batches``, ``batch_size``, ``repeats``, ``device`` and ``rows``: one per fraction (parameters,
        latency), then those skipped because they would remove every head of a layer.
    """
    batch_size, repeats = settings.eval_batch_size, settings.latency_repeats
    batches = _latency_batches(dataset, collator, batch_size, settings.latency_batches)
    device = next(model.parameters()).device
    variants, skipped = _pruned_copies(model, importance, settings.fractions)
    times = _latencies(variants, batches, repeats, device)
    base_params = count_parameters(model)
    base_time = statistics.median(times[0]) if settings.fractions[0] == 0 else None
    rows = []
    for (fraction, n_removed, net), t in zip(variants, times):
        median = statistics.median(t)
        rows.append(
            {
                "fraction": fraction,
                "heads_removed": n_removed,
                "parameters": count_parameters(net),
                "parameters_ratio": count_parameters(net) / base_params,
                "latency_median_s": median,
                "latency_ratio": median / base_time if base_time else None,
            }
        )
    return {
        "batches": len(batches),
        "batch_size": batch_size,
        "repeats": repeats,
        "device": str(device),
        "rows": rows + skipped,
    }


def _latency_batches(dataset: Any, collator: Any, batch_size: int, n_batches: int) -> list[dict[str, Tensor]]:
    """The model inputs of the first ``n_batches`` batches of ``dataset``."""
    batches = []
    for start in range(0, min(len(dataset), n_batches * batch_size), batch_size):
        batch = collator([dict(dataset[i]) for i in range(start, min(len(dataset), start + batch_size))])
        batches.append(model_inputs(batch))
    return batches


def _pruned_copies(
    model: nn.Module, importance: Tensor, fractions: Sequence[float]
) -> tuple[list[tuple[float, int, nn.Module]], list[dict[str, Any]]]:
    """``(fraction, heads removed, pruned copy)`` per fraction, and the rows of fractions that would empty a layer."""
    variants = []
    skipped = []
    n_heads = importance.shape[1]
    groups = kv_head_count(model.config)  # a grouped-query model loses whole key/value groups
    for fraction in fractions:
        heads = heads_to_prune(importance, fraction, groups)
        emptied = [layer for layer, h in heads.items() if len(h) >= n_heads]
        if emptied:  # a layer without any head has no attention projection left: masking only
            skipped.append(
                {
                    "fraction": fraction,
                    "heads_removed": sum(len(h) for h in heads.values()),
                    "skipped": f"removes every head of layer(s) {emptied}",
                }
            )
            continue
        pruned = copy.deepcopy(model).eval()
        if heads:
            prune_heads(pruned, heads)
        variants.append((fraction, sum(len(h) for h in heads.values()), pruned))
    return variants, skipped


def _latencies(
    variants: Sequence[tuple[float, int, nn.Module]],
    batches: Sequence[Mapping[str, Tensor]],
    repeats: int,
    device: torch.device,
) -> list[list[float]]:
    """Seconds per pass over ``batches``, ``repeats`` times per variant, the variants interleaved.

    The batches are moved to ``device`` once, before the clock starts: the times are the models' alone.
    """
    times: list[list[float]] = [[] for _ in variants]
    on_device = [{key: v.to(device) for key, v in inputs.items()} for inputs in batches]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    with torch.no_grad():
        for _ in range(repeats):
            for k, (_, _, net) in enumerate(variants):
                begin = time.perf_counter()
                for inputs in on_device:
                    net(**inputs)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[k].append(time.perf_counter() - begin)
    return times


# ============================================================================ effectiveness
def run_effectiveness(job: Job, settings: EffectivenessSettings, *, task: str | None) -> dict[str, Any]:
    """Paper section 4.1: per-example rankings by AttAttr vs attention, k heads pruned per layer, four curves.

    Args:
        job: the trainer, model, data module and results folder.
        settings: the ``effectiveness`` options (example count, integration, batch size).
        task: the task's name, for the plot title (``None``: "task").

    Returns:
        On rank zero ``timings``, ``curves`` (accuracy per ``k``) and ``n_examples``; ``{}`` elsewhere.
    """
    _, n_heads = model_shape(job.model)
    split = dev_split(job.datamodule)
    dataset = job.datamodule.dataset(split)
    n_examples = check_n_examples("n_examples", settings.n_examples, len(dataset), split)
    step = _effectiveness_step(AttentionIntegratedGradients(job.model), settings.integration, n_heads)
    start = time.perf_counter()
    records = job.examples("effectiveness", dataset, range(n_examples), settings.batch_size, step)
    seconds = time.perf_counter() - start
    if not job.folder.main:
        return {}
    curves = effectiveness_curves(records["correct"])
    ks = list(range(n_heads + 1))
    write_json(
        job.folder.file("effectiveness.json"),
        {
            "split": split,
            "n_examples": n_examples,
            "heads_pruned_per_layer": ks,
            "curves": curves,
            "definition": "per example, heads ranked within each layer by that example's max-pooled AttAttr score "
            "(gold label) or largest attention probability; k heads pruned in every layer, largest or smallest first",
            "completeness_error_max": float(records["completeness_error"].max()),
        },
    )
    write_csv(
        job.folder.file("effectiveness.csv"),
        ["k_per_layer", *CURVES],
        [[k, *[curves[c][k] for c in CURVES]] for k in ks],
    )
    _plot_effectiveness(job.folder, ks, curves, f"{task or 'task'}: effectiveness ({n_examples} dev examples)")
    return {"timings": {"effectiveness_s": seconds}, "curves": curves, "n_examples": n_examples}


def _effectiveness_step(ig: AttentionIntegratedGradients, integration: Integration, n_heads: int) -> _Step:
    """Per example: max-pooled AttAttr and attention scores, and correctness with ``k`` heads pruned per curve."""

    def step(net: nn.Module, batch: dict[str, Tensor]) -> dict[str, Any]:
        labels = batch["labels"]
        inputs = model_inputs(batch)
        result, scores = _head_scores(ig, {**inputs, "labels": labels}, integration, ["max"])
        attattr = scores["max"].float().cpu()  # [batch, L, H]
        attention = attention_weight_importance(net, inputs).float()
        correct = []
        for i in range(len(labels)):
            one = {k: v[i : i + 1] for k, v in inputs.items()}
            masks = effectiveness_masks(attattr[i], attention[i]).flatten(0, 1)  # [4 * (H+1), L, H]
            preds = _predict_all(net, one, masks)[0].view(len(CURVES), n_heads + 1)
            correct.append(preds == labels[i].cpu())
        return {
            "attattr": attattr,
            "attention": attention,
            "correct": torch.stack(correct),
            "completeness_error": result.require("completeness_error").float().cpu(),
        }

    return step


def _plot_effectiveness(folder: ResultsFolder, ks: list[int], curves: Mapping[str, list[float]], title: str) -> None:
    """The four curves against ``k``: PNG/SVG and TensorBoard."""
    from lightning_attattr.plotting import pruning_curve

    tb = _TensorBoard(folder)
    fig = pruning_curve(
        ks, curves, metric_name="accuracy", xlabel="heads pruned in every layer", percent=False, title=title
    )
    _save_plot(folder, tb, "effectiveness", fig)
    for name, values in curves.items():
        for k, v in zip(ks, values):
            tb.scalar(f"effectiveness/{name}", v, k)
    tb.close()


# ============================================================================ attribute
def check_attribute_examples(settings: AttributeSettings, examples: Examples) -> None:
    """``rows`` checked against every chosen example's tokens, before any work (a refused run writes nothing).

    Raises:
        ArgumentError: a position of ``rows`` outside an example's tokens.
    """
    reduction = settings.reduction()
    if not isinstance(reduction, Rows):
        return
    for name, tokens in zip(examples.names, examples.tokens, strict=True):
        n = len(tokens)
        bad = [p for p in reduction.positions if not -n <= p < n]
        if bad:
            raise ArgumentError(
                f"Expected `rows` within every example's tokens ([{-n}, {n - 1}] for {name!r}, {n} tokens), "
                f"but got {bad}."
            )


def run_attribute(job: Job, settings: AttributeSettings, examples: Examples) -> dict[str, Any]:
    """AttAttr maps of chosen examples, saved per example (``examples/<name>.pt``) with an index and plots.

    Each example file also holds ``attention``: the raw attention probabilities of the attributed
    layers, ``[layer, head, n, n]`` over the real tokens (what the report shows beside the maps).

    With ``rows`` or ``top_k`` (:meth:`AttributeSettings.reduction`) the maps are reduced while they are
    computed and the file holds, instead of ``attributions``: ``reduction`` (``{"rows": [...]}`` or
    ``{"top_k": k}``, also in ``attributions.json``) and either ``rows`` ``[layer, head, rows, n]`` with
    ``query_positions`` ``[rows]`` (the positions among the ``n`` tokens), or ``top_values`` ``[layer, k]``
    (signed, largest ``|attribution|`` first) with ``top_indices`` ``[layer, k, 3]`` ``(head, query_pos,
    key_pos)``; ``attention`` is reduced the same way (its rows, or its values at the top edges).

    Args:
        job: the trainer, model, data module and results folder.
        settings: the ``attribute`` options (target, layers, reduction, integration, batch size, plots).
        examples: the chosen examples, tokenized (their items are attributed in order).

    Returns:
        On rank zero ``timings`` and ``n_examples``; ``{}`` elsewhere.
    """
    check_attribute_examples(settings, examples)
    step = _attribute_step(AttentionIntegratedGradients(job.model), settings)
    start = time.perf_counter()
    indices = list(range(len(examples.items)))
    records = job.examples("attribute", examples.items, indices, settings.batch_size, step)
    seconds = time.perf_counter() - start
    if not job.folder.main:
        return {}
    kept = _MAP_KEYS[type(settings.reduction())]
    index = []
    for row, name in enumerate(examples.names):
        item = _index_item(records, row, name, examples)
        payload = {**item, **{key: records[key][row] for key in kept}, "attention": records["attention"][row]}
        if settings.reduction() is not None:
            payload["reduction"] = reduction_record(settings.reduction())
        atomic_write(job.folder.file(item["file"]), functools.partial(torch.save, payload), binary=True)
        index.append(item)
        if settings.plots:  # full maps only (checked with the settings)
            _plot_example(job.folder, item, records["attributions"][row])
    integration = settings.integration
    write_json(
        job.folder.file("attributions.json"),
        {
            "examples": index,
            "n_steps": integration.n_steps,
            "method": integration.method,
            "reduction": reduction_record(settings.reduction()),
        },
    )
    return {"timings": {"attribute_s": seconds}, "n_examples": len(index)}


#: the per-example map records of each kind of reduction (``NoneType``: the full maps)
_MAP_KEYS: dict[type, tuple[str, ...]] = {
    type(None): ("attributions",),
    Rows: ("rows", "query_positions"),
    TopK: ("top_values", "top_indices"),
}


def _attribute_step(ig: AttentionIntegratedGradients, settings: AttributeSettings) -> _Step:
    """Per example: the class probabilities, the AttAttr maps of the chosen layers (or their reduction), attention."""
    reduction = settings.reduction()

    def step(net: nn.Module, batch: dict[str, Tensor]) -> dict[str, Any]:
        inputs = model_inputs(batch)
        with torch.no_grad(), attention_scope(net) as ctrl, ctrl.capturing() as captured:
            probs = torch.softmax(model_logits(net, inputs).float(), -1).cpu()
        attention = torch.stack([captured[layer] for layer in sorted(captured)], 1)  # [batch, layer, head, q, k]
        positions = [pos.to(attention.device) for pos in real_positions(inputs)]
        chosen: Any = settings.target
        if settings.target == "labels":
            chosen = batch["labels"]
        result = _attribute(
            ig, inputs, settings.integration, target=chosen, layers=settings.layers, reduction=reduction
        )
        real_attention = [  # [layer, head, n, n] per example
            attention[row][list(result.layers)][:, :, pos][:, :, :, pos].float().cpu()
            for row, pos in enumerate(positions)
        ]
        out = {
            "attention": real_attention,
            "target": result.target.cpu(),
            "probs": probs,
            "convergence_delta": result.require("convergence_delta").float().cpu(),
            "completeness_error": result.require("completeness_error").float().cpu(),
            "n_steps_used": result.require("n_steps_used").cpu(),
            "layers": [list(result.layers)] * len(result.target),
        }
        out.update(_map_records(result, real_attention))
        return out

    return step


def _map_records(result: AttributionResult, attention: list[Tensor]) -> dict[str, Any]:
    """The maps of ``result`` per example (or what its reduction kept), and ``attention`` reduced the same way."""
    reduced = result.reduced
    if reduced is None:
        return {"attributions": [a.float().cpu() for a in result.attributions]}
    if reduced.rows is not None:
        assert reduced.query_positions is not None  # filled with the rows
        where = [p.cpu() for p in reduced.query_positions]  # [rows] per example
        return {
            "rows": [r.float() for r in reduced.rows],  # [layer, head, rows, n]
            "query_positions": where,
            "attention": [a[:, :, p] for a, p in zip(attention, where, strict=True)],
        }
    assert reduced.top_values is not None and reduced.top_indices is not None  # the only other reduction asked for
    top_attention = []
    for a, at in zip(attention, reduced.top_indices, strict=True):  # at: [layer, k, 3]
        layer = torch.arange(a.shape[0])[:, None].expand(-1, at.shape[1])  # [layer, k]
        top_attention.append(a[layer, at[..., 0], at[..., 1], at[..., 2]])  # [layer, k]
    return {
        "top_values": [v.float() for v in reduced.top_values],
        "top_indices": list(reduced.top_indices),
        "attention": top_attention,
    }


def _index_item(records: Mapping[str, Any], row: int, name: str, examples: Examples) -> dict[str, Any]:
    """The ``attributions.json`` entry of example ``row`` (also the head of its ``examples/<name>.pt``)."""
    item = {
        "name": name,
        "tokens": examples.tokens[row],
        "layers": records["layers"][row],
        "target": int(records["target"][row]),
        "probs": records["probs"][row].tolist(),
        "predicted": int(records["probs"][row].argmax()),
        "completeness_error": records["completeness_error"][row].tolist(),
        "convergence_delta": records["convergence_delta"][row].tolist(),
        "n_steps_used": records["n_steps_used"][row].tolist(),
        "file": f"examples/{name}.pt",
    }
    label = examples.labels[row]
    if label is not None:
        item["label"] = int(label)
    return item


def _plot_example(folder: ResultsFolder, item: Mapping[str, Any], attributions: Tensor) -> None:
    """One figure per example: the head-summed map of every attributed layer."""
    from lightning_attattr.plotting import layer_maps

    title = f"{item['name']}: AttAttr of class {item['target']} (p={item['probs'][item['target']]:.3f})"
    fig = layer_maps(attributions.sum(1), item["tokens"], item["layers"], title=title)
    save_figure(fig, folder.file(f"plots/{item['name']}"))
