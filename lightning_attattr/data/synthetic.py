"""A synthetic classification task with planted token interactions and known ground truth.

Each example is a sequence of filler words with exactly one "A" word (``a0`` or ``a1``) and one
"B" word (``b0`` or ``b1``) at random positions. The label is the XOR of the two choices:
``label = (A == a1) != (B == b1)``. Neither word alone carries any information about the label
(each value of A occurs equally often with both labels), so a model can only solve the task by
combining the two positions: an interaction that attention attribution should find. Every example
records the positions of its interacting words.

Generation is deterministic: the same ``seed`` always gives the same examples, independent of the
global random state.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lightning_attattr.core.checks import ArgumentError, check_int

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
KEY_A: tuple[str, str] = ("a0", "a1")
KEY_B: tuple[str, str] = ("b0", "b1")


def filler_words(n_filler: int) -> list[str]:
    """The filler vocabulary ``w0 .. w{n-1}``."""
    return [f"w{i}" for i in range(n_filler)]


def synthetic_vocab(n_filler: int = 20) -> list[str]:
    """Full word-level vocabulary: special tokens, the four key words, then the fillers."""
    return [*SPECIAL_TOKENS, *KEY_A, *KEY_B, *filler_words(n_filler)]


@dataclass(frozen=True)
class SyntheticExample:
    """One example: ``words`` (no special tokens), ``label`` and the interacting word ``positions``.

    ``positions`` index ``words``; after a tokenizer prepends ``[CLS]`` they shift by one.
    """

    words: tuple[str, ...]
    label: int
    positions: tuple[int, int]

    @property
    def text(self) -> str:
        """The words joined by spaces."""
        return " ".join(self.words)


def make_synthetic(
    n: int, seed: int, *, min_len: int = 8, max_len: int = 16, n_filler: int = 20
) -> list[SyntheticExample]:
    """Generate ``n`` examples deterministically from ``seed``.

    Args:
        n: number of examples.
        seed: random seed; the same seed gives the same examples.
        min_len: shortest sequence in words (>= 2).
        max_len: longest sequence in words (>= ``min_len``).
        n_filler: size of the filler vocabulary (>= 1).

    Returns:
        A list of :class:`SyntheticExample`; labels are balanced in expectation.

    Raises:
        ArgumentTypeError: a size argument that is not an integer (the message names it).
        ArgumentError: a size argument out of range (the message names it).
    """
    check_int("n", n, 0)
    check_int("min_len", min_len, 2)
    check_int("n_filler", n_filler, 1)
    if check_int("max_len", max_len) < min_len:
        raise ArgumentError(f"Expected `max_len` to be an integer >= `min_len` ({min_len}), but got {max_len!r}.")
    rng = random.Random(seed)
    fillers = filler_words(n_filler)
    out = []
    for _ in range(n):
        length = rng.randint(min_len, max_len)
        words = [rng.choice(fillers) for _ in range(length)]
        pos_a, pos_b = rng.sample(range(length), 2)
        a, b = rng.randrange(2), rng.randrange(2)
        words[pos_a], words[pos_b] = KEY_A[a], KEY_B[b]
        out.append(SyntheticExample(tuple(words), int(a != b), (pos_a, pos_b)))
    return out


def synthetic_tokenizer(n_filler: int = 20) -> PreTrainedTokenizerFast:
    """A word-level BERT-style tokenizer for the synthetic vocabulary (``[CLS] words [SEP]``).

    It is an ordinary ``PreTrainedTokenizerFast``: it pads, truncates, converts ids back to tokens
    and round-trips through ``save_pretrained`` / ``AutoTokenizer.from_pretrained``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(synthetic_vocab(n_filler))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
