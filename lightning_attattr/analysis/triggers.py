"""Adversarial triggers from attribution patterns (Hao et al., AAAI 2021, section 6; arXiv:2004.11207).

The strongest attention connections of a source example, pasted into other examples, can flip
the model's prediction (a non-targeted attack). The method, as the official code
(``examples/run_adver_connection.py`` and ``examples/run_adver_evaluate.py``) does it:

1. **Mining** (:func:`mine_pattern`). For one source example, AttAttr of the predicted class gives
   ``[layer, head, query_pos, key_pos]``. In every layer take the head holding that layer's largest
   entry; across layers keep the strictly largest (the first layer wins ties): this is the head of
   the global maximum entry. In that head's map take the two largest entries, top-1 ``(i1, j1)`` and
   top-2 ``(i2, j2)`` (query row, key column). The pattern's score is ``value1 + value2``.
2. **Ranking and selection** (:func:`rank_patterns`, :func:`select_triggers`). Patterns are sorted by
   score, descending, and kept from the top until the first one scoring below ``threshold`` (0.02).
3. **Construction** (:func:`make_trigger`). The positions are ``{i1, j1}`` when
   ``value2 / value1 < ratio`` (0.2), else ``{i1, j1, i2, j2}``; they are sorted and special tokens
   dropped. Each remaining wordpiece keeps its segment and a relative position in it (positions
   index the full token list, ``[CLS]`` = 0, ``seg_pos`` = the first ``[SEP]``, ``n`` tokens)::

       segment A (p < seg_pos):  r = p / (seg_pos - 1)                 # p over the length of A
       segment B (p > seg_pos):  r = (p - seg_pos) / (n - 2 - seg_pos)  # offset over the length of B

4. **Insertion** (:func:`insert_trigger`). Into each target segment, in source order:
   ``index = round((len0 + a) * r)`` with Python 3 rounding (halves to even), ``len0`` the segment's
   original length and ``a`` the number of trigger tokens for it; an index not after the previous
   insertion becomes the previous + 1. Then pair truncation, longest first.
5. **Evaluation** (:func:`per_class_accuracy`, :func:`attack_table`). Accuracy per gold class, clean
   and triggered, next to a control inserting the same number of random tokens at the same places
   (:func:`random_control`).

Where we deviate from the official code: it keeps patterns while their score is >= threshold with
an off-by-one, so when no pattern falls below the threshold it also drops the last one; we keep it.
A pattern whose top-1 value is 0 (the code would divide by zero) uses the top-1 pair only.

Everything here is pure Python/torch; the Lightning layer runs the model and the tokenizer.

Example:
    >>> import torch
    >>> tokens = ["[CLS]", "a", "good", "film", "[SEP]"]
    >>> attr = torch.zeros(1, 1, 5, 5)
    >>> attr[0, 0, 2, 3] = 0.5
    >>> pattern = mine_pattern(attr, tokens, seg_pos=4, predicted=1)
    >>> trigger = make_trigger(pattern)
    >>> trigger.tokens, trigger.relative
    (('good', 'film'), (0.6666666666666666, 1.0))
    >>> insert_trigger(["a", "bad", "plot"], None, trigger, max_tokens=126)
    (['a', 'bad', 'plot', 'good', 'film'], None)
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lightning_attattr.core.checks import (
    ArgumentError,
    ArgumentTypeError,
    check_bool,
    check_int,
    check_number,
    check_seed,
)

SPECIAL_TOKENS = ("[CLS]", "[SEP]")
SEGMENTS = ("a", "b")


# ----------------------------------------------------------------------------- patterns
@dataclass(frozen=True)
class Pattern:
    """The strongest attribution connections of one source example (its top-2 entries in one head).

    Attributes:
        example: Index of the source example.
        layer: Layer of the selected head (the head holding the example's largest attribution entry).
        head: The selected head.
        value1: Largest attribution entry of that head.
        value2: Second largest entry.
        pair1: ``(query_pos, key_pos)`` of ``value1``.
        pair2: ``(query_pos, key_pos)`` of ``value2``.
        tokens: The source's full token list, special tokens included.
        seg_pos: Position of the first ``[SEP]``.
        predicted: Predicted class (the class the attributions explain).
        label: Gold class, or ``None`` when unknown.
    """

    example: int
    layer: int
    head: int
    value1: float
    value2: float
    pair1: tuple[int, int]
    pair2: tuple[int, int]
    tokens: tuple[str, ...]
    seg_pos: int
    predicted: int
    label: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "pair1", (int(self.pair1[0]), int(self.pair1[1])))
        object.__setattr__(self, "pair2", (int(self.pair2[0]), int(self.pair2[1])))
        object.__setattr__(self, "tokens", tuple(str(t) for t in self.tokens))

    @property
    def score(self) -> float:
        """The ranking score, ``value1 + value2``."""
        return self.value1 + self.value2

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (lists for tuples, with the score for readers)."""
        return {
            "example": self.example,
            "layer": self.layer,
            "head": self.head,
            "value1": self.value1,
            "value2": self.value2,
            "score": self.score,
            "pair1": list(self.pair1),
            "pair2": list(self.pair2),
            "tokens": list(self.tokens),
            "seg_pos": self.seg_pos,
            "predicted": self.predicted,
            "label": self.label,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Pattern:
        """Rebuild a pattern from :meth:`to_dict`'s output (``score`` is ignored)."""
        return cls(
            example=int(data["example"]),
            layer=int(data["layer"]),
            head=int(data["head"]),
            value1=float(data["value1"]),
            value2=float(data["value2"]),
            pair1=tuple(data["pair1"]),
            pair2=tuple(data["pair2"]),
            tokens=tuple(data["tokens"]),
            seg_pos=int(data["seg_pos"]),
            predicted=int(data["predicted"]),
            label=None if data.get("label") is None else int(data["label"]),
        )


def mine_pattern(
    attributions: Tensor,
    tokens: Sequence[str],
    *,
    seg_pos: int,
    predicted: int,
    label: int | None = None,
    example: int = 0,
) -> Pattern:
    """Mine one example's pattern: the top-2 entries of the head holding its largest attribution.

    The official selection (per layer the head with the layer's largest entry, then the strictly
    largest layer, the first layer winning ties) amounts to the ``(layer, head)`` of the global
    maximum, ties going to the first in ``[layer, head, query_pos, key_pos]`` order. The top-2
    entries of that head's map are taken by value, ties going to the lower flat index.

    Args:
        attributions: ``[layer, head, query_pos, key_pos]`` AttAttr of one example (real tokens only,
            no padding), for the predicted class.
        tokens: The example's ``n`` tokens, special tokens included (``n`` = the map's size).
        seg_pos: Position of the first ``[SEP]`` (for a single sentence: its only, last ``[SEP]``).
        predicted: Predicted class.
        label: Gold class, or ``None``.
        example: Index of the example in its dataset.

    Returns:
        The :class:`Pattern`.

    Raises:
        ArgumentError: a wrong shape, a map smaller than 2 x 2, non-finite values, or an out-of-range
            ``seg_pos``.
    """
    if not isinstance(attributions, Tensor):
        raise ArgumentTypeError(
            f"Expected `attributions` to be a tensor [layer, head, query_pos, key_pos], "
            f"but got {type(attributions).__name__}."
        )
    tokens = [str(t) for t in tokens]
    n = len(tokens)
    shape = list(attributions.shape)
    if len(shape) != 4 or shape[2] != n or shape[3] != n or shape[0] < 1 or shape[1] < 1:
        raise ArgumentError(
            f"Expected `attributions` of shape [layer, head, query_pos, key_pos] = ['*', '*', {n}, {n}] "
            f"(n = len(tokens)), but got {shape}."
        )
    if n < 2:
        raise ArgumentError(f"Expected at least 2 tokens (a map with two entries), but got {n}.")
    seg_pos = check_int("seg_pos", seg_pos, 1, n - 1)
    predicted = check_int("predicted", predicted, 0)
    label = check_int("label", label, 0, optional=True)
    example = check_int("example", example, 0)
    values = attributions.detach().to(torch.float64)
    if not bool(torch.isfinite(values).all()):
        raise ArgumentError("Expected `attributions` to be finite, but it holds NaN or infinite values.")

    # torch.argmax returns the first maximal index: lowest layer, then head, in flat order
    flat_max = int(torch.argmax(values.reshape(-1)))
    layer, head = divmod(flat_max // (n * n), shape[1])
    head_map = values[layer, head].reshape(-1)  # [query_pos * key_pos]
    order = torch.sort(head_map, descending=True, stable=True).indices[:2]
    (i1, j1), (i2, j2) = (divmod(int(k), n) for k in order)
    return Pattern(
        example=example,
        layer=layer,
        head=head,
        value1=float(head_map[order[0]]),
        value2=float(head_map[order[1]]),
        pair1=(i1, j1),
        pair2=(i2, j2),
        tokens=tuple(tokens),
        seg_pos=seg_pos,
        predicted=predicted,
        label=label,
    )


def rank_patterns(patterns: Sequence[Pattern]) -> list[Pattern]:
    """Patterns by score (``value1 + value2``), descending; equal scores keep their order."""
    return sorted(patterns, key=lambda p: p.score, reverse=True)  # Python's sort stays stable with reverse


# ----------------------------------------------------------------------------- triggers
@dataclass(frozen=True)
class Trigger:
    """Wordpieces to insert into targets, each with its source segment and relative position there.

    Attributes:
        tokens: The wordpieces (``##`` pieces included), in source order.
        segments: ``"a"`` or ``"b"`` per token: the segment it came from and goes into.
        relative: Relative position per token in its segment (see the module docstring).
        source: The :class:`Pattern` it was built from, or that pattern's example index.
    """

    tokens: tuple[str, ...]
    segments: tuple[str, ...]
    relative: tuple[float, ...]
    source: Pattern | int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", tuple(str(t) for t in self.tokens))
        object.__setattr__(self, "segments", tuple(self.segments))
        object.__setattr__(self, "relative", tuple(float(r) for r in self.relative))
        if not len(self.tokens) == len(self.segments) == len(self.relative):
            raise ArgumentError(
                f"Expected `tokens`, `segments` and `relative` of equal length, but got "
                f"{len(self.tokens)}, {len(self.segments)} and {len(self.relative)}."
            )
        bad = [s for s in self.segments if s not in SEGMENTS]
        if bad:
            raise ArgumentError(f"Expected `segments` to hold 'a' or 'b', but got {bad[0]!r}.")
        bad_r = [r for r in self.relative if not (math.isfinite(r) and r >= 0)]
        if bad_r:
            raise ArgumentError(f"Expected `relative` to hold finite numbers >= 0, but got {bad_r[0]!r}.")

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def key(self) -> tuple[tuple[str, ...], tuple[str, ...], tuple[float, ...]]:
        """What identifies a trigger for de-duplication: tokens, segments and relative positions."""
        return (self.tokens, self.segments, self.relative)

    def describe(self) -> str:
        """The tokens as one line; segment-B tokens follow ``||`` (e.g. ``"floods || ice"``)."""
        a = " ".join(t for t, s in zip(self.tokens, self.segments) if s == "a")
        b = " ".join(t for t, s in zip(self.tokens, self.segments) if s == "b")
        return f"{a} || {b}".strip() if b else a

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; ``source`` is the pattern's dict, its example index, or ``None``."""
        source = self.source.to_dict() if isinstance(self.source, Pattern) else self.source
        return {
            "tokens": list(self.tokens),
            "segments": list(self.segments),
            "relative": list(self.relative),
            "text": self.describe(),
            "source": source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trigger:
        """Rebuild a trigger from :meth:`to_dict`'s output."""
        source = data.get("source")
        if isinstance(source, dict):
            source = Pattern.from_dict(source)
        return cls(tuple(data["tokens"]), tuple(data["segments"]), tuple(data["relative"]), source)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else 0.0


def make_trigger(
    pattern: Pattern,
    *,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
    ratio: float = 0.2,
    use_both: bool = False,
) -> Trigger:
    """Build the trigger of one pattern: its top pairs' wordpieces with segments and relative positions.

    Positions are the top-1 pair's when ``value2 / value1 < ratio`` and not ``use_both`` (a top-1
    value of 0, where the official code would divide by zero, also gives the top-1 pair only), else
    the union of the top-1 and top-2 pairs'. They are de-duplicated and sorted, and positions holding
    a special token (or ``seg_pos`` itself) are dropped. The result may be empty; callers skip it.

    Args:
        pattern: The mined pattern.
        special_tokens: Tokens never used as trigger tokens.
        ratio: Minimum ``value2 / value1`` for the top-2 pair to be used (official: 0.2).
        use_both: Always use both pairs (the official ``--if_all``).

    Returns:
        The :class:`Trigger`, with ``source=pattern``.

    Example:
        >>> p = Pattern(0, 0, 0, 1.0, 0.5, (1, 6), (2, 2), ("[CLS]", "x", "y", "[SEP]", "u", "v", "w", "[SEP]"), 3, 0)
        >>> t = make_trigger(p)
        >>> t.tokens, t.segments, t.relative
        (('x', 'y', 'w'), ('a', 'a', 'b'), (0.5, 1.0, 1.0))
    """
    if not isinstance(pattern, Pattern):
        raise ArgumentTypeError(f"Expected `pattern` to be a Pattern, but got {type(pattern).__name__}.")
    ratio = check_number("ratio", ratio, 0.0)
    use_both = check_bool("use_both", use_both)
    specials = set(special_tokens)
    tokens, seg_pos = pattern.tokens, pattern.seg_pos
    positions = set(pattern.pair1)
    v1, v2 = pattern.value1, pattern.value2
    if use_both or (v1 != 0 and v2 / v1 >= ratio):
        positions |= set(pattern.pair2)
    kept = [p for p in sorted(positions) if p != seg_pos and tokens[p] not in specials]
    len_a, len_b = seg_pos - 1, len(tokens) - 2 - seg_pos
    segments = ["a" if p < seg_pos else "b" for p in kept]
    relative = [_ratio(p, len_a) if p < seg_pos else _ratio(p - seg_pos, len_b) for p in kept]
    return Trigger(tuple(tokens[p] for p in kept), tuple(segments), tuple(relative), pattern)


def select_triggers(
    ranked: Sequence[Pattern], *, threshold: float = 0.02, top: int = 3, **make_trigger_kwargs: Any
) -> list[Trigger]:
    """The triggers of the best patterns: from the top of the ranking until a score falls below ``threshold``.

    Empty triggers (only special tokens) and duplicates (same tokens, segments and relative
    positions) are skipped; at most ``top`` triggers are returned (the paper reports three).

    Args:
        ranked: Patterns sorted by :func:`rank_patterns`.
        threshold: Minimum score ``value1 + value2`` (official: 0.02).
        top: Maximum number of triggers.
        **make_trigger_kwargs: Passed to :func:`make_trigger` (``special_tokens``, ``ratio``, ``use_both``).

    Returns:
        Up to ``top`` triggers, best first.
    """
    threshold = check_number("threshold", threshold)
    top = check_int("top", top, 1)
    triggers: list[Trigger] = []
    seen: set[tuple[Any, ...]] = set()
    # The official loop stops at the first pattern below the threshold but, through an off-by-one,
    # also drops the last pattern when none falls below it; we keep every pattern above the threshold.
    for pattern in ranked:
        if pattern.score < threshold or len(triggers) >= top:
            break
        trigger = make_trigger(pattern, **make_trigger_kwargs)
        if len(trigger) == 0 or trigger.key in seen:
            continue
        seen.add(trigger.key)
        triggers.append(trigger)
    return triggers


def _truncate_longest_first(a: list[str], b: list[str] | None, max_tokens: int) -> None:
    if b is None:
        del a[max_tokens:]
        return
    # like transformers' "longest_first" (and BERT's _truncate_seq_pair): ties trim b
    while len(a) + len(b) > max_tokens:
        if len(a) > len(b):
            a.pop()
        else:
            b.pop()


def insert_trigger(
    tokens_a: Sequence[str],
    tokens_b: Sequence[str] | None,
    trigger: Trigger,
    *,
    max_tokens: int,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
) -> tuple[list[str], list[str] | None]:
    """Insert a trigger's wordpieces into a target example, as the official evaluation does.

    Per segment, in source order: ``index = round((len0 + a) * r)`` (Python 3 rounding, halves to
    even), with ``len0`` the target segment's original length, ``a`` the number of trigger tokens for
    that segment and ``r`` the token's relative position; an index not after the previous insertion
    in that segment becomes previous + 1, and indices are clamped to the current length. Special
    tokens in the trigger are skipped (and not counted in ``a``). Then the pair is truncated to
    ``max_tokens`` wordpieces, longest first (ties trim ``b``); a single sentence loses its end.

    Args:
        tokens_a: The target's first-segment wordpieces, without special tokens.
        tokens_b: Its second segment, or ``None`` for single-sentence tasks.
        trigger: The trigger.
        max_tokens: Maximum total wordpieces: the model's maximum length minus the special tokens
            the tokenizer adds (128 - 3 for a BERT pair, 128 - 2 for a single sentence).
        special_tokens: Tokens never inserted.

    Returns:
        ``(tokens_a, tokens_b)`` with the trigger inserted (new lists; ``tokens_b`` stays ``None``).

    Raises:
        ArgumentError: ``max_tokens`` < 1, or segment-B trigger tokens for a single-sentence target.

    Example:
        >>> t = Trigger(("x", "y"), ("a", "a"), (0.5, 0.5))
        >>> insert_trigger(["p", "q", "r"], None, t, max_tokens=10)  # round(2.5) = 2, then 2 + 1
        (['p', 'q', 'x', 'y', 'r'], None)
    """
    if not isinstance(trigger, Trigger):
        raise ArgumentTypeError(f"Expected `trigger` to be a Trigger, but got {type(trigger).__name__}.")
    max_tokens = check_int("max_tokens", max_tokens, 1)
    specials = set(special_tokens)
    entries = [(t, s, r) for t, s, r in zip(trigger.tokens, trigger.segments, trigger.relative) if t not in specials]
    if tokens_b is None and any(s == "b" for _, s, _ in entries):
        b_tokens = [t for t, s, _ in entries if s == "b"]
        raise ArgumentError(
            f"Expected a trigger with segment-A tokens only for a single-sentence target (`tokens_b` is None), "
            f"but it has segment-B tokens {b_tokens} (it comes from a sentence-pair task)."
        )
    out_a = [str(t) for t in tokens_a]
    out_b = None if tokens_b is None else [str(t) for t in tokens_b]
    for segment, target in (("a", out_a), ("b", out_b)):
        if target is None:
            continue
        items = [(t, r) for t, s, r in entries if s == segment]
        len0, previous = len(target), -1
        for token, r in items:
            index = round((len0 + len(items)) * r)
            if index <= previous:  # collisions become consecutive
                index = previous + 1
            index = min(index, len(target))
            target.insert(index, token)
            previous = index
    _truncate_longest_first(out_a, out_b, max_tokens)
    return out_a, out_b


def random_control(trigger: Trigger, vocabulary: Sequence[str], *, seed: int) -> Trigger:
    """A control trigger: as many random wordpieces, with the same segments and relative positions.

    Tokens are drawn uniformly, with replacement, by ``random.Random(seed)`` from ``vocabulary`` (in
    its given order, so pass a fixed order, e.g. sorted), leaving out tokens of the form ``[...]``
    (``[CLS]``, ``[unused1]``, ...). The same seed gives the same control.

    Args:
        trigger: The trigger to imitate.
        vocabulary: Candidate wordpieces (the caller leaves out the tokenizer's special tokens).
        seed: Seed of the draw.

    Returns:
        The control :class:`Trigger` (its ``source`` is the trigger's).

    Raises:
        ArgumentError: no candidate token is left.

    Example:
        >>> t = Trigger(("x", "y"), ("a", "b"), (0.5, 1.0))
        >>> c = random_control(t, ["the", "cat", "[CLS]"], seed=0)
        >>> len(c), c.segments, c.relative, set(c.tokens) <= {"the", "cat"}
        (2, ('a', 'b'), (0.5, 1.0), True)
    """
    if not isinstance(trigger, Trigger):
        raise ArgumentTypeError(f"Expected `trigger` to be a Trigger, but got {type(trigger).__name__}.")
    seed = check_seed("seed", seed)
    candidates = [str(t) for t in vocabulary if not (str(t).startswith("[") and str(t).endswith("]"))]
    if not candidates:
        raise ArgumentError(
            "Expected `vocabulary` to hold at least one token that is not of the form [...], but got none "
            f"(among {len(vocabulary)} tokens)."
        )
    rng = random.Random(seed)
    tokens = tuple(rng.choice(candidates) for _ in trigger.tokens)
    return Trigger(tokens, trigger.segments, trigger.relative, trigger.source)


# ----------------------------------------------------------------------------- evaluation
def per_class_accuracy(
    predictions: Sequence[int] | Tensor, labels: Sequence[int] | Tensor, n_classes: int
) -> list[float | None]:
    """Accuracy within each gold class: ``[n_classes]``, ``None`` for a class without examples.

    Example:
        >>> per_class_accuracy([0, 1, 1, 0], [0, 1, 0, 0], 3)
        [0.6666666666666666, 1.0, None]
    """
    n_classes = check_int("n_classes", n_classes, 1)
    preds = [int(p) for p in predictions]
    golds = [int(y) for y in labels]
    if len(preds) != len(golds):
        raise ArgumentError(
            f"Expected `predictions` and `labels` of equal length, but got {len(preds)} and {len(golds)}."
        )
    bad = [y for y in golds if not 0 <= y < n_classes]
    if bad:
        raise ArgumentError(f"Expected `labels` in [0, {n_classes - 1}], but got {bad[0]}.")
    total, correct = [0] * n_classes, [0] * n_classes
    for p, y in zip(preds, golds):
        total[y] += 1
        correct[y] += int(p == y)
    return [c / t if t else None for c, t in zip(correct, total)]


def _check_per_class(name: str, values: Sequence[float | None], n_classes: int) -> list[float | None]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != n_classes:
        raise ArgumentError(f"Expected `{name}` to be a list of {n_classes} per-class accuracies, but got {values!r}.")
    return [None if v is None else float(v) for v in values]


def _diff(value: float | None, reference: float | None) -> float | None:
    return None if value is None or reference is None else value - reference


def attack_table(
    label_names: Sequence[str],
    clean: Sequence[float | None],
    triggered: Sequence[dict[str, Any]],
    controls: Sequence[Sequence[Sequence[float | None]]],
) -> dict[str, Any]:
    """Per-class results of a trigger attack: clean, each trigger, the random control, the mean change.

    Args:
        label_names: Class names, in label order.
        clean: Clean accuracy per class (``None`` for a class without examples).
        triggered: Per trigger, ``{"trigger": str, "accuracy": per-class list}``.
        controls: Per trigger, a list over seeds of per-class accuracies with that trigger's
            random control; ``[]`` when no control was run.

    Returns:
        ``{"classes", "triggers", "rows"}``; one row per class: ``class``, ``clean``, ``triggers``
        (per trigger ``accuracy``, ``change`` and ``control_mean``), ``control`` (``mean``, ``std``
        (sample std, 0 for one value), ``n`` and ``change`` over all triggers' controls and seeds) and
        ``mean_change`` (the average change over the triggers, the paper's row). Changes are
        accuracy minus clean; values are ``None`` where a class has no examples.
    """
    names = [str(n) for n in label_names]
    k = len(names)
    if k < 1:
        raise ArgumentError("Expected `label_names` to name at least one class, but got none.")
    clean_ = _check_per_class("clean", clean, k)
    texts, accs = [], []
    for i, entry in enumerate(triggered):
        if not isinstance(entry, dict) or "trigger" not in entry or "accuracy" not in entry:
            raise ArgumentError(
                f"Expected `triggered[{i}]` to be a dict with keys 'trigger' and 'accuracy', but got {entry!r}."
            )
        texts.append(str(entry["trigger"]))
        accs.append(_check_per_class(f"triggered[{i}]['accuracy']", entry["accuracy"], k))
    if len(controls) not in (0, len(accs)):
        raise ArgumentError(
            f"Expected `controls` to hold one list per trigger ({len(accs)}) or none, but got {len(controls)}."
        )
    control_accs = [[_check_per_class(f"controls[{i}]", seed, k) for seed in per] for i, per in enumerate(controls)]

    rows = []
    for c in range(k):
        entries: list[dict[str, Any]] = []
        changes: list[float | None] = []
        for t, acc in enumerate(accs):
            pooled = [v for v in (s[c] for s in control_accs[t]) if v is not None] if control_accs else []
            changes.append(_diff(acc[c], clean_[c]))
            entries.append(
                {
                    "trigger": texts[t],
                    "accuracy": acc[c],
                    "change": changes[-1],
                    "control_mean": statistics.fmean(pooled) if pooled else None,
                }
            )
        values = [v for v in (s[c] for per in control_accs for s in per) if v is not None]
        mean = statistics.fmean(values) if values else None
        std = (statistics.stdev(values) if len(values) > 1 else 0.0) if values else None
        known = [x for x in changes if x is not None]  # the mean change only when every trigger has one
        rows.append(
            {
                "class": names[c],
                "clean": clean_[c],
                "triggers": entries,
                "control": {"mean": mean, "std": std, "n": len(values), "change": _diff(mean, clean_[c])},
                "mean_change": statistics.fmean(known) if known and len(known) == len(changes) else None,
            }
        )
    return {"classes": names, "triggers": texts, "rows": rows}


def _pct(value: float | None, change: float | None = None, std: float | None = None) -> str:
    if value is None:
        return "n/a"
    text = f"{100 * value:.1f}"
    if std is not None:
        text += f" ± {100 * std:.1f}"
    if change is not None:
        text += f" ({100 * change:+.1f})"
    return text


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table_markdown(table: dict[str, Any]) -> str:
    """A Markdown table of :func:`attack_table`'s result: one row per class.

    Columns: clean, each trigger (change), the random control mean ± std (change), the mean change
    over the triggers. Accuracies are in %, changes in percentage points.
    """
    texts = table["triggers"]
    header = ["class", "clean"]
    header += [f"trigger {i + 1}: {_cell(t)}" for i, t in enumerate(texts)]
    header += ["random control", "mean change"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in table["rows"]:
        control = row["control"]
        mean_change = row["mean_change"]
        cells = [_cell(row["class"]), _pct(row["clean"])]
        cells += [_pct(e["accuracy"], e["change"]) for e in row["triggers"]]
        cells.append(_pct(control["mean"], control["change"], control["std"]))
        cells.append("n/a" if mean_change is None else f"{100 * mean_change:+.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
