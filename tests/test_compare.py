"""secagg.compare: exact secure comparisons between real party processes.

Server A, server B and the CSPRNG dealer run as separate processes (``MpcCluster``) over
loopback gloo with the native kernel, and over mutual TLS with the numpy fallback in
every process (dealer included). Each result is checked bit for bit against the
plaintext comparison of the same int64 values, including the extremes the validation
headroom allows (±2^62), equal values, zero and the ring's own extremes. The kernels are
also compared with each other byte for byte on random inputs.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from secagg import compare
from secagg.cluster import MpcCluster
from secagg.prg import AesCtrStream

EDGES = np.array(
    [0, 1, -1, 2**62, -(2**62), 2**62 - 1, -(2**62) + 1, 2**63 - 1, -(2**63), 7, -7],
    dtype=np.int64,
)


def use_fallback() -> None:
    """MpcCluster setup hook: every process of the cluster uses the numpy layers."""
    os.environ["SECAGG_NATIVE"] = "0"


def split(rng: np.random.Generator, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = rng.integers(-(2**63), 2**63, v.shape, dtype=np.int64)
    return a, v - a


def party_compare(session, x, ys, superblock, native):  # noqa: ANN001, ANN201
    """In each party: shares of msb(x) and msb(x)*y, the opened msb, and the traffic."""
    cmp = session.comparator(superblock=superblock, native=native)
    bits, prods = cmp.msb(x, ys)
    only_prods = cmp.msb(x, ys, bits=False)
    opened = cmp.open_msb(x)
    return bits, prods, only_prods, opened, cmp.stats, cmp.kern.name


def backend_of(session):  # noqa: ANN001, ANN201
    return compare.kernels().name


@pytest.fixture(scope="module")
def gloo_native():
    with MpcCluster(timeout_s=120) as c:
        yield c


@pytest.fixture(scope="module")
def mtls_fallback():
    with MpcCluster(timeout_s=120, transport="mtls", setup=use_fallback) as c:
        yield c


def cases(rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """(x, y) pairs; x is compared with 0, i.e. a - b for a comparison a < b."""
    a = rng.integers(-(2**62), 2**62, 3001, dtype=np.int64, endpoint=True)
    b = a.copy()
    b[::3] = rng.integers(-(2**62), 2**62, b[::3].shape, dtype=np.int64, endpoint=True)
    b[1::7] = a[1::7] + 1  # neighbours
    diff = a - b  # equal values on most thirds: diff == 0
    full = rng.integers(-(2**63), 2**63, 700, dtype=np.int64)  # every ring element
    x = np.concatenate([EDGES, diff, full, -EDGES])
    y = rng.integers(-(2**63), 2**63, x.shape, dtype=np.int64)
    y[: len(EDGES)] = EDGES
    small = np.array([5], dtype=np.int64), np.array([-3], dtype=np.int64)
    return [(x, y), small]


def check(cluster: MpcCluster, native: bool, superblock: int) -> str:
    rng = np.random.default_rng(2026)
    name = ""
    for x, y in cases(rng):
        xa, xb = split(rng, x)
        ya, yb = split(rng, y)
        ra, rb = cluster.run(party_compare, (xa, [ya, ya], superblock, native),
                             (xb, [yb, yb], superblock, native))  # fmt: skip
        ref = (x < 0).astype(np.int64)
        assert np.array_equal(ra[0] + rb[0], ref)
        for pa, pb in zip(ra[1], rb[1], strict=True):
            assert np.array_equal(pa + pb, ref * y)
        assert ra[2][0] is None and np.array_equal(ra[2][1][0] + rb[2][1][0], ref * y)
        assert np.array_equal(ra[3], ref.astype(bool)) and np.array_equal(rb[3], ref.astype(bool))
        # the bits shares alone do not reveal the bit: both parts are needed
        assert not np.array_equal(ra[0], ref) or len(x) < 4
        name = ra[5]
        stats = ra[4]
        blocks = -(-len(x) // superblock)
        assert stats.rounds == blocks * (7 + 7 + 7)
    return name


def test_exact_over_gloo_native_kernel(gloo_native):
    backend = gloo_native.run(backend_of, (), ())[0]
    if backend != "native":
        pytest.skip(f"no native kernel on this machine ({compare.backend()})")
    assert check(gloo_native, True, superblock=1024) == "native"


def test_exact_over_mtls_numpy_fallback(mtls_fallback):
    assert mtls_fallback.run(backend_of, (), ()) == ("numpy", "numpy")
    assert check(mtls_fallback, False, superblock=512) == "numpy"


def test_traffic_is_the_stated_floor(gloo_native):
    """Bytes A sends per value: 8 (c) + 8 per product + 15.5 (levels 2..6) + 1/8 (e)."""
    rng = np.random.default_rng(3)
    n = 4096
    x = rng.integers(-(2**62), 2**62, n, dtype=np.int64)
    xa, xb = split(rng, x)
    ra, _ = gloo_native.run(party_compare, (xa, [xa], n, None), (xb, [xb], n, None))
    stats = ra[4]
    per_msb = 8 + 15.5 + 0.125
    # party_compare: msb(x, [y]) + msb(x, [y], bits=False) + open_msb(x)
    expected = n * (2 * (per_msb + 8) + per_msb)
    assert stats.bytes_sent == expected


# ------------------------------------------------------------- kernels alone
def _random(rng: np.random.Generator, nbytes: int) -> np.ndarray:
    return rng.integers(0, 256, nbytes, dtype=np.uint8)


def test_native_and_numpy_layers_give_identical_bytes():
    native = compare.kernels()
    if native.name != "native":
        pytest.skip(f"no native kernel on this machine ({compare.backend()})")
    ref = compare.NumpyKernels()
    rng = np.random.default_rng(5)
    n, k = 2048, 2
    c = rng.integers(0, 2**64, n, dtype=np.uint64)
    rb = rng.integers(0, 2**64, n, dtype=np.uint64)
    rr, a, b = _random(rng, 4 * n), _random(rng, 4 * n), _random(rng, 4 * n)
    for p0 in (True, False):
        outs = [kern.level1(n, p0, c, rb, rr, a, b) for kern in (native, ref)]
        assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1], outs[1][1])
        de = outs[0][0]
        ghis = [outs[0][1].copy(), outs[1][1].copy()]
        for i, w in enumerate(compare.WIDTHS):
            ln = n * w // 8
            theirs, aa, bb, cc = (_random(rng, 2 * ln), _random(rng, ln), _random(rng, ln),
                                  _random(rng, ln))  # fmt: skip
            nw = compare.WIDTHS[i + 1] if i + 1 < len(compare.WIDTHS) else 0
            an = _random(rng, n * nw // 8) if nw else None
            bn = _random(rng, n * nw // 8) if nw else None
            got = [kern.level(n, w, p0, de, theirs, aa, bb, cc, g, an, bn)
                   for kern, g in zip((native, ref), ghis, strict=True)]  # fmt: skip
            assert np.array_equal(got[0], got[1]), w
            assert np.array_equal(ghis[0], ghis[1]), w
            de = got[0]
        e_mine, e_theirs = _random(rng, n // 8), _random(rng, n // 8)
        s = rng.integers(-(2**63), 2**63, n, dtype=np.int64)
        y = rng.integers(-(2**63), 2**63, (k, n), dtype=np.int64)
        f = rng.integers(-(2**63), 2**63, k * n, dtype=np.int64)
        sv = rng.integers(-(2**63), 2**63, k * n, dtype=np.int64)
        got = [kern.b2a(n, p0, e_mine, e_theirs, s, y, f, sv, True) for kern in (native, ref)]
        assert np.array_equal(got[0][0], got[1][0])
        assert np.array_equal(got[0][1].reshape(-1), got[1][1].reshape(-1))


def test_dealer_material_same_on_both_kernels_and_consistent():
    """The dealer's answer is the same bytes on both kernels, and with the parties' own
    draws it forms a correct edaBit, pairwise products and AND triples."""
    n, k = 512, 1
    key0, key1 = bytes(range(32)), bytes(range(1, 33))
    outs = []
    for native in [None] if compare.kernels().name != "native" else [True, False]:
        st = [AesCtrStream(key0), AesCtrStream(key1)]
        outs.append(compare.dealer_material(st, n, k, native=native))
    assert all(np.array_equal(outs[0], o) for o in outs)
    fix0 = compare._slices(outs[0].view(np.uint8), compare.fix_layout(n, k))
    a0 = AesCtrStream(key0)
    a1 = AesCtrStream(key1)
    own0 = compare._draw(a0, compare.own_layout(n, k))
    own1 = compare._draw(a1, compare.own_layout(n, k))
    fix1 = compare._draw(a1, compare.fix_layout(n, k))
    r = own0["r"].view(np.uint64) + own1["r"].view(np.uint64)
    assert np.array_equal(fix0["rb"].view(np.uint64) ^ fix1["rb"].view(np.uint64), r)
    lo = r & np.uint64(2**63 - 1)
    pairs = compare._unpack(fix0["rr"] ^ fix1["rr"], n, 32)
    assert np.array_equal(pairs, compare._even(lo & (lo >> np.uint64(1))))
    for w in compare.WIDTHS:
        a = own0[f"a{w}"] ^ own1[f"a{w}"]
        b = own0[f"b{w}"] ^ own1[f"b{w}"]
        assert np.array_equal(fix0[f"c{w}"] ^ fix1[f"c{w}"], a & b)
    s = np.unpackbits(own0["sbit"] ^ own1["sbit"], bitorder="little").astype(np.int64)
    assert np.array_equal(fix0["s"].view(np.int64) + fix1["s"].view(np.int64), s)
    v = own0["v0"].view(np.int64) + own1["v0"].view(np.int64)
    assert np.array_equal(fix0["sv0"].view(np.int64) + fix1["sv0"].view(np.int64), s * v)
    assert 0.4 < s.mean() < 0.6


@pytest.mark.parametrize(("n", "k"), [(0, 0), (63, 0), (64, -1), (64, 9), (1 << 23, 0)])
def test_dealer_refuses_malformed_requests(n, k):
    with pytest.raises(compare.CompareError, match="bad comparison request"):
        compare.check_request(n, k)


def test_bad_inputs_are_refused_before_anything_is_sent():
    class Nowhere:
        def isend(self, *a):  # noqa: ANN002, ANN202
            raise AssertionError("nothing may be sent")

        recv = isend

    cmp = compare.Comparator(1, Nowhere(), AesCtrStream(bytes(32)))
    with pytest.raises(TypeError, match="1-D int64"):
        cmp.msb(np.zeros(4, dtype=np.int32))
    with pytest.raises(ValueError, match="as long as x"):
        cmp.msb(np.zeros(4, dtype=np.int64), [np.zeros(3, dtype=np.int64)])


# ------------------------------------------------------------- Bulyan's stage
def _apply(network: list[list[tuple[int, int]]], v: np.ndarray) -> np.ndarray:
    v = v.copy()
    for layer in network:
        for a, b in layer:
            lo, hi = np.minimum(v[a], v[b]), np.maximum(v[a], v[b])
            v[a], v[b] = lo, hi
    return v


@pytest.mark.parametrize("theta", range(1, 41))
def test_selection_network_gives_the_sorted_values_bulyan_reads(theta):
    from secagg.mpc import _bulyan_positions, _selection_network, _sorting_network

    rng = np.random.default_rng(theta)
    for f in range(0, (theta - 1) // 2 + 1):
        need = sorted(_bulyan_positions(theta, f))
        net = _selection_network(theta, set(need))
        assert sum(map(len, net)) <= sum(map(len, _sorting_network(theta)))
        for _ in range(20):
            v = rng.integers(-5, 5, (theta, 3))  # many ties
            assert np.array_equal(_apply(net, v)[need], np.sort(v, axis=0)[need])


def _bulyan(session, share, selected, f, block):  # noqa: ANN001, ANN201
    return session.bulyan_window_sum(share, selected, f, block=block)


@pytest.mark.parametrize(("n", "f"), [(7, 1), (12, 2), (20, 4)])
def test_bulyan_stage_exact_at_the_headroom_extremes(gloo_native, n, f):
    """Coordinates up to ±2^62/(4n), ties and zeros: large enough that every window
    cost difference is near 2^62, small enough that none wraps the ring."""
    from secagg import rules

    rng = np.random.default_rng(n)
    lim = 2**62 // (4 * n)
    X = rng.integers(-lim, lim, (n, 300), dtype=np.int64, endpoint=True)
    X[:, :20] = rng.choice(np.array([-lim, 0, lim, 1, -1], dtype=np.int64), (n, 20))
    X[:, 20:30] = X[0, 20:30]  # all equal
    selected = list(range(n))
    a, b = split(rng, X)
    got, _ = gloo_native.run(_bulyan, (a, selected, f, 128), (b, selected, f, 128))
    np.testing.assert_array_equal(got, rules.bulyan_window_sum(X[selected], f))
