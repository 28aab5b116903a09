"""Tests for secagg.encoding (fixed point in Z_2^64).

CrypTen cannot be imported here: ``import crypten`` fails on torch 2.13 (its ONNX
converter imports the removed ``torch.onnx._internal.registration``), and the worker
SDK must not depend on torch anyway. So CrypTen's ``FixedPointEncoder`` is compared
through its documented formulas (crypten 0.4.1, ``crypten/encoder.py``), transcribed
into numpy below.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from secagg import encoding as E
from secagg.encoding import EncodingError, EncodingParams

UNIT = 2.0**16
EPS = np.finfo(np.float64).eps


def crypten_encode_float(x: np.ndarray) -> np.ndarray:
    """CrypTen's float-tensor path: ``(scale * x).long()``, truncation toward zero."""
    return np.trunc(x * UNIT).astype(np.int64)


def crypten_decode(t: np.ndarray) -> np.ndarray:
    """CrypTen 0.4.1 ``FixedPointEncoder.decode`` for scale 2^16 (before float32)."""
    corr = (t < 0).astype(np.int64)
    dividend = np.floor_divide(t, 2**16 - corr)
    rem = np.mod(t, 2**16)
    rem = rem + (rem == 0) * 2**16 * corr
    return dividend.astype(np.float64) + rem / UNIT


def params(scale: float = 1.0, coord_bound: float = 1000.0, norm_bound: float = 1000.0):
    return EncodingParams(scale=scale, coord_bound=coord_bound, norm_bound=norm_bound)


P = params()


# --- constants and spec vectors ------------------------------------------------------


def test_constants() -> None:
    assert E.FRAC_BITS == 16
    assert E.RING_BITS == 64
    assert E.MAX_NORM_BOUND == 2.0**14.5
    # the defining inequality: 4·L²·2^32 = 2^63 exactly at the limit
    assert 4 * E.MAX_NORM_BOUND**2 * 2.0**32 == pytest.approx(2.0**63, rel=1e-15)


def test_spec_vector_scale_one() -> None:
    x = [1.5, -0.25, 3.0e-4, 100.0, -7.0]
    out = E.encode(x, P)
    assert out.dtype == np.int64
    assert out.tolist() == [98304, -16384, 20, 6553600, -458752]
    # independent reference: Python's round() is also ties-to-even
    assert out.tolist() == [round(v * 65536.0) for v in x]


def test_spec_vector_scale_1000() -> None:
    p = params(scale=1000.0, coord_bound=10.0, norm_bound=100.0)
    x = [3.0e-4, -1.2345e-4, 2.0e-6, -4.0e-3]
    assert E.encode(x, p).tolist() == [19661, -8090, 131, -262144]
    assert E.encode(x, p).tolist() == [round((v * 1000.0) * 65536.0) for v in x]


def test_rounding_ties_to_even() -> None:
    units = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5])
    assert E.encode(units / UNIT, P).tolist() == [0, 2, 2, 0, -2, -2, 4]


# --- round trip and agreement with CrypTen ---------------------------------------------

SCALES = st.sampled_from([1.0, 1000.0, 3.7, 1e-2, 2.0**20])
D_MAX = 32


@st.composite
def in_bound_vectors(draw: st.DrawFn) -> tuple[np.ndarray, EncodingParams]:
    scale = draw(SCALES)
    # coord bound ≤ norm_bound/sqrt(D_MAX) so every in-coordinate-bound vector is in norm
    p = params(scale=scale, coord_bound=100.0, norm_bound=100.0 * math.sqrt(D_MAX))
    lim = p.coord_bound / scale
    d = draw(st.integers(1, D_MAX))
    unit = draw(hnp.arrays(np.float64, d, elements=st.floats(-1.0, 1.0, allow_subnormal=False)))
    # lim·u can exceed lim by an ulp only if |u| = 1; fl(lim·u·scale) may still be C+ulp
    x = unit * lim * (1.0 - 4 * EPS)
    return x, p


