"""Projections computed as shares arrive equal the blockwise projections of the matrix."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest

from secagg import sharing
from secagg.prg import fresh_key
from secagg.validation import projections_plain
from servers.precompute import Projector

K, D = 12, 70_001  # D crosses a projection block boundary (validation.BLOCK = 32768)


@pytest.fixture()
def pool():
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as p:
        yield p


def _matrix(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-(2**63), 2**63 - 1, (n, D), dtype=np.int64)


def test_shares_projected_on_arrival_equal_the_plain_projections(pool) -> None:
    seed = fresh_key()
    X = _matrix(5, 1)
    proj = Projector("r", seed, K, D, pool)
    for i in (0, 2, 3):
        proj.add_share(f"w{i}", X[i])
    participants = [f"w{i}" for i in range(5)]  # w1 and w4 never precomputed
    got = proj.projections(participants, X)
    np.testing.assert_array_equal(got, projections_plain(X, seed, K))
    assert proj.precomputed == 3


def test_a_seed_is_projected_as_its_expansion(pool) -> None:
    seed = fresh_key()
    seeds = [fresh_key() for _ in range(3)]
    A = np.stack([sharing.share_a(s, D) for s in seeds])
    proj = Projector("r", seed, K, D, pool)
    for i, s in enumerate(seeds):
        proj.add_seed(f"w{i}", s)
    order = ["w2", "w0", "w1"]  # rows follow the participants' order, not arrival
    got = proj.projections(order, A[[2, 0, 1]])
    np.testing.assert_array_equal(got, projections_plain(A[[2, 0, 1]], seed, K))


def test_a_failed_background_projection_is_redone_from_the_matrix(pool) -> None:
    seed = fresh_key()
    X = _matrix(2, 2)
    proj = Projector("r", seed, K, D, pool)
    proj.add_share("w0", X[0][:10])  # wrong length: the background job raises
    got = proj.projections(["w0", "w1"], X)
    np.testing.assert_array_equal(got, projections_plain(X, seed, K))


def test_a_stopped_pool_only_defers_the_work() -> None:
    p = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    p.shutdown()
    seed = fresh_key()
    X = _matrix(2, 3)
    proj = Projector("r", seed, K, D, p)
    proj.add_share("w0", X[0])
    np.testing.assert_array_equal(
        proj.projections(["w0", "w1"], X), projections_plain(X, seed, K)
    )


def test_matrix_buffer_reuses_its_pages_and_grows() -> None:
    from servers.precompute import MatrixBuffer

    buf = MatrixBuffer()
    a = buf.view(2, 5)
    assert buf.view(2, 5) is not a and np.shares_memory(buf.view(2, 5), a)
    assert buf.view(1, 3).shape == (1, 3) and np.shares_memory(buf.view(1, 3), a)
    assert not np.shares_memory(buf.view(3, 5), a)  # larger: new pages


def test_has_all_tells_whether_the_matrix_is_needed(pool) -> None:
    seed = fresh_key()
    X = _matrix(2, 4)
    proj = Projector("r", seed, K, D, pool)
    proj.add_share("w0", X[0])
    assert proj.has_all(["w0"]) and not proj.has_all(["w0", "w1"])
    np.testing.assert_array_equal(
        proj.projections(["w0"], None), projections_plain(X[:1], seed, K)
    )
    with pytest.raises(ValueError, match="not projected yet"):
        proj.projections(["w0", "w1"], None)
