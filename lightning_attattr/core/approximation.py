"""Integration rules for the path integral of AttAttr.

AttAttr integrates the gradient of the model output along the straight path ``alpha * A`` for
``alpha`` in ``[0, 1]``, where ``A`` is one layer's attention-probability tensor. Each rule maps a
step count ``n_steps`` to quadrature nodes ``alphas`` in ``[0, 1]`` and weights ``step_sizes``
that sum to one, so that ``integral_0^1 g(alpha) d alpha ~= sum_k step_sizes[k] * g(alphas[k])``.
This mirrors Captum's ``approximation_parameters``.

- ``riemann_left``: ``alpha_k = k / m``, ``k = 0 .. m-1``. This is what the official AttAttr code
  computes (it includes the zero baseline and never evaluates at ``A``).
- ``riemann_right``: ``alpha_k = k / m``, ``k = 1 .. m``, the formula printed in the paper.
- ``riemann_middle``: midpoints ``(k + 0.5) / m``.
- ``riemann_trapezoid``: ``m`` equally spaced points including both ends, trapezoid weights
  (needs ``m >= 2``).
- ``gausslegendre``: Gauss-Legendre nodes mapped to ``[0, 1]``; exact for polynomials of degree
  ``2m - 1`` and by far the most accurate per model evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import numpy as np

from lightning_attattr.core.checks import ArgumentError, ArgumentTypeError

Method = Literal["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]
METHODS: tuple[str, ...] = get_args(Method)


def _riemann_left(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(n, dtype=np.float64) / n, np.full(n, 1.0 / n)


def _riemann_right(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(1, n + 1, dtype=np.float64) / n, np.full(n, 1.0 / n)


def _riemann_middle(n: int) -> tuple[np.ndarray, np.ndarray]:
    return (np.arange(n, dtype=np.float64) + 0.5) / n, np.full(n, 1.0 / n)


def _riemann_trapezoid(n: int) -> tuple[np.ndarray, np.ndarray]:
    if n < 2:
        raise ArgumentError(f"Expected `n_steps` to be at least 2 for `method='riemann_trapezoid'`, but got {n}.")
    alphas = np.linspace(0.0, 1.0, n)
    weights = np.full(n, 1.0 / (n - 1))
    weights[0] = weights[-1] = 0.5 / (n - 1)
    return alphas, weights


def _gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return (nodes + 1.0) / 2.0, weights / 2.0


_RULES: dict[str, Callable[[int], tuple[np.ndarray, np.ndarray]]] = {
    "riemann_left": _riemann_left,
    "riemann_right": _riemann_right,
    "riemann_middle": _riemann_middle,
    "riemann_trapezoid": _riemann_trapezoid,
    "gausslegendre": _gauss_legendre,
}


def validate_method(method: object) -> str:
    """Return ``method`` if it names a known integration rule, else raise ``ValueError``."""
    if not isinstance(method, str) or method not in _RULES:
        raise ArgumentError(f"Expected `method` to be one of {sorted(_RULES)}, but got {method!r}.")
    return method


def validate_n_steps(n_steps: object) -> int:
    """Return ``n_steps`` if it is a positive integer, else raise ``TypeError``/``ValueError``."""
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)):
        raise ArgumentTypeError(f"Expected `n_steps` to be a positive integer, but got {n_steps!r}.")
    if n_steps < 1:
        raise ArgumentError(f"Expected `n_steps` to be a positive integer, but got {n_steps}.")
    return int(n_steps)


def approximation_parameters(method: str, n_steps: int) -> tuple[list[float], list[float]]:
    """Quadrature nodes and weights of an integration rule on ``[0, 1]``.

    Args:
        method: one of ``riemann_left``, ``riemann_right``, ``riemann_middle``,
            ``riemann_trapezoid``, ``gausslegendre``.
        n_steps: number of nodes (model evaluations per example and layer).

    Returns:
        ``(alphas, step_sizes)``: two lists of ``n_steps`` floats; the step sizes sum to 1.

    Raises:
        ValueError: unknown ``method``, ``n_steps < 1``, or ``n_steps < 2`` for the trapezoid rule.
        TypeError: ``n_steps`` is not an integer.

    Example:
        >>> alphas, weights = approximation_parameters("riemann_left", 4)
        >>> alphas
        [0.0, 0.25, 0.5, 0.75]
        >>> sum(approximation_parameters("gausslegendre", 3)[1])  # doctest: +ELLIPSIS
        1.0...
    """
    rule = _RULES[validate_method(method)]
    alphas, weights = rule(validate_n_steps(n_steps))
    return alphas.tolist(), weights.tolist()
