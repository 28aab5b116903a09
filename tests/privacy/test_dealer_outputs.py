"""The dealer's outputs tell server A nothing about the inputs (issue #15, item 2).

The Gram pair's shares used to be built with party 1's share ``U + U^T``, whose
diagonal is always even: A's share then satisfied ``Z_A[i, i] = sum_j R_ij (mod 2)``
and, with the opened ``E = X - R``, A learned every worker's coordinate-sum parity,
one bit per worker per round beyond the distances. The rotated pairs of the other
privacy tests permute coordinates, which keeps row sums (and so these parities) equal:
they could not see it. Here X' reflects one coordinate about an odd centre, which flips
every row's parity while the distances, the selection (Multi-Krum, m = 4: an even
selection, so the opened sum's parity does not tell either) and the opened sum stay
identical. A's recorded view, the dealer's responses included, must not tell X from X';
a control shows that the old construction of the same share is caught every time.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from privacy_rounds import DIM, PARAMS, F, N, RecordedRun, recorded_run
from privacy_tools import chance_bound, loo_nearest_mean_accuracy, make_plan, ring_add, ring_sub

from secagg import reference, rules
from secagg.cluster import MpcCluster

M = 4  # an even selection: the sum's parity is then the same for X and X'
RUNS = 12


@dataclasses.dataclass(frozen=True)
class ParityPair:
    X: np.ndarray
    X2: np.ndarray
    selected: list[int]


def parity_pair(rng: np.random.Generator) -> ParityPair:
    """X, X' with equal distances, Multi-Krum selection and selected sum, and every
    row's coordinate-sum parity flipped: X'[:, j0] = a - X[:, j0] with a odd and the
    selected rows' mean of that column equal to a / 2."""
    j0 = 0
    for _ in range(100):
        X = rng.integers(-(1 << 12), 1 << 12, size=(N, DIM)).astype(np.int64)
        sel = rules.select("multi-krum", reference.sq_distances_int(X), F, M)
        s = int(X[sel, j0].sum())
        a = (s + 2) // 2
        if a % 2 == 0:
            a += 1
        X[sel[0], j0] += 2 * a - s  # now sum over the selection of column j0 is 2a
        D = reference.sq_distances_int(X)
        if rules.select("multi-krum", D, F, M) != sel:
            continue
        X2 = X.copy()
        X2[:, j0] = a - X[:, j0]
        assert np.array_equal(reference.sq_distances_int(X2), D)
        assert np.array_equal(X2[sel].sum(axis=0), X[sel].sum(axis=0))
        assert np.all((X.sum(axis=1) - X2.sum(axis=1)) % 2 == 1)
        return ParityPair(X, X2, sel)
    raise AssertionError("no pair found")


@pytest.fixture(scope="module")
def parity_runs(cluster: MpcCluster) -> tuple[ParityPair, list[RecordedRun]]:
    pair = parity_pair(np.random.default_rng(15))
    plan = dataclasses.replace(make_plan("multi-krum", F, PARAMS, DIM), m=M)
    runs = []
    for _ in range(RUNS):
        for which, X in enumerate((pair.X, pair.X2)):
            runs.append(recorded_run(cluster, X, plan, which))
    return pair, runs


def _entry(transcript: list, label: str, shape: tuple[int, ...]) -> np.ndarray:
    for lab, value in transcript:
        if lab == label and value.shape == shape:
            return value
    raise AssertionError(f"no {label} entry of shape {shape} in the transcript")


def _opened_e(run: RecordedRun) -> np.ndarray:
    """E = X - R, as A computes it: its own E_A = share_a - R_A plus B's E_B."""
    r_a = _entry(run.a.transcript, "own_mask_share", (N, DIM))
    e_b = _entry(run.a.transcript, "received", (N, DIM))
    return ring_add(ring_sub(run.share_a, r_a), e_b)


