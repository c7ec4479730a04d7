"""`attack_data`: the data preparation of `analyze.py attack` (checks, defaults, cuts) without a model."""

from __future__ import annotations

import pytest

from lightning_attattr.analysis.settings import AttackSettings
from lightning_attattr.core.checks import ArgumentError
from lightning_attattr.data.modules import TextExamples
from lightning_attattr.lightning.attack import attack_data


class TextData:
    """The parts of a text data module `attack_data` reads."""

    def __init__(self, tokenizer, pair: bool, label_names=None):
        self.tokenizer, self.max_length, self.label_names = tokenizer, 32, label_names
        b = ["very good", "bad", "the cat sat", "fun"] if pair else None
        self.splits = {
            "train": TextExamples("train", ["the ride is fun", "a", "hello world", "nan"], b, [1, 0, 1, 0]),
            "validation": TextExamples("validation", ["good movie", "bad movie", "the dog"], b and b[:3], [1, 0, 1]),
        }

    def examples(self, split):
        return self.splits[split]

    def dataset(self, split):
        return self.splits[split].labels


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def test_single_sentences_default_to_15_wordpieces(tokenizer):
    with pytest.raises(ArgumentError, match=r"first 4 training examples .* `min_tokens` \(15\)"):
        attack_data(TextData(tokenizer, pair=False), AttackSettings(), n_labels=2)
    data = attack_data(TextData(tokenizer, pair=False), AttackSettings(min_tokens=4, n_eval=2), n_labels=3)
    assert data.min_tokens == 4
    assert [s["tokens"] for s in data.source] == [
        ["[CLS]", "the", "ride", "is", "fun", "[SEP]"],
        ["[CLS]", "hello", "world", "[SEP]"],
    ]
    assert [s["labels"] for s in data.source] == [1, 1]
    assert data.dev == TextExamples("validation", ["good movie", "bad movie"], None, [1, 0])
    assert data.label_names == ["0", "1", "2"]


def test_pairs_default_to_no_minimum(tokenizer):
    data = attack_data(
        TextData(tokenizer, pair=True, label_names=["yes", "no"]), AttackSettings(n_source=3), n_labels=2
    )
    assert data.min_tokens == 0 and len(data.source) == 3
    assert data.dev.text_b == ["very good", "bad", "the cat sat"]
    assert data.label_names == ["yes", "no"]


def test_n_eval_is_checked_against_the_dev_set_first(tokenizer):
    with pytest.raises(ArgumentError, match=r"`n_eval` to be at most 3 \(the validation set's size\), but got 4"):
        attack_data(TextData(tokenizer, pair=False), AttackSettings(n_eval=4, min_tokens=99), n_labels=2)


def test_a_data_module_without_raw_texts_is_refused():
    class Synthetic:
        def examples(self, split):
            return [[1, 2, 3]]

    with pytest.raises(ArgumentError, match="text data module .* but got Synthetic"):
        attack_data(Synthetic(), AttackSettings(), n_labels=2)
