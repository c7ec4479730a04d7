"""Attribution trees: the information flow of one example, read off its per-layer AttAttr maps.

Self-attention attribution (Hao et al., AAAI 2021, arXiv:2004.11207, Sec. 5) turns the
head-summed attribution maps of one input, ``a^l[i, j] = sum_h Attr_h(A^l)[i, j]`` for every layer
``l``, into a tree over the input tokens. Each layer's map is normalised by its largest entry; an
entry ``(i, j)`` is a *candidate edge* when its normalised score is strictly above ``tau``
(``0.4`` by default). Negative attributions therefore never survive.

The tree is grown top-down, from the last layer to the first. Every token is either outside the
tree or in it; a candidate edge ``(i, j)`` of layer ``l`` is added when the query ``i`` is already
in the tree and the key ``j`` is not. Layers are scanned from the top, queries and keys in index
order (not by score), and a token attached earlier in a layer can be a parent later in the same
layer. Every token thus gets at most one parent, and the result is a tree (deterministic for given
maps).

**Edge semantics.** An edge ``parent -> child`` is a query -> key pair ``(i, j)``: in that layer
the parent (query) gathers information from the child (key), so information flows *upwards*, from
the child to the parent and eventually to the root. The graph's edges point from parent to child
(the direction of the tree); the figure of :func:`lightning_attattr.plotting.tree_figure` draws the
flow, from child up to parent.

Two root rules (``root=``):

- ``"cls"`` (default, the paper and its authors' answer in attattr issue #9): the root is token 0
  (``[CLS]``). Each layer is normalised by its maximum over all entries (a layer whose maximum is
  ``<= 0`` gives no candidates). In the last layer only the root's row is used: the edges
  ``(0, j)``, ``j != 0``, above ``tau`` give the root's children. Layers ``L-2`` down to ``0`` then
  follow the rule above, with every query (``[CLS]`` included) allowed as a parent.
- ``"official"`` (what the official ``examples/attribution_tree.py`` does, generalised from 12 to
  ``L`` layers): each layer is normalised by ``|max|`` over the query rows ``1 .. n-1`` (the
  ``[CLS]`` row is left out of the maximum). The root is a *top token* chosen by a heuristic: sum the
  maps over all layers, divide by the absolute global maximum, zero the diagonal, the negative
  entries and row 0, and take the token (other than 0) with the largest row sum. Its children
  come from layer ``L-2``; layers ``L-3`` down to ``0`` follow the rule above with queries
  ``1 .. n-1`` only (``[CLS]`` is never a parent there). The last layer is never used, and at least
  two layers are needed.

The graph is a :class:`networkx.DiGraph` whose nodes are the token indices that are in the tree
(the root always is). Node attributes: ``token`` (text), ``index``, ``layer`` (the layer of the edge
that attached the token; the root gets ``n_layers``) and ``attribution`` (raw score of that edge;
absent on the root). Edge attributes: ``layer``, ``attribution`` (raw ``a^l[i, j]``) and ``score``
(normalised). Graph attributes: ``root``, ``tau``, ``root_rule``, ``n_layers`` and ``n_tokens``.

Word-level trees: :func:`merge_units` sums the maps over the word pieces of each word (on both the
query and the key axis) so a tree can be built over words; :func:`word_units` derives the grouping
from a fast tokenizer's ``word_ids()`` / ``sequence_ids()``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import networkx as nx
import numpy as np

from lightning_attattr.core.arrays import as_array
from lightning_attattr.core.checks import ArgumentError, ArgumentTypeError, check_choice, check_number

__all__ = [
    "ROOT_RULES",
    "build_tree",
    "merge_units",
    "render_text",
    "to_dot",
    "tree_to_json",
    "word_units",
    "write_graphml",
]

#: Allowed values of ``build_tree(root=...)``.
ROOT_RULES = ("cls", "official")

# prefixes that mark a word start in RoBERTa (byte-level BPE) and SentencePiece vocabularies
_WORD_START_MARKS = ("Ġ", "▁")


# ----------------------------------------------------------------------------- inputs
def _maps_array(maps: Any) -> np.ndarray:
    """``maps`` as a float64 ``[layer, query_pos, key_pos]`` array, or raise naming ``maps``."""
    arr = as_array("maps", maps, ("layer", "query_pos", "key_pos"))
    if arr.shape[1] != arr.shape[2]:
        raise ArgumentError(
            "Expected `maps` to have shape [layer, query_pos, key_pos] with query_pos == key_pos and no empty "
            f"axis, but got shape {list(arr.shape)}."
        )
    if not np.isfinite(arr).all():
        raise ArgumentError("Expected `maps` to hold finite values, but got NaN or infinite entries.")
    return arr


def _token_list(tokens: Sequence[str] | None, n: int) -> list[str]:
    if tokens is None:
        return [str(i) for i in range(n)]
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence):
        raise ArgumentTypeError(f"Expected `tokens` to be a list of {n} strings or None, but got {tokens!r}.")
    if len(tokens) != n:
        raise ArgumentError(f"Expected `tokens` to have one entry per position of `maps` ({n}), but got {len(tokens)}.")
    return [str(t) for t in tokens]


# ----------------------------------------------------------------------------- the tree
def _normalise(layer: np.ndarray, rows: slice) -> np.ndarray | None:
    """``layer / scale`` with the rule's scale, or ``None`` when the layer gives no candidates."""
    if rows == slice(None):  # "cls": the layer's largest entry, which must be positive
        scale = float(layer.max())
        return layer / scale if scale > 0 else None
    part = layer[rows]  # "official": |max| over the query rows 1..n-1
    scale = abs(float(part.max())) if part.size else 0.0
    return layer / scale if scale > 0 else None


