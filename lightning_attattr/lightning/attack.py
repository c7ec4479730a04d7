"""``analyze.py attack``: adversarial triggers mined from attribution patterns (paper section 6), evaluated per class.

Two resumable stages (:func:`~lightning_attattr.lightning.analysis.run_examples`):

1. ``mine``: AttAttr of the predicted class for the first ``n_source`` training examples (file
   order; examples shorter than ``min_tokens`` wordpieces are skipped, as the official code does
   for SST-2), and each example's pattern (:func:`lightning_attattr.analysis.triggers.mine_pattern`).
2. ``evaluate``: every dev example clean, with each of the top triggers inserted, and with each
   trigger's random controls (same positions and counts, random vocabulary tokens, ``n_random``
   seeds); predictions per variant.

The triggers are built from the ranked patterns by
:func:`~lightning_attattr.analysis.triggers.select_triggers`; wordpieces are inserted as they are
(no re-tokenisation) and framed with the tokenizer's own special tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor, nn

from lightning_attattr.analysis.settings import AttackSettings
from lightning_attattr.analysis.store import write_json, write_text
from lightning_attattr.analysis.triggers import (
    Pattern,
    Trigger,
    attack_table,
    insert_trigger,
    mine_pattern,
    per_class_accuracy,
    random_control,
    rank_patterns,
    select_triggers,
    table_markdown,
)
from lightning_attattr.core.attribution import AttentionIntegratedGradients, model_logits
from lightning_attattr.core.checks import ArgumentError
from lightning_attattr.lightning.analysis import INDEX_KEY, MODEL_KEYS, model_inputs
from lightning_attattr.lightning.experiments import check_dev_size, dev_split
from lightning_attattr.lightning.job import Job


class Framing:
    """The tokenizer's special-token template, learnt once from a probe encoding.

    transformers v5 has no ``build_inputs_with_special_tokens``; :meth:`frame` puts the same special
    tokens and token types around already-converted wordpiece ids.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.special = [
            t
            for t in (tokenizer.cls_token, tokenizer.sep_token, tokenizer.bos_token, tokenizer.eos_token)
            if t is not None
        ]
        self.parts = {pair: self._learn(pair) for pair in (False, True)}

    def _learn(self, pair: bool) -> tuple[list[list[int]], list[list[int]], list[int]]:
        """Special-token pieces around the segments, their token types, and each segment's token type."""
        tok = self.tokenizer
        a = tok("a", add_special_tokens=False)["input_ids"]
        b = tok("b", add_special_tokens=False)["input_ids"]
        enc = tok("a", "b", return_token_type_ids=True) if pair else tok("a", return_token_type_ids=True)
        ids = list(enc["input_ids"])
        types = list(enc.get("token_type_ids") or [0] * len(ids))
        pieces, piece_types, segment_types, pos = [], [], [], 0
        for segment in [a, b] if pair else [a]:
            at = next(i for i in range(pos, len(ids)) if ids[i : i + len(segment)] == segment)
            pieces.append(ids[pos:at])
            piece_types.append(types[pos:at])
            segment_types.append(types[at])
            pos = at + len(segment)
        pieces.append(ids[pos:])
        piece_types.append(types[pos:])
        return pieces, piece_types, segment_types

    def n_special(self, pair: bool) -> int:
        """How many special tokens the template adds."""
        return sum(len(p) for p in self.parts[pair][0])

    def frame(self, ids_a: list[int], ids_b: list[int] | None) -> dict[str, list[int]]:
        """``input_ids``, ``token_type_ids`` and ``attention_mask`` of the framed sequence(s)."""
        pieces, piece_types, segment_types = self.parts[ids_b is not None]
        ids: list[int] = []
        types: list[int] = []
        for k, segment in enumerate([ids_a] if ids_b is None else [ids_a, ids_b]):
            ids += pieces[k] + list(segment)
            types += piece_types[k] + [segment_types[k]] * len(segment)
        ids += pieces[-1]
        types += piece_types[-1]
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": [1] * len(ids)}


def vocabulary(tokenizer: Any) -> list[str]:
    """Candidate tokens of the random control: the vocabulary without special and ``##`` pieces, sorted.

    (:func:`~lightning_attattr.analysis.triggers.random_control` itself leaves out ``[...]`` tokens
    such as BERT's ``[unused0]``.)
    """
    special = set(tokenizer.all_special_tokens)
    return sorted(t for t in tokenizer.get_vocab() if t not in special and not t.startswith("##") and t.isprintable())


#: What ``attack`` reads from each split: raw texts it can insert wordpieces into, and gold labels.
TEXT_FIELDS = ("text_a", "text_b", "labels")


