"""Planted-truth conventions, truth files and cross-layer removal: known answers on hand-built maps and models."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from lightning_attattr.analysis.edges import attattr_edges
from lightning_attattr.analysis.faithfulness import (
    PlantedTruth,
    check_truth,
    completeness_summary,
    pair_edges,
    pair_scores,
    planted_hits,
    planted_positions,
    random_pairs,
    read_truth,
    removal_probabilities,
    token_pair_edges,
    top_pairs,
    word_edge_mask,
    word_layout,
    word_maps,
)
from lightning_attattr.core.checks import DataFileError, PathNotFoundError

SPECIALS = ["[CLS]", "[SEP]", "[PAD]"]


# ----------------------------------------------------------------------------- conventions
def test_a_cls_edge_wins_under_tokens_and_loses_under_words():
    """Top edge: last-layer [CLS] <- a (real, but not "which two words interact"); the planted a-c edge is next."""
    layout = word_layout(["[CLS]", "a", "b", "c", "[SEP]"], SPECIALS)
    assert layout.words == [1, 2, 3] and layout.special == [True, False, False, False, True]
    scores = torch.zeros(2, 5, 5)
    scores[1, 0, 1] = 5.0  # [CLS] reads "a" in the last layer
    scores[1, 4, 4] = 4.0  # a self-edge of [SEP]
    scores[0, 3, 1] = 2.0  # the planted pair (a, c), read by c: query 3, key 1
    scores[0, 2, 2] = 3.0  # a self-edge of a word
    scores[1, 2, 1] = 1.0  # another word-to-word edge, weaker
    pair = [(1, 3)]  # given as (a, c): either direction counts
    tokens = planted_hits(scores, pair)
    assert not bool(tokens["top1"]) and not bool(tokens["top3"])  # [CLS] <- a, [SEP] self, b self rank first
    assert bool(tokens["touch1"])  # the [CLS] edge has "a" at one end
    assert tokens["layer_top1"].tolist() == [False, False]  # layer 0's top edge is b's self-edge
    words = planted_hits(word_maps(scores, layout), pair, eligible=word_edge_mask(layout))
    assert bool(words["top1"]) and bool(words["top3"])
    assert words["layer_top1"].tolist() == [True, False]
    assert bool(words["touch1"])


def test_word_pieces_are_merged_before_ranking():
    """Each piece edge loses to a one-piece competitor, their sum (the word's edge) wins."""
    tokens = ["[CLS]", "play", "##ing", "with", "ball", "[SEP]"]
    layout = word_layout(tokens, SPECIALS)
    assert layout.units == [0, 1, 1, 2, 3, 4] and layout.words == [1, 2, 3]
    scores = torch.zeros(1, 6, 6)
    scores[0, 1, 4] = 0.6  # "play" reads "ball"
    scores[0, 2, 4] = 0.6  # "##ing" reads "ball"
    scores[0, 3, 4] = 1.0  # "with" reads "ball": the top token edge
    merged = word_maps(scores, layout)
    assert merged[0, 1, 3] == pytest.approx(1.2) and merged.sum() == pytest.approx(scores.sum())
    truth = PlantedTruth(0, ((0, 2),), "word")  # word positions: "playing" (query), "ball" (key)
    where = planted_positions(truth, layout)
    assert where == {"tokens": [(1, 4), (2, 4)], "words": [(1, 3)]}
    assert not bool(planted_hits(scores, where["tokens"])["top1"])  # tokens: "with" -> "ball" wins
    assert bool(planted_hits(scores, where["tokens"])["top3"])
    assert bool(planted_hits(merged, where["words"], eligible=word_edge_mask(layout))["top1"])
    # token truth becomes the pair of the two tokens' words
    assert planted_positions(PlantedTruth(0, ((2, 4),), "token"), layout)["words"] == [(1, 3)]


def test_any_planted_pair_is_a_hit_and_ineligible_pairs_never_are():
    scores = torch.zeros(1, 4, 4)
    scores[0, 2, 3] = 1.0
    assert bool(planted_hits(scores, [(0, 1), (3, 2)])["top1"])  # the second pair, the other direction
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[2, 3] = mask[3, 2] = False
    hits = planted_hits(scores, [(2, 3)], ks=(1, 16), eligible=mask)
    assert not bool(hits["top1"]) and not bool(hits["top16"])


def test_word_rule_for_bpe_pieces():
    layout = word_layout(["<s>", "The", "Ġfil", "m", "Ġrocks", "</s>"], ["<s>", "</s>"])
    assert layout.units == [0, 1, 2, 2, 3, 4] and layout.words == [1, 2, 3]
    mask = word_edge_mask(layout)
    assert mask.sum() == 6 and not mask[0].any() and not mask.diagonal().any()


# ----------------------------------------------------------------------------- truth files
def write(tmp_path, *lines: str):
    path = tmp_path / "truth.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_truth_accepts_the_documented_format(tmp_path):
    path = write(
        tmp_path,
        '{"index": 3, "pairs": [[5, 2]], "unit": "word"}',
        "",
        '{"index": 7, "pairs": [[4, 1], [6, 1]], "unit": "token", "layer": 2}',
    )
    assert read_truth(path) == [
        PlantedTruth(3, ((5, 2),), "word", None, 1),
        PlantedTruth(7, ((4, 1), (6, 1)), "token", 2, 3),
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"index": 1, "pairs": [[1, 2]]', "invalid JSON"),
        ("[1, 2]", "a JSON object"),
        ('{"index": 1, "unit": "word"}', "no 'pairs'"),
        ('{"index": 1, "pairs": [[1, 2]], "unit": "word", "layers": 1}', "'layers'"),
        ('{"index": -1, "pairs": [[1, 2]], "unit": "word"}', "`index` to be an integer >= 0"),
        ('{"index": true, "pairs": [[1, 2]], "unit": "word"}', "but got True"),
        ('{"index": 1, "pairs": [[1, 2]], "unit": "piece"}', "['token', 'word'], but got 'piece'"),
        ('{"index": 1, "pairs": [], "unit": "word"}', "non-empty list"),
        ('{"index": 1, "pairs": [[1, 2, 3]], "unit": "word"}', "[1, 2, 3]"),
        ('{"index": 1, "pairs": [[2, 2]], "unit": "word"}', "two different positions, but got [2, 2]"),
        ('{"index": 1, "pairs": [[1, 2]], "unit": "word", "layer": "last"}', "`layer`"),
    ],
)
def test_truth_file_errors_name_file_and_line(tmp_path, line, expected):
    path = write(tmp_path, '{"index": 0, "pairs": [[1, 2]], "unit": "word"}', line)
    with pytest.raises(DataFileError) as info:
        read_truth(path)
    message = str(info.value)
    assert f"`truth` {path}, line 2: expected" in message and expected in message, message
    assert "\n" not in message


