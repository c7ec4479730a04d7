import math

import pytest

from lightning_attattr.core.approximation import METHODS, approximation_parameters


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [2, 5, 20])
def test_weights_sum_to_one_and_nodes_in_unit_interval(method, n):
    alphas, weights = approximation_parameters(method, n)
    assert len(alphas) == len(weights) == n
    assert math.isclose(sum(weights), 1.0, rel_tol=1e-12)
    assert all(0.0 <= a <= 1.0 for a in alphas)


def test_riemann_left_is_the_official_grid():
    alphas, weights = approximation_parameters("riemann_left", 20)
    assert alphas == [k / 20 for k in range(20)]
    assert weights == [1 / 20] * 20


def test_right_middle_trapezoid_grids():
    assert approximation_parameters("riemann_right", 4)[0] == [0.25, 0.5, 0.75, 1.0]
    assert approximation_parameters("riemann_middle", 2)[0] == [0.25, 0.75]
    alphas, weights = approximation_parameters("riemann_trapezoid", 3)
    assert alphas == [0.0, 0.5, 1.0] and weights == [0.25, 0.5, 0.25]


@pytest.mark.parametrize("method", METHODS)
def test_integrates_polynomials(method):
    # every rule integrates x^2 on [0, 1] = 1/3 with O(1/n) error at worst; Gauss-Legendre exactly
    alphas, weights = approximation_parameters(method, 64)
    approx = sum(w * a * a for a, w in zip(alphas, weights))
    tol = 1e-14 if method == "gausslegendre" else 2e-2
    assert abs(approx - 1 / 3) < tol
    alphas, weights = approximation_parameters("gausslegendre", 3)  # exact up to degree 5
    assert abs(sum(w * a**5 for a, w in zip(alphas, weights)) - 1 / 6) < 1e-14


@pytest.mark.parametrize(
    ("method", "n", "exc", "match"),
    [
        ("riemann_left", 0, ValueError, "`n_steps` to be a positive integer, but got 0"),
        ("riemann_left", 2.5, TypeError, "`n_steps` to be a positive integer, but got 2.5"),
        ("riemann_trapezoid", 1, ValueError, "at least 2 for `method='riemann_trapezoid'`"),
        ("simpson", 4, ValueError, r"`method` to be one of .*gausslegendre.*but got 'simpson'"),
    ],
)
def test_bad_arguments(method, n, exc, match):
    with pytest.raises(exc, match=match):
        approximation_parameters(method, n)
