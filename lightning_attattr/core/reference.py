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

Models whose attention runs through ``AttentionInterface`` are supported: one call per layer
(BERT family, and causal LMs such as Llama, Mistral, Phi-3, Gemma and gpt-oss), or, for the
encoder-decoders BART and T5, one call per attention site (encoder self-attention, decoder
self- and cross-attention; see :func:`~lightning_attattr.core.adapter.attention_layers`), where
the whole model runs on the example repeated once per step. The attention function computes the
family terms itself: Gemma 2's logit softcap, gpt-oss's sink logits and T5's position bias. The target is a class
(with ``output`` ``"prob"``, ``"logprob"`` or ``"logit"``) or any function of the example's
logits, and the baseline zero or uniform attention over the keys the attention mask allows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lightning_attattr.core.adapter import attention_layers, layer_modules
from lightning_attattr.core.approximation import approximation_parameters

if TYPE_CHECKING:
    from transformers import PreTrainedModel

REFERENCE_IMPLEMENTATION = "attattr_reference"
# layer: the replaced layer; x: its replacement; current: the layer running; clean: layer -> (probs, allowed keys)
_STATE: dict[str, Any] = {"layer": None, "x": None, "current": None, "clean": None}


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
    groups = query.shape[1] // key.shape[1]  # grouped-query attention: each key/value head serves `groups` heads
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    if _STATE["current"] == _STATE["layer"]:
        probs = _STATE["x"]  # [steps, head, query_pos, key_pos]
    else:
        scores = query @ key.transpose(2, 3) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
        softcap = kwargs.get("softcap")  # Gemma 2: logits squashed into (-softcap, softcap) before the mask
        if softcap is not None:
            scores = softcap * torch.tanh(scores / softcap)
        bias = kwargs.get("position_bias")  # T5: relative position bias [1 or batch, head, query_pos, key_pos]
        if bias is not None:
            scores = scores + bias[..., : key.shape[-2]]
        allowed = torch.ones_like(scores, dtype=torch.bool)
        if attention_mask is not None:
            mask = attention_mask[..., : key.shape[-2]]
            if mask.dtype == torch.bool:
                allowed = allowed & mask
                mask = torch.zeros_like(scores).masked_fill(~mask, torch.finfo(scores.dtype).min)
            else:
                allowed = allowed & (mask > torch.finfo(mask.dtype).min / 2)
            scores = scores + mask
        sinks = kwargs.get("s_aux")  # gpt-oss: one extra logit per head that takes probability mass, then is dropped
        if sinks is None:
            probs = scores.softmax(-1)
        else:
            column = sinks.to(scores.dtype).reshape(1, -1, 1, 1).expand(scores.shape[0], -1, scores.shape[2], 1)
            probs = torch.cat([scores, column], dim=-1).softmax(-1)[..., :-1]
        if _STATE["clean"] is not None:
            _STATE["clean"][_STATE["current"]] = (probs.detach(), allowed)
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
        attributions: per example ``[layer, head, n, n]`` over its real tokens (CPU). For an
            encoder-decoder a site's map is ``[head, n_query, n_key]`` (decoder tokens on the query
            axis of decoder sites and on the key axis of decoder self-attention, encoder tokens
            elsewhere), zero-padded at the end to the largest of the sites.
        prob: ``[batch]`` ``F(A)`` (CPU, float64).
        baseline_prob: ``[batch, layer]`` ``F`` at the baseline (``A^l := 0`` or uniform; CPU, float64).
    """

    attributions: list[Tensor]
    prob: Tensor
    baseline_prob: Tensor


#: ``scalar(logits, example)``: the attributed value ``[steps]`` from the logits of one example's
#: ``steps`` rows (``[steps, classes]`` or ``[steps, pos, vocab]`` over its real tokens).
Scalar = Callable[[Tensor, int], Tensor]


def _class_scalar(target: Tensor, output: str) -> Scalar:
    def scalar(logits: Tensor, example: int) -> Tensor:
        if output == "prob":
            values = logits.softmax(-1)
        elif output == "logprob":
            values = logits.log_softmax(-1)
        else:
            values = logits
        return values[:, int(target[example])]

    return scalar


def reference_attattr(
    model: PreTrainedModel,
    inputs: Mapping[str, Tensor],
    target: Tensor | Scalar,
    *,
    method: str = "riemann_left",
    n_steps: int = 20,
    pad_to: int | None = None,
    steps_per_pass: int = 1,
    output: str = "prob",
    baseline: str = "zero",
) -> ReferenceResult:
    """AttAttr of every layer, one example, one layer and ``steps_per_pass`` steps at a time.

    Args:
        model: a classifier or language model whose layers each run their attention once, through
            ``AttentionInterface`` (BERT family, Llama, Mistral, Phi-3, Gemma); it is not modified
            (its attention implementation is switched and restored).
        inputs: ``input_ids`` / ``attention_mask`` (/ ``token_type_ids``) ``[batch, pos]``, any padding;
            encoder-decoders also ``decoder_input_ids`` (/ ``decoder_attention_mask``) ``[batch, decoder_pos]``.
        target: ``[batch]`` class per example, or a function ``scalar(logits, example)`` returning
            the attributed value ``[steps]`` from the example's logits (``[steps, classes]``, or
            ``[steps, pos, vocab]`` over its real tokens; the real decoder tokens of an encoder-decoder).
        method: integration rule (see :mod:`lightning_attattr.core.approximation`).
        n_steps: integration steps.
        pad_to: pad each example at the end to this length (the official code uses 128); default unpadded.
        steps_per_pass: integration steps per forward/backward (1 = one step at a time).
        output: for a class target: ``"prob"``, ``"logprob"`` or ``"logit"``.
        baseline: ``"zero"`` (``A := 0``) or ``"uniform"``: each query row uniform over the keys
            its attention mask allows; the path is ``B + alpha (A - B)``.

    Returns:
        A :class:`ReferenceResult`, on the CPU as
        :func:`~lightning_attattr.core.attribution.attribute` returns its maps. The model runs where its
        parameters are; ``inputs`` and ``target`` may be on any device.
    """
    if model.training:
        raise ValueError("`reference_attattr` expects the model in eval mode (call `model.eval()`), as AttAttr does.")
    layers = layer_modules(model)
    if len({id(m) for m in layers}) < len(layers):
        raise ValueError("`reference_attattr` needs one module per layer (not ALBERT's shared layer).")
    scalar = _class_scalar(target, output) if isinstance(target, Tensor) else target
    _register()
    alphas, weights = approximation_parameters(method, n_steps)
    previous = model.config._attn_implementation
    grad_flags = [p.requires_grad for p in model.parameters()]
    model.set_attn_implementation(REFERENCE_IMPLEMENTATION)
    model.requires_grad_(False)
    hooks = [
        module.register_forward_pre_hook(lambda _m, _args, index=index: _STATE.update(current=index))
        for index, module in enumerate(layers)
    ]
    device = next(model.parameters()).device
    # encoder-decoders: which sites have the decoder's tokens on their query / key axis
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    names = attention_layers(model) if seq2seq else ["layer"] * len(layers)
    maps, probs, baselines = [], [], []
    try:
        for i in range(inputs["input_ids"].shape[0]):
            real = _real(inputs, "attention_mask", "input_ids", i)
            assert real is not None
            n = len(real)
            decoder = _real(inputs, "decoder_attention_mask", "decoder_input_ids", i) if seq2seq else None
            m = n if decoder is None else len(decoder)  # real decoder tokens (the inputs' when derived from them)
            # [1, pad_to or n] on the model's device, the example's real tokens first (decoder inputs: its own)
            one = {}
            for k, v in inputs.items():
                rows = decoder if k.startswith("decoder_") and decoder is not None else real
                one[k] = torch.zeros(1, pad_to or len(rows), dtype=v.dtype, device=device)
                one[k][0, : len(rows)] = v[i].index_select(0, rows.to(v.device)).to(device)
            _STATE.update(layer=None, x=None, clean={})
            with torch.no_grad():
                logits = _logits(model, one, m)
            clean = _STATE["clean"]
            _STATE.update(clean=None)
            f_full = float(scalar(logits, i)[0])
            per_layer, f_zero = [], []
            for layer in range(len(layers)):
                a, allowed = clean[layer]  # [1, head, pos, pos]
                base = torch.zeros_like(a)
                if baseline == "uniform":
                    support = allowed.expand_as(a).to(a.dtype)
                    base = support / support.sum(-1, keepdim=True)
                total, zero = torch.zeros_like(a[0]), None
                for start in range(0, n_steps, steps_per_pass):
                    al = torch.tensor(alphas[start : start + steps_per_pass], dtype=a.dtype, device=a.device)
                    w = torch.tensor(weights[start : start + steps_per_pass], dtype=a.dtype, device=a.device)
                    x = (base + al.view(-1, 1, 1, 1) * (a - base)).requires_grad_(True)  # [steps, head, pos, pos]
                    p = scalar(_forward_replaced(model, layers[layer], layer, x, one, m, seq2seq), i)  # [steps]
                    (g,) = torch.autograd.grad((p * w).sum(), x)
                    total += g.sum(0)
                    if (al == 0).any():
                        zero = float(p[int((al == 0).nonzero()[0])].detach())
                if zero is None:
                    with torch.no_grad():
                        replaced = _forward_replaced(model, layers[layer], layer, base.clone(), one, m, seq2seq)
                        zero = float(scalar(replaced, i)[0])
                # query axis: the decoder's for decoder self- and cross-attention; key axis: for decoder self-attention
                n_query = m if names[layer].startswith("decoder.") else n
                n_key = m if names[layer].startswith("decoder.") and names[layer].endswith(".self") else n
                per_layer.append(((a - base)[0] * total)[:, :n_query, :n_key])
                f_zero.append(zero)
            size = (max(t.shape[1] for t in per_layer), max(t.shape[2] for t in per_layer))
            padded = [torch.zeros(t.shape[0], *size, dtype=t.dtype, device=t.device) for t in per_layer]
            for t, out in zip(per_layer, padded):
                out[:, : t.shape[1], : t.shape[2]] = t
            maps.append(torch.stack(padded).cpu())  # [layer, head, n, n] (encoder-decoders: zero-padded sites)
            probs.append(f_full)
            baselines.append(f_zero)
    finally:
        for hook in hooks:
            hook.remove()
        _STATE.update(layer=None, x=None, current=None, clean=None)
        model.set_attn_implementation(previous)
        for p, flag in zip(model.parameters(), grad_flags):
            p.requires_grad_(flag)
    return ReferenceResult(
        maps,
        torch.tensor(probs, dtype=torch.float64, device="cpu"),
        torch.tensor(baselines, dtype=torch.float64, device="cpu"),
    )


def _real(inputs: Mapping[str, Tensor], mask_key: str, ids_key: str, i: int) -> Tensor | None:
    """Indices of example ``i``'s real tokens per ``inputs[mask_key]`` (all of ``inputs[ids_key]`` without a mask).

    ``None`` when ``inputs`` has no ``ids_key``.
    """
    mask, ids = inputs.get(mask_key), inputs.get(ids_key)
    if ids is None:
        return None
    if mask is None:
        return torch.arange(ids.shape[1], device=ids.device)
    return mask[i].bool().nonzero().squeeze(1)


def _logits(model: nn.Module, one: dict, n: int) -> Tensor:
    """Logits of a forward on ``one``: ``[rows, classes]``, or ``[rows, n, vocab]`` over the real tokens."""
    logits = model(**one).logits
    return logits[:, :n] if logits.dim() == 3 else logits


def _forward_replaced(
    model: nn.Module, layer_module: nn.Module, layer: int, x: Tensor, one: dict, n: int, seq2seq: bool = False
) -> Tensor:
    """Logits with layer ``layer``'s probabilities replaced by ``x`` (``[steps, ...]``).

    The layer's input is broadcast to the steps; an encoder-decoder's attention sites sit inside
    its layers, so there the whole model runs on the inputs repeated once per step.
    """
    steps = x.shape[0]
    _STATE.update(layer=layer, x=x)
    if seq2seq:
        try:
            return _logits(model, {k: v.repeat(steps, *([1] * (v.dim() - 1))) for k, v in one.items()}, n)
        finally:
            _STATE.update(layer=None, x=None)
    hook = layer_module.register_forward_pre_hook(lambda _m, args: (args[0].expand(steps, -1, -1), *args[1:]))
    try:
        return _logits(model, one, n)  # [steps, ...]
    finally:
        hook.remove()
        _STATE.update(layer=None, x=None)
