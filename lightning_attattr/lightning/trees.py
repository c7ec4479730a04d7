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

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_attattr.analysis.store import ResultsFolder, atomic_write, save_figure, write_json, write_text
from lightning_attattr.analysis.trees import (
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
from lightning_attattr.lightning.analysis import model_inputs, run_examples
from lightning_attattr.lightning.compat import pl


def run_trees(
    trainer: pl.Trainer,
    model: nn.Module,
    datamodule: Any,
    folder: ResultsFolder,
    *,
    items: Sequence[dict[str, Any]],
    names: Sequence[str],
    tokens: Sequence[list[str]],
    tau: float,
    root: str,
    words: bool,
    mode: str = "tree",
    attattr_options: dict[str, Any],
    batch_size: int,
    special_tokens: Sequence[str],
) -> dict[str, Any]:
    """Trees (``mode="tree"``) or graphs (``"graph"``) of ``items`` (tokenized examples), saved under ``names``."""
    build = build_graph if mode == "graph" else build_tree
    ig = AttentionIntegratedGradients(model)

    def step(net: nn.Module, batch: dict[str, Tensor]) -> dict[str, Any]:
        inputs = model_inputs(batch)
        with torch.no_grad():
            probs = torch.softmax(model_logits(net, inputs).float(), -1).cpu()
        result = ig.attribute(inputs, target=probs.argmax(-1), return_convergence_delta=True, **attattr_options)
        return {
            "maps": [a.sum(1).float().cpu() for a in result.attributions],
            "probs": probs,
            "completeness_error": result.completeness_error.float().cpu(),  # [batch, layer]
            "convergence_delta": result.convergence_delta.float().cpu(),  # [batch, layer]
        }

    start = time.perf_counter()
    records = run_examples(
        trainer, model, folder, "attribute", list(items), list(range(len(items))), datamodule.collator, batch_size, step
    )
    seconds = time.perf_counter() - start
    if not folder.main:
        return {}
    from lightning_attattr.plotting import tree_figure

    index = []
    for row, name in enumerate(names):
        maps, labels = records["maps"][row], list(tokens[row])
        if words:
            maps, labels = merge_units(maps, labels, units_from_tokens(labels, special_tokens))
        graph = build(maps, labels, tau=tau, root=root)
        probs = records["probs"][row]
        pred = int(probs.argmax())
        errors = records["completeness_error"][row]  # [layer]
        worst = int(errors.argmax())
        completeness = {
            "completeness_error": errors.tolist(),
            "convergence_delta": records["convergence_delta"][row].tolist(),
            "max_completeness_error": float(errors[worst]),
            "max_completeness_error_layer": worst,
        }
        payload = {"name": name, "predicted": pred, "prob": float(probs[pred]), **tree_to_json(graph), **completeness}
        write_json(folder.file(f"trees/{name}.json"), payload)
        maps_file = {"tokens": labels, "maps": torch.as_tensor(maps).float(), "words": words}
        atomic_write(folder.file(f"trees/{name}.pt"), lambda f, m=maps_file: torch.save(m, f), binary=True)
        write_graphml(graph, folder.file(f"trees/{name}.graphml"))
        write_text(folder.file(f"trees/{name}.dot"), to_dot(graph))
        text = render_text(graph)
        write_text(folder.file(f"trees/{name}.txt"), text + "\n")
        title = f"{name}: class {pred} (p={float(probs[pred]):.3f}), tau={tau}, {mode}"
        save_figure(tree_figure(graph, labels, title=title), folder.file(f"plots/{name}"))
        print(f"\n{name} (predicted {pred}, p={float(probs[pred]):.3f}):\n{text}")
        print(f"worst completeness error of these maps: {float(errors[worst]):.2e} (layer {worst})")
        index.append(
            {
                "name": name,
                "tokens": labels,
                "predicted": pred,
                "n_edges": graph.number_of_edges(),
                "max_completeness_error": float(errors[worst]),
                "file": f"trees/{name}.json",
            }
        )
    worst_all = max((item["max_completeness_error"] for item in index), default=None)
    write_json(
        folder.file("trees.json"),
        {
            "mode": mode,
            "tau": tau,
            "root": root,
            "words": words,
            "max_completeness_error": worst_all,
            "examples": index,
        },
    )
    return {"timings": {"attribute_s": seconds}, "n_examples": len(index), "max_completeness_error": worst_all}
