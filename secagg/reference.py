"""Plaintext reference aggregators: the oracle the secure protocol is tested against.

:func:`aggregate` works on raw float vectors. :func:`aggregate_encoded` works on
already-encoded int64 fixed-point vectors with exact integer distances and sums, so the
secure protocol's revealed sums can be compared with it bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from secagg.rules import bulyan_beta, bulyan_window_sum, select

__all__ = [
    "ReferenceResult",
    "aggregate",
    "aggregate_encoded",
    "sq_distances",
    "sq_distances_int",
]

_INT64_MAX: Final[int] = int(np.iinfo(np.int64).max)


@dataclass(frozen=True)
class ReferenceResult:
    """Outcome of a reference aggregation; the arrays are read-only.

    Attributes
    ----------
    aggregate : np.ndarray
        float64 (d,). For :func:`aggregate`, in the input's units; for
        :func:`aggregate_encoded`, ``encoded_sum / divisor`` still in encoded units.
    selected : list[int]
        Selected workers in the rule's pick order: all for mean, one for Krum,
        lowest score first for Multi-Krum, Bulyan's recursive picks in order.
    distances : np.ndarray
        The n×n squared-distance matrix the selection was made on (float64, or exact
        int64 for encoded input).
    divisor : int
        How many values each coordinate of the aggregate averages: n (mean), 1 (Krum),
        m (Multi-Krum) or β (Bulyan).
    encoded_sum : np.ndarray or None
        For encoded input only: the exact int64 sum the aggregate divides, i.e. the sum
        of the selected rows, or for Bulyan the per-coordinate window sum.
    """

    aggregate: np.ndarray
    selected: list[int]
    distances: np.ndarray
    divisor: int
    encoded_sum: np.ndarray | None = None


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _check_matrix(X: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n workers × d), got shape {arr.shape}")
    if arr.shape[0] < 1:
        raise ValueError(f"{name} needs n >= 1 workers, got n={arr.shape[0]}")
    return arr


def sq_distances(X: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances ``D[i, j] = ||X_i - X_j||^2`` in float64.

    Each pair is computed once from the row difference and mirrored, so D is exactly
    symmetric with an exactly zero diagonal (Krum's tie rule depends on it). Rows are
    processed one at a time to keep memory at O(n·d).
    """
    arr = _check_matrix(X, "X").astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError("X must be finite, got a NaN or infinity")
    n = arr.shape[0]
    D = np.zeros((n, n), dtype=np.float64)
    for i in range(n - 1):
        diff = arr[i + 1 :] - arr[i]
        row = np.einsum("ij,ij->i", diff, diff)
        D[i, i + 1 :] = row
        D[i + 1 :, i] = row
    return D


def _check_encoded(Xint: np.ndarray) -> np.ndarray:
    arr = _check_matrix(Xint, "Xint")
    if arr.dtype.kind != "i":
        raise ValueError(f"Xint must be a signed integer (int64) array, got {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def sq_distances_int(Xint: np.ndarray) -> np.ndarray:
    """Exact pairwise squared distances of integer vectors, as int64.

    Uses int64 arithmetic when ``d * (max - min)^2`` proves nothing can wrap, and Python
    integers otherwise; raises if a distance itself does not fit in int64 (the secure
    protocol computes in Z_2^64 and would wrap there).
    """
    arr = _check_encoded(Xint)
    n, d = arr.shape
    D = np.zeros((n, n), dtype=np.int64)
    if arr.size == 0:
        return D
    spread = int(arr.max()) - int(arr.min())
    # the exact bound decides between fast int64 and slow exact object arithmetic
    safe = d * spread * spread <= _INT64_MAX
    work = arr if safe else arr.astype(object)
    for i in range(n - 1):
        diff = work[i + 1 :] - work[i]
        row = (diff * diff).sum(axis=1)
        if not safe:
            big = max(int(v) for v in row)
            if big > _INT64_MAX:
                raise ValueError(
                    f"squared distance {big} from worker {i} exceeds 2^63-1: "
                    "use a smaller fixed-point scale or clip the inputs"
                )
            row = np.array([int(v) for v in row], dtype=np.int64)
        D[i, i + 1 :] = row
        D[i + 1 :, i] = row
    return D


def aggregate(X: np.ndarray, rule: str, f: int, m: int | None = None) -> ReferenceResult:
    """Aggregate raw vectors (rows of X) with ``rule`` from :data:`secagg.rules.RULES`.

    Mean, Krum and Multi-Krum average the selected rows (Krum returns its single row);
    Bulyan applies :func:`secagg.rules.bulyan_coordinate` to the picked rows.
    """
    arr = _check_matrix(X, "X").astype(np.float64, copy=False)
    D = sq_distances(arr)
    selected = select(rule, D, f, m)
    if rule == "bulyan":
        beta = bulyan_beta(arr.shape[0], f)
        total = bulyan_window_sum(arr[selected], f)
        agg, divisor = total / beta, beta
    else:
        agg, divisor = arr[selected].mean(axis=0), len(selected)
    return ReferenceResult(
        aggregate=_readonly(np.asarray(agg, dtype=np.float64)),
        selected=selected,
        distances=_readonly(D),
        divisor=divisor,
    )


def aggregate_encoded(Xint: np.ndarray, rule: str, f: int, m: int | None = None) -> ReferenceResult:
    """Aggregate int64 fixed-point vectors exactly.

    The selection runs on :func:`sq_distances_int` (exact int64 distances);
    ``encoded_sum`` is the exact int64 sum of the selected rows (Bulyan: the window sum
    of :func:`secagg.rules.bulyan_window_sum`) and ``aggregate = encoded_sum / divisor``
    in float64, still in encoded units: decoding (dividing by the fixed-point scale) is
    the caller's job, as this module does not know the scale.
    """
    arr = _check_encoded(Xint)
    D = sq_distances_int(arr)
    selected = select(rule, D, f, m)
    if rule == "bulyan":
        divisor = bulyan_beta(arr.shape[0], f)
        total = bulyan_window_sum(arr[selected], f)
    else:
        divisor = len(selected)
        rows = arr[selected]
        if rows.size:
            peak = max(abs(int(rows.min())), abs(int(rows.max())))
            if peak * divisor > _INT64_MAX:
                raise ValueError(f"sum of {divisor} rows with |x| up to {peak} may exceed 2^63-1")
        total = rows.sum(axis=0)
    return ReferenceResult(
        aggregate=_readonly(total.astype(np.float64) / divisor),
        selected=selected,
        distances=_readonly(D),
        divisor=divisor,
        encoded_sum=_readonly(np.asarray(total, dtype=np.int64)),
    )
