"""Crashes, dropouts and concurrency against real processes (issue #8).

One deployment (server A, server B, the dealer; TLS on; state directories on) serves
every test in order; processes are killed with SIGKILL and restarted in place, and
each test starts by making sure all three are back. Every aggregate is compared with
the plaintext reference on the same encoded inputs.

* durability: shares accepted before A or B is killed (during collection) are in the
  round after the restart, and identical retries get the very same receipt;
* A killed during the 2PC: the restarted A resumes and finishes the round;
* the dealer or B killed during the 2PC: the session is rebuilt and the round runs
  again from its fixed participants (every share is durable), then the next round;
* OpenRound is atomic (a caller giving up while B hangs still gets the round on both)
  and needs no MPC session (a round opened during a rebuild runs once it is back);
* a half-done submission is completed by calling submit() again, and a worker rides
  out a server restart within the round's deadline (issue #17);
* dropouts: a worker that reached one server is excluded by both, with the reason in
  the status; a quorum starts a round early; too few participants fail it, saying why;
* idempotent and first-write-wins submissions at the service level;
* 30 concurrent workers with d = 10^4;
* the same recoveries with the mutual-TLS MPC transport (its own deployment).
"""

from __future__ import annotations

import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from clients.admin import AdminClient
from clients.sdk import SecAggClient, SecAggClientError
from secagg import encoding, reference, sharing, transport
from secagg.rounds import RoundConfig, RoundState
from secagg.v1 import secagg_pb2 as pb
from secagg.v1 import secagg_pb2_grpc as pbg
from servers.launcher import LocalDeployment

D = 300
PARAMS = encoding.EncodingParams(scale=1.0, coord_bound=50.0, norm_bound=150.0)
IDS = [f"w{i:02d}" for i in range(32)]
PARTIES = ("server-a", "server-b", "dealer")
S = RoundState


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory):
    # a short MPC timeout bounds every wait should a recovery not happen
    # gloo here (its rendezvous-store recovery is the fragile part); the mtls fixture
    # below runs the kill tests over the TLS links, the deployments' default
    d = LocalDeployment(
        tmp_path_factory.mktemp("reliability"),
        IDS,
        tls=True,
        mpc_timeout_s=30,
        mpc_transport="gloo",
    )
    d.start()
    yield d
    d.stop()


@pytest.fixture(autouse=True)
def all_up(dep: LocalDeployment) -> None:
    """Whatever the previous test did, start with three healthy parties."""
    for name in PARTIES:
        if dep.procs[name].poll() is not None:
            dep.spawn(name)
    dep.wait_healthy(300)


# ---------------------------------------------------------------------- helpers
def client(dep: LocalDeployment, wid: str) -> SecAggClient:
    return SecAggClient(
        dep.addr_a, dep.addr_b, wid, dep.tokens[wid], tls=dep.worker_tls(), timeout_s=30
    )


def open_round(
    dep: LocalDeployment,
    rule: str,
    f: int,
    n: int,
    *,
    deadline_s: float = 90.0,
    quorum: int = 0,
    dim: int = D,
) -> str:
    rid = f"r-{rule}-{uuid.uuid4().hex[:8]}"
    cfg = RoundConfig(
        round_id=rid,
        n_expected=n,
        f=f,
        rule=rule,
        dim=dim,
        scale=PARAMS.scale,
        coord_bound=PARAMS.coord_bound,
        norm_bound=PARAMS.norm_bound,
        quorum=quorum,
        deadline_unix_ms=int((time.time() + deadline_s) * 1000),
    )
    with AdminClient(dep.control_a, dep.tls_for("admin")) as a:
        a.open_round(cfg)
    return rid


def vectors(seed: int, n: int, dim: int = D) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=dim) * 0.5 + rng.normal(size=(n, dim)) * 0.3
    X[0] = -2 * X[0]  # one outlier
    return X


def expected(X: np.ndarray, rule: str, f: int) -> tuple[list[int], np.ndarray]:
    Xenc = np.stack([encoding.encode(r, PARAMS) for r in X])
    ref = reference.aggregate_encoded(Xenc, rule, f)
    return list(ref.selected), encoding.decode(ref.encoded_sum, PARAMS, ref.divisor)


