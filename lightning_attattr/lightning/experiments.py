"""The experiments of ``analyze.py`` on one model: ``attribute``, ``heads`` and ``effectiveness``.

Each runner takes a trainer (its strategy decides how many processes share the work), the
Hugging Face model, the data module and an open :class:`~lightning_attattr.analysis.store.ResultsFolder`,
runs the per-example work through :func:`~lightning_attattr.lightning.analysis.run_examples`
(resumable, distributed) and writes the results folder on rank zero: JSON, CSV, PNG/SVG plots and
TensorBoard events. The maths lives in :mod:`lightning_attattr.core` and
:mod:`lightning_attattr.analysis`.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Mapping, Sequence
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
from lightning_attattr.core.attribution import AttentionIntegratedGradients, model_logits
from lightning_attattr.core.checks import ArgumentError
from lightning_attattr.core.importance import (
    attention_weight_importance,
    attribution_head_scores,
    heads_to_prune,
    pruning_order,
    taylor_importance,
)
from lightning_attattr.core.pruning import count_parameters, prune_heads
from lightning_attattr.lightning.analysis import model_inputs, run_examples
from lightning_attattr.lightning.compat import pl


def model_shape(model: nn.Module) -> tuple[int, int]:
    """``(n_layers, n_heads)`` of a supported model (raises for unsupported architectures)."""
    return len(layer_modules(model)), int(model.config.num_attention_heads)


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
def run_heads(
    trainer: pl.Trainer,
    model: nn.Module,
    datamodule: Any,
    folder: ResultsFolder,
    *,
    methods: Sequence[str],
    n_examples: int,
    fractions: Sequence[float],
    random_seeds: Sequence[int],
    n_steps: int | str,
    method: str,
    completeness_tol: float,
    batch_size: int,
    eval_batch_size: int,
    max_eval_examples: int | None,
    structural: bool,
    latency_batches: int,
    latency_repeats: int,
    transfer_from: Mapping[str, Tensor],
    task: str | None,
    metric_names: Sequence[str],
    num_labels: int,
) -> dict[str, Any]:
    """Head importance by every method on the first ``n_examples`` dev examples, then pruning curves on the dev set."""
    timings: dict[str, float] = {}
    n_layers, n_heads = model_shape(model)
    split = dev_split(datamodule)
    dataset = datamodule.dataset(split)
    n_examples = check_n_examples("n_examples", n_examples, len(dataset), split)
    n_eval = check_n_examples("max_eval_examples", max_eval_examples, len(dataset), split)
    collator = datamodule.collator
    tb = _TensorBoard(folder)

    # ---- stage 1: per-example importance records
    keys = {k for m in methods for k in RECORD_KEYS[m]}
    ig = AttentionIntegratedGradients(model)

    def importance_step(net: nn.Module, batch: dict[str, Tensor]) -> dict[str, Any]:
        labels = batch["labels"]
        inputs = model_inputs(batch)
        out: dict[str, Any] = {}
        if keys & {"attattr_max", "attattr_mean", "attattr_sum"}:
            result = ig.attribute(
                {**inputs, "labels": labels},
                target="labels",
                n_steps=n_steps,
                method=method,
                completeness_tol=completeness_tol,
                return_convergence_delta=True,
            )
            for pooling in ("max", "mean", "sum"):
                if f"attattr_{pooling}" in keys:
                    out[f"attattr_{pooling}"] = attribution_head_scores(result, pooling).float().cpu()
            out["completeness_error"] = result.completeness_error.float().cpu()
            out["n_steps_used"] = result.n_steps_used.cpu()
        if "taylor" in keys:
            out["taylor"] = taylor_importance(net, inputs).double()
        if "taylor_michel" in keys:
            out["taylor_michel"] = taylor_importance(net, inputs, variant="michel", labels=labels).double()
        if "attention" in keys:
            out["attention"] = attention_weight_importance(net, inputs).float()
        if "correct" in keys:
            single = torch.ones(n_layers * n_heads + 1, n_layers, n_heads)
            single[1:].view(-1, n_layers * n_heads)[
                torch.arange(n_layers * n_heads), torch.arange(n_layers * n_heads)
            ] = 0
            preds = _predict_all(net, inputs, single)  # [batch, 1 + L*H]
            correct = preds == labels.cpu()[:, None]
            out["correct"], out["correct_masked"] = correct[:, 0], correct[:, 1:]
        return out

    start = time.perf_counter()
    records = run_examples(
        trainer, model, folder, "importance", dataset, range(n_examples), collator, batch_size, importance_step
    )
    timings["importance_s"] = time.perf_counter() - start
    importances = importance_from_records(records, methods, n_layers, n_heads, random_seeds)
    for name, vector in transfer_from.items():  # shapes checked by the caller before any work
        importances[f"transfer:{name}"] = vector.double()

    # ---- stage 2: the dev set under every pruning mask
    masks, mask_index, removed = pruning_plan(importances, fractions)
    store = folder.parts("pruning")
    if folder.main:
        plan_file = store.path / "masks.safetensors"
        if plan_file.exists() and not torch.equal(load_tensors(plan_file).get("masks", torch.empty(0)), masks):
            store.clear()  # the ranking changed (other importance): earlier predictions do not apply
        if not plan_file.exists():
            store.path.mkdir(parents=True, exist_ok=True)
            save_tensors(plan_file, {"masks": masks})

    def pruning_step(net: nn.Module, batch: dict[str, Tensor]) -> dict[str, Any]:
        return {"preds": _predict_all(net, batch, masks), "labels": batch["labels"].cpu()}

    start = time.perf_counter()
    evaluated = run_examples(
        trainer, model, folder, "pruning", dataset, range(n_eval), collator, eval_batch_size, pruning_step
    )
    timings["pruning_s"] = time.perf_counter() - start
    labels = evaluated["labels"]
    per_mask = [task_metrics(evaluated["preds"][:, j], labels, metric_names, num_labels) for j in range(len(masks))]

    result: dict[str, Any] = {"timings": timings}
    if not folder.main:
        return result

    # ---- outputs
    write_json(
        folder.file("importance.json"),
        {
            "n_layers": n_layers,
            "n_heads": n_heads,
            "n_examples": n_examples,
            "split": split,
            "target": "gold label",
            "integration": {"n_steps": n_steps, "method": method, "completeness_tol": completeness_tol},
            "importance": {k: v.tolist() for k, v in importances.items()},
            "completeness_error_max": float(records["completeness_error"].max())
            if "completeness_error" in records
            else None,
            "n_steps_used_mean": float(records["n_steps_used"].double().mean()) if "n_steps_used" in records else None,
        },
    )
    rows = []
    for name, vector in importances.items():
        rank_of = {head: r for r, head in enumerate(pruning_order(vector))}
        for layer in range(n_layers):
            for head in range(n_heads):
                rows.append([name, layer, head, float(vector[layer, head]), rank_of[(layer, head)]])
    write_csv(folder.file("importance.csv"), ["method", "layer", "head", "score", "prune_order"], rows)

    curves: dict[str, dict[str, list[float]]] = {}
    for name, idx in mask_index.items():
        curves[name] = {m: [per_mask[j][m] for j in idx] for m in per_mask[0]}
    random_names = [random_name(s) for s in random_seeds if random_name(s) in curves]
    if random_names:
        for m in per_mask[0]:
            values = torch.tensor([curves[r][m] for r in random_names], dtype=torch.float64)
            curves.setdefault("random", {})[m] = values.mean(0).tolist()
            curves["random"][f"{m}_std"] = (values.std(0) if len(random_names) > 1 else values[0] * 0).tolist()
            curves["random"][f"{m}_min"] = values.min(0).values.tolist()
            curves["random"][f"{m}_max"] = values.max(0).values.tolist()
    summaries = {name: {m: curve_summary(fractions, c[m]) for m in per_mask[0]} for name, c in curves.items()}
    write_json(
        folder.file("pruning.json"),
        {
            "fractions": list(fractions),
            "heads_removed": removed,
            "n_eval_examples": n_eval,
            "split": split,
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

    from lightning_attattr.plotting import importance_heatmap, pruning_curve

    shown = {n: c for n, c in curves.items() if not n.startswith("random_s")}
    for metric in per_mask[0]:
        bands = {}
        if "random" in shown:
            bands["random"] = (shown["random"][f"{metric}_min"], shown["random"][f"{metric}_max"])
        fig = pruning_curve(
            list(fractions),
            {n: c[metric] for n, c in shown.items()},
            metric_name=metric,
            title=f"{task or 'task'}: pruning lowest-ranked heads first ({n_eval} dev)",
            bands=bands,
        )
        _save_plot(folder, tb, f"pruning_{metric}", fig)
        for name, c in shown.items():
            for f, v in zip(fractions, c[metric]):
                tb.scalar(f"pruning/{metric}/{name}", v, int(round(f * 100)))
    for name, vector in importances.items():
        if name.startswith("random_s"):
            continue
        fig = importance_heatmap(vector, title=f"{name} head importance")
        _save_plot(folder, tb, f"importance_{name.replace(':', '_')}", fig)

    # ---- structural pruning: parameters and latency
    if structural:
        start = time.perf_counter()
        primary = next((n for n in importances if n.startswith("attattr")), next(iter(importances)))
        result["structural"] = structural_pruning(
            model, importances[primary], fractions, dataset, collator, eval_batch_size, latency_batches, latency_repeats
        )
        result["structural"]["ranking"] = primary
        write_json(folder.file("structural.json"), result["structural"])
        timings["structural_s"] = time.perf_counter() - start
    tb.close()
    result.update({"curves": summaries, "n_examples": n_examples, "n_eval_examples": n_eval})
    return result


def structural_pruning(
    model: nn.Module,
    importance: Tensor,
    fractions: Sequence[float],
    dataset: Any,
    collator: Any,
    batch_size: int,
    latency_batches: int,
    repeats: int,
) -> dict[str, Any]:
    """Remove the heads physically per fraction; parameter counts and measured inference latency.

    Latency: the first ``latency_batches`` dev batches, timed ``repeats`` times per model with the
    models interleaved (so drifting machine load hits all alike); the median per model, and its
    ratio to the unpruned model.
    """
    batches = []
    for start in range(0, min(len(dataset), latency_batches * batch_size), batch_size):
        batch = collator([dict(dataset[i]) for i in range(start, min(len(dataset), start + batch_size))])
        batches.append(model_inputs(batch))
    device = next(model.parameters()).device
    variants = []
    skipped = []
    n_heads = importance.shape[1]
    for fraction in fractions:
        heads = heads_to_prune(importance, fraction)
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
    times: list[list[float]] = [[] for _ in variants]
    with torch.no_grad():
        for _ in range(repeats):
            for k, (_, _, net) in enumerate(variants):
                begin = time.perf_counter()
                for inputs in batches:
                    net(**{key: v.to(device) for key, v in inputs.items()})
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[k].append(time.perf_counter() - begin)
    base_params = count_parameters(model)
    base_time = statistics.median(times[0]) if fractions[0] == 0 else None
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


# ============================================================================ effectiveness
def run_effectiveness(
    trainer: pl.Trainer,
    model: nn.Module,
    datamodule: Any,
    folder: ResultsFolder,
    *,
    n_examples: int | None,
    n_steps: int | str,
    method: str,
    completeness_tol: float,
    batch_size: int,
    task: str | None,
) -> dict[str, Any]:
    """Paper section 4.1: per-example rankings by AttAttr vs attention, k heads pruned per layer, four curves."""
    n_layers, n_heads = model_shape(model)
    split = dev_split(datamodule)
    dataset = datamodule.dataset(split)
    n_examples = check_n_examples("n_examples", n_examples, len(dataset), split)
    ig = AttentionIntegratedGradients(model)

    def step(net: nn.Module, batch: dict[str, Tensor]) -> dict[str, Any]:
        labels = batch["labels"]
        inputs = model_inputs(batch)
        result = ig.attribute(
            {**inputs, "labels": labels},
            target="labels",
            n_steps=n_steps,
            method=method,
            completeness_tol=completeness_tol,
            return_convergence_delta=True,
        )
        attattr = attribution_head_scores(result, "max").float().cpu()  # [batch, L, H]
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
            "completeness_error": result.completeness_error.float().cpu(),
        }

    start = time.perf_counter()
    records = run_examples(
        trainer, model, folder, "effectiveness", dataset, range(n_examples), datamodule.collator, batch_size, step
    )
    seconds = time.perf_counter() - start
    if not folder.main:
        return {}
    curves = effectiveness_curves(records["correct"])
    ks = list(range(n_heads + 1))
    write_json(
        folder.file("effectiveness.json"),
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
        folder.file("effectiveness.csv"), ["k_per_layer", *CURVES], [[k, *[curves[c][k] for c in CURVES]] for k in ks]
    )
    from lightning_attattr.plotting import pruning_curve

    tb = _TensorBoard(folder)
    fig = pruning_curve(
        ks,
        curves,
        metric_name="accuracy",
        xlabel="heads pruned in every layer",
        percent=False,
        title=f"{task or 'task'}: effectiveness ({n_examples} dev examples)",
    )
    _save_plot(folder, tb, "effectiveness", fig)
    for name, values in curves.items():
        for k, v in zip(ks, values):
            tb.scalar(f"effectiveness/{name}", v, k)
    tb.close()
    return {"timings": {"effectiveness_s": seconds}, "curves": curves, "n_examples": n_examples}


# ============================================================================ attribute
def run_attribute(
    trainer: pl.Trainer,
    model: nn.Module,
    datamodule: Any,
    folder: ResultsFolder,
    *,
    dataset: Any,
    indices: Sequence[int],
    names: Sequence[str],
    tokens: Sequence[list[str]],
    labels: Sequence[int | None],
    target: str | int,
    layers: list[int] | None,
    n_steps: int | str,
    method: str,
    completeness_tol: float,
    batch_size: int,
    plots: bool,
) -> dict[str, Any]:
    """AttAttr maps of chosen examples, saved per example (``examples/<name>.pt``) with an index and plots.

    Each example file also holds ``attention``: the raw attention probabilities of the attributed
    layers, ``[layer, head, n, n]`` over the real tokens (what the report shows beside the maps).
    """
    ig = AttentionIntegratedGradients(model)

    def step(net: nn.Module, batch: dict[str, Tensor]) -> dict[str, Any]:
        inputs = model_inputs(batch)
        with torch.no_grad(), attention_scope(net) as ctrl, ctrl.capturing() as captured:
            probs = torch.softmax(model_logits(net, inputs).float(), -1).cpu()
        attention = torch.stack([captured[layer] for layer in sorted(captured)], 1)  # [batch, layer, head, q, k]
        positions = real_positions(inputs)
        chosen: Any = target
        if target == "labels":
            chosen = batch["labels"]
        result = ig.attribute(
            inputs,
            target=chosen,
            layers=layers,
            n_steps=n_steps,
            method=method,
            completeness_tol=completeness_tol,
            return_convergence_delta=True,
        )
        return {
            "attributions": [a.float().cpu() for a in result.attributions],
            "attention": [
                attention[row][list(result.layers)][:, :, pos][:, :, :, pos].float().cpu()
                for row, pos in enumerate(positions)
            ],
            "target": result.target.cpu(),
            "probs": probs,
            "convergence_delta": result.convergence_delta.float().cpu(),
            "completeness_error": result.completeness_error.float().cpu(),
            "n_steps_used": result.n_steps_used.cpu(),
            "layers": [list(result.layers)] * len(result.target),
        }

    start = time.perf_counter()
    records = run_examples(trainer, model, folder, "attribute", dataset, indices, datamodule.collator, batch_size, step)
    seconds = time.perf_counter() - start
    if not folder.main:
        return {}
    index = []
    for row, name in enumerate(names):
        item = {
            "name": name,
            "tokens": tokens[row],
            "layers": records["layers"][row],
            "target": int(records["target"][row]),
            "probs": records["probs"][row].tolist(),
            "predicted": int(records["probs"][row].argmax()),
            "completeness_error": records["completeness_error"][row].tolist(),
            "convergence_delta": records["convergence_delta"][row].tolist(),
            "n_steps_used": records["n_steps_used"][row].tolist(),
            "file": f"examples/{name}.pt",
        }
        if labels[row] is not None:
            item["label"] = int(labels[row])
        payload = {**item, "attributions": records["attributions"][row], "attention": records["attention"][row]}
        atomic_write(folder.file(item["file"]), lambda f, p=payload: torch.save(p, f), binary=True)
        index.append(item)
        if plots:
            _plot_example(folder, item, records["attributions"][row])
    write_json(folder.file("attributions.json"), {"examples": index, "n_steps": n_steps, "method": method})
    return {"timings": {"attribute_s": seconds}, "n_examples": len(index)}


def _plot_example(folder: ResultsFolder, item: Mapping[str, Any], attributions: Tensor) -> None:
    """One figure per example: the head-summed map of every attributed layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = item["tokens"]
    layers = item["layers"]
    maps = attributions.sum(1)  # [layer, q, k]
    cols = min(3, len(layers))
    rows = (len(layers) + cols - 1) // cols
    size = 2.0 + 0.18 * len(tokens)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat[len(layers) :]:
        ax.axis("off")
    for k, layer in enumerate(layers):
        ax = axes.flat[k]
        m = maps[k].numpy()
        limit = float(abs(m).max()) or 1.0
        ax.imshow(m, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(f"layer {layer} (heads summed)", fontsize=9)
        if len(tokens) <= 48:
            ax.set_xticks(range(len(tokens)), labels=tokens, rotation=90, fontsize=6)
            ax.set_yticks(range(len(tokens)), labels=tokens, fontsize=6)
    fig.suptitle(f"{item['name']}: AttAttr of class {item['target']} (p={item['probs'][item['target']]:.3f})")
    fig.tight_layout()
    save_figure(fig, folder.file(f"plots/{item['name']}"))
