"""Coordinate-wise (marginal) median.

Source: ``payberah-2020-robust-learning-slides.txt`` ("Median": ``n >= 2f + 1``,
``median(x_1, ..., x_n) = argmin_x sum_i |x_i - x|`` and the marginal median
``MarMed(G_1, ..., G_n)`` taking it per coordinate).
"""

from __future__ import annotations

import numpy as np

from secagg.robust._common import (
    EncodedSum,
    check_encoded,
    check_majority,
    check_vectors,
)

__all__ = ["lower_median_index", "median", "median_encoded"]


def lower_median_index(n: int) -> int:
    """Sorted position ``(n - 1) // 2`` of the median: the lower middle when n is even.

    For even n every value between the two middles minimises ``sum |x_i - x|``; the
    seeds leave the choice open, and this fixes the lower one, as Bulyan's second stage
    does (:func:`secagg.rules.bulyan_coordinate`), so it is one of the inputs and exact
    on encoded integers.
    """
    return (n - 1) // 2


def _lower_median(arr: np.ndarray) -> np.ndarray:
    return np.sort(arr, axis=0)[lower_median_index(arr.shape[0])]


def median(X: np.ndarray, f: int = 0) -> np.ndarray:
    """Coordinate-wise median of the rows of X, the lower middle value for even n.

    ``out[k] = sort(X[:, k])[(n - 1) // 2]``, i.e. a minimiser of
    ``sum_i |X[i, k] - x|`` (seed: the marginal median of
    ``payberah-2020-robust-learning-slides.txt``), requiring ``n >= 2f + 1``.

    Parameters
    ----------
    X : np.ndarray
        n×d, finite, any real dtype (computed in float64).
    f : int
        Assumed number of Byzantine workers, ``f >= 0``.

    Returns
    -------
    np.ndarray
        float64 (d,).

    Raises
    ------
    RuleError
        If X is not a finite 2-D array, f is not an integer >= 0 or ``n < 2f + 1``.
    """
    fn = "median"
    arr = check_vectors(X, fn)
    check_majority(arr.shape[0], f, fn)
    return _lower_median(arr)


def median_encoded(Xint: np.ndarray, f: int = 0) -> EncodedSum:
    """:func:`median` on encoded int64 vectors, exactly: ``EncodedSum(row, 1)``.

    The median is one of the inputs, so it needs no arithmetic and cannot overflow.

    Raises
    ------
    RuleError
        If Xint is not a 2-D signed-integer array, f is not an integer >= 0 or
        ``n < 2f + 1``.
    """
    fn = "median"
    arr = check_encoded(Xint, fn)
    check_majority(arr.shape[0], f, fn)
    return EncodedSum(_lower_median(arr), 1)