def test_truth_file_index_twice_missing_file_and_empty_file(tmp_path):
    path = write(tmp_path, *['{"index": 4, "pairs": [[1, 2]], "unit": "word"}'] * 2)
    with pytest.raises(DataFileError, match="line 2: expected each `index` once .* 4 again \\(line 1\\)"):
        read_truth(path)
    with pytest.raises(PathNotFoundError, match="`truth`"):
        read_truth(tmp_path / "missing.jsonl")
    with pytest.raises(DataFileError, match="at least one line"):
        read_truth(write(tmp_path, "", "  "))


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"index": 10, "pairs": [[1, 2]], "unit": "word"}', "`index` in [0, 9] (the validation set), but got 10"),
        ('{"index": 2, "pairs": [[1, 7]], "unit": "token"}', "token positions in [0, 6] (example 2 has 7 tokens"),
        ('{"index": 2, "pairs": [[5, 1]], "unit": "word"}', "word positions in [0, 4] (example 2 has 5 non-special"),
        ('{"index": 2, "pairs": [[1, 2]], "unit": "word", "layer": 3}', "`layer` in [0, 2]"),
    ],
)
def test_truth_ranges_are_checked_against_data_and_model(tmp_path, line, expected):
    path = write(tmp_path, '{"index": 0, "pairs": [[4, 1]], "unit": "word", "layer": 2}', line)
    truth = read_truth(path)
    with pytest.raises(DataFileError) as info:
        check_truth(truth, path, n_dev=10, split="validation", n_layers=3, size=lambda i: (7, 5))
    assert f"{path}, line 2: expected" in str(info.value) and expected in str(info.value), str(info.value)
    check_truth(truth[:1], path, n_dev=10, split="validation", n_layers=3, size=lambda i: (7, 5))


