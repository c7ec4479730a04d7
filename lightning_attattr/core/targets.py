"""What ``attribute(..., target=...)`` attributes: one scalar of the model output per result row.

A classifier's target is a class (``int``, one class per example, ``"labels"``, or the predicted
class). A language model (logits ``[batch, pos, vocab]``: causal LMs, and encoder-decoder LMs whose
positions are those of ``decoder_input_ids``) takes the token objects of this module, in the
spirit of Captum's ``LLMAttribution`` targets:

- :class:`Token`: one token's output at one position (default: the predicted next token at the
  last real position; ``None`` or ``"predicted"`` means exactly that);
- :class:`Tokens`: several (token, position) pairs, one result row each;
- :class:`Continuation`: the tokens a generation appended to the inputs, one row per generated token;
- :class:`Contrast`: the output of token ``a`` minus that of token ``b`` (e.g. the logit
  difference of the indirect-object task).

An encoder-decoder language model (BART, T5) needs ``decoder_input_ids`` in the inputs (e.g.
``[[model.config.decoder_start_token_id]]`` per example to attribute the first generated token;
without them ``attribute`` raises): its positions are those of the decoder tokens, real per
``decoder_attention_mask`` when given (else all), and the default target is the predicted next
token at the last real decoder position.

Positions count the example's real tokens (padding excluded): ``0`` is its first real token,
``-1`` its last, so left and right padding give the same result as the unpadded example. The
output at position ``p`` is the model's prediction of the token that follows position ``p``.

``output`` selects the attributed scalar: ``"prob"`` (softmax probability, the default),
``"logprob"`` (log-softmax) or ``"logit"`` (the raw logit); completeness holds for the chosen one.
Any other scalar: pass a callable taking the model's output object (``ModelOutput``) of a batch of
rows and returning one value per row, ``[rows]``. It must be row-wise (row ``i``'s value may
depend only on row ``i`` of the output), because the rows are the examples repeated over the
integration steps.

Example:
    >>> Token(42, position=-1)
    Token(id=42, position=-1)
    >>> Contrast(5, 7).position is None
    True
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_attattr.core.checks import ArgumentError, ArgumentTypeError, _is_int, check_choice

Output = Literal["prob", "logprob", "logit"]
#: The attributed scalars ``output`` can select.
OUTPUTS: tuple[Output, ...] = ("prob", "logprob", "logit")
_TARGET_STRINGS = ("predicted", "labels")
# class names of the models whose logits are [batch, pos, vocab] (checked with the auto mappings of transformers)
_LM_KINDS = ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES")

TargetFn = Callable[[Any], Tensor]


@dataclass(frozen=True)
class Token:
    """The output of token ``id`` at one position of a language model.

    Args:
        id: the token id, in ``[0, vocab)``.
        position: real-token position whose output (the prediction of the next token) is
            attributed; negative counts from the last real token; default ``None``: the last.
    """

    id: int
    position: int | None = None


@dataclass(frozen=True)
class Tokens:
    """Several ``(token, position)`` pairs of a language model, the same for every example: one result row each.

    Args:
        ids: token ids.
        positions: one real-token position per id (negative counts from the last real token).
    """

    ids: Sequence[int]
    positions: Sequence[int]


@dataclass(frozen=True)
class Continuation:
    """The last ``len(ids)`` real tokens of every example, each at the position that predicts it.

    For a generated continuation: pass the prompt with the generated tokens appended (e.g. the
    output of ``model.generate``) as the inputs and the generated tokens as ``ids``; the result
    has one row per (example, generated token), the token ``ids[j]`` attributed at the output
    of the real position ``n - len(ids) - 1 + j`` (``n`` real tokens).

    Args:
        ids: the continuation's token ids; every example must end with them.
    """

    ids: Sequence[int]


@dataclass(frozen=True)
class Contrast:
    """Output of token ``a`` minus output of token ``b`` at one position (``a != b``).

    With ``output="logit"`` (or ``"logprob"``, which gives the same difference) this is the
    logit difference used to study the indirect-object task.

    Args:
        a: the token whose output counts positively.
        b: the token whose output is subtracted.
        position: as in :class:`Token`.
    """

    a: int
    b: int
    position: int | None = None


def is_language_model(model: nn.Module) -> bool:
    """Whether ``model``'s logits are per position and token, ``[batch, pos, vocab]`` (a causal or seq2seq LM).

    Example:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> is_language_model(BertForSequenceClassification(BertConfig(hidden_size=16, num_hidden_layers=1,
        ...     num_attention_heads=2, intermediate_size=16, vocab_size=20)))
        False
    """
    from transformers.models.auto import modeling_auto

    name = type(model).__name__
    return any(name in getattr(modeling_auto, kind, {}).values() for kind in _LM_KINDS)


def vocabulary_size(model: nn.Module) -> int:
    """Size of a language model's output vocabulary (its output embedding, else ``config.vocab_size``)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    weight = getattr(head, "weight", None)
    if isinstance(weight, Tensor):
        return int(weight.shape[0])
    config: Any = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.vocab_size)


