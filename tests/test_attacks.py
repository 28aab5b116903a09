"""The Byzantine attacks of secagg.attacks: shapes, the published formulas, and what
they do to the rules (plaintext, and the wrap-around through real 2PC)."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest
from scipy import stats

from secagg import attacks, encoding, reference, rules, sharing
from secagg.cluster import MpcCluster

RNG = np.random.default_rng(0)


def honest_matrix(h: int = 15, d: int = 50, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=d) + 0.3 * rng.normal(size=(h, d))


# ----------------------------------------------------------------- simple attacks
def test_sign_flip_negates():
    g = RNG.normal(size=(3, 7))
    np.testing.assert_array_equal(attacks.sign_flip(g), -g)
    assert attacks.sign_flip(g).dtype == np.float64


def test_gaussian_shape_and_scale():
    X = attacks.gaussian(4, 20_000, np.random.default_rng(1))
    assert X.shape == (4, 20_000)
    assert abs(X.std() / attacks.GAUSSIAN_SIGMA - 1) < 0.01
    assert abs(X.mean()) < 5 * attacks.GAUSSIAN_SIGMA / np.sqrt(X.size)
    with pytest.raises(ValueError):
        attacks.gaussian(1, 3, np.random.default_rng(1), sigma=0.0)


def test_label_flip_maps_y_to_9_minus_y():
    y = np.arange(10)
    np.testing.assert_array_equal(attacks.flip_labels(y), 9 - y)
    np.testing.assert_array_equal(attacks.flip_labels(attacks.flip_labels(y)), y)
    assert attacks.flip_labels(y).dtype == y.dtype
    with pytest.raises(ValueError):
        attacks.flip_labels(np.array([10]))
    with pytest.raises(ValueError):
        attacks.flip_labels(np.array([0.5]))


# --------------------------------------------------------------------------- ALIE
def test_alie_z_for_aggregathor_setting():
    # n = 19, f = 4: s = floor(19/2 + 1) - 4 = 6, z = Phi^-1(13/19)
    z = attacks.alie_z(19, 4)
    assert z == pytest.approx(NormalDist().inv_cdf(13 / 19), abs=0)
    assert z == pytest.approx(0.47950, abs=1e-5)
    assert z == pytest.approx(stats.norm.ppf(13 / 19), rel=1e-12)


@pytest.mark.parametrize(("n", "f"), [(25, 5), (50, 12), (20, 3), (7, 1)])
def test_alie_z_matches_the_formula(n, f):
    s = (n // 2 + 1) - f
    assert attacks.alie_z(n, f) == pytest.approx(stats.norm.ppf((n - s) / n), rel=1e-12)


def test_alie_z_rejects_impossible_settings():
    with pytest.raises(ValueError, match="outside"):
        attacks.alie_z(5, 4)  # s = -1
    with pytest.raises(ValueError):
        attacks.alie_z(0, 0)


def test_alie_vector_is_mean_minus_z_sigma():
    H = honest_matrix()
    v = attacks.alie(H, 19, 4)
    assert v.shape == (H.shape[1],)
    want = H.mean(axis=0) - attacks.alie_z(19, 4) * H.std(axis=0, ddof=1)
    np.testing.assert_allclose(v, want, rtol=0, atol=1e-12)
    # within the honest spread on every coordinate
    assert np.all(v >= H.min(axis=0)) and np.all(v <= H.max(axis=0))


# ---------------------------------------------------------------------------- IPM
@pytest.mark.parametrize("eps", [attacks.IPM_SMALL_EPS, attacks.IPM_LARGE_EPS])
def test_ipm_points_against_the_honest_mean(eps):
    H = honest_matrix()
    v = attacks.ipm(H, eps)
    mu = H.mean(axis=0)
    np.testing.assert_allclose(v, -eps * mu)
    cos = v @ mu / (np.linalg.norm(v) * np.linalg.norm(mu))
    assert cos == pytest.approx(-1.0)
    assert np.linalg.norm(v) == pytest.approx(eps * np.linalg.norm(mu))


def test_ipm_large_eps_turns_the_mean_around_small_eps_does_not():
    H = honest_matrix(h=15)
    mu = H.mean(axis=0)
    for eps, sign in ((attacks.IPM_SMALL_EPS, 1), (attacks.IPM_LARGE_EPS, -1)):
        X = np.vstack([H, np.tile(attacks.ipm(H, eps), (4, 1))])
        agg = reference.aggregate(X, "mean", 4).aggregate
        assert np.sign(agg @ mu) == sign


# -------------------------------------------------------------------------- mimic
def test_mimic_copies_the_most_extreme_worker_along_the_top_direction():
    rng = np.random.default_rng(2)
    d = 30
    direction = np.zeros(d)
    direction[0] = 1.0
    H = 0.01 * rng.normal(size=(10, d)) + np.outer(rng.normal(size=10), direction)
    H[6, 0] = 5.0  # far out along the dominant direction
    assert attacks.mimic_index(H) == 6
    v = attacks.mimic(H)
    np.testing.assert_array_equal(v, H[6])
    assert v is not H[6]


def test_mimic_index_brute_force():
    H = honest_matrix(h=9, d=12, seed=5)
    C = H - H.mean(axis=0)
    w, V = np.linalg.eigh(C.T @ C)
    assert attacks.mimic_index(H) == int(np.argmax(np.abs(C @ V[:, -1])))


# ------------------------------------------------------------- coordinate attack
def test_coordinate_attack_moves_one_coordinate_and_stays_selected():
    H = honest_matrix(h=15, d=50)
    f = 4
    v = attacks.coordinate_attack(H, f, "krum")
    mu = H.mean(axis=0)
    moved = np.flatnonzero(v != mu)
    assert moved.size == 1
    k = int(moved[0])
    assert k == int(np.argmax(np.abs(mu)))
    assert np.sign(v[k] - mu[k]) == -np.sign(mu[k])  # against the gradient
    X = np.vstack([H, np.tile(v, (f, 1))])
    assert rules.krum(reference.sq_distances(X), f) >= len(H)  # still selected
    # the line search is tight: 5% further and Krum rejects it
    w = mu.copy()
    w[k] = mu[k] + 1.05 * (v[k] - mu[k])
    Xw = np.vstack([H, np.tile(w, (f, 1))])
    assert rules.krum(reference.sq_distances(Xw), f) < len(H)


def test_coordinate_attack_leeway_grows_like_sqrt_d():
    """El Mhamdi et al.: the shift a distance-based rule tolerates grows with sqrt(d)."""
    shifts = {}
    for d in (10, 1000):
        rng = np.random.default_rng(d)
        H = rng.normal(size=(15, d))
        v = attacks.coordinate_attack(H, 4, "krum", coord=0)
        shifts[d] = abs(v[0] - H.mean(axis=0)[0])
    assert shifts[1000] / shifts[10] > 4  # sqrt(100) = 10 in expectation


def test_coordinate_attack_against_mean_uses_the_cap():
    H = honest_matrix()
    v = attacks.coordinate_attack(H, 2, "mean", max_shift=123.0, coord=3)
    assert abs(v[3] - H.mean(axis=0)[3]) == pytest.approx(123.0)


# --------------------------------------------------------------------------- craft
@pytest.mark.parametrize(
    "name", ["none", "sign-flip", "gaussian", "alie", "ipm", "ipm-large", "mimic", "coordinate"]
)
def test_craft_shapes(name):
    H = honest_matrix(h=15, d=20)
    own = H[:4] * 1.1
    out = attacks.craft(name, H, own, 19, 4, np.random.default_rng(0), rule="krum")
    assert out.shape == (4, 20) and out.dtype == np.float64
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("name", ["label-flip", "wraparound", "bogus"])
def test_craft_refuses_non_float_attacks(name):
    H = honest_matrix(h=5, d=4)
    with pytest.raises(ValueError):
        attacks.craft(name, H, H[:1], 6, 1, np.random.default_rng(0))


def test_attack_names_are_listed():
    for name in ("sign-flip", "gaussian", "label-flip", "alie", "ipm", "mimic", "wraparound"):
        assert name in attacks.ATTACKS


# -------------------------------------------------------------- ring wrap-around
PARAMS = encoding.EncodingParams(scale=1.0, coord_bound=50.0, norm_bound=200.0)


def test_wraparound_flips_only_the_top_bit_of_one_coordinate():
    x = encoding.encode(RNG.normal(size=16), PARAMS)
    w = attacks.wraparound_encoded(x, coord=5)
    diff = (w.view(np.uint64) ^ x.view(np.uint64)).astype(object)
    assert diff[5] == 1 << 63 and not any(diff[:5]) and not any(diff[6:])
    assert w is not x and x.dtype == w.dtype == np.int64
    # it decodes to about ±2^47 (scale 1): far outside any bound
    assert abs(encoding.decode(w, PARAMS)[5]) == pytest.approx(2.0**47, rel=1e-6)
    with pytest.raises(ValueError):
        attacks.wraparound_encoded(x, coord=16)
    with pytest.raises(ValueError):
        attacks.wraparound_encoded(x.astype(np.float64))


def test_ring_distances_do_not_see_the_wraparound():
    X = np.stack([encoding.encode(r, PARAMS) for r in RNG.normal(size=(6, 12))])
    W = X.copy()
    W[2] = attacks.wraparound_encoded(X[2], coord=0)
    np.testing.assert_array_equal(attacks.ring_sq_distances(W), attacks.ring_sq_distances(X))
    np.testing.assert_array_equal(attacks.ring_sq_distances(X), reference.sq_distances_int(X))
    # so a distance-based rule in the ring selects exactly as before ...
    D = attacks.ring_sq_distances(W)
    assert rules.multi_krum(D, 1) == rules.multi_krum(reference.sq_distances_int(X), 1)
    # ... while on the decoded vectors the attacker is far from everyone
    Xf = np.stack([encoding.decode(r, PARAMS) for r in W])
    assert 2 not in rules.multi_krum(reference.sq_distances(Xf), 1)


def test_two_wraps_on_one_coordinate_cancel_in_a_sum():
    """Why attackers wrap distinct coordinates: 2·2^63 = 0 mod 2^64."""
    x = encoding.encode(RNG.normal(size=8), PARAMS)
    w = attacks.wraparound_encoded(x, 1)
    total = (w.view(np.uint64) + w.view(np.uint64)).view(np.int64)
    np.testing.assert_array_equal(total, (x.view(np.uint64) * np.uint64(2)).view(np.int64))


def test_wraparound_shares_reconstruct_to_the_wrapped_vector():
    x = encoding.encode(RNG.normal(size=32), PARAMS)
    s = attacks.wraparound_shares(x, coord=7)
    assert isinstance(s, sharing.WorkerShares)
    want = attacks.wraparound_encoded(x, 7)
    np.testing.assert_array_equal(sharing.reconstruct(s.seed, s.share_b), want)


def test_wraparound_through_real_2pc_distances_unchanged_sum_destroyed():
    """The secure primitives on real processes: the distance matrix server A receives
    is bit for bit the one of the unmodified vectors, and the opened sum of a selection
    containing the attacker decodes to ~1.4e14 on the wrapped coordinate. (Input
    validation in 2PC, issue #5, exists to exclude such a worker before this point.)"""
    rng = np.random.default_rng(4)
    n, d = 7, 24
    X = np.stack([encoding.encode(r, PARAMS) for r in rng.normal(size=(n, d))])
    honest_mean = encoding.encode(encoding.decode(X[1:].sum(axis=0), PARAMS, n - 1), PARAMS)
    X[0] = honest_mean  # the attacker starts from the most central vector ...
    parts = [sharing.split(r) for r in X[1:]]
    parts.insert(0, attacks.wraparound_shares(X[0], coord=3))  # ... and wraps it
    share_a = np.stack([sharing.share_a(p.seed, d) for p in parts])
    share_b = np.stack([p.share_b for p in parts])
    with MpcCluster(timeout_s=120) as c:
        (D, _), _ = c.call("sq_distances", (share_a,), (share_b,))
        assert np.array_equal(D, reference.sq_distances_int(X))
        sel = rules.multi_krum(D, 1)
        assert 0 in sel  # the wrapped vector is the most central one
        (total, _), _ = c.call("reveal_sum", (share_a, sel), (share_b, sel))
    agg = encoding.decode(total, PARAMS, len(sel))
    assert abs(agg[3]) > 1e13  # destroyed
    others = [k for k in range(d) if k != 3]
    want = encoding.decode(X[sel].sum(axis=0), PARAMS, len(sel))
    np.testing.assert_allclose(agg[others], want[others], rtol=0, atol=1e-12)


# ------------------------------------------------- the training example's inputs
def test_training_example_builds_the_attacks_as_documented():
    """examples/train_digits.py without servers: what the workers submit in a round,
    and the plaintext counterpart of the servers' input validation."""
    pytest.importorskip("sklearn")
    pytest.importorskip("torch")
    from examples import train_digits as td

    cfg = td.Config(rounds=1)
    data = td.load_data(cfg.n, 0)
    model = td.make_model("softmax", 0)
    p = cfg.params
    inp = td.round_inputs(model, data, cfg, "wraparound", "krum", 0)
    assert inp.floats.shape == (19, 650)
    assert sorted(inp.wrapped) == list(range(15, 19))
    honest = inp.floats[:15]
    assert np.all(np.linalg.norm(honest * p.scale, axis=1) <= p.norm_bound * (1 + 1e-12))
    coords = {coord for _, coord in inp.wrapped.values()}
    assert coords == {649, 648, 647, 646}  # distinct output biases
    for i, (_, coord) in inp.wrapped.items():
        assert inp.floats[i, coord] < -1e10  # decodes to about -2^47/scale
    # a trusted server with the same bounds drops them; Bulyan then lacks workers
    _, sel = td.plaintext_round(inp.floats, "krum", cfg, validated=True)
    assert sel and max(sel) < 15
    agg, sel = td.plaintext_round(inp.floats, "bulyan", cfg, validated=True)
    assert agg is None and sel == []
    agg, _ = td.plaintext_round(inp.floats, "mean", cfg, validated=False)
    assert np.abs(agg).max() > 1e9  # without any check, the mean is destroyed
    # the same minibatches for the same round: secure and plaintext runs are comparable
    again = td.round_inputs(model, data, cfg, "alie", "krum", 0)
    np.testing.assert_array_equal(again.floats[:15], inp.floats[:15])
    assert np.all(again.floats[15:] == again.floats[15])  # all attackers send one vector
