"""The durable round store: what a restarted server gets back, and when receipts leave.

Unit level (no processes): rounds and submissions round-trip through SQLite, a
submission is on disk before its receipt is returned, a failed write issues no
receipt and frees the worker's slot, and payloads of finished rounds are dropped.
The kill -9 tests with real servers are in tests/test_reliability.py.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from secagg.rounds import (
    ConflictingSubmission,
    LateSubmission,
    ReplayedSubmission,
    Round,
    RoundBook,
    RoundConfig,
    RoundSnapshot,
    RoundState,
    StorageError,
    Submission,
)
from secagg.store import SqliteStore, StoredOutcome, open_store

S = RoundState
T0 = 1_700_000_000.0
WORKERS = [f"w{i}" for i in range(10)]


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def cfg(rid: str = "r1", **over: object) -> RoundConfig:
    base: dict[str, object] = {
        "round_id": rid,
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


def seed(i: int) -> bytes:
    return i.to_bytes(32, "little")


def share(i: int, dim: int = 4) -> np.ndarray:
    return np.arange(dim, dtype=np.int64) * 1000 + i


def book(path: Path, server: str = "server-a", clock: Clock | None = None) -> RoundBook:
    return RoundBook(
        workers=WORKERS,
        server=server,
        clock=clock or Clock(),
        store=SqliteStore(path / f"{server}.db", server),
    )


def test_no_state_dir_means_no_store(tmp_path: Path) -> None:
    assert open_store(None, "server-a") is None
    assert open_store("", "server-a") is None
    st = open_store(tmp_path / "s", "server-a")
    assert isinstance(st, SqliteStore) and st.path == tmp_path / "s" / "server-a.db"


def test_files_are_private(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "state" / "server-b.db", "server-b")
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "server-b.db").st_mode) == 0o600


def test_a_store_refuses_the_other_servers_state(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "x.db", "server-a").close()
    with pytest.raises(RuntimeError, match="server-a"):
        SqliteStore(tmp_path / "x.db", "server-b")


def test_rounds_submissions_receipts_and_digests_survive_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    b1 = book(tmp_path, "server-b", clock)
    r1 = b1.open(cfg("r1"))
    receipts = {w: r1.submit(w, f"s-{w}", share(i)) for i, w in enumerate(WORKERS[:6])}
    r1.fix_participants({w: f"s-{w}" for w in WORKERS[:5]} | {"w9": "s-w9"})
    r1.start_validation()
    r1.start_distances()
    r2 = b1.open(cfg("r2"))
    r2.submit("w0", "s-w0-r2", share(100))
    before = {r.round_id: r.status_dict() for r in (r1, r2)}

    b2 = book(tmp_path, "server-b", clock)  # a new process on the same directory
    restored = b2.restore()
    assert [r.round_id for r in restored] == ["r1", "r2"]
    for rnd in restored:
        assert rnd.status_dict() == before[rnd.round_id]
    again = b2.get("r1")
    assert again.state is S.DISTANCES
    assert again.participants == ("w0", "w1", "w2", "w3", "w4")
    # why w5 and w9 are left out is part of the restored state
    assert again.excluded["w5"].startswith("dropped out: only server-b")
    assert again.excluded["w9"].startswith("dropped out: server-b never received")
    for w, receipt in receipts.items():
        sub = again.submission(w)
        assert sub.receipt == receipt
        np.testing.assert_array_equal(sub.payload, share(WORKERS.index(w)))
    # the replay guard knows every digest again, across rounds
    r3 = b2.open(cfg("r3"))
    with pytest.raises(ReplayedSubmission):
        r3.submit("w7", "s", share(0))
    # an identical retry into a restored round gets the very same receipt
    assert b2.get("r2").submit("w0", "s-w0-r2", share(100)) == r2.submission("w0").receipt


def test_recovery_rewinds_an_interrupted_2pc_and_keeps_a_revealed_selection(
    tmp_path: Path,
) -> None:
    b1 = book(tmp_path, "server-a")
    rnd = b1.open(cfg("r1"))
    for i, w in enumerate(WORKERS[:7]):
        rnd.submit(w, f"s-{w}", seed(i))
    rnd.fix_participants(WORKERS[:7])
    rnd.start_validation()
    rnd.start_distances()
    rnd.start_selection()
    rnd.start_reveal(["w3"])

    rnd2 = book(tmp_path, "server-a").restore()[0]
    assert rnd2.state is S.REVEAL
    assert rnd2.rewind_2pc("server restarted")
    assert rnd2.state is S.PARTICIPANTS_FIXED
    assert not rnd2.rewind_2pc("again")  # nothing to rewind any more
    rnd2.start_validation()
    rnd2.start_distances()
    rnd2.start_selection()
    # the other server may have seen the first reveal: no different sum may be opened
    with pytest.raises(Exception, match="different"):
        rnd2.start_reveal(["w4"])
    rnd2.start_reveal(["w3"])
    rnd2.finish()
    assert book(tmp_path, "server-a").restore()[0].state is S.DONE


def test_finished_rounds_keep_receipts_but_drop_payloads(tmp_path: Path) -> None:
    b1 = book(tmp_path, "server-b")
    rnd = b1.open(cfg("r1", rule="mean", f=0, n_expected=2, skip_validation=True))
    r0 = rnd.submit("w0", "a", share(0))
    rnd.submit("w1", "b", share(1))
    rnd.fix_participants({"w0": "a", "w1": "b"})
    rnd.start_reveal(["w0", "w1"])
    rnd.finish()
    assert rnd.submission("w0").payload == b""  # freed in memory too
    again = book(tmp_path, "server-b").restore()[0]
    assert again.state is S.DONE and again.submission("w0").receipt == r0
    assert again.submission("w0").payload == b""
    assert again.submit("w0", "a", share(0)) == r0  # a late identical retry still works
    db = b1.store
    assert isinstance(db, SqliteStore)
    db.flush()  # the erasure runs after the terminal state is committed, off its path
    nulls = db._db.execute("SELECT COUNT(*) FROM submissions WHERE payload IS NULL").fetchone()
    assert nulls == (2,)
    # secure_delete: the erased shares' bytes are gone from the file, not just unlinked
    raw = (tmp_path / "server-b.db").read_bytes() + (tmp_path / "server-b.db-wal").read_bytes()
    assert share(0).astype("<i8").tobytes() not in raw


def test_shares_left_by_a_stop_before_the_erasure_are_erased_at_the_next_start(
    tmp_path: Path,
) -> None:
    b1 = book(tmp_path, "server-b")
    db = b1.store
    assert isinstance(db, SqliteStore)
    db._schedule_purge = lambda rid: None  # type: ignore[method-assign]  # "crash" first
    rnd = b1.open(cfg("r1", rule="mean", f=0, n_expected=2, skip_validation=True))
    rnd.submit("w0", "a", share(0))
    rnd.submit("w1", "b", share(1))
    rnd.fix_participants({"w0": "a", "w1": "b"})
    rnd.start_reveal(["w0", "w1"])
    rnd.finish()
    count = "SELECT COUNT(*) FROM submissions WHERE payload IS NULL"
    assert db._db.execute(count).fetchone() == (0,)
    b2 = book(tmp_path, "server-b")
    again = b2.restore()[0]
    assert again.state is S.DONE and again.submission("w1").payload == b""
    db2 = b2.store
    assert isinstance(db2, SqliteStore)
    db2.flush()
    assert db2._db.execute(count).fetchone() == (2,)


class _RecordingStore:
    """A store that records the order of events and can be told to fail or block."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.fail = False
        self.gate: threading.Event | None = None

    def save_round(self, snap: RoundSnapshot) -> None:
        self.events.append(f"state:{snap.state.value}")

    def add_submission(self, round_id: str, sub: Submission) -> None:
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            raise OSError("disk full")
        self.events.append(f"sub:{sub.worker_id}")

    def load(self) -> list[tuple[RoundSnapshot, list[Submission]]]:
        return []


