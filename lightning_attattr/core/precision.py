"""Reduced precision for the integrand of AttAttr, with the completeness guarantee kept in fp32.

Most of the cost of an attribution is the integrand: the forward/backward passes at the interpolated
attention ``alpha A``, one per integration node. ``attribute(..., precision=...)`` runs only those
passes in reduced precision; the clean pass (``F(A)``), the baseline pass (``F(A := 0)``), the sums
of the integral and the completeness check stay in the model's precision (fp32), so the
completeness error of a reduced-precision result is measured exactly as for an fp32 one.

- ``"fp32"``: everything in the model's precision (the default; bit-identical to the results
  before this option existed).
- ``"tf32"``: the integrand's float32 matmuls use TF32 (``torch.set_float32_matmul_precision("high")``,
  scoped to the passes and restored after them). A no-op on the CPU, where the results are the
  fp32 ones.
- ``"bf16"``: the integrand's passes run under ``torch.autocast(<model device type>, torch.bfloat16)``,
  also on the CPU.
- ``"auto"``: bf16 first; pairs that miss ``completeness_tol`` are recomputed in fp32 at the same
  nodes, and only then refined with more nodes (``n_steps="auto"``), so the guarantee is the fp32
  one.

:func:`stalled` is the test that tells reduced-precision noise from under-resolution.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Final, Literal, get_args

import torch
from torch import Tensor

from lightning_attattr.core.checks import ArgumentError, check_choice

Precision = Literal["fp32", "tf32", "bf16", "auto"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
#: Codes of :attr:`AttributionResult.precision_used`: the precision a pair's integrand finished in.
PRECISION_CODES: Final[dict[str, int]] = {"fp32": 0, "tf32": 1, "bf16": 2}
#: The precision names by code: ``PRECISION_NAMES[code]``.
PRECISION_NAMES: Final[tuple[str, ...]] = ("fp32", "tf32", "bf16")
#: How much the completeness error, and the change between successive levels, must at least shrink
#: per level of the nested rule (nodes about doubling) for reduced-precision refinement to go on.
#: The nested rule's exactness degree about doubles per level, so on a resolved-but-not-converged
#: smooth integrand both shrink by far more than this; a factor below 2 means rounding noise.
NOISE_SHRINK: Final = 2.0


def validate_precision(precision: object, autocast_dtype: object = None) -> Precision:
    """Return ``precision`` if it names a known precision, else raise ``ArgumentError`` (one line).

    Refuses ``autocast_dtype`` together with a ``precision`` other than ``"fp32"``: the
    precision option subsumes it.
    """
    checked = check_choice("precision", precision, PRECISIONS)
    if autocast_dtype is not None and checked != "fp32":
        raise ArgumentError(
            f"Expected at most one of `precision` and `autocast_dtype` (precision='bf16' replaces "
            f"autocast_dtype=torch.bfloat16), but got precision={precision!r} with autocast_dtype={autocast_dtype!r}."
        )
    return checked


def first_precision(precision: Precision, device: torch.device) -> str:
    """The precision the integrand starts in on ``device``.

    ``"bf16"`` under ``"auto"``; ``"fp32"`` for ``"tf32"`` off CUDA (where TF32 does not exist, so
    the passes are fp32 and are reported as such); else ``precision`` itself.
    """
    if precision == "auto":
        return "bf16"
    if precision == "tf32" and device.type != "cuda":
        return "fp32"
    return precision


@contextlib.contextmanager
def integrand_precision(precision: str, device: torch.device) -> Iterator[None]:
    """Run the enclosed forward/backward of the integrand in ``precision`` (``fp32``, ``tf32`` or ``bf16``).

    ``tf32`` sets ``torch.set_float32_matmul_precision("high")`` on CUDA devices only, and restores
    the previous setting on exit (also after an error); ``bf16`` enters autocast on the device's type.
    """
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
        return
    if precision == "tf32" and device.type == "cuda":
        before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(before)
        return
    yield


def stalled(error: Tensor, previous_error: Tensor, change: Tensor, previous_change: Tensor) -> Tensor:
    """Which pairs stopped improving as nodes doubled: reduced-precision noise, not under-resolution.

    A pair has stalled at a level of the nested rule when its relative completeness error did not
    shrink by at least :data:`NOISE_SHRINK` since the previous level, or the change between this
    level's estimate and the previous one did not shrink by that factor since the previous change
    (both need the earlier values: ``inf``/``nan`` there never count as stalled).

    Args:
        error: ``[pairs]`` relative completeness error at this level.
        previous_error: ``[pairs]`` the same at the previous level (``inf`` at the first).
        change: ``[pairs]`` ``|estimate - previous estimate| / scale`` (``nan`` at the first level).
        previous_change: ``[pairs]`` the change one level earlier (``nan`` where there is none).

    Returns:
        ``[pairs]`` bool.

    Example:
        >>> inf, nan = float("inf"), float("nan")
        >>> stalled(torch.tensor([1e-2, 1e-4, 1e-2]), torch.tensor([1.1e-2, 1e-2, inf]),
        ...         torch.tensor([nan, nan, nan]), torch.tensor([nan, nan, nan])).tolist()
        [True, False, False]
    """
    return (error * NOISE_SHRINK > previous_error) | (change * NOISE_SHRINK > previous_change)