def _parity_guess(run: RecordedRun, z_a: np.ndarray) -> np.ndarray:
    """A's best guess of each row's sum parity: sum_j E_ij + Z_A[i, i] (mod 2)."""
    e = _opened_e(run)
    return ((e.sum(axis=1) + np.diag(z_a)) & 1).astype(np.float64)


def _old_dealer_share(run: RecordedRun, rng: np.random.Generator) -> np.ndarray:
    """Control: A's share as the old dealer made it, Z - (U + U^T), from this run's R."""
    r = ring_add(
        _entry(run.a.transcript, "own_mask_share", (N, DIM)),
        _entry(run.b.transcript, "own_mask_share", (N, DIM)),
    )
    with np.errstate(over="ignore"):
        z = np.einsum("ik,jk->ij", r, r)  # int64 wraps: the ring Z_2^64
        u = rng.integers(-(1 << 62), 1 << 62, size=(N, N), dtype=np.int64)
        return z - (u + u.T)


def test_public_outputs_are_identical(parity_runs) -> None:
    pair, runs = parity_runs
    a0 = runs[0].a.outcome
    assert a0.selected == pair.selected and len(a0.selected) == M
    for run in runs:
        for out in (run.a.outcome, run.b.outcome):
            assert out.selected == a0.selected
            assert np.array_equal(out.encoded_sum, a0.encoded_sum)
        np.testing.assert_array_equal(run.a.outcome.distances, a0.distances)


def test_the_transcripts_hold_the_dealers_outputs(parity_runs) -> None:
    _, runs = parity_runs
    for run in runs:
        labels_a = [lab for lab, _ in run.a.transcript]
        assert "dealer" in labels_a and "dealer.gram_share" in labels_a
        assert "dealer.gram_share" in [lab for lab, _ in run.b.transcript]


def test_b_gram_share_has_a_uniform_diagonal(parity_runs) -> None:
    """B's share of Z is uniform among symmetric matrices: its diagonal bits are fair
    coins (the old U + U^T had every diagonal entry even)."""
    _, runs = parity_runs
    bits = np.concatenate(
        [np.diag(_entry(r.b.transcript, "dealer.gram_share", (N, N))) & 1 for r in runs]
    )
    for run in runs:
        z_b = _entry(run.b.transcript, "dealer.gram_share", (N, N))
        assert np.array_equal(z_b, z_b.T)
    # 2·RUNS·N fair bits: |mean - 1/2| > 0.25 has probability < 1e-8
    assert abs(bits.mean() - 0.5) < 0.25, bits.mean()


def test_a_cannot_tell_row_parities_from_its_view(parity_runs) -> None:
    pair, runs = parity_runs
    rng = np.random.default_rng(2)

    def agreement(old: bool) -> float:
        """How often A's guess equals the true parity of the row it saw (X or X')."""
        hits = []
        for run in runs:
            z_a = (
                _old_dealer_share(run, rng)
                if old
                else _entry(run.a.transcript, "dealer.gram_share", (N, N))
            )
            X = pair.X if run.which == 0 else pair.X2
            hits.append(_parity_guess(run, z_a) == (X.sum(axis=1) & 1))
        return float(np.mean(hits))

    # control: with the old dealer's share, A reads every parity exactly
    assert agreement(old=True) == 1.0
    # the dealer's real output: a fair coin per row and run (5 sigma of 2·RUNS·N)
    rate = agreement(old=False)
    assert abs(rate - 0.5) < 5 * 0.5 / np.sqrt(2 * RUNS * N), f"A guesses parities: {rate}"
    # and the generic classifier over the guesses cannot tell X from X' either
    F0 = np.stack(
        [
            _parity_guess(r, _entry(r.a.transcript, "dealer.gram_share", (N, N)))
            for r in runs
            if r.which == 0
        ]
    )
    F1 = np.stack(
        [
            _parity_guess(r, _entry(r.a.transcript, "dealer.gram_share", (N, N)))
            for r in runs
            if r.which == 1
        ]
    )
    assert loo_nearest_mean_accuracy(F0, F1) < chance_bound(len(runs))
