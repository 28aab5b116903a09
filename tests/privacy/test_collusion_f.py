"""A server together with f Byzantine workers learns nothing beyond distances and sum.

f = 2 colluding workers (rows 0 and 1, see ``privacy_rounds``) know their own vectors,
seeds and shares. With server A's recorded view of a real round they learn B's mask
rows for themselves: ``R_B[k] = x_k - share_a[k] - E_B[k]``, 2·160 consecutive outputs
of B's mask stream (B's own recorded Gram mask confirms it). The coalition then tries
to predict B's masks on the honest rows, which would unmask them:

* Mersenne-Twister state recovery (CrypTen's stock dealer): 312 outputs give the state;
* a linear attack: an autoregressive least-squares predictor fitted on the known words,
  and the mask-reuse guesses (an honest row's mask equal to a colluder's, or to their
  sum or difference);

and every guess is checked the way the coalition itself would check it, against the
revealed distances to the colluders' known vectors. Against synthetic weak mask
streams (MT, reused masks) the same code recovers the honest vectors exactly; against
secagg's AES-CTR streams it recovers nothing, and the coalition's whole view stays
indistinguishable between X and X' (same distances, selection, sum, colluder rows).
The mirror image is tested for server B plus the same colluders.
"""

from __future__ import annotations

import numpy as np
import torch
from privacy_rounds import COLLUDERS, DIM, N, RecordedBatch
from privacy_tools import (
    chance_bound,
    linear_predict,
    linear_predictor,
    loo_nearest_mean_accuracy,
    mt_predict,
    positional_zscore,
    ring_add,
    ring_sub,
    word_bits,
    words_as_unit,
)

HONEST = [i for i in range(N) if i not in COLLUDERS]
Z_MAX = 6.0


def _entry(transcript: list, label: str, shape: tuple[int, ...]) -> np.ndarray:
    for lab, value in transcript:
        if lab == label and value.shape == shape:
            return value
    raise AssertionError(f"no {label} entry of shape {shape}")


def _input(batch: RecordedBatch, run) -> np.ndarray:  # noqa: ANN001
    return batch.pair.X if run.which == 0 else batch.pair.X2


def coalition_masks(run, party: str) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """What server ``party`` plus the colluders compute: (Y, known peer mask rows).

    Y = own share + the peer's opened E share = X - R_peer for every row; the colluders'
    rows of R_peer follow from their own x_k (which equals the pair's colluder rows).
    """
    if party == "a":
        own, E_peer = run.share_a, _entry(run.a.transcript, "received", (N, DIM))
    else:
        own, E_peer = run.share_b, _entry(run.b.transcript, "received", (N, DIM))
    Y = ring_add(own, E_peer)  # X - R_peer
    x_coll = ring_add(run.share_a, run.share_b)[list(COLLUDERS)]  # the colluders' own x_k
    known = ring_sub(x_coll, Y[list(COLLUDERS)])  # R_peer rows of the colluders
    return Y, known


def candidate_guesses(Y: np.ndarray, known: np.ndarray) -> dict[str, np.ndarray]:
    """The coalition's guesses of the honest rows under each mask-stream hypothesis."""
    flat = known.reshape(-1)  # colluder rows are first and consecutive in the stream
    rest = len(HONEST) * DIM
    guesses: dict[str, np.ndarray] = {}
    mt = mt_predict(flat, len(flat) - 312 + rest)[len(flat) - 312 :]
    guesses["mersenne-twister"] = ring_add(Y[HONEST], mt.reshape(len(HONEST), DIM))
    for k in range(len(COLLUDERS)):
        guesses[f"reuse-row-{k}"] = ring_add(Y[HONEST], np.broadcast_to(known[k], Y[HONEST].shape))
    both = ring_add(known[0], known[1])
    guesses["reuse-sum"] = ring_add(Y[HONEST], np.broadcast_to(both, Y[HONEST].shape))
    diff = ring_sub(known[1], known[0])
    guesses["reuse-difference"] = ring_add(Y[HONEST], np.broadcast_to(diff, Y[HONEST].shape))
    coef = linear_predictor(flat)
    pred = linear_predict(coef, flat, rest)  # reals in [-1, 1)
    as_words = np.clip(np.rint(pred * 2.0**63), -(2.0**63), 2.0**63 - 1024).astype(np.int64)
    guesses["linear-ar8"] = ring_add(Y[HONEST], as_words.reshape(len(HONEST), DIM))
    return guesses


def consistent_with_distances(guess: np.ndarray, x_coll: np.ndarray, D: np.ndarray) -> int:
    """How many guessed honest rows have exactly the revealed distances to the colluders
    (the coalition's own test of a guess; D is exact on the encoded integers)."""
    hits = 0
    for j, g in zip(HONEST, guess, strict=True):
        if all(
            int(np.sum((g.astype(object) - x_coll[k].astype(object)) ** 2)) == int(D[j, c])
            for k, c in enumerate(COLLUDERS)
        ):
            hits += 1
    return hits


