"""Tests for secagg.reference: the plaintext oracle for the secure protocol."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.reference import (
    ReferenceResult,
    aggregate,
    aggregate_encoded,
    sq_distances,
    sq_distances_int,
)
from secagg.rules import RULES, RuleError, bulyan_coordinate, bulyan_window_sum

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"
GOLDEN_CASES = sorted(GOLDEN.glob("case_*.json")) if GOLDEN.is_dir() else []
_NO_GOLDEN = pytest.param(
    None, marks=pytest.mark.skip(reason=f"golden cases not found at {GOLDEN}")
)
FRAC_BITS = 16  # the fixed-point precision the golden README guarantees margins for

FAST = settings(max_examples=40, deadline=None)


def _load_case(path: Path) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    meta = json.loads(path.read_text())
    stem = path.name.removesuffix(".json")
    X = np.load(path.with_name(f"{stem}.X.npy"))
    return meta, X, np.load(path.with_name(f"{stem}.aggregate.npy"))


def _expected_divisor(meta: dict[str, Any]) -> int:
    n, f = meta["n"], meta["f"]
    return {
        "mean": n,
        "krum": 1,
        "multi-krum": meta["m"] if meta["m"] is not None else n - f - 2,
        "bulyan": n - 4 * f,
    }[meta["rule"]]


@st.composite
def small_int_points(draw: st.DrawFn) -> np.ndarray:
    n = draw(st.integers(3, 9))
    d = draw(st.integers(1, 4))
    rows = st.lists(st.integers(-(2**20), 2**20), min_size=d, max_size=d)
    return np.array(draw(st.lists(rows, min_size=n, max_size=n)), dtype=np.int64)


# ------------------------------------------------------------------------------ golden


def _golden_order(selected: list[int], meta: dict) -> list[int]:
    """golden lists Multi-Krum's picks sorted; the rules return them in pick order."""
    return sorted(selected) if meta["rule"] == "multi-krum" else selected


@pytest.mark.parametrize(
    "case", GOLDEN_CASES or [_NO_GOLDEN], ids=lambda p: p.stem if p else "absent"
)
def test_golden_aggregate(case: Path) -> None:
    meta, X, expected = _load_case(case)
    res = aggregate(X, meta["rule"], meta["f"], meta["m"])
    assert _golden_order(res.selected, meta) == meta["selected"]
    assert res.divisor == _expected_divisor(meta)
    scale = float(np.abs(X).max())
    np.testing.assert_allclose(res.aggregate, expected, rtol=1e-9, atol=1e-9 * scale)


@pytest.mark.parametrize(
    "case", GOLDEN_CASES or [_NO_GOLDEN], ids=lambda p: p.stem if p else "absent"
)
def test_golden_fixed_point_same_selection(case: Path) -> None:
    # the golden margins are chosen so 16 fractional bits select the same workers;
    # this is what the secure path computes on encoded integers
    meta, X, expected = _load_case(case)
    Xint = np.round(X * 2**FRAC_BITS).astype(np.int64)
    res = aggregate_encoded(Xint, meta["rule"], meta["f"], meta["m"])
    assert _golden_order(res.selected, meta) == meta["selected"]
    assert res.divisor == _expected_divisor(meta)
    assert res.encoded_sum is not None
    scale = float(np.abs(X).max())
    decoded = res.encoded_sum / res.divisor / 2**FRAC_BITS
    np.testing.assert_allclose(decoded, expected, rtol=0, atol=1e-3 * scale)


# -------------------------------------------------------------------------- distances


def test_sq_distances_hand() -> None:
    X = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    expected = np.array([[0, 25, 2], [25, 0, 13], [2, 13, 0]], dtype=np.float64)
    D = sq_distances(X)
    assert D.dtype == np.float64
    np.testing.assert_array_equal(D, expected)
    np.testing.assert_array_equal(sq_distances_int(X.astype(np.int64)), expected)
    assert sq_distances(np.zeros((1, 3))).shape == (1, 1)


