"""Builders of fake results folders for the report tests (no model, no download)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

#: Tokens that would break or inject into a page that pasted them as markup.
INJECTION_TOKENS = [
    "</script>",
    '"<b>',
    "&amp;",
    '<img src=x onerror="window.__injected=1">',
    "<script>window.__injected=1</script>",
    "<!--",
    "\u2028",
    "naïve",
]


def _json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")


def tokens_of(n: int, extra: Sequence[str] = ()) -> list[str]:
    """``[CLS] w1 .. [SEP]`` of ``n`` tokens, the ``extra`` tokens placed right after ``[CLS]``."""
    middle = list(extra) + [f"w{k}" for k in range(1, n - 1 - len(extra))]
    return ["[CLS]", *middle[: n - 2], "[SEP]"]


def write_attribute_folder(
    folder: Path,
    examples: Sequence[dict[str, Any]],
    *,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """A folder as ``analyze.py attribute`` writes it; returns the payloads by name.

    Each entry of ``examples``: ``name``, ``tokens``, ``n_layers``, ``n_heads`` and optionally
    ``attention`` (default True), ``label`` (default 1), ``layers``.
    """
    gen = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    index, payloads = [], {}
    for spec in examples:
        name, tokens = spec["name"], list(spec["tokens"])
        n, n_layers, n_heads = len(tokens), spec["n_layers"], spec["n_heads"]
        attributions = 0.01 * torch.randn(n_layers, n_heads, n, n, generator=gen)  # [layer, head, q, k]
        attributions[-1, :, 0, 1] += 0.2  # [CLS] gathers from the first word in the last layer: a tree edge
        logits = torch.randn(n_layers, n_heads, n, n, generator=gen)
        attention = torch.softmax(logits, -1)  # [layer, head, q, k]
        probs = torch.softmax(torch.randn(2, generator=gen), -1)
        item = {
            "name": name,
            "tokens": tokens,
            "layers": list(spec.get("layers", range(n_layers))),
            "target": int(probs.argmax()),
            "probs": probs.tolist(),
            "predicted": int(probs.argmax()),
            "completeness_error": (torch.rand(n_layers, generator=gen) * 1e-3).tolist(),
            "convergence_delta": (torch.randn(n_layers, generator=gen) * 1e-4).tolist(),
            "n_steps_used": [7] * n_layers,
            "file": f"examples/{name}.pt",
        }
        if spec.get("label", 1) is not None:
            item["label"] = spec.get("label", 1)
        payload = {**item, "attributions": attributions}
        if spec.get("attention", True):
            payload["attention"] = attention
        (folder / "examples").mkdir(exist_ok=True)
        torch.save(payload, folder / item["file"])
        index.append(item)
        payloads[name] = payload
    _json(folder / "attributions.json", {"examples": index, "n_steps": "auto", "method": "gausslegendre"})
    _json(folder / "summary.json", {"subcommand": "attribute", "status": "complete"})
    return payloads


def write_model_folders(root: Path, n_layers: int = 3, n_heads: int = 4) -> dict[str, Path]:
    """Hand-made results of every per-model subcommand, one sub-folder each (the real files' structure)."""

    def grid(offset: float) -> list[list[float]]:
        return [[offset + 0.01 * (layer * n_heads + head) for head in range(n_heads)] for layer in range(n_layers)]

    fractions = [0.0, 0.25, 0.5, 0.75, 1.0]
    folders = {kind: root / f"toy-{kind}" for kind in ("heads", "effectiveness", "universality", "attack")}
    folders["faithfulness"] = root / "toy-faithfulness"
    _json(
        folders["heads"] / "importance.json",
        {
            "n_layers": n_layers,
            "n_heads": n_heads,
            "n_examples": 20,
            "split": "validation",
            "target": "gold label",
            "importance": {"attattr": grid(0.0), "taylor": grid(-0.05), "random_s0": grid(0.3)},
        },
    )
    curve = {"acc": [0.9, 0.88, 0.8, 0.6, 0.5]}
    _json(
        folders["heads"] / "pruning.json",
        {
            "fractions": fractions,
            "heads_removed": [0, 3, 6, 9, 12],
            "n_eval_examples": 100,
            "split": "validation",
            "unpruned": {"acc": 0.9},
            "curves": {
                "attattr": curve,
                "taylor": {"acc": [0.9, 0.85, 0.7, 0.55, 0.5]},
                "random_s0": {"acc": [0.9, 0.8, 0.7, 0.6, 0.5]},
                "random": {
                    "acc": [0.9, 0.8, 0.7, 0.6, 0.5],
                    "acc_std": [0.0] * 5,
                    "acc_min": [0.9, 0.78, 0.66, 0.58, 0.5],
                    "acc_max": [0.9, 0.82, 0.74, 0.62, 0.5],
                },
            },
            "summary": {"attattr": {"acc": {"auc": 0.75, "max_fraction_within": 0.25}}},
            "summary_definition": "auc: trapezoid area over the fractions",
        },
    )
    _json(
        folders["effectiveness"] / "effectiveness.json",
        {
            "split": "validation",
            "n_examples": 20,
            "heads_pruned_per_layer": [0, 1, 2, 3, 4],
            "curves": {"attattr_largest": [0.9, 0.7, 0.6, 0.5, 0.5], "attattr_smallest": [0.9, 0.9, 0.85, 0.7, 0.5]},
            "definition": "heads ranked per example",
        },
    )
    _json(
        folders["universality"] / "universality.json",
        {
            "method": "attattr",
            "tasks": ["sst2", "<i>rte"],
            "pearson": [[1.0, 0.4], [0.4, 1.0]],
            "spearman": [[1.0, -0.2], [-0.2, 1.0]],
            "transfer": {},
        },
    )
    source = {"example": 3, "layer": 1, "head": 2, "score": 0.19, "tokens": ["[CLS]", "x", "[SEP]"]}
    _json(
        folders["attack"] / "attack.json",
        {
            "n_source": 10,
            "n_dev": 40,
            "patterns": [source],
            "triggers": [{"tokens": ["no", "nonsense"], "text": "no nonsense", "source": source}],
            "controls": [],
            "table": {
                "classes": ["0", "1"],
                "triggers": ["no nonsense"],
                "rows": [
                    {
                        "class": cls,
                        "clean": 0.8,
                        "triggers": [{"trigger": "no nonsense", "accuracy": 0.6, "change": -0.2, "control_mean": 0.8}],
                        "control": {"mean": 0.79, "std": 0.02, "n": 3, "change": -0.01},
                        "mean_change": -0.2,
                    }
                    for cls in ("0", "1")
                ],
            },
            "overall_accuracy": {"clean": 0.8, "triggers": [0.6], "controls": [[0.79]]},
        },
    )
    ks = [1, 2, 4, 8]
    _json(
        folders["faithfulness"] / "faithfulness.json",
        {
            "ks": ks,
            "methods": ["attattr", "attention"],
            "n_examples": 10,
            "mean_tokens": 12.5,
            "curves": {
                "attattr": {
                    "drop": [0.1, 0.2, 0.3, 0.4],
                    "flip": [0.1, 0.2, 0.2, 0.5],
                    "drop_area": 0.3,
                    "flip_area": 0.3,
                },
                "attention": {
                    "drop": [0.0, 0.0, 0.1, 0.1],
                    "flip": [0, 0, 0, 0.1],
                    "drop_area": 0.05,
                    "flip_area": 0.02,
                },
                "random": {"drop": [0.0] * 4, "flip": [0.0] * 4, "drop_area": 0.0, "flip_area": 0.0},
            },
            "trees": {"attattr": {"mean_edges": 5.0, "drop": 0.1, "flip": 0.2, "random_drop": 0.0, "random_flip": 0.0}},
            "paired": {},
        },
    )
    for kind, folder in folders.items():
        _json(folder / "summary.json", {"subcommand": kind, "status": "complete"})
    return folders


def write_tree_folder(
    folder: Path, examples: Sequence[dict[str, Any]], *, mode: str = "tree", tau: float = 0.4, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """A folder as ``analyze.py tree`` writes it (``trees.json``, ``trees/<name>.json``); returns the files by name.

    Each entry of ``examples``: ``name``, ``tokens``, ``n_layers``. The trees are built with
    :mod:`lightning_attattr.analysis.trees` from random head-summed maps with a planted edge.
    """
    from lightning_attattr.analysis.trees import build_graph, build_tree, tree_to_json

    gen = torch.Generator().manual_seed(seed)
    index, files = [], {}
    for spec in examples:
        name, tokens, n_layers = spec["name"], list(spec["tokens"]), spec["n_layers"]
        n = len(tokens)
        maps = 0.01 * torch.randn(n_layers, n, n, generator=gen)  # [layer, q, k]
        maps[-1, 0, 1] += 0.2  # [CLS] gathers from the first word in the last layer
        maps[-2, 1, 2] += 0.1  # which gathers from the second one layer below
        build = build_graph if mode == "graph" else build_tree
        errors = (torch.rand(n_layers, generator=gen) * 1e-3).tolist()
        worst = max(range(n_layers), key=errors.__getitem__)
        payload = {
            "name": name,
            "predicted": 1,
            "prob": 0.75,
            **tree_to_json(build(maps, tokens, tau=tau)),
            "completeness_error": errors,
            "convergence_delta": [0.0] * n_layers,
            "max_completeness_error": errors[worst],
            "max_completeness_error_layer": worst,
        }
        _json(folder / "trees" / f"{name}.json", payload)
        files[name] = payload
        index.append(
            {
                "name": name,
                "tokens": tokens,
                "predicted": 1,
                "n_edges": len(payload["edges"]),
                "max_completeness_error": errors[worst],
                "file": f"trees/{name}.json",
            }
        )
    worst_all = max((item["max_completeness_error"] for item in index), default=None)
    summary = {"mode": mode, "tau": tau, "root": "cls", "words": False, "max_completeness_error": worst_all}
    _json(folder / "trees.json", {**summary, "examples": index})
    _json(folder / "summary.json", {"subcommand": "tree", "status": "complete"})
    return files
