"""Read a results folder of ``analyze.py`` into the compact, JSON-able dict that the report page embeds.

Pure: reads files, returns data, writes nothing. What is read, from ``results_dir`` and from each of
its immediate sub-folders (in name order):

- ``attributions.json`` (``analyze.py attribute``): every example listed there, from its
  ``examples/<name>.pt`` payload (``tokens``, ``layers``, ``attributions`` ``[layer, head, n, n]``,
  the optional raw ``attention`` of the same shape, predictions and completeness errors); the
  attribution tree of each example is built here, with :func:`~lightning_attattr.analysis.trees.build_tree`
  on the head-summed maps (``tau=0.4``, ``[CLS]`` root), and shipped as nodes and edges, and so is
  its attribution graph (:func:`~lightning_attattr.analysis.trees.build_graph`, the same tokens, so
  only its edges: one row ``[parent, child, layer, attribution, score, in_tree]`` per edge, the two
  numbers to 4 significant digits, ``in_tree`` 1 or 0); beside them the worst completeness error of
  the maps they were built from (``max_completeness_error`` and its position in ``layers``);
- ``importance.json`` / ``pruning.json`` (``heads``), ``effectiveness.json``, ``universality.json``,
  ``attack.json`` and ``faithfulness.json``: the numbers the page plots, copied with the bulky parts
  (mined patterns, per-example tokens) left out;
- ``trees.json`` (``analyze.py tree``): its summary numbers (``mode``, ``tau``, ``root``, ``words``,
  the worst completeness error) and every example it lists, from its ``trees/<name>.json``: the
  tokens (words with ``words=True``), prediction, edge count, completeness errors per layer and the
  tree as it was built there (nodes and edges; in ``graph`` mode the edges as the rows above). The
  trees are not rebuilt: the page draws the folder's own, at its own ``tau`` and root rule.

**Precision of the maps.** Every ``[n, n]`` map (one per layer and head, and one per layer for the
head sum) is quantised on its own to ``int8`` with one scale: ``scale = max|x| / 127`` and
``q = round(x / scale)`` in ``[-127, 127]``; the page shows ``q * scale``. The absolute error of
every entry is at most ``scale / 2 = max|x| / 254`` of its map (about 0.4 % of the map's largest
magnitude); a map of zeros stays exact. The head-summed maps are summed in float before they are
quantised (not from the quantised heads), and the tree and the completeness errors are computed
from the float maps as well. The bytes of an array go base64-encoded into the page; when zlib saves
at least a tenth of them (sparse real maps usually do) they are deflated first and the page
inflates them with the browser's ``DecompressionStream``.
"""

from __future__ import annotations

import base64
import json
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_attattr.core.checks import ArgumentError, DataFileError

__all__ = [
    "FORMAT_VERSION",
    "SECTION_FILES",
    "TREE_TAU",
    "decode_array",
    "find_folders",
    "load_report_data",
    "quantise",
]

#: Version of the dict layout that ``report.js`` reads.
FORMAT_VERSION = 1

#: Threshold of the attribution trees in the report (the paper's value).
TREE_TAU = 0.4

#: The per-model results a folder can hold: section kind -> the files that mark it.
SECTION_FILES: dict[str, tuple[str, ...]] = {
    "heads": ("importance.json", "pruning.json"),
    "effectiveness": ("effectiveness.json",),
    "universality": ("universality.json",),
    "attack": ("attack.json",),
    "faithfulness": ("faithfulness.json",),
    "trees": ("trees.json",),
}

_ATTRIBUTE_INDEX = "attributions.json"
_DEFLATE_GAIN = 0.9  # deflate an array only when it shrinks to at most 90 % of its bytes
_RANDOM_SEED_METHOD = re.compile(r"^random_s\d+$")