def check_text_data(datamodule: Any) -> None:
    """Refuse a data module that gives no raw texts: ``attack`` inserts trigger wordpieces into them.

    ``attack`` needs ``datamodule.examples(split)`` to return the split's raw texts and labels
    (``text_a``, ``text_b``, ``labels``, as :class:`~lightning_attattr.data.modules.TextExamples`
    of ``GlueDataModule`` do). The synthetic task of the quickstart has no such texts (its examples
    are word lists with planted positions), so ``attack`` cannot run on it. Reads the training split
    (which ``attack`` reads anyway; the data module keeps it).

    Args:
        datamodule: the data module of the run.

    Raises:
        ArgumentError: ``datamodule`` has no ``examples`` method, or its training examples lack
            ``text_a``, ``text_b`` or ``labels``.
    """
    name = type(datamodule).__name__
    examples = getattr(datamodule, "examples", None)
    if not callable(examples):
        found = f"{name}, which has no `examples(split)` method"
    else:
        train = examples("train")
        missing = [f for f in TEXT_FIELDS if not hasattr(train, f)]
        if not missing:
            return
        kind = type(train).__name__
        if isinstance(train, (list, tuple)) and train:
            kind += f" of {type(train[0]).__name__}"
        found = f"{name}, whose training examples are a {kind} without {', '.join(missing)}"
    raise ArgumentError(
        "Expected `data` to be a text data module with raw training and dev texts for `attack` (`examples(split)` "
        f"giving {', '.join(TEXT_FIELDS)}, e.g. GlueDataModule), but got {found}."
    )


class AttackData(NamedTuple):
    """What ``attack`` works on, prepared from the data module by :func:`attack_data`.

    Attributes:
        source: the training examples mined, tokenized (model inputs, ``labels`` and ``tokens``).
        dev: the dev examples attacked, raw texts (the data module's ``examples`` type: ``text_a``,
            ``text_b``, ``labels``), cut to ``n_eval``.
        label_names: one name per class (the data module's, or the class indices as text).
        min_tokens: the source length threshold used (``settings.min_tokens`` or the task's default).
    """

    source: list[dict[str, Any]]
    dev: Any
    label_names: list[str]
    min_tokens: int


def attack_data(datamodule: Any, settings: AttackSettings, n_labels: int) -> AttackData:
    """The source and dev examples of ``settings``, checked before the results folder is opened.

    ``min_tokens`` defaults to 0 for pair tasks and 15 otherwise (the official SST-2 setting).

    Raises:
        ArgumentError: not a text data module (:func:`check_text_data`), ``n_eval`` above the dev set's
            size, or no source example with ``min_tokens`` wordpieces.
    """
    check_text_data(datamodule)
    examples = datamodule.examples
    check_dev_size(datamodule, n_eval=settings.n_eval)
    split = dev_split(datamodule)
    train, dev = examples("train"), examples(split)
    pair = dev.text_b is not None
    min_tokens = (0 if pair else 15) if settings.min_tokens is None else settings.min_tokens
    source = _source_examples(datamodule, train, settings.n_source, min_tokens)
    n_eval = settings.n_eval
    if n_eval is not None:
        text_b = None if dev.text_b is None else dev.text_b[:n_eval]
        dev = type(dev)(dev.split, dev.text_a[:n_eval], text_b, dev.labels[:n_eval])
    label_names = list(getattr(datamodule, "label_names", None) or [])
    return AttackData(source, dev, label_names or [str(k) for k in range(n_labels)], min_tokens)


def _source_examples(datamodule: Any, train: Any, n_source: int, min_tokens: int) -> list[dict[str, Any]]:
    """The first ``n_source`` training examples, tokenized, without those shorter than ``min_tokens`` wordpieces."""
    tokenizer = datamodule.tokenizer
    n = min(n_source, len(train))
    texts = (train.text_a[:n],) if train.text_b is None else (train.text_a[:n], train.text_b[:n])
    encoded = tokenizer(*texts, truncation=True, max_length=datamodule.max_length)
    out = []
    for i in range(n):
        ids = list(encoded["input_ids"][i])
        if len(ids) < min_tokens:
            continue
        item = {k: list(v[i]) for k, v in encoded.items()}
        out.append({**item, "labels": int(train.labels[i]), "tokens": tokenizer.convert_ids_to_tokens(ids)})
    if not out:
        raise ArgumentError(
            f"Expected some of the first {n} training examples to have at least `min_tokens` ({min_tokens}) "
            "wordpieces, but none has; lower `min_tokens`."
        )
    return out


@dataclass(frozen=True)
class _Run:
    """What the stages of one :func:`run_attack` share; ``timings`` collects each stage's seconds."""

    job: Job
    settings: AttackSettings
    data: AttackData
    framing: Framing
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def tokenizer(self) -> Any:
        return self.job.datamodule.tokenizer

    @property
    def specials(self) -> tuple[str, ...]:
        return tuple(self.framing.special)


