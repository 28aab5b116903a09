"""Tests for secagg.rules: golden cases, hand-computed cases, properties, error paths."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from secagg.reference import sq_distances
from secagg.rules import (
    RULES,
    RuleError,
    bulyan_beta,
    bulyan_coordinate,
    bulyan_select,
    bulyan_theta,
    bulyan_window_sum,
    krum,
    krum_scores,
    multi_krum,
    select,
    validate_params,
)

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"
GOLDEN_CASES = sorted(GOLDEN.glob("case_*.json")) if GOLDEN.is_dir() else []
_NO_GOLDEN = pytest.param(
    None, marks=pytest.mark.skip(reason=f"golden cases not found at {GOLDEN}")
)

FAST = settings(max_examples=60, deadline=None)


def _load_case(path: Path) -> tuple[dict[str, Any], np.ndarray]:
    meta = json.loads(path.read_text())
    stem = path.name.removesuffix(".json")
    return meta, np.load(path.with_name(f"{stem}.X.npy"))


def _line(*xs: float) -> np.ndarray:
    """Squared distances of points on a line."""
    return sq_distances(np.asarray(xs, dtype=np.float64).reshape(-1, 1))


def _readonly(a: np.ndarray) -> np.ndarray:
    b = np.array(a)
    b.flags.writeable = False
    return b


@st.composite
def clouds(draw: st.DrawFn, min_n: int = 3, max_n: int = 11) -> np.ndarray:
    """Gaussian point clouds with a few outliers; seeded so examples stay cheap."""
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    X = rng.standard_normal((n, d))
    outliers = draw(st.integers(0, n // 3))
    X[:outliers] *= 20.0
    return X


def _tie_free(values: np.ndarray) -> bool:
    s = np.sort(values)
    return bool(np.all(np.diff(s) > 1e-9 * max(1.0, float(np.abs(s).max()))))


# ------------------------------------------------------------------------------ golden


@pytest.mark.parametrize(
    "case", GOLDEN_CASES or [_NO_GOLDEN], ids=lambda p: p.stem if p else "absent"
)
def test_golden_selection(case: Path) -> None:
    meta, X = _load_case(case)
    assert X.shape == (meta["n"], meta["d"])
    D = sq_distances(X)
    got = select(meta["rule"], D, meta["f"], meta["m"])
    if meta["rule"] == "multi-krum":
        # golden lists Multi-Krum's picks sorted; the rule returns them in pick order
        assert sorted(got) == meta["selected"]
        scores = krum_scores(D, meta["f"])
        assert got == sorted(got, key=lambda i: (scores[i], i))
    else:
        assert got == meta["selected"]


def test_golden_cases_present() -> None:
    if not GOLDEN.is_dir():
        pytest.skip(f"golden cases not found at {GOLDEN}")
    assert {json.loads(p.read_text())["rule"] for p in GOLDEN_CASES} == set(RULES)


# ------------------------------------------------------------------------ hand-computed


def test_krum_scores_hand() -> None:
    # points 0, 1, 3, 7, 20 on a line, n=5, f=1 -> k=2 nearest neighbours
    D = _line(0, 1, 3, 7, 20)
    np.testing.assert_array_equal(krum_scores(D, 1), [10, 5, 13, 52, 458])
    np.testing.assert_array_equal(krum_scores(D, 1, neighbours=1), [1, 1, 4, 16, 169])
    np.testing.assert_array_equal(krum_scores(D, 0, neighbours=4), D.sum(axis=1))
    assert krum(D, 1) == 1
    assert multi_krum(D, 1) == [1, 0]  # pick order: lowest score first
    assert multi_krum(D, 1, 3) == [1, 0, 2]
    assert select("krum", D, 1) == [1]
    assert select("mean", D, 7) == [0, 1, 2, 3, 4]


def test_int64_scores_are_exact_and_int64() -> None:
    D = _line(0, 1, 3, 7, 20).astype(np.int64)
    scores = krum_scores(D, 1)
    assert scores.dtype == np.int64
    np.testing.assert_array_equal(scores, [10, 5, 13, 52, 458])
    # above 2^53 a float64 sum would round; int64 must not
    big = D * (2**50)
    assert krum_scores(big, 1)[0] == 10 * 2**50


def test_krum_ties_go_to_lowest_index() -> None:
    # n=3, f=0: one neighbour; 0 and 1 are mutual nearest neighbours, both score 4
    D = _line(1, -1, 10)
    np.testing.assert_array_equal(krum_scores(D, 0), [4, 4, 81])
    assert krum(D, 0) == 0
    assert multi_krum(D, 0, 1) == [0]
    assert multi_krum(D, 0, 2) == [0, 1]
    # same configuration relabelled: the pair is now (1, 2)
    assert krum(_line(10, -1, 1), 0) == 1


def test_multi_krum_ties_are_stable() -> None:
    # all four points at the corners of a square: every score is equal
    X = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.5]])
    D = sq_distances(X)
    # f=0, k=3: centre scores 0.75, each corner 0.5 + 1 + 1 = 2.5
    assert krum(D, 0) == 4
    assert multi_krum(D, 0, 2) == [4, 0]  # the centre first, then corners by index
    assert multi_krum(D, 0, 3) == [4, 0, 1]


def test_bulyan_select_hand_f0() -> None:
    # f=0, n=3: every pick uses one neighbour. Points 0, 3, 4: 3 and 4 tie (score 1),
    # pick 1; then 0 and 4 tie (score 16), pick 0; then 2 is alone.
    assert bulyan_select(_line(0, 3, 4), 0) == [1, 0, 2]
    assert bulyan_select(_line(4, 3, 0), 0) == [0, 1, 2]


def test_bulyan_last_pick_mutual_neighbours_lower_index() -> None:
    # f=1, n=7: theta=5; the last pick sees n'=3 and one neighbour, so the two closest
    # of the last three tie exactly and the lower index must win.
    rng = np.random.default_rng(7)
    for _ in range(20):
        D = sq_distances(rng.standard_normal((7, 3)))
        picks = bulyan_select(D, 1)
        before_last = sorted(set(range(7)) - set(picks[:-1]))
        assert len(before_last) == 3
        pairs = itertools.combinations(before_last, 2)
        i, j = min(pairs, key=lambda p: D[p[0], p[1]])
        assert picks[-1] == min(i, j)


def test_bulyan_theta_beta() -> None:
    assert (bulyan_theta(7, 1), bulyan_beta(7, 1)) == (5, 3)
    assert (bulyan_theta(12, 2), bulyan_beta(12, 2)) == (8, 4)
    assert (bulyan_theta(3, 0), bulyan_beta(3, 0)) == (3, 3)


def test_bulyan_coordinate_hand() -> None:
    # theta=5, f=1 -> beta=3; columns: generic, evenly spaced, tie between windows
    X = np.array([[0, 0, 1], [1, 1, 1], [2, 2, 2], [10, 3, 3], [-7, 4, 5]], dtype=np.float64)
    # col 0 sorted -7 0 1 2 10, median 1: windows cost 9, 2, 10 -> {0,1,2}
    # col 2 sorted 1 1 2 3 5, median 2: windows cost 2, 2, 4 -> tie, lower {1,1,2}
    np.testing.assert_allclose(bulyan_coordinate(X, 1), [1.0, 2.0, 4.0 / 3.0])
    np.testing.assert_array_equal(
        bulyan_window_sum(X.astype(np.int64), 1), np.array([3, 6, 4], dtype=np.int64)
    )


def test_bulyan_coordinate_even_theta_uses_lower_median() -> None:
    # theta=6, f=1 -> beta=4; median is the 3rd value (2), not 2.5 or 3.
    # windows [0..3], [1..4] both cost 4 -> lower one, mean 1.5
    X = np.arange(6, dtype=np.float64).reshape(6, 1)
    np.testing.assert_array_equal(bulyan_coordinate(X, 1), [1.5])
    # order of the rows is irrelevant
    np.testing.assert_array_equal(bulyan_coordinate(X[::-1], 1), [1.5])


def test_bulyan_coordinate_f0_is_mean() -> None:
    X = np.array([[1.0, -2.0], [4.0, 8.0], [7.0, 0.5]])
    np.testing.assert_allclose(bulyan_coordinate(X, 0), X.mean(axis=0))


def test_bulyan_window_sum_int64_exact() -> None:
    big = 2**60
    X = np.array([[big + 1], [big + 3], [big + 2]], dtype=np.int64)
    out = bulyan_window_sum(X, 0)
    assert out.dtype == np.int64
    assert int(out[0]) == 3 * big + 6
    # int32 input is widened, still exact
    assert bulyan_window_sum(np.array([[1], [2], [3]], dtype=np.int32), 0).dtype == np.int64


# -------------------------------------------------------- Bulyan stage two: brute force


def _brute_force_set(col: list[int], f: int) -> list[tuple[int, ...]]:
    """All β-subsets (as sorted value tuples) minimising sum |x - median|, exactly."""
    theta = len(col)
    beta = theta - 2 * f
    srt = sorted(col)
    med = srt[(theta - 1) // 2]
    cost = {R: sum(abs(x - med) for x in R) for R in itertools.combinations(srt, beta)}
    best = min(cost.values())
    return [R for R, c in cost.items() if c == best]


def _window_set(col: list[int], f: int) -> tuple[int, ...]:
    """The window rule, written independently of the implementation."""
    theta = len(col)
    beta = theta - 2 * f
    srt = sorted(col)
    mid = (theta - 1) // 2
    starts = range(max(0, mid - beta + 1), min(mid, theta - beta) + 1)
    s = min(starts, key=lambda s: (sum(abs(x - srt[mid]) for x in srt[s : s + beta]), s))
    return tuple(srt[s : s + beta])


@st.composite
def coordinate_columns(draw: st.DrawFn, distinct: bool) -> tuple[np.ndarray, int]:
    f = draw(st.integers(0, 2))
    theta = draw(st.integers(2 * f + 3, 2 * f + 6))
    d = draw(st.integers(1, 3))
    # a narrow range makes ties common; the tie-free variant needs a wide one
    values = st.integers(-1000, 1000) if distinct else st.integers(-6, 6)
    X = np.array(
        [draw(st.lists(values, min_size=theta, max_size=theta)) for _ in range(d)],
        dtype=np.int64,
    ).T
    if distinct:
        for c in range(d):
            col = sorted(X[:, c].tolist())
            med = col[(theta - 1) // 2]
            # tie-free: no value is as far from the median as another one
            assume(len({abs(x - med) for x in col}) == theta)
    return X, f


@FAST
@given(coordinate_columns(distinct=True))
def test_bulyan_coordinate_matches_brute_force_tie_free(data: tuple[np.ndarray, int]) -> None:
    X, f = data
    beta = X.shape[0] - 2 * f
    sums = bulyan_window_sum(X, f)
    means = bulyan_coordinate(X.astype(np.float64), f)
    for c in range(X.shape[1]):
        (best,) = _brute_force_set(X[:, c].tolist(), f)
        assert int(sums[c]) == sum(best)
        assert means[c] == pytest.approx(sum(best) / beta, rel=1e-12, abs=1e-12)


@FAST
@given(coordinate_columns(distinct=False))
def test_window_rule_equals_brute_force_with_ties(data: tuple[np.ndarray, int]) -> None:
    X, f = data
    sums = bulyan_window_sum(X, f)
    for c in range(X.shape[1]):
        col = X[:, c].tolist()
        window = _window_set(col, f)
        # the window is one of the optimal subsets, and the lowest such window is chosen
        assert window in _brute_force_set(col, f)
        assert int(sums[c]) == sum(window)


@FAST
@given(coordinate_columns(distinct=False), st.randoms(use_true_random=False))
def test_bulyan_coordinate_row_order_irrelevant(data: tuple[np.ndarray, int], rnd: Any) -> None:
    X, f = data
    perm = list(range(X.shape[0]))
    rnd.shuffle(perm)
    np.testing.assert_array_equal(bulyan_window_sum(X[perm], f), bulyan_window_sum(X, f))


# ------------------------------------------------------------------- selection properties


@FAST
@given(clouds(), st.data())
def test_krum_and_multi_krum_permutation_equivariant(X: np.ndarray, data: st.DataObject) -> None:
    n = X.shape[0]
    f = data.draw(st.integers(0, (n - 3) // 2))
    D = sq_distances(X)
    assume(_tie_free(krum_scores(D, f)))
    perm = np.array(data.draw(st.permutations(range(n))))
    Dp = D[np.ix_(perm, perm)]  # worker a of the new labelling is perm[a] of the old
    assert perm[krum(Dp, f)] == krum(D, f)
    m = data.draw(st.integers(1, n))
    assert perm[multi_krum(Dp, f, m)].tolist() == multi_krum(D, f, m)  # pick order too


@FAST
@given(clouds(min_n=3), st.data())
def test_bulyan_permutation_equivariant_until_one_neighbour(
    X: np.ndarray, data: st.DataObject
) -> None:
    n = X.shape[0]
    f = data.draw(st.integers(0, (n - 3) // 4))
    D = sq_distances(X)
    picks = bulyan_select(D, f)
    # picks made with >= 2 neighbours (n' >= f+4) are label-free on tie-free data; with
    # one neighbour mutual nearest neighbours tie by construction and labels decide
    prefix = min(len(picks), max(0, n - f - 3))
    remaining = list(range(n))
    for p in picks[:prefix]:
        sub = D[np.ix_(remaining, remaining)]
        assume(_tie_free(krum_scores(sub, f, neighbours=max(1, len(remaining) - f - 2))))
        remaining.remove(p)
    perm = np.array(data.draw(st.permutations(range(n))))
    picks_p = bulyan_select(D[np.ix_(perm, perm)], f)
    assert perm[picks_p[:prefix]].tolist() == picks[:prefix]


def _integer_D(data: st.DataObject) -> np.ndarray:
    """Squared distances of small integer points: exact in float64 and int64, with ties."""
    n = data.draw(st.integers(3, 11))
    d = data.draw(st.integers(1, 3))
    pts = data.draw(
        st.lists(st.lists(st.integers(-4, 4), min_size=d, max_size=d), min_size=n, max_size=n)
    )
    return sq_distances(np.array(pts, dtype=np.float64))


@FAST
@given(st.data())
def test_multi_krum_extremes_and_nesting(data: st.DataObject) -> None:
    D = _integer_D(data)  # ties included: the identities must hold regardless
    n = D.shape[0]
    f = data.draw(st.integers(0, (n - 3) // 2))
    assert multi_krum(D, f, 1) == [krum(D, f)]
    assert sorted(multi_krum(D, f, n)) == list(range(n))
    assert multi_krum(D, f) == multi_krum(D, f, n - f - 2)
    scores = krum_scores(D, f)
    full = multi_krum(D, f, n)
    # pick order: by (score, index), each m a prefix of the next
    assert full == sorted(range(n), key=lambda i: (scores[i], i))
    for m in range(1, n + 1):
        assert multi_krum(D, f, m) == full[:m]


@FAST
@given(st.data())
def test_selection_invariant_under_fixed_point_scaling_and_dtype(data: st.DataObject) -> None:
    # the secure path reveals D at scale 2^32 as int64; selection must not change
    D = _integer_D(data)
    n = D.shape[0]
    f = data.draw(st.integers(0, (n - 3) // 4))
    Di = D.astype(np.int64)
    for rule in RULES:
        expected = select(rule, D, f)
        assert select(rule, D * 2.0**32, f) == expected
        assert select(rule, Di, f) == expected
        assert select(rule, Di << 32, f) == expected


@FAST
@given(st.data())
def test_bulyan_picks_distinct_first_is_krum(data: st.DataObject) -> None:
    D = _integer_D(data)
    n = D.shape[0]
    f = data.draw(st.integers(0, (n - 3) // 4))
    picks = bulyan_select(D, f)
    assert len(picks) == len(set(picks)) == bulyan_theta(n, f)
    assert picks[0] == krum(D, f)


def test_inputs_not_mutated() -> None:
    rng = np.random.default_rng(3)
    X = rng.standard_normal((11, 4))
    D = _readonly(sq_distances(X))
    D_copy = D.copy()
    Xr = _readonly(X)
    # read-only arrays make any in-place write raise; the copy check covers views
    krum_scores(D, 2)
    krum(D, 2)
    multi_krum(D, 2, 5)
    bulyan_select(D, 2)
    for rule in RULES:
        select(rule, D, 2)
    bulyan_coordinate(Xr[:7], 2)
    bulyan_window_sum(_readonly(np.round(X[:7] * 100).astype(np.int64)), 2)
    np.testing.assert_array_equal(D, D_copy)
    np.testing.assert_array_equal(Xr, X)


# ------------------------------------------------------------------------- error paths

_D5 = _line(0, 1, 3, 7, 20)
_D7 = _line(0, 1, 3, 7, 20, 21, 30)


def _asym() -> np.ndarray:
    D = _D5.copy()
    D[0, 1] = np.nextafter(D[0, 1], np.inf)  # one ulp: symmetrising would hide a bug
    return D


def _with(D: np.ndarray, i: int, j: int, v: float) -> np.ndarray:
    out = D.astype(np.float64)
    out[i, j] = v
    return out


ERRORS: list[tuple[str, Callable[[], object], list[str]]] = [
    ("krum n<2f+3", lambda: krum(_D5, 2), ["n >= 2f+3", "n=5", "f=2"]),
    ("multi-krum n<2f+3", lambda: multi_krum(_D5, 2), ["n >= 2f+3", "n=5", "f=2"]),
    ("bulyan n<4f+3", lambda: bulyan_select(_D5, 1), ["n >= 4f+3", "n=5", "f=1"]),
    ("bulyan theta bound", lambda: bulyan_theta(6, 1), ["n >= 4f+3", "n=6", "f=1"]),
    ("bulyan beta bound", lambda: bulyan_beta(10, 2), ["n >= 4f+3", "n=10", "f=2"]),
    ("select krum bound", lambda: select("krum", _D5, 2), ["n >= 2f+3", "n=5"]),
    ("select bulyan bound", lambda: select("bulyan", _D7, 2), ["n >= 4f+3", "n=7", "f=2"]),
    ("m=0", lambda: multi_krum(_D5, 1, 0), ["1 <= m <= n", "m=0", "n=5"]),
    ("m>n", lambda: multi_krum(_D5, 1, 6), ["1 <= m <= n", "m=6", "n=5"]),
    (
        "m float",
        lambda: multi_krum(_D5, 1, 2.0),  # type: ignore[arg-type]
        ["m to be an integer", "m=2.0"],
    ),
    ("m for krum", lambda: select("krum", _D5, 1, 2), ["only multi-krum", "m=2"]),
    ("m for mean", lambda: select("mean", _D5, 1, 2), ["only multi-krum", "m=2"]),
    ("unknown rule", lambda: select("median", _D5, 1), ["unknown rule", "'median'"]),
    ("params unknown rule", lambda: validate_params("trimmed", 5, 1), ["unknown rule"]),
    ("params krum", lambda: validate_params("krum", 6, 2), ["n >= 2f+3", "n=6", "f=2"]),
    (
        "params multi-krum",
        lambda: validate_params("multi-krum", 4, 1),
        ["n >= 2f+3", "n=4", "f=1"],
    ),
    ("params bulyan", lambda: validate_params("bulyan", 10, 2), ["n >= 4f+3", "n=10"]),
    ("params n=0", lambda: validate_params("mean", 0, 0), ["n >= 1", "n=0"]),
    ("params f<0", lambda: validate_params("mean", 3, -2), ["f >= 0", "f=-2"]),
    ("params n float", lambda: validate_params("mean", 3.0, 0), ["n to be an integer"]),
    ("params m>n", lambda: validate_params("multi-krum", 7, 1, 8), ["1 <= m <= n", "m=8"]),
    ("params m for bulyan", lambda: validate_params("bulyan", 7, 1, 3), ["only multi-krum"]),
    (
        "neighbours=0",
        lambda: krum_scores(_D5, 0, neighbours=0),
        ["1 <= neighbours <= n-1", "neighbours=0", "n=5"],
    ),
    (
        "neighbours=n",
        lambda: krum_scores(_D5, 0, neighbours=5),
        ["1 <= neighbours <= n-1", "neighbours=5", "n=5"],
    ),
    (
        "default neighbours < 1",
        lambda: krum_scores(_D5, 3),
        ["1 <= neighbours <= n-1", "n-f-2=0", "n=5", "f=3"],
    ),
    ("negative f", lambda: krum(_D5, -1), ["f >= 0", "f=-1"]),
    ("negative f mean", lambda: select("mean", _D5, -1), ["f >= 0", "f=-1"]),
    ("float f", lambda: krum(_D5, 1.0), ["f to be an integer", "f=1.0"]),  # type: ignore
    ("bool f", lambda: multi_krum(_D5, True), ["f to be an integer", "f=True"]),
    (
        "str f",
        lambda: bulyan_select(_D7, "1"),  # type: ignore[arg-type]
        ["f to be an integer", "f='1'"],
    ),
    ("1-D D", lambda: krum(np.zeros(5), 1), ["square 2-D", "(5,)"]),
    ("3-D D", lambda: krum(np.zeros((2, 2, 2)), 0), ["square 2-D", "(2, 2, 2)"]),
    ("non-square D", lambda: krum(np.zeros((5, 4)), 1), ["square 2-D", "(5, 4)"]),
    ("empty D", lambda: select("mean", np.zeros((0, 0)), 0), ["n >= 1", "n=0"]),
    ("bool D", lambda: krum(np.zeros((5, 5), dtype=bool), 1), ["dtype bool"]),
    ("complex D", lambda: krum(_D5.astype(complex), 1), ["dtype complex128"]),
    ("asymmetric D", lambda: krum(_asym(), 1), ["symmetric"]),
    (
        "asymmetric int D",
        lambda: multi_krum(_with(_D5, 2, 0, 8).astype(np.int64), 1),
        ["symmetric"],
    ),
    ("NaN in D", lambda: krum(_with(_D5, 1, 2, np.nan), 1), ["finite"]),
    ("inf in D", lambda: bulyan_select(_with(_D7, 3, 3, np.inf), 1), ["finite"]),
    ("nonzero diagonal", lambda: krum(_D5 + np.eye(5), 1), ["zero diagonal"]),
    (
        "negative D",
        lambda: krum(_D5 - 20 * (1 - np.eye(5)), 1),
        ["distances >= 0"],
    ),
    (
        "coordinate theta<2f+3",
        lambda: bulyan_coordinate(np.zeros((4, 2)), 1),
        ["theta >= 2f+3", "theta=4", "f=1"],
    ),
    ("coordinate 1-D", lambda: bulyan_coordinate(np.zeros(7), 1), ["2-D X_sel", "(7,)"]),
    ("coordinate NaN", lambda: bulyan_coordinate(np.full((5, 1), np.nan), 1), ["finite"]),
    ("coordinate f<0", lambda: bulyan_window_sum(np.zeros((5, 1)), -1), ["f >= 0", "f=-1"]),
    (
        "window sum overflow",
        lambda: bulyan_window_sum(np.full((3, 1), 2**62, dtype=np.int64), 0),
        ["2^63-1", "beta=3"],
    ),
]


@pytest.mark.parametrize(("call", "fragments"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors_name_the_bound(call: Callable[[], object], fragments: list[str]) -> None:
    with pytest.raises(RuleError) as info:
        call()
    assert isinstance(info.value, ValueError)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


@pytest.mark.parametrize(
    "call",
    [e[1] for e in ERRORS if e[2][0] in ("symmetric", "finite", "zero diagonal", "distances >= 0")],
)
def test_distance_errors_name_no_value_or_position(call: Callable[[], object]) -> None:
    """D is what only server A may see, and these messages travel to B, logs and
    statuses (issue #15): they state the condition, never an entry or its place."""
    with pytest.raises(RuleError) as info:
        call()
    msg = str(info.value)
    assert not re.search(r"D\[|(?<![<>])=\s*-?(\d|nan|inf)", msg), msg


def test_krum_bound_boundary_accepted() -> None:
    D = _line(*range(7))
    assert isinstance(krum(D, 2), int)  # n = 2f+3 exactly
    assert len(bulyan_select(D, 1)) == 5  # n = 4f+3 exactly
    for rule, n, f in [("krum", 7, 2), ("multi-krum", 7, 2), ("bulyan", 7, 1), ("mean", 1, 9)]:
        validate_params(rule, n, f)
    validate_params("multi-krum", 7, 2, 7)


@FAST
@given(st.data())
def test_validate_params_agrees_with_select(data: st.DataObject) -> None:
    # the protocol's up-front check must reject exactly what select would reject
    D = _integer_D(data)
    n = D.shape[0]
    rule = data.draw(st.sampled_from(RULES))
    f = data.draw(st.integers(0, 4))
    m = data.draw(st.none() | st.integers(0, n + 1)) if rule == "multi-krum" else None
    try:
        select(rule, D, f, m)
    except RuleError:
        with pytest.raises(RuleError):
            validate_params(rule, n, f, m)
    else:
        validate_params(rule, n, f, m)


def test_scores_past_int64_stay_exact() -> None:
    # a Byzantine vector at the norm bound must not abort the round through an overflow
    D = _line(0, 1, 2, 3, 4).astype(np.int64) * (3 * 2**57)  # every entry fits int64
    scores = krum_scores(D, 0, neighbours=4)
    exact = [sum(sorted(int(v) for j, v in enumerate(row) if j != i)[:4])
             for i, row in enumerate(D.tolist())]
    assert [int(v) for v in scores] == exact
    assert max(exact) > 2**63 - 1
    assert krum(D, 0) == krum(_line(0, 1, 2, 3, 4), 0)
