"""Per-architecture knowledge for the attention adapter: where attention runs, and which keywords it gets.

Three layouts are supported:

- **Encoder-only** models (BERT family, DistilBERT, ALBERT, ViT, ModernBERT) and **decoder-only**
  language models (GPT-2, Llama, Qwen2/3, Mistral, Phi-3, Gemma 1/2/3, gpt-oss): one attention
  call per transformer layer; the sites are the layer modules, named ``"layer.<i>"``. The layers
  below a target layer can be skipped by replaying their cached output.
- **Encoder-decoders** (BART, T5): attention runs in the encoder (self-attention), and in every
  decoder layer twice (causal self-attention, then cross-attention over the encoder output). The
  sites are the attention modules themselves, in call order, named ``"encoder.<i>"``,
  ``"decoder.<i>.self"`` and ``"decoder.<i>.cross"``. Replaying a cached lower layer is not
  possible there (a decoder layer depends on the whole encoder output, a site is only part of a
  layer), so the full model is recomputed for every pass.

Every keyword argument a model passes to the attention function is either implemented
(:data:`IMPLEMENTED_KEYWORDS`), known to be harmless for the computation
(:data:`HARMLESS_KEYWORDS`, each with the reason), ignored by the family's own eager attention
(it receives the keyword only in ``**kwargs``: model-level inputs such as ``token_type_ids`` given
to a Llama), or refused: an attention variant we do not compute exactly must fail loudly rather
than give silently wrong attributions.
"""

from __future__ import annotations

import functools
import inspect
import sys
from typing import TYPE_CHECKING, Any, NamedTuple

from torch import Tensor, nn

from lightning_attattr.core.checks import ArgumentTypeError, UnsupportedModelError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

#: Model types whose attention we have verified to run through ``AttentionInterface``.
SUPPORTED_MODEL_TYPES: tuple[str, ...] = (
    "bert",
    "roberta",
    "electra",
    "xlm-roberta",
    "camembert",
    "distilbert",
    "albert",
    "vit",
    "modernbert",
    "gpt2",
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "phi3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "gpt_oss",
    "bart",
    "t5",
)
#: Model types known not to route attention through the interface.
REFUSED_MODEL_TYPES: frozenset[str] = frozenset({"deberta", "deberta-v2", "sew-d"})

#: Attention keywords the ``"attattr"`` function computes, as transformers' eager attention of the
#: family that passes them does.
IMPLEMENTED_KEYWORDS: dict[str, str] = {
    "softcap": "Gemma2: scores = tanh(scores / softcap) * softcap, before the mask",
    "s_aux": "gpt-oss: one sink logit per head joins the softmax and is dropped after it",
    "position_bias": "T5: the relative position bias, added to the scores",
}

#: Attention keywords that do not change the attention computation, with the reason.
HARMLESS_KEYWORDS: dict[str, str] = {
    "position_ids": "rotary embeddings are applied to query and key before the attention function",
    "use_cache": "the key/value cache is read and updated before the attention function",
    "output_attentions": "the returned probabilities are collected by hooks outside the function",
    "output_hidden_states": "hidden states are collected outside the attention function",
    "output_router_logits": "mixture-of-experts router outputs, unrelated to attention",
    "deterministic": "a flash-attention kernel option; the eager computation is deterministic",
    "sliding_window": "the mask (built by the registered eager mask function) carries the window",
    "is_causal": "the mask (built by the registered eager mask function) carries causality",
}

# Encoder-decoder families: (encoder layer list, decoder layer list, encoder self-attention,
# decoder self-attention, decoder cross-attention), paths relative to the base model / a layer.
_ENCODER_DECODER_LAYOUTS: dict[str, tuple[str, str, str, str, str]] = {
    "bart": ("encoder.layers", "decoder.layers", "self_attn", "self_attn", "encoder_attn"),
    "t5": (
        "encoder.block",
        "decoder.block",
        "layer.0.SelfAttention",
        "layer.0.SelfAttention",
        "layer.1.EncDecAttention",
    ),
}
# Paths of the transformer layer list of single-stack models, relative to the base model.
_LAYER_LIST_PATHS = ("encoder.layer", "transformer.layer", "encoder.layers", "layers", "h")


class AttentionSites(NamedTuple):
    """The modules whose calls are the attributable attention layers of a model, in call order.

    Attributes:
        modules: one module per attention site (ALBERT repeats its shared layer module).
        names: one readable name per site (``"layer.0"``, ``"decoder.1.cross"``, ...).
        can_skip_below: whether the sites below a target can be replaced by their cached output
            (``False`` for encoder-decoders).
    """

    modules: list[nn.Module]
    names: list[str]
    can_skip_below: bool


