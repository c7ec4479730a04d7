"""``analyze.py faithfulness``: deletion curves of four edge explanations, trees and planted ground truth.

Per dev example (resumable and split across processes by
:func:`~lightning_attattr.lightning.analysis.run_examples`), every edge method of
:mod:`lightning_attattr.analysis.edges` scores the connections of every layer; the model then runs
with each method's top-``k`` connections removed, with ``k`` random connections removed (several
seeds, the same for every method), with each method's attribution-tree edges removed, and with
random connections of the tree's layers removed. Cross-layer removal: each method's top-``k`` word
pairs across layers (a pair's score summed over layers and over both words' pieces) are removed in
every layer at once, against ``k`` random word pairs. The drops of the predicted class's probability
and the flips are averaged per method (``faithfulness.json``, ``deletion_curves.csv``,
``deletion_curves_all_layers.csv``, ``faithfulness.md``, plots), with the completeness error of the
AttAttr maps that were ranked. When the planted interacting pairs are known (the synthetic task's
data module, or a ``--truth`` file), ``groundtruth.json`` says how often each method finds them,
under both scoring conventions of :mod:`lightning_attattr.analysis.faithfulness`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_attattr.analysis.edges import EDGE_FUNCTIONS, attattr_edges_and_result, real_positions
from lightning_attattr.analysis.faithfulness import (
    CONVENTIONS,
    HIT_RULE,
    PlantedTruth,
    WordLayout,
    check_truth,
    completeness_summary,
    curve_area,
    layer_matched_random,
    pair_edges,
    pair_scores,
    planted_hits,
    planted_positions,
    random_edges,
    random_pairs,
    removal_probabilities,
    token_pair_edges,
    top_edges,
    top_pairs,
    word_edge_mask,
    word_layout,
    word_maps,
)
from lightning_attattr.analysis.settings import FaithfulnessSettings
from lightning_attattr.analysis.store import ResultsFolder, save_figure, write_csv, write_json, write_text
from lightning_attattr.analysis.trees import build_graph, build_tree, connects
from lightning_attattr.core.attribution import model_logits
from lightning_attattr.lightning.analysis import INDEX_KEY, model_inputs, special_tokens
from lightning_attattr.lightning.experiments import check_n_examples, dev_split
from lightning_attattr.lightning.job import Job

#: How cross-layer removal ranks and removes connections (faithfulness.json and .md say it).
CROSS_LAYER_RULE = (
    "word pairs across layers: a (query word, key word) pair's score is the sum over layers of its edge scores, "
    "summed over both words' pieces; removing a pair zeroes every connection between their pieces in every layer "
    "(special tokens are words of their own, self pairs included; k is capped at the example's number of pairs)"
)


def tree_edges(graph: Any) -> Tensor:
    """The edges of an attribution tree as ``[m, 3]`` (layer, query = parent, key = child)."""
    rows = [(int(d["layer"]), int(parent), int(child)) for parent, child, d in graph.edges(data=True)]
    return torch.tensor(rows, dtype=torch.long).reshape(-1, 3)


def example_layout(tokenizer: Any, input_ids: Sequence[int]) -> WordLayout:
    """The words of one example's real tokens (:func:`~lightning_attattr.analysis.faithfulness.word_layout`)."""
    return word_layout(tokenizer.convert_ids_to_tokens([int(i) for i in input_ids]), special_tokens(tokenizer))


def planted_pairs(datamodule: Any, split: str) -> dict[int, PlantedTruth] | None:
    """The planted interacting pair of every example, if the data module has them (else ``None``).

    The synthetic task records word positions; its tokenizer puts one ``[CLS]`` in front, hence
    token positions ``+ 1``.
    """
    examples = getattr(datamodule, "examples", None)
    if examples is None:
        return None
    items = examples(split)
    if not isinstance(items, list) or not items or not hasattr(items[0], "positions"):
        return None
    return {
        i: PlantedTruth(i, ((int(e.positions[0]) + 1, int(e.positions[1]) + 1),), "token") for i, e in enumerate(items)
    }