def _official_top_token(arr: np.ndarray) -> int:
    """The official script's root: the token (not 0) with the largest positive attribution to others."""
    total = arr.sum(0)  # [query_pos, key_pos]
    peak = float(np.abs(total).max())
    if peak > 0:
        total = total / peak
    total = np.clip(total, 0.0, None)
    np.fill_diagonal(total, 0.0)
    total[0] = 0.0
    return 1 + int(np.argmax(total[1:].sum(1)))  # first index wins a tie


def build_tree(
    maps: Any,
    tokens: Sequence[str] | None = None,
    *,
    tau: float = 0.4,
    root: Literal["cls", "official"] = "cls",
) -> nx.DiGraph:
    """Build the attribution tree of one example from its per-layer, head-summed attribution maps.

    See the module docstring for the algorithm, the two root rules and the edge semantics.

    Args:
        maps: ``[layer, query_pos, key_pos]`` head-summed attribution maps of one example, all
            ``layer`` layers of the model from the first to the last (any number >= 1); entry
            ``[l, i, j]`` is the attribution of query token ``i`` attending to key token ``j`` in layer
            ``l``, e.g. ``result.attributions[i].sum(1)``. Tensor or array-like, finite values.
        tokens: ``query_pos`` token strings; default ``"0" .. "n-1"``.
        tau: Threshold on the normalised score, in ``(0, 1]``; an edge needs a score strictly above
            it. Default ``0.4`` (the paper's and the official code's value).
        root: ``"cls"`` (default: ``[CLS]`` is the root, children from the last layer, as the paper
            describes) or ``"official"`` (the official script's top-token heuristic; the last layer is
            unused and at least two layers are needed).

    Returns:
        A :class:`networkx.DiGraph` with edges parent (query) -> child (key); nodes are token
        indices with attributes ``token``, ``index``, ``layer`` and (except the root)
        ``attribution``; edges carry ``layer``, ``attribution`` and ``score``; the graph has ``root``,
        ``tau``, ``root_rule``, ``n_layers`` and ``n_tokens``. When no score passes ``tau`` the graph
        holds only the root.

    Raises:
        ArgumentError: ``tau`` outside ``(0, 1]``, an unknown ``root``, ``maps`` not a finite
            ``[layer, n, n]`` array, ``tokens`` without ``n`` entries, or ``root="official"`` with
            fewer than two layers or tokens.
        ArgumentTypeError: ``maps`` cannot be converted to an array, or ``tau`` is not a number.

    Example:
        >>> import numpy as np
        >>> maps = np.zeros((2, 3, 3))
        >>> maps[1, 0, 2] = 1.0  # last layer: [CLS] gathers from "b"
        >>> maps[0, 2, 1] = 0.5  # layer 0: "b" gathers from "a"
        >>> tree = build_tree(maps, ["[CLS]", "a", "b"])
        >>> sorted(tree.edges(data="layer"))
        [(0, 2, 1), (2, 1, 0)]
    """
    tau = check_number("tau", tau, 0.0, 1.0, low_open=True)
    check_choice("root", root, ROOT_RULES)
    arr = _maps_array(maps)
    n_layers, n = arr.shape[0], arr.shape[1]
    labels = _token_list(tokens, n)

    if root == "official":
        if n_layers < 2:
            raise ArgumentError(
                "Expected `maps` to hold at least 2 layers for root='official' (its last layer is unused), "
                f"but got {n_layers}; use root='cls'."
            )
        if n < 2:
            raise ArgumentError(
                f"Expected `maps` to hold at least 2 tokens for root='official' (the top token is not [CLS]), "
                f"but got {n}."
            )
        rows, top = slice(1, None), _official_top_token(arr)
    else:
        rows, top = slice(None), 0

    graph = nx.DiGraph(root=top, tau=tau, root_rule=root, n_layers=n_layers, n_tokens=n)
    graph.add_node(top, token=labels[top], index=top, layer=n_layers)

    def attach(layer: int, i: int, j: int, norm: np.ndarray) -> None:
        raw = float(arr[layer, i, j])
        graph.add_node(j, token=labels[j], index=j, layer=layer, attribution=raw)
        graph.add_edge(i, j, layer=layer, attribution=raw, score=float(norm[i, j]))

    # the root's children: the last layer's [CLS] row ("cls") or layer L-2's top-token row ("official")
    first = n_layers - 1 if root == "cls" else n_layers - 2
    norm = _normalise(arr[first], rows)
    if norm is not None:
        for j in range(n):
            if j != top and norm[top, j] > tau:
                attach(first, top, j, norm)

    queries = range(n) if root == "cls" else range(1, n)  # "official": [CLS] never a parent here
    for layer in range(first - 1, -1, -1):
        norm = _normalise(arr[layer], rows)
        if norm is None:
            continue
        for i in queries:
            for j in range(n):
                # membership is re-read for every pair: a token attached just now can be a parent next
                if norm[i, j] > tau and i in graph and j not in graph:
                    attach(layer, i, j, norm)
    return graph


