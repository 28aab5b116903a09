"""Tests for secagg.sharing: seeded additive sharing over Z_2^64.

The spec test vector is recomputed with an independent AES implementation path
(``cryptography``'s raw AES-ECB over explicit big-endian counter blocks, ``struct``
for the words, Python integers for the ring), never through ``secagg.prg``.

Statistical tests
-----------------
All uniformity/independence checks in this module share one family-wise false-alarm
rate ``FAMILY_ALPHA = 1e-3``, split by Bonferroni over at most ``MAX_TESTS = 400``
hypothesis tests, so each individual p-value must exceed ``P_MIN = 2.5e-6``. Keys
come from a fixed SHA-256 counter instead of the OS CSPRNG, so the outcome is
deterministic (never flaky) while still exercising AES-CTR and the ring arithmetic;
``FAMILY_ALPHA`` is the chance that a correct implementation would have failed for a
random key set. A negative control shows the same tests reject a broken sharing.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from secagg import encoding, prg
from secagg import sharing as S

SPEC = Path(__file__).resolve().parents[1] / "proto" / "SHARE_ENCODING.md"

SPEC_SEED = bytes(range(32))
SPEC_X = [1.5, -0.25, 3.0e-4, 100.0, -7.0]
SPEC_X_ENC = [98304, -16384, 20, 6553600, -458752]
SPEC_S_A = [
    -3413929544732602126,
    -9189824986115017815,
    -1900596787321348624,
    4410926500381718182,
    -4790936418954920946,
]
SPEC_S_B = [
    3413929544732700430,
    9189824986115001431,
    1900596787321348644,
    -4410926500375164582,
    4790936418954462194,
]
SPEC_S_B_HEX = "0eef004ad5b6602f57cc649522d1887f24a28951b546601a5a09c8ceb73dc9c2f24343214ad37c42"

I64 = st.integers(-(2**63), 2**63 - 1)


def to_signed(v: int) -> int:
    v %= 2**64
    return v - 2**64 if v >= 2**63 else v


def independent_expand(seed: bytes, d: int) -> list[int]:
    """AES-256 of counter blocks 0, 1, 2, … (big-endian), read as LE int64 words."""
    enc = Cipher(algorithms.AES(seed), modes.ECB()).encryptor()
    nblocks = (d + 1) // 2
    stream = b"".join(enc.update(j.to_bytes(16, "big")) for j in range(nblocks))
    return list(struct.unpack(f"<{d}q", stream[: 8 * d]))


# --- spec vector ----------------------------------------------------------------------


def test_seed_bytes() -> None:
    assert S.SEED_BYTES == 32 == prg.KEY_BYTES


def test_spec_vector_independent() -> None:
    x_enc = [round(v * 65536.0) for v in SPEC_X]  # round() is ties-to-even, as specified
    assert x_enc == SPEC_X_ENC
    s_a = independent_expand(SPEC_SEED, 5)
    assert s_a == SPEC_S_A
    s_b = [to_signed(x - a) for x, a in zip(x_enc, s_a, strict=True)]
    assert s_b == SPEC_S_B
    assert struct.pack("<5q", *s_b).hex() == SPEC_S_B_HEX
    # FIPS-197-style known answer: AES-256(key 00..1f, zero block)
    assert struct.pack("<2q", *s_a[:2]).hex() == "f29000b62a499fd0a9f39a6add2e7780"


def test_spec_vector_reference_implementation() -> None:
    x_enc = encoding.encode(SPEC_X, encoding.EncodingParams(coord_bound=1e3, norm_bound=1e3))
    assert x_enc.tolist() == SPEC_X_ENC
    assert S.share_a(SPEC_SEED, 5).tolist() == SPEC_S_A
    assert S.reconstruct(SPEC_SEED, np.array(SPEC_S_B, dtype=np.int64)).tolist() == SPEC_X_ENC
    assert S.share_to_bytes(np.array(SPEC_S_B, dtype=np.int64)).hex() == SPEC_S_B_HEX


def test_spec_document_carries_the_vector() -> None:
    text = SPEC.read_text(encoding="utf-8")
    assert SPEC_SEED.hex() in text and SPEC_S_B_HEX in text
    numbers = {int(n) for n in re.findall(r"-?\d{6,}", text)}
    assert set(SPEC_S_A) <= numbers and set(SPEC_S_B) <= numbers


@pytest.mark.parametrize("d", [0, 1, 2, 3, 33])
def test_share_a_matches_independent_expansion(d: int) -> None:
    seed = hashlib.sha256(b"share_a").digest()
    assert S.share_a(seed, d).tolist() == independent_expand(seed, d)


# --- split / reconstruct --------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.int64, st.integers(0, 50), elements=I64))
def test_split_reconstruct(x: np.ndarray) -> None:
    before = x.copy()
    sh = S.split(x)
    assert np.array_equal(x, before)
    assert isinstance(sh.seed, bytes) and len(sh.seed) == S.SEED_BYTES
    assert sh.share_b.dtype == np.int64 and sh.share_b.shape == x.shape
    s_a = S.share_a(sh.seed, x.shape[0])
    # ring identity checked with Python integers, independent of numpy wrapping
    for xi, ai, bi in zip(x.tolist(), s_a.tolist(), sh.share_b.tolist(), strict=True):
        assert (ai + bi - xi) % 2**64 == 0
    assert np.array_equal(S.reconstruct(sh.seed, sh.share_b), x)


def test_split_extremes_wrap() -> None:
    x = np.array([2**63 - 1, -(2**63), 0, -1], dtype=np.int64)
    with np.errstate(all="raise"):  # no overflow warnings leak out of the ring ops
        sh = S.split(x)
        assert np.array_equal(S.reconstruct(sh.seed, sh.share_b), x)


def test_split_uses_fresh_csprng_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    seeds = {S.split(np.zeros(4, dtype=np.int64)).seed for _ in range(50)}
    assert len(seeds) == 50
    calls: list[bytes] = []

    def fake() -> bytes:
        calls.append(bytes([len(calls)]) * 32)
        return calls[-1]

    monkeypatch.setattr(prg, "fresh_key", fake)
    sh = S.split(np.arange(3, dtype=np.int64))
    assert calls == [sh.seed]


@pytest.mark.parametrize(
    "bad",
    [np.zeros(3), np.zeros(3, dtype=np.int32), np.zeros((2, 2), dtype=np.int64)],
    ids=["float", "int32", "2-D"],
)
def test_split_rejects_non_ring_vectors(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="x_enc"):
        S.split(bad)


def test_worker_shares_repr_eq_validation() -> None:
    sh = S.split(np.arange(3, dtype=np.int64))
    assert sh.seed.hex() not in repr(sh) and repr(sh.seed) not in repr(sh)
    assert sh == sh and sh != S.WorkerShares(seed=sh.seed, share_b=sh.share_b)
    with pytest.raises(ValueError, match="32 bytes, got 31"):
        S.WorkerShares(seed=bytes(31), share_b=np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match="int64"):
        S.WorkerShares(seed=bytes(32), share_b=np.zeros(2))


@pytest.mark.parametrize("seed", [bytes(16), "x" * 32, None])
def test_share_a_rejects_bad_seed(seed: object) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        S.share_a(seed, 3)  # type: ignore[arg-type]


# --- wire bytes -----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.int64, st.integers(0, 40), elements=I64))
def test_bytes_round_trip(x: np.ndarray) -> None:
    b = S.share_to_bytes(x)
    assert b == struct.pack(f"<{x.shape[0]}q", *x.tolist())
    y = S.share_from_bytes(b, x.shape[0])
    assert np.array_equal(x, y) and y.dtype == np.int64 and y.flags.writeable
    assert np.array_equal(S.share_from_bytes(bytearray(b), x.shape[0]), x)
    assert np.array_equal(S.share_from_bytes(memoryview(b), x.shape[0]), x)


def test_bytes_little_endian() -> None:
    assert S.share_to_bytes(np.array([1, -1], dtype=np.int64)) == b"\x01" + bytes(7) + b"\xff" * 8
    # a strided view serialises in coordinate order
    assert S.share_to_bytes(np.arange(6, dtype=np.int64)[::2]) == struct.pack("<3q", 0, 2, 4)


@pytest.mark.parametrize(("n", "d"), [(39, 5), (41, 5), (0, 1), (8, 0)])
def test_from_bytes_length_mismatch(n: int, d: int) -> None:
    with pytest.raises(ValueError, match=rf"expected {8 * d} bytes.*got {n} bytes"):
        S.share_from_bytes(bytes(n), d)


@pytest.mark.parametrize("d", [-1, 2.0, True])
def test_from_bytes_bad_d(d: object) -> None:
    with pytest.raises(ValueError, match="non-negative integer"):
        S.share_from_bytes(bytes(16), d)  # type: ignore[arg-type]


def test_to_bytes_rejects_non_int64() -> None:
    with pytest.raises(ValueError, match="int64"):
        S.share_to_bytes(np.zeros(2))


# --- statistics -----------------------------------------------------------------------

FAMILY_ALPHA = 1e-3
MAX_TESTS = 400
P_MIN = FAMILY_ALPHA / MAX_TESTS  # Bonferroni: per-test threshold 2.5e-6
N_SPLITS = 2000
DIM = 64


def _det_keys(label: bytes) -> Iterator[bytes]:
    for i in itertools.count():
        yield hashlib.sha256(label + i.to_bytes(8, "big")).digest()


def _bit_counts(words: np.ndarray) -> np.ndarray:
    """Number of ones at each of the 64 bit positions (0 = least significant)."""
    u8 = np.ascontiguousarray(words.astype("<i8")).view(np.uint8).reshape(-1, 8)
    return np.unpackbits(u8, axis=1, bitorder="little").sum(axis=0, dtype=np.int64)


def _byte_hist(words: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(
        (words.view(np.uint64) >> np.uint64(8 * k)).astype(np.uint8).ravel(), minlength=256
    )


def uniformity_pvalues(words: np.ndarray) -> list[float]:
    """Chi-square per bit position (64 tests) and per byte position (8 tests, 256 bins)."""
    n = words.size
    ones = _bit_counts(words)
    ps = [float(stats.chisquare([o, n - o]).pvalue) for o in ones]
    ps += [float(stats.chisquare(_byte_hist(words, k)).pvalue) for k in range(8)]
    return ps


def two_sample_pvalues(a: np.ndarray, b: np.ndarray) -> list[float]:
    """Same distribution? 2x2 chi-square per bit (64), 2x256 per byte (8), KS (1)."""
    ca, cb = _bit_counts(a), _bit_counts(b)
    na, nb = a.size, b.size
    ps = [
        float(stats.chi2_contingency([[x, na - x], [y, nb - y]], correction=False).pvalue)
        for x, y in zip(ca, cb, strict=True)
    ]
    for k in range(8):
        table = np.stack([_byte_hist(a, k), _byte_hist(b, k)])
        ps.append(float(stats.chi2_contingency(table[:, table.sum(0) > 0]).pvalue))
    ps.append(
        float(
            stats.ks_2samp(
                a.ravel().astype(np.float64), b.ravel().astype(np.float64), method="asymp"
            ).pvalue
        )
    )
    return ps


def _collect_shares_b(monkeypatch: pytest.MonkeyPatch, x: np.ndarray, label: bytes) -> np.ndarray:
    keys = _det_keys(label)
    monkeypatch.setattr(prg, "fresh_key", lambda: next(keys))
    return np.stack([S.split(x).share_b for _ in range(N_SPLITS)])


def _inputs() -> tuple[np.ndarray, np.ndarray]:
    p = encoding.EncodingParams(coord_bound=23000.0 / 8, norm_bound=23000.0)
    # every coordinate at the coordinate bound, so the norm sits exactly at L
    big = encoding.encode(np.where(np.arange(DIM) % 2 == 0, 1.0, -1.0) * p.coord_bound, p)
    return np.zeros(DIM, dtype=np.int64), big


def test_share_b_uniform_and_independent_of_input(monkeypatch: pytest.MonkeyPatch) -> None:
    zeros, big = _inputs()
    assert np.abs(big).min() == 2875 * 2**16
    sb_zero = _collect_shares_b(monkeypatch, zeros, b"zeros")
    sb_big = _collect_shares_b(monkeypatch, big, b"big")
    ps = uniformity_pvalues(sb_zero) + uniformity_pvalues(sb_big)
    ps += two_sample_pvalues(sb_zero, sb_big)
    assert len(ps) == 2 * 72 + 73
    assert min(ps) > P_MIN, f"min p = {min(ps):.3g} (threshold {P_MIN:.3g})"


def test_seed_expansion_uniform() -> None:
    keys = _det_keys(b"expand")
    s_a = np.stack([S.share_a(next(keys), DIM) for _ in range(N_SPLITS)])
    ps = uniformity_pvalues(s_a)
    # consecutive words independent: joint histogram of their top nibbles (256 cells)
    top = (s_a.view(np.uint64) >> np.uint64(60)).astype(np.int64)
    pairs = (top[:, :-1] * 16 + top[:, 1:]).ravel()
    ps.append(float(stats.chisquare(np.bincount(pairs, minlength=256)).pvalue))
    # and uniform as real numbers on [0, 1) (top 53 bits)
    u = (s_a.view(np.uint64) >> np.uint64(11)).astype(np.float64).ravel() / 2.0**53
    ps.append(float(stats.kstest(u, "uniform", method="asymp").pvalue))
    assert len(ps) == 74
    assert min(ps) > P_MIN, f"min p = {min(ps):.3g} (threshold {P_MIN:.3g})"


def _broken_split(mask_bits: int) -> Callable[[np.ndarray, bytes], np.ndarray]:
    def split(x: np.ndarray, seed: bytes) -> np.ndarray:
        s_a = prg.expand_seed(seed, x.shape[0]) & np.int64((1 << mask_bits) - 1)
        return x - s_a

    return split


def test_statistics_detect_a_weak_mask() -> None:
    # negative control: a 24-bit mask cannot hide the ~29-bit input, and its high bits
    # are constant; the per-bit and two-sample tests must flag that at the same threshold
    zeros, big = _inputs()
    keys = _det_keys(b"control")
    weak = _broken_split(24)
    sb_zero = np.stack([weak(zeros, next(keys)) for _ in range(N_SPLITS)])
    sb_big = np.stack([weak(big, next(keys)) for _ in range(N_SPLITS)])
    assert min(uniformity_pvalues(sb_zero)) < P_MIN
    assert min(two_sample_pvalues(sb_zero, sb_big)) < P_MIN


def test_share_a_into_writes_exactly_share_a() -> None:
    from secagg.sharing import share_a, share_a_into

    seed = bytes(range(32))
    out = np.full((2, 1001), 7, dtype=np.int64)
    share_a_into(seed, out[1])
    assert np.array_equal(out[1], share_a(seed, 1001))
    assert (out[0] == 7).all()
    with pytest.raises(ValueError):
        share_a_into(b"short", out[0])
