"""Geometric median by smoothed Weiszfeld iterations, as weights over the inputs.

Source: ``payberah-2020-robust-learning-slides.txt`` ("Geometric median":
``GeoMed(G_1, ..., G_n) = argmin_G sum_i ||G_i - G||``, ``n >= 2f + 1``); the iteration
is Weiszfeld's (Tohoku Math. J. 43, 1937) with the smoothing of Pillutla, Kakade,
Harchaoui, "Robust Aggregation for Federated Learning" (IEEE TSP 2022, RFA).

Everything runs on the squared-distance matrix D: for ``z = sum_j c_j x_j`` with
``sum_j c_j = 1``,

    ||x_i - z||^2 = sum_j c_j D_ij - 1/2 c^T D c,

and for a step ``w = c' - c`` (``sum_j w_j = 0``), ``||z' - z||^2 = -1/2 w^T D w``. So
the weights are computed from D alone and a secure implementation opens only
``sum_i c_i x_i``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from secagg.reference import sq_distances
from secagg.robust._common import (
    RuleError,
    check_distances,
    check_int,
    check_majority,
    check_positive,
    check_vectors,
)

__all__ = [
    "DEFAULT_MAX_ITER",
    "DEFAULT_NU",
    "DEFAULT_TOL",
    "WeiszfeldResult",
    "distances_to_combination",
    "geometric_median",
    "geometric_median_weights",
]

DEFAULT_NU = 1e-6
DEFAULT_TOL = 1e-9
DEFAULT_MAX_ITER = 1000


@dataclass(frozen=True)
class WeiszfeldResult:
    """Weights c (float64, (n,), ``sum c = 1``, ``c >= 0``) of ``z = sum_i c_i x_i``.

    ``iterations`` is how many Weiszfeld steps ran, ``converged`` whether the tolerance
    was met before ``max_iter``.
    """

    weights: np.ndarray
    iterations: int
    converged: bool


def distances_to_combination(D: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``||x_i - z||`` for ``z = sum_j c_j x_j`` (``sum c = 1``), from D only.

    ``sqrt(max(0, (D c)_i - 1/2 c^T D c))``: the clamp at 0 absorbs the cancellation
    error (about ``1e-16 * max D``) when z is close to some x_i.
    """
    Dc = D @ c
    return np.sqrt(np.maximum(Dc - 0.5 * float(c @ Dc), 0.0))


def geometric_median_weights(
    D: np.ndarray,
    f: int = 0,
    *,
    nu: float = DEFAULT_NU,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
) -> WeiszfeldResult:
    """Smoothed Weiszfeld iterations for ``argmin_z sum_i ||x_i - z||``, on D alone.

    Start: ``c = 1/n`` (the mean). Step: with ``r_i = ||x_i - z||`` from
    :func:`distances_to_combination` and ``β_i = max(ν, r_i)``,
    ``c' = (1/β) / sum_j (1/β_j)``, i.e. ``z' = sum_i x_i / β_i / sum_j 1/β_j``.
    Stop when the step is small relative to a robust scale of the data,
    ``||z' - z|| <= tol * max(ν, median_i r_i')`` (the lower median of the distances to
    z', which f < n/2 outliers cannot inflate, unlike their mean), or after ``max_iter``
    steps.

    Smoothing ν: distances below ν count as ν, which keeps weights finite when z meets
    an input (Weiszfeld divides by ``||x_i - z||``) and makes the iteration minimise the
    smoothed objective ``sum_i g_ν(||x_i - z||)`` with ``g_ν(r) = r`` for ``r >= ν`` and
    ``r^2/(2ν) + ν/2`` below (Pillutla et al., RFA); its minimiser is within ``nν/2`` in
    objective of the geometric median. ν is in the units of the vectors (the square root
    of D's units): for encoded D in fixed point with scale s, pass ``ν·s``. It must
    exceed the cancellation error ``~1e-8·sqrt(max D)`` for the clamp to be what bounds
    the weights.

    Parameters
    ----------
    D : np.ndarray
        n×n squared distances (int64 or float64; computed in float64), exactly
        symmetric, zero diagonal.
    f : int
        Assumed number of Byzantine workers; only checked, ``n >= 2f + 1``.
    nu : float
        Smoothing, ``ν > 0``; default 1e-6.
    tol : float
        Relative step tolerance, ``> 0``; default 1e-9.
    max_iter : int
        At most this many steps, ``>= 1``; default 1000.

    Returns
    -------
    WeiszfeldResult

    Raises
    ------
    RuleError
        If D is malformed, f is not an integer >= 0, ``n < 2f + 1``, ν or tol is not a
        positive finite number, or max_iter < 1.
    """
    fn = "geometric-median"
    arr = check_distances(D, fn).astype(np.float64)
    n = arr.shape[0]
    check_majority(n, f, fn)
    nu_f = check_positive(nu, "nu", fn)
    tol_f = check_positive(tol, "tol", fn)
    iters = check_int(max_iter, "max_iter", fn)
    if iters < 1:
        raise RuleError(f"{fn} needs max_iter >= 1, got max_iter={iters}")
    c = np.full(n, 1.0 / n)
    r = distances_to_combination(arr, c)
    for it in range(1, iters + 1):
        inv = 1.0 / np.maximum(r, nu_f)
        c_new = inv / inv.sum()
        w = c_new - c
        step = float(np.sqrt(max(-0.5 * float(w @ arr @ w), 0.0)))
        c = c_new
        r = distances_to_combination(arr, c)
        if step <= tol_f * max(nu_f, float(np.sort(r)[(n - 1) // 2])):
            return WeiszfeldResult(c, it, True)
    return WeiszfeldResult(c, iters, False)


def geometric_median(
    X: np.ndarray,
    f: int = 0,
    *,
    nu: float = DEFAULT_NU,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
) -> np.ndarray:
    """``sum_i c_i X_i`` with c from :func:`geometric_median_weights` on X's distances.

    Returns
    -------
    np.ndarray
        float64 (d,).
    """
    arr = check_vectors(X, "geometric-median")
    res = geometric_median_weights(sq_distances(arr), f, nu=nu, tol=tol, max_iter=max_iter)
    return res.weights @ arr
