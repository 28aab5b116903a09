"""Server A plus a colluding worker against the dealer's mask streams.

In the Gram opening E = X - R (R = R_A + R_B), server A knows E and its own mask share
R_A. A worker colluding with A knows its own row x_k, so A learns R_B's row k exactly:
d consecutive outputs of B's mask stream. If that stream is a Mersenne Twister (as in
CrypTen's stock dealer, seeded with 64 bits), 312 int64 outputs give its whole state,
A predicts every other row of R_B and unmasks every honest worker. secagg's dealer
uses AES-256-CTR streams: the same attack, run for real on A's recorded view of a
real 2PC round, recovers nothing.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from secagg import sharing
from secagg.cluster import MpcCluster, with_transcript

MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------- MT19937 recovery
def _untemper(y: int) -> int:
    y ^= y >> 18
    y ^= (y << 15) & 0xEFC60000
    t = y
    for _ in range(5):  # invert y ^= (y << 7) & 0x9D2C5680
        t = y ^ ((t << 7) & 0x9D2C5680)
    y = t & 0xFFFFFFFF
    t = y
    for _ in range(2):  # invert y ^= y >> 11
        t = y ^ (t >> 11)
    return t & 0xFFFFFFFF


def _words(int64s: np.ndarray) -> list[int]:
    """torch.randint over the full ring draws one 64-bit value as two MT words, high
    word first, and adds the ring's lower end -2^63."""
    out: list[int] = []
    for v in int64s.tolist():
        u = (v + (1 << 63)) & MASK64
        out += [u >> 32, u & 0xFFFFFFFF]
    return out


def mt_predictor(first_312: np.ndarray) -> random.Random:
    """A generator in the state the stream is in after these 312 int64 outputs."""
    words = _words(first_312)
    assert len(words) == 624
    rng = random.Random()
    rng.setstate((3, tuple(_untemper(w) for w in words) + (624,), None))
    return rng


def predict_int64(rng: random.Random, count: int) -> np.ndarray:
    out = np.empty(count, dtype=np.int64)
    for i in range(count):
        u = (rng.getrandbits(32) << 32) | rng.getrandbits(32)
        out[i] = u - (1 << 63)  # the ring value -2^63 + u, always within int64
    return out


def recover_rows(E: np.ndarray, R_A: np.ndarray, x_k: np.ndarray, k: int) -> np.ndarray:
    """A's attack: learn B's mask row k from the colluder, predict the later rows,
    unmask them. Returns A's guess of X for rows k+1.. (row-major stream order)."""
    n, d = E.shape
    with np.errstate(over="ignore"):
        r_b_k = x_k - E[k] - R_A[k]
        rng = mt_predictor(r_b_k[:312])
        rest = predict_int64(rng, d - 312 + (n - k - 1) * d)
        later = rest[d - 312 :].reshape(n - k - 1, d)
        return E[k + 1 :] + R_A[k + 1 :] + later


def honest_inputs(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-(2**24), 2**24, size=(n, d))


# -------------------------------------------------------------------- the tests
def test_attack_is_real_against_a_mersenne_twister_dealer():
    n, d = 4, 400
    X = honest_inputs(n, d, 1)
    g_a, g_b = torch.Generator(), torch.Generator()
    g_a.manual_seed(random.getrandbits(63))
    g_b.manual_seed(random.getrandbits(63))
    # CrypTen's TTP: each party's mask share is torch.randint over the ring
    R_A = torch.randint(-(2**63), 2**63 - 1, (n, d), generator=g_a).numpy()
    R_B = torch.randint(-(2**63), 2**63 - 1, (n, d), generator=g_b).numpy()
    with np.errstate(over="ignore"):
        E = X - R_A - R_B
    guess = recover_rows(E, R_A, X[0], k=0)
    np.testing.assert_array_equal(guess, X[1:])  # every honest worker unmasked


@pytest.fixture(scope="module")
def cluster():
    with MpcCluster(timeout_s=120) as c:
        yield c


def test_server_a_plus_colluder_learns_nothing_from_secagg_dealer(cluster):
    n, d = 4, 400
    X = honest_inputs(n, d, 2)
    parts = [sharing.split(row) for row in X]
    share_a = np.stack([sharing.share_a(p.seed, d) for p in parts])
    share_b = np.stack([p.share_b for p in parts])
    (D, view_a), _ = cluster.run(
        with_transcript, ("sq_distances", share_a), ("sq_distances", share_b)
    )
    labels = [label for label, _ in view_a]
    assert labels == ["own_mask_share", "received", "received"]  # R_A, E_B, D_B
    R_A, E_B, _ = (v for _, v in view_a)
    with np.errstate(over="ignore"):
        E = (share_a - R_A) + E_B  # what A holds after the opening
        # sanity: the view is the real one (the colluder's mask row is consistent)
        r_b_0 = X[0] - E[0] - R_A[0]
    guess = recover_rows(E, R_A, X[0], k=0)
    # the MT model cannot even continue B's stream within the colluder's own row ...
    rng = mt_predictor(r_b_0[:312])
    assert np.count_nonzero(predict_int64(rng, d - 312) == r_b_0[312:]) == 0
    # ... and recovers no honest coordinate (a correct guess by chance has prob 2^-64)
    assert np.count_nonzero(guess == X[1:]) == 0
    # A's guess is unrelated to the truth: about half of each bit position differs
    bits = np.unpackbits((guess ^ X[1:]).view(np.uint8))
    assert 0.45 < bits.mean() < 0.55
