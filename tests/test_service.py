"""The service end to end: server A, server B and the dealer as real processes on
loopback with TLS, 20 workers through the SDK, and the refusals a hostile network or a
Byzantine worker provokes. Every aggregate is checked against the plaintext reference
on the same encoded inputs."""

from __future__ import annotations

import json
import time
import uuid
import zlib

import grpc
import numpy as np
import pytest

from clients.admin import AdminClient
from clients.sdk import SecAggClient, SecAggClientError
from secagg import encoding, reference, sharing, transport
from secagg.rounds import RoundConfig
from secagg.v1 import secagg_pb2 as pb
from secagg.v1 import secagg_pb2_grpc as pbg
from servers.launcher import LocalDeployment

N, D = 20, 300
PARAMS = encoding.EncodingParams(scale=1.0, coord_bound=50.0, norm_bound=150.0)
IDS = [f"w{i:02d}" for i in range(N + 2)]  # two spare identities


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    d = LocalDeployment(tmp_path_factory.mktemp("deploy"), IDS, tls=True)
    d.start()
    yield d
    d.stop()


def admin(dep: LocalDeployment) -> AdminClient:
    return AdminClient(dep.control_a, dep.tls_for("admin"))


def client(dep: LocalDeployment, wid: str, token: str | None = None) -> SecAggClient:
    return SecAggClient(
        dep.addr_a,
        dep.addr_b,
        wid,
        token or dep.tokens[wid],
        tls=dep.worker_tls(),
        timeout_s=30,
        retries=1,
    )


def open_round(dep, rule, f, m=None, n=N, deadline_s=60.0, quorum=0) -> str:
    rid = f"r-{rule}-{uuid.uuid4().hex[:8]}"
    cfg = RoundConfig(
        round_id=rid,
        n_expected=n,
        f=f,
        rule=rule,
        m=m or 0,
        dim=D,
        scale=PARAMS.scale,
        coord_bound=PARAMS.coord_bound,
        norm_bound=PARAMS.norm_bound,
        quorum=quorum,
        deadline_unix_ms=int((time.time() + deadline_s) * 1000),
    )
    with admin(dep) as a:
        a.open_round(cfg)
    return rid


def workers_matrix(seed: int, n: int = N, byz: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=D) + rng.normal(size=(n, D)) * 0.5
    X[:byz] = -5 * X[:byz]  # sign-flipped attackers
    return X


def run_round(dep, X, rule, f, m=None):
    rid = open_round(dep, rule, f, m, n=len(X))
    for i, row in enumerate(X):
        with client(dep, IDS[i]) as c:
            c.submit(rid, row, PARAMS)
    with client(dep, IDS[0]) as c:
        agg = c.wait_for_result(rid, timeout_s=300)
    return rid, agg


@pytest.mark.parametrize(
    ("rule", "f", "m"),
    [
        ("mean", 0, None),
        ("krum", 3, None),
        ("multi-krum", 3, None),
        ("multi-krum", 3, 5),
        ("bulyan", 4, None),
    ],
)
def test_round_equals_plaintext_reference(dep, rule, f, m):
    X = workers_matrix(zlib.crc32(f"{rule}/{m}".encode()))  # stable across processes
    rid, agg = run_round(dep, X, rule, f, m)
    Xenc = np.stack([encoding.encode(r, PARAMS) for r in X])
    ref = reference.aggregate_encoded(Xenc, rule, f, m)
    # a worker sees the selected set; the rule's pick order is the operator's
    assert list(agg.selected) == sorted(IDS[i] for i in ref.selected)
    with admin(dep) as a:
        assert list(a.get_round_report(rid).status.selected) == [IDS[i] for i in ref.selected]
    want = encoding.decode(ref.encoded_sum, PARAMS, ref.divisor)
    np.testing.assert_allclose(agg.vector, want, rtol=0, atol=1e-12)
    # the float reference on the same (rounded) inputs: equal up to float rounding
    Xr = np.stack([encoding.decode(r, PARAMS) for r in Xenc])
    fref = reference.aggregate(Xr, rule, f, m)
    assert fref.selected == ref.selected
    np.testing.assert_allclose(agg.vector, fref.aggregate, rtol=0, atol=1e-9)
    # and on the raw inputs: within the encoding's resolution, except that Bulyan's
    # window choice may flip on the rare coordinates where two windows tie within it
    gap = np.abs(agg.vector - reference.aggregate(X, rule, f, m).aggregate)
    far = gap > encoding.resolution(PARAMS)
    assert far.mean() <= (0.01 if rule == "bulyan" else 0.0), (rule, int(far.sum()))
    with admin(dep) as a:
        rep = a.get_round_report(rid)
    Dm = np.asarray(rep.distances).reshape(N, N) if rule != "mean" else None
    if Dm is not None:
        np.testing.assert_allclose(Dm, reference.sq_distances_int(Xenc) / 2.0**32, rtol=1e-12)
    phases = {p.phase for p in rep.status.phases}
    assert "mpc.reveal" in phases or "mpc.bulyan_coordinate" in phases


