"""Coordinate-wise trimmed mean.

Source: Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates", ICML 2018 (the coordinate-wise trimmed mean with
trimming fraction β = f/n).
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

__all__ = ["trimmed_mean", "trimmed_mean_encoded"]


def _trimmed_sum(arr: np.ndarray, f: int) -> np.ndarray:
    n = arr.shape[0]
    return np.sort(arr, axis=0)[f : n - f].sum(axis=0)


def trimmed_mean(X: np.ndarray, f: int) -> np.ndarray:
    """Per coordinate, drop the f smallest and f largest values and average the rest.

    ``out[k] = (1 / (n - 2f)) * sum_{i=f}^{n-f-1} sort(X[:, k])[i]`` (Yin et al., ICML
    2018), requiring ``n >= 2f + 1`` so that at least one value remains. Equal values
    need no tie rule: which copy is dropped does not change the sum.

    Parameters
    ----------
    X : np.ndarray
        n×d, finite, any real dtype (computed in float64).
    f : int
        Values trimmed at each end, ``f >= 0``.

    Returns
    -------
    np.ndarray
        float64 (d,).

    Raises
    ------
    RuleError
        If X is not a finite 2-D array, f is not an integer >= 0 or ``n < 2f + 1``.
    """
    fn = "trimmed-mean"
    arr = check_vectors(X, fn)
    n = arr.shape[0]
    fi = check_majority(n, f, fn)
    return _trimmed_sum(arr, fi) / (n - 2 * fi)


def trimmed_mean_encoded(Xint: np.ndarray, f: int) -> EncodedSum:
    """:func:`trimmed_mean` on encoded int64 vectors: the exact sum and ``n - 2f``.

    Raises
    ------
    RuleError
        As :func:`trimmed_mean`, or if a sum of ``n - 2f`` values could exceed int64.
    """
    fn = "trimmed-mean"
    arr = check_encoded(Xint, fn)
    n = arr.shape[0]
    fi = check_majority(n, f, fn)
    check_int_headroom(arr, n - 2 * fi, fn)
    return EncodedSum(_trimmed_sum(arr, fi), n - 2 * fi)
