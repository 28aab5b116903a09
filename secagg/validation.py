"""Input validation for Byzantine shares: the maths (no CrypTen here; see mpc.py).

A Byzantine worker chooses its shares freely, so the vector the servers reconstruct
is any x ∈ Z_2^64^d, not only a well-formed encoding. Adding 2^63 to one coordinate
leaves every squared distance computed in the ring unchanged (2·2^63·y ≡ 0 and
(2^63)^2 ≡ 0 mod 2^64) while the coordinate decodes to about 1.4·10^14: Krum keeps
the vector and the aggregate is destroyed. So before distances are used, the servers
test each worker's vector in 2PC with random projections.

The test
--------
Server A draws a fresh 32-byte seed and shares it with server B only; both servers
expand it (AES-256-CTR, :func:`projection_block`) into k vectors r_1..r_k ∈ {-1,0,1}^d
with P(r_i = 0) = 1/2, P(r_i = ±1) = 1/4, compute their shares of p_j = <r_j, x>
(mod 2^64, linear, local), and run a secure comparison of every p_j against the
public threshold T. A worker is accepted iff |p_j| ≤ T for all j (p_j read as a
signed int64); only the accept bit is opened.

When the seed is drawn: the argument below needs R independent of x. The library path
(:func:`secagg.protocol.validate`) draws it after every vector is fixed. The service
draws it when the round opens, so that each server can project a share the moment it
arrives (:mod:`servers.precompute`) and only the comparison is left after the last
share; there R is independent of x because no worker ever sees the seed: it travels
from A to B over the mutually authenticated peer channel and appears in no reply,
status, report or log, and the servers do not collude with workers (the threat model).
A server that restarted has lost it and draws a new one at the validation phase.

Completeness (honest workers)
    An honest encoded vector has ||x||_2 ≤ N := L·2^16 + sqrt(d)/2. p_j is a sum of
    independent zero-mean terms r_i x_i ∈ [-|x_i|, |x_i|] and never wraps, so by
    Hoeffding P(|p_j| > T) ≤ 2 exp(-T^2 / (2N^2)). With
    T = N·sqrt(2 ln(2k/δ)) and a union bound over the k projections, an honest
    worker is rejected with probability at most δ (default 10^-9).

Soundness (any ring element, including every residue mod 2^64)
    Read x in the balanced representation (-2^63, 2^63]. Claim: if ||x||_∞ > 2T or
    ||x||_2 > 16T, then P(|p_j| ≤ T) ≤ 1/2 for each j, independently, so x is
    accepted with probability at most 2^-k.

    * ||x||_∞ > 2T, with x_m the largest coordinate. Condition on every r_i, i ≠ m:
      p_j ∈ {c - x_m, c, c + x_m} (mod 2^64) with probabilities 1/4, 1/2, 1/4. Two of
      c, c ± x_m in [-T, T] would put x_m (or 2x_m) in [-2T, 2T] mod 2^64; for x_m
      this contradicts |x_m| > 2T, and for 2x_m it forces x_m ≡ 2^63 ± T, when c is
      outside the interval and c ± x_m have total probability 1/2. Either way at
      most probability 1/2 lands in [-T, T]. No residue is special: x_m = 2^63 is
      caught whenever r_m = ±1.
    * ||x||_∞ ≤ 2T and ||x||_2 > 16T. Now |p_j| ≤ d·2T < 2^63 (checked at round
      open), so p_j is the exact integer projection. Write r_i = b_i s_i with
      b_i ∈ {0,1}, s_i = ±1. V = Σ b_i x_i^2 has mean ||x||^2/2 and, by Hoeffding
      (terms in [0, 4T^2]), V < ||x||^2/4 with probability ≤ exp(-||x||^2/(32T^2))
      ≤ e^-8. Given b, p_j = Σ b_i s_i x_i is a Rademacher sum with variance V and
      summands at most 2T, so Berry–Esseen (constant 0.56) gives
      P(|p_j| ≤ T | b) ≤ 2T/sqrt(2πV) + 2·0.56·2T/sqrt(V) ≤ 3.04 T/sqrt(V)
      ≤ 6.08 T/||x|| ≤ 0.38 when V ≥ ||x||^2/4. Total ≤ 0.38 + e^-8 < 1/2.

    Hence every accepted vector satisfies ||x||_2 ≤ 16T and ||x||_∞ ≤ 2T except with
    probability 2^-k per worker (default k = 40: 9.1·10^-13). The slack factor
    against the honest bound N is 16·sqrt(2 ln(2k/δ)) ≈ 113 for the defaults.

Headroom
    Every ring computation on accepted vectors must stay in (-2^63, 2^63): squared
    distances ≤ 4(16T)^2, sums of n vectors ≤ n·2T per coordinate, projections
    ≤ d·2T. :func:`check_validated_headroom` refuses a round configuration otherwise
    and names the limit; with the defaults it allows norm bounds up to about
    L ≈ 200 after the public scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from secagg.encoding import FRAC_BITS, EncodingError, EncodingParams
from secagg.prg import AesCtrStream

DEFAULT_PROJECTIONS = 40
#: The fewest projections a round may ask for: an out-of-bound vector then passes with
#: probability at most 2^-20 (about 10^-6) per worker and round. Fewer made the bound
#: meaningless (k = 1: one half) and let a worker probe an honest vector through the
#: distances of its own accepted out-of-bound vector.
MIN_PROJECTIONS = 20
DEFAULT_FALSE_REJECTION = 1e-9
BLOCK = 1 << 15  # columns of R generated at a time (bounds memory to k·BLOCK entries)
_LIMIT = 1 << 63


@dataclass(frozen=True)
class ValidationParams:
    """Public parameters of the projection test.

    Attributes
    ----------
    projections : int
        k, the number of random projections; a vector outside the bounds passes with
        probability at most 2^-k.
    false_rejection : float
        δ, the probability that an honest worker (within its norm bound) is rejected.
    """

    projections: int = DEFAULT_PROJECTIONS
    false_rejection: float = DEFAULT_FALSE_REJECTION

    def __post_init__(self) -> None:
        k, delta = self.projections, self.false_rejection
        if isinstance(k, bool) or not isinstance(k, int) or not MIN_PROJECTIONS <= k <= 256:
            raise ValueError(
                f"projections must be an integer in [{MIN_PROJECTIONS}, 256] (an out-of-bound "
                f"vector passes with probability 2^-k), got {k!r}"
            )
        if not 0.0 < delta < 1.0:
            raise ValueError(f"false_rejection must be in (0, 1), got {delta!r}")


def honest_norm(params: EncodingParams, dim: int) -> float:
    """N: the largest encoded norm of an honest vector (bound plus rounding)."""
    return _honest_norm(params.norm_bound, dim)


def _honest_norm(norm_bound: float, dim: int) -> float:
    # conservative: encode's exact check already keeps ||x̃|| <= L·2^16
    return norm_bound * 2.0**FRAC_BITS + math.sqrt(dim) / 2


def _threshold(norm_bound: float, dim: int, vp: ValidationParams) -> int:
    t = math.sqrt(2.0 * math.log(2.0 * vp.projections / vp.false_rejection))
    return math.ceil(_honest_norm(norm_bound, dim) * t)


def threshold(params: EncodingParams, dim: int, vp: ValidationParams) -> int:
    """T = N·sqrt(2 ln(2k/δ)), rounded up: the projection bound honest workers meet."""
    return _threshold(params.norm_bound, dim, vp)


def _distances_fit(norm_bound: float, dim: int, vp: ValidationParams) -> bool:
    accepted_norm = 16 * _threshold(norm_bound, dim, vp)
    return 4 * accepted_norm * accepted_norm < _LIMIT


def max_norm_bound(dim: int, vp: ValidationParams) -> float:
    """The largest ``norm_bound`` (after the public scale) validation admits for ``dim``.

    Accepted vectors may be 16·T long, so their squared distances ``4·(16·T)²`` must
    stay below 2^63; this is the largest binary64 L for which they do (≈ 204.3 with
    the defaults k = 40, δ = 10^-9). Found by bisection on the exact check, so a
    configuration at this value passes :func:`check_validated_headroom`'s distance
    condition and the next float above it does not.
    """
    lo, hi = 0.0, 2.0**14.5
    while True:
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            return lo
        if _distances_fit(mid, dim, vp):
            lo = mid
        else:
            hi = mid


def check_validated_headroom(
    params: EncodingParams, n_workers: int, dim: int, vp: ValidationParams
) -> int:
    """Refuse configurations where an *accepted* vector could make the ring wrap.

    Returns the threshold T. Raises :class:`secagg.encoding.EncodingError` naming the
    limit to change.
    """
    T = threshold(params, dim, vp)
    accepted_norm = 16 * T
    if 4 * accepted_norm * accepted_norm >= _LIMIT:
        factor = accepted_norm / honest_norm(params, dim)
        l_max = math.floor(max_norm_bound(dim, vp) * 100) / 100  # rounded down: admissible
        raise EncodingError(
            f"norm_bound {params.norm_bound!r} is above the limit input validation allows: "
            f"with validation on (the default; k = {vp.projections} projections, "
            f"false rejection {vp.false_rejection:g}) and dim {dim}, norm_bound (a bound on "
            f"scale·x) is limited to {l_max:.2f}, because an accepted vector may have norm "
            f"up to 16·T = {accepted_norm:.3e} (slack {factor:.0f}× the honest bound) and its "
            f"squared distances must stay below 2^63: lower norm_bound to at most {l_max:.2f} "
            "and raise the public scale instead to keep precision, or use fewer projections "
            "or a larger false-rejection rate"
        )
    if n_workers * 2 * T >= _LIMIT:
        raise EncodingError(
            f"headroom with input validation: the sum of {n_workers} accepted vectors can "
            f"reach {n_workers * 2 * T:.3e} >= 2^63 per coordinate: lower norm_bound or n"
        )
    if dim * 2 * T >= _LIMIT:
        raise EncodingError(
            f"headroom with input validation: projections of d = {dim} coordinates can reach "
            f"{dim * 2 * T:.3e} >= 2^63: lower norm_bound or the dimension"
        )
    return T


def _entry_table() -> np.ndarray:
    # byte -> its 4 entries; bit pairs read most significant first (np.unpackbits order):
    # first bit of a pair = nonzero, second = negative
    table = np.zeros((256, 4), dtype=np.int8)
    for byte in range(256):
        for j in range(4):
            nonzero = (byte >> (7 - 2 * j)) & 1
            negative = (byte >> (6 - 2 * j)) & 1
            table[byte, j] = nonzero * (1 - 2 * negative)
    return table


_ENTRIES = _entry_table()
# the same table with each byte's 4 entries packed in one word: a 1-D gather of words is
# about 3x faster than gathering rows (viewing back as int8 restores the byte order)
_PACKED = np.ascontiguousarray(_ENTRIES).view(np.uint32).reshape(256)


def projection_block(stream: AesCtrStream, k: int, width: int) -> np.ndarray:
    """The next ``width`` columns of R (k × width, int8 entries in {-1, 0, 1}).

    Each entry takes two keystream bits: the first says nonzero (P = 1/2), the second
    the sign. Blocks are drawn in column order, so both servers (and a test) expanding
    the same seed with the same block sizes get the same R. (A byte lookup table maps
    each keystream byte to its four entries; ``tests/test_validation.py`` checks it
    against the bit-by-bit definition.)
    """
    count = k * width
    raw = np.frombuffer(stream.read_bytes((2 * count + 7) // 8), dtype=np.uint8)
    return _PACKED[raw].view(np.int8)[:count].reshape(k, width)


def projection_matrix(seed: bytes, k: int, d: int) -> np.ndarray:
    """All of R (k × d, int8): the blocks of :func:`projection_block` side by side.

    The same R as the blockwise expansion (same stream, same block order), held whole
    so that each share can be projected on arrival: 40 MB at k=40, d=10^6.
    """
    stream = AesCtrStream(seed)
    out = np.empty((k, d), dtype=np.int8)
    for c0 in range(0, d, BLOCK):
        w = min(BLOCK, d - c0)
        out[:, c0 : c0 + w] = projection_block(stream, k, w)
    return out


def projections_plain(X: np.ndarray, seed: bytes, k: int) -> np.ndarray:
    """<r_j, x_i> mod 2^64 for the rows of an int64 matrix (the reference/tests)."""
    stream = AesCtrStream(seed)
    n, d = X.shape
    out = np.zeros((n, k), dtype=np.int64)
    with np.errstate(over="ignore"):
        for c0 in range(0, d, BLOCK):
            w = min(BLOCK, d - c0)
            R = projection_block(stream, k, w).astype(np.int64)
            out += X[:, c0 : c0 + w] @ R.T
    return out


def accepted_plain(X: np.ndarray, seed: bytes, k: int, T: int) -> np.ndarray:
    """The decision the 2PC test computes, in plaintext (for tests)."""
    P = projections_plain(X, seed, k)
    return np.all((P >= -T) & (P <= T), axis=1)
