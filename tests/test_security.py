"""Security hardening (issue #15), against a real TLS deployment on loopback: who may
read what over the worker ports, and the refusals that keep data-dependent values and
unconfigured transitions out. SECURITY.md states the contract these tests check."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from clients.admin import AdminClient
from clients.sdk import SecAggClient
from secagg import encoding, reference, transport
from secagg.rounds import RoundConfig
from secagg.v1 import secagg_pb2 as pb
from secagg.v1 import secagg_pb2_grpc as pbg
from servers.launcher import LocalDeployment

N, D = 7, 64
PARAMS = encoding.EncodingParams(scale=1.0, coord_bound=50.0, norm_bound=150.0)
IDS = [f"s{i:02d}" for i in range(N + 3)]  # three registered workers never take part


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    d = LocalDeployment(tmp_path_factory.mktemp("secdep"), IDS, tls=True)
    # the servers inherit a core limit that allows dumps: they must lower it themselves
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    try:
        d.start()
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))
    yield d
    d.stop()


def _client(dep: LocalDeployment, wid: str) -> SecAggClient:
    return SecAggClient(
        dep.addr_a, dep.addr_b, wid, dep.tokens[wid], tls=dep.worker_tls(), timeout_s=30
    )


def _code(fn: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code()


def _open(dep: LocalDeployment, rule: str, f: int, n: int = N, **extra: Any) -> str:
    rid = f"sec-{rule}-{uuid.uuid4().hex[:8]}"
    cfg = RoundConfig(
        round_id=rid,
        n_expected=n,
        f=f,
        rule=rule,
        dim=D,
        scale=PARAMS.scale,
        coord_bound=PARAMS.coord_bound,
        norm_bound=PARAMS.norm_bound,
        deadline_unix_ms=int((time.time() + 60) * 1000),
        **extra,
    )
    with AdminClient(dep.control_a, dep.tls_for("admin")) as a:
        a.open_round(cfg)
    return rid


@pytest.fixture(scope="module")
def done_round(dep: LocalDeployment) -> tuple[str, np.ndarray]:
    """One finished Bulyan round of workers IDS[:N]."""
    rng = np.random.default_rng(15)
    center = rng.normal(size=D)
    X = center + rng.normal(size=(N, D)) * 0.5
    X[N - 1] = center  # the most central row comes last: the pick order is not sorted
    rid = _open(dep, "bulyan", 1)
    for i in range(N):
        with _client(dep, IDS[i]) as c:
            c.submit(rid, X[i], PARAMS)
    with _client(dep, IDS[0]) as c:
        c.wait_for_result(rid, timeout_s=120)
    return rid, X


# ------------------------------------------------------------ 1: who reads what
def _outsider_codes(addr: str, tls: transport.TlsConfig | None, rid: str) -> list:
    ref = pb.RoundRef(round_id=rid)
    bad = transport.worker_metadata(IDS[0], "not-the-token")  # no better than none
    with transport.make_channel(addr, tls) as ch:
        stub = pbg.WorkerStub(ch)
        return [
            _code(lambda: stub.GetRoundStatus(ref, timeout=20)),
            _code(lambda: list(stub.GetAggregate(ref, timeout=20))),
            _code(lambda: stub.GetRoundStatus(ref, metadata=bad, timeout=20)),
        ]


def test_an_outsider_with_only_the_ca_reads_nothing(dep: LocalDeployment, done_round) -> None:
    rid, _ = done_round
    for addr in (dep.addr_a, dep.addr_b):
        codes = _outsider_codes(addr, dep.worker_tls(), rid)
        assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 3, addr


def test_only_participants_read_the_aggregate(dep: LocalDeployment, done_round) -> None:
    rid, X = done_round
    outsider = IDS[N]  # registered, but not in this round
    with transport.make_channel(dep.addr_a, dep.worker_tls()) as ch:
        md = transport.worker_metadata(outsider, dep.tokens[outsider])
        code = _code(
            lambda: list(pbg.WorkerStub(ch).GetAggregate(pb.RoundRef(round_id=rid), metadata=md))
        )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    with _client(dep, IDS[3]) as c:
        agg = c.fetch_aggregate(rid)
    Xenc = np.stack([encoding.encode(r, PARAMS) for r in X])
    ref = reference.aggregate_encoded(Xenc, "bulyan", 1)
    np.testing.assert_array_equal(agg.vector, encoding.decode(ref.encoded_sum, PARAMS, ref.divisor))
    # a worker gets the selected set, not the rule's pick order
    assert list(agg.selected) == sorted(IDS[i] for i in ref.selected)


def test_a_worker_sees_no_timings_pick_order_or_other_exclusions(
    dep: LocalDeployment, done_round
) -> None:
    rid, _ = done_round
    with _client(dep, IDS[N + 1]) as c:  # any registered worker may read the status
        for server in ("a", "b"):
            st = c.status(rid, server)
            assert st.state == pb.ROUND_STATE_DONE and st.config.dim == D
            assert not st.phases, server
            assert list(st.selected) == sorted(st.selected), server
            assert not st.excluded


def test_the_operator_reads_everything_on_both_control_ports(
    dep: LocalDeployment, done_round
) -> None:
    rid, X = done_round
    Xenc = np.stack([encoding.encode(r, PARAMS) for r in X])
    ref = reference.aggregate_encoded(Xenc, "bulyan", 1)
    pick_order = [IDS[i] for i in ref.selected]
    assert pick_order != sorted(pick_order)  # else this test could not tell them apart
    for addr in (dep.control_a, dep.control_b):
        with transport.make_channel(addr, dep.tls_for("admin")) as ch:
            st = pbg.WorkerStub(ch).GetRoundStatus(pb.RoundRef(round_id=rid), timeout=20)
            assert st.phases and list(st.selected) == pick_order, addr
    with transport.make_channel(dep.control_a, dep.tls_for("admin")) as ch:
        stream = pbg.WorkerStub(ch).GetAggregate(pb.RoundRef(round_id=rid), timeout=20)
        header, _ = transport.read_aggregate_stream(stream)
    assert list(header.selected) == pick_order


def test_the_aggregate_is_serialised_once_and_reads_are_capped() -> None:
    """Each read used to serialise and hash the whole vector; now the outcome keeps one
    copy, and reads past the cap are refused before any work."""
    import asyncio
    from types import SimpleNamespace

    from servers import server_a

    out = server_a.Outcome(aggregate=np.arange(5, dtype=np.float64), divisor=1)
    first = out.wire()
    assert out.wire()[0] is first[0] and len(first[0]) == 40

    class Ctx:
        code: grpc.StatusCode | None = None

        async def abort(self, code: grpc.StatusCode, details: str) -> None:
            self.code = code
            raise RuntimeError(details)

    rnd = SimpleNamespace(
        round_id="r", state=server_a.RoundState.DONE, participants=("w",), selected=("w",)
    )

    async def reader(_ctx: object) -> str:
        return "w"

    fake = SimpleNamespace(
        _reader=reader,
        _round=lambda _rid: rnd,
        outcomes={"r": out},
        _aggregate_readers=server_a.MAX_AGGREGATE_READERS,
    )
    ctx = Ctx()

    async def read() -> None:
        async for _ in server_a.ServerA.GetAggregate(fake, pb.RoundRef(round_id="r"), ctx):
            pass

    with pytest.raises(RuntimeError, match="retry"):
        asyncio.run(read())
    assert ctx.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert fake._aggregate_readers == server_a.MAX_AGGREGATE_READERS  # nothing leaked


def _pid_core_limit(pid: int) -> str:
    with open(f"/proc/{pid}/limits") as fh:
        for line in fh:
            if line.startswith("Max core file size"):
                return line.split()[4]
    raise AssertionError("no core limit line")


@pytest.mark.skipif(not os.path.exists("/proc/self/limits"), reason="needs Linux /proc")
def test_server_processes_cannot_dump_core(dep: LocalDeployment) -> None:
    """9: a core dump of a server would hold shares, seeds and mask keys."""
    for name in ("server-a", "server-b", "dealer"):
        assert _pid_core_limit(dep.procs[name].pid) == "0", name


# ------------------------------------------------------------ 6: secret files
def _mode(p: os.PathLike[str] | str) -> int:
    return os.stat(p).st_mode & 0o777


def test_secret_files_are_private_from_creation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every later chmod suppressed (a crash right after creation), keys, tokens
    and their directory are still private: the mode is set when the file is created,
    not fixed up afterwards (umask 022 made write_text's files 0644)."""
    from secagg import cli

    monkeypatch.setattr(os, "chmod", lambda *a, **k: None)
    monkeypatch.setattr(Path, "chmod", lambda *a, **k: None)
    old = os.umask(0o022)
    try:
        dep = LocalDeployment(tmp_path / "dep", ["w0", "w1"], tls=True)
        dep.prepare()
        cli._write_secret_json(tmp_path / "plain.json", {"w0": "t"})
        secrets_ = [
            dep.workdir / "admin-token",
            dep.workdir / "peer-token",
            dep.workdir / "worker-tokens.json",
            *sorted(dep.pki.glob("*.key")),
            tmp_path / "plain.json",
        ]
        assert len(secrets_) > 6
        for p in secrets_:
            assert _mode(p) == 0o600, (p, oct(_mode(p)))
        assert _mode(dep.workdir) == 0o700, oct(_mode(dep.workdir))
        fd = transport.open_private_log(transport.private_dir(tmp_path / "logs") / "a.log")
        os.close(fd)
        assert _mode(tmp_path / "logs") == 0o700 and _mode(tmp_path / "logs" / "a.log") == 0o600
    finally:
        os.umask(old)