@dataclass(frozen=True)
class ChosenExamples:
    """The dev examples a faithfulness run scores, and their planted pairs when they are known.

    Attributes:
        dataset: the dev split.
        indices: the examples of ``dataset``, in the order they are scored.
        planted: the planted pairs of every example of ``indices`` (``None``: no ground-truth test).
        source: where ``planted`` came from, for ``groundtruth.json`` (``None`` without planted pairs).
    """

    dataset: Any
    indices: list[int]
    planted: dict[int, PlantedTruth] | None
    source: str | None

    @property
    def shortest(self) -> int:
        """The token count (special tokens included) of the shortest chosen example."""
        return min(len(self.dataset[i]["input_ids"]) for i in self.indices)


def choose_examples(
    datamodule: Any, settings: FaithfulnessSettings, truth: list[PlantedTruth] | None, n_layers: int
) -> ChosenExamples:
    """The examples of ``analyze.py faithfulness``, checked before the results folder is opened.

    Without ``truth``: the first ``settings.n_examples`` dev examples (checked against the dev set's
    size), with the data module's planted pairs if it has them. With ``truth`` (the records of
    ``settings.truth``): the file's examples, in file order, the first ``settings.n_examples`` of
    them, after the file's ranges are checked against the data and the model.

    Args:
        datamodule: the data module (dev split, tokenizer).
        settings: the ``faithfulness`` options (``n_examples``, ``truth``).
        truth: :func:`~lightning_attattr.analysis.faithfulness.read_truth`'s records of ``settings.truth``.
        n_layers: the model's layer count (a truth file's layers are checked against it).

    Raises:
        ArgumentError: ``n_examples`` larger than the dev set.
        DataFileError: a truth file's index, layer or position outside the data or the model.
    """
    split = dev_split(datamodule)
    dev = datamodule.dataset(split)
    if truth is None:
        check_n_examples("n_examples", settings.n_examples, len(dev), split)
        indices = list(range(len(dev) if settings.n_examples is None else settings.n_examples))
        planted = planted_pairs(datamodule, split)
        return ChosenExamples(dev, indices, planted, None if planted is None else "the data module's planted pairs")

    def size(i: int) -> tuple[int, int]:
        ids = dev[i]["input_ids"]
        return len(ids), len(example_layout(datamodule.tokenizer, ids).words)

    assert settings.truth is not None  # the records were read from it
    check_truth(truth, settings.truth, n_dev=len(dev), split=split, n_layers=n_layers, size=size)
    chosen = truth if settings.n_examples is None else truth[: settings.n_examples]
    planted_truth = {t.index: t for t in chosen}
    return ChosenExamples(dev, [t.index for t in chosen], planted_truth, f"truth file {settings.truth}")


def run_faithfulness(job: Job, settings: FaithfulnessSettings, chosen: ChosenExamples) -> dict[str, Any]:
    """Deletion curves per edge method (per layer and across layers) against random deletions, trees, planted truth.

    Stages: every example's deletions (:func:`_step`, resumable and split across processes by
    ``job.examples``); then, on the main process, the summaries (:func:`summarize`,
    :func:`ground_truth`), the files (:func:`_write_results`), the printed table and the result.

    Args:
        job: the trainer (its strategy splits the examples), the classifier, the data module, the folder.
        settings: the ``faithfulness`` options: ``edge_methods`` (names of
            :data:`~lightning_attattr.analysis.edges.EDGE_FUNCTIONS`), ``ks`` (connections per layer-wise
            curve, word pairs per cross-layer curve), ``n_random``, ``seed`` (per example:
            ``seed * 1_000_003 + index``), ``tau``, the AttAttr integration and the batch size.
        chosen: the examples and their planted pairs (:func:`choose_examples`).
    """
    tokenizer = job.datamodule.tokenizer

    def step(net: nn.Module, batch: dict[str, Tensor]) -> dict[str, Any]:
        return _step(net, batch, tokenizer, settings, chosen.planted)

    start = time.perf_counter()
    records = job.examples("faithfulness", chosen.dataset, chosen.indices, settings.batch_size, step)
    seconds = time.perf_counter() - start
    if not job.folder.main:
        return {}
    summary = summarize(records, settings.edge_methods, settings.ks)
    truth = None if chosen.planted is None else ground_truth(records, settings.edge_methods, chosen.source)
    _write_results(job.folder, summary, truth)
    result: dict[str, Any] = {
        "timings": {"faithfulness_s": seconds},
        "n_examples": len(chosen.indices),
        "area": {name: c["drop_area"] for name, c in summary["curves"].items()},
        "area_all_layers": {name: c["drop_area"] for name, c in summary["cross_layer"]["curves"].items()},
        "completeness_error_max": (summary["completeness"] or {}).get("worst"),
    }
    if truth is not None:
        result["groundtruth"] = {m: truth["conventions"]["words"]["methods"][m]["top1"] for m in settings.edge_methods}
    print(summary_table(summary, truth, str(job.folder.path)), flush=True)
    return result


