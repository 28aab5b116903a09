"""Mean around the median (MeaMed), coordinate-wise.

Source: Xie, Koyejo, Gupta, "Generalized Byzantine-tolerant SGD", 2018 (arXiv:1802.10116),
the rule ``meamed``; it is the gather step of LiuBei in
``payberah-2020-robust-learning-slides.txt`` ("MeaMed(models)").
"""

from __future__ import annotations

import numpy as np

from secagg.robust._common import (
    EncodedSum,
    check_encoded,
    check_int_headroom,
    check_majority,
    check_vectors,
)
from secagg.robust.median import lower_median_index

__all__ = ["meamed", "meamed_encoded"]


def _prefix(a: np.ndarray) -> np.ndarray:
    """Prefix sums along axis 0 with a leading zero row: window sums are differences."""
    out = np.zeros((a.shape[0] + 1, *a.shape[1:]), dtype=a.dtype)
    np.cumsum(a, axis=0, out=out[1:])
    return out


def _window_sum(arr: np.ndarray, k: int) -> np.ndarray:
    n, d = arr.shape
    srt = np.sort(arr, axis=0)
    mid = lower_median_index(n)
    cost = _prefix(np.abs(srt - srt[mid]))
    vals = _prefix(srt)
    # the k values closest to the median are k consecutive sorted values around mid
    # (|x_i - med| is non-increasing up to mid and non-decreasing after it)
    starts = np.arange(max(0, mid - k + 1), min(mid, n - k) + 1)
    costs = cost[starts + k] - cost[starts]
    # argmin takes the first minimum: the lowest start, i.e. the smaller values, on ties
    best = starts[np.argmin(costs, axis=0)]
    cols = np.arange(d)
    return vals[best + k, cols] - vals[best, cols]


def meamed(X: np.ndarray, f: int) -> np.ndarray:
    """Per coordinate, the mean of the ``n - f`` values closest to the median.

    With ``med_k`` the lower median of coordinate k (:func:`secagg.robust.median.median`)
    and ``k' = n - f``: ``out[k] = (1 / k') * sum of the k' values x in X[:, k] with the
    smallest |x - med_k|`` (Xie et al. 2018), requiring ``n >= 2f + 1``.

    Ties (two values equally far from the median on either side, only one of which fits)
    go to the smaller values: the k' closest values are k' consecutive sorted values
    containing the median, and among such windows with the smallest total distance the
    lowest one is taken. This is the window rule of Bulyan's second stage
    (:func:`secagg.rules.bulyan_coordinate`) with ``k'`` in place of β, so a secure
    implementation can reuse its sorting/selection machinery.

    Parameters
    ----------
    X : np.ndarray
        n×d, finite, any real dtype (computed in float64; the window comparison uses the
        float64 window costs).
    f : int
        Values discarded per coordinate, ``f >= 0``.

    Returns
    -------
    np.ndarray
        float64 (d,).

    Raises
    ------
    RuleError
        If X is not a finite 2-D array, f is not an integer >= 0 or ``n < 2f + 1``.
    """
    fn = "meamed"
    arr = check_vectors(X, fn)
    n = arr.shape[0]
    fi = check_majority(n, f, fn)
    return _window_sum(arr, n - fi) / (n - fi)


def meamed_encoded(Xint: np.ndarray, f: int) -> EncodedSum:
    """:func:`meamed` on encoded int64 vectors: the exact window sum and ``n - f``.

    Window costs are compared exactly in int64.

    Raises
    ------
    RuleError
        As :func:`meamed`, or if ``n * max(|x|, max - min)`` exceeds int64 (the prefix
        sums of values and of distances to the median are bounded by it).
    """
    fn = "meamed"
    arr = check_encoded(Xint, fn)
    n = arr.shape[0]
    fi = check_majority(n, f, fn)
    check_int_headroom(arr, n, fn)
    return EncodedSum(_window_sum(arr, n - fi), n - fi)