@settings(max_examples=300, deadline=None)
@given(in_bound_vectors())
def test_round_trip_error_within_half_step(case: tuple[np.ndarray, EncodingParams]) -> None:
    x, p = case
    back = E.decode(E.encode(x, p), p)
    # half a step, plus a few ulps of x from the float multiply/divide by scale
    tol = 2.0**-17 / p.scale + 4 * EPS * np.abs(x)
    assert np.all(np.abs(back - x) <= tol)
    assert E.resolution(p) == 2.0**-16 / p.scale


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(
        np.float64, st.integers(1, 64), elements=st.floats(-100.0, 100.0, allow_subnormal=False)
    )
)
def test_matches_documented_formula_and_crypten(x: np.ndarray) -> None:
    ours = E.encode(x, P)
    assert np.array_equal(ours, np.rint(x * UNIT).astype(np.int64))
    # CrypTen truncates; rounding to nearest differs from it by at most one unit, and
    # only in the direction of the nearer grid point
    cr = crypten_encode_float(x)
    assert np.all(np.abs(ours - cr) <= 1)
    assert np.all(np.abs(ours / UNIT - x) <= np.abs(cr / UNIT - x))
    # on exact grid points both encoders agree, and decoding is exact
    grid = np.round(x * UNIT) / UNIT
    assert np.array_equal(E.encode(grid, P), crypten_encode_float(grid))
    assert np.array_equal(E.decode(E.encode(grid, P), P), grid)


def test_crypten_truncates_where_we_round() -> None:
    x = np.array([3.0e-4, -3.0e-4])  # 19.66 units
    assert crypten_encode_float(x).tolist() == [19, -19]
    assert E.encode(x, P).tolist() == [20, -20]


def test_decode_exact_where_crypten_decode_is_off_by_one() -> None:
    # CrypTen 0.4.1's decode divides negatives by 2^16 - 1, so e.g. -131071 (≈ -2 + 2^-16)
    # comes back as ≈ -3: servers must decode with secagg.encoding.decode, not CrypTen's
    t = np.array([-131071, -65536 * 70000], dtype=np.int64)
    assert crypten_decode(t).tolist() == [-3.0 + 2.0**-16, -70001.0]
    assert E.decode(t, P).tolist() == [-2.0 + 2.0**-16, -70000.0]


def test_accepts_int_float32_and_lists() -> None:
    assert E.encode([1, -2, 3], P).tolist() == [65536, -131072, 196608]
    assert E.encode(np.array([1, -2], dtype=np.int8), P).tolist() == [65536, -131072]
    assert E.encode(np.array([0.5], dtype=np.float32), P).tolist() == [32768]
    assert E.encode(np.array([7], dtype=np.uint16), P).tolist() == [7 * 65536]


@pytest.mark.parametrize(
    "bad",
    [np.array([True, False]), np.array([1 + 2j]), np.array(["1.5"]), np.array([10**30])],
    ids=["bool", "complex", "str", "object-int"],
)
def test_rejects_non_real_dtypes(bad: np.ndarray) -> None:
    with pytest.raises(EncodingError, match="dtype"):
        E.encode(bad, P)


# --- error paths ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "word"), [(np.nan, "NaN"), (np.inf, r"\+Inf"), (-np.inf, "-Inf")]
)
@pytest.mark.parametrize("index", [0, 17, 63])
def test_non_finite_named_by_index(value: float, word: str, index: int) -> None:
    x = np.zeros(64)
    x[index] = value
    with pytest.raises(EncodingError, match=rf"^coordinate {index} is {word}: .*skip this round"):
        E.encode(x, P)


def test_first_offending_coordinate_is_named() -> None:
    x = np.zeros(10)
    x[7] = np.nan
    x[4] = 5000.0
    x[2] = np.inf
    with pytest.raises(EncodingError, match=r"^coordinate 2 is \+Inf"):
        E.encode(x, P)
    x[2] = 0.0
    with pytest.raises(EncodingError, match=r"^coordinate 4 = 5000\.0 exceeds coord_bound"):
        E.encode(x, P)


def test_coordinate_bound_message() -> None:
    x = np.array([0.0, 0.0, 0.0, 5.2e4])
    with pytest.raises(EncodingError) as ei:
        E.encode(x, params(coord_bound=1000.0, norm_bound=20000.0))
    msg = str(ei.value)
    assert msg.startswith("coordinate 3 = 52000.0 exceeds coord_bound 1000.0")
    assert "scaling by 1.0" in msg and "clip the gradient" in msg and "raise the bound" in msg


