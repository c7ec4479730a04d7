"""Reductions of AttAttr maps computed while attributing, for long inputs in bounded memory.

A full result holds ``[layer, head, query_pos, key_pos]`` floats per example: at 4,096 tokens a
model with 32 layers of 32 heads needs 64 GiB per example for the maps alone. With
``attribute(..., reduction=...)`` every (length group, layer) map is reduced on the model's device
as soon as its integral is done, and only the reduced values move to the CPU:

- :class:`HeadScores`: one score per (example, layer, head), pooled as
  :func:`lightning_attattr.core.importance.attribution_head_scores` pools full maps (one
  definition, :func:`pool_heads`);
- :class:`Rows`: chosen query rows (e.g. the last real token, ``Rows([-1])``), ``[layer, head,
  rows, key_pos]`` per example;
- :class:`TopK`: the ``k`` largest edges per (example, layer) with their ``(head, query_pos,
  key_pos)`` indices;
- :class:`Stream`: the full maps, written to a folder one file per (length group, layer) and
  read back with :func:`load_streamed`.

Only one layer's maps of one length group exist at a time, so the memory a reduced call needs
depends on the group's size, the heads and the tokens, not on the number of layers or
integration steps. The completeness gap (``convergence_delta``, ``completeness_error``) is
always computed from the full maps before they are reduced, so it stays exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_attattr.analysis.store import atomic_write
from lightning_attattr.core.checks import ArgumentError, ArgumentTypeError, check_choice, check_int

try:  # safetensors files when the package is there, else torch.save of tensors only
    from safetensors.torch import load_file as _load_safetensors
    from safetensors.torch import save as _safetensors_bytes
except ImportError:  # pragma: no cover - safetensors ships with transformers
    _load_safetensors = None  # type: ignore[assignment]
    _safetensors_bytes = None  # type: ignore[assignment]

__all__ = [
    "POOLINGS",
    "HeadScores",
    "Pooling",
    "Reduced",
    "Reduction",
    "Rows",
    "Stream",
    "TopK",
    "load_streamed",
    "pool_heads",
]

Pooling = Literal["max", "mean", "sum"]
#: Ways to pool one head's ``[query_pos, key_pos]`` attribution map into a score.
POOLINGS: tuple[Pooling, ...] = ("max", "mean", "sum")
#: How :class:`TopK` ranks edges.
TOPK_ORDERS: tuple[str, ...] = ("abs", "value")
#: Suffix of the files :class:`Stream` writes (``.pt`` when safetensors is not installed).
STREAM_SUFFIX = ".safetensors" if _safetensors_bytes is not None else ".pt"


def pool_heads(maps: Tensor, pooling: Pooling = "max") -> Tensor:
    """Pool the last two axes ``[..., query_pos, key_pos]`` of attribution maps into one score each.

    Args:
        maps: ``[..., query_pos, key_pos]`` attributions of real tokens only (padding would enter the pool).
        pooling: ``"max"`` (the paper: signed maximum, no absolute value), ``"mean"`` or ``"sum"``.

    Returns:
        ``[...]`` scores in the maps' dtype, on their device.

    Example:
        >>> pool_heads(torch.tensor([[[0.1, -0.5], [0.3, 0.0]]]), "max")
        tensor([0.3000])
    """
    flat = maps.flatten(-2)  # [..., query_pos * key_pos]
    if pooling == "max":
        return flat.amax(-1)
    if pooling == "mean":
        return flat.mean(-1)
    return flat.sum(-1)


# ----------------------------------------------------------------------------- the options
@dataclass(frozen=True)
class HeadScores:
    """Keep one score per (example, layer, head): the head's map pooled by ``pooling``.

    ``result.reduced.head_scores`` is ``[batch, layer, head]``, equal to
    ``attribution_head_scores(full_result, pooling)``, ready for ``head_importance``.

    Args:
        pooling: ``"max"`` (default, the paper's signed maximum), ``"mean"`` or ``"sum"`` over the
            real (query, key) entries.

    Raises:
        ValueError: unknown ``pooling``.
    """

    pooling: Pooling = "max"

    def __post_init__(self) -> None:
        check_choice("pooling", self.pooling, POOLINGS)


@dataclass(frozen=True)
class Rows:
    """Keep chosen query rows of every map: ``[layer, head, rows, key_pos]`` per example.

    Positions index each example's real tokens (padding removed), Python style: ``-1`` is the last
    real token of every example whatever its length, ``-2`` the one before, ``0`` the first. In an
    encoder-decoder the rows of a decoder site count its decoder tokens, and the layers of one example
    are zero-padded to the longest key axis (as :attr:`AttributionResult.attributions`).

    Args:
        positions: one or more distinct ints (or a single int).

    Raises:
        TypeError: not an int or a sequence of ints.
        ValueError: empty or repeated positions.

    Example:
        >>> Rows(-1).positions
        (-1,)
    """

    positions: tuple[int, ...]

    def __init__(self, positions: int | Sequence[int]) -> None:
        given = (positions,) if isinstance(positions, int) and not isinstance(positions, bool) else positions
        if (
            isinstance(given, (str, bytes))
            or not isinstance(given, Sequence)
            or any(isinstance(p, bool) or not isinstance(p, int) for p in given)
        ):
            raise ArgumentTypeError(f"Expected `positions` to be an int or a sequence of ints, but got {positions!r}.")
        if not given or len(set(given)) != len(given):
            raise ArgumentError(f"Expected `positions` to be one or more distinct ints, but got {list(given)!r}.")
        object.__setattr__(self, "positions", tuple(int(p) for p in given))

    def resolve(self, n_tokens: int) -> list[int]:
        """The positions within ``n_tokens`` real tokens (negative ones counted from the end).

        Raises:
            ValueError: a position outside ``-n_tokens .. n_tokens - 1``.
        """
        bad = [p for p in self.positions if not -n_tokens <= p < n_tokens]
        if bad:
            raise ArgumentError(
                f"Expected `Rows` positions in [{-n_tokens}, {n_tokens - 1}] (an example has {n_tokens} real "
                f"tokens), but got {bad}."
            )
        return [p % n_tokens for p in self.positions]


@dataclass(frozen=True)
class TopK:
    """Keep the ``k`` largest edges of every (example, layer) with their ``(head, query_pos, key_pos)``.

    Args:
        k: edges per (example, layer); an example with fewer entries (``heads x n x n``) keeps them all.
        by: ``"abs"`` (default): largest ``|attr|``; ``"value"``: largest signed attribution.

    Raises:
        TypeError, ValueError: ``k`` not an int >= 1, or unknown ``by``.
    """

    k: int
    by: Literal["abs", "value"] = "abs"

    def __post_init__(self) -> None:
        check_int("k", self.k, 1)
        check_choice("by", self.by, TOPK_ORDERS)


@dataclass(frozen=True)
class Stream:
    """Write the full maps to ``folder``, one file per (length group, layer), and keep only the paths.

    Each file is written atomically (a temporary file, then a rename) and holds tensors only:
    ``layer`` (the layer index), ``examples`` (``[examples]`` batch indices) and one
    ``map_<i>`` ``[head, query_pos, key_pos]`` per example ``i`` of the group (real tokens only).
    Files are safetensors when the package is installed, else ``torch.save`` files read with
    ``weights_only=True``; files of the same name are replaced. :func:`load_streamed` reads them back.

    Args:
        folder: created if missing.
        prefix: put before every file name (e.g. a batch number when several calls share a folder).

    Raises:
        TypeError, ValueError: ``folder`` is not a path or is an existing file, or ``prefix`` is not a
            string without path separators.
    """

    folder: Path
    prefix: str = ""

    def __init__(self, folder: str | Path, prefix: str = "") -> None:
        if not isinstance(folder, (str, Path)) or str(folder) == "":
            raise ArgumentTypeError(f"Expected `folder` to be a folder path (str or Path), but got {folder!r}.")
        if Path(folder).exists() and not Path(folder).is_dir():
            raise ArgumentError(f"Expected `folder` to be a folder (or a path to create), but got a file: {folder}.")
        if not isinstance(prefix, str) or "/" in prefix or "\\" in prefix:
            raise ArgumentError(f"Expected `prefix` to be a string without path separators, but got {prefix!r}.")
        object.__setattr__(self, "folder", Path(folder))
        object.__setattr__(self, "prefix", prefix)

    def path(self, group: int, layer: int) -> Path:
        """The file of one (length group, layer) pair."""
        return self.folder / f"{self.prefix}group{group:04d}_layer{layer:03d}{STREAM_SUFFIX}"


Reduction = HeadScores | Rows | TopK | Stream
_REDUCTIONS = (HeadScores, Rows, TopK, Stream)


def check_reduction(reduction: object, shards: int) -> Reduction | None:
    """Return ``reduction`` if it is ``None`` or one of the reductions, and it can be split into ``shards``.

    Shards carry partial sums of the maps: only reductions that are linear in the map (rows, summed
    or averaged head scores) add up over shards.

    Raises:
        TypeError: not a reduction.
        ValueError: a reduction that does not add up over shards with ``shards > 1``.
    """
    if reduction is None:
        return None
    if not isinstance(reduction, _REDUCTIONS):
        raise ArgumentTypeError(
            "Expected `reduction` to be None, HeadScores(...), Rows(...), TopK(...) or Stream(...), "
            f"but got {reduction!r}."
        )
    linear = isinstance(reduction, Rows) or (isinstance(reduction, HeadScores) and reduction.pooling != "max")
    if shards > 1 and not linear:
        raise ArgumentError(
            "Expected `reduction` to be Rows(...) or HeadScores('sum' or 'mean') with `shard` (shards hold partial "
            f"sums, which only these add up over), but got {reduction!r}."
        )
    return reduction


# ----------------------------------------------------------------------------- the result
@dataclass
class Reduced:
    """What a reduction kept of the maps of a batch (the field of its kind is filled, the others are ``None``).

    Attributes:
        reduction: the option it was computed with.
        head_scores: :class:`HeadScores`: ``[batch, layer, head]``.
        rows: :class:`Rows`: per example ``[layer, head, rows, key_pos]`` (real keys only).
        query_positions: :class:`Rows`: ``[batch, rows]`` long, the rows' positions among each example's
            real tokens.
        top_values: :class:`TopK`: per example ``[layer, k]`` signed attributions, largest first.
        top_indices: :class:`TopK`: per example ``[layer, k, 3]`` long ``(head, query_pos, key_pos)`` of
            ``top_values`` (positions among the example's real tokens).
        paths: :class:`Stream`: the written files, in (length group, layer) order.
    """

    reduction: Reduction
    head_scores: Tensor | None = None
    rows: list[Tensor] | None = None
    query_positions: Tensor | None = None
    top_values: list[Tensor] | None = None
    top_indices: list[Tensor] | None = None
    paths: list[Path] | None = None

    @staticmethod
    def merge(parts: Sequence[Reduced]) -> Reduced:
        """Sum the reductions of the shards of one computation (only linear reductions are split).

        Raises:
            ValueError: the parts were reduced differently, or by a reduction that does not add up.
        """
        first = parts[0]
        if any(p.reduction != first.reduction for p in parts):
            raise ArgumentError("Expected shards reduced with the same `reduction`, but they differ.")
        if first.head_scores is not None:
            scores = [p.head_scores for p in parts if p.head_scores is not None]
            return dataclasses.replace(first, head_scores=torch.stack(scores).sum(0))
        if first.rows is not None:
            rows = [p.rows for p in parts if p.rows is not None]
            return dataclasses.replace(first, rows=[torch.stack(per).sum(0) for per in zip(*rows, strict=True)])
        raise ArgumentError(f"Expected shards reduced by Rows or HeadScores, but got {first.reduction!r}.")


def stack_sites(maps: list[Tensor]) -> Tensor:
    """``[layer, head, query_pos, key_pos]`` from per-layer ``[head, n_q, n_k]`` maps.

    The sites of an encoder-decoder differ in shape (encoder ``[n_enc, n_enc]``, decoder
    self-attention ``[n_dec, n_dec]``, cross-attention ``[n_dec, n_enc]``): each map is then
    zero-padded at the end of its axes to the largest query and key counts.
    """
    q, k = max(m.shape[-2] for m in maps), max(m.shape[-1] for m in maps)
    if all(m.shape[-2:] == (q, k) for m in maps):
        return torch.stack(maps)
    return torch.stack([nn.functional.pad(m, (0, k - m.shape[-1], 0, q - m.shape[-2])) for m in maps])


class Reducer:
    """Collects the reduction of one ``attribute`` call, (length group, layer) pair by pair.

    Args:
        reduction: the option.
        size: examples in the batch.
        n_layers: attributed layers (the layer axis of the result).
        n_tokens: real tokens per example (for :class:`Rows`).
    """

    def __init__(self, reduction: Reduction, size: int, n_layers: int, n_tokens: Sequence[int]) -> None:
        self.reduction = reduction
        self.n_layers = n_layers
        self.scores: Tensor | None = None  # [batch, layer, head]
        self.per_example: list[list[Tensor]] = [[] for _ in range(size)]  # one tensor per layer
        self.indices: list[list[Tensor]] = [[] for _ in range(size)]
        self.paths: list[Path] = []
        self.groups: dict[tuple[int, ...], int] = {}
        self.query_positions: Tensor | None = None
        self.n_tokens = list(n_tokens)
        if isinstance(reduction, Rows):  # checked before any forward
            self.query_positions = torch.tensor([reduction.resolve(n) for n in n_tokens], dtype=torch.long)
        if isinstance(reduction, Stream):
            reduction.folder.mkdir(parents=True, exist_ok=True)

    def add(self, index: list[int], li: int, layer: int, attr: Tensor, real: Callable[[int, Tensor], Tensor]) -> None:
        """Reduce one pair's maps on their device and keep the result on the CPU.

        Args:
            index: batch indices of the group's examples.
            li: position of ``layer`` on the result's layer axis.
            layer: the attributed layer.
            attr: ``[examples, head, query_pos, key_pos]`` the group's maps at ``layer`` (any device).
            real: ``real(i, attr[j])``: example ``i``'s map cropped to its real tokens ``[head, n, n]``.
        """
        reduction = self.reduction
        if isinstance(reduction, Stream):
            self._write(index, layer, attr, real)
            return
        for j, i in enumerate(index):
            m = real(i, attr[j])  # [head, n, n] on the model's device
            if isinstance(reduction, HeadScores):
                if self.scores is None:
                    self.scores = torch.zeros(len(self.per_example), self.n_layers, m.shape[0], dtype=m.dtype)
                self.scores[i, li] = pool_heads(m, reduction.pooling).cpu()
            elif isinstance(reduction, Rows):
                assert self.query_positions is not None
                rows = self.query_positions[i]
                if m.shape[1] != self.n_tokens[i]:  # an encoder-decoder's decoder site: count its decoder tokens
                    rows = torch.tensor(reduction.resolve(m.shape[1]), dtype=torch.long)
                rows = rows.to(m.device)
                self.per_example[i].append(m.index_select(1, rows).cpu())  # [head, rows, n]
            else:
                values, where = _top_edges(m, reduction)
                self.per_example[i].append(values.cpu())
                self.indices[i].append(where.cpu())

    def _write(self, index: list[int], layer: int, attr: Tensor, real: Callable[[int, Tensor], Tensor]) -> None:
        assert isinstance(self.reduction, Stream)
        group = self.groups.setdefault(tuple(index), len(self.groups))
        tensors = {
            "layer": torch.tensor(layer, dtype=torch.long),
            "examples": torch.tensor(index, dtype=torch.long),
            **{f"map_{i}": real(i, attr[j]).cpu().contiguous() for j, i in enumerate(index)},
        }
        path = self.reduction.path(group, layer)
        if _safetensors_bytes is not None:
            data = _safetensors_bytes(tensors)
            atomic_write(path, lambda f: f.write(data), binary=True)
        else:  # pragma: no cover - safetensors ships with transformers
            atomic_write(path, lambda f: torch.save(tensors, f), binary=True)
        self.paths.append(path)

    def result(self) -> Reduced:
        """The collected :class:`Reduced`."""
        reduction = self.reduction
        if isinstance(reduction, HeadScores):
            return Reduced(reduction, head_scores=self.scores)
        if isinstance(reduction, Rows):
            rows = [stack_sites(per) for per in self.per_example]  # [layer, head, rows, n]
            return Reduced(reduction, rows=rows, query_positions=self.query_positions)
        if isinstance(reduction, TopK):
            values = [torch.stack(per) for per in self.per_example]  # [layer, k]
            return Reduced(reduction, top_values=values, top_indices=[torch.stack(per) for per in self.indices])
        return Reduced(reduction, paths=list(self.paths))


def _top_edges(m: Tensor, reduction: TopK) -> tuple[Tensor, Tensor]:
    """The ``k`` largest edges of one map ``[head, n, n]``: values ``[k]`` and ``(head, query, key)`` ``[k, 3]``."""
    flat = m.reshape(-1)  # [head * n * n]
    k = min(reduction.k, flat.numel())
    where = (flat.abs() if reduction.by == "abs" else flat).topk(k, sorted=True).indices  # [k]
    n_query, n_key = m.shape[1], m.shape[2]
    triples = torch.stack([where // (n_query * n_key), (where // n_key) % n_query, where % n_key], dim=1)
    return flat[where], triples


def _read(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        if _load_safetensors is None:  # pragma: no cover - safetensors ships with transformers
            raise ArgumentError(f"Expected the safetensors package to read {path}, but it is not installed.")
        return _load_safetensors(str(path))
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(loaded, dict):
        raise ArgumentError(f"Expected {path} to hold a dict of tensors written by Stream, but got {type(loaded)}.")
    return loaded


def load_streamed(paths: Sequence[str | Path], size: int | None = None) -> list[Tensor]:
    """Read the files of a :class:`Stream` reduction back into per-example maps.

    Args:
        paths: the files (``result.reduced.paths``), all of one call.
        size: examples in the batch (default: one more than the largest example index in the files).

    Returns:
        One ``[layer, head, query_pos, key_pos]`` tensor per example, layers in increasing order:
        equal to ``result.attributions`` of the same call without the reduction.

    Raises:
        ValueError: an example misses a layer that another example has.
    """
    layers: dict[int, dict[int, Tensor]] = {}  # example -> layer -> map
    for path in paths:
        content = _read(Path(path))
        layer = int(content["layer"])
        for i in content["examples"].tolist():
            layers.setdefault(int(i), {})[layer] = content[f"map_{i}"]
    count = size if size is not None else max(layers, default=-1) + 1
    expected = sorted(layers.get(0, {}))
    out = []
    for i in range(count):
        got = layers.get(i, {})
        if sorted(got) != expected or not got:
            raise ArgumentError(f"Expected layers {expected} of example {i} in `paths`, but got {sorted(got)}.")
        out.append(torch.stack([got[layer] for layer in expected]))
    return out
