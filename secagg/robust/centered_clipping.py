"""Centered clipping, as weights over the inputs and a public centre.

Source: Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust
Optimization", ICML 2021 (Algorithm 2, CC):
``v_{l+1} = v_l + (1/n) sum_i (x_i - v_l) min(1, τ / ||x_i - v_l||)``, ``v_0`` the
centre, L iterations.

Every iterate is an affine combination ``v_l = a m + sum_j c_j x_j`` with
``a + sum_j c_j = 1`` of the public centre m and the inputs, so the distances it needs,
``||x_i - v_l||``, follow from the (n+1)×(n+1) squared-distance matrix of
``x_1, ..., x_n, m`` by the identity of :mod:`secagg.robust.geometric_median`. Beyond D
the rule needs the n squared distances ``||x_i - m||^2`` to the centre (for a public m,
``G_ii - 2<x_i, m> + ||m||^2``: one extra row of inner products). A secure
implementation opens only ``sum_j c_j x_j`` and adds ``a m`` in the clear.

The centre: the previous round's aggregate. In the first round there is none; the
caller should pass ``m = 0`` (``||x_i - m||^2 = G_ii``), as ByzFL does, rather than the
inputs' mean, which one Byzantine input moves arbitrarily far while CC moves at most
``Lτ`` from its start.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from secagg.reference import sq_distances
from secagg.robust._common import (
    RuleError,
    check_distances,
    check_int,
    check_positive,
    check_vectors,
)
from secagg.robust.geometric_median import distances_to_combination

__all__ = ["CenteredClippingWeights", "centered_clipping", "centered_clipping_weights"]


@dataclass(frozen=True)
class CenteredClippingWeights:
    """``v_L = centre_weight * m + sum_i weights[i] * x_i``; the weights sum to 1."""

    centre_weight: float
    weights: np.ndarray


def centered_clipping_weights(
    D: np.ndarray, centre_sq_dist: np.ndarray, *, tau: float, iterations: int
) -> CenteredClippingWeights:
    """Centered clipping's output as an affine combination of the centre and the inputs.

    With ``w = (c, a)`` over ``(x_1, ..., x_n, m)`` starting at ``(0, ..., 0, 1)``:
    ``r_i = ||x_i - v||`` from the augmented distance matrix, ``s_i = min(1, τ / r_i)``
    (``s_i = 1`` when ``r_i = 0``), then ``c ← (1 - (1/n) sum_i s_i) c + s / n`` and
    ``a ← (1 - (1/n) sum_i s_i) a`` (Karimireddy et al., ICML 2021).

    Parameters
    ----------
    D : np.ndarray
        n×n squared distances between the inputs (int64 or float64; computed in float64).
    centre_sq_dist : np.ndarray
        (n,) squared distances ``||x_i - m||^2`` to the public centre m, finite, >= 0.
    tau : float
        Clipping radius, ``τ > 0``, in the vectors' units.
    iterations : int
        L, ``>= 1``.

    Raises
    ------
    RuleError
        If D is malformed, centre_sq_dist is not (n,) finite and >= 0, τ is not a
        positive finite number or ``L < 1``.
    """
    fn = "centered-clipping"
    arr = check_distances(D, fn).astype(np.float64)
    n = arr.shape[0]
    dm = np.asarray(centre_sq_dist, dtype=np.float64)
    if dm.shape != (n,):
        raise RuleError(f"{fn} needs centre_sq_dist of shape (n,) = ({n},), got {dm.shape}")
    if not np.all(np.isfinite(dm)) or np.any(dm < 0):
        raise RuleError(f"{fn} needs finite centre_sq_dist >= 0")
    tau_f = check_positive(tau, "tau", fn)
    L = check_int(iterations, "iterations", fn)
    if L < 1:
        raise RuleError(f"{fn} needs iterations >= 1, got iterations={L}")
    aug = np.zeros((n + 1, n + 1))
    aug[:n, :n] = arr
    aug[:n, n] = dm
    aug[n, :n] = dm
    w = np.zeros(n + 1)
    w[n] = 1.0
    for _ in range(L):
        r = distances_to_combination(aug, w)[:n]
        with np.errstate(divide="ignore"):
            s = np.where(r > 0, np.minimum(1.0, tau_f / r), 1.0)
        w = (1.0 - s.sum() / n) * w
        w[:n] += s / n
    return CenteredClippingWeights(float(w[n]), w[:n].copy())


def centered_clipping(
    X: np.ndarray, centre: np.ndarray, *, tau: float, iterations: int
) -> np.ndarray:
    """:func:`centered_clipping_weights` applied to the rows of X; float64 (d,)."""
    fn = "centered-clipping"
    arr = check_vectors(X, fn)
    m = np.asarray(centre, dtype=np.float64)
    if m.shape != arr.shape[1:]:
        raise RuleError(f"{fn} needs a centre of shape (d,) = {arr.shape[1:]}, got {m.shape}")
    diff = arr - m
    res = centered_clipping_weights(
        sq_distances(arr), np.einsum("ij,ij->i", diff, diff), tau=tau, iterations=iterations
    )
    return res.centre_weight * m + res.weights @ arr