class _Triggers(NamedTuple):
    """The ranked patterns, the triggers made of the best, and each trigger's ``n_random`` random controls."""

    ranked: list[Pattern]
    triggers: list[Trigger]
    controls: list[list[Trigger]]

    def variants(self) -> list[Trigger | None]:
        """What each dev example is evaluated with, in column order: clean, each trigger, the controls row by row."""
        return [None, *self.triggers, *(c for row in self.controls for c in row)]


def run_attack(job: Job, settings: AttackSettings, data: AttackData) -> dict[str, Any]:
    """Mine patterns on ``data.source``, attack ``data.dev`` with the triggers; ``attack.json`` and ``attack.md``.

    Returns:
        Timings, the triggers and the overall accuracies (``{}`` on processes other than the main one).
    """
    run = _Run(job, settings, data, Framing(job.datamodule.tokenizer))
    ranked = _mine_patterns(run)
    chosen = _choose_triggers(run, ranked)
    preds, labels = _evaluate(run, chosen)
    if not job.folder.main:
        return {}
    table, overall = _score(run, chosen, preds, labels)
    _write_report(run, chosen, table, overall)
    return {
        "timings": dict(run.timings),
        "triggers": [t.describe() for t in chosen.triggers],
        "overall_accuracy": overall,
    }


def _mine_patterns(run: _Run) -> list[Pattern]:
    """Stage ``mine``: each source example's pattern under AttAttr of its predicted class; the patterns ranked."""
    ig = AttentionIntegratedGradients(run.job.model)
    items = [{k: v for k, v in item.items() if k in (*MODEL_KEYS, "labels")} for item in run.data.source]
    start = time.perf_counter()
    fn = partial(_mine_batch, run, ig)
    mined = run.job.examples("mine", items, list(range(len(items))), run.settings.batch_size, fn)
    run.timings["mine_s"] = time.perf_counter() - start
    return rank_patterns([Pattern.from_dict(p) for p in mined["pattern"]])


def _mine_batch(
    run: _Run, ig: AttentionIntegratedGradients, net: nn.Module, batch: dict[str, Tensor]
) -> dict[str, Any]:
    """The patterns of one batch of source examples (``pattern``: one dict per example)."""
    index = batch[INDEX_KEY].tolist()
    inputs = model_inputs(batch)
    with torch.no_grad():
        pred = model_logits(net, inputs).argmax(-1).cpu()
    result = ig.attribute(inputs, target=pred, **run.settings.integration.kwargs())
    specials = run.specials
    patterns = []
    for row, i in enumerate(index):
        tokens = run.data.source[i]["tokens"]
        seg = next(p for p, t in enumerate(tokens) if p > 0 and t in specials)
        label = run.data.source[i].get("labels")
        pattern = mine_pattern(
            result.attributions[row].float(),
            tokens,
            seg_pos=seg,
            predicted=int(pred[row]),
            label=None if label is None else int(label),
            example=i,
        )
        patterns.append(pattern.to_dict())
    return {"pattern": patterns}


def _choose_triggers(run: _Run, ranked: list[Pattern]) -> _Triggers:
    """The triggers of the best patterns (``top``, ``threshold``, ``ratio``, ``use_both``) and their random controls.

    Raises:
        ArgumentError: no pattern scores at least ``threshold``.
    """
    s = run.settings
    triggers = select_triggers(
        ranked, threshold=s.threshold, top=s.top, special_tokens=run.specials, ratio=s.ratio, use_both=s.use_both
    )
    if not triggers:
        raise ArgumentError(
            f"Expected at least one pattern scoring >= `threshold` ({s.threshold}) with a non-special token, but the "
            f"best of {len(ranked)} scored {ranked[0].score if ranked else float('nan'):.4g}; lower `threshold`."
        )
    words = vocabulary(run.tokenizer)
    controls = [[random_control(t, words, seed=s.seed * 1000 + k) for k in range(s.n_random)] for t in triggers]
    return _Triggers(ranked, triggers, controls)