def _write_results(folder: ResultsFolder, summary: Mapping[str, Any], truth: Mapping[str, Any] | None) -> None:
    """``faithfulness.json``, the deletion-curve CSVs, ``faithfulness.md``, the plots, ``groundtruth.json``."""
    write_json(folder.file("faithfulness.json"), summary)
    ks = summary["ks"]
    for name, curves in (
        ("deletion_curves.csv", summary["curves"]),
        ("deletion_curves_all_layers.csv", summary["cross_layer"]["curves"]),
    ):
        rows = [(method, k, c["drop"][i], c["flip"][i]) for method, c in curves.items() for i, k in enumerate(ks)]
        write_csv(folder.file(name), ("method", "k", "mean_prob_drop", "flip_rate"), rows)
    write_text(folder.file("faithfulness.md"), faithfulness_markdown(summary, truth))
    _plot_curves(
        folder,
        summary,
        summary["curves"],
        "deletion_curves",
        "connections removed (k, top-k (layer, query, key) over all layers)",
    )
    _plot_curves(
        folder,
        summary,
        summary["cross_layer"]["curves"],
        "deletion_curves_all_layers",
        "word pairs removed in every layer (k, top-k pairs across layers)",
    )
    if truth is not None:
        write_json(folder.file("groundtruth.json"), truth)


# ----------------------------------------------------------------------------- one batch, one example


@dataclass(frozen=True)
class _Example:
    """One example of a batch, ready for its deletions.

    Attributes:
        net: the classifier.
        inputs: the model inputs of this example alone (``[1, n]``, its real tokens only).
        layout: the words of its tokens.
        index: its index in the dev split (seeds its random draws).
        pred: the predicted class (0-d).
        probs: the class probabilities ``[class]``.
        maps: every edge method's scores ``[layer, n, n]``, in the order of the methods.
        truth: its planted pairs (``None``: no ground-truth test).
    """

    net: nn.Module
    inputs: Mapping[str, Tensor]
    layout: WordLayout
    index: int
    pred: Tensor
    probs: Tensor
    maps: Mapping[str, Tensor]
    truth: PlantedTruth | None

    @property
    def shape(self) -> torch.Size:
        """``[layer, n, n]``: the connections of the example (the first method's map)."""
        return next(iter(self.maps.values())).shape


def _step(
    net: nn.Module,
    batch: dict[str, Tensor],
    tokenizer: Any,
    settings: FaithfulnessSettings,
    planted: Mapping[int, PlantedTruth] | None,
) -> dict[str, Any]:
    """One batch: the predictions, every method's edge maps, then each example's deletions (:func:`_example`)."""
    index = batch[INDEX_KEY].tolist()
    inputs = model_inputs(batch)
    with torch.no_grad():
        probs = torch.softmax(model_logits(net, inputs).float(), -1).cpu()
    pred = probs.argmax(-1)
    maps, seconds, completeness = _edge_maps(net, inputs, pred, settings)
    rows = []
    for row, pos in enumerate(real_positions(inputs)):  # pos: [n] on the inputs' device
        one = {k: v[row : row + 1].index_select(1, pos.to(v.device)) for k, v in inputs.items()}  # [1, n]
        example = _Example(
            net=net,
            inputs=one,
            layout=example_layout(tokenizer, one["input_ids"][0].tolist()),
            index=index[row],
            pred=pred[row],
            probs=probs[row],
            maps={name: maps[name][row] for name in settings.edge_methods},
            truth=None if planted is None else planted[index[row]],
        )
        rows.append(_example(example, settings))
    out: dict[str, Any] = {key: torch.stack([r[key] for r in rows]) for key in rows[0]}
    out["seconds"] = seconds
    out["pred"] = pred
    out["prob"] = probs.gather(1, pred[:, None]).squeeze(1)
    if completeness is not None:
        out["completeness_error"] = completeness
    if "labels" in batch:
        out["labels"] = batch["labels"].cpu()
    return out