def test_worker_that_reached_only_one_server_is_excluded_by_both(dep):
    n = 8
    X = workers_matrix(5, n=n, byz=1)
    rid = open_round(dep, "krum", 1, n=n, deadline_s=4.0)
    for i in range(n - 1):
        with client(dep, IDS[i]) as c:
            c.submit(rid, X[i], PARAMS)
    # the last worker's seed reaches A, its share never reaches B
    wid = IDS[n - 1]
    shares = sharing.split(encoding.encode(X[n - 1], PARAMS))
    with transport.make_channel(dep.addr_a, dep.worker_tls()) as ch:
        pbg.WorkerStub(ch).SubmitSeed(
            pb.SeedSubmission(
                round_id=rid, worker_id=wid, seed=shares.seed, dim=D, submission_id="drop"
            ),
            metadata=transport.worker_metadata(wid, dep.tokens[wid]),
            timeout=10,
        )
    with client(dep, IDS[0]) as c:
        agg = c.wait_for_result(rid, timeout_s=300)
        st_a, st_b = c.status(rid, "a"), c.status(rid, "b")
    assert list(st_a.participants) == list(st_b.participants) == IDS[: n - 1]
    Xenc = np.stack([encoding.encode(r, PARAMS) for r in X[: n - 1]])
    ref = reference.aggregate_encoded(Xenc, "krum", 1)
    np.testing.assert_allclose(agg.vector, encoding.decode(ref.encoded_sum, PARAMS, 1), atol=0)


def _status_code(fn) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code()


def test_auth_refusals(dep):
    rid = open_round(dep, "mean", 0, n=3)
    seed = b"\x01" * 32
    sub = pb.SeedSubmission(round_id=rid, worker_id=IDS[1], seed=seed, dim=D, submission_id="x")
    with transport.make_channel(dep.addr_a, dep.worker_tls()) as ch:
        stub = pbg.WorkerStub(ch)
        bad_token = transport.worker_metadata(IDS[1], "not-the-token")
        assert (
            _status_code(lambda: stub.SubmitSeed(sub, metadata=bad_token))
            == grpc.StatusCode.UNAUTHENTICATED
        )
        as_other = transport.worker_metadata(IDS[2], dep.tokens[IDS[2]])
        assert (
            _status_code(lambda: stub.SubmitSeed(sub, metadata=as_other))
            == grpc.StatusCode.PERMISSION_DENIED
        )
        # a worker on the worker port cannot use the Admin service (no client identity)
        adm = pbg.AdminStub(ch)
        assert (
            _status_code(lambda: adm.ListRounds(pb.ListRoundsRequest(), metadata=as_other))
            == grpc.StatusCode.PERMISSION_DENIED
        )
    with transport.make_channel(dep.addr_b, dep.worker_tls()) as ch:
        peer = pbg.PeerStub(ch)
        assert (
            _status_code(lambda: peer.FailRound(pb.FailRequest(round_id=rid, reason="x")))
            == grpc.StatusCode.PERMISSION_DENIED
        )
    # the control port requires a client certificate from the CA
    with transport.make_channel(dep.control_b, dep.worker_tls()) as ch:
        peer = pbg.PeerStub(ch)
        code = _status_code(lambda: peer.GetPeerStatus(pb.RoundRef(round_id=rid), timeout=5))
        assert code == grpc.StatusCode.UNAVAILABLE
    # the admin's certificate is a valid identity, but not server A's: Peer refuses it
    with transport.make_channel(dep.control_b, dep.tls_for("admin")) as ch:
        peer = pbg.PeerStub(ch)
        assert (
            _status_code(lambda: peer.GetPeerStatus(pb.RoundRef(round_id=rid)))
            == grpc.StatusCode.PERMISSION_DENIED
        )
    with client(dep, IDS[0], token="wrong") as c, pytest.raises(SecAggClientError):
        c.submit(rid, np.zeros(D), PARAMS)