def test_a_running_deployment_keeps_its_logs_private(dep: LocalDeployment) -> None:
    logs = dep.workdir / "logs"
    assert _mode(logs) == 0o700 and _mode(dep.workdir) == 0o700
    for name in ("server-a", "server-b", "dealer"):
        assert _mode(logs / f"{name}.log") == 0o600, name


# ------------------------------------------------- 3: no data-dependent value leaks
def _submit_raw(dep: LocalDeployment, rid: str, wid: str, seed: bytes, share_b: np.ndarray) -> None:
    """A Byzantine worker's own upload: any seed and any ring vector."""
    md = transport.worker_metadata(wid, dep.tokens[wid])
    sid = uuid.uuid4().hex
    with transport.make_channel(dep.addr_a, dep.worker_tls()) as ch:
        pbg.WorkerStub(ch).SubmitSeed(
            pb.SeedSubmission(round_id=rid, worker_id=wid, seed=seed, dim=D, submission_id=sid),
            metadata=md,
            timeout=10,
        )
    with transport.make_channel(dep.addr_b, dep.worker_tls()) as ch:
        pbg.WorkerStub(ch).SubmitShare(
            transport.share_chunk_messages(rid, wid, sid, share_b), metadata=md, timeout=10
        )


def _operator_status(dep: LocalDeployment, addr: str, rid: str) -> pb.RoundStatus:
    with transport.make_channel(addr, dep.tls_for("admin")) as ch:
        return pbg.WorkerStub(ch).GetRoundStatus(pb.RoundRef(round_id=rid), timeout=20)