# ----------------------------------------------------------------------------- export
def _check_graph(graph: object) -> nx.DiGraph:
    if not isinstance(graph, nx.DiGraph) or "root" not in graph.graph:
        raise ArgumentTypeError(
            f"Expected `graph` to be an attribution tree from build_tree, but got {type(graph).__name__}."
        )
    return graph


def _json_float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def tree_to_json(graph: nx.DiGraph) -> dict[str, Any]:
    """A JSON-serialisable description of an attribution tree.

    Args:
        graph: A tree from :func:`build_tree`.

    Returns:
        ``{"root", "tau", "rule", "n_layers", "n_tokens", "nodes", "edges"}``: ``nodes`` sorted by
        index, each ``{"index", "token", "layer", "attribution"}`` (``attribution`` is ``None`` for the
        root); ``edges`` in the order they were added (top layer first), each ``{"parent", "child",
        "layer", "attribution", "score"}`` with token indices as ``parent`` / ``child``.

    Raises:
        ArgumentTypeError: ``graph`` is not a tree from :func:`build_tree`.
    """
    graph = _check_graph(graph)
    nodes = [
        {
            "index": int(data["index"]),
            "token": str(data["token"]),
            "layer": int(data["layer"]),
            "attribution": _json_float(data.get("attribution")),
        }
        for _, data in sorted(graph.nodes(data=True), key=lambda item: item[0])
    ]
    edges = [
        {
            "parent": int(parent),
            "child": int(child),
            "layer": int(data["layer"]),
            "attribution": _json_float(data["attribution"]),
            "score": _json_float(data["score"]),
        }
        for parent, child, data in graph.edges(data=True)
    ]
    meta = graph.graph
    return {
        "root": int(meta["root"]),
        "tau": float(meta["tau"]),
        "rule": str(meta["root_rule"]),
        "n_layers": int(meta["n_layers"]),
        "n_tokens": int(meta.get("n_tokens", len(graph))),
        "nodes": nodes,
        "edges": edges,
    }