def submit_all(dep: LocalDeployment, rid: str, X: np.ndarray, ids: list[str]) -> None:
    for wid, row in zip(ids, X, strict=True):
        with client(dep, wid) as c:
            c.submit(rid, row, PARAMS)


def result(dep: LocalDeployment, rid: str, timeout_s: float = 300) -> object:
    with client(dep, IDS[0]) as c:
        return c.wait_for_result(rid, timeout_s=timeout_s)


def status(dep: LocalDeployment, rid: str, server: str, wid: str = IDS[0]) -> pb.RoundStatus:
    with client(dep, wid) as c:
        return c.status(rid, server)


def wait_for_state(
    dep: LocalDeployment, rid: str, states: set[S], timeout_s: float = 180
) -> pb.RoundStatus:
    end = time.monotonic() + timeout_s
    with client(dep, IDS[0]) as c:
        while True:
            st = c.status(rid, "a")
            if S.from_proto(st.state) in states:
                return st
            assert time.monotonic() < end, f"round stuck in {S.from_proto(st.state)}"
            time.sleep(0.02)


@dataclass
class Split:
    """One worker's submission, kept so that the very same bytes can be sent again."""

    rid: str
    wid: str
    sid: str
    seed: bytes
    share: np.ndarray

    @classmethod
    def of(cls, rid: str, wid: str, x: np.ndarray) -> Split:
        parts = sharing.split(encoding.encode(x, PARAMS))
        return cls(rid, wid, uuid.uuid4().hex, parts.seed, parts.share_b)

    def md(self, dep: LocalDeployment) -> tuple[tuple[str, str], ...]:
        return transport.worker_metadata(self.wid, dep.tokens[self.wid])

    def to_a(self, dep: LocalDeployment) -> pb.Receipt:
        msg = pb.SeedSubmission(
            round_id=self.rid,
            worker_id=self.wid,
            seed=self.seed,
            dim=int(self.share.shape[0]),
            submission_id=self.sid,
        )
        with transport.make_channel(dep.addr_a, dep.worker_tls()) as ch:
            return pbg.WorkerStub(ch).SubmitSeed(msg, metadata=self.md(dep), timeout=30)

    def to_b(self, dep: LocalDeployment) -> pb.Receipt:
        chunks = transport.share_chunk_messages(self.rid, self.wid, self.sid, self.share)
        with transport.make_channel(dep.addr_b, dep.worker_tls()) as ch:
            return pbg.WorkerStub(ch).SubmitShare(chunks, metadata=self.md(dep), timeout=30)


def refused(fn) -> grpc.StatusCode:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code()


def restart(dep: LocalDeployment, name: str) -> None:
    dep.kill(name)  # SIGKILL: no clean-up at all
    dep.spawn(name)
    dep.wait_healthy(300)


# ------------------------------------------------------------------------ tests
def test_shares_accepted_before_a_kill_are_in_the_round(dep: LocalDeployment) -> None:
    n, ids = 7, IDS[:7]
    X = vectors(1, n)
    rid = open_round(dep, "krum", 1, n)
    early = [Split.of(rid, w, x) for w, x in zip(ids[:4], X[:4], strict=True)]
    first = [(s.to_a(dep), s.to_b(dep)) for s in early]

    restart(dep, "server-b")  # B killed while collecting
    # the stored share and its receipt came back: an identical retry is a no-op
    assert early[0].to_b(dep) == first[0][1]
    # and the first write still wins
    other = Split.of(rid, ids[1], X[1] + 1.0)
    other.sid = early[1].sid
    assert refused(lambda: other.to_b(dep)) == grpc.StatusCode.ALREADY_EXISTS

    restart(dep, "server-a")  # A killed while collecting (it coordinates the round)
    assert early[2].to_a(dep) == first[2][0]
    assert refused(lambda: other.to_a(dep)) == grpc.StatusCode.ALREADY_EXISTS
    st = status(dep, rid, "a")
    assert S.from_proto(st.state) is S.COLLECTING and st.received == 4

    submit_all(dep, rid, X[4:], ids[4:])
    agg = result(dep, rid)
    sel, want = expected(X, "krum", 1)
    assert list(agg.selected) == [ids[i] for i in sel]
    np.testing.assert_array_equal(agg.vector, want)
    for server in ("a", "b"):
        assert list(status(dep, rid, server).participants) == ids


