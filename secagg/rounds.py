"""The round state machine: configuration, submissions, participants, selection.

Pure bookkeeping: no network, no CrypTen, no protobuf at import time. Both servers keep
one :class:`RoundBook`; server A drives the transitions and mirrors them to server B
over the ``Peer`` service. Every method is thread-safe (gRPC servicers call in from a
thread pool).

Life cycle (``proto/secagg/v1/secagg.proto``, enum ``RoundState``)::

    OPEN -> COLLECTING -> PARTICIPANTS_FIXED -> DISTANCES -> SELECTION -> REVEAL -> DONE
                          PARTICIPANTS_FIXED -> REVEAL          (rule "mean" only)
    every non-terminal state -> FAILED

Submission rules (the same on both servers; A stores 32-byte seeds, B share vectors):

* only registered workers may submit (:class:`UnknownWorker`);
* the first accepted payload of a worker wins: an identical retry (same SHA-256 digest)
  gets the *same* receipt back, a different payload is refused
  (:class:`ConflictingSubmission`);
* nothing new is accepted once participants are fixed or the deadline has passed
  (:class:`LateSubmission`), nor after the round failed (:class:`RoundFailed`);
* a payload digest accepted before, in any round of this book or by another worker, is
  refused (:class:`ReplayedSubmission`). On server A this also catches a reused seed —
  though it cannot undo it: B then holds ``x1 - x2`` for the two vectors masked with
  it, which is why the SDK draws a fresh seed for every submission.

Logging: every state change and every submission outcome is one JSON line on the
``secagg.rounds`` logger, with ids, counts and reasons only — never seeds, share bytes,
digests or tokens.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from secagg.contract import (
    _TWO_PC_STATES as _TWO_PC_STATES,
)
from secagg.contract import (
    ALLOWED_TRANSITIONS as ALLOWED_TRANSITIONS,
)
from secagg.contract import (  # the contract lives there; re-exported here (#14)
    DEFAULT_MAX_DIM as DEFAULT_MAX_DIM,
)
from secagg.contract import (
    ID_PATTERN as ID_PATTERN,
)
from secagg.contract import (
    MIN_MEAN_PARTICIPANTS as MIN_MEAN_PARTICIPANTS,
)
from secagg.contract import (
    SEED_BYTES as SEED_BYTES,
)
from secagg.contract import (
    ConflictingSubmission as ConflictingSubmission,
)
from secagg.contract import (
    DuplicateRound as DuplicateRound,
)
from secagg.contract import (
    IllegalTransition as IllegalTransition,
)
from secagg.contract import (
    InvalidSubmission as InvalidSubmission,
)
from secagg.contract import (
    LateSubmission as LateSubmission,
)
from secagg.contract import (
    NotInvited as NotInvited,
)
from secagg.contract import (
    PhaseStats as PhaseStats,
)
from secagg.contract import (
    Receipt as Receipt,
)
from secagg.contract import (
    ReplayedSubmission as ReplayedSubmission,
)
from secagg.contract import (
    RoundConfig as RoundConfig,
)
from secagg.contract import (
    RoundError as RoundError,
)
from secagg.contract import (
    RoundFailed as RoundFailed,
)
from secagg.contract import (
    RoundSnapshot as RoundSnapshot,
)
from secagg.contract import (
    RoundState as RoundState,
)
from secagg.contract import (
    Rule as Rule,
)
from secagg.contract import (
    StorageError as StorageError,
)
from secagg.contract import (
    Submission as Submission,
)
from secagg.contract import (
    UnknownRound as UnknownRound,
)
from secagg.contract import (
    UnknownWorker as UnknownWorker,
)
from secagg.contract import (
    _now_ms as _now_ms,
)
from secagg.contract import (
    check_id as check_id,
)
from secagg.contract import (
    min_participants as min_participants,
)
from secagg.contract import (
    payload_digest as payload_digest,
)

if TYPE_CHECKING:
    from secagg.store import RoundStore
    from secagg.v1 import secagg_pb2

__all__ = [
    "DEFAULT_MAX_DIM",
    "ID_PATTERN",
    "MIN_MEAN_PARTICIPANTS",
    "SEED_BYTES",
    "ConflictingSubmission",
    "DigestRegistry",
    "DuplicateRound",
    "IllegalTransition",
    "InvalidSubmission",
    "LateSubmission",
    "PhaseStats",
    "ReplayedSubmission",
    "Receipt",
    "Round",
    "RoundBook",
    "RoundConfig",
    "RoundError",
    "RoundFailed",
    "RoundSnapshot",
    "RoundState",
    "StorageError",
    "Rule",
    "Submission",
    "UnknownRound",
    "UnknownWorker",
    "check_id",
    "min_participants",
    "payload_digest",
]

log = logging.getLogger("secagg.rounds")


class DigestRegistry:
    """Payload digests accepted so far, across rounds: the replay guard.

    Shared by every :class:`Round` of a :class:`RoundBook`. With a store
    (:mod:`secagg.store`) the digests are on disk with their submissions and a
    restarted server rebuilds the registry from them (:meth:`RoundBook.restore`).
    """

    def __init__(self) -> None:
        self._owners: dict[bytes, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def claim(self, digest: bytes, round_id: str, worker_id: str) -> tuple[str, str] | None:
        """Record ``digest`` for (round, worker); return the earlier owner if any."""
        with self._lock:
            owner = self._owners.get(digest)
            if owner is None:
                self._owners[digest] = (round_id, worker_id)
            return owner

    def release(self, digest: bytes, round_id: str, worker_id: str) -> None:
        """Undo a :meth:`claim` whose submission could not be stored."""
        with self._lock:
            if self._owners.get(digest) == (round_id, worker_id):
                del self._owners[digest]

    def __len__(self) -> int:
        return len(self._owners)


#: Called as ``hook(event, fields)`` for every event this module logs (ids, counts and
#: reasons only); :mod:`secagg.metrics` subscribes. A hook must be cheap: some events
#: are emitted under a round's lock.
EVENT_HOOKS: list[Callable[[str, dict[str, Any]], None]] = []


def _log_event(event: str, **fields: Any) -> None:
    for hook in EVENT_HOOKS:
        hook(event, fields)
    fields = {"event": event, **fields}
    log.info(json.dumps(fields, sort_keys=True, separators=(",", ":")))


# ----------------------------------------------------------------------------- round


class Round:
    """One round on one server.

    Parameters
    ----------
    config
        The round's configuration (validated by :meth:`RoundBook.open`).
    workers
        Registered worker ids; None accepts any valid id (tests, open deployments).
    digests
        Cross-round replay guard; a private one if None.
    server
        This server's name, written into receipts ("server-a" / "server-b").
    clock
        Seconds since the epoch; injectable for tests.
    store
        Where accepted submissions and every state change are written
        (:mod:`secagg.store`); None keeps the round in memory only.
    """

    def __init__(
        self,
        config: RoundConfig,
        *,
        workers: Collection[str] | None = None,
        digests: DigestRegistry | None = None,
        server: str = "",
        clock: Callable[[], float] = time.time,
        store: RoundStore | None = None,
        _announce: bool = True,
    ) -> None:
        self.config = config
        self.server = server
        self._workers = None if workers is None else frozenset(workers)
        self._digests = digests if digests is not None else DigestRegistry()
        self._clock = clock
        self._store = store
        self._lock = threading.RLock()
        # Submissions being written to the store, outside the lock: worker -> digest.
        # fix_participants waits for them (a receipt may already be on its way) and
        # ``_closing`` stops new ones meanwhile.
        self._cond = threading.Condition(self._lock)
        self._pending: dict[str, bytes] = {}
        self._closing = False
        self._state = RoundState.OPEN
        self._failure_reason = ""
        self._subs: dict[str, Submission] = {}
        self._participants: tuple[str, ...] = ()
        self._mismatched: tuple[str, ...] = ()
        self._selected: tuple[str, ...] = ()
        self._excluded: dict[str, str] = {}  # worker -> why it was dropped after submitting
        self._phases: dict[str, PhaseStats] = {}
        self.opened_unix_ms = _now_ms(clock)
        self._updated_unix_ms = self.opened_unix_ms
        self._entered = clock()
        if not _announce:  # Round.restore logs its own event
            return
        _log_event(
            "round_opened",
            round_id=config.round_id,
            server=server,
            rule=config.rule.value,
            n_expected=config.n_expected,
            f=config.f,
            dim=config.dim,
            quorum=config.effective_quorum,
            deadline_unix_ms=config.deadline_unix_ms,
        )

    # ---------------------------------------------------------------- read access
    @property
    def round_id(self) -> str:
        return self.config.round_id

    @property
    def state(self) -> RoundState:
        return self._state

    @property
    def failure_reason(self) -> str:
        return self._failure_reason

    @property
    def received(self) -> int:
        return len(self._subs)

    @property
    def participants(self) -> tuple[str, ...]:
        """Sorted participant ids; empty before PARTICIPANTS_FIXED."""
        return self._participants

    @property
    def mismatched(self) -> tuple[str, ...]:
        """Workers both servers hold but under different submission ids."""
        return self._mismatched

    @property
    def selected(self) -> tuple[str, ...]:
        """Selected worker ids in the rule's pick order; empty before REVEAL."""
        return self._selected

    @property
    def updated_unix_ms(self) -> int:
        return self._updated_unix_ms

    def rebind_payloads(self, rows: Mapping[str, np.ndarray]) -> None:
        """Point share payloads at other arrays holding the same values.

        Server B stacks the participants' shares into one matrix for the 2PC and then
        lets each submission use its row, so a round holds one copy of its shares, not
        two. The caller guarantees equal values (it just copied them); shapes and dtype
        are checked here. Seeds (server A) cannot be rebound.
        """
        with self._lock:
            for w, row in rows.items():
                sub = self._subs[w]
                old = sub.payload
                if (
                    not isinstance(old, np.ndarray)
                    or not isinstance(row, np.ndarray)
                    or row.dtype != old.dtype
                    or row.shape != old.shape
                ):
                    raise ValueError(f"cannot rebind the payload of {w!r}: not a like share")
                self._subs[w] = replace(sub, payload=row)

    def submission(self, worker_id: str) -> Submission:
        with self._lock:
            try:
                return self._subs[worker_id]
            except KeyError:
                raise UnknownWorker(
                    f"round {self.round_id!r} holds no submission from worker {worker_id!r}"
                ) from None

    def submissions(self) -> dict[str, Submission]:
        """A snapshot of the submissions, by worker id."""
        with self._lock:
            return dict(self._subs)

    def holdings(self) -> dict[str, str]:
        """worker_id -> submission_id of every stored submission (for FixParticipants)."""
        with self._lock:
            return {w: s.submission_id for w, s in self._subs.items()}

    def deadline_passed(self) -> bool:
        return _now_ms(self._clock) >= self.config.deadline_unix_ms

    def ready_to_fix(self) -> bool:
        """Whether server A should fix participants now: quorum reached, or deadline."""
        with self._lock:
            if self._state not in (RoundState.OPEN, RoundState.COLLECTING):
                return False
            return self.received >= self.config.effective_quorum or self.deadline_passed()

    # ----------------------------------------------------------------- submissions
    def submit(
        self,
        worker_id: str,
        submission_id: str,
        payload: bytes | np.ndarray,
        *,
        digest: bytes | None = None,
    ) -> Receipt:
        """Store a worker's seed (server A) or share vector (server B).

        Parameters
        ----------
        worker_id
            The authenticated worker.
        submission_id
            Client-chosen id, constant across the client's retries.
        payload
            32-byte seed, or 1-D int64 array of length ``config.dim``. Not copied: the
            caller must not modify it afterwards.
        digest
            :func:`payload_digest` of the payload if the caller already computed it
            (e.g. incrementally while receiving chunks); computed here otherwise.

        Returns
        -------
        Receipt
            For an identical retry, the very receipt returned the first time.

        Raises
        ------
        RoundError
            :class:`UnknownWorker`, :class:`InvalidSubmission`,
            :class:`ConflictingSubmission`, :class:`ReplayedSubmission`,
            :class:`LateSubmission`, :class:`RoundFailed`, or :class:`StorageError`
            when the round has a store that could not write it (no receipt then).
        """
        rid = self.round_id
        try:
            self._check_submission_shape(worker_id, submission_id, payload)
            if digest is None:
                digest = payload_digest(payload)
            with self._cond:
                while True:
                    receipt, outcome = self._submit_locked(
                        worker_id, submission_id, payload, digest
                    )
                    if outcome != "wait":
                        break
                    # an identical retry while the first copy is being written: wait
                    # for it, then answer with its receipt
                    self._cond.wait()
            assert receipt is not None
            if outcome == "reserved":
                sub = Submission(worker_id, submission_id, digest, payload, receipt)
                outcome = self._persist(sub)
        except RoundError as exc:
            _log_event(
                "submission",
                round_id=rid,
                server=self.server,
                worker_id=worker_id if isinstance(worker_id, str) else repr(worker_id),
                outcome="refused",
                error=type(exc).__name__,
            )
            raise
        _log_event(
            "submission",
            round_id=rid,
            server=self.server,
            worker_id=worker_id,
            outcome=outcome,
            received=self.received,
        )
        return receipt

    def _check_submission_shape(
        self, worker_id: str, submission_id: str, payload: bytes | np.ndarray
    ) -> None:
        try:
            check_id("worker_id", worker_id)
            check_id("submission_id", submission_id)
        except ValueError as exc:
            raise InvalidSubmission(str(exc)) from None
        if self._workers is not None and worker_id not in self._workers:
            raise UnknownWorker(
                f"worker {worker_id!r} is not registered with this server: ask the "
                "operator to issue it a token"
            )
        if isinstance(payload, (bytes, bytearray)):
            if len(payload) != SEED_BYTES:
                raise InvalidSubmission(
                    f"a seed must be exactly {SEED_BYTES} bytes, got {len(payload)}"
                )
        elif isinstance(payload, np.ndarray):
            if payload.dtype != np.int64 or payload.shape != (self.config.dim,):
                raise InvalidSubmission(
                    f"a share must be an int64 vector of length dim={self.config.dim}, "
                    f"got dtype {payload.dtype} and shape {payload.shape}"
                )
        else:
            raise InvalidSubmission(
                f"payload must be a 32-byte seed or an int64 share, got {type(payload).__name__}"
            )

    def _submit_locked(
        self, worker_id: str, submission_id: str, payload: bytes | np.ndarray, digest: bytes
    ) -> tuple[Receipt | None, str]:
        rid = self.round_id
        existing = self._subs.get(worker_id)
        if existing is not None:
            # Checked before lateness: a retry whose first copy did land must still get
            # its receipt after the round moved on.
            if existing.digest == digest:
                return existing.receipt, "duplicate"
            raise ConflictingSubmission(
                f"worker {worker_id!r} already submitted a different payload to round "
                f"{rid!r} (submission {existing.submission_id!r}); the first submission "
                "stands: do not resubmit with new data, wait for the next round"
            )
        pending = self._pending.get(worker_id)
        if pending is not None:
            if pending == digest:
                return None, "wait"
            raise ConflictingSubmission(
                f"worker {worker_id!r} is already submitting a different payload to round "
                f"{rid!r}; the first submission stands: do not resubmit with new data"
            )
        if self._state is RoundState.FAILED:
            raise RoundFailed(
                f"round {rid!r} failed ({self._failure_reason}): wait for a new round"
            )
        if self._state not in (RoundState.OPEN, RoundState.COLLECTING):
            raise LateSubmission(
                f"round {rid!r} no longer accepts submissions: its participants are fixed "
                f"(state {self._state.value}); submit to the next round"
            )
        if self.deadline_passed():
            raise LateSubmission(
                f"round {rid!r} closed at deadline_unix_ms={self.config.deadline_unix_ms}: "
                "submit to the next round"
            )
        if self.config.invited and worker_id not in self.config.invited:
            raise NotInvited(
                f"round {rid!r} has an invitation list without worker {worker_id!r}: ask "
                "the operator to invite it to a later round"
            )
        if len(self._subs) + len(self._pending) >= self.config.n_expected:
            raise NotInvited(
                f"round {rid!r} already has the n_expected={self.config.n_expected} "
                "submissions it was opened for: submit to the next round"
            )
        if self._closing:
            raise LateSubmission(
                f"round {rid!r} is fixing its participants and takes no new submissions: "
                "submit to the next round"
            )
        owner = self._digests.claim(digest, rid, worker_id)
        if owner is not None:
            where = "an earlier round" if owner[0] != rid else "another worker of this round"
            raise ReplayedSubmission(
                f"this payload was already accepted in {where}: a replayed (or reused) "
                "seed/share is refused; split the vector again with a fresh seed"
            )
        receipt = Receipt(
            round_id=rid,
            worker_id=worker_id,
            submission_id=submission_id,
            digest=digest,
            dim=self.config.dim,
            accepted_unix_ms=_now_ms(self._clock),
            server=self.server,
        )
        if self._store is not None:
            # Written by _persist outside the lock: an fsync must not stall status reads
            # or other workers; the reservation keeps the worker's slot meanwhile.
            self._pending[worker_id] = digest
            return receipt, "reserved"
        self._commit_locked(Submission(worker_id, submission_id, digest, payload, receipt))
        return receipt, "accepted"

    def _commit_locked(self, sub: Submission) -> None:
        self._subs[sub.worker_id] = sub
        if self._state is RoundState.OPEN:
            self._transition_locked(RoundState.COLLECTING, "first submission accepted")

    def _persist(self, sub: Submission) -> str:
        """Write a reserved submission durably, then make it part of the round.

        Only after this returns may the receipt leave the server: a server killed at
        any point before has issued no receipt, and one killed after reloads it.
        """
        assert self._store is not None
        try:
            self._store.add_submission(self.round_id, sub)
        except Exception as exc:
            with self._cond:
                del self._pending[sub.worker_id]
                self._digests.release(sub.digest, self.round_id, sub.worker_id)
                self._cond.notify_all()
            log.exception(
                json.dumps({"event": "store_failed", "round_id": self.round_id, "op": "submit"})
            )
            raise StorageError(
                f"the server could not store this submission ({type(exc).__name__}); "
                "nothing was accepted: retry"
            ) from exc
        with self._cond:
            del self._pending[sub.worker_id]
            self._commit_locked(sub)
            self._cond.notify_all()
        return "accepted"

    # ----------------------------------------------------------------- transitions
    def transition(self, to: RoundState, reason: str = "") -> None:
        """Move to state ``to``; raise :class:`IllegalTransition` if not allowed.

        Prefer the named helpers (:meth:`fix_participants`, :meth:`start_distances`,
        :meth:`start_selection`, :meth:`start_reveal`, :meth:`finish`, :meth:`fail`),
        which also set the data that goes with each state.
        """
        with self._lock:
            self._transition_locked(RoundState(to), reason)

    def _transition_locked(self, to: RoundState, reason: str) -> None:
        frm = self._state
        if to not in ALLOWED_TRANSITIONS[frm]:
            raise IllegalTransition(
                f"round {self.round_id!r}: transition {frm.value} -> {to.value} is not allowed"
                + (f" (round failed: {self._failure_reason})" if frm is RoundState.FAILED else "")
            )
        if (
            frm in (RoundState.PARTICIPANTS_FIXED, RoundState.VALIDATION)
            and to is RoundState.REVEAL
            and self.config.rule is not Rule.MEAN
        ):
            raise IllegalTransition(
                f"round {self.round_id!r}: {self.config.rule.value} must compute distances "
                "and select before revealing (only mean goes straight to reveal)"
            )
        validated = not self.config.skip_validation
        if (
            validated
            and frm is RoundState.PARTICIPANTS_FIXED
            and to in (RoundState.DISTANCES, RoundState.REVEAL)
        ) or (not validated and to is RoundState.VALIDATION):
            # the round's configuration fixes whether its inputs are checked: neither
            # server may skip (or invent) the validation phase
            raise IllegalTransition(
                f"round {self.round_id!r}: transition {frm.value} -> {to.value} is not "
                f"allowed when input validation is {'on' if validated else 'off'}"
            )
        if to is RoundState.FAILED:
            self._failure_reason = reason or "unspecified failure"
        now = self._clock()
        # wall time spent in the state being left, under that state's name
        self._add_phase(frm.value, seconds=max(0.0, now - self._entered))
        self._entered = now
        self._state = to
        self._updated_unix_ms = int(now * 1000)
        if to.terminal:
            # nothing reads a finished round's payloads again: free them, so memory is
            # bounded by the open rounds (receipts and digests stay for retries/replays)
            self._subs = {
                w: Submission(s.worker_id, s.submission_id, s.digest, b"", s.receipt)
                for w, s in self._subs.items()
            }
        _log_event(
            "round_state",
            round_id=self.round_id,
            server=self.server,
            **{"from": frm.value, "to": to.value},
            reason=reason,
            received=len(self._subs),
            participants=len(self._participants),
            selected=len(self._selected),
        )
        self._save_locked()

    def _save_locked(self) -> None:
        """Write the round's state to the store, if any.

        A failed write is logged, not raised: every state a restart could find is one
        the recovery handles (an earlier state is resumed, see :meth:`rewind_2pc` and
        ``servers.session``), whereas failing here would abort the very transition that
        reports a failure. Submissions, which carry receipts, are strict (:meth:`_persist`).
        """
        if self._store is None:
            return
        try:
            self._store.save_round(self._snapshot_locked())
        except Exception:
            log.exception(
                json.dumps({"event": "store_failed", "round_id": self.round_id, "op": "state"})
            )

    def fix_participants(
        self,
        ids_from_other_server: Iterable[str] | Mapping[str, str],
        *,
        mismatched: Iterable[str] = (),
    ) -> list[str]:
        """Freeze submissions and keep the workers the other server holds too.

        Parameters
        ----------
        ids_from_other_server
            The other server's worker ids, or a mapping worker_id -> submission_id; with
            a mapping, a worker whose submission ids differ between the servers is
            excluded (its seed and share come from different splits and would not add
            up) and listed in :attr:`mismatched`.
        mismatched
            With a list of ids: the workers the other server found held under
            different submission ids (server B's ``ParticipantsReply.mismatched``),
            so that their exclusion here names that cause too.

        Returns
        -------
        list of str
            The sorted intersection, now :attr:`participants`.

        Raises
        ------
        IllegalTransition
            If participants were already fixed or the round is over.
        RoundFailed
            If fewer workers remain than the rule needs (the round is failed first).
            (Multi-Krum's m is capped for them: :meth:`RoundConfig.effective_m`.)
        """
        with self._cond:
            while True:
                if self._state not in (RoundState.OPEN, RoundState.COLLECTING):
                    raise IllegalTransition(
                        f"round {self.round_id!r}: participants can only be fixed while "
                        f"collecting, the round is {self._state.value}"
                    )
                if not self._pending:
                    break
                # Submissions being written may already have receipts on their way, so
                # they belong to the round: refuse new ones, wait for these.
                self._closing = True
                self._cond.wait()
            ours = self._subs
            if isinstance(ids_from_other_server, Mapping):
                common = {w for w in ids_from_other_server if w in ours}
                mismatched = sorted(
                    w for w in common if ids_from_other_server[w] != ours[w].submission_id
                )
                chosen = sorted(common - set(mismatched))
            else:
                reported = set(mismatched)
                mismatched = sorted(w for w in reported if w in ours)
                chosen = sorted({w for w in ids_from_other_server if w in ours} - reported)
            self._mismatched = tuple(mismatched)
            self._record_dropouts_locked(ids_from_other_server, chosen, mismatched)
            n, cfg = len(chosen), self.config
            problem = ""
            if n < cfg.min_participants:
                problem = (
                    f"only {n} workers' submissions reached both servers "
                    f"({len(ours)} here, {len(mismatched)} mismatched); "
                    f"{cfg.rule.value} with f={cfg.f} needs at least {cfg.min_participants}"
                )
            else:
                # the selection functions' own check, so a round never fixes a set of
                # participants that secagg.rules would then refuse
                from secagg.rules import RuleError, validate_params

                try:
                    validate_params(cfg.rule.value, n, cfg.f, cfg.effective_m(n))
                except RuleError as exc:
                    problem = f"{n} participants: {exc}"
            if problem:
                self._transition_locked(RoundState.FAILED, problem)
                raise RoundFailed(f"round {self.round_id!r} failed: {problem}")
            self._participants = tuple(chosen)
            reason = f"{n} participants"
            if mismatched:
                reason += f", {len(mismatched)} excluded for mismatched submission ids"
            self._transition_locked(RoundState.PARTICIPANTS_FIXED, reason)
            return list(chosen)

    def _record_dropouts_locked(
        self,
        other: Iterable[str] | Mapping[str, str],
        chosen: Sequence[str],
        mismatched: Sequence[str],
    ) -> None:
        """Say in :attr:`excluded` why each worker one server heard from is left out."""
        me = self.server or "this server"
        keep, odd = set(chosen), set(mismatched)
        precise = isinstance(other, Mapping)
        for w in sorted(set(self._subs) - keep):
            if w in odd:
                why = "mismatched: the servers hold different submission ids for it"
            elif precise:
                why = f"dropped out: only {me} received its submission"
            else:
                why = "dropped out or mismatched: the other server did not confirm it"
            self._excluded[w] = why
        if precise:
            for w in sorted(set(other) - set(self._subs)):
                self._excluded[w] = f"dropped out: {me} never received its submission"
        left = len(self._excluded)
        if left:
            _log_event(
                "excluded",
                round_id=self.round_id,
                server=self.server,
                count=left,
                reason="dropped out or mismatched when participants were fixed",
                remaining=len(keep),
            )

    @property
    def excluded(self) -> dict[str, str]:
        with self._lock:
            return dict(self._excluded)

    def start_validation(self) -> None:
        self.transition(RoundState.VALIDATION, "checking that every input is well formed")

    def exclude(self, worker_ids: Iterable[str], reason: str) -> list[str]:
        """Drop participants (e.g. failed input validation), recording why.

        Returns the remaining participants. Fails the round (and raises
        :class:`RoundFailed`) if fewer remain than the rule needs.
        """
        with self._lock:
            drop = set(worker_ids)
            unknown = drop - set(self._participants)
            if unknown:
                raise IllegalTransition(
                    f"round {self.round_id!r}: cannot exclude non-participants {sorted(unknown)}"
                )
            for w in sorted(drop):
                self._excluded[w] = reason
            self._participants = tuple(w for w in self._participants if w not in drop)
            n, cfg = len(self._participants), self.config
            if drop:
                _log_event(
                    "excluded",
                    round_id=self.round_id,
                    server=self.server,
                    count=len(drop),
                    reason=reason,
                    remaining=n,
                )
            problem = ""
            if n < cfg.min_participants:
                problem = (
                    f"{len(drop)} workers excluded ({reason}); {n} remain but "
                    f"{cfg.rule.value} with f={cfg.f} needs at least {cfg.min_participants}"
                )
            if problem:
                self._transition_locked(RoundState.FAILED, problem)
                raise RoundFailed(f"round {self.round_id!r} failed: {problem}")
            self._save_locked()  # the shrunken participant set must survive a restart
            return list(self._participants)

    def start_distances(self) -> None:
        self.transition(RoundState.DISTANCES, "computing pairwise distances")

    def start_selection(self) -> None:
        self.transition(RoundState.SELECTION, "distances revealed")

    def start_reveal(self, selected: Sequence[str]) -> None:
        """Record the selection (worker ids, pick order) and enter REVEAL."""
        with self._lock:
            sel = tuple(selected)
            unknown = [w for w in sel if w not in self._participants]
            if not sel or unknown or len(set(sel)) != len(sel):
                raise IllegalTransition(
                    f"round {self.round_id!r}: the selection must be distinct participants, "
                    f"got {len(sel)} ids ({len(unknown)} not participants)"
                )
            if self._selected and sel != self._selected:
                # A reveal of this round was interrupted (restart or broken session) after
                # the other server may have seen its sum: opening the sum of another
                # selection would let it subtract the two.
                raise IllegalTransition(
                    f"round {self.round_id!r}: a selection of {len(self._selected)} was "
                    f"already revealed in an interrupted run; refusing to open a different "
                    f"one ({len(sel)} workers)"
                )
            before, self._selected = self._selected, sel
            try:
                self._transition_locked(RoundState.REVEAL, f"{len(sel)} selected")
            except IllegalTransition:
                self._selected = before
                raise

    def rewind_2pc(self, reason: str) -> bool:
        """Recovery: back to PARTICIPANTS_FIXED from a 2PC that can no longer finish.

        A computation in VALIDATION, DISTANCES, SELECTION or REVEAL dies with its MPC
        session (a server restarted, or the session was rebuilt). Running it again from
        the fixed participants opens nothing new: the distance matrix is a function of
        the shares, the rule's selection a function of the matrix, and a repeated
        reveal must open the same selection (:meth:`start_reveal` checks). Validation
        draws a fresh projection seed, which is as safe as the first draw.

        Returns
        -------
        bool
            Whether the round was rewound (False if it was in no such state).
        """
        with self._lock:
            frm = self._state
            if frm not in _TWO_PC_STATES:
                return False
            now = self._clock()
            self._add_phase(frm.value, seconds=max(0.0, now - self._entered))
            self._entered = now
            self._state = RoundState.PARTICIPANTS_FIXED
            self._updated_unix_ms = int(now * 1000)
            _log_event(
                "round_state",
                round_id=self.round_id,
                server=self.server,
                **{"from": frm.value, "to": self._state.value},
                reason=f"recovery: {reason}",
                received=len(self._subs),
                participants=len(self._participants),
                selected=len(self._selected),
            )
            self._save_locked()
            return True

    # ------------------------------------------------------------- persistence
    def snapshot(self) -> RoundSnapshot:
        """The round's state for a store (submissions are stored one by one)."""
        with self._lock:
            return self._snapshot_locked()

    def _snapshot_locked(self) -> RoundSnapshot:
        return RoundSnapshot(
            config=self.config,
            state=self._state,
            failure_reason=self._failure_reason,
            participants=self._participants,
            mismatched=self._mismatched,
            selected=self._selected,
            excluded=dict(self._excluded),
            phases=tuple(PhaseStats(**asdict(p)) for p in self._phases.values()),
            opened_unix_ms=self.opened_unix_ms,
            updated_unix_ms=self._updated_unix_ms,
        )

    @classmethod
    def restore(
        cls,
        snap: RoundSnapshot,
        submissions: Iterable[Submission],
        *,
        workers: Collection[str] | None = None,
        digests: DigestRegistry | None = None,
        server: str = "",
        clock: Callable[[], float] = time.time,
        store: RoundStore | None = None,
    ) -> Round:
        """Rebuild a round from a store after a restart (claims its digests too)."""
        rnd = cls(
            snap.config,
            workers=workers,
            digests=digests,
            server=server,
            clock=clock,
            store=store,
            _announce=False,
        )
        rid = snap.config.round_id
        with rnd._lock:
            rnd._state = snap.state
            rnd._failure_reason = snap.failure_reason
            rnd._participants = tuple(snap.participants)
            rnd._mismatched = tuple(snap.mismatched)
            rnd._selected = tuple(snap.selected)
            rnd._excluded = dict(snap.excluded)
            rnd._phases = {p.phase: PhaseStats(**asdict(p)) for p in snap.phases}
            rnd.opened_unix_ms = snap.opened_unix_ms
            rnd._updated_unix_ms = snap.updated_unix_ms
            for sub in submissions:
                rnd._subs[sub.worker_id] = sub
                rnd._digests.claim(sub.digest, rid, sub.worker_id)
            if rnd._state is RoundState.OPEN and rnd._subs:
                # killed between storing the first submission and the state change
                rnd._state = RoundState.COLLECTING
        _log_event(
            "round_restored",
            round_id=rid,
            server=server,
            state=rnd._state.value,
            received=len(rnd._subs),
        )
        return rnd

    def finish(self) -> None:
        self.transition(RoundState.DONE, "aggregate available")

    def fail(self, reason: str) -> None:
        """Fail the round. A no-op if it already failed; illegal once DONE."""
        with self._lock:
            if self._state is RoundState.FAILED:
                return
            self._transition_locked(RoundState.FAILED, reason)

    # ------------------------------------------------------------------ accounting
    def _add_phase(self, name: str, **amounts: float) -> None:
        stats = self._phases.setdefault(name, PhaseStats(name))
        for key, value in amounts.items():
            setattr(stats, key, getattr(stats, key) + value)

    def record_phase(
        self,
        name: str,
        *,
        seconds: float = 0.0,
        bytes_sent: int = 0,
        bytes_received: int = 0,
        comm_rounds: int = 0,
        dealer_bytes: int = 0,
    ) -> None:
        """Add measured costs to phase ``name``.

        The wall time of every state is recorded automatically under the state's name
        ("collecting", "distances", ...): for 2PC measurements of such a phase pass the
        bytes only, or use a distinct name (e.g. "mpc.distances") with seconds.
        """
        with self._lock:
            self._add_phase(
                name,
                seconds=float(seconds),
                bytes_sent=int(bytes_sent),
                bytes_received=int(bytes_received),
                comm_rounds=int(comm_rounds),
                dealer_bytes=int(dealer_bytes),
            )

    def record_mpc_traffic(self, traffic: Mapping[str, Mapping[str, float]]) -> None:
        """Record a 2PC session's per-phase costs (``secagg.mpc.Traffic.as_dict()``)
        under ``mpc.<phase>``."""
        for name, secs in traffic["seconds"].items():
            self.record_phase(
                f"mpc.{name}",
                seconds=secs,
                bytes_sent=int(traffic["bytes_sent"].get(name, 0)),
                comm_rounds=int(traffic["rounds"].get(name, 0)),
                dealer_bytes=int(traffic["dealer_bytes"].get(name, 0)),
            )

    @property
    def phases(self) -> dict[str, PhaseStats]:
        with self._lock:
            return {k: PhaseStats(**asdict(v)) for k, v in self._phases.items()}

    # ------------------------------------------------------------------- reporting
    def status_dict(self) -> dict[str, Any]:
        """JSON-ready status (no payloads or digests)."""
        with self._lock:
            return {
                "round_id": self.round_id,
                "state": self._state.value,
                "failure_reason": self._failure_reason,
                "received": len(self._subs),
                "participants": list(self._participants),
                "selected": list(self._selected),
                "excluded": dict(self._excluded),
                "phases": [asdict(p) for p in self._phases.values()],
                "config": self.config.to_dict(),
                "updated_unix_ms": self._updated_unix_ms,
            }

    def to_proto(self) -> secagg_pb2.RoundStatus:
        from secagg.v1 import secagg_pb2

        with self._lock:
            return secagg_pb2.RoundStatus(
                round_id=self.round_id,
                state=self._state.to_proto(),
                failure_reason=self._failure_reason,
                received=len(self._subs),
                participants=list(self._participants),
                selected=list(self._selected),
                phases=[secagg_pb2.PhaseStats(**asdict(p)) for p in self._phases.values()],
                config=self.config.to_proto(),
                updated_unix_ms=self._updated_unix_ms,
                excluded=[
                    secagg_pb2.Exclusion(worker_id=w, reason=r) for w, r in self._excluded.items()
                ],
            )


