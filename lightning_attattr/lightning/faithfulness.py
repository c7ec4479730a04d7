"""``analyze.py faithfulness``: deletion curves of four edge explanations, trees and planted ground truth.

Per dev example (resumable and split across processes by
:func:`~lightning_attattr.lightning.analysis.run_examples`), every edge method of
:mod:`lightning_attattr.analysis.edges` scores the connections of every layer; the model then runs
with each method's top-``k`` connections removed, with ``k`` random connections removed (several
seeds, the same for every method), with each method's attribution-tree edges removed, and with
random connections of the tree's layers removed. The drops of the predicted class's probability and
the flips are averaged per method (``faithfulness.json``, ``deletion_curves.csv``,
``faithfulness.md``, plots). When the data module knows the planted interacting pair of every
example (the synthetic task), ``groundtruth.json`` says how often each method finds it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_attattr.analysis.edges import EDGE_FUNCTIONS, real_positions
from lightning_attattr.analysis.faithfulness import (
    curve_area,
    layer_matched_random,
    planted_hits,
    random_edges,
    removal_probabilities,
    top_edges,
)
from lightning_attattr.analysis.store import ResultsFolder, save_figure, write_csv, write_json, write_text
from lightning_attattr.analysis.trees import build_tree
from lightning_attattr.core.attribution import model_logits
from lightning_attattr.lightning.analysis import INDEX_KEY, model_inputs, run_examples
from lightning_attattr.lightning.compat import pl


def tree_edges(graph: Any) -> Tensor:
    """The edges of an attribution tree as ``[m, 3]`` (layer, query = parent, key = child)."""
    rows = [(int(d["layer"]), int(parent), int(child)) for parent, child, d in graph.edges(data=True)]
    return torch.tensor(rows, dtype=torch.long).reshape(-1, 3)


def planted_pairs(datamodule: Any, split: str) -> dict[int, tuple[int, int]] | None:
    """Token positions of the planted interacting pair per example, if the data module has them (else ``None``).

    The synthetic task records word positions; its tokenizer puts one ``[CLS]`` in front, hence ``+ 1``.
    """
    examples = getattr(datamodule, "examples", None)
    if examples is None:
        return None
    items = examples(split)
    if not isinstance(items, list) or not items or not hasattr(items[0], "positions"):
        return None
    return {i: (int(e.positions[0]) + 1, int(e.positions[1]) + 1) for i, e in enumerate(items)}


def run_faithfulness(
    trainer: pl.Trainer,
    model: nn.Module,
    datamodule: Any,
    folder: ResultsFolder,
    *,
    dataset: Any,
    indices: Sequence[int],
    edge_methods: Sequence[str],
    ks: Sequence[int],
    n_random: int,
    seed: int,
    tau: float,
    attattr_options: Mapping[str, Any],
    batch_size: int,
    planted: Mapping[int, tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """Deletion curves per edge method against random deletions, tree deletions and the planted-pair test."""
    methods = list(edge_methods)
    ks = list(ks)

    def step(net: nn.Module, batch: dict[str, Tensor]) -> dict[str, Any]:
        index = batch[INDEX_KEY].tolist()
        inputs = model_inputs(batch)
        with torch.no_grad():
            probs = torch.softmax(model_logits(net, inputs).float(), -1).cpu()
        pred = probs.argmax(-1)
        maps: dict[str, list[Tensor]] = {}
        seconds = torch.zeros(len(index), len(methods))
        for m, name in enumerate(methods):
            start = time.perf_counter()
            options = dict(attattr_options) if name == "attattr" else {}
            maps[name] = EDGE_FUNCTIONS[name](net, inputs, target=pred, **options)
            seconds[:, m] = (time.perf_counter() - start) / len(index)
        rows = [
            _example(net, inputs, pos, row, index[row], pred[row], probs[row], maps, methods, ks, n_random, seed, tau,
                     None if planted is None else planted[index[row]])
            for row, pos in enumerate(real_positions(inputs))
        ]  # fmt: skip
        out = {key: torch.stack([r[key] for r in rows]) for key in rows[0]}
        out["seconds"] = seconds
        out["pred"] = pred
        out["prob"] = probs.gather(1, pred[:, None]).squeeze(1)
        if "labels" in batch:
            out["labels"] = batch["labels"].cpu()
        return out

    start = time.perf_counter()
    records = run_examples(
        trainer, model, folder, "faithfulness", dataset, indices, datamodule.collator, batch_size, step
    )
    seconds = time.perf_counter() - start
    if not folder.main:
        return {}
    summary = summarize(records, methods, ks)
    write_json(folder.file("faithfulness.json"), summary)
    rows = [(name, k, curve["drop"][i], curve["flip"][i]) for name, curve in summary["curves"].items()
            for i, k in enumerate(ks)]  # fmt: skip
    write_csv(folder.file("deletion_curves.csv"), ("method", "k", "mean_prob_drop", "flip_rate"), rows)
    write_text(folder.file("faithfulness.md"), faithfulness_markdown(summary))
    _plot_curves(folder, summary)
    result: dict[str, Any] = {
        "timings": {"faithfulness_s": seconds},
        "n_examples": len(indices),
        "area": {name: c["drop_area"] for name, c in summary["curves"].items()},
    }
    if planted is not None:
        truth = ground_truth(records, methods)
        write_json(folder.file("groundtruth.json"), truth)
        result["groundtruth"] = {m: truth["methods"][m]["top1"] for m in methods}
    return result


def _example(
    net: nn.Module,
    inputs: Mapping[str, Tensor],
    positions: Tensor,
    row: int,
    index: int,
    pred: Tensor,
    probs: Tensor,
    maps: Mapping[str, list[Tensor]],
    methods: Sequence[str],
    ks: Sequence[int],
    n_random: int,
    seed: int,
    tau: float,
    pair: tuple[int, int] | None,
) -> dict[str, Tensor]:
    """All deletions of one example in one batched run; random draws depend only on (seed, example index)."""
    one = {k: v[row : row + 1].index_select(1, positions.to(v.device)) for k, v in inputs.items()}
    shape = maps[methods[0]][row].shape
    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
    sets: list[Tensor] = []
    for name in methods:
        sets += [top_edges(maps[name][row], k) for k in ks]
    for _ in range(n_random):
        sets += [random_edges(shape, k, generator) for k in ks]
    trees, sizes = [], []
    for name in methods:
        graph = build_tree(maps[name][row], tau=tau)
        edges = tree_edges(graph)
        trees.append(graph)
        sizes.append(len(edges))
        sets.append(edges)
        sets += [layer_matched_random(edges, shape, generator) for _ in range(n_random)]
    after = removal_probabilities(net, one, sets)
    c = int(pred)
    drop = float(probs[c]) - after[:, c]
    flip = (after.argmax(1) != c).float()
    n_m, n_k = len(methods), len(ks)
    top = n_m * n_k
    rand = top + n_random * n_k
    out = {
        "drop": drop[:top].reshape(n_m, n_k),
        "flip": flip[:top].reshape(n_m, n_k),
        "random_drop": drop[top:rand].reshape(n_random, n_k),
        "random_flip": flip[top:rand].reshape(n_random, n_k),
        "tree_drop": drop[rand:].reshape(n_m, 1 + n_random)[:, 0],
        "tree_flip": flip[rand:].reshape(n_m, 1 + n_random)[:, 0],
        "tree_random_drop": drop[rand:].reshape(n_m, 1 + n_random)[:, 1:],
        "tree_random_flip": flip[rand:].reshape(n_m, 1 + n_random)[:, 1:],
        "tree_size": torch.tensor(sizes, dtype=torch.float),
        "n_tokens": torch.tensor(float(shape[1])),
    }
    if pair is not None:
        hits = [planted_hits(maps[name][row], pair) for name in methods]
        for key in hits[0]:
            out[f"gt_{key}"] = torch.stack([h[key] for h in hits]).float()
        out["gt_tree"] = torch.tensor([float(g.has_edge(*pair) or g.has_edge(*pair[::-1])) for g in trees])
    return out


def _mean(t: Tensor) -> float:
    return float(t.float().mean()) if t.numel() else float("nan")


def summarize(records: Mapping[str, Any], methods: Sequence[str], ks: Sequence[int]) -> dict[str, Any]:
    """Mean deletion curves, their areas, the random baseline and the tree test, from the per-example records."""
    curves: dict[str, Any] = {}
    for m, name in enumerate(methods):
        drop = records["drop"][:, m].mean(0).tolist()
        flip = records["flip"][:, m].mean(0).tolist()
        curves[name] = {"drop": drop, "flip": flip, "drop_area": curve_area(drop), "flip_area": curve_area(flip)}
    seeds_drop = records["random_drop"].mean(0)  # [seed, k]
    seeds_flip = records["random_flip"].mean(0)
    drop = seeds_drop.mean(0).tolist()
    flip = seeds_flip.mean(0).tolist()
    curves["random"] = {
        "drop": drop,
        "flip": flip,
        "drop_area": curve_area(drop),
        "flip_area": curve_area(flip),
        "drop_area_per_seed": [curve_area(s.tolist()) for s in seeds_drop],
        "flip_area_per_seed": [curve_area(s.tolist()) for s in seeds_flip],
    }
    trees = {}
    for m, name in enumerate(methods):
        random_drop = records["tree_random_drop"][:, m].mean(0)  # per seed
        trees[name] = {
            "mean_edges": _mean(records["tree_size"][:, m]),
            "drop": _mean(records["tree_drop"][:, m]),
            "flip": _mean(records["tree_flip"][:, m]),
            "random_drop": float(random_drop.mean()) if random_drop.numel() else float("nan"),
            "random_drop_std": statistics.pstdev(random_drop.tolist()) if random_drop.numel() > 1 else 0.0,
            "random_flip": _mean(records["tree_random_flip"][:, m]),
        }
    return {
        "ks": list(ks),
        "methods": list(methods),
        "paired": paired_areas(records, methods),
        "n_examples": int(records["drop"].shape[0]),
        "mean_tokens": _mean(records["n_tokens"]),
        "mean_predicted_prob": _mean(records["prob"]),
        "curves": curves,
        "trees": trees,
        "seconds_per_example": {name: _mean(records["seconds"][:, m]) for m, name in enumerate(methods)},
    }


def paired_areas(records: Mapping[str, Any], methods: Sequence[str]) -> dict[str, Any]:
    """Per-example comparison of drop-curve areas: each method against every other and against random.

    For a pair (a, b): the mean over examples of ``area_a - area_b``, its standard error, and the
    share of examples where ``a``'s area is larger (ties count half). Random uses the mean over seeds.
    """
    areas = {name: [curve_area(row) for row in records["drop"][:, m].tolist()] for m, name in enumerate(methods)}
    areas["random"] = [curve_area(row) for row in records["random_drop"].mean(1).tolist()]
    out: dict[str, Any] = {}
    names = list(areas)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            diff = [x - y for x, y in zip(areas[a], areas[b])]
            n = len(diff)
            stderr = statistics.stdev(diff) / n**0.5 if n > 1 else 0.0
            wins = sum(1.0 if d > 0 else 0.5 if d == 0 else 0.0 for d in diff) / n
            out[f"{a} vs {b}"] = {"mean_difference": statistics.fmean(diff), "stderr": stderr, "share_larger": wins}
    return out


def ground_truth(records: Mapping[str, Any], methods: Sequence[str]) -> dict[str, Any]:
    """How often each method puts the planted pair among its top-1 / top-3 edges, overall and in its best layer."""
    out: dict[str, Any] = {"n_examples": int(records["gt_top1"].shape[0]), "methods": {}}
    for m, name in enumerate(methods):
        row: dict[str, Any] = {}
        for k in (1, 3):
            per_layer = records[f"gt_layer_top{k}"][:, m].mean(0)  # [layer]
            row[f"top{k}"] = _mean(records[f"gt_top{k}"][:, m])
            row[f"touch{k}"] = _mean(records[f"gt_touch{k}"][:, m])
            row[f"layer_top{k}"] = per_layer.tolist()
            row[f"best_layer_top{k}"] = int(per_layer.argmax())
            row[f"best_layer_top{k}_rate"] = float(per_layer.max())
        row["tree_connects"] = _mean(records["gt_tree"][:, m])
        out["methods"][name] = row
    return out


def faithfulness_markdown(summary: Mapping[str, Any]) -> str:
    """The faithfulness table: per method the area under the drop and flip curves, and the tree test."""
    ks = summary["ks"]
    head = "| method | " + " | ".join(f"drop k={k}" for k in ks) + " | drop area | flip area |"
    lines = [head, "|" + "---|" * (len(ks) + 3)]
    for name, c in summary["curves"].items():
        cells = " | ".join(f"{v:.3f}" for v in c["drop"])
        lines.append(f"| {name} | {cells} | {c['drop_area']:.3f} | {c['flip_area']:.3f} |")
    lines += ["", "| tree of | edges | drop | flips | random same layers: drop | flips |", "|---|---|---|---|---|---|"]
    for name, t in summary["trees"].items():
        lines.append(
            f"| {name} | {t['mean_edges']:.1f} | {t['drop']:.3f} | {t['flip']:.3f} | "
            f"{t['random_drop']:.3f} ± {t['random_drop_std']:.3f} | {t['random_flip']:.3f} |"
        )
    lines += ["", "| per example: drop areas | mean difference ± s.e. | share of examples where the first is larger |",
              "|---|---|---|"]  # fmt: skip
    for pair, p in summary["paired"].items():
        lines.append(f"| {pair} | {p['mean_difference']:+.3f} ± {p['stderr']:.3f} | {p['share_larger']:.2f} |")
    cost = ", ".join(f"{m} {s * 1000:.0f} ms" for m, s in summary["seconds_per_example"].items())
    lines += ["", f"{summary['n_examples']} examples; cost per example: {cost}.", ""]
    return "\n".join(lines)


def _plot_curves(folder: ResultsFolder, summary: Mapping[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = summary["ks"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for name, c in summary["curves"].items():
        style = {"color": "grey", "linestyle": "--"} if name == "random" else {}
        axes[0].plot(ks, c["drop"], marker="o", label=f"{name} (area {c['drop_area']:.3f})", **style)
        axes[1].plot(ks, c["flip"], marker="o", label=f"{name} (area {c['flip_area']:.3f})", **style)
    for ax, what in zip(axes, ("mean drop of the predicted-class probability", "share of flipped predictions")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("connections removed (k, top-k over all layers)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Deletion curves ({summary['n_examples']} examples)")
    save_figure(fig, folder.file("plots/deletion_curves"))
