"""Each server's complete view of a real round depends only on what it may learn.

Inputs X and X' = c + P(X - c), with P orthogonal and c fixed so that the squared
distances, the selection and the opened sum are identical (``privacy_tools.rotated_pair``),
are run through the real 2PC protocol many times (``conftest.recorded``). Server A's
view is its shares (the expanded seeds), its own Gram mask share and everything it
receives: E_B, B's share of the distance matrix, B's share of the opened sum, and every
value of CrypTen's secure comparisons (input validation). Server B's view is the mirror
image without the distances. Both views include what the dealer handed the party (on A
every dealer response, on both the Gram share). The dealer's view is the request headers.

If the protocol leaked anything beyond distances, selection and aggregate, the views
for X and X' would differ in distribution. They are compared with pooled two-sample
tests on every bit position of every received value, a KS test on the values, and a
leave-one-out classifier over the bits, and a permutation-calibrated position-by-position
statistic over the whole view (pooled tests alone are blind here: X' permutes each row's
values, so pooled bit frequencies agree even for a total leak). The classifier and the
positional statistic are shown to detect a real leak (a control in which one server
opens its share without the mask).
"""

from __future__ import annotations

import numpy as np
from privacy_rounds import COLLUDERS, DIM, PARAMS, N, RecordedBatch, recorded_run
from privacy_tools import (
    ALPHA,
    chance_bound,
    ks_pvalue,
    loo_nearest_mean_accuracy,
    positional_zscore,
    ring_add,
    two_sample_bits_pvalue,
    word_bits,
    words_as_unit,
)

from secagg import encoding

HONEST = [i for i in range(N) if i not in COLLUDERS]
Z_MAX = 6.0  # positional z-score: ~N(0, 1) without signal, so 6 sigma never fires by chance


def _entry(transcript: list, label: str, shape: tuple[int, ...]) -> np.ndarray:
    for lab, value in transcript:
        if lab == label and value.shape == shape:
            return value
    raise AssertionError(f"no {label} entry of shape {shape} in the transcript")


def _structure(transcript: list) -> list[tuple[str, tuple[int, ...]]]:
    return [(lab, v.shape) for lab, v in transcript]


def _views(batch: RecordedBatch, party: str) -> tuple[list, list]:
    runs = [(r, getattr(r, party)) for r in batch.runs]
    return [x for x in runs if x[0].which == 0], [x for x in runs if x[0].which == 1]


def _pooled_pvalues(batch: RecordedBatch, party: str) -> list[tuple[int, str, float]]:
    """Per transcript entry: the smaller of the bitwise and the KS p-value, X vs X'."""
    v0, v1 = _views(batch, party)
    out = []
    for j, (label, _) in enumerate(v0[0][1].transcript):
        a = np.concatenate([v.transcript[j][1].reshape(-1) for _, v in v0])
        b = np.concatenate([v.transcript[j][1].reshape(-1) for _, v in v1])
        p = two_sample_bits_pvalue(a, b)
        if a.size >= 200 and not np.array_equal(np.unique(a), np.unique(b)):
            p = min(p, ks_pvalue(a, b))
        out.append((j, label, 2 * p))  # two statistics per entry
    return out


def _features_a(run, leaky: bool = False) -> np.ndarray:
    """Bits of everything A can compute from its view about the honest rows."""
    t = run.a.transcript
    E_B = _entry(t, "received", (N, DIM))
    if leaky:  # control: B sends its raw share instead of E_B = X_B - R_B
        E_B = run.share_b
    # A holds E_A = share_a - R_A, so E_A + E_B + R_A = share_a + E_B = X - R_B
    Y = ring_add(run.share_a, E_B)[HONEST]
    D_B = _entry(t, "received", (N, N))
    s_B = _entry(t, "received", (DIM,))
    return np.concatenate([word_bits(Y).ravel(), word_bits(D_B).ravel(), word_bits(s_B).ravel()])


def _features_b(run, leaky: bool = False) -> np.ndarray:
    t = run.b.transcript
    E_A = _entry(t, "received", (N, DIM))
    if leaky:  # control: A sends its raw share
        E_A = run.share_a
    Y = ring_add(run.share_b, E_A)[HONEST]  # X - R_A
    s_A = _entry(t, "received", (DIM,))
    return np.concatenate([word_bits(Y).ravel(), word_bits(s_A).ravel()])


def _classify(batch: RecordedBatch, features) -> float:  # noqa: ANN001
    F0 = np.stack([features(r) for r in batch.runs if r.which == 0])
    F1 = np.stack([features(r) for r in batch.runs if r.which == 1])
    return loo_nearest_mean_accuracy(F0, F1)


def _everything(run, party: str, leaky: bool = False) -> np.ndarray:
    """Position by position, every value of the party's view plus the bits of what it
    can compute about the honest rows."""
    view = getattr(run, party)
    words = np.concatenate([v.reshape(-1) for _, v in view.transcript])
    targeted = _features_a(run, leaky) if party == "a" else _features_b(run, leaky)
    return np.concatenate([words_as_unit(words), targeted.astype(np.float32)])


