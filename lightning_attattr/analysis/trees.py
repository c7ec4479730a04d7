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

**The attribution graph** (:func:`build_graph`, ``analyze.py tree --mode graph``) is the same
top-down scan without the one-parent rule: a candidate edge ``(i, j)`` of layer ``l`` is kept
whenever the query ``i`` is already in, also when the key ``j`` is in already (has a parent from a
higher layer, or is the root). It has exactly the tree's tokens, with the same node attributes,
and every tree edge (marked ``in_tree=True``) plus the edges the one-parent rule drops
(``in_tree=False``). Self-connections ``(i, i)`` are left out, as in the tree: they link no two
tokens. Example of the difference: two words that both hang from ``[CLS]`` in the last layer and
interact in layer 2 keep their layer-2 edge in the graph, not in the tree.

*Representation.* The graph is a :class:`networkx.MultiDiGraph` over the same token-index nodes as
the tree, one edge per (parent, child, layer) with key ``layer``: the JSON, GraphML and text
exports keep the tree's layout, and code that reads a tree's ``(parent, child, layer)`` edges
(e.g. edge-deletion tests) reads a graph unchanged. As a token-level graph it can hold a cycle
(``i -> j`` in layer 3, ``j -> i`` in layer 1); its *layered view* (:func:`layered_dag`) is the
DAG: nodes ``(rank, token)``, an edge of layer ``l`` going from the query at rank ``l + 1`` to the
key at rank ``l`` (the representation entering layer ``l``), the root on rank ``n_layers``. The DOT
export and the drawing show that view.

:func:`connects` answers "does this tree or graph link these two tokens?" (either direction, any
layer or one layer) for both.

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
from lightning_attattr.core.checks import ArgumentError, ArgumentTypeError, check_choice, check_int, check_number

__all__ = [
    "MODES",
    "ROOT_RULES",
    "RootRule",
    "build_graph",
    "build_tree",
    "connects",
    "layered_dag",
    "merge_units",
    "render_text",
    "to_dot",
    "tree_from_json",
    "tree_to_json",
    "word_units",
    "write_graphml",
]

#: Allowed values of ``build_tree(root=...)`` / ``build_graph(root=...)``.
ROOT_RULES = ("cls", "official")
#: The root rules as a type (``ROOT_RULES``).
RootRule = Literal["cls", "official"]

#: What ``analyze.py tree --mode`` builds: the paper's tree (:func:`build_tree`) or the graph (:func:`build_graph`).
MODES = ("tree", "graph")

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


def _grow(maps: Any, tokens: Sequence[str] | None, tau: float, root: str, *, one_parent: bool) -> nx.DiGraph:
    """The top-down scan of :func:`build_tree` (``one_parent=True``) or :func:`build_graph` (``False``)."""
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

    meta = dict(root=top, tau=tau, root_rule=root, n_layers=n_layers, n_tokens=n)
    graph = nx.DiGraph(**meta, mode="tree") if one_parent else nx.MultiDiGraph(**meta, mode="graph")
    graph.add_node(top, token=labels[top], index=top, layer=n_layers)

    def attach(layer: int, i: int, j: int, norm: np.ndarray) -> None:
        raw = float(arr[layer, i, j])
        new = j not in graph
        if new:  # the edge that brings a token in is its tree edge; its layer and attribution describe the node
            graph.add_node(j, token=labels[j], index=j, layer=layer, attribution=raw)
        if one_parent:
            graph.add_edge(i, j, layer=layer, attribution=raw, score=float(norm[i, j]))
        else:
            graph.add_edge(i, j, key=layer, layer=layer, attribution=raw, score=float(norm[i, j]), in_tree=new)

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
                # membership is re-read for every pair: a token attached just now can be a parent next;
                # the tree takes a key only while it has no parent, the graph any key but the query itself
                if norm[i, j] > tau and i in graph and (j not in graph if one_parent else j != i):
                    attach(layer, i, j, norm)
    return graph


