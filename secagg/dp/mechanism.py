"""The DP mechanism's parameters in the ring: the exact norm bound and each server's noise.

Units: the round's encoding maps a real vector x to integers ``rint(2^16·scale·x)``
(:mod:`secagg.encoding`). The clip C and the noise σ are given in real units (those of
the gradients and of the decoded aggregate; note that the encoding's own ``norm_bound``
and ``coord_bound`` are in scaled units, ``scale·x``); in the ring they are
``C·scale·2^16`` and ``σ·scale·2^16``.

* Norm check: an accepted encoded vector has ``‖x‖² ≤ B`` with
  ``B = ⌊(C·scale·2^16)²⌋``, computed exactly with rationals (floats convert to
  :class:`Fraction` exactly), so ``‖x‖ ≤ C·scale·2^16`` holds exactly for every accepted
  vector and the sensitivities of :mod:`secagg.dp.accounting` hold in real units.
* Noise: each server draws ``N_Z(0, s²)^d`` with ``s = ⌈σ·scale·2^16⌉`` (rounding up only
  adds noise, so the guarantee computed for σ holds) and adds it to its share of the
  opened sum, wrapping mod 2^64 like every share.
* Honest clipping: encoding rounds each coordinate by at most 1/2, which can lengthen
  the vector by up to ``√d/2`` encoded units; :func:`clip_and_encode` clips to
  ``C − √d/(2·scale·2^16)`` first and checks the exact bound on the integers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from secagg.dp.accounting import sensitivity, zcdp_rho
from secagg.dp.sampler import Csprng, discrete_gaussian
from secagg.encoding import FRAC_BITS, EncodingParams, clip_to_bounds, encode

# the bound and every accepted norm stay far from 2^63 (the comparison's sign bit)
MAX_BOUND_SQ = 1 << 62


class DpConfigError(ValueError):
    """DP parameters that cannot be used; the message says what to change."""


def encoded_unit(scale: float) -> Fraction:
    """``scale·2^16`` exactly: one real unit in encoded integers."""
    return Fraction(scale) * (1 << FRAC_BITS)


def bound_sq(clip: float, scale: float) -> int:
    """``B = ⌊(C·scale·2^16)²⌋``: accepted iff ‖x_enc‖² ≤ B (exact)."""
    if not (math.isfinite(clip) and clip > 0):
        raise DpConfigError(f"dp_clip must be positive and finite, got {clip!r}")
    c = Fraction(clip) * encoded_unit(scale)
    b = math.floor(c * c)
    if b >= MAX_BOUND_SQ:
        raise DpConfigError(
            f"dp_clip = {clip:g} at scale {scale:g} gives (C·scale·2^16)² >= 2^62: lower "
            "dp_clip or the scale"
        )
    return b


def noise_sigma2(sigma: float, scale: float) -> int:
    """Each server's noise variance in encoded units: ``⌈σ·scale·2^16⌉²`` (an integer)."""
    if not (math.isfinite(sigma) and sigma > 0):
        raise DpConfigError(f"dp_sigma must be positive and finite, got {sigma!r}")
    s = math.ceil(Fraction(sigma) * encoded_unit(scale))
    return s * s


def server_noise(sigma2: int, dim: int, rng: Csprng | None = None) -> np.ndarray:
    """One server's noise vector for the opened sum (int64, exact discrete Gaussian)."""
    return discrete_gaussian(sigma2, dim, rng)


@dataclass(frozen=True)
class RoundDp:
    """A round's DP parameters as the 2PC uses them (identical on both servers)."""

    sigma: float  # each server's noise std on the opened sum, real units
    clip: float  # C, real units
    bound_sq: int  # B, encoded units squared
    sigma2: int  # each server's noise variance, encoded units squared

    @classmethod
    def from_config(cls, sigma: float, clip: float, scale: float) -> RoundDp | None:
        """None when DP is off (both 0); :class:`DpConfigError` when half set."""
        if sigma == 0 and clip == 0:
            return None
        if sigma == 0 or clip == 0:
            raise DpConfigError(
                "DP needs both dp_sigma and dp_clip (secagg dp plan prints them); "
                f"got dp_sigma={sigma!r}, dp_clip={clip!r}"
            )
        return cls(sigma, clip, bound_sq(clip, scale), noise_sigma2(sigma, scale))

    def rho(self, rule: str, n: int, f: int, m: int | None) -> float:
        """This round's ρ-zCDP against one server (+ workers), for n accepted workers."""
        return zcdp_rho(sensitivity(rule, self.clip, n, f, m).sum_l2, self.sigma)


def clip_and_encode(x: np.ndarray, params: EncodingParams, clip: float) -> np.ndarray:
    """Clip ``x`` to L2 norm C (with the rounding margin) and encode; exact check after.

    Raises :class:`DpConfigError` if C is below the rounding margin ``√d/(2·scale·2^16)``
    (no encoded vector but the zero vector could be guaranteed to pass).
    """
    v = clip_to_bounds(x, params)  # the round's coordinate and norm bounds first
    margin = math.sqrt(v.size) / (2.0 * params.scale * (1 << FRAC_BITS))
    target = (clip - margin) * (1 - 1e-9)
    if target <= 0:
        raise DpConfigError(
            f"dp_clip = {clip:g} is below the encoding's rounding margin {margin:.3g} for "
            f"d = {v.size}: raise dp_clip or the scale"
        )
    norm = float(np.linalg.norm(v))
    if norm > target:
        v = v * (target / norm)
    enc = encode(v, params)
    limit = bound_sq(clip, params.scale)
    if int(np.dot(enc, enc)) > limit:  # cannot happen with the margin; never send one
        raise DpConfigError("clipping did not bring the encoded norm within dp_clip")
    return enc
