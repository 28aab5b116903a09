"""Durable round state: what a server must not forget when it is killed.

A receipt is a promise that the submission will be in the round, so a server writes
the submission to disk, durably, before it answers. One :class:`SqliteStore` per
server process keeps everything needed to carry on after ``kill -9``:

* every round's configuration and state (participants, exclusions, selection, phase
  costs), rewritten at each state change;
* every accepted submission with its receipt (server A: 32-byte seeds, server B:
  share vectors), so an identical retry after a restart still gets the very same
  receipt;
* the digests of all submissions ever accepted: the cross-round replay guard;
* on server A, each finished round's outcome (aggregate, divisor, what A saw), so
  workers can fetch the aggregate after a restart.

Why SQLite and not files + fsync
--------------------------------
``sqlite3`` is in the standard library, and one transaction covers a submission row
together with everything it implies, so the on-disk state is always one a running
server could have had: no half-written share, no receipt without its round. The
database runs in WAL mode with ``synchronous=FULL``: each commit fsyncs the log
before :meth:`SqliteStore.add_submission` returns, which survives power loss, not
only a killed process (``NORMAL`` would survive only the latter). Hand-rolled
write/fsync/rename per share plus a journal for the state would need the same
guarantees re-implemented and tested. The costs, measured: one commit with an
800 KB share (d = 10^5) takes ~11 ms on the CI disk, and commits are serialised, so
100 simultaneous uploads wait up to ~1 s for the disk (see ``bench/load.py``).

Payloads of finished rounds are deleted (the digests and receipts stay): disk use is
bounded by the open rounds, like memory.

Nothing here is a secret on its own (a seed or a share alone is uniformly random), but
both servers' files together would reveal every vector: the directory is created
0700 and the database 0600, and A's and B's state must never share a disk.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Protocol

import numpy as np

from secagg.contract import (
    PhaseStats,
    Receipt,
    RoundConfig,
    RoundSnapshot,
    RoundState,
    Submission,
)

__all__ = [
    "SCHEMA_VERSION",
    "RoundStore",
    "SqliteStore",
    "StateDirError",
    "StoredOutcome",
    "lock_state_dir",
    "open_store",
]

log = logging.getLogger("secagg.store")

#: Bumped on any incompatible change of the tables below; a mismatch refuses to start.
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,   -- opening order
    round_id TEXT NOT NULL UNIQUE,
    snapshot TEXT NOT NULL                        -- JSON, see _snapshot_json
);
CREATE TABLE IF NOT EXISTS submissions (
    round_id      TEXT NOT NULL,
    worker_id     TEXT NOT NULL,
    submission_id TEXT NOT NULL,
    digest        BLOB NOT NULL UNIQUE,           -- the replay guard, kept forever
    kind          TEXT NOT NULL,                  -- 'seed' or 'share'
    payload       BLOB,                           -- NULL once the round is over
    accepted_ms   INTEGER NOT NULL,
    server        TEXT NOT NULL,
    dim           INTEGER NOT NULL,
    PRIMARY KEY (round_id, worker_id)
);
CREATE TABLE IF NOT EXISTS outcomes (
    round_id   TEXT PRIMARY KEY,
    aggregate  BLOB NOT NULL,                     -- little-endian float64
    divisor    INTEGER NOT NULL,
    distances  BLOB,                              -- float64 n*n, NULL for the mean
    selected   TEXT NOT NULL                      -- JSON list of indices
);
"""


class RoundStore(Protocol):
    """What :class:`secagg.rounds.Round` and :class:`~secagg.rounds.RoundBook` call.

    Both methods must be durable when they return and raise on failure; the round
    then refuses the submission (the client retries) instead of issuing a receipt.
    """

    def save_round(self, snap: RoundSnapshot) -> None:
        """Insert or replace a round's state (payloads go when it is terminal)."""

    def add_submission(self, round_id: str, sub: Submission) -> None:
        """Record an accepted submission and its receipt."""

    def load(self) -> list[tuple[RoundSnapshot, list[Submission]]]:
        """Every stored round, oldest first, with its submissions."""


@dataclass(frozen=True)
class StoredOutcome:
    """Server A's result of a finished round."""

    aggregate: np.ndarray
    divisor: int
    distances: np.ndarray | None
    selected: list[int]