def test_server_a_killed_during_the_2pc_resumes_the_round(dep: LocalDeployment) -> None:
    n, f, ids = 11, 2, IDS[:11]
    X = vectors(2, n)
    rid = open_round(dep, "bulyan", f, n)
    submit_all(dep, rid, X, ids)
    st = wait_for_state(dep, rid, {S.REVEAL, S.DONE, S.FAILED})
    assert S.from_proto(st.state) is S.REVEAL  # Bulyan's secure stage takes seconds
    resumed_before = dep.log_text("server-a").count('"rewound": 1')
    restart(dep, "server-a")
    agg = result(dep, rid)
    sel, want = expected(X, "bulyan", f)
    assert list(agg.selected) == sorted(ids[i] for i in sel)  # a worker sees the set
    np.testing.assert_array_equal(agg.vector, want)
    # the restarted A found the round mid-2PC and ran it again
    assert dep.log_text("server-a").count('"rewound": 1') == resumed_before + 1
    assert S.from_proto(status(dep, rid, "b").state) is S.DONE


@pytest.mark.parametrize("victim", ["dealer", "server-b"])
def test_a_party_killed_during_the_2pc_the_round_is_run_again(
    dep: LocalDeployment, victim: str
) -> None:
    """Every share is durable: after the session rebuild the round runs again from its
    fixed participants and ends with the plaintext aggregate (issue #17, item 5)."""
    n, f, ids = 11, 2, IDS[:11]
    X = vectors(3, n)
    rid = open_round(dep, "bulyan", f, n)
    submit_all(dep, rid, X, ids)
    st = wait_for_state(dep, rid, {S.REVEAL, S.DONE, S.FAILED})
    assert S.from_proto(st.state) is S.REVEAL
    reruns_before = dep.log_text("server-a").count('"event": "round_rerun"')
    dep.kill(victim)
    dep.spawn(victim)
    agg = result(dep, rid, timeout_s=300)
    sel, want = expected(X, "bulyan", f)
    assert list(agg.selected) == sorted(ids[i] for i in sel)  # a worker's view: the set
    np.testing.assert_array_equal(agg.vector, want)
    assert dep.log_text("server-a").count('"event": "round_rerun"') == reruns_before + 1
    assert S.from_proto(status(dep, rid, "b").state) is S.DONE
    assert list(status(dep, rid, "b").participants) == ids

    # and the next round runs on the rebuilt session
    X2 = vectors(4, 7)
    rid2 = open_round(dep, "krum", 1, 7)
    submit_all(dep, rid2, X2, IDS[:7])
    agg = result(dep, rid2)
    _, want = expected(X2, "krum", 1)
    np.testing.assert_array_equal(agg.vector, want)


TWO_PC = {S.VALIDATION, S.DISTANCES, S.SELECTION, S.REVEAL}


@pytest.mark.parametrize("phase", [S.VALIDATION, S.DISTANCES])
@pytest.mark.parametrize("victim", ["server-a", "server-b", "dealer"])
def test_a_kill_at_any_2pc_phase_still_completes_the_round(
    dep: LocalDeployment, victim: str, phase: S
) -> None:
    """Every worker holds both receipts, so the round completes whoever dies, whenever:
    with the plaintext reference's selection and aggregate.

    A phase can be over before the kill lands (the whole 2PC takes ~0.1 s on an idle
    machine): the scenario is repeated, on a new round, until the log shows that the
    round was caught (A restarted it from its store, or ran it again after the session
    rebuild).
    """
    n, f, dim, ids = 11, 2, 50_000, IDS[:11]
    order = list(S)
    later = {s for s in TWO_PC if order.index(s) >= order.index(phase)}
    # what A's log says when a round was caught mid-2PC and run again
    mark = '"rewound": 1' if victim == "server-a" else '"event": "round_rerun"'
    for attempt in range(4):
        X = vectors(16 + attempt, n, dim) / 4.0
        rid = open_round(dep, "krum", f, n, dim=dim)
        submit_all(dep, rid, X, ids)  # both receipts, checked by the SDK
        before = dep.log_text("server-a").count(mark)
        st = wait_for_state(dep, rid, later | {S.DONE, S.FAILED})
        assert S.from_proto(st.state) in TWO_PC, S.from_proto(st.state)  # caught mid-2PC
        dep.kill(victim)
        dep.spawn(victim)
        agg = result(dep, rid, timeout_s=300)
        sel, want = expected(X, "krum", f)
        assert list(agg.selected) == [ids[i] for i in sel]
        np.testing.assert_array_equal(agg.vector, want)
        if dep.log_text("server-a").count(mark) > before:
            return  # it was caught mid-2PC, and recovered
        if victim == "dealer":
            # the distance and reveal phases use Gram pairs and masks fetched earlier
            # (PREPARE): a dealer that dies then need not disturb the round at all
            return
        dep.wait_healthy(300)
    pytest.fail(f"the 2PC always finished before {victim} was killed: lengthen it")