def _zscore(batch: RecordedBatch, party: str, leaky: bool = False) -> float:
    F0 = np.stack([_everything(r, party, leaky) for r in batch.runs if r.which == 0])
    F1 = np.stack([_everything(r, party, leaky) for r in batch.runs if r.which == 1])
    return positional_zscore(F0, F1, np.random.default_rng(7))


# ------------------------------------------------------------------------ tests
def test_public_outputs_are_identical_for_both_inputs(recorded):
    a0 = recorded.runs[0].a.outcome
    assert len(a0.selected) == N - 2 - 2  # Multi-Krum's default m = n - f - 2
    for run in recorded.runs:
        for out in (run.a.outcome, run.b.outcome):
            assert out.selected == a0.selected
            assert np.array_equal(out.encoded_sum, a0.encoded_sum)
            assert getattr(out, "rejected", []) == []  # every input passed validation
        np.testing.assert_array_equal(run.a.outcome.distances, a0.distances)
        assert run.b.outcome.distances is None  # B never sees the distances
    # and they are the right ones
    assert a0.selected == recorded.pair.selected
    np.testing.assert_array_equal(a0.encoded_sum, recorded.pair.X[a0.selected].sum(axis=0))


def test_transcripts_have_identical_structure(recorded):
    for party in ("a", "b"):
        shapes = {tuple(_structure(getattr(r, party).transcript)) for r in recorded.runs}
        assert len(shapes) == 1, f"server {party}'s transcript layout depends on the input"
    labels = {lab for lab, _ in recorded.runs[0].a.transcript}
    assert {"own_mask_share", "received", "dealer", "dealer.gram_share"} <= labels
    assert "dealer.gram_share" in {lab for lab, _ in recorded.runs[0].b.transcript}


def test_server_a_view_is_independent_of_the_rotation(recorded):
    pvals = _pooled_pvalues(recorded, "a")
    worst = min(pvals, key=lambda x: x[2])
    assert worst[2] * len(pvals) > ALPHA, f"entry {worst} of A's view depends on the input"
    acc = _classify(recorded, _features_a)
    assert acc < chance_bound(len(recorded.runs)), f"A's view classified with accuracy {acc}"
    z = _zscore(recorded, "a")
    assert z < Z_MAX, f"some position of A's view depends on the input (z = {z:.1f})"


def test_server_b_view_is_independent_of_the_rotation(recorded):
    pvals = _pooled_pvalues(recorded, "b")
    worst = min(pvals, key=lambda x: x[2])
    assert worst[2] * len(pvals) > ALPHA, f"entry {worst} of B's view depends on the input"
    acc = _classify(recorded, _features_b)
    assert acc < chance_bound(len(recorded.runs)), f"B's view classified with accuracy {acc}"
    z = _zscore(recorded, "b")
    assert z < Z_MAX, f"some position of B's view depends on the input (z = {z:.1f})"


def test_the_statistics_catch_an_unmasked_share(recorded):
    """Control: the same classifier and bit test on a view where one server's share is
    opened without its mask tell X from X' every time."""
    assert _classify(recorded, lambda r: _features_a(r, leaky=True)) >= 0.95
    assert _classify(recorded, lambda r: _features_b(r, leaky=True)) >= 0.95
    assert _zscore(recorded, "a", leaky=True) > Z_MAX
    assert _zscore(recorded, "b", leaky=True) > Z_MAX


def test_dealer_requests_depend_only_on_the_sizes(recorded, cluster):
    """The dealer receives nothing but request headers from A: identical for X, X',
    all-zero inputs and inputs at the norm bound, i.e. functions of (n, d) and the
    public rule parameters only."""
    ref = [h.tolist() for h in recorded.runs[0].a.dealer_headers]
    assert ref, "server A made no dealer request"
    for run in recorded.runs:
        assert [h.tolist() for h in run.a.dealer_headers] == ref
        assert run.b.dealer_headers == []  # B never talks to the dealer
    rng = np.random.default_rng(1)
    at_bound = rng.normal(size=(N, DIM))
    at_bound *= PARAMS.norm_bound / np.linalg.norm(at_bound, axis=1, keepdims=True)
    # as close to the bound as the exact encoded check admits (SHARE_ENCODING §2.2)
    at_bound = np.stack([encoding.clip_to_bounds(row, PARAMS) for row in at_bound])
    for X in (np.zeros((N, DIM)), at_bound):
        Xenc = np.stack([encoding.encode(row, PARAMS) for row in X])
        run = recorded_run(cluster, Xenc, recorded.plan, which=-1)
        assert [h.tolist() for h in run.a.dealer_headers] == ref
    # the Gram request carries exactly (n, d) and nothing else
    assert any(h[1:3] == [N, DIM] and not any(h[3:]) for h in ref)
    # and a header is a short fixed-size record, not a data-sized message
    assert len({len(h) for h in ref}) == 1 and len(ref[0]) <= 64
