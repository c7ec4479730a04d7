"""Argument checks and the user-error types: the one home for validating what a user passes in.

Every check here raises a :class:`UserError` subclass that is also the built-in exception a
Python caller expects (``ValueError``, ``TypeError``, ``FileNotFoundError``), so ``except
ValueError`` keeps working, while the entry points (``train.py``, ``python -m
lightning_attattr.export``) can tell a user's mistake from a bug: a :class:`UserError` is printed as
one line naming the argument, file or value, what is allowed and what was given, and the process
exits with status 2; any other exception is a bug and keeps its traceback (set
``ATTATTR_TRACEBACK=1`` to see tracebacks for user errors too).

Messages follow torchmetrics: "Expected `n_steps` to be a positive integer, but got 0."

This module imports nothing beyond the standard library, so every layer (``core``, ``data``,
``lightning``, ``callbacks``) can use it.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeGuard, TypeVar, cast, overload

_Choice = TypeVar("_Choice", bound=str)


class UserError(Exception):
    """Base of the errors caused by what the user passed (an argument, a file, a model, a checkpoint)."""


class ArgumentError(UserError, ValueError):
    """An argument has a value outside the allowed set."""


class ArgumentTypeError(UserError, TypeError, ValueError):
    """An argument has the wrong type; catchable as ``TypeError`` or ``ValueError`` (like numpy's ``AxisError``)."""


class DataFileError(UserError, ValueError):
    """A data file exists but cannot be read as the expected format (the message names file and line)."""


class PathNotFoundError(UserError, FileNotFoundError):
    """A file or directory the user named does not exist."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used here (another task, another label count, not a checkpoint)."""


class UnsupportedModelError(UserError, ValueError):
    """A model whose architecture the requested operation does not support."""


class ModelLoadError(UserError, OSError):
    """A model or tokenizer that cannot be loaded from the name or directory the user gave."""


def find_user_error(error: BaseException) -> UserError | None:
    """The first :class:`UserError` in ``error``'s chain (``__cause__`` / ``__context__``), or ``None``.

    Libraries that call our constructors (jsonargparse, Lightning) re-raise their errors wrapped in
    their own; the original stays in the chain.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def show_tracebacks() -> bool:
    """Whether user errors should show their traceback too (``ATTATTR_TRACEBACK=1``)."""
    return os.environ.get("ATTATTR_TRACEBACK", "").strip().lower() in ("1", "true", "yes", "on")


# ----------------------------------------------------------------------------- numbers
def _is_int(value: object) -> TypeGuard[numbers.Integral]:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@overload
def check_int(
    name: str,
    value: object,
    minimum: int | None = None,
    maximum: int | None = None,
    *,
    optional: Literal[False] = False,
) -> int: ...
@overload
def check_int(
    name: str, value: object, minimum: int | None = None, maximum: int | None = None, *, optional: bool
) -> int | None: ...
def check_int(
    name: str, value: object, minimum: int | None = None, maximum: int | None = None, *, optional: bool = False
) -> int | None:
    """Return ``value`` as an ``int`` if it is an integer in ``[minimum, maximum]`` (or ``None`` when ``optional``).

    Raises:
        ArgumentTypeError: not an integer (``bool`` and floats are refused).
        ArgumentError: outside the range.

    Example:
        >>> check_int("n_examples", 3, 1)
        3
        >>> check_int("n_examples", 0, 1)
        Traceback (most recent call last):
        ...
        lightning_attattr.core.checks.ArgumentError: Expected `n_examples` to be an integer >= 1, but got 0.
    """
    if optional and value is None:
        return None
    if minimum is not None and maximum is not None:
        allowed = f"an integer in [{minimum}, {maximum}]"
    elif minimum is not None:
        allowed = f"an integer >= {minimum}"
    elif maximum is not None:
        allowed = f"an integer <= {maximum}"
    else:
        allowed = "an integer"
    if optional:
        allowed += " or None"
    if not _is_int(value):
        raise ArgumentTypeError(f"Expected `{name}` to be {allowed}, but got {value!r}.")
    number = int(value)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ArgumentError(f"Expected `{name}` to be {allowed}, but got {number}.")
    return number


@overload
def check_positive_int(name: str, value: object, *, optional: Literal[False] = False) -> int: ...
@overload
def check_positive_int(name: str, value: object, *, optional: bool) -> int | None: ...
def check_positive_int(name: str, value: object, *, optional: bool = False) -> int | None:
    """Return ``value`` if it is an integer >= 1 (or ``None`` when ``optional``); else raise naming ``name``."""
    if optional and value is None:
        return None
    if not _is_int(value) or int(value) < 1:
        allowed = "a positive integer" + (" or None" if optional else "")
        error = ArgumentTypeError if not _is_int(value) else ArgumentError
        raise error(f"Expected `{name}` to be {allowed}, but got {value!r}.")
    return int(value)


def check_seed(name: str, value: object) -> int:
    """Return ``value`` if it is an integer (any sign); seeds given as strings or floats are refused."""
    if not _is_int(value):
        raise ArgumentTypeError(f"Expected `{name}` to be an integer, but got {value!r}.")
    return int(value)


def check_number(
    name: str, value: object, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False
) -> float:
    """Return ``value`` as a float if it is a real number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ArgumentTypeError(f"Expected `{name}` to be a number in {interval}, but got {value!r}.")
    number = float(value)
    if math.isnan(number) or number < low or number > high or (low_open and number == low):
        raise ArgumentError(f"Expected `{name}` to be a number in {interval}, but got {value!r}.")
    return number


def check_fractions(name: str, value: object) -> list[float]:
    """Return ``value`` as a list of floats if it is a non-empty list of numbers in [0, 1].

    A single number or a string is refused (a common YAML slip: ``fractions: 0.5``).
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ArgumentTypeError(
            f"Expected `{name}` to be a non-empty list of numbers in [0, 1] (e.g. [0.0, 0.5, 0.9]), but got {value!r}."
        )
    out = []
    for item in value:
        if not isinstance(item, numbers.Real) or isinstance(item, bool) or not 0.0 <= float(item) <= 1.0:
            raise ArgumentError(f"Expected `{name}` to be a non-empty list of numbers in [0, 1], but got {value!r}.")
        out.append(float(item))
    return out


# ----------------------------------------------------------------------------- choices and layers
def check_sizes(name: str, ks: object) -> list[int]:
    """``ks`` as a sorted list of distinct positive ints (e.g. how many edges to delete).

    Raises:
        ArgumentTypeError: not a list of ints.
        ArgumentError: empty or a value below 1.
    """
    if not isinstance(ks, (list, tuple)) or not all(isinstance(k, int) and not isinstance(k, bool) for k in ks):
        raise ArgumentTypeError(f"Expected `{name}` to be a list of positive integers, but got {ks!r}.")
    if not ks or min(ks) < 1:
        raise ArgumentError(f"Expected `{name}` to be a non-empty list of integers >= 1, but got {list(ks)!r}.")
    return sorted(set(ks))


def check_choice(name: str, value: object, allowed: Sequence[_Choice]) -> _Choice:
    """Return ``value`` if it is one of ``allowed``, else raise an error listing them.

    ``allowed`` typed as a sequence of a ``Literal`` type gives ``value`` that type.
    """
    if not isinstance(value, str) or value not in allowed:
        raise ArgumentError(f"Expected `{name}` to be one of {list(allowed)}, but got {value!r}.")
    return cast(_Choice, value)  # equal to one of `allowed`


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a ``bool`` (``0``/``1`` and strings are refused)."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"Expected `{name}` to be True or False, but got {value!r}.")
    return value


def check_layers(name: str, layers: object, n_layers: int | None = None) -> tuple[int, ...] | None:
    """Validate a layer selection: ``None`` (all layers), an int or a list of distinct ints.

    Negative indices count from the end. Without ``n_layers`` (the model is not known yet) only the
    types and duplicates are checked; with it, the range is checked and the layers come back
    normalised to ``0 .. n_layers - 1`` in increasing order. Naming a layer twice (``[0, 0]`` or
    ``[0, -n]``) is an error: it is almost always a typo, and results have one entry per layer.

    Raises:
        ArgumentTypeError: not an int, a sequence of ints or None.
        ArgumentError: empty, out of range, or a layer named twice.

    Example:
        >>> check_layers("layers", [-1, 0], 3)
        (0, 2)
    """
    if layers is None:
        return None if n_layers is None else tuple(range(n_layers))
    items: Any = [layers] if _is_int(layers) else layers
    if isinstance(items, (str, bytes)) or not hasattr(items, "__iter__"):
        raise ArgumentTypeError(f"Expected `{name}` to be an int, a list of ints or None, but got {layers!r}.")
    values = []
    for layer in list(items):
        layer = layer.item() if hasattr(layer, "item") and getattr(layer, "ndim", 1) == 0 else layer
        if not _is_int(layer):
            raise ArgumentTypeError(f"Expected `{name}` to contain ints, but got {layer!r} in {layers!r}.")
        values.append(int(layer))
    if not values:
        raise ArgumentError(f"Expected `{name}` to name at least one layer (or None for all), but got {layers!r}.")
    if n_layers is None:
        if len(set(values)) != len(values):
            raise ArgumentError(f"Expected `{name}` to name each layer once, but got {layers!r}.")
        return tuple(values)
    bad = [v for v in values if not -n_layers <= v < n_layers]
    if bad:
        raise ArgumentError(
            f"Expected `{name}` to be in [{-n_layers}, {n_layers - 1}] (the model has {n_layers} layers), "
            f"but got {bad[0]} in {layers!r}."
        )
    normalised = [v % n_layers for v in values]
    if len(set(normalised)) != len(normalised):
        raise ArgumentError(
            f"Expected `{name}` to name each layer once (negative indices count from the end of the "
            f"{n_layers} layers), but got {layers!r}."
        )
    return tuple(sorted(normalised))


# ----------------------------------------------------------------------------- paths
def _check_existing(name: str, path: object, what: str, directory: bool) -> Path:
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ArgumentTypeError(f"Expected `{name}` to be a path to {what}, but got {path!r}.")
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise PathNotFoundError(f"Expected `{name}` to be {what}, but {str(path)!r} does not exist.")
    if resolved.is_dir() != directory:
        kind = "a file, not a directory" if directory else "a directory"
        raise PathNotFoundError(f"Expected `{name}` to be {what}, but {str(path)!r} is {kind}.")
    return resolved


def check_existing_dir(name: str, path: object, what: str = "a directory") -> Path:
    """Return ``path`` as a ``Path`` if it is an existing directory, else raise naming ``name`` and the path."""
    return _check_existing(name, path, what, directory=True)


def check_existing_file(name: str, path: object, what: str = "a file") -> Path:
    """Return ``path`` as a ``Path`` if it is an existing file, else raise naming ``name`` and the path."""
    return _check_existing(name, path, what, directory=False)


def looks_like_local_path(name_or_path: str) -> bool:
    """Whether a model name is meant as a local path rather than a hub id (``org/name``).

    Hub ids have at most one ``/`` and never start with ``/``, ``.`` or ``~``; anything else (an
    absolute or relative path, a Windows path) is a local path.
    """
    text = str(name_or_path)
    return (
        text.startswith(("/", ".", "~"))
        or "\\" in text
        or text.count("/") > 1
        or (len(text) > 1 and text[1] == ":")
        or Path(text).expanduser().exists()
    )


def check_pretrained_source(name: str, value: object, required_file: str | None = "config.json") -> str:
    """Check a ``from_pretrained`` source before transformers sees it: a hub name or a local directory.

    A value that is meant as a local path (:func:`looks_like_local_path`) must be an existing
    directory holding ``required_file``; transformers would otherwise report a missing local
    folder as an invalid hub repo id. Hub names are passed through (loading them needs internet).

    Raises:
        ArgumentTypeError: not a non-empty string.
        PathNotFoundError: a local path that does not exist, is a file, or lacks ``required_file``.
    """
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ArgumentTypeError(
            f"Expected `{name}` to be a hub name or a local model directory (a non-empty string), but got {value!r}."
        )
    text = str(value)
    if looks_like_local_path(text):
        path = Path(text).expanduser()
        if not path.exists():
            raise PathNotFoundError(
                f"Expected `{name}` to be a hub name or an existing local model directory, but the local path "
                f"{text!r} does not exist."
            )
        if not path.is_dir():
            raise PathNotFoundError(
                f"Expected `{name}` to be a model directory, but {text!r} is a file (a Lightning .ckpt? export it "
                "first: python -m lightning_attattr.export CKPT OUT_DIR)."
            )
        if required_file is not None and not (path / required_file).is_file():
            raise PathNotFoundError(
                f"Expected `{name}` to be a Hugging Face model directory, but {text!r} has no {required_file} "
                "(save a model there with save_pretrained, or export a checkpoint with "
                "python -m lightning_attattr.export CKPT OUT_DIR)."
            )
    return text


def program_name(default: str) -> str:
    """The name the user ran this command by, for usage and error lines.

    ``attattr-train`` or ``train.py`` (``sys.argv[0]``), ``python -m lightning_attattr.cli`` (a module
    run with ``-m``); ``default`` when the process tells nothing (``python -c``, an interactive session).
    """
    import sys

    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return f"python -m {spec.name.removesuffix('.__main__')}"
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 in ("", "-c", "-"):
        return default
    return Path(argv0).name.removesuffix(".exe")


def exit_on_user_error(main: Any, *args: Any, prog: str | None = None, **kwargs: Any) -> Any:
    """Run ``main(*args, **kwargs)`` and turn a user error into one line on stderr and exit status 2.

    A :class:`UserError` anywhere in an escaping exception's chain is printed as
    ``prog: error: message`` and the process exits with status 2. Other exceptions (bugs)
    propagate with their traceback. ``ATTATTR_TRACEBACK=1`` lets user errors propagate too.
    """
    import sys

    try:
        return main(*args, **kwargs)
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None or show_tracebacks():
            raise
        name = prog or program_name("lightning_attattr")
        message = " ".join(str(user_error).split())  # one line, whatever the message held
        print(f"{name}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


def check_shape(name: str, tensor: object, expected: Sequence[int | None], axes: str) -> Any:
    """Return ``tensor`` if it is a ``torch.Tensor`` of shape ``expected`` (``None``: any size on that axis).

    The one shape checker: the message names the argument, its axes, the expected and the given shape.

    Raises:
        ArgumentTypeError: not a tensor.
        ArgumentError: wrong number of axes or a wrong size.

    Example:
        >>> import torch
        >>> check_shape("importance", torch.zeros(2, 3), (None, 4), "[layer, head]")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_attattr.core.checks.ArgumentError: Expected `importance` of shape [layer, head] = ['*', 4], ...
    """
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise ArgumentTypeError(f"Expected `{name}` to be a tensor of shape {axes}, but got {type(tensor).__name__}.")
    shape = list(tensor.shape)
    want = ["*" if s is None else s for s in expected]
    if len(shape) != len(expected) or any(s is not None and s != g for s, g in zip(expected, shape)):
        raise ArgumentError(f"Expected `{name}` of shape {axes} = {want}, but got {shape}.")
    return tensor
