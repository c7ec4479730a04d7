import pytest

from lightning_attattr.data.synthetic import KEY_A, KEY_B, make_synthetic, synthetic_vocab


def test_deterministic_from_the_seed_only():
    import random

    random.seed(123)
    first = make_synthetic(50, seed=7)
    random.seed(456)
    assert make_synthetic(50, seed=7) == first
    assert make_synthetic(50, seed=8) != first


def test_label_is_the_xor_of_the_planted_words_at_the_recorded_positions():
    for ex in make_synthetic(500, seed=0, min_len=4, max_len=9):
        i, j = ex.positions
        assert i != j and 4 <= len(ex.words) <= 9
        assert ex.words[i] in KEY_A and ex.words[j] in KEY_B
        assert sum(w in KEY_A for w in ex.words) == 1 and sum(w in KEY_B for w in ex.words) == 1
        assert ex.label == int((ex.words[i] == "a1") != (ex.words[j] == "b1"))
        assert set(ex.words) <= set(synthetic_vocab())


def test_no_single_word_predicts_the_label():
    data = make_synthetic(4000, seed=1)
    assert abs(sum(ex.label for ex in data) / len(data) - 0.5) < 0.03
    for key in (*KEY_A, *KEY_B):
        labels = [ex.label for ex in data if key in ex.words]
        assert abs(sum(labels) / len(labels) - 0.5) < 0.05, key


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(n=-1), "`n` to be an integer >= 0, but got -1"),
        (dict(n=3, min_len=1), "`min_len` to be an integer >= 2, but got 1"),
        (dict(n=3, min_len=8, max_len=4), r"`max_len` to be an integer >= `min_len` \(8\), but got 4"),
        (dict(n=3, n_filler=0), "`n_filler` to be an integer >= 1, but got 0"),
    ],
)
def test_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic(seed=0, **kwargs)


def test_tokenizer_maps_words_and_keeps_positions(tmp_path):
    from transformers import AutoTokenizer

    from lightning_attattr.data.synthetic import synthetic_tokenizer

    tok = synthetic_tokenizer()
    data = make_synthetic(3, seed=2)
    enc = tok([ex.text for ex in data], padding=True, return_tensors="pt")
    for row, ex in enumerate(data):
        tokens = tok.convert_ids_to_tokens(enc["input_ids"][row])
        assert tokens[0] == "[CLS]" and tokens[len(ex.words) + 1] == "[SEP]"
        assert tokens[1 : len(ex.words) + 1] == list(ex.words)
        i, j = ex.positions
        assert tokens[i + 1] in KEY_A and tokens[j + 1] in KEY_B  # [CLS] shifts positions by one
        assert int(enc["attention_mask"][row].sum()) == len(ex.words) + 2
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(data[0].text)["input_ids"] == tok(data[0].text)["input_ids"]
