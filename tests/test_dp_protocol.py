"""DP rounds through real CrypTen processes (A, B, dealer) on loopback.

* The exact norm check: a worker is accepted iff ‖x‖² <= B on its encoded integers,
  at the bound and one unit above, with negative coordinates, and for vectors crafted
  so that ‖x‖² wraps mod 2^64 to a value below B (the projection test removes them).
* The noise: the opened sum minus the plaintext rule's sum on the same encoded inputs is
  the two servers' discrete Gaussians, of variance 2σ²; the same test rejects a round in
  which one server adds none (control).
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest

from secagg import encoding, reference, sharing
from secagg.cluster import ClusterError, MpcCluster
from secagg.dp import sampler
from secagg.dp.mechanism import RoundDp, bound_sq
from secagg.protocol import RoundPlan, run_round
from secagg.validation import ValidationParams, threshold

# scale 1, C = 1: C·scale·2^16 = 65536, so B = 2^32 exactly
PARAMS = encoding.EncodingParams(scale=1.0, coord_bound=4.0, norm_bound=2.0)
B = 1 << 32


@pytest.fixture(scope="module")
def cluster():
    with MpcCluster(timeout_s=120) as c:
        yield c


def shares(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    parts = [sharing.split(row) for row in X]
    return (
        np.stack([sharing.share_a(p.seed, X.shape[1]) for p in parts]),
        np.stack([p.share_b for p in parts]),
    )


def dp_plan(rule: str, f: int, d: int, sigma: float, clip: float = 1.0) -> RoundPlan:
    T = threshold(PARAMS, d, ValidationParams())
    return RoundPlan(rule, f, threshold=T, dp=RoundDp.from_config(sigma, clip, PARAMS.scale))


def row(d: int, entries: dict[int, int]) -> np.ndarray:
    x = np.zeros(d, dtype=np.int64)
    for i, v in entries.items():
        x[i] = v
    return x


def exact_sq_norm(x: np.ndarray) -> int:
    return sum(int(v) * int(v) for v in x)


def test_bound_is_exact_in_encoded_units():
    assert bound_sq(1.0, 1.0) == B
    assert bound_sq(0.5, 3.0) == (3 * 32768) ** 2
    # a clip that is not a dyadic rational: ⌊(0.1·2^16)²⌋ computed exactly
    assert bound_sq(0.1, 1.0) == math.floor((Fraction(0.1) * 65536) ** 2)


def test_norm_check_accepts_iff_the_exact_norm_is_within_the_bound(cluster):
    d = 64
    X = np.stack(
        [
            row(d, {0: 65536}),  # ‖x‖² = B: accepted
            row(d, {0: 65536, 5: 1}),  # B + 1: rejected
            row(d, {0: -65535, 1: 256, 2: -255, 3: 22, 4: -5, 5: 1}),  # = B exactly
            row(d, {0: 65535, 1: 256, 2: 256}),  # B + 1
            row(d, {3: -65536, 9: -1}),  # B + 1, negative coordinates
            row(d, {i: 8192 for i in range(64)}),  # 64·2^26 = B exactly, spread out
            row(d, {i: 8192 for i in range(63)} | {63: 8193}),  # B + 16385
            row(d, {7: 40000, 8: -40000}),  # 3.2e9 < B
            row(d, {}),  # zero vector
            # crafted to wrap: (2^32)² ≡ 0 and 2^63·x ≡ 0 mod 2^64, so the ring sees
            # ‖x‖² ≡ 0 or a small value; the projection test must remove them
            row(d, {0: 1 << 32}),
            row(d, {0: 1 << 62, 1: 1 << 62, 2: 1 << 62, 3: 1 << 62, 4: 5}),
            row(d, {0: -(1 << 63)}),
        ]
    )
    ring = [int(np.dot(x, x)) for x in X]  # what a check without validation would see
    assert all(r <= B for r in ring[-3:])  # the wraps really would fool a ring-only check
    want = [exact_sq_norm(x) <= B for x in X]
    assert want[:9] == [True, False, True, False, False, True, False, True, True]
    assert not any(want[9:])
    share_a, share_b = shares(X)
    plan = dp_plan("mean", 0, d, sigma=0.5)
    out_a, out_b = cluster.round(share_a, share_b, plan)
    for out in (out_a, out_b):
        got = [i in out.accepted for i in range(len(X))]
        assert got == want
        # the wraps fail the projection test, the others at most the norm check
        assert sorted(out.norm_rejected) == [1, 3, 4, 6]
        assert sorted(out.rejected) == [1, 3, 4, 6, 9, 10, 11]
    assert out_a.selected == out_b.selected == list(range(len(out_a.accepted)))


def test_dp_needs_validation(cluster):
    plan = dataclasses.replace(dp_plan("mean", 0, 8, 0.5), threshold=None)
    X = np.zeros((5, 8), dtype=np.int64)
    with pytest.raises(ClusterError, match="DP rounds need input validation"):
        cluster.round(*shares(X), plan)


def noise_of(out, Xenc: np.ndarray, rule: str, f: int) -> np.ndarray:
    """The opened sum minus the plaintext rule's sum on the accepted encoded inputs."""
    ref = reference.aggregate_encoded(Xenc[out.accepted], rule, f, None)
    assert out.selected == ref.selected
    with np.errstate(over="ignore"):
        return (out.encoded_sum - ref.encoded_sum).astype(np.int64)