def _wait_terminal(dep: LocalDeployment, rid: str, timeout_s: float = 120) -> pb.RoundStatus:
    end = time.monotonic() + timeout_s
    while True:
        st = _operator_status(dep, dep.control_a, rid)
        if st.state in (pb.ROUND_STATE_DONE, pb.ROUND_STATE_FAILED) or time.monotonic() > end:
            return st
        time.sleep(0.1)


def test_a_wrapped_distance_fails_the_round_without_values_or_a_session_rebuild(
    dep: LocalDeployment,
) -> None:
    """Without validation a Byzantine worker can make its squared distances wrap to
    negative ring values; the rule refuses them. The failure reason that reaches B, the
    statuses and the logs must not carry any distance, and the MPC session (no 2PC step
    was in flight) must not be torn down."""
    from secagg import sharing

    rng = np.random.default_rng(3)
    X = rng.normal(size=D) + rng.normal(size=(N, D)) * 0.5
    rid = _open(dep, "krum", 1, skip_validation=True)
    for i in range(1, N):
        with _client(dep, IDS[i]) as c:
            c.submit(rid, X[i], PARAMS)
    x0 = encoding.encode(X[0], PARAMS)
    parts = sharing.split(x0)
    bad = parts.share_b.copy()
    bad[0] += np.int64(3 << 30)  # (3·2^30)^2 = 2^63 + 2^60: wraps to a negative int64
    broken_before = dep.log_text("server-a").count("mpc_session_broken")
    _submit_raw(dep, rid, IDS[0], parts.seed, bad)
    st_a = _wait_terminal(dep, rid)
    assert st_a.state == pb.ROUND_STATE_FAILED, st_a
    # the distances A saw, as the rule got them (int64, wrapped)
    enc = np.stack([encoding.encode(r, PARAMS) for r in X])
    enc[0] = x0
    enc[0, 0] += np.int64(3 << 30)
    with np.errstate(over="ignore"):
        diff = enc[:, None, :] - enc[None, :, :]
        Dring = (diff * diff).sum(axis=2)
    assert (Dring[0, 1:] < 0).all()
    secrets_ = {str(int(v)) for v in Dring.ravel() if v != 0}
    end = time.monotonic() + 30
    while _operator_status(dep, dep.control_b, rid).state != pb.ROUND_STATE_FAILED:
        assert time.monotonic() < end, "B never learned that the round failed"
        time.sleep(0.1)
    st_b = _operator_status(dep, dep.control_b, rid)
    texts = {
        "reason A": st_a.failure_reason,
        "reason B": st_b.failure_reason,
        "log A": dep.log_text("server-a"),
        "log B": dep.log_text("server-b"),
    }
    assert "refused the distances" in st_a.failure_reason, st_a.failure_reason
    for where, text in texts.items():
        leaked = [s for s in secrets_ if s in text]
        assert not leaked and "D[" not in text, (where, leaked[:3])
    # the session stayed up: nothing was marked broken, and the next round runs
    assert dep.log_text("server-a").count("mpc_session_broken") == broken_before
    rid2 = _open(dep, "mean", 0, n=3)
    for i in range(3):
        with _client(dep, IDS[i]) as c:
            c.submit(rid2, X[i], PARAMS)
    with _client(dep, IDS[0]) as c:
        c.wait_for_result(rid2, timeout_s=60)
    assert dep.log_text("server-a").count("mpc_session_broken") == broken_before