# ----------------------------------------------------------------------------- arrays
def quantise(maps: Any) -> dict[str, Any]:
    """Quantise ``[..., n, n]`` maps to int8, one scale per ``[n, n]`` map (see the module docstring).

    Args:
        maps: array-like of shape ``[..., query_pos, key_pos]`` (e.g. ``[layer, head, n, n]``), finite.

    Returns:
        ``{"shape", "encoding", "scales", "data"}``: ``shape`` as given, ``encoding`` ``"int8"`` or
        ``"int8-deflate"``, one ``scale`` per map in row-major order of the leading axes, and ``data``
        the base64 of the int8 bytes (row-major, zlib-compressed for ``"int8-deflate"``).

    Example:
        >>> packed = quantise([[[1.0, -0.5], [0.0, 0.25]]])
        >>> packed["shape"], packed["encoding"], decode_array(packed).tolist()
        ([1, 2, 2], 'int8', [[[1.0, -0.5039370078740157], [0.0, 0.25196850393700787]]])
    """
    arr = np.asarray(maps, dtype=np.float64)
    if arr.ndim < 2 or arr.shape[-1] != arr.shape[-2]:
        raise ArgumentError(f"Expected `maps` to have shape [..., n, n], but got {list(arr.shape)}.")
    flat = arr.reshape(-1, arr.shape[-1] * arr.shape[-1])  # [map, n * n]
    peak = np.abs(flat).max(1) if flat.size else np.zeros(flat.shape[0])
    scales = peak / 127.0
    safe = np.where(scales > 0, scales, 1.0)[:, None]
    q = np.clip(np.rint(flat / safe), -127, 127).astype(np.int8)
    raw = q.tobytes()
    packed = zlib.compress(raw, 6)
    deflate = len(packed) <= _DEFLATE_GAIN * len(raw)
    return {
        "shape": list(arr.shape),
        "encoding": "int8-deflate" if deflate else "int8",
        "scales": [float(s) for s in scales],
        "data": base64.b64encode(packed if deflate else raw).decode("ascii"),
    }


def decode_array(packed: Mapping[str, Any]) -> np.ndarray:
    """The float64 array of a :func:`quantise` result (what the page shows), of shape ``packed["shape"]``."""
    raw = base64.b64decode(packed["data"])
    if packed["encoding"] == "int8-deflate":
        raw = zlib.decompress(raw)
    shape = list(packed["shape"])
    q = np.frombuffer(raw, dtype=np.int8).astype(np.float64).reshape(len(packed["scales"]), -1)
    return (q * np.asarray(packed["scales"], dtype=np.float64)[:, None]).reshape(shape)


# ----------------------------------------------------------------------------- JSON
def _clean(obj: Any) -> Any:
    """``obj`` with tensors and arrays as lists and non-finite floats as ``None`` (strict JSON)."""
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # torch.Tensor
        obj = obj.detach().cpu().tolist()
    elif isinstance(obj, np.ndarray):
        obj = obj.tolist()
    elif isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataFileError(f"Expected {str(path)!r} to be a readable JSON results file, but: {err}") from err


def _subcommand(folder: Path) -> str | None:
    summary = folder / "summary.json"
    if not summary.is_file():
        return None
    try:
        value = json.loads(summary.read_text(encoding="utf-8")).get("subcommand")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


# ----------------------------------------------------------------------------- examples
def _float_array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor of any dtype
        value = value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


def _example(folder: Path, label: str, item: Mapping[str, Any], include_attention: bool) -> dict[str, Any]:
    """One example of an ``attribute`` folder: metadata, quantised maps and its attribution tree."""
    import torch

    from lightning_attattr.analysis.trees import build_graph, build_tree, tree_to_json

    name = str(item.get("name", "example"))
    file = folder / str(item.get("file", f"examples/{name}.pt"))
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (any unreadable file is reported the same way)
        raise DataFileError(
            f"Expected {str(file)!r} to be an example file of `analyze.py attribute`, but: {err}"
        ) from err
    if not isinstance(payload, Mapping) or "attributions" not in payload or "tokens" not in payload:
        raise DataFileError(f"Expected {str(file)!r} to hold `tokens` and `attributions`, but it does not.")
    tokens = [str(t) for t in payload["tokens"]]
    attributions = _float_array(payload["attributions"])  # [layer, head, query_pos, key_pos]
    n = len(tokens)
    if attributions.ndim != 4 or attributions.shape[2:] != (n, n):
        raise DataFileError(
            f"Expected `attributions` in {str(file)!r} to have shape [layer, head, {n}, {n}] (one row per token), "
            f"but got {list(attributions.shape)}."
        )
    n_layers = attributions.shape[0]
    layers = [int(v) for v in payload.get("layers", range(n_layers))]
    if len(layers) != n_layers:
        layers = list(range(n_layers))
    summed = attributions.sum(1)  # [layer, q, k]
    tree = tree_to_json(build_tree(summed, tokens, tau=TREE_TAU))
    graph = _graph_rows(tree_to_json(build_graph(summed, tokens, tau=TREE_TAU)))
    attention = None
    if include_attention and payload.get("attention") is not None:
        raw = _float_array(payload["attention"])  # [layer, head, query_pos, key_pos]
        if raw.shape == attributions.shape:
            attention = quantise(raw)
    probs = _clean(payload.get("probs", item.get("probs")))
    completeness = _clean(payload.get("completeness_error", item.get("completeness_error")))
    worst, worst_layer = _worst(completeness)
    out = {
        "key": f"{label}/{name}" if label else name,
        "name": name,
        "folder": label,
        "tokens": tokens,
        "layers": layers,
        "n_heads": int(attributions.shape[1]),
        "target": _clean(payload.get("target", item.get("target"))),
        "predicted": _clean(payload.get("predicted", item.get("predicted"))),
        "label": _clean(payload.get("label", item.get("label"))),
        "probs": probs,
        "completeness_error": completeness,
        "max_completeness_error": worst,
        "max_completeness_error_layer": worst_layer,
        "convergence_delta": _clean(payload.get("convergence_delta", item.get("convergence_delta"))),
        "n_steps_used": _clean(payload.get("n_steps_used", item.get("n_steps_used"))),
        "attributions": quantise(attributions),
        "summed": quantise(summed),
        "attention": attention,
        "tree": tree,
        "graph": graph,
    }
    return out


