"""The settings of each analysis, defined once: one frozen dataclass per ``analyze.py`` subcommand.

Each field is one option of the subcommand, with its default and its help text (``metadata["doc"]``);
building the object checks it (one-line :class:`~lightning_attattr.core.checks.ArgumentError` naming
the option), before any model or data is loaded. The same object serves three readers:

- the command line: ``analyze.py``'s subcommand signatures are built from the fields
  (:mod:`lightning_attattr.lightning.subcommands`), so ``--help``, ``--print_config`` and configs list them;
- the results folder: :meth:`AnalysisSettings.decisive` is what decides the results (fields marked
  ``decides=False``, such as batch sizes and plots, are left out), recorded in the manifest and
  ``summary.json`` so that a rerun with other settings is refused instead of mixed;
- the runner: the experiment receives the object itself (``settings.integration``, ``settings.tau``...).

:class:`AnalysisSettings` holds what every analysis shares (the integration of AttAttr and the batch
size); each subclass adds the options of its own subcommand.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from lightning_attattr.analysis.edges import EDGE_METHODS
from lightning_attattr.analysis.faithfulness import DEFAULT_KS
from lightning_attattr.analysis.heads import METHODS
from lightning_attattr.analysis.trees import MODES, ROOT_RULES
from lightning_attattr.core.approximation import validate_method, validate_n_steps
from lightning_attattr.core.checks import (
    ArgumentError,
    check_bool,
    check_choice,
    check_fractions,
    check_int,
    check_number,
    check_positive_int,
    check_seed,
    check_sizes,
)
from lightning_attattr.core.importance import PRUNING_FRACTIONS
from lightning_attattr.core.reductions import Rows, TopK


def option(default: Any, doc: str, *, decides: bool = True) -> Any:
    """A settings field: ``default`` (a list is copied per object), its help text, and whether it decides the results.

    Args:
        default: the default value.
        doc: the help text of the option (``--help``, the subcommand's docstring).
        decides: whether the option changes the results (``False``: batch sizes, plots, timing repeats);
            only deciding options are fingerprinted by the results folder.
    """
    metadata = {"doc": doc, "decides": decides}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Integration:
    """How AttAttr's integral over the attention probabilities is computed."""

    n_steps: int | Literal["auto"] = option(
        "auto",
        'AttAttr integration: ``"auto"`` (adaptive, meets ``completeness_tol``) or a fixed number of steps '
        "(the official code: ``method=riemann_left, n_steps=20`` for head importance, ``riemann_right``, 64 "
        "for triggers).",
    )
    method: str = option("gausslegendre", "integration rule (``gausslegendre``, ``riemann_left``, ...).")
    completeness_tol: float = option(1e-3, 'relative completeness tolerance of ``n_steps="auto"``.')

    def __post_init__(self) -> None:
        validate_n_steps(self.n_steps, allow_auto=True)
        validate_method(self.method)
        check_number("completeness_tol", self.completeness_tol, 0.0, low_open=True)

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :meth:`AttentionIntegratedGradients.attribute` (``n_steps``, ``method``, ...)."""
        return {"n_steps": self.n_steps, "method": self.method, "completeness_tol": self.completeness_tol}


@dataclass(frozen=True)
class AnalysisSettings:
    """What every analysis shares: the integration of AttAttr and the batch size of its per-example work."""

    integration: Integration = field(default_factory=Integration)
    batch_size: int = option(8, "examples per batch.", decides=False)

    def __post_init__(self) -> None:
        check_positive_int("batch_size", self.batch_size)
        self.check()

    def check(self) -> None:
        """The checks of the subcommand's own options (override; runs when the object is built)."""

    @classmethod
    def options(cls) -> list[dataclasses.Field[Any]]:
        """The fields as command-line options: the subcommand's own, then the integration, then the batch size."""
        own = [f for f in dataclasses.fields(cls) if f.name not in ("integration", "batch_size")]
        shared = {f.name: f for f in dataclasses.fields(cls)}
        return [*own, *dataclasses.fields(Integration), shared["batch_size"]]

    @classmethod
    def from_options(cls, values: dict[str, Any]) -> AnalysisSettings:
        """The settings of flat option values (``n_steps=...`` next to the subcommand's own options); checks them."""
        values = dict(values)
        integration = Integration(**{f.name: values.pop(f.name) for f in dataclasses.fields(Integration)})
        return cls(integration=integration, **values)

    def decisive(self, **derived: Any) -> dict[str, Any]:
        """The options that decide the results (flat, as on the command line), ``derived`` values added or replaced.

        ``derived``: what the run resolved from its inputs and must fingerprint instead of (or beside)
        the option as given, e.g. the contents of a file named by an option.
        """
        out: dict[str, Any] = {}
        for f in self.options():
            if f.metadata.get("decides", True):
                owner = self.integration if f.name in Integration.__dataclass_fields__ else self
                out[f.name] = getattr(owner, f.name)
        out.update(derived)
        return out


def check_text(text: list[str] | None, text_pair: list[str] | None) -> None:
    """``text``/``text_pair`` checks that need no model: non-empty texts, one pair per text."""
    for name, values in (("text", text), ("text_pair", text_pair)):
        for k, value in enumerate(values or []):
            if not isinstance(value, str) or not value.strip():
                raise ArgumentError(f"Expected every `{name}` to be a non-empty string, but item {k} is {value!r}.")
    if text_pair is not None and (text is None or len(text_pair) != len(text)):
        raise ArgumentError(
            f"Expected `text_pair` to give one second segment per `text` ({0 if text is None else len(text)}), "
            f"but got {len(text_pair)}."
        )


ROWS_DOC = (
    "keep only these query rows of every map: positions among each example's real tokens, negative from the "
    "end (``[-1]``: the last token, e.g. of a prompt); default ``null``: the full maps."
)
TOP_K_DOC = (
    "keep only the ``k`` largest edges (by ``|attribution|``) of every (example, layer), with their "
    "``(head, query_pos, key_pos)``; default ``null``: the full maps."
)


def maps_reduction(rows: list[int] | None, top_k: int | None) -> Rows | TopK | None:
    """The reduction of the maps that the ``rows`` and ``top_k`` options ask for, checked (``None``: full maps).

    Both options reduce the maps while they are computed (``attribute(..., reduction=...)``), so the
    maps of all layers never exist at once: ``rows`` keeps ``[layer, head, rows, key_pos]`` per
    example, ``top_k`` the ``k`` largest-magnitude edges per layer. At most one of them may be given.

    Args:
        rows: ``None``, or one or more distinct query positions (ints; negative count from the end
            of each example's real tokens).
        top_k: ``None``, or the number of edges kept per (example, layer), at least 1.

    Returns:
        ``Rows(rows)``, ``TopK(top_k)`` or ``None``.

    Raises:
        ArgumentError: a value of the wrong type or range, or both options given.

    Example:
        >>> maps_reduction([-1], None)
        Rows(positions=(-1,))
        >>> maps_reduction(None, None) is None
        True
    """
    if rows is not None and (
        not isinstance(rows, (list, tuple))
        or not rows
        or any(isinstance(p, bool) or not isinstance(p, int) for p in rows)
        or len(set(rows)) != len(rows)
    ):
        raise ArgumentError(
            f"Expected `rows` to be None or a list of distinct int query positions (-1: the last token), but got "
            f"{rows!r}."
        )
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ArgumentError(f"Expected `top_k` to be None or a positive integer, but got {top_k!r}.")
    if rows is not None and top_k is not None:
        raise ArgumentError(f"Expected at most one of `rows` and `top_k`, but got rows={rows!r} and top_k={top_k!r}.")
    if rows is not None:
        return Rows(list(rows))
    return None if top_k is None else TopK(top_k)


def reduction_record(reduction: Rows | TopK | None) -> dict[str, Any] | None:
    """How the saved maps were reduced, as plain values for results files: ``{"rows": [...]}``, ``{"top_k": k}``.

    Example:
        >>> reduction_record(TopK(8))
        {'top_k': 8}
    """
    if reduction is None:
        return None
    if isinstance(reduction, Rows):
        return {"rows": list(reduction.positions)}
    return {"top_k": reduction.k}


_TEXT = "raw input texts (first segments)."
_TEXT_PAIR = "second segments for pair tasks, one per ``text``."


@dataclass(frozen=True)
class AttributeSettings(AnalysisSettings):
    """``analyze.py attribute``: AttAttr maps of chosen dev examples or raw texts."""

    indices: list[int] | None = option(
        None, "dev-set example indices (0-based, file order); default ``[0]`` when no ``text`` is given."
    )
    text: list[str] | None = option(None, _TEXT)
    text_pair: list[str] | None = option(None, _TEXT_PAIR)
    target: str | int = option("predicted", '``"predicted"``, ``"labels"`` (gold, dev examples only) or a class index.')
    layers: list[int] | None = option(None, "layers to attribute (default all; negative counts from the end).")
    rows: list[int] | None = option(None, ROWS_DOC)
    top_k: int | None = option(None, TOP_K_DOC)
    batch_size: int = option(8, "examples per attribution batch.", decides=False)
    plots: bool = option(
        False,
        "also write one PNG/SVG per example (head-summed map of every layer; as slow as the attribution).",
        decides=False,
    )
    report: bool = option(
        False, "also write the interactive page ``output_dir/report.html`` (``analyze.py report``).", decides=False
    )

    def check(self) -> None:
        """Plots and report flags, the target, the texts, the reduction of the maps."""
        check_bool("plots", self.plots)
        check_bool("report", self.report)
        reduction = self.reduction()
        for name in ("plots", "report"):
            if reduction is not None and getattr(self, name):
                raise ArgumentError(
                    f"Expected `{name}` false with `rows` or `top_k` (it draws full maps), but got true with "
                    f"{reduction_record(reduction)}."
                )
        target = self.target
        if target not in ("predicted", "labels") and not (isinstance(target, int) and not isinstance(target, bool)):
            raise ArgumentError(f"Expected `target` to be 'predicted', 'labels' or a class index, but got {target!r}.")
        check_text(self.text, self.text_pair)
        if self.text and target == "labels":
            raise ArgumentError(
                "Expected `target` 'predicted' or a class index for `text` inputs (they have no gold label), "
                "but got 'labels'."
            )

    def reduction(self) -> Rows | TopK | None:
        """The reduction of the maps that ``rows`` / ``top_k`` ask for (``None``: full maps)."""
        return maps_reduction(self.rows, self.top_k)


@dataclass(frozen=True)
class HeadsSettings(AnalysisSettings):
    """``analyze.py heads``: head importance by every method, pruning curves, structural pruning."""

    methods: list[str] = option(
        list(METHODS),
        "importance methods: attattr (max pooling, the paper), attattr_mean, attattr_sum, taylor (official script), "
        "taylor_michel, accuracy_difference, attention, random.",
    )
    n_examples: int = option(200, "the first N dev examples score the heads (the official protocol: 200, gold labels).")
    fractions: list[float] = option(
        list(PRUNING_FRACTIONS),
        "fractions of all heads removed for the pruning curves, lowest importance first; must start with 0.",
    )
    random_seeds: list[int] = option(
        [0, 1, 2], "seeds of the random baseline (one curve each; reported as mean and spread)."
    )
    batch_size: int = option(16, "examples per importance batch.", decides=False)
    eval_batch_size: int = option(64, "examples per pruning-evaluation batch.", decides=False)
    max_eval_examples: int | None = option(
        None, "evaluate the pruning curves on the first N dev examples (default: all)."
    )
    structural: bool = option(
        False,
        "also remove the heads physically (AttAttr ranking) and report parameters and latency.",
        decides=False,
    )
    latency_batches: int = option(8, "dev batches timed per structurally pruned model.", decides=False)
    latency_repeats: int = option(5, "timing repeats (models interleaved; the median is reported).", decides=False)
    transfer_from: list[str] = option(
        [], "other ``heads`` results folders: prune this model with their AttAttr ranking too (universality)."
    )

    def check(self) -> None:
        """Methods, example counts, fractions, seeds, evaluation and timing options."""
        for name in self.methods:
            check_choice("methods", name, METHODS)
        if not self.methods:
            raise ArgumentError(f"Expected `methods` to name at least one of {list(METHODS)}, but got [].")
        check_positive_int("n_examples", self.n_examples)
        check_fractions("fractions", self.fractions)
        if list(self.fractions) != sorted(self.fractions) or self.fractions[0] != 0:
            raise ArgumentError(
                f"Expected `fractions` increasing from 0 (the unpruned model), but got {list(self.fractions)}."
            )
        for seed in self.random_seeds:
            check_seed("random_seeds", seed)
        check_positive_int("eval_batch_size", self.eval_batch_size)
        check_positive_int("max_eval_examples", self.max_eval_examples, optional=True)
        check_bool("structural", self.structural)
        check_positive_int("latency_batches", self.latency_batches)
        check_positive_int("latency_repeats", self.latency_repeats)


@dataclass(frozen=True)
class EffectivenessSettings(AnalysisSettings):
    """``analyze.py effectiveness``: per-example AttAttr vs attention rankings, ``k`` heads pruned per layer."""

    n_examples: int | None = option(200, "the first N dev examples (``null``: the whole dev set).")
    batch_size: int = option(8, "examples per attribution batch.", decides=False)

    def check(self) -> None:
        """The example count."""
        check_positive_int("n_examples", self.n_examples, optional=True)


@dataclass(frozen=True)
class FaithfulnessSettings(AnalysisSettings):
    """``analyze.py faithfulness``: deletion curves of edge explanations against random deletions and planted truth."""

    n_examples: int | None = option(100, "the first N dev examples (``null``: the whole dev set).")
    edge_methods: list[str] = option(
        list(EDGE_METHODS), "edge explanations to compare (any of attattr, attention, rollout, grad_attention)."
    )
    ks: list[int] = option(
        list(DEFAULT_KS), "numbers of connections to delete (each at most layers x n x n of the shortest example)."
    )
    n_random: int = option(3, "random-deletion seeds.")
    tau: float = option(0.4, "tree threshold, a fraction of each layer's largest score, in (0, 1].")
    seed: int = option(0, "seed of the random deletions (per example: the same whatever the batch or process).")
    truth: str | None = option(
        None,
        'a JSON Lines file of planted pairs, one dev example per line: ``{"index": 3, "pairs": [[5, 2]], '
        '"unit": "word", "layer": 1}`` (``index`` in the dev split; ``pairs`` ``[query, key]`` positions, '
        'either order counts as a hit, any number of pairs; ``unit`` ``"token"``: token positions of the '
        'model input, 0 = [CLS], or ``"word"``: positions over the non-special words from 0, word pieces '
        "merged; ``layer`` optional). With ``truth`` the examples are the file's, in file order, the first "
        "``n_examples`` of them (``null``: all); without it the first ``n_examples`` dev examples, with the "
        "synthetic task's pairs.",
    )

    def check(self) -> None:
        """Example count, methods (repeats dropped), deletion sizes, random control, tree threshold."""
        check_positive_int("n_examples", self.n_examples, optional=True)
        if not isinstance(self.edge_methods, list) or not self.edge_methods:
            raise ArgumentError(
                f"Expected `edge_methods` to be a non-empty list of {list(EDGE_METHODS)}, "
                f"but got {self.edge_methods!r}."
            )
        for name in self.edge_methods:
            check_choice("edge_methods", name, EDGE_METHODS)
        object.__setattr__(self, "edge_methods", list(dict.fromkeys(self.edge_methods)))
        object.__setattr__(self, "ks", check_sizes("ks", self.ks))
        check_positive_int("n_random", self.n_random)
        check_number("tau", self.tau, 0.0, 1.0, low_open=True)
        check_seed("seed", self.seed)


@dataclass(frozen=True)
class TreeSettings(AnalysisSettings):
    """``analyze.py tree``: attribution trees (or graphs) of dev examples or raw texts."""

    index: list[int] | None = option(
        None, "dev-set example indices (0-based, file order); default ``[0]`` when no ``text`` is given."
    )
    text: list[str] | None = option(None, _TEXT)
    text_pair: list[str] | None = option(None, _TEXT_PAIR)
    tau: float = option(0.4, "threshold in (0, 1], a fraction of each layer's largest attribution (paper: 0.4).")
    root: str = option(
        "cls",
        "``cls``: [CLS] is the root with its last-layer edges (the paper); ``official``: the official script's "
        "root heuristic (the token with the largest total attribution, last layer unused).",
    )
    mode: str = option(
        "tree",
        "``tree``: the paper's tree (one parent per token); ``graph``: every connection above ``tau`` whose "
        "query is in, a DAG with the layers as ranks (same exports).",
    )
    words: bool = option(
        False,
        "merge WordPiece/BPE tokens into words first (attributions summed over a word's pieces on both axes, "
        "so each layer's total is kept).",
    )
    batch_size: int = option(8, "examples per attribution batch.", decides=False)

    def check(self) -> None:
        """Threshold, root rule, mode, word merging, texts."""
        check_number("tau", self.tau, 0.0, 1.0, low_open=True)
        check_choice("root", self.root, ROOT_RULES)
        check_choice("mode", self.mode, MODES)
        check_bool("words", self.words)
        check_text(self.text, self.text_pair)


@dataclass(frozen=True)
class AttackSettings(AnalysisSettings):
    """``analyze.py attack``: adversarial triggers mined from training examples."""

    n_source: int = option(500, "mine the first N training examples (file order; official: 500).")
    min_tokens: int | None = option(
        None,
        "skip source examples with fewer wordpieces (special tokens included); default 15 for single-sentence "
        "tasks (the official SST-2 setting), 0 for pairs.",
    )
    n_eval: int | None = option(None, "attack the first N dev examples (``null``: all).")
    top: int = option(3, "number of triggers (the paper reports 3).")
    threshold: float = option(0.02, "patterns scoring below this are not used (official: 0.02).")
    ratio: float = option(
        0.2, "use the second pair too when its value is at least this fraction of the first's (official: 0.2)."
    )
    use_both: bool = option(False, "always use both pairs.")
    n_random: int = option(3, "random-control seeds per trigger.")
    seed: int = option(0, "seed of the random controls.")

    def check(self) -> None:
        """Source and evaluation sizes, trigger selection, random control."""
        check_positive_int("n_source", self.n_source)
        check_positive_int("n_eval", self.n_eval, optional=True)
        if self.min_tokens is not None:
            check_int("min_tokens", self.min_tokens, 0)
        check_positive_int("top", self.top)
        check_number("threshold", self.threshold, 0.0, float("inf"))
        check_number("ratio", self.ratio, 0.0, 1.0)
        check_bool("use_both", self.use_both)
        check_positive_int("n_random", self.n_random)
        check_seed("seed", self.seed)
