"""A slow, obviously correct AttAttr reference: the official algorithm, one example at a time.

This is the yardstick for :mod:`lightning_attattr.core.attribution` (tests) and the baseline of
``benchmarks/attribution_speed.py``; use :func:`~lightning_attattr.core.attribution.attribute` for
real work. It shares no code with the fast path: it registers its own attention function, which
computes plain eager attention except in the target layer, whose probabilities it replaces by the
integration tensor. For each example, each layer and each pass of ``steps_per_pass`` integration
steps, it runs the whole model on the (optionally padded) example, the layers below the target at
batch 1 and the target layer's input broadcast to the steps, exactly as the official code does
(Hao et al., AAAI 2021; GitHub YRdddream/attattr, ``model_attr.py``). With ``pad_to=128``,
``method="riemann_left"``, ``n_steps=20`` and ``steps_per_pass=20`` it mirrors the official
head-importance computation.

Only models whose attention modules carry ``layer_idx`` (BERT, RoBERTa, ELECTRA, XLM-RoBERTa) are
supported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lightning_attattr.core.adapter import layer_modules
from lightning_attattr.core.approximation import approximation_parameters

if TYPE_CHECKING:
    from transformers import PreTrainedModel

REFERENCE_IMPLEMENTATION = "attattr_reference"
_STATE: dict[str, Any] = {"layer": None, "x": None}


def _reference_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    if getattr(module, "layer_idx", None) == _STATE["layer"]:
        probs = _STATE["x"]  # [steps, head, query_pos, key_pos]
    else:
        scores = query @ key.transpose(2, 3) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = scores.softmax(-1)
    return (probs @ value).transpose(1, 2).contiguous(), probs


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(REFERENCE_IMPLEMENTATION, _reference_attention)
    AttentionMaskInterface.register(REFERENCE_IMPLEMENTATION, eager_mask)


@dataclass
class ReferenceResult:
    """Reference AttAttr output.

    Attributes:
        attributions: per example ``[layer, head, n, n]`` over its real tokens (CPU).
        prob: ``[batch]`` ``F(A)`` (CPU, float64).
        baseline_prob: ``[batch, layer]`` ``F(A^l := 0)`` (CPU, float64).
    """

    attributions: list[Tensor]
    prob: Tensor
    baseline_prob: Tensor


def reference_attattr(
    model: PreTrainedModel,
    inputs: Mapping[str, Tensor],
    target: Tensor,
    *,
    method: str = "riemann_left",
    n_steps: int = 20,
    pad_to: int | None = None,
    steps_per_pass: int = 1,
) -> ReferenceResult:
    """AttAttr of every layer, one example, one layer and ``steps_per_pass`` steps at a time.

    Args:
        model: a BERT-family classifier (attention modules with ``layer_idx``); it is not modified
            (a scope switches its attention implementation and restores it).
        inputs: right-padded ``input_ids`` / ``attention_mask`` (/ ``token_type_ids``) ``[batch, pos]``.
        target: ``[batch]`` class per example.
        method: integration rule (see :mod:`lightning_attattr.core.approximation`).
        n_steps: integration steps.
        pad_to: pad each example to this length (the official code uses 128); default unpadded.
        steps_per_pass: integration steps per forward/backward (1 = one step at a time).

    Returns:
        A :class:`ReferenceResult`, on the CPU as
        :func:`~lightning_attattr.core.attribution.attribute` returns its maps. The model runs where its
        parameters are; ``inputs`` and ``target`` may be on any device.
    """
    if model.training:
        raise ValueError("`reference_attattr` expects the model in eval mode (call `model.eval()`), as AttAttr does.")
    if any(getattr(m, "layer_idx", None) is None for m in _attention_modules(model)):
        raise ValueError("`reference_attattr` needs attention modules with `layer_idx` (BERT, RoBERTa, ELECTRA).")
    _register()
    alphas, weights = approximation_parameters(method, n_steps)
    layers = layer_modules(model)
    previous = model.config._attn_implementation
    grad_flags = [p.requires_grad for p in model.parameters()]
    model.set_attn_implementation(REFERENCE_IMPLEMENTATION)
    model.requires_grad_(False)
    device = next(model.parameters()).device
    maps, probs, baselines = [], [], []
    try:
        for i in range(inputs["input_ids"].shape[0]):
            n = int(inputs["attention_mask"][i].sum())
            # [1, pad_to or n] on the model's device, the example's real tokens first
            one = {k: torch.zeros(1, pad_to or n, dtype=v.dtype, device=device) for k, v in inputs.items()}
            for k, v in inputs.items():
                one[k][0, :n] = v[i, :n].to(device)
            c = int(target[i])
            _STATE.update(layer=None, x=None)
            with torch.no_grad():
                out = model(**one, output_attentions=True)
            f_full = float(out.logits.softmax(-1)[0, c])
            per_layer, f_zero = [], []
            for layer, a in enumerate(out.attentions):  # a: [1, head, pos, pos]
                total, zero = torch.zeros_like(a[0]), None
                for start in range(0, n_steps, steps_per_pass):
                    al = torch.tensor(alphas[start : start + steps_per_pass], dtype=a.dtype, device=a.device)
                    w = torch.tensor(weights[start : start + steps_per_pass], dtype=a.dtype, device=a.device)
                    x = (al.view(-1, 1, 1, 1) * a).requires_grad_(True)  # [steps, head, pos, pos]
                    p = _forward_replaced(model, layers[layer], layer, x, one)[:, c]  # [steps]
                    (g,) = torch.autograd.grad((p * w).sum(), x)
                    total += g.sum(0)
                    if (al == 0).any():
                        zero = float(p[int((al == 0).nonzero()[0])].detach())
                if zero is None:
                    with torch.no_grad():
                        zero = float(_forward_replaced(model, layers[layer], layer, torch.zeros_like(a), one)[0, c])
                per_layer.append((a[0] * total)[:, :n, :n])
                f_zero.append(zero)
            maps.append(torch.stack(per_layer).cpu())  # [layer, head, n, n]
            probs.append(f_full)
            baselines.append(f_zero)
    finally:
        _STATE.update(layer=None, x=None)
        model.set_attn_implementation(previous)
        for p, flag in zip(model.parameters(), grad_flags):
            p.requires_grad_(flag)
    return ReferenceResult(
        maps,
        torch.tensor(probs, dtype=torch.float64, device="cpu"),
        torch.tensor(baselines, dtype=torch.float64, device="cpu"),
    )


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m).__name__.endswith("SelfAttention")]


def _forward_replaced(model: nn.Module, layer_module: nn.Module, layer: int, x: Tensor, one: dict) -> Tensor:
    """Softmax output with layer ``layer``'s probabilities replaced by ``x``; the layer's input is broadcast."""
    steps = x.shape[0]
    _STATE.update(layer=layer, x=x)
    hook = layer_module.register_forward_pre_hook(lambda _m, args: (args[0].expand(steps, -1, -1), *args[1:]))
    try:
        return model(**one).logits.softmax(-1)  # [steps, classes]
    finally:
        hook.remove()
        _STATE.update(layer=None, x=None)