def test_replay_into_another_round_is_rejected(dep):
    r1 = open_round(dep, "mean", 0, n=2)
    r2 = open_round(dep, "mean", 0, n=2)
    wid = IDS[3]
    md = transport.worker_metadata(wid, dep.tokens[wid])
    seed = sharing.split(encoding.encode(np.ones(D), PARAMS)).seed
    with transport.make_channel(dep.addr_a, dep.worker_tls()) as ch:
        stub = pbg.WorkerStub(ch)
        stub.SubmitSeed(
            pb.SeedSubmission(round_id=r1, worker_id=wid, seed=seed, dim=D, submission_id="s1"),
            metadata=md,
        )
        # the identical retry is a no-op with the same receipt
        again = stub.SubmitSeed(
            pb.SeedSubmission(round_id=r1, worker_id=wid, seed=seed, dim=D, submission_id="s1"),
            metadata=md,
        )
        assert again.worker_id == wid
        code = _status_code(
            lambda: stub.SubmitSeed(
                pb.SeedSubmission(round_id=r2, worker_id=wid, seed=seed, dim=D, submission_id="s1"),
                metadata=md,
            )
        )
        assert code == grpc.StatusCode.ALREADY_EXISTS


def test_oversized_and_malformed_messages_get_clear_status_and_server_survives(dep):
    rid = open_round(dep, "mean", 0, n=2)
    wid = IDS[4]
    md = transport.worker_metadata(wid, dep.tokens[wid])
    with transport.make_channel(dep.addr_a, dep.worker_tls()) as ch:
        stub = pbg.WorkerStub(ch)
        huge = pb.SeedSubmission(
            round_id=rid, worker_id=wid, seed=b"\0" * (5 << 20), dim=D, submission_id="big"
        )
        assert (
            _status_code(lambda: stub.SubmitSeed(huge, metadata=md))
            == grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        short = pb.SeedSubmission(
            round_id=rid, worker_id=wid, seed=b"\0" * 7, dim=D, submission_id="short"
        )
        assert (
            _status_code(lambda: stub.SubmitSeed(short, metadata=md))
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        wrong_dim = pb.SeedSubmission(
            round_id=rid, worker_id=wid, seed=b"\0" * 32, dim=D + 1, submission_id="dim"
        )
        assert (
            _status_code(lambda: stub.SubmitSeed(wrong_dim, metadata=md))
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        unknown = pb.SeedSubmission(
            round_id="no-such-round", worker_id=wid, seed=b"\0" * 32, dim=D, submission_id="u"
        )
        assert (
            _status_code(lambda: stub.SubmitSeed(unknown, metadata=md)) == grpc.StatusCode.NOT_FOUND
        )
        raw = ch.unary_unary("/secagg.v1.Worker/SubmitSeed")  # bytes in, bytes out
        code = _status_code(lambda: raw(b"\xff\xff\xff\xff garbage", metadata=md))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    with transport.make_channel(dep.addr_b, dep.worker_tls()) as ch:
        stub = pbg.WorkerStub(ch)

        def chunks(*items):
            yield pb.ShareChunk(
                round_id=rid, worker_id=wid, dim=D, submission_id="c", offset=0, data=items[0]
            )
            for off, data in items[1:]:
                yield pb.ShareChunk(offset=off, data=data)

        odd = lambda: stub.SubmitShare(chunks(b"\0" * 12), metadata=md)  # noqa: E731
        assert _status_code(odd) == grpc.StatusCode.INVALID_ARGUMENT
        gap = lambda: stub.SubmitShare(chunks(b"\0" * 80, (20, b"\0" * 8)), metadata=md)  # noqa: E731
        assert _status_code(gap) == grpc.StatusCode.INVALID_ARGUMENT
        too_much = lambda: stub.SubmitShare(chunks(b"\0" * 8 * (D + 1)), metadata=md)  # noqa: E731
        assert _status_code(too_much) == grpc.StatusCode.OUT_OF_RANGE  # past the declared dim
        empty = lambda: stub.SubmitShare(iter(()), metadata=md)  # noqa: E731
        assert _status_code(empty) in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.UNAUTHENTICATED,
        )
    # both servers still serve: health and a real round
    assert dep.health("server-a") and dep.health("server-b") and dep.health("dealer")
    X = workers_matrix(11, n=5, byz=1)
    _, agg = run_round(dep, X, "krum", 1)
    Xenc = np.stack([encoding.encode(r, PARAMS) for r in X])
    ref = reference.aggregate_encoded(Xenc, "krum", 1)
    np.testing.assert_allclose(agg.vector, encoding.decode(ref.encoded_sum, PARAMS, 1), atol=0)


def _submit_raw(dep, rid: str, wid: str, seed: bytes, share_b: np.ndarray) -> None:
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


@pytest.mark.parametrize("validate", [True, False])
def test_wraparound_worker_is_excluded_by_input_validation(dep, validate):
    n = 7
    X = workers_matrix(21, n=n, byz=0)
    rid = f"wrap-{uuid.uuid4().hex[:8]}"
    cfg = RoundConfig(
        round_id=rid,
        n_expected=n,
        f=1,
        rule="multi-krum",
        dim=D,
        scale=PARAMS.scale,
        coord_bound=PARAMS.coord_bound,
        norm_bound=PARAMS.norm_bound,
        skip_validation=not validate,
        deadline_unix_ms=int((time.time() + 60) * 1000),
    )
    with admin(dep) as a:
        a.open_round(cfg)
    for i in range(1, n):
        with client(dep, IDS[i]) as c:
            c.submit(rid, X[i], PARAMS)
    shares = sharing.split(encoding.encode(X[0], PARAMS))
    bad = shares.share_b.copy()
    with np.errstate(over="ignore"):
        bad[5] += np.int64(-(2**63))  # distances unchanged, coordinate 5 decodes to ~1.4e14
    _submit_raw(dep, rid, IDS[0], shares.seed, bad)
    with client(dep, IDS[1]) as c:
        agg = c.wait_for_result(rid, timeout_s=300)
    with client(dep, IDS[0]) as c:  # a worker sees its own exclusion, and no other's
        st_a, st_b = c.status(rid, "a"), c.status(rid, "b")
    if validate:
        for st in (st_a, st_b):
            assert [(e.worker_id, "input validation" in e.reason) for e in st.excluded] == [
                (IDS[0], True)
            ]
            assert IDS[0] not in st.participants
        # both servers projected every share as it arrived (A drew the seed at open and
        # sent it to B with PREPARE): only the secure comparison was left for the phase
        for name in ("server-a", "server-b"):
            events = [
                json.loads(line)
                for line in dep.log_text(name).splitlines()
                if '"validation_projections"' in line
            ]
            mine = [(e["precomputed"], e["at_phase"]) for e in events if e["round_id"] == rid]
            assert mine == [(n, 0)], (name, mine)
        Xenc = np.stack([encoding.encode(r, PARAMS) for r in X[1:]])
        ref = reference.aggregate_encoded(Xenc, "multi-krum", 1)
        np.testing.assert_array_equal(
            agg.vector, encoding.decode(ref.encoded_sum, PARAMS, ref.divisor)
        )
    else:
        assert not st_a.excluded and IDS[0] in st_a.participants
        if IDS[0] in agg.selected:  # Multi-Krum cannot tell: the distances are unchanged
            assert np.max(np.abs(agg.vector)) > 1e12


def test_validation_leaving_too_few_for_bulyan_fails_with_the_reason(dep):
    n = 7  # bulyan with f=1 needs 4f+3 = 7: one excluded worker is one too many
    X = workers_matrix(22, n=n, byz=0)
    rid = f"wrapb-{uuid.uuid4().hex[:8]}"
    cfg = RoundConfig(
        round_id=rid,
        n_expected=n,
        f=1,
        rule="bulyan",
        dim=D,
        scale=PARAMS.scale,
        coord_bound=PARAMS.coord_bound,
        norm_bound=PARAMS.norm_bound,
        deadline_unix_ms=int((time.time() + 60) * 1000),
    )
    with admin(dep) as a:
        a.open_round(cfg)
    for i in range(1, n):
        with client(dep, IDS[i]) as c:
            c.submit(rid, X[i], PARAMS)
    shares = sharing.split(encoding.encode(X[0], PARAMS))
    bad = shares.share_b.copy()
    with np.errstate(over="ignore"):
        bad[0] += np.int64(-(2**63))
    _submit_raw(dep, rid, IDS[0], shares.seed, bad)
    with client(dep, IDS[0]) as c:  # a worker sees its own exclusion, and no other's
        end = time.monotonic() + 300  # generous: a loaded CI machine
        while True:
            st = c.status(rid, "a")
            if st.state in (pb.ROUND_STATE_DONE, pb.ROUND_STATE_FAILED):
                break
            assert time.monotonic() < end, f"round still {st.state} after 300 s"
            time.sleep(0.1)
        st_b = c.status(rid, "b")
    assert st.state == pb.ROUND_STATE_FAILED
    assert "needs at least 7" in st.failure_reason, st.failure_reason
    for s in (st, st_b):
        assert [e.worker_id for e in s.excluded] == [IDS[0]]