@FAST
@given(st.integers(1, 9), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_sq_distances_exactly_symmetric(n: int, d: int, seed: int) -> None:
    X = np.random.default_rng(seed).standard_normal((n, d)) * 1e3
    D = sq_distances(X)
    np.testing.assert_array_equal(D, D.T)
    np.testing.assert_array_equal(np.diagonal(D), 0.0)
    brute = ((X[:, None, :] - X[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_allclose(D, brute, rtol=1e-12, atol=0)


@FAST
@given(small_int_points())
def test_sq_distances_int_exact(X: np.ndarray) -> None:
    D = sq_distances_int(X)
    assert D.dtype == np.int64
    rows = X.tolist()
    for i, a in enumerate(rows):
        for j, b in enumerate(rows):
            assert int(D[i, j]) == sum((x - y) ** 2 for x, y in zip(a, b, strict=True))


def test_sq_distances_int_large_values_take_exact_path() -> None:
    # d * spread^2 exceeds int64 although every actual distance fits: the exact
    # fallback must be used instead of wrapping
    big = 2**30  # spread 2^31+3, so d * spread^2 > 2^63 but each distance < 2^63
    X = np.array([[big, 0], [big + 3, 4], [-big, 1]], dtype=np.int64)
    D = sq_distances_int(X)
    assert int(D[0, 1]) == 25
    assert int(D[0, 2]) == (2 * big) ** 2 + 1
    assert int(D[1, 2]) == (2 * big + 3) ** 2 + 9


def test_sq_distances_int_overflow_raises() -> None:
    X = np.array([[2**31], [-(2**31)]], dtype=np.int64)
    with pytest.raises(ValueError, match="exceeds 2\\^63-1"):
        sq_distances_int(X)


# --------------------------------------------------------------------------- aggregates


def test_aggregate_hand() -> None:
    # points on a line: 0, 1, 3, 7, 20 (n=5, f=1); Krum scores 10, 5, 13, 52, 458
    X = np.array([[0.0], [1.0], [3.0], [7.0], [20.0]])
    res = aggregate(X, "krum", 1)
    assert res.selected == [1] and res.divisor == 1
    np.testing.assert_array_equal(res.aggregate, [1.0])
    res = aggregate(X, "multi-krum", 1)
    assert res.selected == [1, 0] and res.divisor == 2  # pick order: lowest score first
    np.testing.assert_array_equal(res.aggregate, [0.5])
    res = aggregate(X, "multi-krum", 1, 3)
    np.testing.assert_allclose(res.aggregate, [4.0 / 3.0])
    res = aggregate(X, "mean", 1)
    assert res.selected == [0, 1, 2, 3, 4] and res.divisor == 5
    np.testing.assert_allclose(res.aggregate, [6.2])
    np.testing.assert_array_equal(res.distances, sq_distances(X))
    assert res.encoded_sum is None


def test_aggregate_bulyan_hand() -> None:
    # n=7, f=1: theta=5, beta=3
    X = np.array(
        [[0.0, 5.0], [1.0, 4.0], [2.0, 3.0], [3.0, 2.0], [4.0, 1.0], [50.0, 0.0], [-60.0, 9.0]]
    )
    res = aggregate(X, "bulyan", 1)
    assert len(res.selected) == 5 and res.divisor == 3
    assert 5 not in res.selected and 6 not in res.selected  # the two outliers
    np.testing.assert_allclose(res.aggregate, bulyan_coordinate(X[res.selected], 1))


@FAST
@given(small_int_points(), st.sampled_from(RULES), st.data())
def test_encoded_matches_float_on_integer_data(
    X: np.ndarray, rule: str, data: st.DataObject
) -> None:
    # integer data of moderate size is exact in float64 too: both paths must agree
    n = X.shape[0]
    f_max = {"mean": 2, "krum": (n - 3) // 2, "multi-krum": (n - 3) // 2, "bulyan": (n - 3) // 4}
    f = data.draw(st.integers(0, f_max[rule]))
    enc = aggregate_encoded(X, rule, f)
    flt = aggregate(X.astype(np.float64), rule, f)
    assert enc.selected == flt.selected and enc.divisor == flt.divisor
    np.testing.assert_array_equal(enc.distances, flt.distances)
    assert enc.encoded_sum is not None and enc.encoded_sum.dtype == np.int64
    if rule == "bulyan":
        expected_sum = bulyan_window_sum(X[enc.selected], f)
    else:
        expected_sum = np.array(
            [sum(int(X[i, c]) for i in enc.selected) for c in range(X.shape[1])]
        )
    np.testing.assert_array_equal(enc.encoded_sum, expected_sum)
    np.testing.assert_allclose(enc.aggregate, enc.encoded_sum / enc.divisor, rtol=0, atol=0)
    np.testing.assert_allclose(flt.aggregate, enc.aggregate, rtol=1e-12, atol=1e-9)


def test_encoded_sum_is_exact_beyond_float_precision() -> None:
    big = 2**55  # sums above 2^53 would round in float64
    X = np.array([[big + 1], [big + 2], [big + 4]], dtype=np.int64)
    res = aggregate_encoded(X, "mean", 0)
    assert res.encoded_sum is not None
    assert int(res.encoded_sum[0]) == 3 * big + 7


def test_result_is_frozen_and_read_only() -> None:
    res = aggregate(np.arange(12, dtype=np.float64).reshape(4, 3), "mean", 0)
    assert isinstance(res, ReferenceResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.divisor = 2  # type: ignore[misc]
    with pytest.raises(ValueError):
        res.aggregate[0] = 1.0
    with pytest.raises(ValueError):
        res.distances[0, 1] = 1.0


def test_krum_aggregate_does_not_alias_input() -> None:
    X = np.array([[0.0], [1.0], [3.0], [7.0], [20.0]])
    res = aggregate(X, "krum", 1)
    assert not np.shares_memory(res.aggregate, X)


def test_inputs_not_mutated() -> None:
    rng = np.random.default_rng(5)
    X = rng.standard_normal((11, 6))
    Xint = np.round(X * 2**FRAC_BITS).astype(np.int64)
    X_copy, Xint_copy = X.copy(), Xint.copy()
    X.flags.writeable = False
    Xint.flags.writeable = False
    for rule in RULES:
        aggregate(X, rule, 2)
        aggregate_encoded(Xint, rule, 2)
    sq_distances(X)
    sq_distances_int(Xint)
    np.testing.assert_array_equal(X, X_copy)
    np.testing.assert_array_equal(Xint, Xint_copy)


# ------------------------------------------------------------------------- error paths


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: aggregate(np.zeros(5), "mean", 0), "2-D"),
        (lambda: aggregate(np.zeros((0, 3)), "mean", 0), "n >= 1"),
        (lambda: aggregate(np.array([[np.nan], [0.0], [1.0]]), "mean", 0), "finite"),
        (lambda: sq_distances(np.zeros((2, 2, 2))), "2-D"),
        (lambda: aggregate_encoded(np.zeros((3, 2)), "mean", 0), "signed integer"),
        (lambda: sq_distances_int(np.zeros((3, 2), dtype=np.uint64)), "signed integer"),
        (
            lambda: aggregate_encoded(np.full((3, 1), 2**62, dtype=np.int64), "mean", 0),
            "may exceed 2\\^63-1",
        ),
    ],
    ids=["1-D", "empty", "NaN", "3-D", "float Xint", "uint Xint", "sum overflow"],
)
def test_input_errors(call: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    ("rule", "n", "f", "m", "fragments"),
    [
        ("krum", 5, 2, None, ["n >= 2f+3", "n=5", "f=2"]),
        ("multi-krum", 7, 2, 8, ["1 <= m <= n", "m=8", "n=7"]),
        ("bulyan", 6, 1, None, ["n >= 4f+3", "n=6", "f=1"]),
        ("mean", 4, 0, 2, ["only multi-krum"]),
        ("median", 4, 0, None, ["unknown rule"]),
    ],
)
def test_rule_errors_propagate(
    rule: str, n: int, f: int, m: int | None, fragments: list[str]
) -> None:
    X = np.arange(n * 2, dtype=np.float64).reshape(n, 2)
    for call in (aggregate, aggregate_encoded):
        data = X if call is aggregate else X.astype(np.int64)
        with pytest.raises(RuleError) as info:
            call(data, rule, f, m)
        for fragment in fragments:
            assert fragment in str(info.value)