def test_a_round_opened_while_b_is_stopped_opens_on_both(dep: LocalDeployment) -> None:
    """The operator gives up on OpenRound (B hung): A still ends the opening, on both."""
    n, ids = 3, IDS[:3]
    X = vectors(14, n)
    rid = f"r-mean-{uuid.uuid4().hex[:8]}"
    cfg = RoundConfig(
        round_id=rid,
        n_expected=n,
        f=0,
        rule="mean",
        dim=D,
        scale=PARAMS.scale,
        coord_bound=PARAMS.coord_bound,
        norm_bound=PARAMS.norm_bound,
        deadline_unix_ms=int((time.time() + 60) * 1000),
    )
    b = dep.procs["server-b"]
    b.send_signal(signal.SIGSTOP)
    try:
        with AdminClient(dep.control_a, dep.tls_for("admin"), timeout_s=2, retries=0) as a:
            with pytest.raises(SecAggClientError) as err:
                a.open_round(cfg)
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        b.send_signal(signal.SIGCONT)


    def b_has_it() -> bool:
        try:
            return S.from_proto(status(dep, rid, "b").state) is S.OPEN
        except SecAggClientError as exc:
            assert exc.code == grpc.StatusCode.NOT_FOUND
            return False

    _wait_until(b_has_it, "B to have the round (A's forward, once B runs again)")
    submit_all(dep, rid, X, ids)
    agg = result(dep, rid)  # the coordinator runs: the round does not sit collecting
    np.testing.assert_array_equal(agg.vector, expected(X, "mean", 0)[1])
    assert list(status(dep, rid, "a").participants) == ids


def test_a_round_opened_during_a_session_rebuild_runs(dep: LocalDeployment) -> None:
    """OpenRound does not need the MPC session: the round collects, its 2PC waits."""
    n, ids = 3, IDS[:3]
    X = vectors(15, n)
    dep.kill("dealer")
    # A noticed (its probe pings the dealer) and is rebuilding, which cannot finish yet
    _wait_until(lambda: not dep.health("server-a"), "A to report the broken session")
    rid = open_round(dep, "mean", 0, n)
    submit_all(dep, rid, X, ids)
    dep.spawn("dealer")
    agg = result(dep, rid, timeout_s=300)
    np.testing.assert_array_equal(agg.vector, expected(X, "mean", 0)[1])


def test_a_worker_that_reached_one_server_is_excluded_and_recorded(
    dep: LocalDeployment,
) -> None:
    ids = IDS[:7]
    X = vectors(5, 7)
    rid = open_round(dep, "krum", 1, 7, deadline_s=5.0)
    submit_all(dep, rid, X[:5], ids[:5])
    Split.of(rid, ids[5], X[5]).to_a(dep)  # its share never reaches B
    Split.of(rid, ids[6], X[6]).to_b(dep)  # its seed never reaches A
    agg = result(dep, rid)  # proceeds at the deadline with the 5 complete workers
    _, want = expected(X[:5], "krum", 1)
    np.testing.assert_array_equal(agg.vector, want)
    st_a, st_b = status(dep, rid, "a"), status(dep, rid, "b")
    assert list(st_a.participants) == list(st_b.participants) == ids[:5]
    # a worker sees only its own exclusion (SECURITY.md): ask as each excluded worker
    why_a = {e.worker_id: e.reason for w in ids[5:] for e in status(dep, rid, "a", w).excluded}
    why_b = {e.worker_id: e.reason for w in ids[5:] for e in status(dep, rid, "b", w).excluded}
    assert set(why_a) == {ids[5]} and "dropped out" in why_a[ids[5]]
    assert why_b == {
        ids[5]: "dropped out: server-b never received its submission",
        ids[6]: "dropped out: only server-b received its submission",
    }