def _edge_maps(
    net: nn.Module, inputs: Mapping[str, Tensor], pred: Tensor, settings: FaithfulnessSettings
) -> tuple[dict[str, list[Tensor]], Tensor, Tensor | None]:
    """Every method's edge maps of a batch, its seconds per example ``[batch, method]``, AttAttr's completeness.

    The completeness error ``[batch, layer]`` is ``None`` when ``attattr`` is not one of the methods.
    """
    n = len(pred)
    maps: dict[str, list[Tensor]] = {}
    seconds = torch.zeros(n, len(settings.edge_methods))
    completeness = None
    for m, name in enumerate(settings.edge_methods):
        start = time.perf_counter()
        if name == "attattr":
            maps[name], result = attattr_edges_and_result(
                net, inputs, target=pred, return_convergence_delta=True, **settings.integration.kwargs()
            )
            completeness = result.require("completeness_error").float().cpu()  # [batch, layer]
        else:
            maps[name] = EDGE_FUNCTIONS[name](net, inputs, target=pred)
        seconds[:, m] = (time.perf_counter() - start) / n
    return maps, seconds, completeness


def _example(example: _Example, settings: FaithfulnessSettings) -> dict[str, Tensor]:
    """All deletions of one example in one batched run; random draws depend only on (seed, example index).

    The deletion sets, in this order (the random draws too): each method's top-``k`` connections,
    ``k`` random connections per seed, each method's tree edges then as many random ones of the same
    layers per seed, each method's top-``k`` word pairs across layers, ``k`` random word pairs per
    seed, and, with planted truth, the planted pairs in all layers then in each layer alone.
    """
    generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + example.index)
    sets = _layer_sets(example, settings, generator)
    trees, sizes, tree_sets = _tree_sets(example, settings, generator)
    sets += tree_sets
    sets += _cross_layer_sets(example, settings, generator)
    where = None if example.truth is None else planted_positions(example.truth, example.layout)
    if where is not None:  # the planted pairs (both directions) in all layers, then in each layer alone
        n_layers = int(example.shape[0])
        sets.append(token_pair_edges(where["tokens"], n_layers))
        sets += [token_pair_edges(where["tokens"], n_layers, [layer]) for layer in range(n_layers)]
    after = removal_probabilities(example.net, example.inputs, sets)
    c = int(example.pred)
    drop = float(example.probs[c]) - after[:, c]
    flip = (after.argmax(1) != c).float()
    parts = _split_deletions(drop, flip, settings)
    out = _deletion_record(example, settings, parts, sizes)
    if example.truth is not None and where is not None:
        out.update(_truth_hits(example, where, trees, settings))
        out["gt_layer"] = torch.tensor(float(-1 if example.truth.layer is None else example.truth.layer))
        out["gt_removal_drop"], out["gt_removal_flip"] = parts["planted"]  # [1 + layer]: all layers, then each
    return out


def _layer_sets(example: _Example, settings: FaithfulnessSettings, generator: torch.Generator) -> list[Tensor]:
    """Each method's top-``k`` connections for every ``k``, then ``k`` random connections per seed."""
    sets = [top_edges(example.maps[name], k) for name in settings.edge_methods for k in settings.ks]
    sets += [random_edges(example.shape, k, generator) for _ in range(settings.n_random) for k in settings.ks]
    return sets


def _tree_sets(
    example: _Example, settings: FaithfulnessSettings, generator: torch.Generator
) -> tuple[list[Any], list[int], list[Tensor]]:
    """Each method's attribution tree, its edge count, its edges then as many random ones of its layers per seed."""
    trees, sizes, sets = [], [], []
    for name in settings.edge_methods:
        graph = build_tree(example.maps[name], tau=settings.tau)
        edges = tree_edges(graph)
        trees.append(graph)
        sizes.append(len(edges))
        sets.append(edges)
        sets += [layer_matched_random(edges, example.shape, generator) for _ in range(settings.n_random)]
    return trees, sizes, sets