def _snapshot_json(snap: RoundSnapshot) -> str:
    return json.dumps(
        {
            "config": snap.config.to_dict(),
            "state": snap.state.value,
            "failure_reason": snap.failure_reason,
            "participants": list(snap.participants),
            "mismatched": list(snap.mismatched),
            "selected": list(snap.selected),
            "excluded": dict(snap.excluded),
            "phases": [asdict(p) for p in snap.phases],
            "opened_unix_ms": snap.opened_unix_ms,
            "updated_unix_ms": snap.updated_unix_ms,
        },
        sort_keys=True,
    )


def _config_from_dict(d: dict[str, object]) -> RoundConfig:
    # only the fields this version knows: a column added later must not break a restore
    known = {f.name for f in fields(RoundConfig)}
    return RoundConfig(**{k: v for k, v in d.items() if k in known})  # type: ignore[arg-type]


def _snapshot_from_json(text: str) -> RoundSnapshot:
    d = json.loads(text)
    return RoundSnapshot(
        config=_config_from_dict(d["config"]),
        state=RoundState(d["state"]),
        failure_reason=d["failure_reason"],
        participants=tuple(d["participants"]),
        mismatched=tuple(d["mismatched"]),
        selected=tuple(d["selected"]),
        excluded=dict(d["excluded"]),
        phases=tuple(PhaseStats(**p) for p in d["phases"]),
        opened_unix_ms=int(d["opened_unix_ms"]),
        updated_unix_ms=int(d["updated_unix_ms"]),
    )


def _encode_payload(payload: bytes | np.ndarray) -> tuple[str, bytes | memoryview | None]:
    if isinstance(payload, (bytes, bytearray, memoryview)):
        data = bytes(payload)
        # a finished round's submissions keep no payload (Round drops them)
        return "seed", (data or None)
    arr = np.ascontiguousarray(payload, dtype="<i8")
    # a view, not a copy: SQLite reads the blob straight from the array
    return "share", (memoryview(arr).cast("B") if arr.size else None)


def _decode_payload(kind: str, blob: bytes | None) -> bytes | np.ndarray:
    if blob is None:
        return b""  # the round is over: only the receipt and digest survive
    if kind == "seed":
        return bytes(blob)
    # a read-only view on the blob: rounds never modify payloads
    return np.frombuffer(blob, dtype="<i8").astype(np.int64, copy=False)


