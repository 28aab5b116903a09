"""Krum / Multi-Krum selection computed inside 2PC (issue #18, core primitive only).

Each party holds its additive share (Z_2^64, int64) of the n×n squared-distance matrix
D, with entries inside the validation headroom so that every difference taken here is
exact (no wrap). Everything below uses :mod:`secagg.compare` (``Comparator.msb``):

1. Krum scores: the f+1 largest off-diagonal entries of each row are bubbled to the
   row's end (f+1 bubble passes, each compare-exchange one batched ``msb`` over all
   rows, moving ``max(a - b, 0) = (a - b)·[b - a < 0]``); the score is the sum of the
   n-f-2 entries left in front (the same neighbours as :func:`secagg.rules.krum_scores`).
2. Ranks by ``(score, index)``: one comparison per unordered pair i<j,
   ``c_ij = [s_j - s_i < 0]`` (j strictly below i, so j precedes i), and i precedes j
   otherwise (ties to the lower index); ``rank_i = Σ_{j>i} c_ij + Σ_{j<i} (1 - c_ji)``.
3. The key ``rank_i - m`` is negative exactly for the m selected workers.

Not wired to the servers yet (service/proto/CLI wait for the restructure).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from secagg import compare

__all__ = ["krum_scores_shared", "select_keys", "open_selection", "weighted_sum", "select_party"]


def _compare_exchange(cmp: compare.Comparator, lo: np.ndarray, hi: np.ndarray) -> None:
    """In place: ``lo <- min(lo, hi)``, ``hi <- max(lo, hi)`` on shares (one msb call)."""
    diff = lo - hi
    _, (moved,) = cmp.msb(-diff, [diff], bits=False)
    lo -= moved
    hi += moved


def krum_scores_shared(cmp: compare.Comparator, d_share: np.ndarray, f: int) -> np.ndarray:
    """This party's shares of the Krum scores (n-f-2 nearest neighbours) of all rows.

    Parameters
    ----------
    cmp : Comparator
        This party's end of the comparison engine.
    d_share : numpy.ndarray
        n×n int64, this party's additive share of D.
    f : int
        Byzantine bound; needs ``n >= 2f + 3``.
    """
    n = d_share.shape[0]
    if d_share.shape != (n, n) or n < 2 * f + 3 or f < 0:
        raise ValueError(f"need an n×n share with n >= 2f + 3, got shape {d_share.shape}, f={f}")
    mask = ~np.eye(n, dtype=bool)
    # columns are independent arrays so a compare-exchange works on whole columns
    cols = [c.copy() for c in d_share[mask].reshape(n, n - 1).T]
    length = n - 1
    for _ in range(f + 1):  # each pass bubbles the row's largest remaining entry back
        for j in range(length - 1):
            _compare_exchange(cmp, cols[j], cols[j + 1])
        length -= 1
    keep = n - f - 2
    return np.sum(np.stack(cols[:keep]), axis=0, dtype=np.int64)


def select_keys(cmp: compare.Comparator, rank: int, scores: np.ndarray, m: int) -> np.ndarray:
    """Shares of ``key_i = rank_i - m`` (negative iff worker i is among the m picks)."""
    n = len(scores)
    if not 1 <= m <= n:
        raise ValueError(f"m must be in [1, {n}], got {m}")
    iu, ju = np.triu_indices(n, k=1)
    c, _ = cmp.msb(scores[ju] - scores[iu])  # shares of [s_j < s_i]
    assert c is not None
    ranks = np.zeros(n, dtype=np.int64)
    np.add.at(ranks, iu, c)
    np.add.at(ranks, ju, -c)
    if rank == 0:
        ranks += np.bincount(ju, minlength=n).astype(np.int64) - m
    return ranks


def open_selection(session: Any, cmp: compare.Comparator, keys: np.ndarray) -> list[int]:
    """Open the selected set and its order (only ranks of picked workers), both parties."""
    n = len(keys)
    b, (brank,) = cmp.msb(keys, [keys])
    assert b is not None
    opened = session._open(torch.from_numpy(np.concatenate([b, brank]))).numpy()
    bits, bk = opened[:n], opened[n:]
    picked = [i for i in range(n) if bits[i] == 1]
    # b_i·(rank_i - m) = rank_i - m for picks: sorting by it gives the pick order
    return sorted(picked, key=lambda i: int(bk[i]))


def weighted_sum(session: Any, cmp: compare.Comparator, x_share: np.ndarray,
                 keys: np.ndarray) -> np.ndarray:  # fmt: skip
    """Open only ``Σ_i [key_i < 0]·x_i`` (n×d int64 shares in, d int64 ring values out).

    Correctness-first: the bit×value product uses the comparator's msb·y (n·d
    comparisons), not yet the dealer-assisted δ = b - c trick of the issue.
    """
    n, d = x_share.shape
    big = np.repeat(keys, d)
    _, (prod,) = cmp.msb(big, [np.ascontiguousarray(x_share, dtype=np.int64).reshape(-1)],
                         bits=False)  # fmt: skip
    total = prod.reshape(n, d).sum(axis=0, dtype=np.int64)
    return session._open(torch.from_numpy(total)).numpy()


def select_party(
    session: Any, d_share: np.ndarray, f: int, m: int, x_share: np.ndarray | None = None
) -> tuple[list[int], np.ndarray | None, Any]:
    """MpcCluster entry: picks (opened), optionally the opened weighted sum, and stats."""
    cmp = session.comparator()
    scores = krum_scores_shared(cmp, d_share, f)
    keys = select_keys(cmp, session.rank, scores, m)
    picks = open_selection(session, cmp, keys)
    total = None if x_share is None else weighted_sum(session, cmp, x_share, keys)
    return picks, total, cmp.stats
