"""Tiny random models and batches shared by the tests (no downloads)."""

from __future__ import annotations

import pytest
import torch
import transformers

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