# ------------------------------------------------------------------------ tests
def test_colluders_learn_exactly_their_own_rows_of_the_peer_masks(recorded):
    for run in recorded.runs[:4]:
        _, known_b = coalition_masks(run, "a")
        R_B = _entry(run.b.transcript, "own_mask_share", (N, DIM))
        np.testing.assert_array_equal(known_b, R_B[list(COLLUDERS)])
        _, known_a = coalition_masks(run, "b")
        R_A = _entry(run.a.transcript, "own_mask_share", (N, DIM))
        np.testing.assert_array_equal(known_a, R_A[list(COLLUDERS)])


def test_mask_stream_attacks_recover_nothing(recorded):
    """Every guess is wrong on every honest coordinate and fails the distance check."""
    D = recorded.runs[0].a.outcome.distances
    for run in recorded.runs:
        X = _input(recorded, run)
        for party in ("a", "b"):
            Y, known = coalition_masks(run, party)
            peer = "b" if party == "a" else "a"
            true_masks = _entry(getattr(run, peer).transcript, "own_mask_share", (N, DIM))
            flat = known.reshape(-1)
            # the MT model cannot even continue the known words
            cont = mt_predict(flat, len(flat) - 312)
            assert np.count_nonzero(cont == flat[312:]) == 0
            for name, guess in candidate_guesses(Y, known).items():
                hit = np.count_nonzero(guess == X[HONEST])
                assert hit == 0, f"{name} recovered {hit} honest coordinates"
                assert consistent_with_distances(guess, X[list(COLLUDERS)], D) == 0, name
            # correlation of the linear prediction with the true masks: none
            pred = linear_predict(linear_predictor(flat), flat, len(HONEST) * DIM)
            truth = true_masks[HONEST].reshape(-1).astype(np.float64) / 2.0**63
            corr = np.corrcoef(pred, truth)[0, 1] if np.std(pred) > 0 else 0.0
            assert abs(corr) < 6 / np.sqrt(truth.size), f"{party}: corr {corr}"


def test_the_same_attacks_unmask_everyone_with_weak_mask_streams(recorded):
    """Controls: the attack code is real. With an MT dealer, or a dealer that reuses a
    mask row, the coalition recovers every honest vector and the distance check
    confirms it."""
    run = recorded.runs[0]
    X = _input(recorded, run)
    D = run.a.outcome.distances
    g = torch.Generator()
    g.manual_seed(int(np.random.default_rng().integers(2**62)))
    for weak in ("mersenne-twister", "reuse-row-0"):
        if weak == "mersenne-twister":
            R = torch.randint(-(2**63), 2**63 - 1, (N, DIM), generator=g).numpy()
        else:
            R = np.broadcast_to(np.random.default_rng().integers(-(2**62), 2**62, DIM), (N, DIM))
        Y = ring_sub(X, R)  # what the server would compute with such masks
        known = ring_sub(X[list(COLLUDERS)], Y[list(COLLUDERS)])
        guess = candidate_guesses(Y, known)[weak]
        np.testing.assert_array_equal(guess, X[HONEST])
        assert consistent_with_distances(guess, X[list(COLLUDERS)], D) == len(HONEST)


def _coalition_features(run, party: str) -> np.ndarray:  # noqa: ANN001
    """Everything the coalition holds, position by position: the server's whole
    transcript, Y, the known mask rows and every candidate guess of the honest rows."""
    view = getattr(run, party)
    Y, known = coalition_masks(run, party)
    words = np.concatenate([v.reshape(-1) for _, v in view.transcript])
    guesses = np.concatenate([g.reshape(-1) for g in candidate_guesses(Y, known).values()])
    bits = word_bits(Y[HONEST]).ravel().astype(np.float32)
    units = [words_as_unit(w) for w in (words, known, guesses)]
    return np.concatenate([*units, bits])


def _split(batch: RecordedBatch, party: str) -> tuple[np.ndarray, np.ndarray]:
    F0 = np.stack([_coalition_features(r, party) for r in batch.runs if r.which == 0])
    F1 = np.stack([_coalition_features(r, party) for r in batch.runs if r.which == 1])
    return F0, F1


def test_server_a_with_f_colluders_cannot_tell_rotated_inputs_apart(recorded):
    F0, F1 = _split(recorded, "a")
    assert loo_nearest_mean_accuracy(F0, F1) < chance_bound(len(recorded.runs))
    assert positional_zscore(F0, F1, np.random.default_rng(3)) < Z_MAX


def test_server_b_with_f_colluders_cannot_tell_rotated_inputs_apart(recorded):
    F0, F1 = _split(recorded, "b")
    assert loo_nearest_mean_accuracy(F0, F1) < chance_bound(len(recorded.runs))
    assert positional_zscore(F0, F1, np.random.default_rng(4)) < Z_MAX