def unsupported(model: nn.Module, why: str) -> UnsupportedModelError:
    """The one-line error that refuses ``model`` for the reason ``why``."""
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    return UnsupportedModelError(
        f"Model type {model_type!r} is not supported: {why}. Supported model types: "
        f"{', '.join(SUPPORTED_MODEL_TYPES)} (and other models that route attention through "
        "transformers' AttentionInterface)."
    )


def _resolve(root: Any, path: str) -> Any:
    found = root
    for name in path.split("."):
        if found is None:
            return None
        found = found[int(name)] if name.isdigit() and isinstance(found, nn.ModuleList) else getattr(found, name, None)
    return found


def _encoder_decoder_sites(model: PreTrainedModel, layout: tuple[str, str, str, str, str]) -> AttentionSites:
    config = model.config
    encoder_heads = getattr(config, "encoder_attention_heads", config.num_attention_heads)
    decoder_heads = getattr(config, "decoder_attention_heads", config.num_attention_heads)
    if encoder_heads != decoder_heads:
        raise unsupported(
            model,
            f"its encoder has {encoder_heads} attention heads and its decoder {decoder_heads}, but a "
            "[layer, head] head mask and attribution need one head count for every attention layer",
        )
    encoder_path, decoder_path, encoder_self, decoder_self, decoder_cross = layout
    base: Any = model.base_model
    modules: list[nn.Module] = []
    names: list[str] = []
    encoder, decoder = _resolve(base, encoder_path), _resolve(base, decoder_path)
    for i, layer in enumerate(encoder if isinstance(encoder, nn.ModuleList) else []):
        modules.append(_resolve(layer, encoder_self))
        names.append(f"encoder.{i}")
    for i, layer in enumerate(decoder if isinstance(decoder, nn.ModuleList) else []):
        modules += [_resolve(layer, decoder_self), _resolve(layer, decoder_cross)]
        names += [f"decoder.{i}.self", f"decoder.{i}.cross"]
    if not modules or not all(isinstance(m, nn.Module) for m in modules):
        raise unsupported(model, "its attention modules were not found where this architecture keeps them")
    return AttentionSites(modules, names, can_skip_below=False)


