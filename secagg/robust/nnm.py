"""Nearest-neighbour mixing (NNM), a pre-aggregation for any rule.

Source: Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by Mixing: A
Recipe for Optimal Byzantine ML under Heterogeneity", AISTATS 2023: each vector is
replaced by the mean of its ``n - f`` nearest neighbours (itself included), and any
robust rule is applied to the mixed vectors.

NNM is linear: ``Y = A X`` with the mixing matrix A a function of D alone. The mixed
vectors' Gram matrix is ``A G A^T`` and, because every row of A sums to 1, their squared
distances are a function of D too (:func:`nnm_distances`). So NNM followed by a distance
rule needs nothing beyond D; followed by a coordinate rule it needs the mixed vectors,
which each server computes locally from its shares once A is shared.
"""

from __future__ import annotations

import numpy as np

from secagg.reference import sq_distances, sq_distances_int
from secagg.robust._common import (
    INT64_MAX,
    EncodedSum,
    RuleError,
    check_distances,
    check_encoded,
    check_int_headroom,
    check_majority,
    check_vectors,
)

__all__ = [
    "mixed_distances",
    "mixed_distances_int",
    "mixed_gram",
    "nnm",
    "nnm_encoded",
    "nnm_matrix",
    "nnm_neighbours",
]


def nnm_neighbours(D: np.ndarray, f: int) -> np.ndarray:
    """Row i: the ``n - f`` nearest neighbours of worker i, itself first, int (n, n-f).

    Worker i itself is always included (even if another worker has the same vector);
    the other ``n - f - 1`` are the nearest by ``(D[i, j], j)``: ties to the lower index.
    Requires ``n >= 2f + 1`` (Allouah et al., AISTATS 2023, assume ``f < n/2``).

    Raises
    ------
    RuleError
        If D is malformed, f is not an integer >= 0 or ``n < 2f + 1``.
    """
    fn = "nnm"
    arr = check_distances(D, fn)
    n = arr.shape[0]
    fi = check_majority(n, f, fn)
    k = n - fi
    out = np.empty((n, k), dtype=np.int64)
    for i in range(n):
        others = np.delete(np.arange(n), i)
        # a stable sort on distance keeps equal distances in index order
        order = others[np.argsort(arr[i, others], kind="stable")]
        out[i, 0] = i
        out[i, 1:] = order[: k - 1]
    return out


def _indicator(nbrs: np.ndarray, n: int) -> np.ndarray:
    """B with ``B[i, j] = 1`` iff j is among i's neighbours; ``A = B / (n - f)``."""
    B = np.zeros((n, n), dtype=np.int64)
    np.put_along_axis(B, nbrs, 1, axis=1)
    return B


def nnm_matrix(D: np.ndarray, f: int) -> np.ndarray:
    """The mixing matrix A (float64 n×n): ``A[i, j] = 1/(n - f)`` for j among i's
    :func:`nnm_neighbours`, else 0; the mixed vectors are ``Y = A X``."""
    nbrs = nnm_neighbours(D, f)
    return _indicator(nbrs, nbrs.shape[0]) / nbrs.shape[1]


def mixed_gram(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Gram matrix of the mixed vectors, ``A G A^T`` (``G = X X^T``)."""
    return A @ G @ A.T


def _mixed_from_quadratic(M: np.ndarray) -> np.ndarray:
    # ||y_i - y_k||^2 = -1/2 (a_i - a_k)^T D (a_i - a_k) for rows summing to 1, and with
    # M = A D A^T that is -1/2 (M_ii + M_kk - 2 M_ik)
    diag = np.diagonal(M)
    return M - 0.5 * diag[:, None] - 0.5 * diag[None, :]


def mixed_distances(D: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Squared distances of the mixed vectors ``Y = A X`` from D (float64 n×n).

    ``D_Y = M - 1/2 diag(M) 1^T - 1/2 1 diag(M)^T`` with ``M = A D A^T``, valid for any A
    whose rows sum to 1. The result is mirrored from its upper triangle and its diagonal
    zeroed, so it is exactly symmetric as :mod:`secagg.rules` requires.

    Raises
    ------
    RuleError
        If D is malformed, A is not n×n or a row of A does not sum to 1.
    """
    fn = "nnm"
    Dm = check_distances(D, fn).astype(np.float64)
    Am = np.asarray(A, dtype=np.float64)
    n = Dm.shape[0]
    if Am.shape != (n, n):
        raise RuleError(f"{fn} needs a mixing matrix of shape (n, n) = ({n}, {n}), got {Am.shape}")
    if not np.allclose(Am.sum(axis=1), 1.0, rtol=0.0, atol=1e-12):
        raise RuleError(f"{fn} needs mixing-matrix rows that sum to 1 (affine combinations)")
    out = _mixed_from_quadratic(Am @ Dm @ Am.T)
    out = np.triu(out, 1)
    return np.maximum(out + out.T, 0.0)


def mixed_distances_int(D: np.ndarray, f: int) -> np.ndarray:
    """Exact ``(n - f)^2 · D_Y`` for integer D, as int64.

    With ``B = (n - f) A`` the 0/1 neighbour indicator, ``(n - f)^2 ||y_i - y_k||^2 =
    ||sum_j (B_ij - B_kj) x_j||^2``, an integer; computed here from D alone in exact
    integer arithmetic. Every selection rule is invariant to scaling D, so this is what
    NNM∘Krum/MDA select on.

    Raises
    ------
    RuleError
        If D is not an integer matrix, is malformed, ``n < 2f + 1``, or an entry exceeds
        int64.
    """
    fn = "nnm"
    arr = check_distances(D, fn)
    if arr.dtype.kind != "i":
        raise RuleError(f"{fn} needs an integer D for exact mixed distances, got {arr.dtype}")
    nbrs = nnm_neighbours(arr, f)
    n = arr.shape[0]
    B = _indicator(nbrs, n).astype(object)
    M = B @ arr.astype(object) @ B.T
    diag = np.diagonal(M)
    twice = 2 * M - diag[:, None] - diag[None, :]
    out = np.zeros((n, n), dtype=np.int64)
    for i in range(n):
        for k in range(i + 1, n):
            # twice = -w^T D w = 2 ||sum_j w_j x_j||^2 (w = b_i - b_k): even and >= 0
            v = int(twice[i, k]) // 2
            if v > INT64_MAX:
                raise RuleError(f"{fn}: a mixed squared distance exceeds 2^63-1")
            out[i, k] = out[k, i] = v
    return out


def nnm(X: np.ndarray, f: int) -> np.ndarray:
    """The mixed vectors ``A X`` (float64 n×d) with A from X's squared distances."""
    arr = check_vectors(X, "nnm")
    return nnm_matrix(sq_distances(arr), f) @ arr


def nnm_encoded(Xint: np.ndarray, f: int) -> EncodedSum:
    """NNM on encoded int64 vectors: ``EncodedSum(B Xint, n - f)``, exact, with B the
    0/1 neighbour indicator chosen on exact int64 distances.

    Raises
    ------
    RuleError
        As :func:`nnm_neighbours`, or if a sum of ``n - f`` rows could exceed int64.
    """
    fn = "nnm"
    arr = check_encoded(Xint, fn)
    nbrs = nnm_neighbours(sq_distances_int(arr), f)
    check_int_headroom(arr, nbrs.shape[1], fn)
    return EncodedSum(_indicator(nbrs, arr.shape[0]) @ arr, nbrs.shape[1])