def test_coordinate_bound_applies_after_scaling() -> None:
    p = params(scale=1000.0, coord_bound=1.0, norm_bound=10.0)
    E.encode([1.0e-3], p)  # scale·x = 1.0, on the bound: accepted
    with pytest.raises(EncodingError, match=r"coordinate 0 = 0\.002 .*scaling by 1000\.0"):
        E.encode([2.0e-3], p)


def test_scale_overflow_to_inf_is_a_bound_error() -> None:
    p = params(scale=1e300, coord_bound=1.0, norm_bound=10.0)
    with pytest.raises(EncodingError, match=r"coordinate 1 = 1e\+100 exceeds coord_bound"):
        E.encode([0.0, 1e100], p)


def test_norm_bound_message() -> None:
    x = np.full(4, 60.0)  # norm 120
    with pytest.raises(EncodingError) as ei:
        E.encode(x, params(coord_bound=100.0, norm_bound=100.0))
    msg = str(ei.value)
    assert "norm" in msg and "120.0" in msg and "norm_bound 100.0" in msg
    E.encode(np.full(4, 50.0), params(coord_bound=100.0, norm_bound=100.0))  # norm = bound


@pytest.mark.parametrize("bad", [np.zeros((2, 3)), np.float64(1.0), [[1.0]]])
def test_rejects_non_1d(bad: object) -> None:
    with pytest.raises(EncodingError, match="1-D"):
        E.encode(bad, P)  # type: ignore[arg-type]


def test_rejects_empty() -> None:
    with pytest.raises(EncodingError, match="empty"):
        E.encode(np.array([], dtype=np.float64), P)
    with pytest.raises(EncodingError, match="empty"):
        E.clip_to_bounds([], P)


def test_encoding_error_is_value_error() -> None:
    assert issubclass(EncodingError, ValueError)


# --- parameters -----------------------------------------------------------------------


@pytest.mark.parametrize("field", ["scale", "coord_bound", "norm_bound"])
@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf, True, "1.0", None])
def test_params_validation(field: str, value: object) -> None:
    kw: dict[str, object] = {"scale": 1.0, "coord_bound": 10.0, "norm_bound": 10.0}
    kw[field] = value
    with pytest.raises(EncodingError, match=field):
        EncodingParams(**kw)  # type: ignore[arg-type]


def test_params_norm_bound_limit_named() -> None:
    with pytest.raises(EncodingError, match="MAX_NORM_BOUND"):
        params(norm_bound=E.MAX_NORM_BOUND)
    with pytest.raises(EncodingError, match="MAX_NORM_BOUND"):
        params(norm_bound=1e6)
    ok = params(norm_bound=np.nextafter(E.MAX_NORM_BOUND, 0.0))
    assert ok.norm_bound < E.MAX_NORM_BOUND


def test_params_keyword_only_frozen_and_normalised() -> None:
    with pytest.raises(TypeError):
        EncodingParams(1.0, 10.0, 10.0)  # type: ignore[misc]
    p = EncodingParams(coord_bound=np.float32(2.0), norm_bound=3)
    assert p.scale == 1.0 and type(p.coord_bound) is float and type(p.norm_bound) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.scale = 2.0  # type: ignore[misc]
    assert p == EncodingParams(scale=1.0, coord_bound=2.0, norm_bound=3.0)


# --- headroom -------------------------------------------------------------------------


def test_headroom_ok_for_typical_round() -> None:
    E.check_headroom(params(coord_bound=100.0, norm_bound=1000.0), n_workers=100, dim=10**7)


def _l_max(dim: int) -> float:
    s = math.isqrt(dim)
    s = s if s * s == dim else s + 1
    return (2.0**31.5 - s) / 2.0**17


@pytest.mark.parametrize("dim", [1, 1000, 10**6, 10**9])
def test_headroom_distance_limit_boundary(dim: int) -> None:
    lm = _l_max(dim)
    below = params(coord_bound=1.0, norm_bound=lm * (1 - 1e-12))
    E.check_headroom(below, n_workers=2, dim=dim)
    above = params(coord_bound=1.0, norm_bound=lm * (1 + 1e-12))
    with pytest.raises(EncodingError, match=r"squared distances.*lower norm_bound below"):
        E.check_headroom(above, n_workers=2, dim=dim)


