"""Tests for the coordinate rules in secagg.robust: median, trimmed mean, meamed."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.robust import (
    EncodedSum,
    RuleError,
    meamed,
    meamed_encoded,
    median,
    median_encoded,
    trimmed_mean,
    trimmed_mean_encoded,
)
from secagg.rules import bulyan_coordinate

FAST = settings(max_examples=60, deadline=None)

FLOAT_RULES: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "median": median,
    "trimmed-mean": trimmed_mean,
    "meamed": meamed,
}
ENCODED_RULES: dict[str, Callable[[np.ndarray, int], EncodedSum]] = {
    "median": median_encoded,
    "trimmed-mean": trimmed_mean_encoded,
    "meamed": meamed_encoded,
}


@st.composite
def int_inputs(draw: st.DrawFn, lo: int = -50, hi: int = 50) -> tuple[np.ndarray, int]:
    """Small integer matrices with n >= 2f+1; the narrow range makes ties common."""
    f = draw(st.integers(0, 3))
    n = draw(st.integers(2 * f + 1, 2 * f + 6))
    d = draw(st.integers(1, 5))
    vals = draw(st.lists(st.integers(lo, hi), min_size=n * d, max_size=n * d))
    return np.array(vals, dtype=np.int64).reshape(n, d), f


# --------------------------------------------------------------------------- hand cases


def test_median_hand_odd_and_even_lower_middle() -> None:
    X = np.array([[3.0, -1.0], [1.0, 5.0], [2.0, 0.0]])
    np.testing.assert_array_equal(median(X, 1), [2.0, 0.0])
    # even n: the lower of the two middles (2 of {1, 2, 7, 9}), not their mean 4.5
    X4 = np.array([[9.0], [1.0], [7.0], [2.0]])
    np.testing.assert_array_equal(median(X4, 1), [2.0])
    assert median_encoded(X4.astype(np.int64), 1) == (pytest.approx([2]), 1)


def test_trimmed_mean_hand() -> None:
    X = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [100.0, -100.0], [4.0, 40.0]])
    # column 0 sorted 1,2,3,4,100 -> drop 1 and 100 -> mean(2,3,4) = 3
    # column 1 sorted -100,10,20,30,40 -> drop -100 and 40 -> mean(10,20,30) = 20
    np.testing.assert_array_equal(trimmed_mean(X, 1), [3.0, 20.0])
    total, div = trimmed_mean_encoded(X.astype(np.int64), 1)
    np.testing.assert_array_equal(total, [9, 60])
    assert div == 3


def test_meamed_hand_and_tie_to_smaller_values() -> None:
    # values 0, 4, 5, 6, 100; median 5; n - f = 3 closest: 4, 5, 6
    X = np.array([[0.0], [4.0], [5.0], [6.0], [100.0]])
    np.testing.assert_array_equal(meamed(X, 2), [5.0])
    # values 1, 3, 5, 7, 9; median 5; n - f = 4: 3, 5, 7 and then 1 or 9 (both at
    # distance 4): the documented rule takes the smaller, 1 -> (1+3+5+7)/4 = 4
    Y = np.array([[9.0], [1.0], [5.0], [7.0], [3.0]])
    np.testing.assert_array_equal(meamed(Y, 1), [4.0])
    assert meamed_encoded(Y.astype(np.int64), 1) == (pytest.approx([16]), 4)
    # even n: lower median 3 of {1, 3, 7, 9}; n - f = 3 closest: 3, 1 (2) and 7 (4)
    Z = np.array([[1.0], [3.0], [7.0], [9.0]])
    np.testing.assert_array_equal(meamed(Z, 1), [11.0 / 3.0])


def test_f_zero() -> None:
    X = np.random.default_rng(0).normal(size=(6, 4))
    np.testing.assert_allclose(trimmed_mean(X, 0), X.mean(axis=0))
    np.testing.assert_allclose(meamed(X, 0), X.mean(axis=0))


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("rule", sorted(FLOAT_RULES))
@FAST
@given(inp=int_inputs(), seed=st.integers(0, 2**32 - 1))
def test_permutation_invariance(rule: str, inp: tuple[np.ndarray, int], seed: int) -> None:
    X, f = inp
    perm = np.random.default_rng(seed).permutation(X.shape[0])
    Xf = X.astype(np.float64)
    np.testing.assert_array_equal(FLOAT_RULES[rule](Xf[perm], f), FLOAT_RULES[rule](Xf, f))


@pytest.mark.parametrize("rule", sorted(FLOAT_RULES))
@FAST
@given(inp=int_inputs())
def test_exact_int_equals_float(rule: str, inp: tuple[np.ndarray, int]) -> None:
    """Small integers are exact in float64, ties included, so both paths must agree
    exactly, and the encoded sum must be an exact int64 sum."""
    X, f = inp
    total, divisor = ENCODED_RULES[rule](X, f)
    assert total.dtype == np.int64
    np.testing.assert_array_equal(total / divisor, FLOAT_RULES[rule](X.astype(np.float64), f))


@pytest.mark.parametrize("rule", sorted(FLOAT_RULES))
@FAST
@given(inp=int_inputs(), big=st.integers(10**6, 10**12), sign=st.sampled_from([-1, 1]))
def test_f_outliers_stay_inside_honest_range(
    rule: str, inp: tuple[np.ndarray, int], big: int, sign: int
) -> None:
    """With n >= 2f+1 and any f rows replaced by huge values, each coordinate stays in
    the honest values' [min, max]: the guarantee all three rules share."""
    X, f = inp
    honest = X[f:]
    Xb = X.astype(np.float64)
    Xb[:f] = sign * big
    out = FLOAT_RULES[rule](Xb, f)
    assert np.all(out >= honest.min(axis=0)) and np.all(out <= honest.max(axis=0))