# ------------------------------------------------------------------------- round book


class RoundBook:
    """All rounds one server knows, by id, sharing one replay guard.

    Parameters
    ----------
    workers
        Registered worker ids (e.g. ``TokenStore.worker_ids``); None accepts any.
    server
        This server's name for receipts.
    max_dim
        Largest admissible ``dim``.
    clock
        Seconds since the epoch; injectable for tests.
    store
        Durable storage for every round, submission and state change
        (:class:`secagg.store.SqliteStore`); None keeps everything in memory.
        :meth:`restore` reloads what it holds.
    """

    def __init__(
        self,
        *,
        workers: Collection[str] | None = None,
        server: str = "",
        max_dim: int = DEFAULT_MAX_DIM,
        clock: Callable[[], float] = time.time,
        store: RoundStore | None = None,
    ) -> None:
        self.workers = None if workers is None else frozenset(workers)
        self.server = server
        self.max_dim = max_dim
        self.digests = DigestRegistry()
        self.store = store
        self._clock = clock
        self._rounds: dict[str, Round] = {}
        self._lock = threading.Lock()

    def open(self, config: RoundConfig) -> Round:
        """Validate ``config`` and open its round.

        Opening the same configuration again returns the existing round, so a retried
        OpenRound (A -> B, or an operator's) is harmless.

        Raises
        ------
        ValueError
            If the configuration violates a bound (see :meth:`RoundConfig.validate`)
            or invites more workers than are registered.
        DuplicateRound
            If the id is taken by a different configuration.
        """
        with self._lock:
            existing = self._rounds.get(config.round_id)
            if existing is not None:
                if existing.config == config:
                    return existing
                raise DuplicateRound(
                    f"round {config.round_id!r} already exists with a different "
                    "configuration: choose a new round_id"
                )
            config.validate(now_ms=_now_ms(self._clock), max_dim=self.max_dim)
            if self.workers is not None and config.n_expected > len(self.workers):
                raise ValueError(
                    f"n_expected={config.n_expected} exceeds the {len(self.workers)} "
                    "registered workers: issue more tokens or lower n_expected"
                )
            if self.workers is not None and not set(config.invited) <= set(self.workers):
                raise ValueError(
                    f"invited lists {len(set(config.invited) - set(self.workers))} workers "
                    "that are not registered: issue them tokens or fix the list"
                )
            rnd = Round(
                config,
                workers=self.workers,
                digests=self.digests,
                server=self.server,
                clock=self._clock,
                store=self.store,
            )
            if self.store is not None:
                # on disk before anyone is told the round exists
                try:
                    self.store.save_round(rnd.snapshot())
                except Exception as exc:
                    raise StorageError(
                        f"could not store round {config.round_id!r} ({type(exc).__name__}): retry"
                    ) from exc
            self._rounds[config.round_id] = rnd
            return rnd

    def restore(self) -> list[Round]:
        """Reload every round from the store (after a restart), oldest first.

        Rebuilds the replay guard from all stored digests, finished rounds included.
        Rounds caught in a 2PC are returned as they were; the server decides what to
        resume (:meth:`Round.rewind_2pc`).
        """
        if self.store is None:
            return []
        loaded = self.store.load()
        restored = []
        with self._lock:
            for snap, subs in loaded:
                rnd = Round.restore(
                    snap,
                    subs,
                    workers=self.workers,
                    digests=self.digests,
                    server=self.server,
                    clock=self._clock,
                    store=self.store,
                )
                self._rounds[rnd.round_id] = rnd
                restored.append(rnd)
        return restored

    def get(self, round_id: str) -> Round:
        with self._lock:
            rnd = self._rounds.get(round_id)
        if rnd is None:
            raise UnknownRound(
                f"no round {round_id!r} on this server: check the id, or wait until the "
                "operator opens it"
            )
        return rnd

    def list(self, states: Collection[RoundState] | None = None, limit: int = 0) -> list[Round]:
        """Rounds, newest first, optionally filtered by state; ``limit`` 0 = all."""
        with self._lock:
            rounds = list(self._rounds.values())
        rounds.reverse()  # dicts keep insertion order: reversed is newest first
        if states:
            wanted = set(states)
            rounds = [r for r in rounds if r.state in wanted]
        return rounds[:limit] if limit else rounds

    def __contains__(self, round_id: object) -> bool:
        with self._lock:
            return round_id in self._rounds

    def __len__(self) -> int:
        with self._lock:
            return len(self._rounds)
