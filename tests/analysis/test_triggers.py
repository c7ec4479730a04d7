"""Known-answer and edge-case tests of the adversarial-trigger pipeline (``lightning_attattr.analysis.triggers``)."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_attattr.analysis.triggers import (
    Pattern,
    Trigger,
    attack_table,
    insert_trigger,
    make_trigger,
    mine_pattern,
    per_class_accuracy,
    random_control,
    rank_patterns,
    select_triggers,
    table_markdown,
)
from lightning_attattr.core.checks import ArgumentError

# a pair source: [CLS] A(3) [SEP] B(4) [SEP]; seg_pos = 4, n = 10, len A = 3, len B = 10 - 2 - 4 = 4
PAIR = ("[CLS]", "floods", "in", "iowa", "[SEP]", "ice", "in", "florida", "##s", "[SEP]")
SINGLE = ("[CLS]", "a", "very", "good", "film", "[SEP]")


def pattern(value1=1.0, value2=0.5, pair1=(1, 7), pair2=(3, 5), tokens=PAIR, seg_pos=4, example=0):
    return Pattern(example, 0, 0, value1, value2, pair1, pair2, tokens, seg_pos, 1, None)


# ----------------------------------------------------------------------------- mining
def test_head_selection_global_max_and_top2():
    n = len(SINGLE)
    attr = torch.rand(2, 3, n, n, generator=torch.Generator().manual_seed(0)) * 0.1
    attr[0, 1, 2, 3] = 0.8  # layer 0's max
    attr[1, 2, 4, 1] = 0.9  # the global max
    attr[1, 2, 3, 3] = 0.5  # top-2 in that head
    attr[1, 0, 0, 0] = 0.85  # larger than top-2 but in another head
    p = mine_pattern(attr, SINGLE, seg_pos=5, predicted=1, label=0, example=7)
    assert (p.layer, p.head) == (1, 2)
    assert p.pair1 == (4, 1) and p.pair2 == (3, 3)
    assert p.value1 == pytest.approx(0.9) and p.value2 == pytest.approx(0.5)
    assert p.score == pytest.approx(1.4)
    assert (p.example, p.predicted, p.label, p.seg_pos, p.tokens) == (7, 1, 0, 5, SINGLE)


def test_head_selection_ties_go_to_first_layer_and_flat_order():
    n = len(SINGLE)
    attr = torch.zeros(2, 3, n, n)
    attr[1, 0, 1, 1] = 0.7
    attr[0, 2, 2, 2] = 0.7  # same value, earlier layer wins despite the higher head
    p = mine_pattern(attr, SINGLE, seg_pos=5, predicted=0)
    assert (p.layer, p.head) == (0, 2)
    assert p.pair1 == (2, 2)
    # the second entry ties at 0 everywhere: the lowest flat index
    assert p.pair2 == (0, 0) and p.value2 == 0.0
    # ties within the top-2: flat index order
    attr = torch.zeros(1, 1, n, n)
    attr[0, 0, 3, 1] = 0.4
    attr[0, 0, 1, 4] = 0.4
    p = mine_pattern(attr, SINGLE, seg_pos=5, predicted=0)
    assert (p.pair1, p.pair2) == ((1, 4), (3, 1))


@pytest.mark.parametrize(
    ("attr", "kwargs", "match"),
    [
        (torch.zeros(1, 1, 5, 5), {}, r"\['\*', '\*', 6, 6\]"),
        (torch.zeros(1, 6, 6), {}, "layer, head, query_pos, key_pos"),
        (torch.full((1, 1, 6, 6), float("nan")), {}, "finite"),
        (torch.zeros(1, 1, 6, 6), {"seg_pos": 6}, "`seg_pos`"),
    ],
)
def test_mine_pattern_errors(attr, kwargs, match):
    args = {"seg_pos": 5, "predicted": 0, **kwargs}
    with pytest.raises(ArgumentError, match=match):
        mine_pattern(attr, SINGLE, **args)


def test_rank_patterns_descending_and_stable():
    ps = [pattern(0.1, 0.1, example=0), pattern(0.5, 0.1, example=1), pattern(0.15, 0.05, example=2)]
    assert [p.example for p in rank_patterns(ps)] == [1, 0, 2]


def test_pattern_dict_roundtrip():
    p = pattern()
    data = json.loads(json.dumps(p.to_dict()))
    assert data["score"] == pytest.approx(1.5) and data["pair1"] == [1, 7]
    assert Pattern.from_dict(data) == p
    labelled = Pattern(3, 1, 2, 0.5, 0.1, (1, 2), (2, 1), SINGLE, 5, 0, 1)
    assert Pattern.from_dict(json.loads(json.dumps(labelled.to_dict()))) == labelled


# ----------------------------------------------------------------------------- construction
def test_ratio_rule_uses_only_top1_below_ratio():
    t = make_trigger(pattern(1.0, 0.19))
    assert t.tokens == ("floods", "florida")  # positions 1 and 7 only
    t = make_trigger(pattern(1.0, 0.2))  # ratio reached: the union
    assert t.tokens == ("floods", "iowa", "ice", "florida")
    t = make_trigger(pattern(1.0, 0.19), use_both=True)
    assert t.tokens == ("floods", "iowa", "ice", "florida")
    t = make_trigger(pattern(1.0, 0.19), ratio=0.1)
    assert len(t) == 4


def test_relative_positions_of_a_pair_source():
    t = make_trigger(pattern(1.0, 0.5, pair1=(1, 8), pair2=(3, 5)))
    assert t.tokens == ("floods", "iowa", "ice", "##s")  # positions 1, 3, 5, 8; "##s" kept as-is
    assert t.segments == ("a", "a", "b", "b")
    # A: p / (seg_pos - 1) = p / 3; B: (p - 4) / (10 - 2 - 4) = (p - 4) / 4
    assert t.relative == pytest.approx((1 / 3, 1.0, 0.25, 1.0))
    assert t.source is not None and t.source.example == 0


def test_specials_dropped_and_duplicates_merged():
    t = make_trigger(pattern(1.0, 0.9, pair1=(0, 4), pair2=(9, 2)))  # [CLS], [SEP], [SEP], "in"
    assert t.tokens == ("in",) and t.segments == ("a",) and t.relative == pytest.approx((2 / 3,))
    t = make_trigger(pattern(1.0, 0.9, pair1=(2, 2), pair2=(2, 0)))
    assert t.tokens == ("in",)
    empty = make_trigger(pattern(1.0, 0.9, pair1=(0, 4), pair2=(9, 0)))
    assert len(empty) == 0


def test_single_sentence_source_is_all_segment_a():
    t = make_trigger(pattern(1.0, 0.5, pair1=(1, 4), pair2=(5, 0), tokens=SINGLE, seg_pos=5))
    assert t.tokens == ("a", "film") and t.segments == ("a", "a")
    assert t.relative == pytest.approx((0.25, 1.0))  # p / (5 - 1)


def test_one_token_segment_and_zero_top1():
    tokens = ("[CLS]", "x", "[SEP]", "y", "[SEP]")
    t = make_trigger(pattern(1.0, 0.5, pair1=(1, 3), pair2=(1, 1), tokens=tokens, seg_pos=2))
    assert t.relative == (1.0, 1.0)  # one-token segments: p over a length of 1
    # value1 == 0: the official division would fail; only the top-1 pair is used
    t = make_trigger(pattern(0.0, 0.0, pair1=(1, 1), pair2=(3, 3), tokens=tokens, seg_pos=2))
    assert t.tokens == ("x",)


def test_trigger_validation_and_dict():
    with pytest.raises(ArgumentError, match="equal length"):
        Trigger(("x",), ("a", "b"), (0.5,))
    with pytest.raises(ArgumentError, match="'a' or 'b'"):
        Trigger(("x",), ("c",), (0.5,))
    t = make_trigger(pattern())
    data = json.loads(json.dumps(t.to_dict()))
    assert data["text"] == "floods iowa || ice florida"
    back = Trigger.from_dict(data)
    assert back == t and back.source == t.source


def test_select_triggers_threshold_top_and_dedup():
    ranked = rank_patterns(
        [
            pattern(0.5, 0.3, example=0),
            pattern(0.5, 0.3, example=1),  # same trigger as example 0: skipped
            pattern(0.3, 0.2, pair1=(0, 4), pair2=(9, 0), example=2),  # only specials: skipped
            pattern(0.2, 0.1, pair1=(2, 6), pair2=(2, 6), example=3),
            pattern(0.011, 0.01, pair1=(1, 1), pair2=(1, 1), example=4),  # score 0.021 >= 0.02, the last one
            pattern(0.01, 0.009, example=5),  # below the threshold: stop here
            pattern(0.01, 0.009, pair1=(3, 3), pair2=(3, 3), example=6),
        ]
    )
    triggers = select_triggers(ranked, top=10)
    assert [t.source.example for t in triggers] == [0, 3, 4]
    assert [t.source.example for t in select_triggers(ranked)] == [0, 3, 4]
    assert [t.source.example for t in select_triggers(ranked, top=2)] == [0, 3]
    # no pattern below the threshold: unlike the official off-by-one, the last one is kept
    assert [t.source.example for t in select_triggers(ranked[:5], top=10)] == [0, 3, 4]
    assert select_triggers(ranked, threshold=1.0) == []
    assert len(select_triggers(ranked, top=1, ratio=0.7)[0]) == 2  # kwargs reach make_trigger: 0.3 / 0.5 < 0.7
    with pytest.raises(ArgumentError, match="`top`"):
        select_triggers(ranked, top=0)


# ----------------------------------------------------------------------------- insertion
def test_insertion_round_half_to_even():
    # len0 = 4, a = 1, r = 0.5: round(2.5) == 2 (not 3)
    t = Trigger(("X",), ("a",), (0.5,))
    a, b = insert_trigger(["p", "q", "r", "s"], None, t, max_tokens=100)
    assert a == ["p", "q", "X", "r", "s"] and b is None
    # len0 = 6, a = 1, r = 0.5: round(3.5) == 4
    a, _ = insert_trigger(list("pqrstu"), None, t, max_tokens=100)
    assert a.index("X") == 4


def test_insertion_collisions_become_consecutive():
    t = Trigger(("X", "Y", "Z"), ("a", "a", "a"), (0.3, 0.3, 0.3))
    a, _ = insert_trigger(list("pqrstuv"), None, t, max_tokens=100)  # round(10 * 0.3) = 3 for all
    assert a == ["p", "q", "r", "X", "Y", "Z", "s", "t", "u", "v"]
    # index past the end is clamped to the current length
    t = Trigger(("X", "Y"), ("a", "a"), (1.0, 1.0))
    a, _ = insert_trigger(["p"], None, t, max_tokens=100)
    assert a == ["p", "X", "Y"]


def test_insertion_segment_routing_and_specials_skipped():
    t = Trigger(("A1", "[SEP]", "B1", "B2"), ("a", "a", "b", "b"), (0.0, 0.5, 0.5, 1.0))
    tokens_a, tokens_b = ["p", "q"], ["u", "v", "w"]
    a, b = insert_trigger(tokens_a, tokens_b, t, max_tokens=100)
    assert a == ["A1", "p", "q"]  # [SEP] never inserted; a = 1
    assert b == ["u", "v", "B1", "w", "B2"]  # round(5 * 0.5) = 2, round(5 * 1.0) = 5
    assert tokens_a == ["p", "q"] and tokens_b == ["u", "v", "w"]  # inputs untouched


def test_b_trigger_into_single_sentence_is_refused():
    t = make_trigger(pattern())
    with pytest.raises(ArgumentError, match=r"single-sentence target .* sentence-pair task"):
        insert_trigger(["a", "film"], None, t, max_tokens=100)
    # an A-only trigger works for a single sentence
    a, b = insert_trigger(["a", "film"], None, make_trigger(pattern(1.0, 0.0, pair1=(1, 3))), max_tokens=100)
    assert a == ["a", "floods", "film", "iowa"] and b is None  # round(4 / 3) = 1, then round(4) clamped to 3


def test_truncation_pair_longest_first_and_single():
    empty = Trigger((), (), ())
    a, b = insert_trigger(list("abcdef"), list("xyz"), empty, max_tokens=6)
    assert (a, b) == (list("abc"), list("xyz"))  # the longer a loses 3
    a, b = insert_trigger(list("abcdef"), list("xyz"), empty, max_tokens=5)
    assert (a, b) == (list("abc"), list("xy"))  # tie at 3/3: b loses first
    a, b = insert_trigger(list("abcdef"), None, empty, max_tokens=4)
    assert (a, b) == (list("abcd"), None)
    t = Trigger(("X",), ("a",), (1.0,))
    a, _ = insert_trigger(list("abc"), None, t, max_tokens=3)
    assert a == list("abc")  # the trigger at the end is cut
    with pytest.raises(ArgumentError, match=r"Expected `max_tokens` to be an integer >= 1, but got 0\."):
        insert_trigger(["a"], None, empty, max_tokens=0)


# ----------------------------------------------------------------------------- control
def test_random_control():
    t = make_trigger(pattern())
    vocab = [f"w{i}" for i in range(50)] + ["[CLS]", "[SEP]", "[unused0]", "[PAD]"]
    c0 = random_control(t, vocab, seed=0)
    assert len(c0) == len(t) and c0.segments == t.segments and c0.relative == t.relative
    assert all(tok.startswith("w") for tok in c0.tokens)
    assert random_control(t, vocab, seed=0).tokens == c0.tokens
    assert random_control(t, vocab, seed=1).tokens != c0.tokens
    assert c0.source == t.source
    with pytest.raises(ArgumentError, match="`vocabulary`"):
        random_control(t, ["[CLS]", "[MASK]"], seed=0)


# ----------------------------------------------------------------------------- evaluation
def test_per_class_accuracy():
    acc = per_class_accuracy([0, 1, 2, 2, 0], [0, 1, 2, 0, 0], 4)
    assert acc[:3] == pytest.approx([2 / 3, 1.0, 1.0]) and acc[3] is None
    assert per_class_accuracy(torch.tensor([1, 1]), torch.tensor([0, 1]), 2) == [0.0, 1.0]
    with pytest.raises(ArgumentError, match="equal length"):
        per_class_accuracy([0], [0, 1], 2)
    with pytest.raises(ArgumentError, match=r"`labels` in \[0, 1\]"):
        per_class_accuracy([0], [2], 2)


def test_attack_table_and_markdown():
    table = attack_table(
        ["entailment", "not_entailment", "empty"],
        [0.8, 0.6, None],
        [
            {"trigger": "floods || ice", "accuracy": [0.5, 0.7, None]},
            {"trigger": "iowa", "accuracy": [0.6, 0.4, None]},
        ],
        [[[0.8, 0.5, None], [0.7, 0.6, None]], [[0.8, 0.6, None]]],
    )
    assert table["classes"] == ["entailment", "not_entailment", "empty"]
    assert table["triggers"] == ["floods || ice", "iowa"]
    ent, not_ent, empty = table["rows"]
    assert [e["change"] for e in ent["triggers"]] == pytest.approx([-0.3, -0.2])
    assert ent["mean_change"] == pytest.approx(-0.25)
    assert not_ent["mean_change"] == pytest.approx(-0.05)
    assert ent["triggers"][0]["control_mean"] == pytest.approx(0.75)
    assert ent["control"]["mean"] == pytest.approx(23 / 30)
    assert ent["control"]["std"] == pytest.approx(0.057735, abs=1e-6)
    assert ent["control"]["change"] == pytest.approx(23 / 30 - 0.8) and ent["control"]["n"] == 3
    assert empty["clean"] is None and empty["mean_change"] is None and empty["control"]["mean"] is None
    json.dumps(table)

    md = table_markdown(table)
    lines = md.strip().splitlines()
    assert len(lines) == 2 + 3
    for name in ("entailment", "not_entailment", "empty", "mean change", "random control"):
        assert name in md
    assert "floods \\|\\| ice" in md  # pipes escaped
    assert lines[2].startswith("| entailment | 80.0 | 50.0 (-30.0) | 60.0 (-20.0) | 76.7 ± 5.8 (-3.3) | -25.0 |")
    assert lines[4] == "| empty | n/a | n/a | n/a | n/a | n/a |"


def test_attack_table_without_controls_and_errors():
    table = attack_table(["0", "1"], [0.9, 0.8], [{"trigger": "x", "accuracy": [0.9, 0.7]}], [])
    assert table["rows"][1]["control"] == {"mean": None, "std": None, "n": 0, "change": None}
    assert "| 1 | 80.0 | 70.0 (-10.0) | n/a | -10.0 |" in table_markdown(table)
    with pytest.raises(ArgumentError, match="`clean`"):
        attack_table(["0", "1"], [0.9], [], [])
    with pytest.raises(ArgumentError, match="one list per trigger"):
        attack_table(["0", "1"], [0.9, 0.8], [{"trigger": "x", "accuracy": [0.9, 0.7]}], [[], []])
    with pytest.raises(ArgumentError, match="'trigger' and 'accuracy'"):
        attack_table(["0", "1"], [0.9, 0.8], [{"accuracy": [0.9, 0.7]}], [])