def check_output(output: object) -> Output:
    """``output`` if it is one of :data:`OUTPUTS`, else a one-line error."""
    return check_choice("output", output, OUTPUTS)


def output_logits(outputs: Any) -> Tensor:
    """``outputs.logits`` of a model output, else its first element."""
    return outputs.logits if hasattr(outputs, "logits") else outputs[0]


@dataclass
class CallTarget:
    """The checked target of one ``attribute`` call, one entry per result row.

    A row is one example (classifiers, single-token targets) or one (example, position) pair
    (:class:`Tokens`, :class:`Continuation`); ``example`` maps rows to the input examples.
    """

    output: Output
    bounded: bool  # the scalar lies in [-1, 1] (probabilities and their differences)
    example: Tensor | None  # [rows] input example per row; None: one row per example
    ids: Tensor | None  # [rows] class or token id; None: predicted (resolved in the clean pass)
    other: Tensor | None = None  # [rows] the subtracted token of a Contrast
    position: Tensor | None = None  # [rows] real-token position of the attributed output (language models)
    fn: TargetFn | None = None
    keep_logits: bool = False  # the model takes `logits_to_keep`: compute only the attributed positions

    def group(self, index: Sequence[int], absolute: Tensor | None, device: torch.device) -> GroupTarget:
        """The target of the rows ``index`` of one length group; ``absolute``: their positions in its inputs."""
        rows = torch.tensor(list(index), dtype=torch.long, device="cpu")
        keep = None
        pos = None
        if absolute is not None:
            pos = absolute.to(device)
            if self.keep_logits:
                keep = torch.unique(pos)  # sorted
                pos = torch.searchsorted(keep, pos)
        return GroupTarget(
            output=self.output,
            ids=None if self.ids is None else self.ids[rows].to(device),
            other=None if self.other is None else self.other[rows].to(device),
            position=pos,
            keep=keep,
            fn=self.fn,
        )