def test_headroom_distance_is_exact_arithmetic() -> None:
    # the exact condition (L·2^17 + ceil sqrt d)² < 2^63 decides, not a float estimate
    dim = 10**6
    for nb in (_l_max(dim) - 1e-9, _l_max(dim) + 1e-9):
        p = params(coord_bound=1.0, norm_bound=nb)
        exact_ok = (Fraction(p.norm_bound) * 2**17 + 1000) ** 2 < 2**63
        if exact_ok:
            E.check_headroom(p, 2, dim)
        else:
            with pytest.raises(EncodingError):
                E.check_headroom(p, 2, dim)


def test_headroom_sum_limit_names_n_workers() -> None:
    p = params(coord_bound=20000.0, norm_bound=23000.0)
    per = Fraction(20000) * 2**16 + Fraction(1, 2)
    n_max = math.ceil(Fraction(2**63) / per) - 1
    E.check_headroom(p, n_workers=n_max, dim=10)
    with pytest.raises(EncodingError, match=rf"lower n_workers to at most {n_max}"):
        E.check_headroom(p, n_workers=n_max + 1, dim=10)


def test_headroom_sum_uses_smaller_of_bounds() -> None:
    # coord_bound above norm_bound is redundant: |x_i| ≤ ||x|| ≤ L decides
    p = params(coord_bound=1e9, norm_bound=1.0)
    n_ok = math.ceil(Fraction(2**63) / (Fraction(2**16) + Fraction(1, 2))) - 1
    E.check_headroom(p, n_workers=n_ok, dim=10)


@pytest.mark.parametrize(("n", "d"), [(0, 5), (5, 0), (-1, 5), (True, 5), (2.0, 5), (5, None)])
def test_headroom_rejects_bad_counts(n: object, d: object) -> None:
    with pytest.raises(EncodingError, match="positive integer"):
        E.check_headroom(P, n, d)  # type: ignore[arg-type]


# --- clipping -------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    SCALES,
    hnp.arrays(
        np.float64, st.integers(1, 40), elements=st.floats(-1e6, 1e6, allow_subnormal=False)
    ),
)
def test_clip_output_always_encodes(scale: float, x: np.ndarray) -> None:
    p = params(scale=scale, coord_bound=3.0, norm_bound=10.0)
    before = x.copy()
    y = E.clip_to_bounds(x, p)
    assert np.array_equal(x, before)
    assert y is not x and y.dtype == np.float64 and y.shape == x.shape
    E.encode(y, p)  # must not raise
    # clipping never flips signs or grows magnitudes
    assert np.all(np.abs(y) <= np.abs(x))
    assert np.all(np.sign(y)[y != 0] == np.sign(x)[y != 0])


def test_clip_coordinates_then_norm() -> None:
    p = params(coord_bound=3.0, norm_bound=4.0)
    y = E.clip_to_bounds([10.0, -10.0, 0.0, 1.0], p)
    # coordinate clip gives [3, -3, 0, 1] (norm sqrt 19 ≈ 4.36), then onto the 4-ball
    expect = np.array([3.0, -3.0, 0.0, 1.0]) * (4.0 / math.sqrt(19.0))
    # the encoded integers must meet the bound exactly, and rounding them to 2^-16 can
    # add up to sqrt(d)/2 units: the result sits just inside, within 2·sqrt(d)/(L·2^17)
    np.testing.assert_allclose(y, expect, rtol=2 * 2 / (4.0 * 2**17))
    assert np.linalg.norm(y) <= 4.0
    enc = E.encode(y, p)
    assert E.sum_of_squares(enc) <= E.norm_limit_squared(p) == 4**2 * 2**32


def test_clip_leaves_in_bound_vector_alone() -> None:
    x = np.array([0.5, -1.0, 2.0])
    y = E.clip_to_bounds(x, params(coord_bound=3.0, norm_bound=5.0))
    assert np.array_equal(x, y) and y is not x


def test_clip_respects_scale() -> None:
    p = params(scale=1000.0, coord_bound=1.0, norm_bound=100.0)
    y = E.clip_to_bounds([5e-3, -1e-4], p)
    assert y.tolist() == [1e-3, -1e-4]


def test_clip_rejects_non_finite() -> None:
    with pytest.raises(EncodingError, match=r"^coordinate 2 is NaN"):
        E.clip_to_bounds([1e9, 0.0, np.nan], P)


