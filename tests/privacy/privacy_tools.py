"""Shared machinery of the privacy tests: input pairs with identical public outputs,
statistical two-sample tests on 64-bit words, and the mask-stream attacks.

Statistical tests here are run with a fresh, unseeded protocol (the masks come from
``secrets``), so every threshold is chosen for a false-alarm probability far below
1e-6 per test, and each test has a control showing that the same statistic catches a
real leak.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import numpy as np
from scipy import stats

from secagg import encoding, reference, rules
from secagg.protocol import RoundPlan

MASK64 = (1 << 64) - 1
ALPHA = 1e-6  # family-wise false-alarm level of every pooled statistical test


# ------------------------------------------------------------------- round plans
def make_plan(rule: str, f: int, params: encoding.EncodingParams, d: int) -> RoundPlan:
    """The plan the servers use, with input validation when this secagg has it."""
    names = {fl.name for fl in dataclasses.fields(RoundPlan)}
    if "threshold" not in names:
        return RoundPlan(rule, f)
    from secagg.validation import DEFAULT_PROJECTIONS, ValidationParams, threshold

    vp = ValidationParams()
    return RoundPlan(rule, f, threshold=threshold(params, d, vp), projections=DEFAULT_PROJECTIONS)


# ------------------------------------------------------------- rotated input pairs
@dataclass(frozen=True)
class InputPair:
    """X and X' = c + P(X - c) with P orthogonal: same distances, selection, sum.

    P is a permutation of coordinates inside the block ``block`` that only mixes
    coordinates where ``sum_{i in S} (x_i - c)`` takes the same value, so it fixes the
    opened sum; colluders' rows are constant on the block, so P fixes them too. A
    coordinate permutation is an exact orthogonal map on integers, which a rotation by
    a random angle is not (the revealed distances are exact on encoded integers).
    """

    X: np.ndarray
    X2: np.ndarray
    c: np.ndarray
    selected: list[int]
    colluders: tuple[int, ...]
    block: np.ndarray  # coordinate indices P acts on


def rotated_pair(
    rng: np.random.Generator,
    n: int,
    d: int,
    rule: str,
    f: int,
    colluders: tuple[int, ...] = (),
    u: int = 1 << 15,
) -> InputPair:
    """Build encoded inputs X, X' that every server output treats identically."""
    c = rng.integers(-(1 << 16), 1 << 16, size=d)
    block = np.arange(d // 2)
    rest = np.arange(d // 2, d)
    X = np.empty((n, d), dtype=np.int64)
    for i in range(n):
        if i in colluders:
            X[i, block] = c[block] + int(rng.integers(-u, u))  # constant offset: P fixes it
        else:
            X[i, block] = c[block] + u * rng.choice([-1, 1], size=block.size)
        X[i, rest] = c[rest] + rng.integers(-(1 << 17), 1 << 17, size=rest.size)
    D = reference.sq_distances_int(X)
    sel = rules.select(rule, D, f) if rule != "mean" else list(range(n))
    v = (X[sel] - c).sum(axis=0)[block]
    perm = np.arange(block.size)
    for value in np.unique(v):
        where = np.flatnonzero(v == value)
        perm[where] = rng.permutation(where)
    X2 = X.copy()
    X2[:, block] = c[block] + (X[:, block] - c[block])[:, perm]
    # every public output is identical, bit for bit
    assert np.array_equal(reference.sq_distances_int(X2), D)
    assert (rules.select(rule, D, f) if rule != "mean" else list(range(n))) == sel
    assert np.array_equal(X2[sel].sum(axis=0), X[sel].sum(axis=0))
    assert all(np.array_equal(X2[k], X[k]) for k in colluders)
    honest = [i for i in range(n) if i not in colluders]
    assert np.mean(X2[honest] != X[honest]) > 0.15, "the pair must differ substantially"
    return InputPair(X, X2, c, sel, tuple(colluders), block)


# --------------------------------------------------------------------- statistics
def word_bits(words: np.ndarray) -> np.ndarray:
    """(N, 64) array of the bits of int64 words, least significant first."""
    w = np.ascontiguousarray(np.asarray(words, dtype=np.int64).reshape(-1))
    return np.unpackbits(w.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")


def bit_bias_pvalue(words: np.ndarray) -> float:
    """Bonferroni p-value that every bit position of the words is a fair coin."""
    b = word_bits(words)
    n = b.shape[0]
    z = (b.sum(axis=0) - n / 2) / np.sqrt(n / 4)
    p = 2 * stats.norm.sf(np.abs(z))
    return float(min(1.0, p.min() * b.shape[1]))


def two_sample_bits_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    """Bonferroni p-value that each bit position has the same frequency in a and b."""
    ba, bb = word_bits(a), word_bits(b)
    na, nb = ba.shape[0], bb.shape[0]
    pa, pb = ba.mean(axis=0), bb.mean(axis=0)
    pool = (ba.sum(axis=0) + bb.sum(axis=0)) / (na + nb)
    var = pool * (1 - pool) * (1 / na + 1 / nb)
    const = var == 0  # a bit fixed in both samples at the same value: no evidence
    z = np.zeros(64)
    z[~const] = (pa - pb)[~const] / np.sqrt(var[~const])
    z[const & (pa != pb)] = np.inf
    p = 2 * stats.norm.sf(np.abs(z))
    return float(min(1.0, p.min() * 64))


def ks_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov on the words read as uniform [0, 1) values."""
    fa = np.asarray(a, dtype=np.int64).reshape(-1).view(np.uint64) / 2.0**64
    fb = np.asarray(b, dtype=np.int64).reshape(-1).view(np.uint64) / 2.0**64
    return float(stats.ks_2samp(fa, fb).pvalue)


def loo_nearest_mean_accuracy(F0: np.ndarray, F1: np.ndarray) -> float:
    """Leave-one-out accuracy of a nearest-class-mean classifier (F: samples × features).

    With no signal it is 0.5 ± 0.5/sqrt(N); any feature that differs in distribution
    between the classes by a constant shift pulls it towards 1.
    """
    F = np.vstack([F0, F1]).astype(np.float64)
    y = np.r_[np.zeros(len(F0)), np.ones(len(F1))]
    s0, s1 = F0.sum(axis=0).astype(np.float64), F1.sum(axis=0).astype(np.float64)
    n0, n1 = len(F0), len(F1)
    correct = 0
    for i in range(len(F)):
        m0 = (s0 - F[i] * (y[i] == 0)) / (n0 - (y[i] == 0))
        m1 = (s1 - F[i] * (y[i] == 1)) / (n1 - (y[i] == 1))
        guess = float(np.sum((F[i] - m1) ** 2) < np.sum((F[i] - m0) ** 2))
        correct += guess == y[i]
    return correct / len(F)


def chance_bound(n_samples: int, sigmas: float = 5.0) -> float:
    """Accuracy a blind classifier exceeds with probability < ~3e-7 (5 sigma)."""
    return 0.5 + sigmas * 0.5 / np.sqrt(n_samples)


def ring_add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (np.asarray(a).view(np.uint64) + np.asarray(b).view(np.uint64)).view(np.int64)


def ring_sub(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (np.asarray(a).view(np.uint64) - np.asarray(b).view(np.uint64)).view(np.int64)


# ------------------------------------------------------- attacks on a mask stream
def _untemper(y: int) -> int:
    y ^= y >> 18
    y ^= (y << 15) & 0xEFC60000
    t = y
    for _ in range(5):  # invert y ^= (y << 7) & 0x9D2C5680
        t = y ^ ((t << 7) & 0x9D2C5680)
    y = t & 0xFFFFFFFF
    t = y
    for _ in range(2):  # invert y ^= y >> 11
        t = y ^ (t >> 11)
    return t & 0xFFFFFFFF


def mt_predict(known: np.ndarray, count: int) -> np.ndarray:
    """Assume the mask stream is torch's Mersenne Twister (CrypTen's stock dealer):
    rebuild its state from 312 consecutive int64 outputs and predict the next ``count``.

    torch draws a full-ring int64 as two 32-bit words, high word first, plus -2^63.
    """
    words: list[int] = []
    for v in np.asarray(known[:312], dtype=np.int64).tolist():
        u = (v + (1 << 63)) & MASK64
        words += [u >> 32, u & 0xFFFFFFFF]
    rng = random.Random()
    rng.setstate((3, tuple(_untemper(w) for w in words) + (624,), None))
    out = np.empty(count, dtype=np.int64)
    for i in range(count):
        u = (rng.getrandbits(32) << 32) | rng.getrandbits(32)
        out[i] = u - (1 << 63)
    return out


def linear_predictor(known: np.ndarray, lags: int = 8) -> np.ndarray:
    """Least-squares autoregressive coefficients over the words read as reals in [-1, 1).

    A linear generator (or reused / low-rank masks) would make later words a linear
    function of earlier ones; the fitted coefficients then predict them.
    """
    x = np.asarray(known, dtype=np.int64).astype(np.float64) / 2.0**63
    rows = np.stack([x[i : len(x) - lags + i] for i in range(lags)], axis=1)
    coef, *_ = np.linalg.lstsq(np.c_[rows, np.ones(len(rows))], x[lags:], rcond=None)
    return coef


def linear_predict(coef: np.ndarray, history: np.ndarray, count: int) -> np.ndarray:
    """Roll the autoregressive predictor forward ``count`` steps (reals in [-1, 1))."""
    lags = len(coef) - 1
    h = list(np.asarray(history, dtype=np.int64).astype(np.float64)[-lags:] / 2.0**63)
    out = np.empty(count)
    for i in range(count):
        nxt = float(np.dot(coef[:lags], h[-lags:]) + coef[lags])
        out[i] = nxt
        h.append(nxt)
    return out


def words_as_unit(words: np.ndarray) -> np.ndarray:
    """int64 ring words read as reals in [0, 1) (uniform words: uniform reals)."""
    w = np.ascontiguousarray(np.asarray(words, dtype=np.int64).reshape(-1))
    return (w.view(np.uint64) / 2.0**64).astype(np.float32)


def positional_zscore(
    F0: np.ndarray, F1: np.ndarray, rng: np.random.Generator, n_perm: int = 100
) -> float:
    """How far the label split stands out, position by position, from random splits.

    T = sum over features of (mean_0 - mean_1)^2 / pooled variance: large when any
    position's distribution depends on the class. Calibrated by relabelling the samples
    at random (exact under the null: the runs are i.i.d. whatever the input), the result
    is a z-score of the observed T among the permuted ones; about N(0, 1) without
    signal (T sums ~1e5 features).
    """
    F = np.vstack([F0, F1]).astype(np.float32)
    var = F.var(axis=0)
    keep = var > 0  # features constant over all runs carry no information
    F = F[:, keep] / np.sqrt(var[keep])
    n0 = len(F0)

    def stat(first: np.ndarray) -> float:
        mask = np.zeros(len(F), dtype=bool)
        mask[first] = True
        diff = F[mask].mean(axis=0) - F[~mask].mean(axis=0)
        return float(np.dot(diff, diff))

    observed = stat(np.arange(n0))
    null = np.array([stat(rng.permutation(len(F))[:n0]) for _ in range(n_perm)])
    return float((observed - null.mean()) / null.std())
