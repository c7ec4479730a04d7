"""Tiny random models and batches shared by the tests (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import transformers

#: `AttAttrClassifier(model_config=...)` for Lightning-level tests: a 2-layer, 2-head BERT over the synthetic vocabulary
TINY_BERT_CONFIG = {
    "model_type": "bert",
    "vocab_size": 29,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 32,
}
# Tiny models gain nothing from a second thread, and with another job on the two cores the thread
# hand-off alone made some tests 100x slower: one thread keeps the suite's time independent of load.
torch.set_num_threads(1)

#: The device of the accelerator tests (``@pytest.mark.cuda``): CUDA, compared with the CPU.
#: ``ATTATTR_TEST_DEVICE=cpu`` runs them on the CPU instead: a check of the tests themselves without a GPU.
TEST_DEVICE = os.environ.get("ATTATTR_TEST_DEVICE", "cuda")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``cuda`` where no CUDA device is available (unless ``ATTATTR_TEST_DEVICE=cpu``)."""
    if TEST_DEVICE != "cuda" or torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False); `make gpu-check` runs it")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


TEXT_KW = dict(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37)


def text_config(model_type: str, num_labels: int = 3) -> transformers.PretrainedConfig:
    """A tiny random config of ``model_type`` (hidden 32, 3 layers, 4 heads)."""
    if model_type == "distilbert":
        return transformers.DistilBertConfig(
            vocab_size=99, dim=32, n_layers=3, n_heads=4, hidden_dim=37, num_labels=num_labels
        )
    if model_type in ("albert", "electra"):
        return transformers.AutoConfig.for_model(model_type, embedding_size=16, num_labels=num_labels, **TEXT_KW)
    return transformers.AutoConfig.for_model(model_type, num_labels=num_labels, **TEXT_KW)


def make_model(
    model_type: str = "bert",
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    head_scale: float = 30.0,
    num_labels: int = 3,
) -> torch.nn.Module:
    """A tiny random classifier in eval mode; ``head_scale`` sharpens the random head so that
    attention changes move the output probability noticeably (completeness tests need that)."""
    torch.manual_seed(seed)
    if model_type == "vit":
        cfg = transformers.ViTConfig(
            image_size=8,
            patch_size=4,
            num_channels=3,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=37,
            num_labels=num_labels,
        )
        model = transformers.AutoModelForImageClassification.from_config(cfg)
    else:
        model = transformers.AutoModelForSequenceClassification.from_config(text_config(model_type, num_labels))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "classifier" in name and name.endswith("weight"):
                p.mul_(head_scale)
    return model.to(dtype).eval()


def text_batch(lengths=(7, 4, 6), seq_len: int | None = None, seed: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded ids with [CLS]=2 first and [SEP]=3 last, as a tokenizer would produce."""
    g = torch.Generator().manual_seed(seed)
    seq_len = seq_len or max(lengths)
    ids = torch.zeros(len(lengths), seq_len, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(5, 99, (n,), generator=g)
        ids[i, 0], ids[i, n - 1] = 2, 3
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def image_batch(batch: int = 2, dtype: torch.dtype = torch.float32, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(batch, 3, 8, 8, generator=g).to(dtype)}


def batch_for(model_type: str, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    if model_type == "vit":
        return image_batch(dtype=dtype)
    batch = text_batch()
    if model_type == "distilbert":
        batch.pop("token_type_ids")
    return batch


@pytest.fixture
def bert() -> torch.nn.Module:
    return make_model("bert")


@pytest.fixture
def bert64() -> torch.nn.Module:
    return make_model("bert", dtype=torch.float64)


# ----------------------------------------------------------------------------- a tiny local GLUE directory
WORDS = (
    'the a is fun ride . " na null nan he said yes agreed floods hit ice melts sailors rode breeze '
    "persians was written cat dog sat on mat hello world good bad movie very long sentence that goes"
).split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
LONG = " ".join(["very"] * 40) + " long sentence"

SST_TRAIN = [
    ('" the ride " is fun .', 1),
    ("NA", 0),
    ("null", 1),
    ('"unbalanced quote', 0),
    ("a good movie", 1),
    ("a bad movie", 0),
    ("the cat sat on the mat", 1),
    ("the dog sat", 0),
    ("hello world", 1),
    ("very bad", 0),
    ("very good", 1),
    ("nan", 0),
]
SST_DEV = [("the ride is fun", 1), ("hello", 0), (LONG, 1)]


def write(path: Path, text: str, encoding: str = "utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    # transformers v5: BertTokenizer(Fast) takes `vocab=` (a dict or a vocab.txt path); the old
    # `vocab_file=` keyword is swallowed by **kwargs and silently gives a 5-token vocabulary.
    from transformers import BertTokenizer

    root = tmp_path_factory.mktemp("tok")
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    BertTokenizer(vocab=str(root / "vocab.txt")).save_pretrained(str(root / "bert"))
    return str(root / "bert")


@pytest.fixture(scope="session")
def glue(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    write(root / "SST-2" / "train.tsv", "sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in SST_TRAIN))
    write(root / "SST-2" / "dev.tsv", "sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in SST_DEV))
    rte = "index\tsentence1\tsentence2\tlabel\n"
    rte += '0\t"The Persians" was written.\tnan\tentailment\n1\tNA\tnull\tnot_entailment\n'
    write(root / "RTE" / "train.tsv", rte)
    write(root / "RTE" / "dev.tsv", rte + f"2\t{LONG}\t{LONG}\tentailment\n")
    mrpc = '\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said "yes".\tHe agreed.\n0\t3\t4\tNA\tnull\n'
    write(root / "MRPC" / "train.tsv", mrpc)
    write(root / "MRPC" / "dev.tsv", mrpc)
    cola = "gj04\t1\t\tThe sailors rode the breeze.\ngj04\t0\t*\tNA rode.\n"
    write(root / "CoLA" / "train.tsv", cola)
    write(root / "CoLA" / "dev.tsv", cola)
    head = "index\tpromptID\tpairID\tgenre\ts1b\ts2b\ts1p\ts2p\tsentence1\tsentence2\tlabel1\tlabel2\tgold_label\n"

    def mnli(rows):
        return head + "".join(
            f"{i}\t1\t1e\tfiction\tx\tx\tx\tx\t{a}\t{b}\tz\tz\t{y}\n" for i, (a, b, y) in enumerate(rows)
        )

    write(root / "MNLI" / "train.tsv", mnli([("Floods hit.", "Ice melts.", "neutral"), ("a", "b", "entailment")]))
    write(
        root / "MNLI" / "dev_matched.tsv",
        mnli([("Floods hit.", "Ice melts.", "contradiction"), ('"NA"', "null", "entailment"), ("a", "b", "neutral")]),
    )
    write(root / "MNLI" / "dev_mismatched.tsv", mnli([("the cat", "the dog", "neutral")]))
    write(root / "QNLI" / "train.tsv", "index\tquestion\tsentence\tlabel\n0\ta\tb\tentailment\n")  # no dev.tsv
    return str(root)


@pytest.fixture(autouse=True)
def _bare_argv(monkeypatch):
    """In-process CLI tests pass `args=`; pytest's own argv would make LightningCLI warn that both are given."""
    import sys

    monkeypatch.setattr(sys, "argv", [sys.argv[0]])
