"""ByzFL 0.0.11 (EPFL) as an independent oracle for the robust rules.

The same float64 inputs go through ByzFL's aggregators and ours. Where the definitions
differ on purpose, the test states the difference and checks ours against the formula
adjusted for it:

- median, even n: ByzFL takes the mean of the two middle values (numpy's median); ours
  takes the lower middle (as Bulyan's stage). ByzFL's equals ``(ours(X) - ours(-X)) / 2``
  since the upper middle of X is minus the lower middle of -X.
- meamed, even n: the centre differs as for the median; ours is checked against the
  definition with the lower middle as centre.
- Krum / Multi-Krum: ByzFL scores with n-f-1 neighbours (mean instead of sum, which
  orders alike); the seeds' and our contract is n-f-2. So ByzFL's Krum(f+1) is our
  krum(f), and ByzFL's MultiKrum(f+1), which averages the n-(f+1) best, is our
  multi_krum(f, m=n-f-1) (our default m is n-f-2).
- geometric median: ByzFL starts Weiszfeld at 0, ours at the mean (0 is not an affine
  combination of the inputs); ByzFL on ``X - mean`` plus the mean is ours, step by step.
- centered clipping: ByzFL starts at 0 and its ``m=`` argument raises TypeError for every
  value (an ``or`` where ``and`` was meant), so a centre m is checked by translation:
  ByzFL on ``X - m`` plus m.

ByzFL is imported without running ``byzfl/__init__.py``, which imports its training
framework (torchvision, seaborn; not installed, see requirements/oracle.txt): only its
aggregator modules are loaded, and they need numpy, torch and scipy.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import types
from typing import Any

import numpy as np
import pytest

from secagg.reference import sq_distances
from secagg.robust import (
    centered_clipping,
    geometric_median,
    geometric_median_weights,
    mda,
    meamed,
    median,
    nnm,
    trimmed_mean,
)
from secagg.rules import krum, krum_scores, multi_krum

BYZFL_VERSION = "0.0.11"


def _load_byzfl() -> tuple[Any, Any]:
    try:
        version = importlib.metadata.version("byzfl")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("byzfl is not installed: bash scripts/setup.sh installs it")
    if version != BYZFL_VERSION:
        pytest.skip(f"byzfl {version} installed, these checks are for {BYZFL_VERSION}")
    if "byzfl" not in sys.modules:
        spec = importlib.util.find_spec("byzfl")  # locates the package without running it
        assert spec is not None and spec.submodule_search_locations is not None
        # a bare parent package, so that importing the aggregator submodules does not
        # execute byzfl/__init__.py (which imports torchvision and seaborn)
        pkg = types.ModuleType("byzfl")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["byzfl"] = pkg
    agg = importlib.import_module("byzfl.aggregators.aggregators")
    pre = importlib.import_module("byzfl.aggregators.preaggregators")
    return agg, pre


@pytest.fixture(scope="module")
def byzfl() -> types.SimpleNamespace:
    agg, pre = _load_byzfl()
    return types.SimpleNamespace(agg=agg, pre=pre)


def _cases() -> list[tuple[np.ndarray, int]]:
    """Continuous random inputs (tie-free with probability 1) for 3 <= n <= 11, every
    0 <= f < n and a random d in [1, 6], with the first f rows pushed far away; each
    test keeps the (n, f) its rule accepts."""
    rng = np.random.default_rng(2024)
    out = []
    for n in range(3, 12):
        for f in range(n):
            d = int(rng.integers(1, 7))
            X = rng.normal(size=(n, d))
            X[:f] += 20.0 * rng.normal(size=(f, d))
            out.append((X, f))
    return out


def _majority_cases() -> list[tuple[np.ndarray, int]]:
    return [(X, f) for X, f in _cases() if X.shape[0] >= 2 * f + 1]


def _krum_cases() -> list[tuple[np.ndarray, int]]:
    return [(X, f) for X, f in _cases() if X.shape[0] >= 2 * f + 3]


def test_median(byzfl: types.SimpleNamespace) -> None:
    for X, f in _majority_cases():
        theirs = byzfl.agg.Median()(X)
        if X.shape[0] % 2:
            np.testing.assert_array_equal(median(X, f), theirs)
        else:
            # ByzFL: mean of the two middles; ours: the lower middle
            np.testing.assert_allclose((median(X, f) - median(-X, f)) / 2, theirs, rtol=1e-15)
            np.testing.assert_array_equal(median(X, f), np.sort(X, axis=0)[X.shape[0] // 2 - 1])


def test_trimmed_mean(byzfl: types.SimpleNamespace) -> None:
    for X, f in _majority_cases():
        np.testing.assert_allclose(trimmed_mean(X, f), byzfl.agg.TrMean(f)(X), rtol=1e-12)


def _closest_mean(col: np.ndarray, centre: float, k: int) -> float:
    return float(np.mean(sorted(col, key=lambda v: (abs(v - centre), v))[:k]))


def test_meamed(byzfl: types.SimpleNamespace) -> None:
    for X, f in _majority_cases():
        n = X.shape[0]
        theirs = byzfl.agg.Meamed(f)(X)
        ours = meamed(X, f)
        if n % 2:
            np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
        else:
            # different centre for even n: ByzFL's is the mean of the middles, ours the
            # lower middle; each matches the definition with its own centre
            srt = np.sort(X, axis=0)
            for k in range(X.shape[1]):
                lo, hi = srt[n // 2 - 1, k], srt[n // 2, k]
                assert ours[k] == pytest.approx(_closest_mean(X[:, k], lo, n - f), abs=1e-12)
                assert theirs[k] == pytest.approx(
                    _closest_mean(X[:, k], (lo + hi) / 2, n - f), abs=1e-12
                )


@pytest.mark.parametrize("T", [1, 2, 5])
def test_geometric_median_step_by_step(byzfl: types.SimpleNamespace, T: int) -> None:
    for X, f in _majority_cases():
        centre = X.mean(axis=0)
        theirs = byzfl.agg.GeometricMedian(nu=0.1, T=T)(X - centre) + centre
        # tol tiny: T steps as ByzFL runs, or fewer if a step is exactly 0 (a fixed point,
        # where further steps change nothing)
        res = geometric_median_weights(sq_distances(X), f, nu=0.1, tol=1e-300, max_iter=T)
        np.testing.assert_allclose(res.weights @ X, theirs, rtol=1e-9, atol=1e-9)


def test_geometric_median_converged(byzfl: types.SimpleNamespace) -> None:
    """Both reach a minimiser of sum ||x_i - z||; it is unique unless the points are
    collinear (d = 1 with even n has a whole segment of them), so compare objectives
    always and points for d >= 2."""
    for X, f in _majority_cases():
        theirs = byzfl.agg.GeometricMedian(nu=1e-6, T=500)(X)
        ours = geometric_median(X, f, nu=1e-6)

        def objective(z: np.ndarray, X: np.ndarray = X) -> float:
            return float(np.linalg.norm(X - z, axis=1).sum())

        assert objective(ours) == pytest.approx(objective(theirs), rel=1e-9, abs=1e-9)
        if X.shape[1] >= 2:
            np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_mda(byzfl: types.SimpleNamespace) -> None:
    # ByzFL compares unsquared distances: the same order on tie-free input
    for X, f in _majority_cases():
        np.testing.assert_allclose(mda(X, f), byzfl.agg.MDA(f)(X), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("tau", "L"), [(0.5, 1), (2.0, 3), (100.0, 1), (0.1, 10)])
def test_centered_clipping(byzfl: types.SimpleNamespace, tau: float, L: int) -> None:
    rng = np.random.default_rng(11)
    for X, _ in _cases():
        d = X.shape[1]
        zero = np.zeros(d)
        theirs = byzfl.agg.CenteredClipping(L=L, tau=tau)(X)
        ours = centered_clipping(X, zero, tau=tau, iterations=L)
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
        m = rng.normal(size=d)
        theirs_m = byzfl.agg.CenteredClipping(L=L, tau=tau)(X - m) + m
        np.testing.assert_allclose(
            centered_clipping(X, m, tau=tau, iterations=L), theirs_m, rtol=1e-10, atol=1e-12
        )


def test_nnm(byzfl: types.SimpleNamespace) -> None:
    for X, f in _majority_cases():
        np.testing.assert_allclose(nnm(X, f), byzfl.pre.NNM(f)(X), rtol=1e-12, atol=1e-12)


def test_krum(byzfl: types.SimpleNamespace) -> None:
    for X, f in _krum_cases():
        n = X.shape[0]
        D = sq_distances(X)
        # ByzFL's own definition, n-f-1 neighbours, through our scoring
        theirs = byzfl.agg.Krum(f)(X)
        winner = int(np.argmin(krum_scores(D, f, neighbours=n - f - 1)))
        np.testing.assert_array_equal(X[winner], theirs)
        # the seeds' n-f-2 neighbours: ByzFL's Krum(f+1)
        np.testing.assert_array_equal(X[krum(D, f)], byzfl.agg.Krum(f + 1)(X))


def test_multi_krum(byzfl: types.SimpleNamespace) -> None:
    for X, f in _krum_cases():
        n = X.shape[0]
        D = sq_distances(X)
        # ByzFL: the n-f best by n-f-1 neighbours
        best = np.argsort(krum_scores(D, f, neighbours=n - f - 1), kind="stable")[: n - f]
        np.testing.assert_allclose(X[best].mean(axis=0), byzfl.agg.MultiKrum(f)(X), rtol=1e-12)
        # the seeds' n-f-2 neighbours with m = n-f-1: ByzFL's MultiKrum(f+1)
        sel = multi_krum(D, f, m=n - f - 1)
        np.testing.assert_allclose(
            X[sel].mean(axis=0), byzfl.agg.MultiKrum(f + 1)(X), rtol=1e-12, atol=1e-15
        )
