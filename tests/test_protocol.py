"""The core 2PC protocol with real CrypTen processes (A, B, dealer) on loopback.

Every secure result is compared with the plaintext reference on the same encoded
inputs: distances, selections and opened sums must agree bit for bit (the protocol is
exact on encoded integers, see secagg.mpc), and the decoded aggregate agrees with the
float reference within the encoding's resolution.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from secagg import encoding, reference, sharing
from secagg.cluster import ClusterError, MpcCluster
from secagg.protocol import RoundPlan

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"


@pytest.fixture(scope="module")
def cluster():
    with MpcCluster(timeout_s=120) as c:
        yield c


def share_rows(Xenc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What server A (expanded seeds) and server B (streamed shares) hold."""
    parts = [sharing.split(row) for row in Xenc]
    share_a = np.stack([sharing.share_a(p.seed, Xenc.shape[1]) for p in parts])
    share_b = np.stack([p.share_b for p in parts])
    return share_a, share_b


def secure(cluster: MpcCluster, Xenc: np.ndarray, plan: RoundPlan):
    share_a, share_b = share_rows(Xenc)
    return cluster.round(share_a, share_b, plan)


def random_case(rng: np.random.Generator, rule: str) -> tuple[np.ndarray, int, int | None]:
    f = int(rng.integers(0, 3))
    need = 4 * f + 3 if rule == "bulyan" else 2 * f + 3
    n = int(rng.integers(max(need, 1), need + 6))
    d = int(rng.integers(1, 40))
    X = rng.normal(size=(n, d)) * rng.uniform(0.1, 10)
    # a few far-away vectors so the rules have something to reject
    for i in rng.choice(n, size=f, replace=False):
        X[i] += rng.normal(size=d) * 50
    m = int(rng.integers(1, n + 1)) if rule == "multi-krum" and rng.random() < 0.5 else None
    return X, f, m


@pytest.mark.parametrize("rule", ["mean", "krum", "multi-krum", "bulyan"])
def test_rule_matches_plaintext_reference_on_random_draws(cluster, rule):
    rng = np.random.default_rng(zlib.crc32(rule.encode()))  # stable across processes
    params = encoding.EncodingParams(scale=1.0, coord_bound=1e3, norm_bound=2e4)
    for _ in range(6):
        X, f, m = random_case(rng, rule)
        Xenc = np.stack([encoding.encode(row, params) for row in X])
        ref = reference.aggregate_encoded(Xenc, rule, f, m)
        out_a, out_b = secure(cluster, Xenc, RoundPlan(rule, f, m))
        assert out_a.selected == out_b.selected == ref.selected
        assert out_a.divisor == out_b.divisor == ref.divisor
        np.testing.assert_array_equal(out_a.encoded_sum, ref.encoded_sum)
        np.testing.assert_array_equal(out_b.encoded_sum, ref.encoded_sum)
        if rule != "mean":
            np.testing.assert_array_equal(out_a.distances, ref.distances)
        assert out_b.distances is None  # B never sees the distance matrix
        # against the float reference: only the encoding's rounding separates them
        agg = encoding.decode(out_a.encoded_sum, params, out_a.divisor)
        fref = reference.aggregate(X, rule, f, m)
        if fref.selected == ref.selected:
            # Bulyan's window choice may flip where two windows tie within the resolution
            far = np.abs(agg - fref.aggregate) > encoding.resolution(params) / 2 + 1e-12
            assert far.mean() <= (0.05 if rule == "bulyan" else 0.0), (rule, int(far.sum()))


def test_distances_are_exact_and_symmetric(cluster):
    rng = np.random.default_rng(7)
    params = encoding.EncodingParams(scale=1.0, coord_bound=100.0, norm_bound=2e4)
    X = rng.normal(size=(9, 500)) * 3
    Xenc = np.stack([encoding.encode(row, params) for row in X])
    out_a, _ = secure(cluster, Xenc, RoundPlan("krum", 2))
    D = out_a.distances
    np.testing.assert_array_equal(D, D.T)
    np.testing.assert_array_equal(np.diag(D), 0)
    np.testing.assert_array_equal(D, reference.sq_distances_int(Xenc))
    # error bound against the real-valued distances: rounding each coordinate by at most
    # u/2 (u = 2^-16) moves ||xi - xj||^2 by at most 2·||xi-xj||·sqrt(d)·u/2·2 + d·u^2
    Dreal = reference.sq_distances(X)
    u = encoding.resolution(params)
    bound = 2 * np.sqrt(Dreal) * np.sqrt(X.shape[1]) * u + X.shape[1] * u**2
    assert np.all(np.abs(D / 2.0**32 - Dreal) <= bound + 1e-9)


def golden_cases() -> list[Path]:
    return sorted(GOLDEN.glob("case_*.json")) if GOLDEN.is_dir() else []


