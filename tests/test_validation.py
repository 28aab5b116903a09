"""Input validation against Byzantine ring elements (issue: a worker's encoding must not
be able to fool the distances). Plaintext properties of the projection test, then the
2PC test with real CrypTen processes, then the wrap-around attack end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest

from secagg import encoding, reference, sharing
from secagg.cluster import MpcCluster
from secagg.encoding import EncodingError, EncodingParams
from secagg.prg import AesCtrStream, fresh_key
from secagg.protocol import RoundPlan
from secagg.validation import (
    ValidationParams,
    accepted_plain,
    check_validated_headroom,
    max_norm_bound,
    projection_block,
    threshold,
)

D = 2000
PARAMS = EncodingParams(scale=1.0, coord_bound=20.0, norm_bound=20.0)
VP = ValidationParams()
T = check_validated_headroom(PARAMS, 20, D, VP)
ONE = 1 << 16


def honest(rng: np.random.Generator, n: int) -> np.ndarray:
    """Encoded honest vectors with norms up to the bound."""
    X = rng.normal(size=(n, D))
    X *= (PARAMS.norm_bound * rng.uniform(0.1, 1.0, size=(n, 1))) / np.linalg.norm(
        X, axis=1, keepdims=True
    )
    return np.stack([encoding.encode(r, PARAMS) for r in X])


def crafted(base: np.ndarray) -> dict[str, np.ndarray]:
    """Encodings chosen to defeat naive checks (ring norm, per-residue, sums)."""
    out = {}
    with np.errstate(over="ignore"):
        v = base.copy()
        v[7] += np.int64(-(2**63))  # the 2^63 offset: distances unchanged, decodes to 1.4e14
        out["offset_2^63"] = v
        v = base.copy()
        v[[3, 9]] += np.int64(-(2**63))  # two offsets: even the ring's norm^2 is unchanged
        out["two_offsets_2^63"] = v
        v = base.copy()
        v[5] = np.int64(2**32)  # (2^32)^2 = 0 mod 2^64: invisible to a ring norm check
        out["square_vanishes_2^32"] = v
        v = base.copy()
        v[:] = np.int64(2**62)  # every coordinate huge: sums wrap
        out["all_2^62"] = v
        v = base.copy()
        v[11] = np.int64(2**63 - 5)  # a residue next to 2^63
        out["near_2^63"] = v
        out["uniform_ring_element"] = np.random.default_rng(9).integers(
            -(2**63), 2**63 - 1, size=D, dtype=np.int64
        )
        out["norm_200x_spread"] = base * 200  # no wrap, just far too long
        out["one_coordinate_40x"] = np.zeros_like(base)
        out["one_coordinate_40x"][0] = np.int64(40 * PARAMS.norm_bound * ONE)
    return out


# --------------------------------------------------------------------- plaintext
def test_threshold_formula_and_projection_distribution():
    t = math.sqrt(2 * math.log(2 * VP.projections / VP.false_rejection))
    N = PARAMS.norm_bound * ONE + math.sqrt(D) / 2
    assert threshold(PARAMS, D, VP) == math.ceil(N * t)
    R = projection_block(AesCtrStream(fresh_key()), 40, 5000)
    assert set(np.unique(R)) <= {-1, 0, 1}
    assert abs(np.mean(R == 0) - 0.5) < 0.01
    assert abs(np.mean(R == 1) - 0.25) < 0.01


def test_headroom_refuses_bounds_that_could_wrap_after_validation():
    with pytest.raises(EncodingError, match="lower norm_bound to at most"):
        check_validated_headroom(
            EncodingParams(scale=1.0, coord_bound=1e3, norm_bound=1e3), 20, D, VP
        )
    check_validated_headroom(
        EncodingParams(scale=1.0, coord_bound=100, norm_bound=150), 20, 10**6, VP
    )


@pytest.mark.parametrize("d", [10, 300_000, 1 << 26])
def test_the_stated_norm_bound_limit_is_exact(d: int) -> None:
    # the refusal names a limit that is admissible, and the next float above it is not
    l_max = max_norm_bound(d, VP)
    assert 204.0 < l_max < 204.4  # the ~200 after scaling the spec states (§2.2)
    check_validated_headroom(EncodingParams(coord_bound=1.0, norm_bound=l_max), 2, d, VP)
    above = math.nextafter(l_max, math.inf)
    with pytest.raises(EncodingError, match=r"limited to (\d+\.\d\d)") as err:
        check_validated_headroom(EncodingParams(coord_bound=1.0, norm_bound=above), 2, d, VP)
    stated = float(err.value.args[0].split("lower norm_bound to at most ")[1].split()[0])
    assert stated <= l_max < stated + 0.01
    check_validated_headroom(EncodingParams(coord_bound=1.0, norm_bound=stated), 2, d, VP)


def test_honest_vectors_at_the_bound_are_never_rejected():
    rng = np.random.default_rng(0)
    X = honest(rng, 300)
    # adversarially shaped honest vectors: all mass on one coordinate, or two
    spike = np.zeros((2, D), dtype=np.int64)
    spike[0, 0] = encoding.encode(np.eye(1, D, 0)[0] * PARAMS.norm_bound * 0.999, PARAMS)[0]
    spike[1, :2] = int(PARAMS.norm_bound / math.sqrt(2) * 0.999 * ONE)
    X = np.vstack([X, spike])
    for _ in range(5):
        assert accepted_plain(X, fresh_key(), VP.projections, T).all()


def test_crafted_encodings_are_caught_in_plaintext():
    base = honest(np.random.default_rng(1), 1)[0]
    for name, v in crafted(base).items():
        for _ in range(20):
            assert not accepted_plain(v[None, :], fresh_key(), VP.projections, T)[0], name


def test_single_projection_catches_2_63_offset_half_the_time():
    # the soundness lemma's worst case: caught exactly when r_m = ±1
    base = honest(np.random.default_rng(2), 1)[0]
    v = crafted(base)["offset_2^63"]
    caught = sum(not accepted_plain(v[None, :], fresh_key(), 1, T)[0] for _ in range(400))
    assert 150 < caught < 250


# ------------------------------------------------------------------------- 2PC
@pytest.fixture(scope="module")
def cluster():
    with MpcCluster(timeout_s=120) as c:
        yield c


def shares_of(Xenc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    parts = [sharing.split(r) for r in Xenc]
    return (
        np.stack([sharing.share_a(p.seed, Xenc.shape[1]) for p in parts]),
        np.stack([p.share_b for p in parts]),
    )


def test_2pc_test_equals_plaintext_decision_on_crafted_and_honest(cluster):
    rng = np.random.default_rng(3)
    good = honest(rng, 6)
    bad = list(crafted(good[0]).values())
    X = np.vstack([good, np.stack(bad)])
    seed = fresh_key()
    sa, sb = shares_of(X)
    (ok_a, _), (ok_b, _) = cluster.call(
        "validate_inputs", (sa, seed, VP.projections, T), (sb, seed, VP.projections, T)
    )
    want = accepted_plain(X, seed, VP.projections, T)
    np.testing.assert_array_equal(ok_a, want)
    np.testing.assert_array_equal(ok_b, want)
    assert want[: len(good)].all() and not want[len(good) :].any()


def test_wraparound_attack_destroys_aggregate_without_validation_and_is_stopped_with_it(cluster):
    rng = np.random.default_rng(4)
    X = honest(rng, 7)
    attacker = X[0].copy()
    with np.errstate(over="ignore"):
        attacker[3] += np.int64(-(2**63))
    Xa = np.vstack([attacker, X[1:]])
    sa, sb = shares_of(Xa)
    # validation off: distances are bit-identical to the honest vector's ...
    off = RoundPlan("krum", 1)
    out_off, _ = cluster.round(sa, sb, off)
    np.testing.assert_array_equal(out_off.distances, reference.sq_distances_int(X))
    # ... Krum may pick it, and the multi-krum mean including it is destroyed
    out_mk, _ = cluster.round(sa, sb, RoundPlan("multi-krum", 1))
    if 0 in out_mk.selected:
        agg = encoding.decode(out_mk.encoded_sum, PARAMS, out_mk.divisor)
        assert np.max(np.abs(agg)) > 1e12
    out_mean, _ = cluster.round(sa, sb, RoundPlan("mean", 0))
    assert np.max(np.abs(encoding.decode(out_mean.encoded_sum, PARAMS, 7))) > 1e12
    # validation on: the attacker is excluded, the rest equals the plaintext rule
    for rule, f in (("mean", 0), ("krum", 1), ("multi-krum", 1)):
        out, out_b = cluster.round(sa, sb, RoundPlan(rule, f, threshold=T))
        assert out.rejected == out_b.rejected == [0], rule
        ref = reference.aggregate_encoded(X[1:], rule, f)
        assert out.selected == ref.selected
        np.testing.assert_array_equal(out.encoded_sum, ref.encoded_sum)