class SqliteStore:
    """A :class:`RoundStore` in one SQLite file (``<state_dir>/<server>.db``).

    Thread-safe: gRPC handlers persist from worker threads while the coordinator
    persists transitions from the event loop; one connection, one lock, and
    ``BEGIN IMMEDIATE`` transactions.

    Parameters
    ----------
    path
        The database file; its directory is created (0700) if missing.
    server
        "server-a" or "server-b": recorded on first use, checked afterwards, so that
        A's state is never loaded by B (or the other way round).
    """

    def __init__(self, path: str | os.PathLike[str], server: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.server = server
        self.lock_fd: int | None = None  # open_store's lock on the directory
        # create the file 0600 before SQLite opens it with the umask's mode
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        self._lock = threading.Lock()
        # isolation_level=None: no implicit transactions, we issue BEGIN/COMMIT
        self._db = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every commit
        self._db.execute("PRAGMA foreign_keys=ON")
        # freed pages (a finished round's shares) are overwritten with zeros, not left
        # readable in the file; explicit, as builds differ in their default
        self._db.execute("PRAGMA secure_delete=ON")
        # Erasing a finished round's shares rewrites n·d·8 bytes (zeros, WAL, fsync):
        # about a second at n=20, d=10^6. It runs here, after the round's terminal
        # state is committed, not inside the transition that answers the peer.
        self._purger = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="store-purge"
        )
        # executescript runs in autocommit mode; CREATE ... IF NOT EXISTS is idempotent
        self._db.executescript(_SCHEMA)
        self._check_meta()

    # ------------------------------------------------------------------ plumbing
    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def _check_meta(self) -> None:
        with self._tx() as cur:
            rows = dict(cur.execute("SELECT key, value FROM meta").fetchall())
            if not rows:
                cur.executemany(
                    "INSERT INTO meta(key, value) VALUES (?, ?)",
                    [("schema_version", str(SCHEMA_VERSION)), ("server", self.server)],
                )
                return
        if rows.get("schema_version") != str(SCHEMA_VERSION):
            raise RuntimeError(
                f"{self.path} has schema version {rows.get('schema_version')}, this "
                f"secagg expects {SCHEMA_VERSION}: migrate it or use a new --state-dir"
            )
        if rows.get("server") != self.server:
            raise RuntimeError(
                f"{self.path} holds the state of {rows.get('server')!r}, not {self.server!r}: "
                "give each server its own --state-dir"
            )

    def probe_write(self) -> None:
        """One small durable write (fsynced like a submission): raises if the disk
        cannot take it. The servers' health reports NOT_SERVING meanwhile."""
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO meta(key, value) VALUES ('probe', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(time.time_ns()),),
            )

    def flush(self) -> None:
        """Wait until every scheduled payload erasure is done (tests, shutdown)."""
        self._purger.submit(lambda: None).result()

    def close(self) -> None:
        self._purger.shutdown(wait=True)
        with self._lock:
            self._db.close()
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def _schedule_purge(self, round_id: str) -> None:
        with contextlib.suppress(RuntimeError):  # shut down: the next start erases them
            self._purger.submit(self._purge, round_id)

    def _purge(self, round_id: str) -> None:
        """Erase a terminal round's payloads, one row per transaction: a submission to
        the next round waits for one row, not for the whole round."""
        try:
            with self._lock:
                workers = [
                    w
                    for (w,) in self._db.execute(
                        "SELECT worker_id FROM submissions "
                        "WHERE round_id = ? AND payload IS NOT NULL",
                        (round_id,),
                    ).fetchall()
                ]
            for w in workers:
                with self._tx() as cur:
                    cur.execute(
                        "UPDATE submissions SET payload = NULL "
                        "WHERE round_id = ? AND worker_id = ?",
                        (round_id, w),
                    )
            if workers:
                # the old page versions (the shares) live on in the WAL until it is
                # checkpointed: copy the erased pages home and empty the log
                with self._lock:
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except Exception:  # retried at the next start (load erases what is left)
            log.exception(json.dumps({"event": "store_failed", "op": "purge"}))

    # ------------------------------------------------------------- RoundStore
    def save_round(self, snap: RoundSnapshot) -> None:
        text = _snapshot_json(snap)
        rid = snap.config.round_id
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO rounds(round_id, snapshot) VALUES (?, ?) "
                "ON CONFLICT(round_id) DO UPDATE SET snapshot = excluded.snapshot",
                (rid, text),
            )
        if snap.state.terminal:
            # the shares are no longer needed; receipts and digests stay
            self._schedule_purge(rid)

    def add_submission(self, round_id: str, sub: Submission) -> None:
        kind, blob = _encode_payload(sub.payload)
        r = sub.receipt
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO submissions(round_id, worker_id, submission_id, digest, kind, "
                "payload, accepted_ms, server, dim) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    round_id,
                    sub.worker_id,
                    sub.submission_id,
                    sub.digest,
                    kind,
                    blob,
                    r.accepted_unix_ms,
                    r.server,
                    r.dim,
                ),
            )

    # ---------------------------------------------------------------- restore
    def load(self) -> list[tuple[RoundSnapshot, list[Submission]]]:
        """Every round in opening order, with its submissions."""
        with self._lock:
            rounds = self._db.execute(
                "SELECT round_id, snapshot FROM rounds ORDER BY seq"
            ).fetchall()
            subs = self._db.execute(
                "SELECT round_id, worker_id, submission_id, digest, kind, payload, "
                "accepted_ms, server, dim FROM submissions"
            ).fetchall()
        snaps = [(rid, _snapshot_from_json(text)) for rid, text in rounds]
        over = {rid for rid, snap in snaps if snap.state.terminal}
        unerased: set[str] = set()
        by_round: dict[str, list[Submission]] = {}
        for rid, wid, sid, digest, kind, blob, acc_ms, server, dim in subs:
            receipt = Receipt(
                round_id=rid,
                worker_id=wid,
                submission_id=sid,
                digest=bytes(digest),
                dim=int(dim),
                accepted_unix_ms=int(acc_ms),
                server=server,
            )
            if rid in over and blob is not None:
                unerased.add(rid)  # stopped before the erasure ran: finish it now
                blob = None
            by_round.setdefault(rid, []).append(
                Submission(wid, sid, bytes(digest), _decode_payload(kind, blob), receipt)
            )
        for rid in sorted(unerased):
            self._schedule_purge(rid)
        return [(snap, by_round.get(rid, [])) for rid, snap in snaps]

    # ------------------------------------------------------- server A outcomes
    def save_outcome(self, round_id: str, outcome: StoredOutcome) -> None:
        dist = None
        if outcome.distances is not None:
            dist = np.ascontiguousarray(outcome.distances, dtype="<f8").tobytes()
        with self._tx() as cur:
            cur.execute(
                "INSERT OR REPLACE INTO outcomes(round_id, aggregate, divisor, distances, "
                "selected) VALUES (?, ?, ?, ?, ?)",
                (
                    round_id,
                    np.ascontiguousarray(outcome.aggregate, dtype="<f8").tobytes(),
                    int(outcome.divisor),
                    dist,
                    json.dumps([int(i) for i in outcome.selected]),
                ),
            )

    def load_outcomes(self) -> dict[str, StoredOutcome]:
        with self._lock:
            rows = self._db.execute(
                "SELECT round_id, aggregate, divisor, distances, selected FROM outcomes"
            ).fetchall()
        out: dict[str, StoredOutcome] = {}
        for rid, agg, divisor, dist, selected in rows:
            d = None
            if dist is not None:
                flat = np.frombuffer(dist, dtype="<f8").astype(np.float64)
                k = int(round(flat.size**0.5))
                d = flat.reshape(k, k)
            out[rid] = StoredOutcome(
                aggregate=np.frombuffer(agg, dtype="<f8").astype(np.float64),
                divisor=int(divisor),
                distances=d,
                selected=[int(i) for i in json.loads(selected)],
            )
        return out