def test_quorum_starts_the_round_before_the_deadline(dep: LocalDeployment) -> None:
    X = vectors(6, 3)
    t0 = time.monotonic()
    rid = open_round(dep, "mean", 0, 8, quorum=3, deadline_s=600)
    submit_all(dep, rid, X, IDS[:3])
    agg = result(dep, rid, timeout_s=300)
    assert time.monotonic() - t0 < 300  # the quorum, not the 600 s deadline, started it
    _, want = expected(X, "mean", 0)
    np.testing.assert_array_equal(agg.vector, want)


def test_below_the_rules_minimum_the_round_fails_with_the_reason(
    dep: LocalDeployment,
) -> None:
    X = vectors(7, 4)
    rid = open_round(dep, "krum", 1, 7, deadline_s=3.0)  # Krum with f=1 needs 5
    submit_all(dep, rid, X, IDS[:4])
    with pytest.raises(SecAggClientError) as err:
        result(dep, rid, timeout_s=300)
    assert "needs at least 5" in err.value.details
    for server in ("a", "b"):
        st = status(dep, rid, server)
        assert S.from_proto(st.state) is S.FAILED and "needs at least 5" in st.failure_reason


def test_resubmission_is_a_no_op_and_the_first_write_wins(dep: LocalDeployment) -> None:
    rid = open_round(dep, "mean", 0, 2)
    x = vectors(8, 1)[0]
    sub = Split.of(rid, IDS[3], x)
    ra, rb = sub.to_a(dep), sub.to_b(dep)
    for _ in range(3):
        assert sub.to_a(dep) == ra and sub.to_b(dep) == rb  # same receipt, same time
    assert status(dep, rid, "a").received == status(dep, rid, "b").received == 1
    again = Split.of(rid, IDS[3], x)  # the same vector, split afresh
    assert refused(lambda: again.to_a(dep)) == grpc.StatusCode.ALREADY_EXISTS
    assert refused(lambda: again.to_b(dep)) == grpc.StatusCode.ALREADY_EXISTS
    again.sid = sub.sid  # even under the same submission id
    assert refused(lambda: again.to_b(dep)) == grpc.StatusCode.ALREADY_EXISTS
    # a replay of the accepted seed into another round is refused too
    rid2 = open_round(dep, "mean", 0, 2)
    replay = Split(rid2, IDS[3], sub.sid, sub.seed, sub.share)
    assert refused(lambda: replay.to_a(dep)) == grpc.StatusCode.ALREADY_EXISTS


def _received(dep: LocalDeployment, rid: str, server: str) -> int:
    return int(status(dep, rid, server).received)


def _wait_until(cond, what: str, timeout_s: float = 120) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_worker_completes_a_half_done_submission(dep: LocalDeployment) -> None:
    """B is down after A stored the seed: calling submit() again completes it."""
    n, ids = 3, IDS[:3]
    X = vectors(12, n)
    rid = open_round(dep, "mean", 0, n)
    dep.kill("server-b")
    c = SecAggClient(
        dep.addr_a,
        dep.addr_b,
        ids[0],
        dep.tokens[ids[0]],
        tls=dep.worker_tls(),
        timeout_s=30,
        retries=0,
        retry_until_deadline=False,
    )
    with c:
        with pytest.raises(SecAggClientError) as err:
            c.submit(rid, X[0], PARAMS)
        assert err.value.server == "server-b"
        assert _received(dep, rid, "a") == 1  # A holds the seed
        # a second vector is refused locally: B must never see two shares of one seed
        with pytest.raises(SecAggClientError, match="unfinished submission"):
            c.submit(rid, X[1], PARAMS)
        dep.spawn("server-b")
        dep.wait_healthy(300)
        got = c.submit(rid, X[0], PARAMS)  # the same call again: it completes
    assert got.server_a.submission_id == got.server_b.submission_id
    submit_all(dep, rid, X[1:], ids[1:])
    agg = result(dep, rid)
    np.testing.assert_array_equal(agg.vector, expected(X, "mean", 0)[1])
    assert list(status(dep, rid, "b").participants) == ids