# ----------------------------------------------------------------------------- cross-layer removal
def redundant_bert(n_layers: int = 2) -> torch.nn.Module:
    """A 1-head BERT whose [CLS] reads the signal word (id 5) in every layer, each read enough for the class.

    [CLS] and the signal word query a direction only the signal word's key answers, so [CLS]'s
    attention sits on it in every layer; its value pushes [CLS] towards the signal direction, the
    residual stream keeps what an earlier layer delivered, and the pooler's tanh saturates. So
    class 1 needs the [CLS] <- signal connection in at least one layer: the interaction is
    duplicated across layers.
    """
    cfg = transformers.BertConfig(
        vocab_size=8,
        hidden_size=4,
        num_hidden_layers=n_layers,
        num_attention_heads=1,
        intermediate_size=4,
        max_position_embeddings=16,
        type_vocab_size=1,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = transformers.BertForSequenceClassification(cfg).eval()
    cls, signal, filler = torch.tensor([[1.0, 1, -1, -1], [1, -1, 1, -1], [1, -1, -1, 1]])  # zero mean, variance 1
    direction = torch.tensor([8.0, 0, 0, 0])  # query . key = 64 / sqrt(head size 4) = 32: a sharp softmax
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        embeddings = model.bert.embeddings
        embeddings.word_embeddings.weight[:] = filler
        embeddings.word_embeddings.weight[2] = cls
        embeddings.word_embeddings.weight[5] = signal
        embeddings.LayerNorm.weight.fill_(1.0)
        for layer in model.bert.encoder.layer:
            attention = layer.attention
            attention.self.query.weight[:] = torch.outer(direction, cls + signal) / 4
            attention.self.key.weight[:] = torch.outer(direction, signal) / 4
            attention.self.value.weight[:] = torch.outer(signal, signal) * 5 / 4  # the signal word's value: 5 x signal
            attention.output.dense.weight[:] = torch.eye(4)
            attention.output.LayerNorm.weight.fill_(1.0)
            layer.output.LayerNorm.weight.fill_(1.0)  # the feed-forward block adds 0
        model.bert.pooler.dense.weight[0] = signal * 2.5  # tanh(2.5 <h, signal> - 5): +1 once [CLS] has the signal
        model.bert.pooler.dense.bias[0] = -5.0
        model.classifier.weight[:, 0] = torch.tensor([-5.0, 5.0])
    return model


def test_removing_one_layers_edge_does_nothing_removing_it_in_all_layers_flips():
    model = redundant_bert()
    ids = torch.tensor([[2, 6, 5, 6, 3]])  # [CLS] w signal w [SEP]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    layout = word_layout(["[CLS]", "w", "s", "w", "[SEP]"], SPECIALS)
    everywhere = pair_edges(torch.tensor([[0, 2]]), layout, n_layers=2)
    assert everywhere.tolist() == [[0, 0, 2], [1, 0, 2]]
    sets = [torch.zeros(0, 3, dtype=torch.long), everywhere[:1], everywhere[1:], everywhere]
    probs = removal_probabilities(model, inputs, sets)[:, 1]  # class 1
    assert probs[0] > 0.99
    assert (probs[1:3] - probs[0]).abs().max() < 1e-4  # one layer's edge: (near) nothing
    assert probs[3] < 0.01  # the same connection in both layers: the prediction flips
    # the pairs of a method ranked across layers: AttAttr splits the credit over the two layers
    maps = attattr_edges(model, inputs, n_steps=16, method="gausslegendre")[0]
    assert top_pairs(pair_scores(maps, layout), 1).tolist() == [[0, 2]]
    # the planted pair, both directions, in all layers or one
    assert token_pair_edges([(2, 0)], 2, [1]).tolist() == [[1, 0, 2], [1, 2, 0]]
    assert len(token_pair_edges([(2, 0)], 2)) == 4


def test_pair_ranking_sums_layers_and_pieces_and_caps_k():
    layout = word_layout(["[CLS]", "play", "##ing", "ball", "[SEP]"], SPECIALS)
    scores = torch.zeros(3, 5, 5)
    scores[0, 3, 4] = 1.0  # the best single edge: ball -> [SEP] in layer 0
    scores[:, 1, 3] = 0.2  # play -> ball in every layer
    scores[:, 2, 3] = 0.2  # ##ing -> ball in every layer: the word pair's total is 1.2
    pairs = pair_scores(scores, layout)
    assert pairs.shape == (4, 4) and pairs[1, 2] == pytest.approx(1.2)
    assert top_pairs(pairs, 2).tolist() == [[1, 2], [2, 3]]
    assert top_pairs(pairs, 100).shape == (16, 2)  # capped at units x units
    edges = pair_edges(top_pairs(pairs, 1), layout, 3)
    assert sorted(edges.tolist()) == [[layer, q, 3] for layer in range(3) for q in (1, 2)]
    g = torch.Generator().manual_seed(0)
    drawn = random_pairs(4, 100, g)
    assert len({tuple(p) for p in drawn.tolist()}) == 16
    assert (
        random_pairs(4, 3, torch.Generator().manual_seed(5)).tolist()
        == random_pairs(4, 3, torch.Generator().manual_seed(5)).tolist()
    )


def test_completeness_summary():
    summary = completeness_summary(torch.tensor([[1e-4, 3e-4], [2e-4, 5e-3]]))
    assert summary["worst"] == pytest.approx(5e-3) and summary["median"] == pytest.approx(2.5e-4)
    assert summary["n_maps"] == 4
    assert json.dumps(summary)