def _cross_layer_sets(example: _Example, settings: FaithfulnessSettings, generator: torch.Generator) -> list[Tensor]:
    """Each method's top-``k`` word pairs across layers, then ``k`` random word pairs per seed, in every layer."""
    layout, n_layers, ks = example.layout, int(example.shape[0]), settings.ks
    sets = []
    for name in settings.edge_methods:
        scores = pair_scores(example.maps[name], layout)
        sets += [pair_edges(top_pairs(scores, k), layout, n_layers) for k in ks]
    n_units = len(layout.special)
    for _ in range(settings.n_random):
        sets += [pair_edges(random_pairs(n_units, k, generator), layout, n_layers) for k in ks]
    return sets


def _split_deletions(drop: Tensor, flip: Tensor, settings: FaithfulnessSettings) -> dict[str, tuple[Tensor, Tensor]]:
    """The (drops, flips) of one example's deletion sets by kind, in :func:`_example`'s order."""
    n_m, n_k, n_random = len(settings.edge_methods), len(settings.ks), settings.n_random
    bounds = [n_m * n_k, n_random * n_k, n_m * (1 + n_random), n_m * n_k, n_random * n_k]
    bounds.append(len(drop) - sum(bounds))  # the planted pairs' removals (none without planted truth)
    kinds = ("top", "random", "tree", "cross", "cross_random", "planted")
    return dict(zip(kinds, zip(torch.split(drop, bounds), torch.split(flip, bounds))))


def _deletion_record(
    example: _Example, settings: FaithfulnessSettings, parts: Mapping[str, tuple[Tensor, Tensor]], sizes: list[int]
) -> dict[str, Tensor]:
    """The per-example record of the deletions: curves ``[method or seed, k]``, trees, cross-layer, sizes."""
    n_m, n_k, n_random = len(settings.edge_methods), len(settings.ks), settings.n_random
    (top_d, top_f), (rand_d, rand_f) = parts["top"], parts["random"]
    (cross_d, cross_f), (cross_rd, cross_rf) = parts["cross"], parts["cross_random"]
    tree_d, tree_f = (t.reshape(n_m, 1 + n_random) for t in parts["tree"])
    return {
        "drop": top_d.reshape(n_m, n_k),
        "flip": top_f.reshape(n_m, n_k),
        "random_drop": rand_d.reshape(n_random, n_k),
        "random_flip": rand_f.reshape(n_random, n_k),
        "tree_drop": tree_d[:, 0],
        "tree_flip": tree_f[:, 0],
        "tree_random_drop": tree_d[:, 1:],
        "tree_random_flip": tree_f[:, 1:],
        "tree_size": torch.tensor(sizes, dtype=torch.float),
        "cross_drop": cross_d.reshape(n_m, n_k),
        "cross_flip": cross_f.reshape(n_m, n_k),
        "cross_random_drop": cross_rd.reshape(n_random, n_k),
        "cross_random_flip": cross_rf.reshape(n_random, n_k),
        "n_tokens": torch.tensor(float(example.shape[1])),
        "n_words": torch.tensor(float(len(example.layout.words))),
    }


def _truth_hits(
    example: _Example,
    where: Mapping[str, list[tuple[int, int]]],
    trees: Sequence[Any],
    settings: FaithfulnessSettings,
) -> dict[str, Tensor]:
    """The planted-truth test of one example under both conventions, ``gt_<convention>_<key>`` ``[method, ...]``.

    Besides the top-k hits: whether the method's attribution tree and its attribution graph (the
    tree's scan without the one-parent rule) join a planted pair, built on the token maps
    (``tokens``) or on the word maps (``words``, word pairs only).
    """
    maps, layout = example.maps, example.layout
    out: dict[str, Tensor] = {}
    eligible = word_edge_mask(layout)
    for convention in CONVENTIONS:
        hits, joined = [], []
        for m, name in enumerate(settings.edge_methods):
            pairs = where[convention]
            if convention == "words":
                scores = word_maps(maps[name], layout)
                hits.append(planted_hits(scores, pairs, eligible=eligible))
                tree = build_tree(scores, tau=settings.tau)
                pairs = [(a, b) for a, b in pairs if eligible[a, b]]  # only edges between two distinct words
            else:
                scores = maps[name]
                hits.append(planted_hits(scores, pairs))
                tree = trees[m]
            graph = build_graph(scores, tau=settings.tau)
            joined.append([float(any(connects(g, pair) for pair in pairs)) for g in (tree, graph)])
        for key in hits[0]:
            out[f"gt_{convention}_{key}"] = torch.stack([h[key] for h in hits]).float()
        out[f"gt_{convention}_tree"], out[f"gt_{convention}_graph"] = torch.tensor(joined).T
    return out


