"""The distance matrix's leakage, quantified by the reconstruction attack of
``examples/distance_leakage.py``: a curious server A that knows k of the n vectors.

Claims: with k >= d+1 known vectors in general position (more generally r+1, r the
rank of the vectors' spread) every other vector is recovered exactly, bit for bit on
the encoded integers the servers work on; with k much smaller than the dimension the
error stays close to that of guessing the aggregate.
"""

from __future__ import annotations

import numpy as np
import pytest

from examples.distance_leakage import experiment, reconstruct, relative_error
from secagg import encoding, reference

PARAMS = encoding.EncodingParams(scale=1.0, coord_bound=50.0, norm_bound=200.0)


@pytest.mark.parametrize("d", [2, 5, 8])
def test_d_plus_one_known_vectors_recover_the_encoded_vectors_bit_for_bit(d):
    rng = np.random.default_rng(d)
    n = 12
    Xenc = np.stack([encoding.encode(row, PARAMS) for row in rng.normal(size=(n, d)) * 10])
    D = reference.sq_distances_int(Xenc).astype(np.float64)  # exactly what A sees (×2^32)
    known = list(range(d + 1))
    X_hat = reconstruct(D, known, Xenc[known].astype(np.float64))  # no aggregate needed
    np.testing.assert_array_equal(np.rint(X_hat).astype(np.int64), Xenc)


@pytest.mark.parametrize(("d", "k"), [(16, 17), (64, 65)])
def test_exact_with_k_at_least_d_plus_one(d, k):
    rng = np.random.default_rng(0)
    assert experiment(80, d, k, rng, with_aggregate=False) < 1e-8


@pytest.mark.parametrize("k", [1, 3, 8])
def test_error_stays_large_when_k_is_much_smaller_than_d(k):
    rng = np.random.default_rng(k)
    errs = [experiment(40, 512, k, rng) for _ in range(3)]
    assert min(errs) > 0.9, errs


def test_the_leeway_is_the_intrinsic_rank_not_d():
    rng = np.random.default_rng(2)
    # d = 512 but rank 4: five known vectors (with the aggregate, four) suffice
    assert experiment(40, 512, 5, rng, rank=4) < 1e-8
    assert experiment(40, 512, 4, rng, rank=4) < 1e-8
    assert experiment(40, 512, 2, rng, rank=4) > 0.3


def test_what_the_attacker_learns_with_few_known_vectors_is_their_span():
    """With k known, the estimate is exact on the known points' affine hull and zero
    (the MMSE guess) orthogonal to it: its error equals the orthogonal component."""
    rng = np.random.default_rng(3)
    n, d, k = 30, 100, 6
    X = rng.normal(size=(n, d))
    known = list(range(k))
    G = X @ X.T
    g = np.diag(G)
    X_hat = reconstruct(g[:, None] + g[None, :] - 2 * G, known, X[known])
    base = X[known].mean(axis=0)
    U, _, _ = np.linalg.svd((X[known] - base).T, full_matrices=False)
    Q = U[:, : k - 1]  # k centred points span k - 1 directions
    unknown = X[k:] - base
    in_span = unknown @ Q @ Q.T
    np.testing.assert_allclose(X_hat[k:] - base, in_span, atol=1e-8)
    assert relative_error(X, X_hat, known, base) > 0.9