@pytest.mark.parametrize("rule", ["mean", "multi-krum", "bulyan"])
def test_opened_sum_carries_both_servers_noise_and_the_control_fails(cluster, rule):
    rng = np.random.default_rng(11)
    f = 1
    n = 7 if rule == "bulyan" else 6
    d = 20_000
    X = rng.normal(size=(n, d))
    X *= 0.9 / np.linalg.norm(X, axis=1, keepdims=True)  # honest: inside the C = 1 ball
    Xenc = np.stack([encoding.encode(x, PARAMS) for x in X])
    plan = dp_plan(rule, f, d, sigma=0.25)
    sigma2 = plan.dp.sigma2
    assert sigma2 == (0.25 * 65536) ** 2
    expected = 2 * sampler.variance(sigma2)  # Y_A + Y_B
    tol = 5 * math.sqrt(2 / d)  # 5 standard errors of a variance estimate over d values
    share_a, share_b = shares(Xenc)
    out_a, out_b = cluster.round(share_a, share_b, plan)
    np.testing.assert_array_equal(out_a.encoded_sum, out_b.encoded_sum)
    assert out_a.rejected == [] and out_a.dp_rho is not None
    noise = noise_of(out_a, Xenc, rule, f).astype(np.float64)
    assert abs(noise.var() / expected - 1) < tol, noise.var() / expected
    assert abs(noise.mean()) < 5 * math.sqrt(expected / d)
    # control: server B adds nothing; A's noise alone has half the variance
    quiet = dataclasses.replace(plan, dp=dataclasses.replace(plan.dp, sigma2=0))
    ctl_a, _ = cluster.run(run_round, (share_a, plan), (share_b, quiet))
    ctl = noise_of(ctl_a, Xenc, rule, f).astype(np.float64)
    assert abs(ctl.var() / expected - 1) > tol
    assert abs(ctl.var() / (expected / 2) - 1) < tol


def _round_keeping_noise(session, share, plan):  # noqa: ANN001, ANN202 - runs in a party
    """run_round, also returning the noise this party drew (module-level: picklable)."""
    from secagg import protocol

    drawn: list[np.ndarray] = []
    original = protocol.server_noise

    def keep(sigma2: int, dim: int, rng=None) -> np.ndarray:  # noqa: ANN001
        drawn.append(original(sigma2, dim, rng))
        return drawn[-1]

    protocol.server_noise = keep
    try:
        return protocol.run_round(session, share, plan), drawn
    finally:
        protocol.server_noise = original


@pytest.mark.parametrize("rule", ["mean", "bulyan"])
def test_opened_sum_is_the_sum_plus_both_noises_exactly(cluster, rule):
    """Bit for bit: opened = q(x) + Y_A + Y_B. So what server A can compute after
    subtracting its own noise is q(x) + Y_B: B's noise alone, a fresh discrete Gaussian
    independent of A's (the one-server guarantee of docs/dp.md)."""
    rng = np.random.default_rng(23)
    n, f, d = 7, 1, 20_000
    X = rng.normal(size=(n, d))
    X *= 0.8 / np.linalg.norm(X, axis=1, keepdims=True)
    Xenc = np.stack([encoding.encode(x, PARAMS) for x in X])
    plan = dp_plan(rule, f, d, sigma=0.25)
    share_a, share_b = shares(Xenc)
    (out_a, (y_a,)), (out_b, (y_b,)) = cluster.run(
        _round_keeping_noise, (share_a, plan), (share_b, plan)
    )
    ref = reference.aggregate_encoded(Xenc, rule, f, None)
    with np.errstate(over="ignore"):
        want = ref.encoded_sum + y_a + y_b
    np.testing.assert_array_equal(out_a.encoded_sum, want)
    np.testing.assert_array_equal(out_b.encoded_sum, want)
    residual = (out_a.encoded_sum - y_a - ref.encoded_sum).astype(np.float64)  # A's view
    var = sampler.variance(plan.dp.sigma2)
    assert abs(residual.var() / var - 1) < 5 * math.sqrt(2 / d)
    assert abs(np.corrcoef(y_a, y_b)[0, 1]) < 5 / math.sqrt(d)


def _reveal_twice(session, share, plan, selected, key):  # noqa: ANN001, ANN202 - in a party
    """The same reveal run twice, as after a failure: with this server's per-round key
    each time (module-level: picklable)."""
    from secagg import protocol

    return [protocol.reveal(session, share, plan, selected, key) for _ in range(2)]


def test_a_rerun_reveal_opens_the_same_noisy_sum(cluster):
    """A reveal run again after a failure must not open a second, independently noised
    sum (which would spend ρ twice): with each server's per-round noise key the two
    openings are identical; with fresh keys (the control) they differ."""
    rng = np.random.default_rng(31)
    n, d = 6, 4096
    X = rng.normal(size=(n, d))
    X *= 0.8 / np.linalg.norm(X, axis=1, keepdims=True)
    Xenc = np.stack([encoding.encode(x, PARAMS) for x in X])
    plan = dp_plan("mean", 0, d, sigma=0.25)
    share_a, share_b = shares(Xenc)
    sel = list(range(n))
    from secagg.prg import fresh_key

    key_a, key_b = fresh_key(), fresh_key()
    (a1, a2), (b1, b2) = cluster.run(
        _reveal_twice, (share_a, plan, sel, key_a), (share_b, plan, sel, key_b)
    )
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(b1, b2)
    assert np.any(a1 != Xenc.sum(axis=0))  # noised
    # control: without keys each opening draws fresh noise
    (c1, c2), _ = cluster.run(
        _reveal_twice, (share_a, plan, sel, None), (share_b, plan, sel, None)
    )
    assert np.any(c1 != c2)