def _mean(t: Tensor) -> float:
    return float(t.float().mean()) if t.numel() else float("nan")


def _curves(records: Mapping[str, Any], methods: Sequence[str], prefix: str = "") -> dict[str, Any]:
    """Mean deletion curves and their areas, per method and random, from ``<prefix>drop``, ``<prefix>random_drop``..."""
    curves: dict[str, Any] = {}
    for m, name in enumerate(methods):
        drop = records[f"{prefix}drop"][:, m].mean(0).tolist()
        flip = records[f"{prefix}flip"][:, m].mean(0).tolist()
        curves[name] = {"drop": drop, "flip": flip, "drop_area": curve_area(drop), "flip_area": curve_area(flip)}
    seeds_drop = records[f"{prefix}random_drop"].mean(0)  # [seed, k]
    seeds_flip = records[f"{prefix}random_flip"].mean(0)
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
    return curves


def summarize(records: Mapping[str, Any], methods: Sequence[str], ks: Sequence[int]) -> dict[str, Any]:
    """Mean deletion curves (per layer, across layers), areas, random baseline, tree test, AttAttr completeness."""
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
    completeness = None
    if "completeness_error" in records:
        completeness = {"method": "attattr", **completeness_summary(records["completeness_error"])}
    return {
        "ks": list(ks),
        "methods": list(methods),
        "paired": paired_areas(records, methods),
        "n_examples": int(records["drop"].shape[0]),
        "mean_tokens": _mean(records["n_tokens"]),
        "mean_words": _mean(records["n_words"]),
        "mean_predicted_prob": _mean(records["prob"]),
        "curves": _curves(records, methods),
        "cross_layer": {
            "rule": CROSS_LAYER_RULE,
            "curves": _curves(records, methods, "cross_"),
            "paired": paired_areas(records, methods, "cross_"),
        },
        "trees": trees,
        "completeness": completeness,
        "seconds_per_example": {name: _mean(records["seconds"][:, m]) for m, name in enumerate(methods)},
    }


def paired_areas(records: Mapping[str, Any], methods: Sequence[str], prefix: str = "") -> dict[str, Any]:
    """Per-example comparison of drop-curve areas: each method against every other and against random.

    For a pair (a, b): the mean over examples of ``area_a - area_b``, its standard error, and the
    share of examples where ``a``'s area is larger (ties count half). Random uses the mean over seeds.
    ``prefix`` ``"cross_"``: the cross-layer curves.
    """
    drops = records[f"{prefix}drop"]
    areas = {name: [curve_area(row) for row in drops[:, m].tolist()] for m, name in enumerate(methods)}
    areas["random"] = [curve_area(row) for row in records[f"{prefix}random_drop"].mean(1).tolist()]
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