class _Inserter:
    """The dev examples as wordpieces (tokenized once), encoded with a trigger inserted, truncated and framed."""

    def __init__(self, run: _Run) -> None:
        dev, tokenizer = run.data.dev, run.tokenizer
        pair = dev.text_b is not None
        self.run = run
        self.max_tokens = run.job.datamodule.max_length - run.framing.n_special(pair)
        self.segments = [
            (tokenizer.tokenize(dev.text_a[i]), tokenizer.tokenize(dev.text_b[i]) if pair else None)
            for i in range(len(dev))
        ]

    def encode(self, i: int, trigger: Trigger | None) -> dict[str, list[int]]:
        """Model inputs of dev example ``i`` with ``trigger`` (``None``: clean, through the same truncation)."""
        tokenizer = self.run.tokenizer
        a, b = self.segments[i]
        if trigger is None:
            trigger = Trigger((), (), ())
        a, b = insert_trigger(a, b, trigger, max_tokens=self.max_tokens, special_tokens=self.run.specials)
        ids_b = None if b is None else tokenizer.convert_tokens_to_ids(b)
        return self.run.framing.frame(tokenizer.convert_tokens_to_ids(a), ids_b)


def _evaluate(run: _Run, chosen: _Triggers) -> tuple[Tensor, Tensor]:
    """Stage ``evaluate``: predictions ``[example, variant]`` of every dev example, and the gold labels.

    The variant columns are ``chosen.variants()``: clean, each trigger, each trigger's random controls.
    """
    variants = chosen.variants()
    inserter = _Inserter(run)
    start = time.perf_counter()
    dev = run.data.dev
    items = [{"input_ids": [0], "labels": int(y)} for y in dev.labels]
    fn = partial(_predict_variants, run, inserter, variants)
    evaluated = run.job.examples("evaluate", items, list(range(len(dev))), run.settings.batch_size, fn)
    run.timings["evaluate_s"] = time.perf_counter() - start
    return evaluated["preds"], evaluated["labels"]


def _predict_variants(
    run: _Run, inserter: _Inserter, variants: list[Trigger | None], net: nn.Module, batch: dict[str, Tensor]
) -> dict[str, Any]:
    """Predictions ``[example, variant]`` of one batch of dev examples, 256 encoded rows per forward pass."""
    index = batch[INDEX_KEY].tolist()
    rows = [inserter.encode(i, t) for i in index for t in variants]  # example-major: [example, variant]
    device = next(net.parameters()).device
    preds = []
    for start in range(0, len(rows), 256):
        padded = run.job.datamodule.collator(rows[start : start + 256])
        inputs = {k: v.to(device) for k, v in model_inputs(padded).items()}
        with torch.no_grad():
            preds.append(model_logits(net, inputs).argmax(-1).cpu())
    return {"preds": torch.cat(preds).view(len(index), len(variants)), "labels": batch["labels"].cpu()}


def _score(run: _Run, chosen: _Triggers, preds: Tensor, labels: Tensor) -> tuple[dict[str, Any], dict[str, Any]]:
    """The per-class table (clean, each trigger, the random controls) and the overall accuracies."""
    k, n_t, n_random = len(run.data.label_names), len(chosen.triggers), run.settings.n_random

    def accuracy(v: int) -> list[float | None]:
        return per_class_accuracy(preds[:, v].tolist(), labels.tolist(), k)

    def overall(v: int) -> float:
        return float((preds[:, v] == labels).float().mean())

    triggered = [{"trigger": t.describe(), "accuracy": accuracy(1 + j)} for j, t in enumerate(chosen.triggers)]
    control_acc = [[accuracy(1 + n_t + j * n_random + s) for s in range(n_random)] for j in range(n_t)]
    table = attack_table(run.data.label_names, accuracy(0), triggered, control_acc)
    return table, {
        "clean": overall(0),
        "triggers": [overall(1 + j) for j in range(n_t)],
        "controls": [[overall(1 + n_t + j * n_random + s) for s in range(n_random)] for j in range(n_t)],
    }


def _write_report(run: _Run, chosen: _Triggers, table: dict[str, Any], overall: dict[str, Any]) -> None:
    """``attack.json`` (patterns, triggers, controls, table, overall accuracies) and ``attack.md``."""
    source, dev, folder = run.data.source, run.data.dev, run.job.folder
    report = {
        "n_source": len(source),
        "n_dev": len(dev),
        "patterns": [p.to_dict() for p in chosen.ranked[:20]],
        "triggers": [{**t.to_dict(), "text": t.describe()} for t in chosen.triggers],
        "controls": [[c.to_dict() for c in row] for row in chosen.controls],
        "table": table,
        "overall_accuracy": overall,
    }
    write_json(folder.file("attack.json"), report)
    lines = [f"Triggers mined from {len(source)} training examples, evaluated on {len(dev)} dev examples.", ""]
    scores = [cast(Pattern, t.source).score for t in chosen.triggers]  # select_triggers sets source=pattern
    lines += [f"{j + 1}. `{t.describe()}` (pattern score {scores[j]:.4f})" for j, t in enumerate(chosen.triggers)]
    write_text(folder.file("attack.md"), "\n".join([*lines, "", table_markdown(table), ""]))