def attention_sites(model: nn.Module) -> AttentionSites:
    """Find the attention sites of ``model`` (see :class:`AttentionSites`).

    Args:
        model: a Hugging Face ``PreTrainedModel`` of a supported architecture.

    Returns:
        The sites in call order.

    Raises:
        ArgumentTypeError: ``model`` is not a Hugging Face ``PreTrainedModel``.
        UnsupportedModelError: the architecture does not route attention through
            ``AttentionInterface``, no layer list was found, or (encoder-decoders) the encoder and
            decoder head counts differ.
    """
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise ArgumentTypeError(
            f"Expected `model` to be a Hugging Face `PreTrainedModel`, but got {type(model).__name__}."
        )
    config = model.config
    if config.model_type in REFUSED_MODEL_TYPES:
        raise unsupported(model, "its attention does not run through transformers' AttentionInterface")
    layout = _ENCODER_DECODER_LAYOUTS.get(config.model_type)
    if layout is not None:
        return _encoder_decoder_sites(model, layout)
    if getattr(config, "is_encoder_decoder", False):
        raise unsupported(model, "its encoder-decoder layout is not known to the attention adapter")
    base: Any = model.base_model  # architecture-specific submodules: torch types them Tensor | Module
    if config.model_type == "albert":
        groups = base.encoder.albert_layer_groups
        n_layers, n_groups = config.num_hidden_layers, config.num_hidden_groups
        modules = [layer for i in range(n_layers) for layer in groups[int(i / (n_layers / n_groups))].albert_layers]
        return AttentionSites(modules, [f"layer.{i}" for i in range(len(modules))], can_skip_below=True)
    for path in _LAYER_LIST_PATHS:
        found = _resolve(base, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return AttentionSites(list(found), [f"layer.{i}" for i in range(len(found))], can_skip_below=True)
    raise unsupported(model, "no transformer layer list was found")


def attention_layers(model: nn.Module) -> list[str]:
    """Names of the attention layers of ``model`` in call order: what ``layers=`` indices refer to.

    ``"layer.<i>"`` for encoder-only and decoder-only models; for encoder-decoders
    ``"encoder.<i>"`` (self-attention), then per decoder layer ``"decoder.<i>.self"`` (causal
    self-attention) and ``"decoder.<i>.cross"`` (attention over the encoder output).

    Args:
        model: a Hugging Face ``PreTrainedModel`` of a supported architecture.

    Returns:
        One name per attention layer; index ``i`` of this list is layer ``i`` everywhere else
        (head masks, captured probabilities, ``attribute(layers=...)``).

    Raises:
        ArgumentTypeError, UnsupportedModelError: see :func:`attention_sites`.

    Example:
        >>> from transformers import BartConfig, BartForConditionalGeneration
        >>> cfg = BartConfig(vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=2,
        ...                  encoder_attention_heads=2, decoder_attention_heads=2,
        ...                  encoder_ffn_dim=32, decoder_ffn_dim=32)
        >>> attention_layers(BartForConditionalGeneration(cfg))
        ['encoder.0', 'decoder.0.self', 'decoder.0.cross', 'decoder.1.self', 'decoder.1.cross']
    """
    return attention_sites(model).names


def kv_head_count(config: Any) -> int:
    """Key/value heads per attention layer (``num_key_value_heads``; the query head count without GQA)."""
    n_kv = getattr(config, "num_key_value_heads", None)
    return int(n_kv) if isinstance(n_kv, int) and n_kv > 0 else int(config.num_attention_heads)


class AttentionExtras(NamedTuple):
    """The implemented family-specific keyword values of one attention call (``None`` when absent)."""

    softcap: float | None = None
    sinks: Tensor | None = None  # [head]
    bias: Tensor | None = None  # [batch or 1, head, query_pos, key_pos]


_NO_EXTRAS = AttentionExtras()


def attention_extras(
    module: nn.Module, kwargs: dict[str, Any], attention_mask: Tensor | None, key_len: int
) -> AttentionExtras:
    """Check the keywords of an attention call and return the implemented ones.

    Args:
        module: the calling attention module (its config names the model type in errors).
        kwargs: the keywords beyond ``scaling`` and ``dropout``.
        attention_mask: the mask of the call (``sliding_window`` and ``is_causal`` are harmless only
            when the mask carries them).
        key_len: number of key positions.

    Returns:
        The softcap, sink logits and position bias of the call.

    Raises:
        UnsupportedModelError: a keyword that is neither implemented nor known to be harmless, or a
            window or causality the mask does not carry.
    """
    if not kwargs:
        return _NO_EXTRAS
    for name, value in kwargs.items():
        if name in IMPLEMENTED_KEYWORDS or value is None:
            continue
        if name not in HARMLESS_KEYWORDS and not _ignored_by_eager(module, name):
            allowed = sorted({*IMPLEMENTED_KEYWORDS, *HARMLESS_KEYWORDS})
            raise UnsupportedModelError(
                f"Expected the attention keywords of model type {_model_type(module)!r} to be among {allowed}, "
                f"but got `{name}`, which the 'attattr' attention does not implement."
            )
        if attention_mask is None and (
            (name == "sliding_window" and key_len > int(value)) or (name == "is_causal" and bool(value) and key_len > 1)
        ):
            raise UnsupportedModelError(
                f"Expected an attention mask that carries `{name}` for model type {_model_type(module)!r}, "
                f"but got no mask ({name}={value!r}, {key_len} key positions)."
            )
    softcap, sinks, bias = kwargs.get("softcap"), kwargs.get("s_aux"), kwargs.get("position_bias")
    if softcap is None and sinks is None and bias is None:
        return _NO_EXTRAS
    return AttentionExtras(None if softcap is None else float(softcap), sinks, bias)


@functools.cache
def _eager_parameters(module_name: str) -> frozenset[str] | None:
    """The named parameters of the eager attention function of the modeling module ``module_name``, if it has one."""
    eager = getattr(sys.modules.get(module_name), "eager_attention_forward", None)
    if not callable(eager):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(name for name, p in inspect.signature(eager).parameters.items() if p.kind in kinds)


def _ignored_by_eager(module: nn.Module, name: str) -> bool:
    """Whether the family's own eager attention receives ``name`` only in its ``**kwargs`` (and so ignores it).

    Model-level keywords (``token_type_ids`` given to a Llama, for example) travel down to every
    attention call; the family's eager attention, which our function reproduces, drops them. A
    keyword that function names is part of its computation: it is implemented here or refused.
    Unknown families (no ``eager_attention_forward`` beside the module's class) accept only the
    listed keywords.
    """
    names = _eager_parameters(type(module).__module__)
    return names is not None and name not in names


def _model_type(module: nn.Module) -> str:
    return str(getattr(getattr(module, "config", None), "model_type", None) or type(module).__name__)