def test_receipt_only_after_the_write_and_none_if_it_fails() -> None:
    st = _RecordingStore()
    bk = RoundBook(workers=WORKERS, server="server-a", clock=Clock(), store=st)
    rnd = bk.open(cfg())
    rnd.submit("w0", "s0", seed(0))
    assert st.events == ["state:open", "sub:w0", "state:collecting"]
    st.fail = True
    with pytest.raises(StorageError):
        rnd.submit("w1", "s1", seed(1))
    assert "w1" not in rnd.holdings()
    st.fail = False
    # the failed attempt left nothing behind: neither the slot nor the digest
    rnd.submit("w1", "s1", seed(1))
    assert rnd.received == 2


def test_writes_happen_outside_the_round_lock_and_fixing_waits_for_them() -> None:
    st = _RecordingStore()
    bk = RoundBook(workers=WORKERS, server="server-b", clock=Clock(), store=st)
    rnd = bk.open(cfg())
    for i in range(5):
        rnd.submit(f"w{i}", f"s{i}", seed(i))
    st.gate = threading.Event()  # the next write blocks
    writer = threading.Thread(target=rnd.submit, args=("w5", "s5", seed(5)))
    writer.start()
    # a slow disk does not stall status reads...
    assert rnd.to_proto().received == 5
    # ...a concurrent different payload for the same worker is refused at once...
    with pytest.raises(ConflictingSubmission):
        rnd.submit("w5", "other", seed(99))
    # ...and fixing the participants waits for the write in flight (its receipt may be
    # on its way), while refusing anything new
    fixed: list[list[str]] = []
    fixer = threading.Thread(target=lambda: fixed.append(rnd.fix_participants(WORKERS[:7])))
    fixer.start()
    fixer.join(0.2)
    assert fixer.is_alive()
    with pytest.raises(LateSubmission):
        rnd.submit("w6", "s6", seed(6))
    st.gate.set()
    writer.join(5)
    fixer.join(5)
    assert fixed == [WORKERS[:6]]  # w5, written while fixing began, is in
    assert rnd.state is S.PARTICIPANTS_FIXED


