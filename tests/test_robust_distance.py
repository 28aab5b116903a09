"""Tests for the distance rules in secagg.robust: geometric median, MDA, centered
clipping and NNM, all computed from the squared-distance matrix D."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from secagg.reference import sq_distances, sq_distances_int
from secagg.robust import (
    RuleError,
    brute,
    centered_clipping,
    centered_clipping_weights,
    geometric_median,
    geometric_median_weights,
    mda,
    mda_encoded,
    mda_select,
    mixed_distances,
    mixed_distances_int,
    mixed_gram,
    nnm,
    nnm_encoded,
    nnm_matrix,
    nnm_neighbours,
)
from secagg.robust.geometric_median import distances_to_combination
from secagg.rules import krum

FAST = settings(max_examples=40, deadline=None)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# ----------------------------------------------------------------- the D-only identity


@FAST
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 9), d=st.integers(1, 6))
def test_distance_to_combination_identity(seed: int, n: int, d: int) -> None:
    rng = _rng(seed)
    X = rng.normal(size=(n, d))
    c = rng.dirichlet(np.ones(n))
    z = c @ X
    np.testing.assert_allclose(
        distances_to_combination(sq_distances(X), c), np.linalg.norm(X - z, axis=1), atol=1e-9
    )


# ------------------------------------------------------------------- geometric median


def test_geometric_median_hand_collinear_and_symmetric() -> None:
    # on a line the geometric median of an odd count is the middle point
    X = np.array([[-3.0, 0.0], [0.0, 0.0], [10.0, 0.0]])
    np.testing.assert_allclose(geometric_median(X, 1, nu=1e-12), [0.0, 0.0], atol=1e-6)
    # the centre of a symmetric configuration
    Y = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]) + 5.0
    np.testing.assert_allclose(geometric_median(Y), [5.0, 5.0], atol=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_geometric_median_minimises_the_objective(seed: int) -> None:
    rng = _rng(seed)
    X = rng.normal(size=(9, 4))
    X[:3] += 50.0
    res = geometric_median_weights(sq_distances(X), 3)
    assert res.converged
    assert res.weights.sum() == pytest.approx(1.0) and np.all(res.weights >= 0)

    def objective(z: np.ndarray) -> float:
        return float(np.linalg.norm(X - z, axis=1).sum())

    best = minimize(objective, np.median(X, axis=0), method="BFGS", options={"gtol": 1e-10})
    assert objective(res.weights @ X) <= best.fun + 1e-7


def test_geometric_median_int_and_float_D_agree_and_permutation_equivariant() -> None:
    X = _rng(3).integers(-100, 100, (8, 5))
    D = sq_distances_int(X)
    a = geometric_median_weights(D).weights
    b = geometric_median_weights(D.astype(np.float64)).weights
    np.testing.assert_array_equal(a, b)
    perm = _rng(4).permutation(8)
    c = geometric_median_weights(D[np.ix_(perm, perm)]).weights
    np.testing.assert_allclose(c, a[perm], atol=1e-12)


def test_geometric_median_bounded_under_f_outliers() -> None:
    """Breakdown point 1/2: with f < n/2 outliers anywhere, the geometric median stays
    within ``2(n-f)/(n-2f) · max_i ||x_i - y||`` of any point y, over honest i
    (Lopuhaä & Rousseeuw 1991, Minsker 2015); moving them from 10^6 to 10^9 away does
    not move it."""
    rng = _rng(5)
    n, f = 11, 5
    X = rng.normal(size=(n, 3))
    honest = X[f:]
    y = honest.mean(axis=0)
    bound = 2 * (n - f) / (n - 2 * f) * np.linalg.norm(honest - y, axis=1).max()
    outs = []
    for far in (1e3, 1e6, 1e9):
        Y = X.copy()
        Y[:f] = far * rng.normal(size=(f, 3))
        outs.append(geometric_median(Y, f))
        assert np.linalg.norm(outs[-1] - y) <= bound
    Y[:f] = 1e6 * np.sign(Y[:f])
    Z = Y.copy()
    Z[:f] *= 1e3
    np.testing.assert_allclose(geometric_median(Y, f), geometric_median(Z, f), atol=1e-3)


def test_geometric_median_reports_non_convergence_and_checks_params() -> None:
    D = sq_distances(_rng(6).normal(size=(7, 3)))
    res = geometric_median_weights(D, max_iter=1)
    assert res.iterations == 1 and not res.converged
    for kwargs, msg in [
        ({"nu": 0.0}, r"nu > 0"),
        ({"tol": -1.0}, r"tol > 0"),
        ({"max_iter": 0}, r"max_iter >= 1"),
        ({"nu": float("nan")}, r"nu > 0 and finite"),
    ]:
        with pytest.raises(RuleError, match=msg):
            geometric_median_weights(D, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(RuleError, match=r"n >= 2f\+1, got n=7, f=4"):
        geometric_median_weights(D, 4)
    with pytest.raises(RuleError, match="symmetric"):
        geometric_median_weights(np.triu(D))


# -------------------------------------------------------------------------------- MDA


def _mda_definition(D: np.ndarray, f: int) -> list[int]:
    n = D.shape[0]
    subsets = list(itertools.combinations(range(n), n - f))
    diam = [max((D[i, j] for i, j in itertools.combinations(s, 2)), default=0) for s in subsets]
    return list(subsets[int(np.argmin(diam))])


def test_mda_hand_excludes_far_points() -> None:
    X = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [9.0, 9.0], [1.0, 1.0]])
    assert mda_select(sq_distances(X), 1) == [0, 1, 2, 4]
    np.testing.assert_array_equal(mda(X, 1), [0.5, 0.5])
    np.testing.assert_array_equal(brute(X, 1), mda(X, 1))


@FAST
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 9), spread=st.integers(1, 4))
def test_mda_equals_definition_ties_lexicographic(seed: int, n: int, spread: int) -> None:
    """Small integer vectors (many exact ties) against the definition, whose argmin over
    itertools' lexicographic order is the lexicographically smallest subset."""
    rng = _rng(seed)
    f = int(rng.integers(0, (n - 1) // 2 + 1))
    X = rng.integers(0, spread, (n, 2))
    D = sq_distances_int(X)
    assert mda_select(D, f) == _mda_definition(D, f)
    total, div = mda_encoded(X, f)
    assert div == n - f
    np.testing.assert_array_equal(total, X[_mda_definition(D, f)].sum(axis=0))


def test_mda_all_equal_takes_first_subset() -> None:
    assert mda_select(np.zeros((7, 7), dtype=np.int64), 3) == [0, 1, 2, 3]
    # C(16, 5) = 4368 subsets span more than one chunk of candidates: the tie still goes
    # to the first subset, not to the first of a later chunk
    assert mda_select(np.zeros((16, 16)), 5) == list(range(11))


def test_mda_permutation_equivariant_and_outliers_excluded() -> None:
    rng = _rng(8)
    X = rng.normal(size=(9, 4))
    X[[2, 5, 7]] += 100.0 * rng.normal(size=(3, 4))
    D = sq_distances(X)
    assert mda_select(D, 3) == [0, 1, 3, 4, 6, 8]
    perm = rng.permutation(9)
    chosen = sorted(int(perm[i]) for i in mda_select(D[np.ix_(perm, perm)], 3))
    assert chosen == [0, 1, 3, 4, 6, 8]


def test_mda_refuses_above_the_limit() -> None:
    D = np.zeros((30, 30))
    with pytest.raises(RuleError, match=r"C\(n, f\) <= 1000000, got C\(30, 10\) = 30045015"):
        mda_select(D, 10)
    with pytest.raises(RuleError, match=r"C\(n, f\) <= 10, got C\(7, 3\) = 35"):
        mda_select(D[:7, :7], 3, max_subsets=10)
    with pytest.raises(RuleError, match=r"n >= 2f\+1, got n=6, f=3"):
        mda_select(D[:6, :6], 3)


# ----------------------------------------------------------------- centered clipping


def _cc_direct(X: np.ndarray, m: np.ndarray, tau: float, L: int) -> np.ndarray:
    v = m.copy()
    for _ in range(L):
        diff = X - v
        norm = np.linalg.norm(diff, axis=1)
        scale = np.where(norm > 0, np.minimum(1.0, tau / np.where(norm > 0, norm, 1.0)), 1.0)
        v = v + (diff * scale[:, None]).mean(axis=0)
    return v


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    tau=st.floats(0.01, 10.0),
    L=st.integers(1, 5),
    n=st.integers(1, 8),
)
def test_centered_clipping_weights_equal_direct_iteration(
    seed: int, tau: float, L: int, n: int
) -> None:
    rng = _rng(seed)
    X = rng.normal(size=(n, 5)) * 3.0
    m = rng.normal(size=5)
    np.testing.assert_allclose(
        centered_clipping(X, m, tau=tau, iterations=L), _cc_direct(X, m, tau, L), atol=1e-9
    )
    diff = X - m
    w = centered_clipping_weights(sq_distances(X), (diff * diff).sum(axis=1), tau=tau, iterations=L)
    assert w.centre_weight + w.weights.sum() == pytest.approx(1.0)


def test_centered_clipping_hand_cases() -> None:
    X = np.array([[1.0, 0.0], [3.0, 0.0], [100.0, 0.0]])
    # τ large: one step from any centre is the mean
    np.testing.assert_allclose(
        centered_clipping(X, np.zeros(2), tau=1e6, iterations=1), X.mean(axis=0)
    )
    # τ = 1 from 0: each difference clipped to length 1 -> v = (1 + 1 + 1)/3 = 1
    np.testing.assert_allclose(centered_clipping(X, np.zeros(2), tau=1.0, iterations=1), [1.0, 0])


def test_centered_clipping_param_checks() -> None:
    D = np.zeros((3, 3))
    with pytest.raises(RuleError, match=r"tau > 0"):
        centered_clipping_weights(D, np.zeros(3), tau=0.0, iterations=1)
    with pytest.raises(RuleError, match=r"iterations >= 1"):
        centered_clipping_weights(D, np.zeros(3), tau=1.0, iterations=0)
    with pytest.raises(RuleError, match=r"shape \(n,\) = \(3,\)"):
        centered_clipping_weights(D, np.zeros(2), tau=1.0, iterations=1)
    with pytest.raises(RuleError, match=r"centre_sq_dist >= 0"):
        centered_clipping_weights(D, -np.ones(3), tau=1.0, iterations=1)
    with pytest.raises(RuleError, match=r"centre of shape"):
        centered_clipping(np.zeros((3, 2)), np.zeros(3), tau=1.0, iterations=1)


# -------------------------------------------------------------------------------- NNM


@FAST
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 9), d=st.integers(1, 5))
def test_nnm_mixed_gram_and_distances_from_D(seed: int, n: int, d: int) -> None:
    rng = _rng(seed)
    f = int(rng.integers(0, (n - 1) // 2 + 1))
    X = rng.integers(-30, 30, (n, d))
    D = sq_distances_int(X)
    A = nnm_matrix(D, f)
    np.testing.assert_allclose(A.sum(axis=1), 1.0)
    assert np.all(np.diagonal(A) == 1.0 / (n - f))
    Y = A @ X
    np.testing.assert_allclose(mixed_gram(A, X @ X.T), Y @ Y.T, atol=1e-8)
    Dy = mixed_distances(D, A)
    assert np.array_equal(Dy, Dy.T) and np.all(np.diagonal(Dy) == 0)
    np.testing.assert_allclose(Dy, sq_distances(Y), atol=1e-8)
    total, k = nnm_encoded(X, f)
    np.testing.assert_array_equal(sq_distances_int(total), mixed_distances_int(D, f))
    np.testing.assert_allclose(total / k, nnm(X.astype(np.float64), f), atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_nnm_permutation_equivariant(seed: int) -> None:
    rng = _rng(seed)
    X = rng.normal(size=(9, 3))
    perm = rng.permutation(9)
    D = sq_distances(X)
    A = nnm_matrix(D, 3)
    np.testing.assert_array_equal(nnm_matrix(D[np.ix_(perm, perm)], 3), A[np.ix_(perm, perm)])
    np.testing.assert_allclose(nnm(X[perm], 3), nnm(X, 3)[perm], atol=1e-12)


def test_nnm_ties_to_lower_index_and_self_first() -> None:
    # 0 and 1 coincide; 2 and 3 are equally far from 0 and 1
    X = np.array([[0.0], [0.0], [1.0], [-1.0], [5.0]])
    nb = nnm_neighbours(sq_distances(X), 2)
    assert nb.tolist() == [[0, 1, 2], [1, 0, 2], [2, 0, 1], [3, 0, 1], [4, 2, 0]]


def test_nnm_then_krum_selects_on_exact_mixed_distances() -> None:
    rng = _rng(9)
    X = rng.integers(-10, 10, (9, 4))
    X[0] += 1000
    f = 2
    Dm = mixed_distances_int(sq_distances_int(X), f)
    total, _ = nnm_encoded(X, f)
    assert krum(Dm, f) == krum(sq_distances_int(total), f)


def test_nnm_bound() -> None:
    with pytest.raises(RuleError, match=r"nnm needs n >= 2f\+1, got n=4, f=2"):
        nnm_matrix(np.zeros((4, 4)), 2)
    with pytest.raises(RuleError, match="integer D"):
        mixed_distances_int(np.zeros((3, 3)), 1)
    with pytest.raises(RuleError, match="sum to 1"):
        mixed_distances(np.zeros((3, 3)), np.eye(3) * 0.5)
    with pytest.raises(RuleError, match=r"shape \(n, n\) = \(3, 3\)"):
        mixed_distances(np.zeros((3, 3)), np.eye(2))