@pytest.mark.skipif(not golden_cases(), reason="../shared/golden is not present")
def test_golden_cases_through_2pc(cluster):
    for case in golden_cases():
        meta = json.loads(case.read_text())
        stem = str(case)[: -len(".json")]
        X = np.load(stem + ".X.npy")
        expected = np.load(stem + ".aggregate.npy")
        scale_of_data = float(np.max(np.abs(X))) or 1.0
        # public per-round scale so the data uses the fixed-point precision well
        params = encoding.EncodingParams(
            scale=1.0 / scale_of_data, coord_bound=1.0, norm_bound=float(np.sqrt(X.shape[1])) + 1
        )
        Xenc = np.stack([encoding.encode(row, params) for row in X])
        out_a, _ = secure(cluster, Xenc, RoundPlan(meta["rule"], meta["f"], meta["m"]))
        want = meta["selected"]
        got = out_a.selected if meta["rule"] != "multi-krum" else sorted(out_a.selected)
        assert got == want, case.name
        agg = encoding.decode(out_a.encoded_sum, params, out_a.divisor)
        assert np.max(np.abs(agg - expected)) <= 1e-3 * scale_of_data, case.name


@pytest.mark.parametrize(
    ("rule", "n", "f", "m", "bound"),
    [
        ("krum", 4, 1, None, "2f+3"),
        ("multi-krum", 6, 1, 7, "m"),
        ("bulyan", 10, 2, None, "4f+3"),
    ],
)
def test_precondition_errors_raise_on_both_servers_and_session_survives(
    cluster, rule, n, f, m, bound
):
    Xenc = np.zeros((n, 4), dtype=np.int64)
    with pytest.raises(ClusterError) as err:
        secure(cluster, Xenc, RoundPlan(rule, f, m))
    assert bound in str(err.value)
    # the same session still runs a valid round afterwards
    out_a, _ = secure(cluster, np.eye(5, dtype=np.int64) << 16, RoundPlan("mean", 0))
    np.testing.assert_array_equal(out_a.encoded_sum, np.r_[np.ones(5, np.int64) << 16])


def test_traffic_counters_report_one_opening(cluster):
    n, d = 8, 2000
    Xenc = np.random.default_rng(1).integers(-(2**20), 2**20, size=(n, d))
    out_a, out_b = secure(cluster, Xenc, RoundPlan("multi-krum", 1))
    for out in (out_a, out_b):
        sent = out.traffic["bytes_sent"]["distances"]
        # one n×d opening each way (+ B's n×n share of D to A)
        assert 8 * n * d <= sent <= 8 * n * d + 8 * n * n + 64


def _prepared_then_distances(session, n_prepared, share):  # runs inside each party
    session.prepare_distances(n_prepared, share.shape[1])
    return session.sq_distances(share)


def test_prepared_gram_pair_serves_fewer_rows_exactly(cluster):
    rng = np.random.default_rng(11)
    Xenc = rng.integers(-(2**20), 2**20, size=(6, 300))
    share_a, share_b = share_rows(Xenc)
    # material fetched for 9 expected workers, used for the 6 that arrived
    D, none = cluster.run(_prepared_then_distances, (9, share_a), (9, share_b))
    assert none is None
    np.testing.assert_array_equal(D, reference.sq_distances_int(Xenc))


def _distances_cold(session, share):  # runs inside each party
    return session.sq_distances(share)


def test_distances_span_several_pipelined_column_blocks(cluster):
    # gram_width(3) = 174762 columns: d = 400,001 is three blocks (the last partial),
    # with blocks in flight while earlier ones are multiplied; prepared for 5 rows the
    # width is 104857 (four blocks) and only the first 3 rows of R are used
    rng = np.random.default_rng(12)
    Xenc = rng.integers(-(2**20), 2**20, size=(3, 400_001))
    share_a, share_b = share_rows(Xenc)
    want = reference.sq_distances_int(Xenc)
    D, _ = cluster.run(_distances_cold, (share_a,), (share_b,))
    np.testing.assert_array_equal(D, want)
    D, _ = cluster.run(_prepared_then_distances, (5, share_a), (5, share_b))
    np.testing.assert_array_equal(D, want)


def _bulyan_blocks(session, share, selected, f, block):  # runs inside each party
    return session.bulyan_window_sum(share, selected, f, block=block)


def test_bulyan_stage_in_column_blocks_equals_the_plaintext_window_sum(cluster):
    from secagg import rules

    rng = np.random.default_rng(13)
    Xenc = rng.integers(-(2**20), 2**20, size=(9, 10))
    share_a, share_b = share_rows(Xenc)
    selected, f = [0, 2, 3, 4, 5, 7, 8], 2
    want = rules.bulyan_window_sum(Xenc[selected], f)
    for block in (3, 10, 64):  # 4 blocks (last of 1 column), exactly one, more than d
        got, _ = cluster.run(
            _bulyan_blocks, (share_a, selected, f, block), (share_b, selected, f, block)
        )
        np.testing.assert_array_equal(got, want)