def _graphml_value(value: Any) -> Any:
    """A GraphML-safe scalar (bool, int, float or str), or ``None`` to drop the attribute."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return str(value)


def _graphml_attrs(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ((k, _graphml_value(v)) for k, v in data.items()) if v is not None}


def write_graphml(graph: nx.DiGraph, path: str | os.PathLike[str]) -> Path:
    """Write an attribution tree as GraphML (readable with ``networkx.read_graphml``, Gephi, yEd).

    Attribute values are made GraphML-safe: numpy scalars become Python numbers, anything else
    non-numeric becomes a string, and ``None`` values are left out. Node ids are written as strings
    (``"0"``, ``"3"``, ...); ``index`` keeps the integer.

    Args:
        graph: A tree from :func:`build_tree`.
        path: Target file (``.graphml``); its folder must exist.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ArgumentTypeError: ``graph`` is not a tree from :func:`build_tree`.
    """
    graph = _check_graph(graph)
    clean = nx.DiGraph(**_graphml_attrs(graph.graph))
    for node, data in graph.nodes(data=True):
        clean.add_node(node, **_graphml_attrs(data))
    for parent, child, data in graph.edges(data=True):
        clean.add_edge(parent, child, **_graphml_attrs(data))
    from lightning_attattr.analysis.store import atomic_write  # written atomically, like every results file

    return atomic_write(Path(path), lambda f: nx.write_graphml(clean, f), binary=True)


def _dot_escape(text: str) -> str:
    """Escape text for a double-quoted DOT string (Graphviz also expands ``&...;`` entities)."""
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n")


def to_dot(graph: nx.DiGraph) -> str:
    """The tree in Graphviz DOT, root at the top, edges parent -> child labelled with layer and score.

    Written by hand (no pydot/pygraphviz needed): token text is quoted and escaped (backslashes,
    quotes, newlines, ``&``, ``<`` and ``>``), so any token renders literally. Render it with e.g.
    ``dot -Tsvg tree.dot -o tree.svg``.

    Args:
        graph: A tree from :func:`build_tree`.

    Returns:
        The DOT source, ending with a newline.

    Raises:
        ArgumentTypeError: ``graph`` is not a tree from :func:`build_tree`.
    """
    graph = _check_graph(graph)
    root = graph.graph["root"]
    caption = _dot_escape(f"tau={float(graph.graph['tau']):g}, root rule {graph.graph['root_rule']}")
    lines = [
        "digraph attribution_tree {",
        f'  graph [label="{caption}"];',
        "  node [shape=box, fontname=Helvetica];",
    ]
    for node in sorted(graph.nodes):
        data = graph.nodes[node]
        label = _dot_escape(f"{data['token']} #{node}")
        style = ", style=bold" if node == root else ""
        lines.append(f'  n{node} [label="{label}"{style}];')
    for parent, child, data in graph.edges(data=True):
        width = 1.0 + 2.0 * min(max(float(data["score"]), 0.0), 1.0)
        label = _dot_escape(f"L{data['layer']} {float(data['score']):.2f}")
        lines.append(f'  n{parent} -> n{child} [label="{label}", penwidth={width:.2f}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_text(graph: nx.DiGraph) -> str:
    """A plain-text drawing of the tree for the terminal, children ordered by token index.

    Example:
        >>> import numpy as np
        >>> maps = np.zeros((2, 3, 3))
        >>> maps[1, 0, 2], maps[0, 2, 1] = 1.0, 0.5
        >>> print(render_text(build_tree(maps, ["[CLS]", "a", "b"])))
        [CLS] #0 (root)
        └── b #2  layer 1  attr 1
            └── a #1  layer 0  attr 0.5

    Args:
        graph: A tree from :func:`build_tree`.

    Returns:
        One line per tree node (no trailing newline): ``token #index  layer l  attr a``.

    Raises:
        ArgumentTypeError: ``graph`` is not a tree from :func:`build_tree`.
    """
    graph = _check_graph(graph)

    def show(node: int) -> str:
        return str(graph.nodes[node]["token"]).replace("\n", "\\n").replace("\r", "\\r") + f" #{node}"

    root = graph.graph["root"]
    lines = [f"{show(root)} (root)"]
    # iterative depth-first walk over (node, prefix of its line, is the last child); reversed so index order pops
    stack = [(child, "", k == 0) for k, child in enumerate(sorted(graph.successors(root), reverse=True))]
    while stack:
        node, prefix, last = stack.pop()
        data = graph.nodes[node]
        branch = "└── " if last else "├── "
        lines.append(f"{prefix}{branch}{show(node)}  layer {data['layer']}  attr {float(data['attribution']):.3g}")
        inner = prefix + ("    " if last else "│   ")
        for k, child in enumerate(sorted(graph.successors(node), reverse=True)):
            stack.append((child, inner, k == 0))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- word level
def _unit_text(pieces: Sequence[str]) -> str:
    parts = [p[2:] if p.startswith("##") and len(p) > 2 else p for p in pieces]
    text = "".join(parts)
    if text[:1] in _WORD_START_MARKS and len(text) > 1:
        text = text[1:]
    return text


def merge_units(maps: Any, tokens: Sequence[str], units: Sequence[int]) -> tuple[Any, list[str]]:
    """Merge word pieces into words: sum the maps over the pieces of each unit, on both axes.

    This is the documented aggregation rule: a unit's entry is the SUM of its pieces' entries,
    ``merged[..., u, v] = sum_{i in u, j in v} maps[..., i, j]``. Attribution is additive (by
    completeness the entries of a layer add up to ``F(A) - F(0)``), so summing keeps every layer's
    total, and hence completeness, unchanged; the merged maps can go straight into
    :func:`build_tree`. (Averaging would not preserve totals, and max-pooling would not either.)

    Args:
        maps: ``[..., query_pos, key_pos]`` attribution maps, e.g. ``[layer, n, n]`` or
            ``[layer, head, n, n]``. A tensor stays a tensor (same dtype and device), anything else
            becomes a float64 numpy array.
        tokens: ``n`` token strings.
        units: ``n`` unit ids, one per token; the tokens of one unit must form one contiguous run
            (e.g. ``[0, 1, 1, 2]``). Units are numbered in order of appearance in the output.

    Returns:
        ``(merged, unit_tokens)``: ``merged`` of shape ``[..., n_units, n_units]`` and the text of
        each unit, its pieces joined with WordPiece ``##`` prefixes removed and a leading ``Ġ`` /
        ``▁`` (RoBERTa / SentencePiece word start) stripped.

    Raises:
        ArgumentError: ``maps`` not square on its last two axes, ``tokens`` or ``units`` without
            ``n`` entries, or a unit that is not one contiguous run.

    Example:
        >>> import numpy as np
        >>> merged, words = merge_units(np.ones((1, 3, 3)), ["[CLS]", "play", "##ing"], [0, 1, 1])
        >>> words, merged[0].tolist()
        (['[CLS]', 'playing'], [[1.0, 2.0], [2.0, 4.0]])
    """
    is_tensor = hasattr(maps, "detach") and hasattr(maps, "cpu")
    arr = maps if is_tensor else np.asarray(maps, dtype=np.float64)
    shape = list(arr.shape)
    if len(shape) < 2 or shape[-1] != shape[-2] or shape[-1] == 0:
        raise ArgumentError(
            f"Expected `maps` to have shape [..., query_pos, key_pos] with query_pos == key_pos, but got shape {shape}."
        )
    n = shape[-1]
    labels = _token_list(tokens, n)
    if isinstance(units, (str, bytes)) or not isinstance(units, Sequence) or len(units) != n:
        raise ArgumentError(
            f"Expected `units` to be a list of {n} unit ids (one per token), but got "
            f"{len(units) if isinstance(units, Sequence) else type(units).__name__}."
        )
    order: list[Any] = []
    for k, unit in enumerate(units):
        if k and unit == units[k - 1]:
            continue
        if unit in order:
            raise ArgumentError(
                f"Expected `units` to give each unit one contiguous run of tokens, but unit {unit!r} "
                f"appears again at position {k} in {list(units)!r}."
            )
        order.append(unit)
    index = {unit: u for u, unit in enumerate(order)}
    pooling = np.zeros((len(order), n))  # [unit, pos]: 1 where the token belongs to the unit
    for k, unit in enumerate(units):
        pooling[index[unit], k] = 1.0
    if is_tensor:
        import torch

        pool = torch.as_tensor(pooling, dtype=arr.dtype, device=arr.device)
        merged = pool @ arr @ pool.T  # [..., unit, unit]
    else:
        merged = pooling @ arr @ pooling.T  # [..., unit, unit]
    unit_tokens = [_unit_text([labels[k] for k in range(n) if units[k] == unit]) for unit in order]
    return merged, unit_tokens


def word_units(word_ids: Sequence[int | None], sequence_ids: Sequence[int | None] | None = None) -> list[int]:
    """Unit ids (for :func:`merge_units`) from a fast tokenizer's ``word_ids()`` and ``sequence_ids()``.

    Consecutive tokens with the same word id in the same segment form one unit; a special token
    (word id ``None``) is always a unit of its own; the same word id in segment A and in segment B
    are different units (word ids restart in each segment).

    Args:
        word_ids: ``encoding.word_ids()`` (one entry per token, ``None`` for special tokens).
        sequence_ids: ``encoding.sequence_ids()`` (segment of each token); default one segment.

    Returns:
        ``n`` unit ids ``0, 1, ...`` in order of appearance.

    Raises:
        ArgumentError: ``sequence_ids`` has another length than ``word_ids``.

    Example:
        >>> word_units([None, 0, 0, 1, None, 0, None], [None, 0, 0, 0, None, 1, None])
        [0, 1, 1, 2, 3, 4, 5]
    """
    word_ids = list(word_ids)
    segments = [0] * len(word_ids) if sequence_ids is None else list(sequence_ids)
    if len(segments) != len(word_ids):
        raise ArgumentError(
            f"Expected `sequence_ids` to have one entry per token ({len(word_ids)}, as `word_ids`), "
            f"but got {len(segments)}."
        )
    units: list[int] = []
    previous: tuple[Any, Any] | None = None
    for word, segment in zip(word_ids, segments):
        key = None if word is None else (segment, word)
        if key is None or key != previous:
            units.append(units[-1] + 1 if units else 0)
        else:
            units.append(units[-1])
        previous = key
    return units


def units_from_tokens(tokens: Sequence[str], special_tokens: Sequence[str] = ("[CLS]", "[SEP]")) -> list[int]:
    """Unit ids (for :func:`merge_units`) read off the token strings alone: the documented word rule.

    - a special token is a unit of its own;
    - a WordPiece continuation (``##...``, BERT/ELECTRA) joins the previous token's unit;
    - with byte-level BPE (``Ġ`` marks a word start, RoBERTa) or SentencePiece (``▁``) vocabularies,
      recognised by any token carrying the mark, a token without the mark joins the previous unit;
    - anything else starts a new unit.

    Punctuation split off by the pre-tokenizer stays a word of its own (as in ``word_ids()``).

    Example:
        >>> units_from_tokens(["[CLS]", "un", "##believ", "##able", "film", "[SEP]"])
        [0, 1, 1, 1, 2, 3]
    """
    special = set(special_tokens)
    marked = any(t[:1] in _WORD_START_MARKS for t in tokens if t not in special)
    units: list[int] = []
    previous_special = True
    for token in tokens:
        is_special = token in special
        if is_special or previous_special or not units:
            joins = False
        elif token.startswith("##") and len(token) > 2:
            joins = True
        else:
            joins = marked and token[:1] not in _WORD_START_MARKS
        units.append(units[-1] if joins else (units[-1] + 1 if units else 0))
        previous_special = is_special
    return units
