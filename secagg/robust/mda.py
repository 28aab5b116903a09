"""Minimum-diameter averaging (MDA), the seeds' "Brute".

Source: ``payberah-2020-robust-learning-slides.txt`` ("Brute": ``n >= 2f + 1``,
``R = {X ⊂ Q : |X| = n - f}``, the subset of smallest diameter
``max_{G_i, G_j ∈ X} ||G_i - G_j||``, output its average); the name MDA is from
El Mhamdi, Guerraoui, Rouault, "Distributed Momentum for Byzantine-resilient Stochastic
Gradient Descent", ICLR 2021, and the slides' LiuBei server (``MDA(grads)``).
"""

from __future__ import annotations

import itertools
from math import comb
from typing import Final

import numpy as np

from secagg.reference import sq_distances, sq_distances_int
from secagg.robust._common import (
    EncodedSum,
    RuleError,
    check_distances,
    check_encoded,
    check_int,
    check_int_headroom,
    check_majority,
    check_vectors,
)

__all__ = ["MDA_MAX_SUBSETS", "brute", "brute_select", "mda", "mda_encoded", "mda_select"]

MDA_MAX_SUBSETS: Final[int] = 1_000_000
"""Default limit on C(n, f), the number of candidate subsets examined exhaustively
(measured: C(26, 6) = 230230 subsets took 2.8 s on one core here, so 10^6 take ~10 s)."""

_CHUNK: Final[int] = 4096


def mda_select(D: np.ndarray, f: int, *, max_subsets: int = MDA_MAX_SUBSETS) -> list[int]:
    """The (n - f)-subset of smallest diameter, ascending indices.

    Diameter of S: ``max_{i, j ∈ S} D[i, j]`` (squared distances order subsets as the
    seed's distances do). All ``C(n, n - f) = C(n, f)`` subsets are examined; ties go to
    the lexicographically smallest subset (as ascending index tuples). Requires
    ``n >= 2f + 1`` and ``C(n, f) <= max_subsets``.

    Parameters
    ----------
    D : np.ndarray
        n×n squared distances, int64 (compared exactly) or float64, exactly symmetric,
        zero diagonal.
    f : int
        Workers left out, ``f >= 0``.
    max_subsets : int
        Refuse above this many subsets; default :data:`MDA_MAX_SUBSETS`.

    Raises
    ------
    RuleError
        If D is malformed, f is not an integer >= 0, ``n < 2f + 1`` or
        ``C(n, f) > max_subsets``.
    """
    fn = "mda"
    arr = check_distances(D, fn)
    n = arr.shape[0]
    fi = check_majority(n, f, fn)
    limit = check_int(max_subsets, "max_subsets", fn)
    count = comb(n, fi)
    if count > limit:
        raise RuleError(
            f"{fn} examines all C(n, f) subsets and needs C(n, f) <= {limit}, got "
            f"C({n}, {fi}) = {count}: lower f or n, raise max_subsets, or pick another rule"
        )
    k = n - fi
    if k == 1:
        return [0]
    combos = itertools.combinations(range(n), k)
    rows, cols = np.triu_indices(k, 1)
    best: tuple[int, ...] | None = None
    best_diam = None
    # itertools yields subsets in lexicographic order: keeping only strictly smaller
    # diameters across chunks, and argmin's first minimum within one, picks the
    # lexicographically smallest subset on ties
    while chunk := list(itertools.islice(combos, _CHUNK)):
        idx = np.asarray(chunk)
        diam = arr[idx[:, rows], idx[:, cols]].max(axis=1)
        pos = int(np.argmin(diam))
        if best_diam is None or diam[pos] < best_diam:
            best, best_diam = chunk[pos], diam[pos]
    assert best is not None
    return list(best)


def mda(X: np.ndarray, f: int, *, max_subsets: int = MDA_MAX_SUBSETS) -> np.ndarray:
    """Mean of the rows :func:`mda_select` picks on X's squared distances; float64 (d,)."""
    arr = check_vectors(X, "mda")
    return arr[mda_select(sq_distances(arr), f, max_subsets=max_subsets)].mean(axis=0)


def mda_encoded(Xint: np.ndarray, f: int, *, max_subsets: int = MDA_MAX_SUBSETS) -> EncodedSum:
    """:func:`mda` on encoded int64 vectors: selection on exact int64 distances, the
    exact sum of the selected rows and ``n - f``.

    Raises
    ------
    RuleError
        As :func:`mda_select`, or if the sum of ``n - f`` rows could exceed int64.
    """
    fn = "mda"
    arr = check_encoded(Xint, fn)
    sel = mda_select(sq_distances_int(arr), f, max_subsets=max_subsets)
    check_int_headroom(arr[sel], len(sel), fn)
    return EncodedSum(arr[sel].sum(axis=0), len(sel))


# the seeds' name for the rule (payberah-2020-robust-learning-slides.txt, "Brute")
brute = mda
brute_select = mda_select
