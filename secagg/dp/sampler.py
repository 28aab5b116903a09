"""Exact discrete Gaussian sampling from the operating system's CSPRNG.

The algorithms are those of Canonne, Kamath & Steinke, "The Discrete Gaussian for
Differential Privacy" (NeurIPS 2020, arXiv:2004.00010), Algorithms 1-3:

* ``Bernoulli(exp(-γ))`` for rational γ (Algorithm 1): for γ ∈ [0, 1] draw
  ``A_k ~ Bernoulli(γ/k)`` for k = 1, 2, ... until the first failure and return whether
  that k is odd; for γ > 1 it is the conjunction of ⌊γ⌋ draws with γ = 1 and one with
  the fractional part.
* The discrete Laplace ``P(x) ∝ exp(-|x|/t)`` on Z, integer t ≥ 1 (Algorithm 2).
* The discrete Gaussian ``N_Z(0, σ²)``, ``P(x) ∝ exp(-x²/(2σ²))`` on Z (Algorithm 3):
  draw Y from the discrete Laplace with t = ⌊σ⌋ + 1 and keep it with probability
  ``exp(-(|Y| - σ²/t)² / (2σ²))``.

No floating point is involved anywhere: σ² is a :class:`fractions.Fraction`, every
probability is a ratio of integers, and every coin is decided by comparing uniform
integers drawn by rejection from CSPRNG bytes (``os.urandom``). Exactness holds whatever
the numbers' sizes: probabilities whose integers fit in 63 bits are decided on numpy
words; the acceptance step of Algorithm 3, whose numerator and denominator grow like
σ⁴, uses Python integers through numpy object arrays, deciding ``u < num/den`` from the
first 64 bits of u and, on the (probability 2^-64) tie, from an exact fresh draw.

Everything is vectorised over the requested batch: each step of the algorithms runs on
the whole array of samples still pending, so the Python overhead is per step, not per
sample. ``python -m bench.bench_dp_sampler`` prints the rate on this machine.
"""

from __future__ import annotations

import math
import os
import secrets
from fractions import Fraction

import numpy as np

from secagg.prg import AesCtrStream

_U64 = np.uint64
_WORDS = 1 << 16  # uint64 words read from the OS per refill (512 KiB)
_MAX_WORD_BOUND = 1 << 62  # uniform_below's bound must stay below this (see there)
# den·k < 2^62 for every k Algorithm 1 reaches (P(k > 64) < 10^-89)
_SMALL_DEN = 1 << 56


class Csprng:
    """Uniform 64-bit words from ``os.urandom``, buffered, or from a secret key.

    Only the operating system's CSPRNG is used (the same source as :mod:`secrets`),
    directly or through a 256-bit key it drew. A server's noise must be unpredictable
    to the other server and to every worker: a seeded or Mersenne-Twister generator
    would let anyone who learns its state subtract the noise.

    Parameters
    ----------
    key
        None: words straight from ``os.urandom``. A 32-byte key (from
        :func:`secagg.prg.fresh_key`, kept by one server only): the AES-256-CTR
        keystream of that key, so that the same key gives the same words. A server
        uses one key per round so that a reveal run again after a failure opens the
        *same* noisy sum rather than a second, independently noised one, which would
        spend the privacy budget twice.
    """

    def __init__(self, key: bytes | None = None) -> None:
        self._buf = np.empty(0, dtype=_U64)
        self._pos = 0
        self._stream = None if key is None else AesCtrStream(key)

    def _draw(self, n: int) -> np.ndarray:
        raw = os.urandom(8 * n) if self._stream is None else self._stream.read_bytes(8 * n)
        return np.frombuffer(raw, dtype=_U64)

    def words(self, count: int) -> np.ndarray:
        """``count`` independent uniform uint64 values (a fresh array)."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        out = np.empty(count, dtype=_U64)
        filled = 0
        while filled < count:
            if self._pos >= self._buf.size:
                n = max(_WORDS, count - filled)
                self._buf = self._draw(n)
                self._pos = 0
            take = min(count - filled, self._buf.size - self._pos)
            out[filled : filled + take] = self._buf[self._pos : self._pos + take]
            self._pos += take
            filled += take
        return out


def _smear(v: np.ndarray) -> np.ndarray:
    """The smallest all-ones mask ``2^k - 1`` that is >= each value (uint64)."""
    m = v.copy()
    for shift in (1, 2, 4, 8, 16, 32):
        m |= m >> _U64(shift)
    return m


def uniform_below(rng: Csprng, bounds: np.ndarray) -> np.ndarray:
    """Exactly uniform integers in ``[0, b)`` for each ``b`` of ``bounds`` (1 <= b < 2^62).

    Rejection sampling: take a word's low ``⌈log2 b⌉`` bits and redraw where they are
    ``>= b`` (probability < 1/2 each time). Exact: no modulo bias.
    """
    b = np.asarray(bounds, dtype=np.int64)
    if b.size and (b.min() < 1 or b.max() >= _MAX_WORD_BOUND):
        raise ValueError("uniform_below needs bounds in [1, 2^62)")
    bu = b.astype(_U64)
    mask = _smear(bu - _U64(1))
    out = np.empty(b.shape, dtype=_U64)
    todo = np.arange(b.size)
    while todo.size:
        draw = rng.words(todo.size) & mask[todo]
        ok = draw < bu[todo]
        out[todo[ok]] = draw[ok]
        todo = todo[~ok]
    return out.astype(np.int64)


def bernoulli_ratio(rng: Csprng, num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Exact ``Bernoulli(num/den)`` per element, 0 <= num <= den, den >= 1 (int64, < 2^62)."""
    return uniform_below(rng, den) < np.asarray(num, dtype=np.int64)