class StateDirError(RuntimeError):
    """The state directory cannot be used: the message says why and what to do."""


#: The lock file in a state directory; held (``flock``) for as long as a server runs.
LOCK_NAME = "LOCK"


def lock_state_dir(state_dir: str | os.PathLike[str], server: str) -> int:
    """Take ``state_dir`` for this process, exclusively; returns the lock's descriptor.

    Two servers on one state directory would both restore its open rounds and hand
    out receipts for the same submissions (issue #17). The lock is an ``flock`` on
    ``<state_dir>/LOCK``: the kernel drops it when the process dies, so a killed
    server leaves no stale lock behind. The file names the holder's pid, for the
    message. Keep the descriptor open for the life of the process.

    Raises
    ------
    StateDirError
        If another process holds the directory, or it cannot be created or written.
    """
    d = Path(state_dir)
    try:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(d / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o600)
    except OSError as exc:
        raise StateDirError(
            f"cannot use the state directory {str(d)!r}: {exc.strerror or exc}; make it a "
            "writable directory for this user, or choose another --state-dir"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StateDirError(
            f"the state directory {str(d)!r} is in use by another server (pid {holder}): "
            f"stop that one first, or give this {server} its own --state-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {server}\n".encode(), 0)
    return fd


def open_store(state_dir: str | os.PathLike[str] | None, server: str) -> SqliteStore | None:
    """The server's store under ``state_dir`` (locked for this process), or None.

    Raises
    ------
    StateDirError
        If the directory is taken by another process or unusable (see
        :func:`lock_state_dir`), or the database cannot be opened.
    """
    if not state_dir:
        return None
    lock = lock_state_dir(state_dir, server)
    path = Path(state_dir) / f"{server}.db"
    try:
        store = SqliteStore(path, server)
    except (OSError, sqlite3.Error) as exc:
        os.close(lock)
        raise StateDirError(
            f"cannot open the state database {str(path)!r}: {exc}; check the disk and "
            "the file's permissions, or choose another --state-dir"
        ) from None
    except RuntimeError as exc:  # another server's state, or another schema version
        os.close(lock)
        raise StateDirError(str(exc)) from None
    store.lock_fd = lock  # held until the process exits
    log.info(json.dumps({"event": "state_store", "server": server, "path": str(path)}))
    return store