def _significant(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.4g}")


def _graph_rows(graph: Mapping[str, Any]) -> dict[str, Any]:
    """A graph's ``tree_to_json`` dict, shipped compactly: its edges as rows (its nodes are the tree's)."""
    rows = []
    for e in graph["edges"]:
        numbers = [_significant(e["attribution"]), _significant(e["score"])]
        rows.append([e["parent"], e["child"], e["layer"], *numbers, int(e["in_tree"])])
    return {"mode": "graph", "tau": graph["tau"], "n_layers": graph["n_layers"], "root": graph["root"], "edges": rows}


def _worst(errors: Any) -> tuple[float | None, int | None]:
    """The largest finite entry of a per-layer error list and its position, or ``(None, None)``."""
    if not isinstance(errors, list):
        return None, None
    found = [(float(v), k) for k, v in enumerate(errors) if isinstance(v, (int, float)) and math.isfinite(v)]
    if not found:
        return None, None
    value, layer = max(found)
    return value, layer


# ----------------------------------------------------------------------------- per-model sections
def _heads(folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if (folder / "importance.json").is_file():
        imp = _read_json(folder / "importance.json")
        methods = {k: v for k, v in imp.get("importance", {}).items() if not _RANDOM_SEED_METHOD.match(k)}
        out["importance"] = _clean(
            {k: imp.get(k) for k in ("n_layers", "n_heads", "n_examples", "split", "target")} | {"methods": methods}
        )
    if (folder / "pruning.json").is_file():
        pr = _read_json(folder / "pruning.json")
        keys = ("fractions", "heads_removed", "n_eval_examples", "split", "unpruned", "curves", "summary")
        out["pruning"] = _clean({k: pr.get(k) for k in keys} | {"summary_definition": pr.get("summary_definition")})
    return out


def _effectiveness(folder: Path) -> dict[str, Any]:
    eff = _read_json(folder / "effectiveness.json")
    keys = ("split", "n_examples", "heads_pruned_per_layer", "curves", "definition")
    return _clean({k: eff.get(k) for k in keys})


def _universality(folder: Path) -> dict[str, Any]:
    uni = _read_json(folder / "universality.json")
    return _clean({k: uni.get(k) for k in ("method", "tasks", "pearson", "spearman")})


def _attack(folder: Path) -> dict[str, Any]:
    att = _read_json(folder / "attack.json")
    triggers = []
    for trig in att.get("triggers", []) or []:
        source = trig.get("source", {}) or {}
        triggers.append(
            {
                "text": trig.get("text"),
                "tokens": trig.get("tokens"),
                "layer": source.get("layer"),
                "head": source.get("head"),
                "score": source.get("score"),
                "example": source.get("example"),
            }
        )
    return _clean(
        {
            "n_source": att.get("n_source"),
            "n_dev": att.get("n_dev"),
            "triggers": triggers,
            "table": att.get("table"),
            "overall_accuracy": att.get("overall_accuracy"),
        }
    )


def _faithfulness(folder: Path) -> dict[str, Any]:
    fa = _read_json(folder / "faithfulness.json")
    curves = {
        name: {k: v for k, v in curve.items() if k in ("drop", "flip", "drop_area", "flip_area")}
        for name, curve in (fa.get("curves", {}) or {}).items()
    }
    keys = ("ks", "methods", "n_examples", "mean_tokens", "trees", "paired")
    truth = folder / "groundtruth.json"  # the planted-pair hit rates, where the task has a planted pair
    extra = {"groundtruth": _read_json(truth)} if truth.is_file() else {}
    return _clean({k: fa.get(k) for k in keys} | {"curves": curves} | extra)


def _trees(folder: Path) -> dict[str, Any]:
    """The trees of an ``analyze.py tree`` folder: ``trees.json``'s summary and each listed ``trees/<name>.json``."""
    index = _read_json(folder / "trees.json")
    if not isinstance(index, Mapping):
        raise DataFileError(f"Expected {str(folder / 'trees.json')!r} to hold a JSON object, but it does not.")
    mode = index.get("mode", "tree")
    examples = [
        _tree_example(folder, item, mode) for item in index.get("examples", []) or [] if isinstance(item, Mapping)
    ]
    keys = ("mode", "tau", "root", "words", "max_completeness_error")
    return _clean({k: index.get(k) for k in keys} | {"n_examples": len(examples), "examples": examples})


def _tree_example(folder: Path, item: Mapping[str, Any], mode: str) -> dict[str, Any]:
    """One example of a ``tree`` folder: its entry of ``trees.json`` and its ``trees/<name>.json``."""
    name = str(item.get("name", "example"))
    file = folder / str(item.get("file", f"trees/{name}.json"))
    payload = _read_json(file)
    if not isinstance(payload, Mapping) or not all(k in payload for k in ("nodes", "edges", "n_layers")):
        raise DataFileError(
            f"Expected {str(file)!r} to hold `nodes`, `edges` and `n_layers` (a tree file of `analyze.py tree`), "
            "but it does not."
        )
    tokens = [str(t) for t in item.get("tokens") or []]
    n_tokens = payload.get("n_tokens", len(tokens))
    nodes, edges = list(payload["nodes"]), list(payload["edges"])
    indices = [int(node["index"]) for node in nodes] + [int(e[k]) for e in edges for k in ("parent", "child")]
    if len(tokens) != n_tokens or any(not 0 <= i < len(tokens) for i in indices):
        raise DataFileError(
            f"Expected the tokens of {name!r} in trees.json to cover every node of {str(file)!r} "
            f"({n_tokens} tokens), but got {len(tokens)}."
        )
    is_graph = payload.get("mode", mode) == "graph"
    shape = {k: payload.get(k) for k in ("mode", "root", "tau", "rule", "n_layers", "n_tokens")}
    tree = shape | {"nodes": nodes, "edges": [] if is_graph else edges}
    graph = _graph_rows(shape | {"edges": edges}) if is_graph else None
    return {
        "name": name,
        "tokens": tokens,
        "layers": list(range(int(payload["n_layers"]))),
        "predicted": payload.get("predicted", item.get("predicted")),
        "prob": payload.get("prob"),
        "n_edges": item.get("n_edges", len(edges)),
        "completeness_error": payload.get("completeness_error"),
        "max_completeness_error": payload.get("max_completeness_error", item.get("max_completeness_error")),
        "max_completeness_error_layer": payload.get("max_completeness_error_layer"),
        "tree": tree,
        "graph": graph,
    }


_SECTION_READERS = {
    "heads": _heads,
    "effectiveness": _effectiveness,
    "universality": _universality,
    "attack": _attack,
    "faithfulness": _faithfulness,
    "trees": _trees,
}


# ----------------------------------------------------------------------------- the folder
#: Sub-folders of a results folder that hold its parts, never results folders of their own.
_INNER_FOLDERS = frozenset({"examples", "parts", "plots", "tensorboard", "trees"})


def _markers() -> set[str]:
    return {_ATTRIBUTE_INDEX, *(f for files in SECTION_FILES.values() for f in files)}


def scan_folders(results_dir: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """``results_dir`` and all folders below it (any depth, name order): the reportable and the skipped.

    Returns:
        ``(included, skipped)``: the folders that hold something reportable, and ``(folder, reason)``
        for every other folder with results files (``*.json``) that the report does not show.
    """
    markers = _markers()
    included: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    stack = [results_dir]
    while stack:
        folder = stack.pop()
        reduced = _reduced_maps(folder)
        if reduced is not None:
            skipped.append((folder, f"attribution maps reduced ({reduced}); the report draws full maps only"))
        elif any((folder / m).is_file() for m in markers):
            included.append(folder)
        else:
            files = sorted(p.name for p in folder.glob("*.json") if p.is_file())
            if files:
                skipped.append((folder, f"no results the report shows ({', '.join(files[:4])})"))
        is_results = (folder / "manifest.json").is_file() or (folder / "summary.json").is_file()
        children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        stack += reversed([c for c in children if not (is_results and c.name in _INNER_FOLDERS)])
    return sorted(included), sorted(skipped)


def _reduced_maps(folder: Path) -> str | None:
    """How an ``attribute`` folder's maps were reduced (``analyze.py attribute --rows/--top_k``), else ``None``."""
    index = folder / _ATTRIBUTE_INDEX
    if not index.is_file():
        return None
    try:
        reduction = json.loads(index.read_text(encoding="utf-8")).get("reduction")
    except (OSError, ValueError, AttributeError):
        return None  # reported as unreadable where the examples are read
    return None if not reduction else ", ".join(f"{k}={v}" for k, v in dict(reduction).items())


def find_folders(results_dir: Path) -> list[Path]:
    """``results_dir`` and the folders below it (any depth) that hold something reportable, in name order."""
    return scan_folders(results_dir)[0]


def load_report_data(
    results_dir: str | Path, *, max_examples: int | None = 50, include_attention: bool = True
) -> dict[str, Any]:
    """Everything the report page shows, read from a results folder (see the module docstring).

    Args:
        results_dir: a results folder of ``analyze.py``, or a folder whose immediate sub-folders are.
        max_examples: keep at most this many examples (in folder, then index order); ``None`` keeps
            all. Each 128-token example of a 12 x 12-head model adds a few MB to the page.
        include_attention: ship the raw attention maps when the example files hold them.

    Returns:
        ``{"format", "title", "precision", "examples", "n_examples_total", "sections"}``: ``examples``
        as described in the module docstring; ``sections`` a list of
        ``{"kind", "folder", "subcommand", "data"}``.

    Raises:
        ArgumentError: ``results_dir`` is not an existing folder, or holds nothing reportable.
        DataFileError: a results file that cannot be read.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise ArgumentError(f"Expected `results_dir` to be an existing results folder, but got {str(root)!r}.")
    if max_examples is not None and (isinstance(max_examples, bool) or not isinstance(max_examples, int)):
        raise ArgumentError(f"Expected `max_examples` to be a non-negative integer or None, but got {max_examples!r}.")
    if max_examples is not None and max_examples < 0:
        raise ArgumentError(f"Expected `max_examples` to be a non-negative integer or None, but got {max_examples}.")
    folders, skipped = scan_folders(root)
    if not folders:
        wanted = ", ".join(sorted({_ATTRIBUTE_INDEX, *(f for files in SECTION_FILES.values() for f in files)}))
        why = f" (skipped {skipped[0][0].relative_to(root).as_posix() or '.'}: {skipped[0][1]})" if skipped else ""
        raise ArgumentError(
            f"Expected `results_dir` {str(root)!r} (or a folder below it, at any depth) to hold results of "
            f"analyze.py ({wanted}), but found none{why}."
        )
    examples: list[dict[str, Any]] = []
    total = 0
    sections: list[dict[str, Any]] = []
    for folder in folders:
        label = "" if folder == root else folder.relative_to(root).as_posix()
        if (folder / _ATTRIBUTE_INDEX).is_file():
            room = None if max_examples is None else max(0, max_examples - len(examples))
            found, count = _examples_limited(folder, label, include_attention, room)
            examples += found
            total += count
        for kind, files in SECTION_FILES.items():
            if any((folder / f).is_file() for f in files):
                sections.append(
                    {
                        "kind": kind,
                        "folder": label or root.name,
                        "subcommand": _subcommand(folder),
                        "data": _SECTION_READERS[kind](folder),
                    }
                )
    return {
        "format": FORMAT_VERSION,
        "title": root.resolve().name,
        "precision": (
            "maps quantised to int8 per (layer, head) map with scale max|x|/127: "
            "absolute error <= max|x|/254 of each map"
        ),
        "tree_tau": TREE_TAU,
        "examples": examples,
        "n_examples_total": total,
        "sections": sections,
        "included": [folder.relative_to(root).as_posix() or "." for folder in folders],
        "skipped": [{"folder": f.relative_to(root).as_posix() or ".", "reason": why} for f, why in skipped],
    }


def _examples_limited(
    folder: Path, label: str, include_attention: bool, room: int | None
) -> tuple[list[dict[str, Any]], int]:
    """The examples of one ``attribute`` folder, reading at most ``room`` payloads (``None``: all)."""
    index = _read_json(folder / _ATTRIBUTE_INDEX)
    items: Sequence[Any] = index.get("examples", []) if isinstance(index, Mapping) else []
    items = [item for item in items if isinstance(item, Mapping)]
    chosen = items if room is None else items[:room]
    return [_example(folder, label, item, include_attention) for item in chosen], len(items)