# --- decode, mutation -----------------------------------------------------------------


def test_decode_divisor_gives_mean() -> None:
    xs = np.array([[1.0, -2.0, 0.25], [3.0, 4.0, -0.75], [2.0, 1.0, 0.5]])
    total = sum(E.encode(x, P) for x in xs)
    np.testing.assert_array_equal(E.decode(total, P, divisor=3), xs.mean(axis=0))
    p = params(scale=4.0)
    np.testing.assert_array_equal(E.decode(E.encode([0.5], p), p), [0.5])


@pytest.mark.parametrize("div", [0, -1, 1.5, True])
def test_decode_rejects_bad_divisor(div: object) -> None:
    with pytest.raises(EncodingError, match="divisor"):
        E.decode(np.array([1], dtype=np.int64), P, divisor=div)  # type: ignore[arg-type]


def test_decode_rejects_float_input() -> None:
    with pytest.raises(EncodingError, match="int64"):
        E.decode(np.array([1.0]), P)


def test_inputs_not_mutated_and_readonly_ok() -> None:
    x = np.array([1.5, -0.25, 3.0e-4, 100.0, -7.0])
    x.setflags(write=False)
    before = x.copy()
    enc = E.encode(x, P)
    E.clip_to_bounds(x, params(coord_bound=1.0, norm_bound=1.5))
    enc.setflags(write=False)
    dec = E.decode(enc, P, divisor=2)
    assert np.array_equal(x, before)
    assert enc.tolist() == [98304, -16384, 20, 6553600, -458752]
    assert dec.flags.writeable and not np.shares_memory(dec, enc)


# --- the norm bound, exactly at the limit (SHARE_ENCODING.md §2 step 4, §8.4) -----------

_AT_LIMIT = [2**30 - 1, 46340, 296, 19, 6, 5, 3]  # Σ x̃² = 2^60 = (16384·2^16)² exactly


def test_norm_bound_is_exact_on_the_encoded_integers() -> None:
    p = params(coord_bound=16384.0, norm_bound=16384.0)
    assert E.norm_limit_squared(p) == 2**60
    at = np.array(_AT_LIMIT, dtype=np.float64) / 2**16  # exact: x̃ = the integers above
    assert E.encode(at, p).tolist() == _AT_LIMIT  # equality is within the bound
    over = at.copy()
    over[-1] = 4 / 2**16  # Σ x̃² = 2^60 + 7
    # every float64 evaluation of the norm accepts it; the exact rule refuses it
    assert float(np.linalg.norm(over)) <= 16384.0
    assert math.fsum(float(t) * float(t) for t in over) <= 16384.0**2
    with pytest.raises(EncodingError, match=r"Σ x̃_i² = 1152921504606846983 > "):
        E.encode(over, p)
    # order-free: reversed, the same decision
    assert E.encode(at[::-1].copy(), p).tolist() == _AT_LIMIT[::-1]


def test_norm_bound_counts_the_rounding() -> None:
    # ||t|| < 5 passes a check on t, but rounding makes Σ x̃² exceed (5·2^16)² = 25·2^32
    p = params(coord_bound=10.0, norm_bound=5.0)
    t = np.array([3.0, 4.0 - 2**-18 + 2**-20])  # 4·2^16 - 0.25 + 0.0625: rounds to 4·2^16
    E.encode(t, p)  # x̃ = [3·2^16, 4·2^16]: exactly at the bound
    up = np.array([3.0 + 2**-17 + 2**-20, 4.0 - 7 * 2**-20])  # x̃ = [3·2^16 + 1, 4·2^16]
    assert float(np.linalg.norm(up)) < 5.0  # ||t||² = 25 - 2·2^-20 + tiny
    assert E.encode(up, params(coord_bound=10.0, norm_bound=5.0001)).tolist() == [
        3 * 2**16 + 1,
        4 * 2**16,
    ]
    with pytest.raises(EncodingError, match="exceeds norm_bound 5.0"):
        E.encode(up, p)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**31), 2**31), min_size=1, max_size=50))
def test_sum_of_squares_is_exact(values: list[int]) -> None:
    assert E.sum_of_squares(np.array(values, dtype=np.int64)) == sum(v * v for v in values)
