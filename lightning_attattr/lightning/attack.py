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
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_attattr.analysis.store import ResultsFolder, write_json, write_text
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
from lightning_attattr.lightning.analysis import INDEX_KEY, MODEL_KEYS, model_inputs, run_examples
from lightning_attattr.lightning.compat import pl


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


def run_attack(
    trainer: pl.Trainer,
    model: nn.Module,
    datamodule: Any,
    folder: ResultsFolder,
    *,
    source: Any,
    dev: Any,
    label_names: Sequence[str],
    top: int,
    threshold: float,
    ratio: float,
    use_both: bool,
    n_random: int,
    seed: int,
    attattr_options: dict[str, Any],
    batch_size: int,
) -> dict[str, Any]:
    """Mine patterns on ``source`` (a list of tokenized items with ``tokens``), attack ``dev`` (raw texts)."""
    tokenizer = datamodule.tokenizer
    framing = Framing(tokenizer)
    specials = tuple(framing.special)
    ig = AttentionIntegratedGradients(model)
    items = [{k: v for k, v in item.items() if k in (*MODEL_KEYS, "labels")} for item in source]

    def mine(net: nn.Module, batch: dict[str, Tensor]) -> dict[str, Any]:
        index = batch[INDEX_KEY].tolist()
        inputs = model_inputs(batch)
        with torch.no_grad():
            pred = model_logits(net, inputs).argmax(-1).cpu()
        result = ig.attribute(inputs, target=pred, **attattr_options)
        patterns = []
        for row, i in enumerate(index):
            tokens = source[i]["tokens"]
            seg = next(p for p, t in enumerate(tokens) if p > 0 and t in specials)
            label = source[i].get("labels")
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

    start = time.perf_counter()
    mined = run_examples(
        trainer, model, folder, "mine", items, list(range(len(items))), datamodule.collator, batch_size, mine
    )
    mine_s = time.perf_counter() - start
    ranked = rank_patterns([Pattern.from_dict(p) for p in mined["pattern"]])
    triggers = select_triggers(
        ranked, threshold=threshold, top=top, special_tokens=specials, ratio=ratio, use_both=use_both
    )
    if not triggers:
        raise ArgumentError(
            f"Expected at least one pattern scoring >= `threshold` ({threshold}) with a non-special token, but the "
            f"best of {len(ranked)} scored {ranked[0].score if ranked else float('nan'):.4g}; lower `threshold`."
        )
    words = vocabulary(tokenizer)
    controls = [[random_control(t, words, seed=seed * 1000 + s) for s in range(n_random)] for t in triggers]
    variants: list[Trigger | None] = [None, *triggers, *(c for row in controls for c in row)]
    pair = dev.text_b is not None
    max_tokens = datamodule.max_length - framing.n_special(pair)
    segments = [
        (tokenizer.tokenize(dev.text_a[i]), tokenizer.tokenize(dev.text_b[i]) if pair else None)
        for i in range(len(dev))
    ]

    def encode(i: int, trigger: Trigger | None) -> dict[str, list[int]]:
        a, b = segments[i]
        if trigger is None:  # the clean example through the same truncation and framing
            trigger = Trigger((), (), ())
        a, b = insert_trigger(a, b, trigger, max_tokens=max_tokens, special_tokens=specials)
        ids_b = None if b is None else tokenizer.convert_tokens_to_ids(b)
        return framing.frame(tokenizer.convert_tokens_to_ids(a), ids_b)

    def evaluate(net: nn.Module, batch: dict[str, Tensor]) -> dict[str, Any]:
        index = batch[INDEX_KEY].tolist()
        rows = [encode(i, t) for i in index for t in variants]  # example-major: [example, variant]
        device = next(net.parameters()).device
        preds = []
        for start in range(0, len(rows), 256):
            padded = datamodule.collator(rows[start : start + 256])
            inputs = {k: v.to(device) for k, v in model_inputs(padded).items()}
            with torch.no_grad():
                preds.append(model_logits(net, inputs).argmax(-1).cpu())
        return {"preds": torch.cat(preds).view(len(index), len(variants)), "labels": batch["labels"].cpu()}

    start = time.perf_counter()
    dev_items = [{"input_ids": [0], "labels": int(y)} for y in dev.labels]
    evaluated = run_examples(
        trainer, model, folder, "evaluate", dev_items, list(range(len(dev))), datamodule.collator, batch_size, evaluate
    )
    evaluate_s = time.perf_counter() - start
    if not folder.main:
        return {}
    preds, labels = evaluated["preds"], evaluated["labels"]
    k = len(label_names)
    n_t = len(triggers)

    def accuracy(v: int) -> list[float | None]:
        return per_class_accuracy(preds[:, v].tolist(), labels.tolist(), k)

    triggered = [{"trigger": t.describe(), "accuracy": accuracy(1 + j)} for j, t in enumerate(triggers)]
    control_acc = [[accuracy(1 + n_t + j * n_random + s) for s in range(n_random)] for j in range(n_t)]
    table = attack_table(label_names, accuracy(0), triggered, control_acc)
    overall = {
        "clean": float((preds[:, 0] == labels).float().mean()),
        "triggers": [float((preds[:, 1 + j] == labels).float().mean()) for j in range(n_t)],
        "controls": [
            [float((preds[:, 1 + n_t + j * n_random + s] == labels).float().mean()) for s in range(n_random)]
            for j in range(n_t)
        ],
    }
    report = {
        "n_source": len(source),
        "n_dev": len(dev),
        "patterns": [p.to_dict() for p in ranked[:20]],
        "triggers": [{**t.to_dict(), "text": t.describe()} for t in triggers],
        "controls": [[c.to_dict() for c in row] for row in controls],
        "table": table,
        "overall_accuracy": overall,
    }
    write_json(folder.file("attack.json"), report)
    lines = [f"Triggers mined from {len(source)} training examples, evaluated on {len(dev)} dev examples.", ""]
    lines += [f"{j + 1}. `{t.describe()}` (pattern score {t.source.score:.4f})" for j, t in enumerate(triggers)]
    write_text(folder.file("attack.md"), "\n".join([*lines, "", table_markdown(table), ""]))
    return {
        "timings": {"mine_s": mine_s, "evaluate_s": evaluate_s},
        "triggers": [t.describe() for t in triggers],
        "overall_accuracy": overall,
    }
