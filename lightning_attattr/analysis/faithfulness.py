"""Faithfulness of edge explanations: delete the edges a method ranks highest and see what the model does.

For one example and one method's ``[layer, n, n]`` edge scores, :func:`top_edges` takes the ``k``
highest-scoring connections over all layers; :func:`removal_probabilities` runs the model with those
attention probabilities set to 0 in their layer (every head of the layer, no renormalisation) and
returns the class probabilities. The drop of the predicted class's probability and the share of
flipped predictions, for ``k = 1, 2, 4, ...``, form the method's deletion curve; the same number of
uniformly random connections (several seeds) gives the baseline every method must beat. A
faithful explanation's curve falls fast: its top edges are the ones the prediction depends on.
The area under a curve (:func:`curve_area`) is its mean over the ``k`` grid, with every grid point
weighted equally (the trapezoid rule on the grid's index axis, normalised to [0, 1]).

Trees get the same test (:func:`layer_matched_random`): their edges against random connections of
the same layers, as many per layer, none of them a tree edge.

**Cross-layer removal** (:func:`pair_scores`, :func:`top_pairs`, :func:`pair_edges`): an
interaction the model routes through several layers survives the removal of its edge in any one
layer. So connections are also ranked as *word pairs across layers*: a pair's score is the sum over
layers of its edge scores, summed over the word pieces of both words (:func:`word_maps`, the rule of
:func:`~lightning_attattr.analysis.trees.merge_units`); removing a pair removes every connection
between a piece of the query word and a piece of the key word in every layer. Special tokens are
words of their own and self pairs count, as in per-layer deletion; random pairs are the control.

**Planted truth** (:func:`planted_hits`): is a known interacting pair among a method's top edges?
A hit is a top edge that joins the two positions of any planted pair of the example, in either
direction (query -> key or key -> query). Two scoring conventions (:data:`CONVENTIONS`):

- ``words`` (the default of every summary): only edges between two distinct non-special words
  compete. Word pieces are merged into words (:func:`word_layout`: the rule of
  :func:`~lightning_attattr.analysis.trees.units_from_tokens`), a word pair's score is the sum over
  its pieces on both axes (:func:`word_maps`); self-edges and every edge into or out of [CLS], [SEP]
  or another special token are left out (:func:`word_edge_mask`). This asks "which two words
  interact?".
- ``tokens``: every token edge competes, [CLS]/[SEP] and self-edges included. A last-layer
  [CLS] <- word edge is real (the classifier reads [CLS]) and often wins here.

Planted pairs come from a data module that knows them (the synthetic task) or from a truth file
(:func:`read_truth`, :func:`check_truth`; JSON Lines, documented there).
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lightning_attattr.analysis.trees import merge_units, units_from_tokens
from lightning_attattr.core.adapter import attention_scope
from lightning_attattr.core.attribution import model_logits
from lightning_attattr.core.checks import ArgumentError, DataFileError, check_existing_file

#: Default deletion sizes.
DEFAULT_KS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)


def check_ks_fit(name: str, ks: Sequence[int], n_layers: int, shortest: int) -> None:
    """Refuse a ``k`` larger than the number of connections of the shortest example (``n_layers * n * n``).

    Raises:
        ArgumentError: the largest ``k`` does not fit.
    """
    edges = n_layers * shortest * shortest
    if max(ks) > edges:
        raise ArgumentError(
            f"Expected every value of `{name}` to be at most the number of attention connections of the shortest "
            f"example ({n_layers} layers x {shortest} x {shortest} tokens = {edges}), but got {max(ks)}."
        )


def top_edges(scores: Tensor, k: int) -> Tensor:
    """The ``k`` highest-scoring connections of ``scores`` ``[layer, n, n]`` as ``[k, 3]`` (layer, query, key).

    Ties keep the flat (layer, query, key) order, so the result is deterministic.
    """
    flat = scores.reshape(-1)
    if not 0 <= k <= flat.numel():
        raise ArgumentError(f"Expected `k` in [0, {flat.numel()}] (the number of connections), but got {k}.")
    order = torch.sort(flat, descending=True, stable=True).indices[:k]
    return _unflatten(order, scores.shape)


def _unflatten(flat: Tensor, shape: Sequence[int]) -> Tensor:
    _, n_q, n_k = shape
    return torch.stack([flat // (n_q * n_k), (flat // n_k) % n_q, flat % n_k], 1)


def random_edges(
    shape: Sequence[int], k: int, generator: torch.Generator, *, device: torch.device | str | None = None
) -> Tensor:
    """``k`` distinct connections drawn uniformly from a ``[layer, n, n]`` grid, as ``[k, 3]``.

    The draw happens on ``generator``'s device (the same connections for a seed wherever the data
    is); the result goes to ``device`` (default: the generator's device).
    """
    total = int(shape[0]) * int(shape[1]) * int(shape[2])
    if not 0 <= k <= total:
        raise ArgumentError(f"Expected `k` in [0, {total}] (the number of connections), but got {k}.")
    drawn = torch.randperm(total, generator=generator, device=generator.device)[:k]
    return _unflatten(drawn if device is None else drawn.to(device), shape)


def layer_matched_random(edges: Tensor, shape: Sequence[int], generator: torch.Generator) -> Tensor:
    """As many random connections per layer as ``edges`` ``[m, 3]`` has there, none of them one of ``edges``.

    Drawn on ``generator``'s device; returned on ``edges``' device.
    """
    _, n_q, n_k = (int(s) for s in shape)
    chosen = []
    for layer in sorted({int(x) for x in edges[:, 0].tolist()}):
        own = edges[edges[:, 0] == layer]
        taken = set((own[:, 1] * n_k + own[:, 2]).tolist())
        free = torch.tensor([f for f in range(n_q * n_k) if f not in taken], dtype=torch.long, device=generator.device)
        pick = free[torch.randperm(len(free), generator=generator, device=generator.device)[: len(own)]]
        pick = pick.to(edges.device)
        chosen.append(torch.stack([torch.full_like(pick, layer), pick // n_k, pick % n_k], 1))
    return torch.cat(chosen) if chosen else edges.new_zeros(0, 3)


def removal_masks(
    edge_sets: Sequence[Tensor], n_layers: int, n: int, *, device: torch.device | str | None = None
) -> dict[int, Tensor]:
    """Edge masks for :meth:`AttentionController.removing_edges`: row ``r`` zeroes ``edge_sets[r]``.

    Returns ``{layer: [rows, n, n]}`` float32 masks on ``device`` (default: that of the first edge
    set, the CPU without one).
    """
    if device is None:
        device = edge_sets[0].device if len(edge_sets) else torch.device("cpu")
    masks = torch.ones(len(edge_sets), n_layers, n, n, device=device)  # [rows, layer, query, key]
    for row, edges in enumerate(edge_sets):
        if len(edges):
            edges = edges.to(masks.device)
            masks[row, edges[:, 0], edges[:, 1], edges[:, 2]] = 0.0
    return {layer: masks[:, layer] for layer in range(n_layers)}


def removal_probabilities(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    edge_sets: Sequence[Tensor],
    *,
    chunk_rows: int = 64,
) -> Tensor:
    """Class probabilities ``[len(edge_sets), classes]`` of one example with each set of connections removed.

    Args:
        model: the Hugging Face classifier.
        inputs: one example without padding (batch 1: ``input_ids`` ``[1, n]`` and friends).
        edge_sets: per row a ``[m, 3]`` tensor of (layer, query, key) connections to remove.
        chunk_rows: rows per forward.

    Returns:
        ``[len(edge_sets), classes]`` float32 on the CPU (the masks are built on the model's device).
    """
    n = int(inputs["input_ids"].shape[1])
    device = next(model.parameters()).device
    out = []
    with torch.no_grad(), attention_scope(model) as ctrl:
        for start in range(0, len(edge_sets), chunk_rows):
            part = edge_sets[start : start + chunk_rows]
            masks = removal_masks(part, ctrl.n_layers, n, device=device)
            batch = {k: v.to(device).expand(len(part), *v.shape[1:]) for k, v in inputs.items()}
            with ctrl.removing_edges(masks):
                out.append(torch.softmax(model_logits(model, batch).float(), -1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 0, device="cpu")


def curve_area(values: Sequence[float]) -> float:
    """Mean of a curve over its grid by the trapezoid rule on ``[0, 1]`` (one point: the value itself)."""
    values = [float(v) for v in values]
    if len(values) == 1:
        return values[0]
    return sum((a + b) / 2 for a, b in zip(values, values[1:])) / (len(values) - 1)


#: The scoring conventions of the planted-truth test and their rules; the first is the default of summaries.
CONVENTIONS: dict[str, str] = {
    "words": "edges between two distinct non-special words only: word pieces merged to words (a word's entries "
    "summed over its pieces on both axes), self-edges and every edge into or out of a special token "
    "([CLS], [SEP], ...) left out",
    "tokens": "every token edge of every layer, special tokens and self-edges included",
}
#: The position units of a truth file.
TRUTH_UNITS: tuple[str, ...] = ("token", "word")
#: What counts as a hit of the planted-truth test.
HIT_RULE = (
    "a top edge joins the two positions of a planted pair in either direction (query -> key or key -> query); "
    "any planted pair of the example counts"
)


# ----------------------------------------------------------------------------- words
class WordLayout(NamedTuple):
    """How one example's tokens form words.

    Attributes:
        tokens: the token strings (every real token, special tokens included).
        units: per token its unit (a word or a special token), numbered ``0, 1, ...`` in order: the
            ``units`` argument of :func:`~lightning_attattr.analysis.trees.merge_units`.
        special: per unit whether it is a special token.
        words: per word position (``0, 1, ...`` over the non-special units in order) its unit.
    """

    tokens: list[str]
    units: list[int]
    special: list[bool]
    words: list[int]


def word_layout(tokens: Sequence[str], special_tokens: Sequence[str]) -> WordLayout:
    """The words of one example, read off its token strings by the documented word rule.

    Word pieces join words as :func:`~lightning_attattr.analysis.trees.units_from_tokens` says
    (WordPiece ``##`` continuations, BPE/SentencePiece pieces without a word-start mark); a special
    token is a unit of its own and no word.

    Example:
        >>> word_layout(["[CLS]", "un", "##real", "film", "[SEP]"], ["[CLS]", "[SEP]"]).words
        [1, 2]
    """
    tokens = [str(t) for t in tokens]
    units = units_from_tokens(tokens, special_tokens)
    special = [False] * (units[-1] + 1 if units else 0)
    for token, unit in zip(tokens, units):
        special[unit] = token in set(special_tokens)
    return WordLayout(tokens, units, special, [u for u, is_special in enumerate(special) if not is_special])


def word_maps(scores: Tensor, layout: WordLayout) -> Tensor:
    """``[..., n, n]`` token scores as ``[..., units, units]``: summed over each word's pieces on both axes."""
    return merge_units(scores, layout.tokens, layout.units)[0]


def word_edge_mask(layout: WordLayout, *, device: torch.device | str | None = None) -> Tensor:
    """``[units, units]`` bool: the edges the ``words`` convention ranks (distinct non-special words).

    On ``device`` (default: torch's default device).
    """
    word = ~torch.tensor(layout.special, dtype=torch.bool, device=device)  # [units]
    return word[:, None] & word[None, :] & ~torch.eye(len(layout.special), dtype=torch.bool, device=device)


# ----------------------------------------------------------------------------- planted truth
def _ranked(scores: Tensor, eligible: Tensor | None) -> Tensor:
    """Flat indices of the eligible entries of ``scores``, highest first (ties in flat order)."""
    flat = scores.reshape(-1)
    if eligible is None:
        return torch.sort(flat, descending=True, stable=True).indices
    keep = eligible.to(scores.device).expand_as(scores).reshape(-1).nonzero().squeeze(1)
    return keep[torch.sort(flat[keep], descending=True, stable=True).indices]


def planted_hits(
    scores: Tensor,
    pairs: Sequence[tuple[int, int]] | tuple[int, int],
    ks: Sequence[int] = (1, 3),
    *,
    eligible: Tensor | None = None,
) -> dict[str, Tensor]:
    """Whether a planted pair (either direction) is among the top edges of ``scores`` ``[layer, n, n]``.

    Args:
        scores: one method's edge scores of one example.
        pairs: the planted pairs ``[(i, j), ...]`` (positions of ``scores``' axes), or one pair; a hit is
            an edge joining the two positions of any of them, in either direction.
        ks: the top sizes.
        eligible: ``[n, n]`` bool, the edges that compete in every layer (e.g. :func:`word_edge_mask`);
            default all. A planted pair that is not eligible is never a hit.

    Returns:
        ``{"top{k}": bool over all layers, "layer_top{k}": [layer] bool within each layer, "touch{k}": bool,
        one of the top ``k`` edges over all layers has a planted position at either end}`` per ``k``, on
        ``scores``' device.
    """
    if len(pairs) == 2 and all(isinstance(p, int) for p in pairs):
        pairs = [pairs]  # type: ignore[list-item]  # one (query, key) pair given alone
    n_layers, n, _ = scores.shape
    hit = torch.zeros(n, n, dtype=torch.bool, device=scores.device)  # [query, key]: joins a planted pair
    planted = torch.zeros(n, dtype=torch.bool, device=scores.device)  # [pos]: one end of a planted pair
    for a, b in pairs:  # type: ignore[misc]  # pairs is a list of pairs from here on
        hit[a, b] = hit[b, a] = True
        planted[a] = planted[b] = True
    if eligible is not None:
        eligible = eligible.to(scores.device)
        hit &= eligible
    out: dict[str, Tensor] = {}
    ranked = _unflatten(_ranked(scores, eligible), scores.shape)  # [edges, 3]
    per_layer = [_unflatten(_ranked(scores[layer : layer + 1], eligible), (1, n, n)) for layer in range(n_layers)]
    for k in ks:
        top = ranked[:k]
        out[f"top{k}"] = hit[top[:, 1], top[:, 2]].any()
        out[f"touch{k}"] = (planted[top[:, 1]] | planted[top[:, 2]]).any()
        out[f"layer_top{k}"] = torch.stack([hit[e[:k, 1], e[:k, 2]].any() for e in per_layer])
    return out


class PlantedTruth(NamedTuple):
    """The planted interacting pairs of one example (one line of a truth file).

    Attributes:
        index: the example's index in the dev split.
        pairs: ``((i, j), ...)``, ``i`` the query (the position that reads), ``j`` the key; either order counts.
        unit: ``"token"`` (token positions of the model input, 0 = [CLS]) or ``"word"`` (word positions,
            from 0 over the non-special words in order; see :class:`WordLayout`).
        layer: the layer the interaction is planted in, or ``None``.
        line: the line of the truth file (0: not from a file).
    """

    index: int  # type: ignore[assignment]  # the field hides tuple.index(); nothing here calls that method
    pairs: tuple[tuple[int, int], ...]
    unit: str
    layer: int | None = None
    line: int = 0


def planted_positions(truth: PlantedTruth, layout: WordLayout) -> dict[str, list[tuple[int, int]]]:
    """The planted pairs in each convention's positions: token positions and unit indices (:func:`word_maps`).

    A word pair becomes every (piece, piece) token pair; a token pair becomes the pair of its units
    (which the ``words`` convention never ranks when the two tokens share a word or one is special).
    """
    if truth.unit == "token":
        units = [(layout.units[i], layout.units[j]) for i, j in truth.pairs]
        return {"tokens": list(truth.pairs), "words": units}
    units = [(layout.words[a], layout.words[b]) for a, b in truth.pairs]
    pieces = [
        (i, j)
        for u, v in units
        for i, unit_i in enumerate(layout.units)
        if unit_i == u
        for j, unit_j in enumerate(layout.units)
        if unit_j == v
    ]
    return {"tokens": pieces, "words": units}


_TRUTH_KEYS = ("index", "pairs", "unit", "layer")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_truth(path: str | os.PathLike[str], name: str = "truth") -> list[PlantedTruth]:
    """Read a truth file (JSON Lines), checking everything that needs no model or data.

    One JSON object per line (blank lines are skipped)::

        {"index": 3, "pairs": [[5, 2]], "unit": "word"}
        {"index": 7, "pairs": [[4, 1], [6, 1]], "unit": "token", "layer": 2}

    ``index`` is the example's index in the dev split; ``pairs`` a non-empty list of ``[i, j]``
    position pairs (``i`` the query, ``j`` the key; either order counts as a hit); ``unit``
    ``"token"`` (token positions of the model input, 0 = [CLS]) or ``"word"`` (word positions from 0
    over the non-special words, word pieces merged); ``layer`` (optional) the layer of the planted
    interaction. Ranges that need the model and the data are checked by :func:`check_truth`.

    Raises:
        PathNotFoundError: no such file.
        DataFileError: bad JSON, not an object, a missing or unknown key, a value of the wrong type,
            a pair naming one position twice, an unknown unit, an index given twice, or no line at all;
            the message names the file and the line.
    """
    file = check_existing_file(name, path)
    out: list[PlantedTruth] = []
    seen: dict[int, int] = {}
    text = file.read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue

        def fail(what: str, got: object, number: int = number) -> DataFileError:
            return DataFileError(f"`{name}` {file}, line {number}: expected {what}, but got {got}.")

        try:
            item = json.loads(line)
        except ValueError as err:
            raise fail("one JSON object per line", f"invalid JSON ({err})") from None
        if not isinstance(item, dict):
            raise fail("a JSON object", repr(item))
        missing = [k for k in ("index", "pairs", "unit") if k not in item]
        if missing:
            raise fail("the keys 'index', 'pairs' and 'unit' (and optionally 'layer')", f"no {missing[0]!r}")
        unknown = sorted(set(item) - set(_TRUTH_KEYS))
        if unknown:
            raise fail(f"only the keys {list(_TRUTH_KEYS)}", f"{unknown[0]!r}")
        index, pairs, unit, layer = item["index"], item["pairs"], item["unit"], item.get("layer")
        if not _is_int(index) or index < 0:
            raise fail("`index` to be an integer >= 0 (an example of the dev split)", repr(index))
        if index in seen:
            raise fail("each `index` once (all pairs of an example on one line)", f"{index} again (line {seen[index]})")
        if unit not in TRUTH_UNITS:
            raise fail(f"`unit` to be one of {list(TRUTH_UNITS)}", repr(unit))
        if not isinstance(pairs, list) or not pairs:
            raise fail("`pairs` to be a non-empty list of [i, j] position pairs", repr(pairs))
        for pair in pairs:
            if not (isinstance(pair, list) and len(pair) == 2 and all(_is_int(p) and p >= 0 for p in pair)):
                raise fail("every pair to be [i, j] with two integer positions >= 0", repr(pair))
            if pair[0] == pair[1]:
                raise fail("every pair to name two different positions", repr(pair))
        if layer is not None and (not _is_int(layer) or layer < 0):
            raise fail("`layer` to be an integer >= 0 or absent", repr(layer))
        seen[index] = number
        out.append(PlantedTruth(index, tuple((p[0], p[1]) for p in pairs), unit, layer, number))
    if not out:
        raise DataFileError(f"`{name}` {file}: expected at least one line with an example, but the file has none.")
    return out


def check_truth(
    truth: Sequence[PlantedTruth],
    path: str | os.PathLike[str],
    *,
    n_dev: int,
    split: str,
    n_layers: int,
    size: Callable[[int], tuple[int, int]],
    name: str = "truth",
) -> None:
    """Check a truth file's ranges against the data and the model (one line naming file and line).

    Args:
        truth: :func:`read_truth`'s records.
        path: the file (for the messages).
        n_dev: the size of the dev split.
        split: the dev split's name.
        n_layers: the model's layer count.
        size: ``index -> (tokens, words)`` of a dev example (tokens with the special ones).
        name: the argument that named the file.

    Raises:
        DataFileError: an index outside the dev split, a position outside its example, a layer outside the model.
    """
    for t in truth:

        def fail(what: str, got: object, t: PlantedTruth = t) -> DataFileError:
            return DataFileError(f"`{name}` {path}, line {t.line}: expected {what}, but got {got}.")

        if t.index >= n_dev:
            raise fail(f"`index` in [0, {n_dev - 1}] (the {split} set)", t.index)
        if t.layer is not None and t.layer >= n_layers:
            raise fail(f"`layer` in [0, {n_layers - 1}] (the model's layers)", t.layer)
        n_tokens, n_words = size(t.index)
        limit, what = (n_tokens, "tokens, 0 = [CLS]") if t.unit == "token" else (n_words, "non-special words")
        for pair in t.pairs:
            if max(pair) >= limit:
                raise fail(f"{t.unit} positions in [0, {limit - 1}] (example {t.index} has {limit} {what})", list(pair))


# ----------------------------------------------------------------------------- cross-layer removal
def pair_scores(scores: Tensor, layout: WordLayout) -> Tensor:
    """``[units, units]`` score of each word pair across layers: summed over layers and over both words' pieces."""
    return word_maps(scores.sum(0), layout)


def top_pairs(scores: Tensor, k: int) -> Tensor:
    """The ``min(k, units²)`` highest-scoring pairs of ``scores`` ``[units, units]`` as ``[k, 2]`` (query, key)."""
    return top_edges(scores[None], min(k, scores.numel()))[:, 1:]


def random_pairs(
    n_units: int, k: int, generator: torch.Generator, *, device: torch.device | str | None = None
) -> Tensor:
    """``min(k, n_units²)`` distinct (query, key) unit pairs drawn uniformly, as ``[k, 2]``.

    Drawn on ``generator``'s device, returned on ``device`` (default: the generator's device).
    """
    return random_edges((1, n_units, n_units), min(k, n_units * n_units), generator, device=device)[:, 1:]


def pair_edges(pairs: Tensor, layout: WordLayout, n_layers: int) -> Tensor:
    """The connections of unit pairs ``[m, 2]`` in every layer: every (query piece, key piece), as ``[e, 3]``.

    On ``pairs``' device.
    """
    device = pairs.device
    units = torch.tensor(layout.units, device=device)  # [pos]: the unit of each token
    layers = torch.arange(n_layers, device=device)
    rows = []
    for u, v in pairs.tolist():
        q, k = (units == u).nonzero().squeeze(1), (units == v).nonzero().squeeze(1)
        grid = torch.cartesian_prod(layers, q, k)  # [layer * |q| * |k|, 3]
        rows.append(grid.reshape(-1, 3))
    return torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.long, device=device)


def token_pair_edges(
    pairs: Sequence[tuple[int, int]],
    n_layers: int,
    layers: Sequence[int] | None = None,
    *,
    device: torch.device | str | None = None,
) -> Tensor:
    """Both directions of token pairs ``[(i, j), ...]`` in ``layers`` (default all), as ``[e, 3]``.

    On ``device`` (default: torch's default device).
    """
    rows = [
        (layer, a, b)
        for layer in (range(n_layers) if layers is None else layers)
        for i, j in pairs
        for a, b in ((i, j), (j, i))
    ]
    return torch.tensor(sorted(set(rows)), dtype=torch.long, device=device).reshape(-1, 3)


# ----------------------------------------------------------------------------- completeness
def completeness_summary(errors: Tensor) -> dict[str, Any]:
    """Worst and median of relative completeness errors ``[example, layer]`` (AttAttr's ``completeness_error``)."""
    values = [float(v) for v in errors.reshape(-1).tolist()]
    return {
        "worst": max(values) if values else None,
        "median": statistics.median(values) if values else None,
        "n_maps": len(values),
        "definition": "|sum of a layer's attributions - (F(A) - F(A^l := 0))| / max(|F(A) - F(A^l := 0)|, 1e-3), "
        "per example and layer",
    }