def test_a_worker_rides_out_a_server_outage_within_the_deadline(dep: LocalDeployment) -> None:
    """With default retries, a B restart during the upload does not exclude anyone."""
    n, ids = 3, IDS[:3]
    X = vectors(13, n)
    rid = open_round(dep, "mean", 0, n, deadline_s=300)
    dep.kill("server-b")
    with ThreadPoolExecutor(max_workers=1) as pool:

        def submit_one() -> object:
            with client(dep, ids[0]) as c:
                return c.submit(rid, X[0], PARAMS)

        pending = pool.submit(submit_one)
        # the seed is in: the worker is now retrying B, which stays down a while
        _wait_until(lambda: _received(dep, rid, "a") == 1, "A to hold the seed")
        assert not pending.done()
        dep.spawn("server-b")
        dep.wait_healthy(300)
        got = pending.result(timeout=300)
    assert got.worker_id == ids[0]  # type: ignore[attr-defined]
    submit_all(dep, rid, X[1:], ids[1:])
    agg = result(dep, rid)
    np.testing.assert_array_equal(agg.vector, expected(X, "mean", 0)[1])
    assert list(status(dep, rid, "b").participants) == ids


def test_a_hung_server_b_shows_in_a_health_within_seconds(dep: LocalDeployment) -> None:
    """SIGSTOP: no error anywhere, only silence; A's heartbeat notices (issue #17)."""
    b = dep.procs["server-b"]
    b.send_signal(signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        _wait_until(lambda: not dep.health("server-a"), "A to report B hung", timeout_s=90)
        took = time.monotonic() - t0
    finally:
        b.send_signal(signal.SIGCONT)
    # ~10 s of silence, plus a heartbeat's own timeout, plus a loaded machine
    assert took < 45, took
    assert "server B has not answered for" in dep.log_text("server-a")
    _wait_until(lambda: dep.health("server-a"), "A to be SERVING again", timeout_s=120)


def test_thirty_concurrent_workers(dep: LocalDeployment) -> None:
    n, f, dim = 30, 3, 10_000
    ids = IDS[:n]
    X = vectors(9, n, dim) / 2.0
    rid = open_round(dep, "multi-krum", f, n, dim=dim)

    def one(i: int) -> str:
        with client(dep, ids[i]) as c:
            got = c.submit(rid, X[i], PARAMS)  # checks both receipts' digests
        return got.worker_id

    with ThreadPoolExecutor(max_workers=n) as pool:
        accepted = list(pool.map(one, range(n)))
    assert accepted == ids  # every one of them has both receipts
    agg = result(dep, rid)
    Xenc = np.stack([encoding.encode(r, PARAMS) for r in X])
    ref = reference.aggregate_encoded(Xenc, "multi-krum", f)
    assert list(agg.selected) == sorted(ids[i] for i in ref.selected)  # a worker sees the set
    np.testing.assert_array_equal(agg.vector, encoding.decode(ref.encoded_sum, PARAMS, ref.divisor))
    assert sorted(status(dep, rid, "b").participants) == ids


def test_recovery_over_the_mtls_transport(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The same session epochs rebuild a session whose MPC links are mutual TLS."""
    d = LocalDeployment(
        tmp_path_factory.mktemp("mtls"), IDS, tls=True, mpc_timeout_s=30, mpc_transport="mtls"
    )
    d.start()
    try:
        n, f, ids = 11, 2, IDS[:11]
        for victim in ("dealer", "server-b"):
            X = vectors(10, n)
            rid = open_round(d, "bulyan", f, n)
            submit_all(d, rid, X, ids)
            assert S.from_proto(wait_for_state(d, rid, {S.REVEAL, S.DONE}).state) is S.REVEAL
            d.kill(victim)
            d.spawn(victim)
            # run again on the rebuilt session, from the durable shares
            agg = result(d, rid, timeout_s=300)
            sel, want = expected(X, "bulyan", f)
            assert list(agg.selected) == sorted(ids[i] for i in sel)  # a worker's view: the set
            np.testing.assert_array_equal(agg.vector, want)
            d.wait_healthy(300)
        X2 = vectors(11, 7)
        rid2 = open_round(d, "krum", 1, 7)
        submit_all(d, rid2, X2, IDS[:7])
        np.testing.assert_array_equal(result(d, rid2).vector, expected(X2, "krum", 1)[1])
    finally:
        d.stop()