def test_too_few_projections_are_refused_at_open(dep: LocalDeployment) -> None:
    """k = 1 made the soundness bound one half; the minimum keeps it at 2^-20."""
    from clients.sdk import SecAggClientError
    from secagg import validation

    MIN_PROJECTIONS = getattr(validation, "MIN_PROJECTIONS", 20)  # noqa: N806
    for k in (1, MIN_PROJECTIONS - 1):
        with pytest.raises((SecAggClientError, ValueError)) as err:
            _open(dep, "mean", 0, n=3, projections=k)
        assert "projections" in str(err.value)
    _open(dep, "mean", 0, n=3, projections=MIN_PROJECTIONS)


# ------------------------------------------------- 5: n_expected and invitations
def _seed_to_a(dep: LocalDeployment, rid: str, wid: str) -> None:
    md = transport.worker_metadata(wid, dep.tokens[wid])
    with transport.make_channel(dep.addr_a, dep.worker_tls()) as ch:
        pbg.WorkerStub(ch).SubmitSeed(
            pb.SeedSubmission(
                round_id=rid, worker_id=wid, seed=os.urandom(32), dim=D, submission_id="s"
            ),
            metadata=md,
            timeout=10,
        )


def _share_to_b(dep: LocalDeployment, rid: str, wid: str) -> None:
    md = transport.worker_metadata(wid, dep.tokens[wid])
    share = np.random.default_rng().integers(-(2**62), 2**62, size=D, dtype=np.int64)
    with transport.make_channel(dep.addr_b, dep.worker_tls()) as ch:
        pbg.WorkerStub(ch).SubmitShare(
            transport.share_chunk_messages(rid, wid, "s", share), metadata=md, timeout=10
        )


def test_a_round_takes_at_most_n_expected_workers(dep: LocalDeployment) -> None:
    """Registered workers beyond n_expected are refused by both servers (B's memory and
    the prepared Gram pair are sized for n_expected). Only seeds reach A here, so its
    round stays in collection (B holds nothing) while the cap is tested."""
    rid = _open(dep, "mean", 0, n=3)
    for i in range(3):
        _seed_to_a(dep, rid, IDS[i])
    for i in (3, 4):
        with pytest.raises(grpc.RpcError) as err:
            _seed_to_a(dep, rid, IDS[i])
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value
        assert "n_expected=3" in (err.value.details() or "")
    # B on its own: a round only B knows, which no server A will fix meanwhile
    with transport.make_channel(dep.control_b, dep.tls_for("server-a")) as ch:
        rid_b = _round_on_b_only(dep, pbg.PeerStub(ch), "mean", 0, 3, fix=False)
    with pytest.raises(grpc.RpcError) as err:
        _share_to_b(dep, rid_b, IDS[5])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value


