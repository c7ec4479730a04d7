"""Array arguments: conversion to numpy with a one-line error naming the argument.

Kept apart from :mod:`lightning_attattr.core.checks` because that module imports nothing beyond the
standard library; this one needs numpy (never torch: tensors are recognised by their methods). Used
by the figures (:mod:`lightning_attattr.plotting`) and the tree builder
(:mod:`lightning_attattr.analysis.trees`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lightning_attattr.core.checks import ArgumentError, ArgumentTypeError


def as_array(name: str, value: Any, dims: Sequence[str]) -> np.ndarray:
    """Convert ``value`` to a float64 array with ``len(dims)`` non-empty axes, or raise naming ``name``.

    A tensor is detached and moved to the CPU first, in float64 (bfloat16/half have no exact numpy dtype).

    Raises:
        ArgumentTypeError: ``value`` cannot be converted.
        ArgumentError: another number of axes, or an empty axis.
    """
    expected = "[" + ", ".join(dims) + "]"
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().double()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ArgumentTypeError(
            f"Expected `{name}` to be a tensor or array of shape {expected}, but could not convert "
            f"{type(value).__name__}: {err}"
        ) from err
    if arr.ndim != len(dims) or 0 in arr.shape:
        raise ArgumentError(
            f"Expected `{name}` to have shape {expected} ({len(dims)} non-empty dims), but got shape {list(arr.shape)}."
        )
    return arr


def check_square(name: str, arr: np.ndarray, dims: Sequence[str]) -> None:
    """Raise unless the last two axes of ``arr`` (query and key positions) have the same length."""
    if arr.shape[-1] != arr.shape[-2]:
        raise ArgumentError(
            f"Expected `{name}` of shape [{', '.join(dims)}] to have query_pos == key_pos (self-attention), "
            f"but got shape {list(arr.shape)}."
        )