def test_outcomes_round_trip(tmp_path: Path) -> None:
    st = SqliteStore(tmp_path / "a.db", "server-a")
    agg = np.linspace(-1, 1, 5)
    dist = np.arange(9, dtype=np.float64).reshape(3, 3)
    st.save_outcome("r1", StoredOutcome(agg, 2, dist, [2, 0]))
    st.save_outcome("r2", StoredOutcome(agg, 3, None, [0, 1, 2]))
    got = SqliteStore(tmp_path / "a.db", "server-a").load_outcomes()
    np.testing.assert_array_equal(got["r1"].aggregate, agg)
    np.testing.assert_array_equal(got["r1"].distances, dist)
    assert got["r1"].selected == [2, 0] and got["r2"].distances is None


_KILLER = """
import os, signal, sys
import numpy as np
from secagg.rounds import RoundBook, RoundConfig
from secagg.store import SqliteStore
st = SqliteStore(sys.argv[1], "server-b")
bk = RoundBook(server="server-b", store=st)
rnd = bk.open(RoundConfig(round_id="r1", n_expected=5, f=1, rule="krum", dim=1000,
    scale=1.0, coord_bound=10.0, norm_bound=20.0, deadline_unix_ms=2**62))
receipt = rnd.submit("w0", "s0", np.arange(1000, dtype=np.int64))
print(receipt.accepted_unix_ms, flush=True)
os.kill(os.getpid(), signal.SIGKILL)   # no clean-up, no close(), no atexit
"""


def test_a_receipted_share_survives_sigkill_of_the_process(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", _KILLER, str(db)],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=60,
    )
    assert proc.returncode == -9, proc.stderr
    accepted_ms = int(proc.stdout.split()[0])
    rnd = RoundBook(server="server-b", store=SqliteStore(db, "server-b")).restore()[0]
    sub = rnd.submission("w0")
    assert sub.receipt.accepted_unix_ms == accepted_ms
    np.testing.assert_array_equal(sub.payload, np.arange(1000))
    assert rnd.state is S.COLLECTING


def test_round_restore_without_store_is_a_no_op() -> None:
    assert RoundBook().restore() == []
    assert isinstance(Round(cfg()).snapshot(), RoundSnapshot)