@FAST
@given(inp=int_inputs())
def test_meamed_with_n_minus_2f_is_bulyans_stage(inp: tuple[np.ndarray, int]) -> None:
    """Bulyan's second stage is meamed keeping β = θ - 2f values: one window rule."""
    X, f = inp
    rows = max(2 * f + 3, 4 * f + 1)  # Bulyan's stage needs the first, meamed(2f) the second
    if X.shape[0] < rows:
        X = np.tile(X, (-(-rows // X.shape[0]), 1))
    np.testing.assert_array_equal(meamed(X.astype(np.float64), 2 * f), bulyan_coordinate(X, f))


def test_meamed_matches_brute_force_closest_set() -> None:
    """Against the definition: the k values with the smallest |x - med|, ties to the
    smaller value, for tie-heavy integer data."""
    rng = np.random.default_rng(7)
    for _ in range(200):
        n = int(rng.integers(3, 10))
        f = int(rng.integers(0, (n - 1) // 2 + 1))
        col = rng.integers(-4, 5, n)
        med = np.sort(col)[(n - 1) // 2]
        order = sorted(col.tolist(), key=lambda v: (abs(v - med), v))
        expect = sum(order[: n - f])
        assert meamed_encoded(col[:, None], f).total[0] == expect


# ----------------------------------------------------------------------- bounds, errors


@pytest.mark.parametrize("rule", sorted(FLOAT_RULES))
def test_bound_message_names_2f_plus_1(rule: str) -> None:
    X = np.zeros((4, 2))
    with pytest.raises(RuleError, match=r"needs n >= 2f\+1, got n=4, f=2"):
        FLOAT_RULES[rule](X, 2)
    with pytest.raises(RuleError, match=r"needs n >= 2f\+1, got n=4, f=2"):
        ENCODED_RULES[rule](X.astype(np.int64), 2)


@pytest.mark.parametrize("rule", sorted(FLOAT_RULES))
def test_bad_inputs(rule: str) -> None:
    with pytest.raises(RuleError, match="f >= 0"):
        FLOAT_RULES[rule](np.zeros((3, 2)), -1)
    with pytest.raises(RuleError, match="integer"):
        FLOAT_RULES[rule](np.zeros((3, 2)), True)  # type: ignore[arg-type]
    with pytest.raises(RuleError, match="finite"):
        FLOAT_RULES[rule](np.array([[np.nan], [0.0], [1.0]]), 1)
    with pytest.raises(RuleError, match="2-D"):
        FLOAT_RULES[rule](np.zeros(3), 0)
    with pytest.raises(RuleError, match="signed integer"):
        ENCODED_RULES[rule](np.zeros((3, 2)), 0)


@pytest.mark.parametrize("rule", ["trimmed-mean", "meamed"])
def test_int64_headroom_refused_not_wrapped(rule: str) -> None:
    X = np.full((5, 1), 2**62, dtype=np.int64)
    X[0] = -(2**62)
    with pytest.raises(RuleError, match=r"2\^63-1"):
        ENCODED_RULES[rule](X, 1)