def test_an_invitation_list_admits_only_its_workers(dep: LocalDeployment) -> None:
    from clients.sdk import SecAggClientError

    rng = np.random.default_rng(6)
    X = rng.normal(size=(N, D))
    invited = (IDS[4], IDS[5], IDS[6])
    rid = _open(dep, "mean", 0, n=3, invited=invited)
    with _client(dep, IDS[0]) as c, pytest.raises(SecAggClientError) as err:
        c.submit(rid, X[0], PARAMS)
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "invitation list" in str(err.value)
    for w in invited:
        with _client(dep, w) as c:
            c.submit(rid, X[IDS.index(w)], PARAMS)
    with _client(dep, invited[0]) as c:
        assert c.wait_for_result(rid, timeout_s=60).vector.shape == (D,)
    # the list must name exactly n_expected registered workers
    for bad in ((IDS[4], IDS[5]), (IDS[4], IDS[5], "nobody")):
        with pytest.raises((SecAggClientError, ValueError)):
            _open(dep, "mean", 0, n=3, invited=bad)


# ------------------------------------- 9: B refuses what the configuration forbids
def _round_on_b_only(
    dep: LocalDeployment, peer: Any, rule: str, f: int, n: int, fix: bool = True, **extra: Any
) -> str:
    """A round that only B knows (opened as server A would), with n shares fixed."""
    from secagg import sharing

    rid = f"bonly-{uuid.uuid4().hex[:8]}"
    cfg = RoundConfig(
        round_id=rid,
        n_expected=n,
        f=f,
        rule=rule,
        dim=D,
        scale=PARAMS.scale,
        coord_bound=PARAMS.coord_bound,
        norm_bound=PARAMS.norm_bound,
        deadline_unix_ms=int((time.time() + 60) * 1000),
        **extra,
    )
    peer.OpenRound(cfg.to_proto(), timeout=20)
    rng = np.random.default_rng(9)
    entries = []
    for i in range(n):
        wid = IDS[i]
        parts = sharing.split(encoding.encode(rng.normal(size=D), PARAMS))
        md = transport.worker_metadata(wid, dep.tokens[wid])
        with transport.make_channel(dep.addr_b, dep.worker_tls()) as ch:
            pbg.WorkerStub(ch).SubmitShare(
                transport.share_chunk_messages(rid, wid, f"s{i}", parts.share_b),
                metadata=md,
                timeout=10,
            )
        entries.append(pb.ParticipantEntry(worker_id=wid, submission_id=f"s{i}"))
    if fix:
        peer.FixParticipants(pb.ParticipantsRequest(round_id=rid, entries=entries), timeout=20)
    return rid


def test_b_refuses_phases_and_selections_the_round_does_not_allow(dep: LocalDeployment) -> None:
    """Told by (a compromised or buggy) server A to skip the configured validation, or
    to open a selection the rule cannot produce, B refuses at once instead of running
    the 2PC. Runs last in this module: on a server without the checks it stalls B."""
    with transport.make_channel(dep.control_b, dep.tls_for("server-a")) as ch:
        peer = pbg.PeerStub(ch)
        rid = _round_on_b_only(dep, peer, "krum", 1, 5)
        ids = [IDS[i] for i in range(5)]

        def phase(p: int, selected: list[int], rid: str = rid) -> Any:
            return peer.RunPhase(
                pb.PhaseRequest(
                    round_id=rid, phase=p, participants=ids, selected=selected, session_id="x"
                ),
                timeout=15,
            )

        assert _code(lambda: phase(pb.PHASE_DISTANCES, [])) == grpc.StatusCode.FAILED_PRECONDITION
        rid2 = _round_on_b_only(dep, peer, "mean", 0, 3, skip_validation=True)
        ids = ids[:3]
        code = _code(lambda: phase(pb.PHASE_REVEAL, [0], rid2))  # one worker's vector
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        st = peer.GetPeerStatus(pb.RoundRef(round_id=rid2), timeout=10)
        assert st.state == pb.ROUND_STATE_PARTICIPANTS_FIXED  # nothing was opened


def test_a_expanded_seed_buffer_is_zeroed_after_the_round() -> None:
    """A keeps its share-matrix buffer between rounds (page faults); the expanded seeds
    it held are A's shares and must not survive the round in it."""
    from secagg import sharing
    from servers.precompute import MatrixBuffer
    from servers.server_a import _expand_seeds

    buf = MatrixBuffer()
    seeds = [bytes([i]) * 32 for i in range(3)]
    share = _expand_seeds(seeds, buf.view(3, 50))
    np.testing.assert_array_equal(share[1], sharing.share_a(seeds[1], 50))
    small = buf.view(2, 10)  # a smaller later round reuses the pages
    small.fill(7)
    wipe = getattr(buf, "wipe", None)
    assert wipe is not None, "MatrixBuffer has no wipe: A's shares outlive the round"
    wipe()
    assert not buf._flat.any()
