"""Fixed-point encoding of a worker's gradient into the ring Z_2^64.

A real vector ``x`` is encoded as the int64 vector ``x̃`` with

.. math:: x̃_i = \\operatorname{rint}(2^{16} \\cdot \\mathrm{fl}(\\mathrm{scale} \\cdot x_i))

where ``rint`` rounds to the nearest integer, ties to even (IEEE 754 default,
``numpy.rint``), and ``scale`` is a public per-round multiplier. The scale ``2^16``
(``FRAC_BITS = 16``) is CrypTen's default ``precision_bits``, so a server can wrap its
share as ``ArithmeticSharedTensor.from_shares(torch.from_numpy(share), precision=16)``:
``from_shares`` does not re-encode, it only records the precision, so what must agree
is the scale, not the rounding rule.

Rounding versus CrypTen
-----------------------
CrypTen 0.4.1's ``FixedPointEncoder.encode`` does *not* round to nearest: float
tensors become ``(2^16 * x).long()``, which truncates toward zero (error up to one
unit, ``2^-16``), a Python list is first converted to float32 (losing precision for
values above ~2^8), and a float numpy array is cast to int64 *before* scaling
(``2^16 * torch.from_numpy(x).long()``), which discards its fractional part
entirely. We deliberately round to nearest instead: it halves the worst-case error to
``2^-17 / scale`` and is unbiased, and it is indistinguishable to CrypTen because
shares enter through ``from_shares``.

Decode with :func:`decode` (exact ``x̃ / 2^16`` in float64), not CrypTen's
``FixedPointEncoder.decode``/``get_plain_text``: besides returning float32, CrypTen
0.4.1 floor-divides negative values by ``2^16 - 1`` instead of ``2^16``, so some
negative values come back 1.0 too low (e.g. -131071 → -2.99998 instead of -1.99998;
roughly (|v| - 1)/2^16 of the encodings in [v, v+1) for v ≤ -2, and all of them below -65535).

Everything here is plain numpy: the worker SDK must install without torch/CrypTen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import NoReturn

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "FRAC_BITS",
    "RING_BITS",
    "MAX_NORM_BOUND",
    "EncodingError",
    "EncodingParams",
    "check_headroom",
    "encode",
    "norm_limit_squared",
    "sum_of_squares",
    "clip_to_bounds",
    "decode",
    "resolution",
]

FRAC_BITS: int = 16
RING_BITS: int = 64

_ONE = 1 << FRAC_BITS  # 2^16, the fixed-point unit
_SIGNED_LIMIT = 1 << (RING_BITS - 1)  # 2^63: int64 results must stay strictly below

#: Largest admissible ``norm_bound`` L (exclusive): 4·L²·2^32 < 2^63 ⇔ L < 2^14.5.
#: Rounding slack makes the real limit slightly lower for a given dimension; see
#: :func:`check_headroom`.
MAX_NORM_BOUND: float = 2.0**14.5


class EncodingError(ValueError):
    """A gradient (or parameter set) that cannot be encoded safely.

    The message names the offending coordinate or limit and what to do about it, so
    it can be shown to the operator of a worker unchanged.
    """


def _check_positive_finite(name: str, value: object) -> float:
    # bool is an int subclass; True as a bound is surely a bug, not 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise EncodingError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v) or v <= 0.0:
        raise EncodingError(f"{name} must be positive and finite, got {v!r}")
    return v


@dataclass(frozen=True, kw_only=True)
class EncodingParams:
    """Public per-round encoding parameters (identical for all workers of a round).

    Keyword-only, so that the two bounds cannot be swapped by position.

    Parameters
    ----------
    scale : float, default 1.0
        Public multiplier applied before encoding, so that tiny gradients (~1e-4)
        keep precision: the resolution is ``2^-16 / scale``. ``decode`` divides by it.
    coord_bound : float
        Bound C on every ``|scale · x_i|``.
    norm_bound : float
        Bound L on ``||scale · x||_2``, checked exactly on the encoded integers
        (``Σ x̃_i² <= (L·2^16)²``); must be ``< MAX_NORM_BOUND`` (2^14.5).

    Raises
    ------
    EncodingError
        If a field is not a positive finite number or ``norm_bound`` reaches
        ``MAX_NORM_BOUND``.
    """

    scale: float = 1.0
    coord_bound: float
    norm_bound: float

    def __post_init__(self) -> None:
        # normalise numpy scalars / ints to float so params compare and hash simply
        object.__setattr__(self, "scale", _check_positive_finite("scale", self.scale))
        object.__setattr__(
            self, "coord_bound", _check_positive_finite("coord_bound", self.coord_bound)
        )
        nb = _check_positive_finite("norm_bound", self.norm_bound)
        if nb >= MAX_NORM_BOUND:
            raise EncodingError(
                f"norm_bound {nb!r} must be < MAX_NORM_BOUND = 2^14.5 ≈ {MAX_NORM_BOUND:.6f}: "
                "pairwise squared distances 4·L²·2^32 would overflow int64; lower norm_bound "
                "(and, if precision suffers, keep scale so that scale·x fits under it)"
            )
        object.__setattr__(self, "norm_bound", nb)


def _ceil_sqrt(n: int) -> int:
    r = math.isqrt(n)
    return r if r * r == n else r + 1


def check_headroom(params: EncodingParams, n_workers: int, dim: int) -> None:
    """Check that the servers' ring arithmetic cannot overflow int64 for this round.

    Let ``L = norm_bound``, ``C = coord_bound`` and ``d = dim``. Every encoded
    coordinate differs from ``2^16 · scale · x_i`` by at most 1/2 (rounding), so the
    rounding error vector has norm at most ``sqrt(d)/2`` and every accepted encoded
    vector satisfies::

        ||x̃||_2 <= N := L·2^16 + sqrt(d)/2.

    The servers compute, in Z_2^64 read as signed int64 (so results must stay in
    ``(-2^63, 2^63)``):

    * Gram entries ``<x̃_i, x̃_j>``: ``|·| <= N²`` (Cauchy–Schwarz), at scale 2^32;
    * squared distances ``||x̃_i - x̃_j||² <= (2N)² = 4N²``;
    * the sum of the selected vectors: each coordinate
      ``|x̃_k| <= min(C, L)·2^16 + 1/2``, so ``|Σ| <= n·(min(C, L)·2^16 + 1/2)``.

    So we require ``4N² < 2^63`` (which implies the Gram bound), i.e.
    ``L·2^17 + sqrt(d) < 2^31.5`` — hence ``L < 2^14.5 ≈ 23170.47`` with no rounding
    slack — and ``n·(min(C, L)·2^16 + 1/2) < 2^63``. Both are evaluated exactly
    (rationals, ``sqrt(d)`` rounded up), not in floating point, since the limits sit
    right at 2^63.

    Notes
    -----
    A score that *sums* k squared distances (e.g. Krum's) needs ``k·4N² < 2^63``,
    i.e. a smaller L; this function checks single distances only. And no overflow is
    not the same as exactness: CrypTen's two-party truncation after a fixed-point
    multiplication divides each share locally, which fails (by about 2^48) with
    probability roughly ``|value| / 2^63`` per entry — non-negligible near this limit.

    Parameters
    ----------
    params : EncodingParams
        The round's encoding parameters.
    n_workers : int
        Maximum number of vectors summed (workers in the round).
    dim : int
        Gradient dimension d.

    Raises
    ------
    EncodingError
        Naming the limit that is violated and the largest admissible value.
    """
    for name, v in (("n_workers", n_workers), ("dim", dim)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise EncodingError(f"{name} must be a positive integer, got {v!r}")
    n, d = int(n_workers), int(dim)
    L = Fraction(params.norm_bound)
    s = _ceil_sqrt(d)

    two_n = L * 2 ** (FRAC_BITS + 1) + s  # upper bound on 2N
    if two_n * two_n >= _SIGNED_LIMIT:
        # largest L with (L·2^17 + s)² < 2^63, rounded down for the message
        l_max = (2.0**31.5 - s) / 2 ** (FRAC_BITS + 1)
        raise EncodingError(
            f"headroom: squared distances 4·(L·2^16 + sqrt(d)/2)² = {float(two_n * two_n):.4e} "
            f"reach 2^63 = {float(_SIGNED_LIMIT):.4e} with norm_bound L = {params.norm_bound!r} "
            f"and dim d = {d}: lower norm_bound below {l_max:.4f}"
        )

    per_coord = min(Fraction(params.coord_bound), L) * _ONE + Fraction(1, 2)
    if n * per_coord >= _SIGNED_LIMIT:
        n_max = math.ceil(_SIGNED_LIMIT / per_coord) - 1
        raise EncodingError(
            f"headroom: sum of {n} selected vectors can reach {float(n * per_coord):.4e} "
            f">= 2^63 per coordinate (|x̃_k| <= min(coord_bound, norm_bound)·2^16 + 1/2 = "
            f"{float(per_coord):.4e}): lower n_workers to at most {n_max} or lower "
            "coord_bound/norm_bound"
        )


def _as_vector(x: ArrayLike) -> np.ndarray:
    """Validate shape/dtype and return a float64 view-or-copy (never written to)."""
    arr = np.asarray(x)
    # object arrays (e.g. huge Python ints), strings, bools and complex are not gradients
    if arr.dtype.kind not in "iuf":
        raise EncodingError(
            f"expected a real-valued (float or int) vector, got dtype {arr.dtype}: "
            "convert the gradient to float64"
        )
    if arr.ndim != 1:
        raise EncodingError(
            f"expected a 1-D gradient vector, got shape {arr.shape}: flatten it "
            "(e.g. np.concatenate([p.ravel() for p in params])) before encoding"
        )
    if arr.size == 0:
        raise EncodingError("gradient vector is empty (d = 0): there is nothing to encode")
    # astype copies for non-float64 input; float64 input is only read, never written
    return arr.astype(np.float64, copy=False)


def _raise_non_finite(i: int, v: float) -> NoReturn:
    what = "NaN" if math.isnan(v) else ("+Inf" if v > 0 else "-Inf")
    raise EncodingError(
        f"coordinate {i} is {what}: the worker's gradient has non-finite values; "
        "skip this round or fix the model"
    )


def _first_bad_coordinate(arr: np.ndarray, scaled: np.ndarray, params: EncodingParams) -> None:
    """Raise for the lowest-index coordinate that is non-finite or out of bounds."""
    # NaN compares False, so non-finiteness must be tested explicitly
    bad = ~np.isfinite(arr) | ~(np.abs(scaled) <= params.coord_bound)
    if not bad.any():
        return
    i = int(np.argmax(bad))
    v = float(arr[i])
    if not math.isfinite(v):
        _raise_non_finite(i, v)
    raise EncodingError(
        f"coordinate {i} = {v!r} exceeds coord_bound {params.coord_bound!r} after scaling "
        f"by {params.scale!r} (|scale·x_{i}| = {abs(float(scaled[i]))!r}): clip the gradient "
        "(clip_to_bounds) or raise the bound"
    )


#: A coordinate with ``|scale·x_i| >= 2^15`` fails every admissible norm bound
#: (``L < 2^14.5``); refusing it first keeps ``rint(scale·x_i·2^16)`` within ±2^31.
_COORD_CEILING: float = 2.0**15


def sum_of_squares(enc: np.ndarray) -> int:
    """``Σ x̃_i²`` of an encoded vector, exactly (a Python int).

    Exact integer arithmetic, so the result does not depend on summation order or
    precision (``proto/SHARE_ENCODING.md`` §2). Requires ``|x̃_i| <= 2^31`` and at most
    2^26 coordinates: each ``x̃ = h·2^16 + l`` with ``0 <= l < 2^16`` splits the square
    into three int64 sums that cannot overflow.
    """
    e = np.asarray(enc, dtype=np.int64)
    h, lo = e >> FRAC_BITS, e & (_ONE - 1)
    hh = int(np.dot(h, h))
    hl = int(np.dot(h, lo))
    ll = int(np.dot(lo, lo))
    return (hh << (2 * FRAC_BITS)) + (hl << (FRAC_BITS + 1)) + ll


def norm_limit_squared(params: EncodingParams) -> int:
    """``⌊(L·2^16)²⌋``: the largest ``Σ x̃_i²`` the norm bound admits (exact)."""
    limit = Fraction(params.norm_bound) * _ONE
    return math.floor(limit * limit)


def _check_norm(enc: np.ndarray, params: EncodingParams) -> None:
    # the bound is on the encoded integers, exactly: Σ x̃_i² <= (L·2^16)²
    total, limit = sum_of_squares(enc), norm_limit_squared(params)
    if total > limit:
        norm = math.sqrt(total) / _ONE
        raise EncodingError(
            f"gradient norm ||scale·x||_2 ≈ {norm!r} exceeds norm_bound {params.norm_bound!r} "
            f"(scale {params.scale!r}): on the encoded integers Σ x̃_i² = {total} > "
            f"(norm_bound·2^16)² = {limit}; clip the gradient (clip_to_bounds) or raise "
            "norm_bound"
        )


def _encode_unchecked(scaled: np.ndarray) -> np.ndarray:
    # |scaled| < 2^15: the product by 2^16 is exact and the cast in range
    return np.rint(scaled * float(_ONE)).astype(np.int64)


def encode(x: ArrayLike, params: EncodingParams) -> np.ndarray:
    """Encode a real gradient vector as fixed-point int64 ring elements.

    ``x̃_i = rint(2^16 · fl(scale · x_i))`` with ties to even (see module docstring).
    Multiplying by 2^16 is exact in binary64, so only the ``scale`` product and the
    final rounding can round. The coordinate bound applies to ``fl(scale · x_i)``, the
    norm bound to the encoded integers: ``Σ x̃_i² <= (norm_bound · 2^16)²``, evaluated
    exactly (:func:`sum_of_squares`), so every implementation agrees at the bound.

    Parameters
    ----------
    x : array_like
        1-D, non-empty, float or int; converted to float64. Not modified.
    params : EncodingParams
        Round parameters.

    Returns
    -------
    numpy.ndarray
        New int64 array of the same length.

    Raises
    ------
    EncodingError
        For non-1-D, empty or non-real input; for the first coordinate that is NaN,
        ±Inf or has ``|scale·x_i| > coord_bound``; or if ``Σ x̃_i² > (norm_bound·2^16)²``.
    """
    arr = _as_vector(x)
    # a float64 multiply rather than in-place: arr may be the caller's own array
    with np.errstate(over="ignore", invalid="ignore"):
        # overflow to inf (huge scale·x) is reported by the bound check below
        scaled = arr * params.scale
    _first_bad_coordinate(arr, scaled, params)
    big = np.abs(scaled) >= _COORD_CEILING
    if big.any():  # fails the norm bound: refused before the cast could leave int64
        i = int(np.argmax(big))
        raise EncodingError(
            f"gradient norm exceeds norm_bound {params.norm_bound!r}: coordinate {i} alone "
            f"has |scale·x_{i}| >= 2^15 (scale {params.scale!r}); clip the gradient "
            "(clip_to_bounds) or lower scale"
        )
    out = _encode_unchecked(scaled)
    _check_norm(out, params)
    return out


def clip_to_bounds(x: ArrayLike, params: EncodingParams) -> np.ndarray:
    """Clip a gradient so that :func:`encode` accepts it (optional, client side).

    Coordinates are first clipped to ``±coord_bound / scale``; then, if
    ``||scale·x||_2 > norm_bound``, the whole vector is scaled down onto the norm ball.
    Floating-point rounding could leave the result an ulp outside a bound, so the
    result is nudged toward zero until ``encode``'s own checks pass.

    Parameters
    ----------
    x : array_like
        1-D, non-empty, finite real vector. Not modified.
    params : EncodingParams
        Round parameters.

    Returns
    -------
    numpy.ndarray
        New float64 array.

    Raises
    ------
    EncodingError
        For non-1-D, empty or non-real input, or a NaN/±Inf coordinate (clipping
        would hide a broken model rather than fix it).
    """
    arr = _as_vector(x)
    finite = np.isfinite(arr)
    if not finite.all():
        i = int(np.argmin(finite))
        _raise_non_finite(i, float(arr[i]))
    scale, cb, nb = params.scale, params.coord_bound, params.norm_bound

    lim = cb / scale
    y = np.clip(arr, -lim, lim)  # new array
    # fl(fl(C/scale)·scale) can exceed C by an ulp; step such coordinates toward 0
    while True:
        over = np.abs(y * scale) > cb
        if not over.any():
            break
        y[over] = np.nextafter(y[over], 0.0)

    limit = norm_limit_squared(params)
    norm = float(np.linalg.norm(y * scale))
    if norm > nb or sum_of_squares(_encode_unchecked(y * scale)) > limit:
        # shrinking never raises |fl(y_i·f)| (f < 1, monotone rounding), so coordinate
        # bounds still hold; only the norm needs re-checking, on the encoded integers
        # as encode checks it (rounding to 2^-16 can add up to sqrt(d)/2 units)
        factor = min(1.0, nb / norm)
        z = y * factor
        # rounding to 2^-16 adds at most sqrt(d)/2 units to the encoded norm, so this
        # shrink always suffices up to float ulps (then doubled); one or two encodes
        shrink = math.sqrt(y.size) / (2.0 * nb * _ONE) + 2.0**-40
        while sum_of_squares(_encode_unchecked(z * scale)) > limit:
            z = y * (factor * (1.0 - min(shrink, 1.0)))
            shrink *= 2.0
        y = z
    return y


def decode(v: ArrayLike, params: EncodingParams, divisor: int = 1) -> np.ndarray:
    """Decode int64 fixed-point values (possibly a sum of ``divisor`` vectors).

    Returns ``v / 2^16 / scale / divisor`` in float64; with ``divisor = n`` this
    turns the sum of n encoded gradients into their mean.

    Parameters
    ----------
    v : array_like
        Integer (int64) encoded values, e.g. a reconstructed sum. Not modified.
    params : EncodingParams
        Round parameters (for ``scale``).
    divisor : int, default 1
        Positive number of vectors summed in ``v``.

    Returns
    -------
    numpy.ndarray
        New float64 array. Conversion of ``|v| > 2^53`` to float rounds (relative
        error 2^-53), which only large sums reach.

    Raises
    ------
    EncodingError
        If ``v`` is not integer-typed or ``divisor`` is not a positive integer.
    """
    if isinstance(divisor, bool) or not isinstance(divisor, (int, np.integer)) or divisor < 1:
        raise EncodingError(f"divisor must be a positive integer, got {divisor!r}")
    arr = np.asarray(v)
    if arr.dtype.kind not in "iu":
        raise EncodingError(
            f"decode expects integer (int64) ring elements, got dtype {arr.dtype}: "
            "pass the encoded/reconstructed int64 vector"
        )
    out = arr.astype(np.int64, copy=False).astype(np.float64)
    # separate divisions by exact 2^16 then scale then divisor: the 2^16 step is exact
    out /= float(_ONE)
    out /= params.scale
    if divisor != 1:
        out /= float(divisor)
    return out


def resolution(params: EncodingParams) -> float:
    """The fixed-point step ``2^-16 / scale`` in gradient units.

    Encoding rounds to the nearest step, so the worst-case per-coordinate error of
    ``decode(encode(x))`` is half of this (plus a few ulps of ``x`` from the float
    multiply/divide by ``scale`` when ``scale != 1``).
    """
    return 2.0**-FRAC_BITS / params.scale