def build_tree(
    maps: Any,
    tokens: Sequence[str] | None = None,
    *,
    tau: float = 0.4,
    root: RootRule = "cls",
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
        ``tau``, ``root_rule``, ``n_layers``, ``n_tokens`` and ``mode`` (``"tree"``). When no score
        passes ``tau`` the graph holds only the root.

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
    return _grow(maps, tokens, tau, root, one_parent=True)


def build_graph(
    maps: Any,
    tokens: Sequence[str] | None = None,
    *,
    tau: float = 0.4,
    root: RootRule = "cls",
) -> nx.MultiDiGraph:
    """Build the attribution graph of one example: the tree's scan keeping every candidate edge.

    Same arguments, thresholds and scan as :func:`build_tree` (see the module docstring), without
    the one-parent rule: in every layer each candidate edge whose query is already in is kept, also
    when its key is already in. The graph has the tree's tokens and every tree edge, plus the edges
    the tree drops; self-connections are left out.

    Args:
        maps: ``[layer, query_pos, key_pos]`` head-summed attribution maps of one example (as for
            :func:`build_tree`).
        tokens: ``query_pos`` token strings; default ``"0" .. "n-1"``.
        tau: Threshold on the normalised score, in ``(0, 1]`` (strictly above); default ``0.4``.
        root: ``"cls"`` (default) or ``"official"``, as for :func:`build_tree`.

    Returns:
        A :class:`networkx.MultiDiGraph` over token indices, edges parent (query) -> child (key),
        at most one per (parent, child, layer), keyed by ``layer``. Nodes and graph attributes as
        in :func:`build_tree` (``mode`` is ``"graph"``); edges carry ``layer``, ``attribution``,
        ``score`` and ``in_tree`` (``True`` for the edges :func:`build_tree` keeps). Its DAG view is
        :func:`layered_dag`.

    Raises:
        ArgumentError: as :func:`build_tree`.
        ArgumentTypeError: as :func:`build_tree`.

    Example:
        >>> import numpy as np
        >>> maps = np.zeros((2, 3, 3))
        >>> maps[1, 0, 1:] = 1.0  # last layer: [CLS] gathers from "a" and from "b"
        >>> maps[0, 2, 1] = 0.5  # layer 0: "b" gathers from "a", but "a" has a parent already
        >>> sorted(build_tree(maps, ["[CLS]", "a", "b"]).edges(data="layer"))
        [(0, 1, 1), (0, 2, 1)]
        >>> sorted(build_graph(maps, ["[CLS]", "a", "b"]).edges(data="layer"))
        [(0, 1, 1), (0, 2, 1), (2, 1, 0)]
    """
    return _grow(maps, tokens, tau, root, one_parent=False)


def _check_pair(pair: Any, n: int) -> tuple[int, int]:
    ok = (
        isinstance(pair, Sequence)
        and not isinstance(pair, (str, bytes))
        and len(pair) == 2
        and all(isinstance(p, (int, np.integer)) and not isinstance(p, (bool, np.bool_)) for p in pair)
    )
    if not ok or not all(0 <= int(p) < n for p in pair):
        raise ArgumentError(
            f"Expected `pair` to be two token positions in [0, {n - 1}] (the graph's {n} positions), but got {pair!r}."
        )
    return int(pair[0]), int(pair[1])


def connects(graph: nx.DiGraph, pair: tuple[int, int], *, layer: int | None = None) -> bool:
    """Whether a tree or graph has an edge between the two tokens of ``pair``, in either direction.

    The one test of "does the explanation link these two tokens?" for both :func:`build_tree` and
    :func:`build_graph` results (a graph holds every candidate edge, so it connects a pair at least
    whenever the tree does).

    Args:
        graph: A tree from :func:`build_tree` or a graph from :func:`build_graph`.
        pair: Two positions ``(a, b)`` of the maps the graph was built from (tokens, or words for maps
            merged with :func:`merge_units`); order does not matter. ``a == b`` is never connected.
        layer: Only an edge of this layer counts (``0 .. n_layers - 1``); ``None`` (default): any layer.

    Returns:
        ``True`` when an edge ``a -> b`` or ``b -> a`` (of ``layer``, when given) is in ``graph``.

    Raises:
        ArgumentError: ``pair`` is not two positions inside the graph's tokens, or ``layer`` is out of range.
        ArgumentTypeError: ``graph`` is not a tree or graph from this module.

    Example:
        >>> import numpy as np
        >>> maps = np.zeros((2, 3, 3))
        >>> maps[1, 0, 1:] = 1.0
        >>> maps[0, 2, 1] = 0.5
        >>> connects(build_tree(maps), (1, 2)), connects(build_graph(maps), (1, 2))
        (False, True)
        >>> connects(build_graph(maps), (1, 2), layer=1)
        False
    """
    graph = _check_graph(graph)
    a, b = _check_pair(pair, int(graph.graph.get("n_tokens", max(graph.nodes) + 1)))
    if layer is not None:
        check_int("layer", layer, 0, int(graph.graph["n_layers"]) - 1)
    for u, v in ((a, b), (b, a)):
        if not graph.has_edge(u, v):
            continue
        data = graph[u][v].values() if graph.is_multigraph() else (graph[u][v],)
        if layer is None or any(int(d["layer"]) == layer for d in data):
            return True
    return False


def layered_dag(graph: nx.DiGraph) -> nx.DiGraph:
    """The layered view of a tree or graph: a DAG over ``(rank, token)``, its layers as ranks.

    Rank ``r`` holds the tokens' representations entering layer ``r`` (rank ``n_layers``: the last
    layer's output, where the root sits). An edge of layer ``l`` between parent (query) ``i`` and
    child (key) ``j`` becomes ``(l + 1, i) -> (l, j)`` with the edge's attributes and
    ``kind="attention"``. The positions of one token are chained from rank to rank by
    ``kind="residual"`` edges (downwards, top to bottom), so the view stays connected; the root
    ``(n_layers, root)`` is always a node. Edges go from a higher to a lower rank only, hence the
    result is acyclic. (The scan reads membership as it goes, so a token brought in by an edge of
    layer ``l`` can be the query of a later edge of the same layer, as in the tree; that query's
    node on rank ``l + 1`` is then linked to the rest by its residual chain only.)

    Args:
        graph: A tree from :func:`build_tree` or a graph from :func:`build_graph`.

    Returns:
        A :class:`networkx.DiGraph` with nodes ``(rank, token)`` (attributes ``rank``, ``index``,
        ``token``) and the graph attributes of ``graph``.

    Raises:
        ArgumentTypeError: ``graph`` is not a tree or graph from this module.
    """
    graph = _check_graph(graph)
    top = int(graph.graph["n_layers"])
    dag = nx.DiGraph(**graph.graph)

    def node(rank: int, token: int) -> tuple[int, int]:
        if (rank, token) not in dag:
            dag.add_node((rank, token), rank=rank, index=token, token=graph.nodes[token]["token"])
        return rank, token

    root = graph.graph["root"]
    node(top, root)
    for parent, child, data in graph.edges(data=True):
        layer = int(data["layer"])
        dag.add_edge(node(layer + 1, parent), node(layer, child), kind="attention", **data)
    ranks: dict[int, list[int]] = {}
    for rank, token in dag.nodes:
        ranks.setdefault(token, []).append(rank)
    for token, found in ranks.items():
        found.sort(reverse=True)
        for high, low in zip(found, found[1:]):
            dag.add_edge((high, token), (low, token), kind="residual")
    return dag


# ----------------------------------------------------------------------------- export
def _check_graph(graph: object) -> nx.DiGraph:
    if not isinstance(graph, nx.DiGraph) or "root" not in graph.graph:
        raise ArgumentTypeError(
            "Expected `graph` to be an attribution tree or graph from build_tree / build_graph, "
            f"but got {type(graph).__name__}."
        )
    return graph


def _mode(graph: nx.DiGraph) -> str:
    """``"graph"`` for a :func:`build_graph` result, ``"tree"`` for a tree (also one built before ``mode`` existed)."""
    return str(graph.graph.get("mode", "graph" if graph.is_multigraph() else "tree"))


def _graph_edges(graph: nx.DiGraph) -> list[tuple[int, int, dict[str, Any]]]:
    """A graph's edges, top layer first, then by parent and child index."""
    return sorted(graph.edges(data=True), key=lambda e: (-int(e[2]["layer"]), int(e[0]), int(e[1])))


def _json_float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def tree_to_json(graph: nx.DiGraph) -> dict[str, Any]:
    """A JSON-serialisable description of an attribution tree or graph.

    Args:
        graph: A tree from :func:`build_tree` or a graph from :func:`build_graph`.

    Returns:
        ``{"mode", "root", "tau", "rule", "n_layers", "n_tokens", "nodes", "edges"}``: ``mode`` is
        ``"tree"`` or ``"graph"``; ``nodes`` sorted by index, each ``{"index", "token", "layer",
        "attribution"}`` (``attribution`` is ``None`` for the root); ``edges`` each ``{"parent", "child",
        "layer", "attribution", "score"}`` with token indices as ``parent`` / ``child``, for a tree in
        the order they were added (top layer first), for a graph sorted by layer (top first), parent
        and child, each with ``"in_tree"`` too. :func:`tree_from_json` reads it back.

    Raises:
        ArgumentTypeError: ``graph`` is not a tree or graph from this module.
    """
    graph = _check_graph(graph)
    mode = _mode(graph)
    nodes = [
        {
            "index": int(data["index"]),
            "token": str(data["token"]),
            "layer": int(data["layer"]),
            "attribution": _json_float(data.get("attribution")),
        }
        for _, data in sorted(graph.nodes(data=True), key=lambda item: item[0])
    ]
    edges = []
    for parent, child, data in _graph_edges(graph) if mode == "graph" else graph.edges(data=True):
        edge = {
            "parent": int(parent),
            "child": int(child),
            "layer": int(data["layer"]),
            "attribution": _json_float(data["attribution"]),
            "score": _json_float(data["score"]),
        }
        if mode == "graph":
            edge["in_tree"] = bool(data.get("in_tree", False))
        edges.append(edge)
    meta = graph.graph
    return {
        "mode": mode,
        "root": int(meta["root"]),
        "tau": float(meta["tau"]),
        "rule": str(meta["root_rule"]),
        "n_layers": int(meta["n_layers"]),
        "n_tokens": int(meta.get("n_tokens", len(graph))),
        "nodes": nodes,
        "edges": edges,
    }


def tree_from_json(data: Any) -> nx.DiGraph:
    """The tree or graph of a :func:`tree_to_json` dict (e.g. a ``trees/<name>.json`` file of ``analyze.py tree``).

    Extra keys (``name``, ``predicted``, completeness errors, ...) are ignored; a dict without
    ``mode`` is a tree.

    Args:
        data: The dict.

    Returns:
        A :class:`networkx.DiGraph` (tree) or :class:`networkx.MultiDiGraph` (graph) equal to the one
        written, except that ``None`` scores come back as ``nan``.

    Raises:
        ArgumentError: ``data`` lacks a key of the layout, or has an unknown ``mode``.
    """
    needed = ("root", "tau", "rule", "n_layers", "nodes", "edges")
    if not isinstance(data, dict) or any(k not in data for k in needed):
        have = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ArgumentError(f"Expected `data` to be a dict from tree_to_json with keys {list(needed)}, but got {have}.")
    mode = data.get("mode", "tree")
    check_choice("mode", mode, MODES)
    n_tokens = int(data.get("n_tokens", len(data["nodes"])))
    meta = dict(
        root=int(data["root"]),
        tau=float(data["tau"]),
        root_rule=str(data["rule"]),
        n_layers=int(data["n_layers"]),
        n_tokens=n_tokens,
        mode=mode,
    )
    graph = nx.DiGraph(**meta) if mode == "tree" else nx.MultiDiGraph(**meta)

    def number(value: Any) -> float:
        return float("nan") if value is None else float(value)

    for node in data["nodes"]:
        attrs = {"token": str(node["token"]), "index": int(node["index"]), "layer": int(node["layer"])}
        if node.get("attribution") is not None:
            attrs["attribution"] = float(node["attribution"])
        graph.add_node(int(node["index"]), **attrs)
    for edge in data["edges"]:
        layer = int(edge["layer"])
        attrs = {"layer": layer, "attribution": number(edge["attribution"]), "score": number(edge["score"])}
        if mode == "graph":
            graph.add_edge(int(edge["parent"]), int(edge["child"]), key=layer, in_tree=bool(edge["in_tree"]), **attrs)
        else:
            graph.add_edge(int(edge["parent"]), int(edge["child"]), **attrs)
    return graph


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
    """Write an attribution tree or graph as GraphML (readable with ``networkx.read_graphml``, Gephi, yEd).

    Attribute values are made GraphML-safe: numpy scalars become Python numbers, anything else
    non-numeric becomes a string, and ``None`` values are left out. Node ids are written as strings
    (``"0"``, ``"3"``, ...); ``index`` keeps the integer. A graph's edges get their layer as GraphML
    edge id (read it back with ``networkx.read_graphml(path, force_multigraph=True)``).

    Args:
        graph: A tree from :func:`build_tree` or a graph from :func:`build_graph`.
        path: Target file (``.graphml``); its folder must exist.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ArgumentTypeError: ``graph`` is not a tree or graph from this module.
    """
    graph = _check_graph(graph)
    meta = _graphml_attrs({**graph.graph, "mode": _mode(graph)})
    clean = nx.MultiDiGraph(**meta) if graph.is_multigraph() else nx.DiGraph(**meta)
    for node, data in graph.nodes(data=True):
        clean.add_node(node, **_graphml_attrs(data))
    if graph.is_multigraph():
        for parent, child, key, data in graph.edges(keys=True, data=True):
            clean.add_edge(parent, child, key=key, **_graphml_attrs(data))
    else:
        for parent, child, data in graph.edges(data=True):
            clean.add_edge(parent, child, **_graphml_attrs(data))
    from lightning_attattr.analysis.store import atomic_write  # written atomically, like every results file

    return atomic_write(Path(path), lambda f: nx.write_graphml(clean, f), binary=True)


def _dot_escape(text: str) -> str:
    """Escape text for a double-quoted DOT string (Graphviz also expands ``&...;`` entities)."""
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n")


def _dot_width(score: Any) -> float:
    return 1.0 + 2.0 * min(max(float(score), 0.0), 1.0)


def to_dot(graph: nx.DiGraph) -> str:
    """A tree or graph in Graphviz DOT, edges parent -> child labelled with layer and score.

    A tree is drawn root at the top, one node per token. A graph is drawn as its layered view
    (:func:`layered_dag`): one row per rank (``root`` on top, then ``L{n-1}`` .. ``L0``), a node per
    (rank, token) used, attention edges solid when they are tree edges and dashed otherwise, and the
    rank-to-rank chain of one token as dotted grey lines.

    Written by hand (no pydot/pygraphviz needed): token text is quoted and escaped (backslashes,
    quotes, newlines, ``&``, ``<`` and ``>``), so any token renders literally. Render it with e.g.
    ``dot -Tsvg tree.dot -o tree.svg``.

    Args:
        graph: A tree from :func:`build_tree` or a graph from :func:`build_graph`.

    Returns:
        The DOT source, ending with a newline.

    Raises:
        ArgumentTypeError: ``graph`` is not a tree or graph from this module.
    """
    graph = _check_graph(graph)
    if _mode(graph) == "graph":
        return _graph_dot(graph)
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
        label = _dot_escape(f"L{data['layer']} {float(data['score']):.2f}")
        lines.append(f'  n{parent} -> n{child} [label="{label}", penwidth={_dot_width(data["score"]):.2f}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _graph_dot(graph: nx.MultiDiGraph) -> str:
    """The layered DOT drawing of a graph (see :func:`to_dot`)."""
    dag = layered_dag(graph)
    top = int(graph.graph["n_layers"])
    root = graph.graph["root"]
    caption = _dot_escape(
        f"attribution graph: tau={float(graph.graph['tau']):g}, root rule {graph.graph['root_rule']}; "
        "dashed: edges the tree drops"
    )
    lines = [
        "digraph attribution_graph {",
        f'  graph [label="{caption}", rankdir=TB, newrank=true];',
        "  node [shape=box, fontname=Helvetica];",
    ]
    ranks = list(range(top, -1, -1))  # a column of rank labels, chained invisibly to keep the rows in order
    lines += [f'  r{r} [label="{"root" if r == top else f"L{r}"}", shape=plaintext, fontcolor=gray40];' for r in ranks]
    lines.append("  " + " -> ".join(f"r{r}" for r in ranks) + " [style=invis];")

    def name(node: tuple[int, int]) -> str:
        return f"n{node[1]}_r{node[0]}"

    for r in ranks:
        members = sorted(token for rank, token in dag.nodes if rank == r)
        if not members:
            continue
        body = []
        for token in members:
            label = _dot_escape(f"{dag.nodes[(r, token)]['token']} #{token}")
            style = ", style=bold" if (r, token) == (top, root) else ""
            body.append(f'{name((r, token))} [label="{label}"{style}];')
        lines.append(f"  {{ rank=same; r{r}; " + " ".join(body) + " }")
    for u, v, data in sorted(dag.edges(data=True), key=lambda e: (-e[0][0], e[0][1], e[1][1])):
        if data["kind"] == "residual":
            lines.append(f"  {name(u)} -> {name(v)} [style=dotted, color=gray60, arrowhead=none];")
            continue
        label = _dot_escape(f"L{data['layer']} {float(data['score']):.2f}")
        style = "" if data.get("in_tree") else ", style=dashed"
        lines.append(f'  {name(u)} -> {name(v)} [label="{label}", penwidth={_dot_width(data["score"]):.2f}{style}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _show_token(graph: nx.DiGraph, node: int) -> str:
    return str(graph.nodes[node]["token"]).replace("\n", "\\n").replace("\r", "\\r") + f" #{node}"


def render_text(graph: nx.DiGraph) -> str:
    """A plain-text drawing of a tree (children ordered by token index) or a graph (its edges layer by layer).

    Example:
        >>> import numpy as np
        >>> maps = np.zeros((2, 3, 3))
        >>> maps[1, 0, 2], maps[0, 2, 1] = 1.0, 0.5
        >>> print(render_text(build_tree(maps, ["[CLS]", "a", "b"])))
        [CLS] #0 (root)
        └── b #2  layer 1  attr 1
            └── a #1  layer 0  attr 0.5
        >>> maps[1, 0, 1] = 1.0
        >>> print(render_text(build_graph(maps, ["[CLS]", "a", "b"])))
        [CLS] #0 (root): 3 edges, 1 not in the tree (marked +); parent <- child
        layer 1
          [CLS] #0 <- a #1  attr 1
          [CLS] #0 <- b #2  attr 1
        layer 0
        + b #2 <- a #1  attr 0.5

    Args:
        graph: A tree from :func:`build_tree` or a graph from :func:`build_graph`.

    Returns:
        For a tree, one line per tree node (no trailing newline): ``token #index  layer l  attr a``.
        For a graph, a heading line, then per layer with edges (top first) a ``layer l`` line and one
        line per edge ``parent #i <- child #j  attr a``, prefixed ``+`` when the tree drops the edge.

    Raises:
        ArgumentTypeError: ``graph`` is not a tree or graph from this module.
    """
    graph = _check_graph(graph)
    root = graph.graph["root"]
    if _mode(graph) == "graph":
        edges = _graph_edges(graph)
        extra = sum(1 for *_, d in edges if not d.get("in_tree"))
        lines = [
            f"{_show_token(graph, root)} (root): {len(edges)} edges, {extra} not in the tree (marked +); "
            "parent <- child"
        ]
        layer = None
        for parent, child, data in edges:
            if data["layer"] != layer:
                layer = data["layer"]
                lines.append(f"layer {layer}")
            mark = "  " if data.get("in_tree") else "+ "
            edge = f"{_show_token(graph, parent)} <- {_show_token(graph, child)}"
            lines.append(f"{mark}{edge}  attr {float(data['attribution']):.3g}")
        return "\n".join(lines)

    lines = [f"{_show_token(graph, root)} (root)"]
    # iterative depth-first walk over (node, prefix of its line, is the last child); reversed so index order pops
    stack = [(child, "", k == 0) for k, child in enumerate(sorted(graph.successors(root), reverse=True))]
    while stack:
        node, prefix, last = stack.pop()
        data = graph.nodes[node]
        branch = "└── " if last else "├── "
        lines.append(
            f"{prefix}{branch}{_show_token(graph, node)}  layer {data['layer']}  attr {float(data['attribution']):.3g}"
        )
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

        pool = torch.as_tensor(pooling, dtype=maps.dtype, device=maps.device)  # arr is maps
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
