"""secagg.compare: each party's whole view is independent of the compared values.

Two inputs that the parties must not tell apart (every value far below zero against
every value far above it, with different multiplicands ``y``) go through the real
protocol (``MpcCluster``: A, B and the dealer as processes) many times, with shares
as outputs (nothing opened), so the views must be identically distributed. A party's
view is its own input shares plus everything it receives: the masked opening
``c = x + r`` (and ``f = y - v``), the five packed AND openings, the opened ``e``, and
on server A the dealer's material. The pooled per-position bit tests, a leave-one-out
classifier on what A and B can compute about ``x`` (``share + received c``), and the
positional z-score must see nothing; a control with the edaBit mask ``r`` forced to
zero (``c = x`` opened) is caught by the same statistics.
"""

from __future__ import annotations

import numpy as np
import pytest
from privacy_tools import (
    ALPHA,
    chance_bound,
    loo_nearest_mean_accuracy,
    positional_zscore,
    ring_add,
    two_sample_bits_pvalue,
    word_bits,
    words_as_unit,
)

from secagg import compare

L = 64  # values per comparison batch (one block)
RUNS = 24  # per input
Z_MAX = 6.0


class UnmaskedComparator(compare.Comparator):
    """The control: the edaBit's arithmetic mask is zeroed, so ``c = x`` is opened."""

    def _prepare(self, lo: int, hi: int, k: int) -> compare._Block:
        blk = super()._prepare(lo, hi, k)
        blk.own["r"][:] = 0
        return blk


def party_view(session, x, y, leaky):  # noqa: ANN001, ANN201
    """In each party: the comparison with shared outputs, recording the whole view."""
    from secagg import mpc

    transcript: list[tuple[str, np.ndarray]] = []
    cl = mpc._client()
    cmp_cls = UnmaskedComparator if leaky else compare.Comparator
    cmp = cmp_cls(
        session.rank, session._link, cl.stream, cl if session.rank == 0 else None,
        record=lambda label, arr: transcript.append((label, arr)),
    )  # fmt: skip
    bits, prods = cmp.msb(x, [y])
    return transcript, bits, prods[0]


def _inputs(which: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    big = rng.integers(2**40, 2**62, L, dtype=np.int64)
    x = -big if which == 0 else big
    y = np.full(L, 12345 if which == 0 else -(2**61), dtype=np.int64)
    return x, y


def _runs(cluster, leaky: bool) -> list[dict]:  # noqa: ANN001
    rng = np.random.default_rng(99)
    runs = []
    for _ in range(RUNS):
        for which in (0, 1):
            x, y = _inputs(which, rng)
            xa = rng.integers(-(2**63), 2**63, L, dtype=np.int64)
            ya = rng.integers(-(2**63), 2**63, L, dtype=np.int64)
            args_a, args_b = (xa, ya, leaky), (x - xa, y - ya, leaky)
            (ta, ba, pa), (tb, bb, pb) = cluster.run(party_view, args_a, args_b)
            if not leaky:  # (the control's results are wrong: its r is not the dealer's)
                assert np.array_equal(ba + bb, (x < 0).astype(np.int64))
                assert np.array_equal(pa + pb, (x < 0) * y)
            runs.append({"which": which, "a": (xa, ya, ta), "b": (x - xa, y - ya, tb)})
    return runs


@pytest.fixture(scope="module")
def honest(cluster):
    return _runs(cluster, leaky=False)


@pytest.fixture(scope="module")
def leaky(cluster):
    return _runs(cluster, leaky=True)


def _words(entry: np.ndarray) -> np.ndarray:
    """A received value as int64 words (byte buffers padded to whole words)."""
    b = np.ascontiguousarray(entry).view(np.uint8).reshape(-1)
    pad = (-len(b)) % 8
    return np.concatenate([b, np.zeros(pad, np.uint8)]).view(np.int64)


def _view(run: dict, party: str) -> list[tuple[str, np.ndarray]]:
    x_own, y_own, transcript = run[party]
    return [("own_x", x_own), ("own_y", y_own)] + [(lab, _words(v)) for lab, v in transcript]


def _targeted(run: dict, party: str) -> np.ndarray:
    """What the party computes about x: its share plus the peer's share of c."""
    x_own, _, transcript = run[party]
    masked = next(v for lab, v in transcript if lab == "cmp_masked")
    c = ring_add(x_own, masked[:L])
    return word_bits(c).ravel()


def _split(runs: list[dict], fn) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    f0 = np.stack([fn(r) for r in runs if r["which"] == 0])
    f1 = np.stack([fn(r) for r in runs if r["which"] == 1])
    return f0, f1


def _everything(run: dict, party: str) -> np.ndarray:
    words = np.concatenate([v for _, v in _view(run, party)])
    return np.concatenate([words_as_unit(words), _targeted(run, party).astype(np.float32)])


@pytest.mark.parametrize("party", ["a", "b"])
def test_view_of_each_party_is_independent_of_the_compared_values(honest, party):
    labels = [lab for lab, _ in _view(honest[0], party)]
    assert {"cmp_masked", "cmp_and", "cmp_e"} <= set(labels)
    if party == "a":
        assert "cmp_dealer" in labels  # the dealer's outputs are part of A's view
    else:
        assert "cmp_dealer" not in labels  # B receives nothing from the dealer
    # pooled per-entry bit tests
    pvals = []
    for j, label in enumerate(labels):
        a = np.concatenate([_view(r, party)[j][1] for r in honest if r["which"] == 0])
        b = np.concatenate([_view(r, party)[j][1] for r in honest if r["which"] == 1])
        pvals.append((label, two_sample_bits_pvalue(a, b)))
    worst = min(pvals, key=lambda t: t[1])
    assert worst[1] * len(pvals) > ALPHA, f"{worst} of {party}'s view depends on the input"
    acc = loo_nearest_mean_accuracy(*_split(honest, lambda r: _targeted(r, party)))
    assert acc < chance_bound(len(honest)), f"{party}'s view classified with accuracy {acc}"
    z = positional_zscore(
        *_split(honest, lambda r: _everything(r, party)), np.random.default_rng(7)
    )
    assert z < Z_MAX, f"some position of {party}'s view depends on the input (z = {z:.1f})"


@pytest.mark.parametrize("party", ["a", "b"])
def test_control_unmasked_opening_is_caught(leaky, party):
    acc = loo_nearest_mean_accuracy(*_split(leaky, lambda r: _targeted(r, party)))
    assert acc >= 0.95
    z = positional_zscore(*_split(leaky, lambda r: _everything(r, party)), np.random.default_rng(7))
    assert z > Z_MAX
