"""The round state machine: transitions, submissions, participants, config bounds, logs."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable

import numpy as np
import pytest

from secagg.rounds import (
    ALLOWED_TRANSITIONS,
    ConflictingSubmission,
    DuplicateRound,
    IllegalTransition,
    InvalidSubmission,
    LateSubmission,
    ReplayedSubmission,
    Round,
    RoundBook,
    RoundConfig,
    RoundFailed,
    RoundState,
    Rule,
    UnknownRound,
    UnknownWorker,
    payload_digest,
)

S = RoundState
T0 = 1_700_000_000.0  # fixed "now" (seconds)
WORKERS = [f"w{i}" for i in range(10)]


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def cfg(**over: object) -> RoundConfig:
    base: dict[str, object] = {
        "round_id": "r1",
        "n_expected": 7,
        "f": 1,
        "rule": "krum",
        "dim": 4,
        "scale": 1.0,
        "coord_bound": 10.0,
        "norm_bound": 20.0,
        "deadline_unix_ms": int(T0 * 1000) + 60_000,
    }
    base.update(over)
    return RoundConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def book(clock: Clock) -> RoundBook:
    return RoundBook(workers=WORKERS, server="server-a", clock=clock)


_counter = itertools.count()


def seed() -> bytes:
    # distinct, deterministic 32-byte payloads
    return next(_counter).to_bytes(32, "little")


def fill(rnd: Round, k: int) -> list[str]:
    """Submit for w0..w{k-1}, skipping workers that already submitted."""
    ids = WORKERS[:k]
    held = rnd.holdings()
    for w in ids:
        if w not in held:
            rnd.submit(w, f"sub-{w}", seed())
    return ids


def drive(book: RoundBook, target: RoundState, rule: str = "krum", **over: object) -> Round:
    """A fresh round in state ``target`` via the legal path."""
    rnd = book.open(cfg(round_id=f"r-{next(_counter)}", rule=rule, **over))
    if target is S.OPEN:
        return rnd
    ids = fill(rnd, 7)
    if target is S.COLLECTING:
        return rnd
    if target is S.FAILED:
        rnd.fail("test")
        return rnd
    rnd.fix_participants(ids)
    if target is S.PARTICIPANTS_FIXED:
        return rnd
    rnd.start_validation()
    if target is S.VALIDATION:
        return rnd
    rnd.start_distances()
    if target is S.DISTANCES:
        return rnd
    rnd.start_selection()
    if target is S.SELECTION:
        return rnd
    rnd.start_reveal(["w3"])
    if target is S.REVEAL:
        return rnd
    rnd.finish()
    return rnd


# ----------------------------------------------------------------------- transitions


def test_full_krum_life_cycle(book: RoundBook, clock: Clock) -> None:
    rnd = book.open(cfg())
    assert rnd.state is S.OPEN and not rnd.ready_to_fix()
    ids = fill(rnd, 6)
    assert rnd.state is S.COLLECTING and rnd.received == 6
    assert not rnd.ready_to_fix()  # quorum defaults to n_expected = 7
    fill(rnd, 7)
    assert rnd.received == 7 and rnd.ready_to_fix()
    clock.t += 1.5
    assert rnd.fix_participants(["w6", "w2", "zz", *ids]) == sorted(WORKERS[:7])
    assert rnd.state is S.PARTICIPANTS_FIXED
    rnd.start_validation()  # the default config validates inputs: no skipping it
    rnd.start_distances()
    clock.t += 2.0
    rnd.start_selection()
    rnd.start_reveal(["w4"])
    assert rnd.selected == ("w4",)
    rnd.record_phase("distances", bytes_sent=123, comm_rounds=2)
    rnd.finish()
    assert rnd.state is S.DONE
    phases = rnd.phases
    assert phases["collecting"].seconds == pytest.approx(1.5)
    assert phases["distances"].seconds == pytest.approx(2.0)
    assert phases["distances"].bytes_sent == 123
    status = rnd.to_proto()
    assert status.state == S.DONE.to_proto()
    assert list(status.selected) == ["w4"] and status.received == 7
    assert RoundConfig.from_proto(status.config) == rnd.config


def test_mean_goes_straight_to_reveal(book: RoundBook) -> None:
    rnd = drive(book, S.PARTICIPANTS_FIXED, rule="mean", skip_validation=True)
    rnd.start_reveal(list(rnd.participants))
    rnd.finish()
    assert rnd.state is S.DONE


@pytest.mark.parametrize("rule", ["mean", "krum"])
def test_a_validated_round_cannot_skip_validation(book: RoundBook, rule: str) -> None:
    """The configuration says whether inputs are checked; a server told to go straight
    to distances or reveal (issue #15) refuses."""
    rnd = drive(book, S.PARTICIPANTS_FIXED, rule=rule)
    with pytest.raises(IllegalTransition, match="validation is on"):
        rnd.start_distances()
    with pytest.raises(IllegalTransition, match="validation is on|must compute distances"):
        rnd.start_reveal(list(rnd.participants)[:1])
    assert rnd.state is S.PARTICIPANTS_FIXED and rnd.selected == ()
    rnd.start_validation()
    assert rnd.state is S.VALIDATION


def test_an_unvalidated_round_cannot_enter_validation(book: RoundBook) -> None:
    rnd = drive(book, S.PARTICIPANTS_FIXED, rule="krum", skip_validation=True)
    with pytest.raises(IllegalTransition, match="validation is off"):
        rnd.start_validation()
    rnd.start_distances()
    assert rnd.state is S.DISTANCES


_ALL = list(RoundState)
_ILLEGAL = [(a, b) for a in _ALL for b in _ALL if b not in ALLOWED_TRANSITIONS[a]]


@pytest.mark.parametrize(("frm", "to"), _ILLEGAL, ids=[f"{a}->{b}" for a, b in _ILLEGAL])
def test_illegal_transitions_raise(book: RoundBook, frm: RoundState, to: RoundState) -> None:
    rnd = drive(book, frm)
    with pytest.raises(IllegalTransition, match=f"{frm.value} -> {to.value}"):
        rnd.transition(to)
    assert rnd.state is frm


def test_krum_cannot_skip_distances(book: RoundBook) -> None:
    rnd = drive(book, S.PARTICIPANTS_FIXED, rule="krum")
    with pytest.raises(IllegalTransition, match="must compute distances"):
        rnd.start_reveal(["w1"])
    assert rnd.state is S.PARTICIPANTS_FIXED and rnd.selected == ()


@pytest.mark.parametrize("state", [s for s in RoundState if not s.terminal])
def test_fail_from_every_live_state(book: RoundBook, state: RoundState) -> None:
    rnd = drive(book, state)
    rnd.fail("peer unreachable")
    assert rnd.state is S.FAILED and rnd.failure_reason == "peer unreachable"
    rnd.fail("again")  # idempotent: the first reason stays
    assert rnd.failure_reason == "peer unreachable"
    with pytest.raises(RoundFailed, match="peer unreachable"):
        rnd.submit("w9", "late", seed())


def test_done_cannot_fail(book: RoundBook) -> None:
    rnd = drive(book, S.DONE)
    with pytest.raises(IllegalTransition):
        rnd.fail("too late")


def test_selection_must_be_distinct_participants(book: RoundBook) -> None:
    rnd = drive(book, S.SELECTION)
    for bad in ([], ["w9"], ["w1", "w1"]):
        with pytest.raises(IllegalTransition, match="distinct participants"):
            rnd.start_reveal(bad)
    assert rnd.state is S.SELECTION


# ----------------------------------------------------------------------- submissions


def test_identical_resubmission_returns_the_same_receipt(book: RoundBook) -> None:
    rnd = book.open(cfg())
    s = seed()
    r1 = rnd.submit("w1", "sub-1", s)
    r2 = rnd.submit("w1", "sub-1", bytes(s))
    assert r2 is r1
    assert r1.digest == payload_digest(s) and r1.server == "server-a" and r1.dim == 4
    assert rnd.received == 1
    # still answered after participants are fixed: the first copy did land
    fill(rnd, 7)
    rnd.fix_participants(WORKERS[:7])
    assert rnd.submit("w1", "sub-1", s) is r1


def test_share_payloads_and_digests(book: RoundBook) -> None:
    rnd = book.open(cfg())
    share = np.array([1, -2, 2**62, -(2**63)], dtype=np.int64)
    receipt = rnd.submit("w1", "s", share)
    assert receipt.digest == payload_digest(share.astype("<i8").tobytes())
    assert rnd.submit("w1", "s", share.copy()) is receipt
    for bad in (share[:3], share.astype(np.float64), b"short"):
        with pytest.raises(InvalidSubmission):
            rnd.submit("w2", "s", bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidSubmission, match="not a valid id"):
        rnd.submit("w2", "", seed())


def test_rebinding_a_payload_keeps_its_receipt_and_checks_the_shape(book: RoundBook) -> None:
    rnd = book.open(cfg())
    share = np.array([5, 6, 7, 8], dtype=np.int64)
    receipt = rnd.submit("w1", "s", share)
    matrix = np.stack([share, share + 1])
    rnd.rebind_payloads({"w1": matrix[0]})
    sub = rnd.submission("w1")
    assert sub.payload is matrix[0] or np.shares_memory(sub.payload, matrix)
    assert sub.receipt == receipt and rnd.submit("w1", "s", share.copy()) is receipt
    for bad in (matrix[0, :3], matrix[0].astype(np.float64)):
        with pytest.raises(ValueError, match="not a like share"):
            rnd.rebind_payloads({"w1": bad})


def test_first_write_wins(book: RoundBook) -> None:
    rnd = book.open(cfg())
    first = rnd.submit("w1", "sub-1", seed())
    with pytest.raises(ConflictingSubmission, match="first submission stands") as e:
        rnd.submit("w1", "sub-2", seed())
    assert e.value.code == "ALREADY_EXISTS"
    assert rnd.submission("w1").receipt is first


def test_late_submissions_refused(book: RoundBook, clock: Clock) -> None:
    rnd = book.open(cfg())
    fill(rnd, 7)
    rnd.fix_participants(WORKERS[:7])
    with pytest.raises(LateSubmission, match="participants are fixed"):
        rnd.submit("w8", "s", seed())
    other = book.open(cfg(round_id="r2"))
    clock.t += 61
    with pytest.raises(LateSubmission, match="closed at deadline"):
        other.submit("w1", "s", seed())
    assert other.ready_to_fix()  # the deadline passed: A fixes with what it has


def test_unknown_worker_refused(book: RoundBook) -> None:
    rnd = book.open(cfg())
    with pytest.raises(UnknownWorker, match="not registered") as e:
        rnd.submit("mallory", "s", seed())
    assert e.value.code == "PERMISSION_DENIED"
    assert rnd.state is S.OPEN


def test_cross_round_and_cross_worker_replay_refused(book: RoundBook) -> None:
    r1, r2 = book.open(cfg()), book.open(cfg(round_id="r2"))
    s = seed()
    share = np.arange(4, dtype=np.int64)
    r1.submit("w1", "a", s)
    r1.submit("w2", "b", share)
    with pytest.raises(ReplayedSubmission, match="earlier round"):
        r2.submit("w1", "a", s)
    with pytest.raises(ReplayedSubmission, match="earlier round"):
        r2.submit("w2", "b", share.copy())
    with pytest.raises(ReplayedSubmission, match="another worker"):
        r1.submit("w3", "c", s)
    assert r2.received == 0 and r2.state is S.OPEN


# ----------------------------------------------------------------------- participants


def test_fix_participants_intersection_and_mismatch(book: RoundBook) -> None:
    rnd = book.open(cfg(n_expected=8))
    fill(rnd, 8)
    other = {w: f"sub-{w}" for w in WORKERS[:8]}
    other["w0"] = "another-split"  # A and B hold different submissions of w0
    other["w9"] = "sub-w9"  # only the other server has w9
    assert rnd.fix_participants(other) == WORKERS[1:8]
    assert rnd.mismatched == ("w0",)
    with pytest.raises(IllegalTransition, match="only be fixed while collecting"):
        rnd.fix_participants(WORKERS)


def test_the_mismatch_the_other_server_reported_is_the_exclusion_reason(book: RoundBook) -> None:
    # server A's side: B answers with its participants and the workers it found
    # mismatched; A's exclusion reason names that cause, as B's does
    rnd = book.open(cfg(n_expected=8))
    fill(rnd, 8)
    assert rnd.fix_participants(WORKERS[1:7], mismatched=["w0", "w9"]) == WORKERS[1:7]
    assert rnd.mismatched == ("w0",)  # w9 is not held here
    why = rnd.excluded
    assert why["w0"] == "mismatched: the servers hold different submission ids for it"
    assert why["w7"].startswith("dropped out")


def test_too_few_participants_fail_the_round(book: RoundBook) -> None:
    rnd = book.open(cfg())
    fill(rnd, 7)
    with pytest.raises(RoundFailed, match="needs at least 5"):
        rnd.fix_participants(WORKERS[:4])
    assert rnd.state is S.FAILED and "needs at least 5" in rnd.failure_reason
    empty = book.open(cfg(round_id="r-empty"))
    with pytest.raises(RoundFailed):
        empty.fix_participants(WORKERS)
    assert empty.state is S.FAILED


def test_multi_krum_m_is_capped_for_the_participants_present(book: RoundBook) -> None:
    # m = n_expected - f - 2 = 4 is admitted at open; one worker drops out: the round
    # goes on with the seeds' bound m <= n - f - 2 = 3 for the six present
    rnd = book.open(cfg(rule="multi-krum", m=4))
    fill(rnd, 7)
    assert rnd.fix_participants(WORKERS[:6]) == WORKERS[:6]
    assert rnd.state is S.PARTICIPANTS_FIXED
    assert rnd.config.effective_m(7) == 4 and rnd.config.effective_m(6) == 3
    # validation excluding another one caps it again instead of failing the round
    assert rnd.exclude([WORKERS[0]], "not well formed") == WORKERS[1:6]
    assert rnd.state is S.PARTICIPANTS_FIXED and rnd.config.effective_m(5) == 2
    assert cfg(rule="multi-krum").effective_m(6) == 3  # m = 0: the default n - f - 2


def test_quorum_lets_the_round_start_early(book: RoundBook) -> None:
    rnd = book.open(cfg(quorum=5))
    fill(rnd, 4)
    assert not rnd.ready_to_fix()
    fill(rnd, 5)
    assert rnd.ready_to_fix()


# ---------------------------------------------------------------------------- config

_BAD_CONFIGS: list[tuple[dict[str, object], str]] = [
    ({"n_expected": 4, "f": 1}, r"krum needs n >= 2f\+3 = 5, got n_expected=4, f=1"),
    ({"rule": "multi-krum", "n_expected": 6, "f": 2}, r"n >= 2f\+3 = 7"),
    ({"rule": "bulyan", "n_expected": 6, "f": 1}, r"bulyan needs n >= 4f\+3 = 7"),
    ({"rule": "mean", "n_expected": 1, "f": 0}, r"mean needs n >= 2"),
    ({"rule": "multi-krum", "m": 8}, r"1 <= m <= n - f - 2 = 4 \(n_expected=7, f=1\), got m=8"),
    ({"rule": "multi-krum", "m": 5}, r"multi-krum needs 1 <= m <= n - f - 2 = 4"),
    ({"rule": "krum", "m": 2}, r"krum takes no m"),
    ({"quorum": 4}, r"quorum must be within \[5, n_expected=7\]"),
    ({"quorum": 8}, r"quorum must be within"),
    ({"f": -1}, r"f must be >= 0"),
    ({"n_expected": True}, r"n_expected must be an integer"),
    ({"dim": 0}, r"dim must be within \[1, "),
    ({"dim": 2**30}, r"dim must be within"),
    ({"scale": float("nan")}, r"scale must be positive and finite"),
    ({"coord_bound": -1.0}, r"coord_bound must be positive and finite"),
    ({"norm_bound": float("inf")}, r"norm_bound must be positive and finite"),
    ({"norm_bound": 30000.0}, r"MAX_NORM_BOUND"),
    ({"norm_bound": 23170.47, "dim": 10**6}, r"headroom"),
    ({"deadline_unix_ms": int(T0 * 1000)}, r"not in the future"),
    ({"round_id": "bad id!"}, r"round_id 'bad id!' is not a valid id"),
]


@pytest.mark.parametrize(("over", "message"), _BAD_CONFIGS)
def test_config_validation_names_the_bound(over: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cfg(**over).validate(now_ms=int(T0 * 1000))


def test_valid_configs_and_derived_values() -> None:
    now = int(T0 * 1000)
    cfg().validate(now_ms=now)
    cfg(rule="bulyan", n_expected=7).validate(now_ms=now)
    mk = cfg(rule="MULTI_KRUM", quorum=5)
    mk.validate(now_ms=now)
    assert mk.rule is Rule.MULTI_KRUM and mk.effective_m(9) == 6 and mk.effective_quorum == 5
    assert cfg().effective_quorum == 7 and cfg().effective_m(9) is None
    assert RoundConfig.from_proto(mk.to_proto()) == mk
    with pytest.raises(ValueError, match="unknown rule"):
        cfg(rule="median")


def test_round_book(book: RoundBook, clock: Clock) -> None:
    r1 = book.open(cfg())
    assert book.open(cfg()) is r1  # a retried OpenRound is harmless
    with pytest.raises(DuplicateRound):
        book.open(cfg(f=0))
    with pytest.raises(UnknownRound):
        book.get("nope")
    with pytest.raises(ValueError, match="registered workers"):
        book.open(cfg(round_id="big", n_expected=11))
    clock.t += 1
    r2 = book.open(cfg(round_id="r2"))
    r2.submit("w1", "s", seed())
    assert book.list() == [r2, r1]
    assert book.list(states=[S.OPEN]) == [r1]
    assert book.list(limit=1) == [r2]
    assert "r1" in book and len(book) == 2


# ------------------------------------------------------------------------------ logs


def test_log_lines_are_json_without_payloads(
    book: RoundBook, caplog: pytest.LogCaptureFixture
) -> None:
    secret_seed = b"\x07" * 32
    share = np.array([11111111111, 22222222222, 3, 4], dtype=np.int64)
    with caplog.at_level(logging.INFO, logger="secagg.rounds"):
        rnd = book.open(cfg())
        rnd.submit("w1", "s1", secret_seed)
        rnd.submit("w2", "s2", share)
        with pytest.raises(ConflictingSubmission):
            rnd.submit("w1", "s1b", seed())
        fill(rnd, 7)
        rnd.fix_participants(WORKERS[:7])
        rnd.fail("operator cancelled")

    records = [r for r in caplog.records if r.name == "secagg.rounds"]
    lines = [json.loads(r.getMessage()) for r in records]
    transitions = [ln for ln in lines if ln["event"] == "round_state"]
    assert [(t["from"], t["to"]) for t in transitions] == [
        ("open", "collecting"),
        ("collecting", "participants_fixed"),
        ("participants_fixed", "failed"),
    ]
    for t in transitions:
        assert t["round_id"] == "r1" and {"reason", "received", "participants"} <= set(t)
    assert transitions[-1]["reason"] == "operator cancelled"
    assert any(ln["event"] == "submission" and ln["outcome"] == "refused" for ln in lines)

    text = "\n".join(r.getMessage() for r in records)
    forbidden: list[str] = [
        secret_seed.hex(),
        repr(secret_seed),
        payload_digest(secret_seed).hex(),
        payload_digest(share).hex(),
        "11111111111",
        "22222222222",
    ]
    for needle in forbidden:
        assert needle not in text


def test_round_error_codes_are_grpc_names() -> None:
    import grpc

    errors: list[Callable[[str], Exception]] = [
        UnknownRound,
        DuplicateRound,
        UnknownWorker,
        InvalidSubmission,
        ConflictingSubmission,
        ReplayedSubmission,
        LateSubmission,
        RoundFailed,
        IllegalTransition,
    ]
    for cls in errors:
        assert grpc.StatusCode[cls("x").code]  # type: ignore[attr-defined]


def test_validation_exclusions_are_recorded_and_can_fail_the_round(book: RoundBook) -> None:
    rnd = drive(book, S.VALIDATION)
    left = rnd.exclude(["w0"], "failed input validation")
    assert "w0" not in left and rnd.excluded == {"w0": "failed input validation"}
    assert [e.worker_id for e in rnd.to_proto().excluded] == ["w0"]
    with pytest.raises(RoundFailed, match="needs at least"):
        rnd.exclude(left[:3], "failed input validation")
    assert rnd.state is S.FAILED