def ground_truth(records: Mapping[str, Any], methods: Sequence[str], source: str | None = None) -> dict[str, Any]:
    """How often each method finds the planted pairs, under both conventions; the planted pairs' removal.

    Per convention and method: top-1 / top-3 over all layers, per layer and in the best layer, the
    share whose top edges touch a planted position, whether the tree and the graph join a planted
    pair, and (for examples whose truth names a layer) the hit rate within that layer.
    """
    layer = records["gt_layer"].long()  # [example], -1: no layer given
    given = layer >= 0
    out: dict[str, Any] = {
        "n_examples": int(layer.shape[0]),
        "source": source,
        "hit": HIT_RULE,
        "default_convention": next(iter(CONVENTIONS)),
        "n_examples_with_layer": int(given.sum()),
        "conventions": {},
    }
    for convention, rule in CONVENTIONS.items():
        table: dict[str, Any] = {}
        for m, name in enumerate(methods):
            row: dict[str, Any] = {}
            for k in (1, 3):
                per_example = records[f"gt_{convention}_layer_top{k}"][:, m]  # [example, layer]
                per_layer = per_example.mean(0)
                row[f"top{k}"] = _mean(records[f"gt_{convention}_top{k}"][:, m])
                row[f"touch{k}"] = _mean(records[f"gt_{convention}_touch{k}"][:, m])
                row[f"layer_top{k}"] = per_layer.tolist()
                row[f"best_layer_top{k}"] = int(per_layer.argmax())
                row[f"best_layer_top{k}_rate"] = float(per_layer.max())
                if bool(given.any()):
                    row[f"planted_layer_top{k}"] = _mean(per_example[given, layer[given]])
            row["tree_connects"] = _mean(records[f"gt_{convention}_tree"][:, m])
            row["graph_connects"] = _mean(records[f"gt_{convention}_graph"][:, m])
            table[name] = row
        out["conventions"][convention] = {"rule": rule, "methods": table}
    drop, flip = records["gt_removal_drop"], records["gt_removal_flip"]  # [example, 1 + layer]
    out["removal"] = {
        "what": "every connection of the planted pairs (both directions, all pieces) removed in all layers at once, "
        "and in each layer alone",
        "all_layers": {"drop": _mean(drop[:, 0]), "flip": _mean(flip[:, 0])},
        "per_layer": {"drop": drop[:, 1:].mean(0).tolist(), "flip": flip[:, 1:].mean(0).tolist()},
        "largest_single_layer_drop": _mean(drop[:, 1:].max(1).values),
    }
    return out


def _cells(values: Sequence[float]) -> str:
    return " | ".join(f"{v:.3f}" for v in values)


def faithfulness_markdown(summary: Mapping[str, Any], truth: Mapping[str, Any] | None = None) -> str:
    """The faithfulness tables: deletion curves per layer and across layers, trees, completeness, planted truth."""
    ks = summary["ks"]
    head = " | ".join(f"drop k={k}" for k in ks)
    lines = [
        "Per-layer removal: the top-k (layer, query, key) connections over all layers.",
        "",
        f"| method | {head} | drop area | flip area |",
        "|" + "---|" * (len(ks) + 3),
    ]
    for name, c in summary["curves"].items():
        lines.append(f"| {name} | {_cells(c['drop'])} | {c['drop_area']:.3f} | {c['flip_area']:.3f} |")
    cross = summary["cross_layer"]
    lines += [
        "",
        f"Cross-layer removal: {cross['rule']}.",
        "",
        f"| method | {head} | drop area | flip area |",
        "|" + "---|" * (len(ks) + 3),
    ]
    for name, c in cross["curves"].items():
        lines.append(f"| {name} | {_cells(c['drop'])} | {c['drop_area']:.3f} | {c['flip_area']:.3f} |")
    lines += ["", "| tree of | edges | drop | flips | random same layers: drop | flips |", "|---|---|---|---|---|---|"]
    for name, t in summary["trees"].items():
        lines.append(
            f"| {name} | {t['mean_edges']:.1f} | {t['drop']:.3f} | {t['flip']:.3f} | "
            f"{t['random_drop']:.3f} ± {t['random_drop_std']:.3f} | {t['random_flip']:.3f} |"
        )
    lines += [
        "",
        "| per example: drop areas (per layer) | mean difference ± s.e. | share of examples where the "
        "first is larger |",
        "|---|---|---|",
    ]
    for pair, p in summary["paired"].items():
        lines.append(f"| {pair} | {p['mean_difference']:+.3f} ± {p['stderr']:.3f} | {p['share_larger']:.2f} |")
    lines += ["", completeness_line(summary)]
    if truth is not None:
        lines += ["", *truth_markdown(truth)]
    cost = ", ".join(f"{m} {s * 1000:.0f} ms" for m, s in summary["seconds_per_example"].items())
    lines += ["", f"{summary['n_examples']} examples; cost per example: {cost}.", ""]
    return "\n".join(lines)


