"""What one server receives and stores about a worker is independent of its vector.

Server A stores a worker's 32-byte seed and expands it to its share; server B stores
``s_B = x - expand(seed) mod 2^64`` (``secagg.sharing``, exactly what the SDK sends).
For very different inputs, all zeros and vectors at the round's bounds (at the norm
bound, and one coordinate at the coordinate bound), the stored values must look alike
and uniform: bit-frequency tests (each of the 64 bit positions, Bonferroni), a
chi-square test on byte values and two-sample KS tests. A control with a weak mask
(only 16 random bits) shows that the same tests catch a share that leaks.
"""

from __future__ import annotations

import numpy as np
import pytest
from privacy_tools import ALPHA, bit_bias_pvalue, ks_pvalue, ring_sub, two_sample_bits_pvalue
from scipy import stats

from secagg import encoding, sharing

D = 64
K = 300  # submissions per input: 19200 share words each
PARAMS = encoding.EncodingParams(scale=1.0, coord_bound=50.0, norm_bound=200.0)


def _inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    at_norm = rng.normal(size=D)
    at_norm = encoding.clip_to_bounds(at_norm * 1e3, PARAMS)  # lands on the norm bound
    one_coord = np.zeros(D)
    one_coord[7] = PARAMS.coord_bound
    return {
        "zeros": encoding.encode(np.zeros(D), PARAMS),
        "norm-bound": encoding.encode(at_norm, PARAMS),
        "coord-bound": encoding.encode(one_coord, PARAMS),
    }


@pytest.fixture(scope="module")
def stored() -> dict[str, dict[str, np.ndarray]]:
    """For each input, K fresh submissions as the servers store them."""
    out = {}
    for name, x in _inputs().items():
        parts = [sharing.split(x) for _ in range(K)]
        out[name] = {
            "seed": np.frombuffer(b"".join(p.seed for p in parts), dtype="<i8").astype(np.int64),
            "share_a": np.concatenate([sharing.share_a(p.seed, D) for p in parts]),
            "share_b": np.concatenate([p.share_b for p in parts]),
        }
    return out


def _byte_chi2_pvalue(words: np.ndarray) -> float:
    counts = np.bincount(np.asarray(words, dtype=np.int64).view(np.uint8), minlength=256)
    return float(stats.chisquare(counts).pvalue)


def test_inputs_really_differ():
    x = _inputs()
    assert np.linalg.norm(x["norm-bound"]) > 0.99 * PARAMS.norm_bound * 2**16
    assert int(np.abs(x["coord-bound"]).max()) == PARAMS.coord_bound * 2**16
    assert not np.any(x["zeros"])


@pytest.mark.parametrize("what", ["seed", "share_a", "share_b"])
def test_stored_values_are_uniform_for_every_input(stored, what):
    for name, values in stored.items():
        words = values[what]
        assert bit_bias_pvalue(words) > ALPHA, f"{what} bits biased for {name}"
        assert _byte_chi2_pvalue(words) > ALPHA, f"{what} bytes not uniform for {name}"
        uniform = np.random.default_rng(0).integers(-(2**63), 2**63 - 1, size=words.size)
        assert ks_pvalue(words, uniform) > ALPHA, f"{what} values not uniform for {name}"


@pytest.mark.parametrize("what", ["seed", "share_a", "share_b"])
def test_stored_values_do_not_depend_on_the_input(stored, what):
    names = list(stored)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            x, y = stored[a][what], stored[b][what]
            assert two_sample_bits_pvalue(x, y) > ALPHA, f"{what}: {a} vs {b}"
            assert ks_pvalue(x, y) > ALPHA, f"{what}: {a} vs {b}"
    # position by position too: coordinate 7 is where "coord-bound" differs most
    width = 4 if what == "seed" else D  # a seed is 4 words
    for pos in sorted({0, 7 % width}):
        col = {n: stored[n][what].reshape(-1, width)[:, pos] for n in names}
        assert ks_pvalue(col["zeros"], col["coord-bound"]) > ALPHA, f"{what}[{pos}]"
        assert two_sample_bits_pvalue(col["zeros"], col["norm-bound"]) > ALPHA


def test_the_tests_catch_a_weak_mask():
    """Control: a share masked with only 16 random bits leaks the high bits of x."""
    rng = np.random.default_rng()
    x = _inputs()
    weak = {
        n: np.concatenate([ring_sub(v, rng.integers(0, 2**16, size=D)) for _ in range(K)])
        for n, v in x.items()
    }
    assert two_sample_bits_pvalue(weak["zeros"], weak["norm-bound"]) < ALPHA
    assert bit_bias_pvalue(weak["zeros"]) < ALPHA
