"""``analyze.py tree``: attribution trees (paper section 5) or graphs of dev examples or raw text.

AttAttr of the predicted class for every layer (resumable and distributed through
:func:`~lightning_attattr.lightning.analysis.run_examples`), summed over heads, optionally merged
from wordpieces into words (:func:`lightning_attattr.analysis.trees.merge_units`), then
:func:`~lightning_attattr.analysis.trees.build_tree` (``mode="tree"``) or
:func:`~lightning_attattr.analysis.trees.build_graph` (``mode="graph"``). Per example the folder gets
``trees/<name>.json``, ``.graphml``, ``.dot`` and ``.txt``, the head-summed maps the tree was built
from (``trees/<name>.pt``: ``tokens``, ``maps`` ``[layer, n, n]``, on words with ``words=True``) and
a drawing ``plots/<name>.png/.svg``;
``trees.json`` indexes them, and the text rendering is printed.

**Completeness beside the tree.** Each ``trees/<name>.json`` holds the completeness error per layer of
the maps it was built from (``completeness_error``: ``|sum of the layer's attributions - (F(A) -
F(0))|`` relative to ``|F(A) - F(0)|``, as ``analyze.py attribute`` saves it), their
``convergence_delta`` and the worst of the errors (``max_completeness_error``, with its layer);
merging pieces into words keeps every layer's total, so the errors hold for word maps too. The
worst error is printed under each tree, and ``trees.json`` and the run's result give the worst
over all examples.
"""

from __future__ import annotations

import functools
import time
from typing import Any, cast

import torch
from torch import Tensor, nn

from lightning_attattr.analysis.settings import TreeSettings
from lightning_attattr.analysis.store import ResultsFolder, atomic_write, save_figure, write_json, write_text
from lightning_attattr.analysis.trees import (
    RootRule,
    build_graph,
    build_tree,
    merge_units,
    render_text,
    to_dot,
    tree_to_json,
    units_from_tokens,
    write_graphml,
)
from lightning_attattr.core.attribution import AttentionIntegratedGradients, model_logits
from lightning_attattr.lightning.analysis import model_inputs, special_tokens
from lightning_attattr.lightning.job import Examples, Job


def run_trees(job: Job, settings: TreeSettings, examples: Examples) -> dict[str, Any]:
    """Trees (``settings.mode="tree"``) or graphs (``"graph"``) of ``examples``, saved under their names.

    Args:
        job: the trainer, model, data module and results folder.
        settings: the ``tree`` options (threshold, root rule, mode, word merging, integration).
        examples: the tokenized examples, their names and tokens.
    """
    start = time.perf_counter()
    records = _attribute(job, settings, examples)
    seconds = time.perf_counter() - start
    if not job.folder.main:
        return {}
    specials = special_tokens(job.datamodule.tokenizer)
    index = []
    for row, name in enumerate(examples.names):
        maps, labels = records["maps"][row], list(examples.tokens[row])
        if settings.words:
            maps, labels = merge_units(maps, labels, units_from_tokens(labels, specials))
        index.append(_write_example(job.folder, settings, name, maps, labels, _row(records, row)))
    worst_all = max((item["max_completeness_error"] for item in index), default=None)
    write_json(
        job.folder.file("trees.json"),
        {
            "mode": settings.mode,
            "tau": settings.tau,
            "root": settings.root,
            "words": settings.words,
            "max_completeness_error": worst_all,
            "examples": index,
        },
    )
    return {"timings": {"attribute_s": seconds}, "n_examples": len(index), "max_completeness_error": worst_all}


def _attribute(job: Job, settings: TreeSettings, examples: Examples) -> dict[str, Any]:
    """Per example: head-summed AttAttr maps of the predicted class, probabilities, completeness (resumable)."""
    ig = AttentionIntegratedGradients(job.model)
    options = settings.integration.kwargs()

    def step(net: nn.Module, batch: dict[str, Tensor]) -> dict[str, Any]:
        inputs = model_inputs(batch)
        with torch.no_grad():
            probs = torch.softmax(model_logits(net, inputs).float(), -1).cpu()
        result = ig.attribute(inputs, target=probs.argmax(-1), return_convergence_delta=True, **options)
        return {
            "maps": [a.sum(1).float().cpu() for a in result.attributions],
            "probs": probs,
            "completeness_error": result.require("completeness_error").float().cpu(),  # [batch, layer]
            "convergence_delta": result.require("convergence_delta").float().cpu(),  # [batch, layer]
        }

    items = list(examples.items)
    return job.examples("attribute", items, list(range(len(items))), settings.batch_size, step)


def _row(records: dict[str, Any], row: int) -> dict[str, Any]:
    """One example's prediction and completeness, as its ``trees/<name>.json`` records them."""
    probs = records["probs"][row]
    pred = int(probs.argmax())
    errors = records["completeness_error"][row]  # [layer]
    worst = int(errors.argmax())
    return {
        "predicted": pred,
        "prob": float(probs[pred]),
        "completeness_error": errors.tolist(),
        "convergence_delta": records["convergence_delta"][row].tolist(),
        "max_completeness_error": float(errors[worst]),
        "max_completeness_error_layer": worst,
    }


def _write_example(
    folder: ResultsFolder, settings: TreeSettings, name: str, maps: Any, labels: list[str], row: dict[str, Any]
) -> dict[str, Any]:
    """Build one example's tree or graph, write its files and drawing, print it; its entry of ``trees.json``."""
    from lightning_attattr.plotting import tree_figure

    build = build_graph if settings.mode == "graph" else build_tree
    graph = build(maps, labels, tau=settings.tau, root=cast(RootRule, settings.root))  # checked by the settings
    pred, prob = row["predicted"], row["prob"]
    completeness = {k: v for k, v in row.items() if k not in ("predicted", "prob")}
    payload = {"name": name, "predicted": pred, "prob": prob, **tree_to_json(graph), **completeness}
    write_json(folder.file(f"trees/{name}.json"), payload)
    maps_file = {"tokens": labels, "maps": torch.as_tensor(maps).float(), "words": settings.words}
    atomic_write(folder.file(f"trees/{name}.pt"), functools.partial(torch.save, maps_file), binary=True)
    write_graphml(graph, folder.file(f"trees/{name}.graphml"))
    write_text(folder.file(f"trees/{name}.dot"), to_dot(graph))
    text = render_text(graph)
    write_text(folder.file(f"trees/{name}.txt"), text + "\n")
    title = f"{name}: class {pred} (p={prob:.3f}), tau={settings.tau}, {settings.mode}"
    save_figure(tree_figure(graph, labels, title=title), folder.file(f"plots/{name}"))
    worst, layer = row["max_completeness_error"], row["max_completeness_error_layer"]
    print(f"\n{name} (predicted {pred}, p={prob:.3f}):\n{text}")
    print(f"worst completeness error of these maps: {worst:.2e} (layer {layer})")
    return {
        "name": name,
        "tokens": labels,
        "predicted": pred,
        "n_edges": graph.number_of_edges(),
        "max_completeness_error": worst,
        "file": f"trees/{name}.json",
    }