def completeness_line(summary: Mapping[str, Any]) -> str:
    """One sentence on the completeness error of the AttAttr maps that were ranked."""
    c = summary.get("completeness")
    if not c or c.get("worst") is None:
        return "Completeness: no AttAttr maps were ranked."
    return (
        f"Completeness of the {c['n_maps']} AttAttr maps ranked (example x layer): relative error worst "
        f"{c['worst']:.2e}, median {c['median']:.2e}."
    )


def truth_markdown(truth: Mapping[str, Any]) -> list[str]:
    """The planted-truth tables, one per convention (the default first), and the planted pairs' removal."""
    lines = [f"Planted truth ({truth['n_examples']} examples, {truth['source']}); a hit: {truth['hit']}."]
    with_layer = truth["n_examples_with_layer"] > 0
    for convention, data in truth["conventions"].items():
        default = " (default)" if convention == truth["default_convention"] else ""
        head = "| method | top-1 | top-3 | best layer: top-1 | top-1 touches a planted position | tree connects | "
        head += "graph connects |" + (" top-1 in the planted layer |" if with_layer else "")
        lines += [
            "",
            f"Convention `{convention}`{default}: {data['rule']}.",
            "",
            head,
            "|---" * (head.count(" | ") + 1) + "|",
        ]
        for name, r in data["methods"].items():
            cell = f" {r['planted_layer_top1']:.3f} |" if with_layer else ""
            lines.append(
                f"| {name} | {r['top1']:.3f} | {r['top3']:.3f} | {r['best_layer_top1_rate']:.3f} (layer "
                f"{r['best_layer_top1']}) | {r['touch1']:.3f} | {r['tree_connects']:.3f} | "
                f"{r['graph_connects']:.3f} |{cell}"
            )
    removal = truth["removal"]
    lines += [
        "",
        f"Removing the planted pairs in all layers: drop {removal['all_layers']['drop']:.3f}, flips "
        f"{removal['all_layers']['flip']:.3f}; in one layer alone: largest drop "
        f"{removal['largest_single_layer_drop']:.3f} (mean per layer {_cells(removal['per_layer']['drop'])}).",
    ]
    return lines


def summary_table(summary: Mapping[str, Any], truth: Mapping[str, Any] | None, path: str) -> str:
    """What ``analyze.py faithfulness`` prints at the end: areas per method, planted hits (default convention)."""
    convention = None if truth is None else truth["default_convention"]
    head = "| method | drop area, per layer | drop area, all layers |"
    if convention is not None:
        head += f" top-1 ({convention}) | top-3 ({convention}) | tree connects ({convention}) |"
    lines = [
        f"faithfulness of {summary['n_examples']} examples (areas under the mean drop of the predicted "
        "class's probability):",
        head,
        "|---" * head.count(" | ") + "|---|",
    ]
    for name, c in summary["curves"].items():
        row = f"| {name} | {c['drop_area']:.3f} | {summary['cross_layer']['curves'][name]['drop_area']:.3f} |"
        if truth is not None:
            r = truth["conventions"][convention]["methods"].get(name)
            row += " | | |" if r is None else f" {r['top1']:.3f} | {r['top3']:.3f} | {r['tree_connects']:.3f} |"
        lines.append(row)
    lines += [completeness_line(summary), f"results: {path}"]
    return "\n".join(lines)


def _plot_curves(
    folder: ResultsFolder, summary: Mapping[str, Any], curves: Mapping[str, Any], name: str, xlabel: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = summary["ks"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for method, c in curves.items():
        style = {"color": "grey", "linestyle": "--"} if method == "random" else {}
        axes[0].plot(ks, c["drop"], marker="o", label=f"{method} (area {c['drop_area']:.3f})", **style)
        axes[1].plot(ks, c["flip"], marker="o", label=f"{method} (area {c['flip_area']:.3f})", **style)
    for ax, what in zip(axes, ("mean drop of the predicted-class probability", "share of flipped predictions")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Deletion curves ({summary['n_examples']} examples)")
    save_figure(fig, folder.file(f"plots/{name}"))
