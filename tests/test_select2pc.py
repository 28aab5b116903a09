"""Krum / Multi-Krum selection inside 2PC (secagg.select2pc) against secagg.rules,
on real party processes (MpcCluster): picks in order bit for bit, and the aggregate."""

from __future__ import annotations

import numpy as np
import pytest

from secagg import rules
from secagg.cluster import MpcCluster
from secagg.select2pc import select_party


def split(rng: np.random.Generator, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = rng.integers(-(2**63), 2**63, v.shape, dtype=np.int64)
    return a, v - a


@pytest.fixture(scope="module")
def cluster():
    with MpcCluster(timeout_s=120) as c:
        yield c


def draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int, int]:
    f = int(rng.integers(0, 4))
    n = int(rng.integers(2 * f + 3, 2 * f + 9))
    m = int(rng.integers(1, n + 1))
    x = rng.integers(-50, 50, (n, 6), dtype=np.int64)
    dup = rng.integers(0, n, n // 3)  # duplicate rows: exact ties in D and scores
    x[dup] = x[0]
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    return x, d, f, m


def test_selection_and_sum_match_rules(cluster: MpcCluster) -> None:
    rng = np.random.default_rng(18)
    for _ in range(6):
        x, d, f, m = draw(rng)
        d0, d1 = split(rng, d)
        x0, x1 = split(rng, x)
        (pa, sa, _), (pb, sb, _) = cluster.run(select_party, (d0, f, m, x0), (d1, f, m, x1))
        want = rules.multi_krum(d, f, m)
        assert pa == pb == want
        if m == 1:
            assert pa == [rules.krum(d, f)]
        np.testing.assert_array_equal(sa, x[want].sum(axis=0))
        np.testing.assert_array_equal(sb, sa)


def shares_then_select(session, x, f, m):  # noqa: ANN001, ANN201
    d = session.sq_distances(x, keep_share=True)
    return select_party(session, d, f, m, x)


def test_from_kept_distance_shares(cluster: MpcCluster) -> None:
    """End to end: each party keeps its share of D from sq_distances (nothing opened)."""
    rng = np.random.default_rng(7)
    x = rng.integers(-(2**20), 2**20, (9, 16), dtype=np.int64)
    x[4] = x[1]
    f, m = 2, 4
    x0, x1 = split(rng, x)
    (pa, sa, _), (pb, sb, _) = cluster.run(shares_then_select, (x0, f, m), (x1, f, m))
    xt = x.astype(object)  # exact D at the ring's scale
    d = np.array([[int(sum((xt[i] - xt[j]) ** 2)) for j in range(9)] for i in range(9)])
    want = rules.multi_krum(d.astype(np.int64), f, m)
    assert pa == pb == want
    np.testing.assert_array_equal(sa, x[want].sum(axis=0))
