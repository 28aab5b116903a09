"""The exact discrete Gaussian sampler against the exact pmf (secagg.dp.sampler).

Statistical tests draw from the real CSPRNG; each false-failure probability is at most
about 10^-6. Each goodness-of-fit test is paired with a control: the same test, at the
same sample size, must reject a distribution 1% away (σ off by 1%, i.e. a 2% error in
the variance), so a test that passes is one that could have failed.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from secagg.dp import sampler
from secagg.dp.sampler import (
    Csprng,
    bernoulli_exp_neg,
    bernoulli_ratio_big,
    discrete_gaussian,
    pmf,
    uniform_below,
)

N = 400_000
P_FLOOR = 1e-6  # reject the null only below this p-value


def chi_square_vs_pmf(x: np.ndarray, sigma2: Fraction | int, reach: int) -> float:
    """p-value of Pearson's test: bins -reach..reach, both tails pooled into one bin."""
    support = np.arange(-reach, reach + 1)
    p = pmf(sigma2, support)
    expected = np.append(p, 1.0 - p.sum()) * x.size
    inside = np.abs(x) <= reach
    observed = np.append(np.bincount(x[inside] + reach, minlength=2 * reach + 1), (~inside).sum())
    return float(stats.chisquare(observed, expected).pvalue)


def test_small_sigma_matches_the_exact_pmf_and_a_one_percent_change_is_detected():
    x = discrete_gaussian(9, N)
    assert chi_square_vs_pmf(x, 9, 12) > P_FLOOR
    # control: σ 1% larger (σ² = 9·1.01², exact), same size: the test must see it
    off = discrete_gaussian(Fraction(9) * Fraction(101, 100) ** 2, N)
    assert chi_square_vs_pmf(off, 9, 12) < P_FLOOR
    # and the variance alone: relative standard error sqrt(2/N) = 0.22%
    var = sampler.variance(9)
    assert abs(x.var() / var - 1) < 5 * math.sqrt(2 / N)
    assert abs(off.var() / var - 1) > 5 * math.sqrt(2 / N)


@pytest.mark.parametrize("k_sigma", [3, 4])
def test_tails_match_the_exact_tail_mass(k_sigma):
    sigma2 = 9
    x = discrete_gaussian(sigma2, N)
    cut = 3 * k_sigma
    support = np.arange(-cut + 1, cut)
    tail = 1.0 - pmf(sigma2, support).sum()  # P(|X| >= cut)
    got = int((np.abs(x) >= cut).sum())
    z = (got - N * tail) / math.sqrt(N * tail * (1 - tail))
    assert abs(z) < 5, (k_sigma, got, N * tail)


def test_large_sigma_with_a_non_integer_variance_uses_exact_big_integers():
    # σ² = (10^13 + 7)/3: the acceptance step's integers exceed 64 bits (object path)
    sigma2 = Fraction(10**13 + 7, 3)
    sigma = math.sqrt(float(sigma2))
    n = N
    x = discrete_gaussian(sigma2, n)
    assert x.dtype == np.int64
    # 25 bins of equal mass under N(0, σ²); for σ ~ 1.8e6 the discrete Gaussian's bin
    # masses differ from the continuous ones by O(1/σ²)
    edges = stats.norm.ppf(np.linspace(0, 1, 26)[1:-1]) * sigma
    counts = np.bincount(np.searchsorted(edges, x - 0.5), minlength=25)
    assert stats.chisquare(counts).pvalue > P_FLOOR
    # the variance (σ² up to e^-2π²σ²), relative standard error sqrt(2/n) = 0.22%;
    # control: σ 1% larger is 9 standard errors away
    assert abs(x.astype(np.float64).var() / float(sigma2) - 1) < 5 * math.sqrt(2 / n)
    off = discrete_gaussian(sigma2 * Fraction(101, 100) ** 2, n).astype(np.float64)
    assert abs(off.var() / float(sigma2) - 1) > 5 * math.sqrt(2 / n)
    assert abs(x.mean()) < 5 * sigma / math.sqrt(n)


def test_bernoulli_exp_neg_is_exact_for_word_and_big_integers():
    rng = Csprng()
    n = 200_000
    for num, den in [(5, 2), (1, 3), (0, 7), (7, 7), (23, 4)]:
        want = math.exp(-num / den)
        for big in (False, True):
            dtype = object if big else np.int64
            got = bernoulli_exp_neg(
                rng, np.full(n, num, dtype=dtype), np.full(n, den, dtype=dtype)
            ).mean()
            assert abs(got - want) < 5 * math.sqrt(want * (1 - want) / n) + 1e-12, (num, den, big)


def test_bernoulli_ratio_big_handles_numbers_beyond_64_bits():
    rng = Csprng()
    n = 200_000
    den = 3 * (1 << 100)
    got = bernoulli_ratio_big(
        rng, np.full(n, den // 3, dtype=object), np.full(n, den, dtype=object)
    )
    assert abs(got.mean() - 1 / 3) < 5 * math.sqrt(2 / 9 / n)


def test_uniform_below_has_no_modulo_bias():
    rng = Csprng()
    n = 300_000
    # bound 3·2^60: a modulo-reduced 62-bit word would favour the low third 2:1
    b = 3 << 60
    x = uniform_below(rng, np.full(n, b, dtype=np.int64))
    assert x.min() >= 0 and x.max() < b
    thirds = np.bincount(x // (1 << 60), minlength=3)
    assert stats.chisquare(thirds).pvalue > P_FLOOR
    small = uniform_below(rng, np.full(n, 3, dtype=np.int64))
    assert stats.chisquare(np.bincount(small, minlength=3)).pvalue > P_FLOOR
    with pytest.raises(ValueError, match="bounds"):
        uniform_below(rng, np.array([0]))


def test_only_the_os_csprng_is_drawn_from(monkeypatch):
    """With os.urandom replaced by a fixed stream the output is a function of it alone,
    and neither numpy's nor Python's global generator moves."""

    def fixed_stream() -> object:
        state = {"i": 0}

        def urandom(n: int) -> bytes:
            out = bytes((state["i"] + j) * 2654435761 % 251 for j in range(n))
            state["i"] += n
            return out

        return urandom

    np_state = np.random.get_state()[1].copy()
    py_state = random.getstate()
    monkeypatch.setattr(sampler.os, "urandom", fixed_stream())
    a = discrete_gaussian(Fraction(1000003, 7), 5000)
    monkeypatch.setattr(sampler.os, "urandom", fixed_stream())
    b = discrete_gaussian(Fraction(1000003, 7), 5000)
    np.testing.assert_array_equal(a, b)
    assert (np.random.get_state()[1] == np_state).all()
    assert random.getstate() == py_state


def test_floats_are_refused_and_bad_arguments_say_what_to_do():
    with pytest.raises(TypeError, match="Fraction"):
        discrete_gaussian(2.5, 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        discrete_gaussian(0, 10)
    assert discrete_gaussian("2.25", 0).shape == (0,)


def test_a_keyed_generator_repeats_and_keys_differ():
    """A server's per-round key gives the same noise each time (a rerun opens the same
    sum); another key, or no key (os.urandom), gives other noise."""
    from secagg.prg import fresh_key

    k = fresh_key()
    a = sampler.discrete_gaussian(1000, 5000, sampler.Csprng(k))
    b = sampler.discrete_gaussian(1000, 5000, sampler.Csprng(k))
    np.testing.assert_array_equal(a, b)
    assert np.any(a != sampler.discrete_gaussian(1000, 5000, sampler.Csprng(fresh_key())))
    assert np.any(a != sampler.discrete_gaussian(1000, 5000))
