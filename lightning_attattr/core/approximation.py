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

``n_steps="auto"`` (adaptive integration, see ``AttentionIntegratedGradients.attribute``) uses the
nested Gauss-Kronrod-Patterson family of :func:`nested_rule`: 3 Gauss-Legendre nodes, then 7
(Kronrod), 15, 31 and 63 (Patterson) nodes, each level keeping every node of the previous one.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Final, Literal, cast, get_args, overload

import numpy as np

from lightning_attattr.core.checks import ArgumentError, ArgumentTypeError, check_int

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


def validate_method(method: object) -> Method:
    """Return ``method`` if it names a known integration rule, else raise ``ValueError``."""
    if not isinstance(method, str) or method not in _RULES:
        raise ArgumentError(f"Expected `method` to be one of {sorted(_RULES)}, but got {method!r}.")
    return cast(Method, method)  # the keys of _RULES are the names of Method


@overload
def validate_n_steps(n_steps: object, *, allow_auto: Literal[False] = False) -> int: ...
@overload
def validate_n_steps(n_steps: object, *, allow_auto: bool) -> int | Literal["auto"]: ...
def validate_n_steps(n_steps: object, *, allow_auto: bool = False) -> int | Literal["auto"]:
    """Return ``n_steps`` if it is a positive integer, else raise ``TypeError``/``ValueError``.

    With ``allow_auto``, the string ``"auto"`` (adaptive integration) is accepted too and returned
    as is.
    """
    allowed = 'a positive integer or "auto"' if allow_auto else "a positive integer"
    if allow_auto and n_steps == AUTO:
        return AUTO
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)):
        raise ArgumentTypeError(f"Expected `n_steps` to be {allowed}, but got {n_steps!r}.")
    if n_steps < 1:
        raise ArgumentError(f"Expected `n_steps` to be {allowed}, but got {n_steps}.")
    return int(n_steps)


#: ``n_steps`` value that selects adaptive integration.
AUTO: Final = "auto"
#: Node counts of the nested levels of :func:`nested_rule`.
NESTED_LEVELS: tuple[int, ...] = (3, 7, 15, 31, 63)


def _extension(nodes: np.ndarray) -> np.ndarray:
    """The ``m + 1`` nodes that extend an ``m``-node rule on ``[-1, 1]`` optimally (Kronrod/Patterson).

    They are the zeros of the degree ``m + 1`` polynomial ``E`` orthogonal, under the weight
    ``prod(x - nodes)``, to every polynomial of degree ``<= m``; the extended rule then integrates
    polynomials of degree ``3m + 1`` exactly (Patterson 1968). ``E`` is solved for in the Legendre
    basis (inner products by a Gauss rule that is exact for them) and its zeros, which interlace
    with ``nodes``, are found by bracketing between consecutive old nodes.
    """
    from scipy.optimize import brentq

    m = len(nodes)
    gx, gw = np.polynomial.legendre.leggauss(2 * m + 8)
    weight = np.prod(gx[:, None] - nodes[None, :], axis=1)
    weight /= np.abs(weight).max()
    basis = np.polynomial.legendre.legvander(gx, m + 1)  # [points, degree 0 .. m+1]
    gram = np.einsum("p,pk,pj->kj", gw * weight, basis[:, : m + 1], basis)  # [m+1, m+2]
    coef = np.append(np.linalg.solve(gram[:, : m + 1], -gram[:, m + 1]), 1.0)
    edges = np.concatenate([[-1.0], np.sort(nodes), [1.0]])

    def poly(x: float) -> float:
        return float(np.polynomial.legendre.legval(x, coef))

    return np.array([brentq(poly, a, b, xtol=1e-15, rtol=1e-15, maxiter=200) for a, b in zip(edges[:-1], edges[1:])])


@lru_cache(maxsize=1)
def _nested_nodes() -> tuple[np.ndarray, list[np.ndarray]]:
    """All 63 nodes on ``[-1, 1]`` ordered by level of first use, and each level's weights in that order."""
    order = np.polynomial.legendre.leggauss(NESTED_LEVELS[0])[0]
    while len(order) < NESTED_LEVELS[-1]:
        order = np.concatenate([order, np.sort(_extension(order))])
    weights = []
    for size in NESTED_LEVELS:  # interpolatory weights: exact for the Legendre polynomials of degree < size
        vander = np.polynomial.legendre.legvander(order[:size], size - 1).T
        rhs = np.zeros(size)
        rhs[0] = 2.0
        weights.append(np.linalg.solve(vander, rhs))
    return order, weights


def nested_rule(level: int) -> tuple[list[float], list[float]]:
    """Nodes and weights on ``[0, 1]`` of level ``level`` of the nested Gauss-Kronrod-Patterson family.

    Level 0 is 3-node Gauss-Legendre; level ``l`` has ``NESTED_LEVELS[l]`` nodes (3, 7, 15, 31, 63)
    and contains every node of level ``l - 1`` as its first nodes, so a refinement evaluates only
    the new nodes. The ``n``-node level integrates polynomials of degree ``(3n + 1) / 2`` exactly
    (3-node Gauss: 5, Kronrod 7: 11, Patterson 15: 23, 31: 47, 63: 95).

    Example:
        >>> alphas, weights = nested_rule(1)
        >>> len(alphas), round(sum(weights), 12), alphas[:3] == nested_rule(0)[0]
        (7, 1.0, True)
    """
    check_int("level", level, 0, len(NESTED_LEVELS) - 1)
    order, weights = _nested_nodes()
    size = NESTED_LEVELS[level]
    return ((order[:size] + 1.0) / 2.0).tolist(), (weights[level] / 2.0).tolist()


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