@dataclass
class GroupTarget:
    """The target of one group of rows: :meth:`scalar` gives the attributed value of every model-output row."""

    output: Output
    ids: Tensor | None  # [n] class / token ids on the model's device; None until resolved (predicted)
    other: Tensor | None = None  # [n] subtracted token
    position: Tensor | None = None  # [n] index of the attributed position in the output's position axis
    keep: Tensor | None = None  # positions the model computes logits for (`logits_to_keep`), or None
    fn: TargetFn | None = None
    model_kwargs: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.model_kwargs = {} if self.keep is None else {"logits_to_keep": self.keep}

    def resolve(self, outputs: Any) -> None:
        """Fill predicted ids (the argmax at the attributed position) from the clean pass's ``outputs``."""
        if self.ids is not None or self.fn is not None:
            return
        logits = output_logits(outputs)
        self.ids = self._logits(outputs, torch.arange(logits.shape[0], device=logits.device)).argmax(-1)

    def labels(self, n: int) -> Tensor:
        """``[n]`` the class or token id of each of the ``n`` rows (-1 for a callable target)."""
        if self.ids is None:
            return torch.full((n,), -1, dtype=torch.long, device="cpu")
        return self.ids

    def _logits(self, outputs: Any, rows: Tensor) -> Tensor:
        """``[m, classes]`` logits of the output rows, at their attributed position for a language model."""
        logits = output_logits(outputs)
        if self.position is not None:
            index = self.position[rows.to(self.position.device)]
            logits = logits[torch.arange(len(rows), device=logits.device), index.to(logits.device)]
        return logits

    def scalar(self, outputs: Any, rows: Tensor) -> Tensor:
        """The attributed value of each model-output row: ``[m]``.

        Args:
            outputs: the model's output for ``m`` rows.
            rows: ``[m]`` index of each output row's example in this group (e.g. the examples
                repeated over the integration steps).

        Raises:
            ArgumentError: a callable target did not return one value per row.
        """
        if self.fn is not None:
            value = self.fn(outputs)
            if not isinstance(value, Tensor) or tuple(value.shape) != (len(rows),):
                shape = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ArgumentError(
                    f"Expected the callable `target` to return one value per row, a tensor of shape "
                    f"[{len(rows)}], but got {shape}."
                )
            return value
        assert self.ids is not None
        rows = rows.to(self.ids.device)
        logits = self._logits(outputs, rows)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if self.output == "prob":
            values = torch.softmax(logits, dim=-1)
        elif self.output == "logprob":
            values = torch.log_softmax(logits, dim=-1)
        else:
            values = logits
        picked = values.gather(1, self.ids[rows][:, None]).squeeze(1)
        if self.other is not None:
            picked = picked - values.gather(1, self.other[rows][:, None]).squeeze(1)
        return picked

    def rows(self, index: Tensor) -> GroupTarget:
        """The target of the rows ``index`` (``[k]`` indices into this group)."""

        def take(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.index_select(0, index.to(t.device))

        return GroupTarget(self.output, take(self.ids), take(self.other), take(self.position), self.keep, self.fn)


def _ids(name: str, value: object, vocab: int) -> list[int]:
    """``value`` as a list of token ids in ``[0, vocab)``."""
    if isinstance(value, Tensor) and value.dim() == 0:
        value = value.item()
    values = [value] if _is_int(value) else value
    if not isinstance(values, (Sequence, Tensor)) or isinstance(values, str) or not len(values):
        raise ArgumentTypeError(
            f"Expected `{name}` to be a token id or a non-empty sequence of them, but got {value!r}."
        )
    out = []
    for v in values.tolist() if isinstance(values, Tensor) else values:
        if not _is_int(v):
            raise ArgumentTypeError(f"Expected `{name}` to hold integer token ids, but got {v!r}.")
        if not 0 <= int(v) < vocab:
            raise ArgumentError(f"Expected `{name}` in [0, {vocab - 1}] (the model's vocabulary), but got {int(v)}.")
        out.append(int(v))
    return out


def _position(name: str, value: object, length: int, example: int) -> int:
    """A real-token position (negative from the end) as an index in ``[0, length)``."""
    if value is None:
        return length - 1
    if not _is_int(value):
        raise ArgumentTypeError(f"Expected `{name}` to be an integer position or None, but got {value!r}.")
    pos = int(value) + (length if int(value) < 0 else 0)
    if not 0 <= pos < length:
        raise ArgumentError(
            f"Expected `{name}` in [{-length}, {length - 1}] (example {example} has {length} real tokens), "
            f"but got {int(value)}."
        )
    return pos


def class_target(target: object, size: int, labels: Tensor | None, n_classes: int) -> Tensor | None:
    """A classifier's ``target`` as ``[size]`` class indices on the CPU, or ``None`` for the prediction."""
    if target is None or target == "predicted":
        return None
    if isinstance(target, str):
        if target != "labels":
            raise ArgumentError(
                f"Expected `target` to be one of {list(_TARGET_STRINGS)}, an int, a sequence of "
                f"ints or None, but got {target!r}."
            )
        if labels is None:
            raise ArgumentError("`target='labels'` needs a `labels` entry in `inputs`, but there is none.")
        values = labels
    elif isinstance(target, bool):
        raise ArgumentTypeError(
            f"Expected `target` to be an int, a sequence of ints, a string or None, but got {target!r}."
        )
    elif isinstance(target, int):
        values = torch.full((size,), target, device="cpu")
    else:
        try:
            values = torch.as_tensor(target, device="cpu")
        except (TypeError, ValueError, RuntimeError) as err:
            raise ArgumentTypeError(
                f"Expected `target` to be an int, a sequence of ints, a string or None, but got {target!r}."
            ) from err
    if values.dtype.is_floating_point or values.dtype == torch.bool or values.dtype.is_complex:
        raise ArgumentTypeError(f"Expected integer class indices in `target`, but got dtype {values.dtype}.")
    if values.shape != (size,):
        raise ArgumentError(
            f"Expected `target` to have one class per example, shape [{size}], but got {list(values.shape)}."
        )
    bad = values[(values < 0) | (values >= n_classes)]
    if bad.numel():
        raise ArgumentError(f"Expected `target` classes in [0, {n_classes - 1}], but got {bad.tolist()}.")
    return values.long().cpu()


def bind_target(
    target: object,
    output: object,
    *,
    model: nn.Module,
    n_classes: int | None,
    lengths: Sequence[int],
    labels: Tensor | None,
    tokens: Sequence[Tensor] | None = None,
) -> CallTarget:
    """Check ``target`` and ``output`` for a batch (before any forward pass) and expand them to result rows.

    Args:
        target: the user's target (see :func:`~lightning_attattr.core.attribution.attribute`).
        output: ``"prob"``, ``"logprob"`` or ``"logit"``.
        model: the attributed model.
        n_classes: a classifier's class count; ``None`` for a language model.
        lengths: real tokens per example (of ``decoder_input_ids`` for an encoder-decoder LM).
        labels: ``inputs["labels"]`` or ``None``.
        tokens: per example its real token ids (language models; for :class:`Continuation`).

    Raises:
        ArgumentError, ArgumentTypeError: an invalid target or output (one line).
    """
    checked = check_output(output)
    size = len(lengths)
    if callable(target) and not isinstance(target, (Token, Tokens, Continuation, Contrast, type)):
        return CallTarget(checked, False, None, None, fn=target)
    if n_classes is not None:
        if isinstance(target, (Token, Tokens, Continuation, Contrast)):
            raise ArgumentError(
                f"Expected a class target (an int, a sequence of ints, 'labels', 'predicted' or None) for a "
                f"classifier, but got {type(target).__name__}: token targets need a language model."
            )
        return CallTarget(checked, checked == "prob", None, class_target(target, size, labels, n_classes))
    vocab = vocabulary_size(model)
    keep = "logits_to_keep" in inspect.signature(model.forward).parameters
    per_example: list[list[tuple[int | None, int | None, int]]] = []  # (id, other, position) rows per example
    if target is None or target == "predicted":
        per_example = [[(None, None, n - 1)] for n in lengths]
    elif isinstance(target, str):
        raise ArgumentError(
            f"Expected `target` of a language model to be 'predicted', None, a Token, Tokens, Continuation, "
            f"Contrast, a token id or a callable, but got {target!r}."
        )
    elif isinstance(target, Token):
        (tok,) = _ids("target.id", target.id, vocab)
        per_example = [
            [(tok, None, _position("target.position", target.position, n, i))] for i, n in enumerate(lengths)
        ]
    elif isinstance(target, Contrast):
        a, b = _ids("target.a", target.a, vocab) + _ids("target.b", target.b, vocab)
        if a == b:
            raise ArgumentError(f"Expected `target.a` and `target.b` to be different tokens, but both are {a}.")
        per_example = [[(a, b, _position("target.position", target.position, n, i))] for i, n in enumerate(lengths)]
    elif isinstance(target, Tokens):
        ids = _ids("target.ids", target.ids, vocab)
        positions = list(target.positions) if isinstance(target.positions, Sequence) else None
        if positions is None or len(positions) != len(ids):
            raise ArgumentError(
                f"Expected `target.positions` to hold one position per id ({len(ids)}), but got {target.positions!r}."
            )
        per_example = [
            [(t, None, _position("target.positions", p, n, i)) for t, p in zip(ids, positions)]
            for i, n in enumerate(lengths)
        ]
    elif isinstance(target, Continuation):
        ids = _ids("target.ids", target.ids, vocab)
        k = len(ids)
        assert tokens is not None
        for i, (n, real) in enumerate(zip(lengths, tokens)):
            if k >= n or real[n - k :].tolist() != ids:
                raise ArgumentError(
                    f"Expected every example to end with the continuation `target.ids` after at least one "
                    f"other token, but example {i} ends with {real[max(0, n - k) :].tolist()}."
                )
        per_example = [[(t, None, n - k - 1 + j) for j, t in enumerate(ids)] for n in lengths]
    elif _is_int(target) or isinstance(target, (Sequence, Tensor)):
        ids = _ids("target", target, vocab)
        if len(ids) == 1 and _is_int(target):
            ids = ids * size
        if len(ids) != size:
            raise ArgumentError(
                f"Expected `target` to have one token id per example ({size}) or a single id, but got {len(ids)}."
            )
        per_example = [[(t, None, n - 1)] for t, n in zip(ids, lengths)]
    else:
        raise ArgumentTypeError(
            f"Expected `target` of a language model to be 'predicted', None, a Token, Tokens, Continuation, "
            f"Contrast, a token id or a callable, but got {type(target).__name__}."
        )
    flat = [(i, *row) for i, rows in enumerate(per_example) for row in rows]
    example = torch.tensor([r[0] for r in flat], dtype=torch.long, device="cpu")
    predicted = flat[0][1] is None
    return CallTarget(
        checked,
        checked == "prob",
        None if len(flat) == size else example,
        None if predicted else torch.tensor([r[1] for r in flat], dtype=torch.long, device="cpu"),
        other=None if flat[0][2] is None else torch.tensor([r[2] for r in flat], dtype=torch.long, device="cpu"),
        position=torch.tensor([r[3] for r in flat], dtype=torch.long, device="cpu"),
        keep_logits=keep,
    )