def bernoulli_ratio_big(rng: Csprng, num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Exact ``Bernoulli(num/den)`` for Python integers of any size, 0 <= num < den.

    ``num``/``den`` are object arrays. With ``P = ⌊num·2^64/den⌋`` (exact integer
    division) and 64 uniform bits U: U < P means the uniform real u = 0.U... is below
    num/den whatever its later bits, U > P means it is above; only U = P (probability
    2^-64) needs the rest, drawn exactly as ``randbelow(den) < num·2^64 - P·den``.
    """
    num = np.asarray(num, dtype=object)
    den = np.asarray(den, dtype=object)
    if num.size == 0:
        return np.zeros(num.shape, dtype=bool)
    P_obj = (num * (1 << 64)) // den
    P = np.array([int(p) for p in P_obj.ravel()], dtype=_U64).reshape(num.shape)
    u = rng.words(num.size).reshape(num.shape)
    out = u < P
    for i in np.flatnonzero(u == P):  # ~never: 2^-64 per element
        frac_num = int(num.flat[i]) * (1 << 64) - int(P_obj.flat[i]) * int(den.flat[i])
        out.flat[i] = secrets.randbelow(int(den.flat[i])) < frac_num
    return out


def bernoulli_exp_neg_unit(rng: Csprng, num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Exact ``Bernoulli(exp(-num/den))`` for 0 <= num <= den (CKS20 Algorithm 1, γ <= 1).

    ``num``/``den`` are int64 arrays with ``den`` small enough that ``den·k`` stays
    below 2^62 for the k reached (P(k > 64) < 10^-89), or object arrays of Python
    integers (any size; then ``num < den``).
    """
    big = np.asarray(num).dtype == object or np.asarray(den).dtype == object
    num = np.asarray(num, dtype=object if big else np.int64)
    den = np.asarray(den, dtype=object if big else np.int64)
    k = 1
    alive = np.arange(num.size)  # still drawing A_k = 1
    last = np.zeros(num.size, dtype=np.int64)  # the k of the first A_k = 0
    while alive.size:
        n_k, d_k = num[alive], den[alive] * k
        a = bernoulli_ratio_big(rng, n_k, d_k) if big else bernoulli_ratio(rng, n_k, d_k)
        last[alive[~a]] = k
        alive = alive[a]
        k += 1
    return (last % 2) == 1


def bernoulli_exp_neg(rng: Csprng, num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Exact ``Bernoulli(exp(-num/den))`` for num >= 0, den >= 1 (CKS20 Algorithm 1).

    ``exp(-γ) = exp(-1)^⌊γ⌋ · exp(-(γ - ⌊γ⌋))``: ⌊γ⌋ independent γ = 1 draws and one
    for the fractional part, all of which must succeed.
    """
    big = np.asarray(num).dtype == object or np.asarray(den).dtype == object
    num = np.asarray(num, dtype=object if big else np.int64)
    den = np.asarray(den, dtype=object if big else np.int64)
    whole = num // den
    rest = num - whole * den
    whole = np.array([int(w) for w in whole.ravel()], dtype=np.int64) if big else whole
    out = np.ones(num.size, dtype=bool)
    # the fractional part first (it may need Python integers), then the unit draws
    out &= bernoulli_exp_neg_unit(rng, rest, den)
    j = 0
    todo = np.flatnonzero(out & (whole > 0))
    ones = np.ones(num.size, dtype=np.int64)
    while todo.size:
        ok = bernoulli_exp_neg_unit(rng, ones[todo], ones[todo])
        out[todo[~ok]] = False
        j += 1
        todo = todo[ok]
        todo = todo[whole[todo] > j]
    return out


def discrete_laplace(rng: Csprng, t: int, size: int) -> np.ndarray:
    """``size`` exact samples of ``P(x) ∝ exp(-|x|/t)`` on Z (CKS20 Algorithm 2)."""
    if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t < (1 << 40):
        raise ValueError(f"the discrete Laplace scale t must be an integer in [1, 2^40), got {t!r}")
    out = np.empty(size, dtype=np.int64)
    filled = 0
    while filled < size:
        m = size - filled
        batch = m + m // 2 + 16  # acceptance is at least about 1/2 (the D and sign steps)
        u = uniform_below(rng, np.full(batch, t, dtype=np.int64))
        keep = bernoulli_exp_neg_unit(rng, u, np.full(batch, t, dtype=np.int64))
        u = u[keep]
        # V: the number of Bernoulli(exp(-1)) successes before the first failure
        v = np.zeros(u.size, dtype=np.int64)
        alive = np.arange(u.size)
        while alive.size:
            ones = np.ones(alive.size, dtype=np.int64)
            a = bernoulli_exp_neg_unit(rng, ones, ones)
            alive = alive[a]
            v[alive] += 1
        x = u + t * v
        neg = (rng.words(x.size) & _U64(1)).astype(bool)
        ok = ~(neg & (x == 0))  # reject "-0" so that 0 is not counted twice
        y = np.where(neg, -x, x)[ok][:m]
        out[filled : filled + y.size] = y
        filled += y.size
    return out


def as_sigma2(sigma2: Fraction | int | str) -> Fraction:
    """σ² as an exact positive :class:`Fraction` (floats are refused: say what you mean)."""
    if isinstance(sigma2, float):
        raise TypeError(
            "pass σ² as an int, a Fraction or a decimal string, not a float "
            "(Fraction(x) converts a float exactly if that is what you want)"
        )
    value = Fraction(sigma2)
    if value <= 0:
        raise ValueError(f"σ² must be positive, got {value}")
    return value


def discrete_gaussian(
    sigma2: Fraction | int | str, size: int, rng: Csprng | None = None
) -> np.ndarray:
    """``size`` exact independent samples of ``N_Z(0, σ²)`` as int64 (CKS20 Algorithm 3).

    Parameters
    ----------
    sigma2
        σ², exact (int, :class:`Fraction` or decimal string). Samples must fit in
        int64: σ up to about 10^17.
    size
        Number of samples.
    rng
        The CSPRNG to draw from (a fresh :class:`Csprng` if None).
    """
    s2 = as_sigma2(sigma2)
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    if s2 > Fraction(10) ** 34:
        raise ValueError(f"σ² = {float(s2):.3e} is too large for int64 samples (at most 1e34)")
    rng = rng or Csprng()
    a, b = s2.numerator, s2.denominator
    t = math.isqrt(a // b) + 1  # ⌊σ⌋ + 1 (any t >= 1 is correct; this one is efficient)
    den = 2 * a * b * t * t  # γ = (|Y|·t·b - a)² / (2·a·b·t²) = (|Y| - σ²/t)² / (2σ²)
    out = np.empty(size, dtype=np.int64)
    filled = 0
    while filled < size:
        m = size - filled
        batch = m + m // 2 + 16  # acceptance is about 0.6 or more for t = ⌊σ⌋ + 1
        y = discrete_laplace(rng, t, batch)
        mag = np.abs(y)
        top = (int(mag.max()) * t * b + a) ** 2 if mag.size else 0
        if top < _MAX_WORD_BOUND and den < _SMALL_DEN:
            # the same integers fit in words: no Python integers needed
            num = (mag * (t * b) - a) ** 2
            keep = bernoulli_exp_neg(rng, num, np.full(batch, den, dtype=np.int64))
        else:
            num = (mag.astype(object) * (t * b) - a) ** 2
            keep = bernoulli_exp_neg(rng, num, np.full(batch, den, dtype=object))
        y = y[keep][:m]
        out[filled : filled + y.size] = y
        filled += y.size
    return out


def pmf(sigma2: Fraction | int | str, support: np.ndarray) -> np.ndarray:
    """The discrete Gaussian's probabilities at ``support`` (float64; for tests/plots).

    The normaliser sums ``exp(-x²/(2σ²))`` over |x| <= 40σ + 10 (the rest is below
    e^-800).
    """
    s2 = float(as_sigma2(sigma2))
    reach = int(40 * math.sqrt(s2)) + 10
    xs = np.arange(-reach, reach + 1, dtype=np.float64)
    z = float(np.exp(-(xs**2) / (2 * s2)).sum())
    x = np.asarray(support, dtype=np.float64)
    return np.exp(-(x**2) / (2 * s2)) / z


def variance(sigma2: Fraction | int | str) -> float:
    """The discrete Gaussian's exact variance (<= σ²; equal up to ~e^-2π²σ²)."""
    s2 = float(as_sigma2(sigma2))
    reach = int(40 * math.sqrt(s2)) + 10
    xs = np.arange(-reach, reach + 1, dtype=np.float64)
    w = np.exp(-(xs**2) / (2 * s2))
    return float((w * xs**2).sum() / w.sum())
