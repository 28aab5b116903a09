"""Malformed and hostile input to every RPC: the servers answer precisely and survive.

Against a real deployment (A, B, dealer; TLS off so that the Admin and Peer services
can be reached with their tokens), hypothesis generates:

* raw request bytes for every method of Worker, Admin and Peer on both servers, with
  no, wrong or valid credentials (bad protobuf, truncations, nesting bombs, random
  bytes that happen to parse);
* structured SeedSubmission messages (any dim, any seed length, unknown rounds, other
  workers' ids, "NaN seeds");
* structured SubmitShare streams (empty streams, missing, repeated, out-of-order or
  oversized chunks, huge declared dims and offsets, NaN-pattern shares).

Every answer must be a precise status (never UNKNOWN, INTERNAL, or a timeout), both
servers must stay up and healthy, and their memory must not grow with the number of
requests. The module prints how many cases it tried.

"NaN seeds": a seed is 32 raw bytes keying AES-256-CTR, so the bytes of a float NaN are
as good a key as any; a share is int64 ring elements, so a stream of NaN float64 bit
patterns is a valid share (0x7FF8000000000000 is 9221120237041090560). Both are
accepted: the servers never read shares as floats. Whether the vector they
reconstruct is well formed is decided by the input-validation 2PC phase, not here.

Not fuzzed with valid Peer credentials: ``Peer.Session`` and phases of an existing
round. Only server A holds those credentials; a compromised A is outside the threat
model (it could simply stop the protocol).
"""

from __future__ import annotations

import os
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg import transport
from secagg.rounds import RoundConfig, payload_digest
from secagg.v1 import secagg_pb2 as pb
from servers.launcher import LocalDeployment

D = 64
IDS = [f"f{i}" for i in range(8)]
FUZZERS = IDS[:4]  # the round needs all 8, so fuzzed submissions never start it

#: Answers that say precisely what was wrong (or OK). UNKNOWN, INTERNAL, UNAVAILABLE
#: and DEADLINE_EXCEEDED would mean a crash, an unhandled error or a hang.
PRECISE = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
NAN8 = struct.pack("<d", float("nan"))
CASES: Counter[str] = Counter()
#: SECAGG_FUZZ_SCALE=k multiplies every case count and draws new random cases (CI
#: runs the default: the same derandomized cases every time, ~25 s).
SCALE = max(1, int(os.environ.get("SECAGG_FUZZ_SCALE", "1")))
FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=SCALE == 1,
    database=None,
)


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Target:
    """The deployment plus one open channel per server (reused across cases)."""

    def __init__(self, dep: LocalDeployment, rid: str) -> None:
        self.dep = dep
        self.rid = rid
        self.channels = {
            "a": grpc.insecure_channel(dep.addr_a, options=transport.channel_options()),
            "b": grpc.insecure_channel(dep.addr_b, options=transport.channel_options()),
        }
        self.peer_token = (dep.workdir / "peer-token").read_text().strip()
        self.rss0: dict[str, int] = {}

    def md(self, kind: str, wid: str = FUZZERS[0]) -> tuple[tuple[str, str], ...]:
        if kind == "worker":
            return transport.worker_metadata(wid, self.dep.tokens[wid])
        if kind == "bad-token":
            return transport.worker_metadata(wid, "not-the-token")
        if kind == "admin":
            return (("authorization", f"Bearer {self.dep.admin_token}"),)
        if kind == "peer":
            return (("authorization", f"Bearer {self.peer_token}"),)
        return ()

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    dep = LocalDeployment(tmp_path_factory.mktemp("fuzz"), IDS, tls=False, mpc_timeout_s=30)
    dep.start()
    t = Target(dep, "")
    t.rid = open_round(t)
    t.rss0 = {s: _rss_kb(dep.procs[n].pid) for s, n in (("a", "server-a"), ("b", "server-b"))}
    yield t
    rss1 = {s: _rss_kb(dep.procs[n].pid) for s, n in (("a", "server-a"), ("b", "server-b"))}
    total = sum(CASES.values())
    print(
        f"\nfuzz: {total} cases ({dict(sorted(CASES.items()))}); RSS KiB before -> after: "
        f"A {t.rss0['a']} -> {rss1['a']}, B {t.rss0['b']} -> {rss1['b']}"
    )
    t.close()
    dep.stop()


def open_round(t: Target) -> str:
    """A mean round that needs all 8 workers, open for an hour: it never starts."""
    from secagg.v1 import secagg_pb2_grpc as pbg

    rid = f"fuzz-{uuid.uuid4().hex[:8]}"
    cfg = RoundConfig(
        round_id=rid,
        n_expected=len(IDS),
        f=0,
        rule="mean",
        dim=D,
        scale=1.0,
        coord_bound=10.0,
        norm_bound=20.0,
        deadline_unix_ms=int((time.time() + 3600) * 1000),
    )
    pbg.AdminStub(t.channels["a"]).OpenRound(cfg.to_proto(), metadata=t.md("admin"), timeout=30)
    return rid


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        result = call()
        if isinstance(result, Iterator):  # server-streaming: the status comes at the end
            for _ in result:
                pass
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _assert_alive(t: Target) -> None:
    for name in ("server-a", "server-b", "dealer"):
        assert t.dep.procs[name].poll() is None, f"{name} died: {t.dep.log_text(name)[-2000:]}"
    assert t.dep.health("server-a") and t.dep.health("server-b")


# ------------------------------------------------------------------ raw bytes
def _methods() -> list[tuple[str, str, bool, bool]]:
    out = []
    for svc in pb.DESCRIPTOR.services_by_name.values():
        for m in svc.methods:
            out.append((svc.name, m.name, m.client_streaming, m.server_streaming))
    return out


METHODS = _methods()

_raw_bytes = st.one_of(
    st.binary(max_size=512),
    st.binary(min_size=1, max_size=64).map(lambda b: b * 50),  # repetitive, larger
    st.integers(1, 3000).map(lambda n: b"\x0b" * n),  # nested groups: a recursion bomb
    st.integers(1, 200).map(lambda n: b"\x0a\xff\xff\xff\xff\x0f" * n),  # huge lengths
    st.builds(  # a valid message, truncated or with a byte flipped
        lambda cut, flip: _valid_seed_bytes()[:cut] + bytes([flip]),
        st.integers(0, 60),
        st.integers(0, 255),
    ),
)


def _valid_seed_bytes() -> bytes:
    return pb.SeedSubmission(
        round_id="r", worker_id=FUZZERS[0], seed=b"\x01" * 32, dim=D, submission_id="s"
    ).SerializeToString()


@settings(FUZZ, max_examples=1500 * SCALE)
@given(
    method=st.sampled_from(METHODS),
    server=st.sampled_from(["a", "b"]),
    creds=st.sampled_from(["none", "worker", "bad-token", "admin", "peer"]),
    payloads=st.lists(_raw_bytes, min_size=0, max_size=4),
)
def test_raw_bytes_to_every_rpc(
    target: Target,
    method: tuple[str, str, bool, bool],
    server: str,
    creds: str,
    payloads: list[bytes],
) -> None:
    service, name, client_stream, server_stream = method
    if service == "Peer" and name == "Session" and creds == "peer":
        creds = "none"  # see the module docstring
    path = f"/secagg.v1.{service}/{name}"
    ch = target.channels[server]
    md = target.md(creds)
    first = payloads[0] if payloads else b""
    if client_stream:
        call = ch.stream_unary(path)
        code = _code(lambda: call(iter(payloads), metadata=md, timeout=20))
    elif server_stream:
        call = ch.unary_stream(path)
        code = _code(lambda: call(first, metadata=md, timeout=20))
    else:
        call = ch.unary_unary(path)
        code = _code(lambda: call(first, metadata=md, timeout=20))
    CASES["raw"] += 1
    assert code in PRECISE, f"{path} with {creds!r} answered {code}"


# ------------------------------------------------------------ seed submissions
_ids = st.one_of(st.sampled_from(IDS), st.text(max_size=40), st.just(""))
_seeds = st.one_of(
    st.binary(max_size=80),
    st.just(NAN8 * 4),  # a "NaN seed": 32 valid key bytes
    st.binary(min_size=32, max_size=32),
)
_dims = st.one_of(st.just(D), st.integers(0, 2**64 - 1), st.sampled_from([0, 1, D + 1, 2**63]))


@settings(FUZZ, max_examples=600 * SCALE)
@given(
    rid=st.one_of(st.just("__fuzz_round__"), _ids),
    claimed=_ids,
    who=st.sampled_from(FUZZERS),
    seed=_seeds,
    dim=_dims,
    sid=st.one_of(st.text(max_size=20), st.just("s")),
)
def test_seed_submissions(
    target: Target, rid: str, claimed: str, who: str, seed: bytes, dim: int, sid: str
) -> None:
    if rid == "__fuzz_round__":
        rid = target.rid
    msg = pb.SeedSubmission(round_id=rid, worker_id=claimed, seed=seed, dim=dim, submission_id=sid)
    call = target.channels["a"].unary_unary(
        "/secagg.v1.Worker/SubmitSeed",
        request_serializer=pb.SeedSubmission.SerializeToString,
        response_deserializer=pb.Receipt.FromString,
    )
    code = _code(lambda: call(msg, metadata=target.md("worker", who), timeout=20))
    CASES["seed"] += 1
    assert code in PRECISE
    if code is grpc.StatusCode.OK:  # only a well-formed submission of the caller
        assert claimed == who and rid == target.rid and len(seed) == 32 and dim == D


# -------------------------------------------------------------- share streams
_chunk = st.fixed_dictionaries(
    {
        "round": st.one_of(st.just("__fuzz_round__"), st.just(""), _ids),
        "worker": st.one_of(st.just("__me__"), st.just(""), _ids),
        "dim": st.one_of(st.just(D), _dims),
        "sid": st.sampled_from(["", "s1", "s2"]),
        "offset": st.one_of(st.just(-1), st.integers(0, 2 * D), st.just(2**63), st.just(2**64 - 1)),
        "data": st.one_of(
            st.integers(0, D).map(lambda k: NAN8 * k),  # NaN float bits: valid int64
            st.binary(max_size=600),
            st.integers(0, 20).map(lambda k: b"\x00" * (8 * k + 3)),  # not whole elements
        ),
    }
)


@settings(FUZZ, max_examples=800 * SCALE)
@given(who=st.sampled_from(FUZZERS), chunks=st.lists(_chunk, max_size=6))
def test_share_streams(target: Target, who: str, chunks: list[dict[str, object]]) -> None:
    msgs = []
    expected = 0
    for c in chunks:
        offset = c["offset"]
        if offset == -1:  # "the right offset": lets some streams go deep
            offset = expected
        data = c["data"]
        assert isinstance(data, bytes) and isinstance(offset, int)
        expected = (offset + len(data) // 8) % 2**64  # uint64 on the wire
        msgs.append(
            pb.ShareChunk(
                round_id=target.rid if c["round"] == "__fuzz_round__" else c["round"],
                worker_id=who if c["worker"] == "__me__" else c["worker"],
                dim=c["dim"],
                submission_id=c["sid"],
                offset=offset,
                data=data,
            )
        )
    call = target.channels["b"].stream_unary(
        "/secagg.v1.Worker/SubmitShare",
        request_serializer=pb.ShareChunk.SerializeToString,
        response_deserializer=pb.Receipt.FromString,
    )
    code = _code(lambda: call(iter(msgs), metadata=target.md("worker", who), timeout=20))
    CASES["share"] += 1
    assert code in PRECISE


# ------------------------------------------------------- exact, documented cases
def test_documented_refusals_and_acceptances(target: Target) -> None:
    from secagg.v1 import secagg_pb2_grpc as pbg

    a, b = pbg.WorkerStub(target.channels["a"]), pbg.WorkerStub(target.channels["b"])
    who, md = IDS[5], target.md("worker", IDS[5])
    rid = target.rid

    def share(*chunks: tuple[int, bytes], dim: int = D, rnd: str = rid) -> grpc.StatusCode:
        msgs = [
            pb.ShareChunk(
                round_id=rnd if i == 0 else "",
                worker_id=who if i == 0 else "",
                dim=dim if i == 0 else 0,
                submission_id="doc",
                offset=off,
                data=data,
            )
            for i, (off, data) in enumerate(chunks)
        ]
        return _code(lambda: b.SubmitShare(iter(msgs), metadata=md, timeout=20))

    half = 8 * (D // 2)
    cases = {
        "empty stream": (share(), grpc.StatusCode.INVALID_ARGUMENT),
        "declared dim 2^64-1": (
            share((0, b"\0" * 8), dim=2**64 - 1),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "offset 2^63": (share((2**63, b"\0" * 8)), grpc.StatusCode.INVALID_ARGUMENT),
        "missing middle chunk": (
            share((0, b"\0" * 16), (4, b"\0" * 8)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "out of order": (
            share((0, b"\0" * half), (D // 2 + 1, b"\0" * 8), (D // 2, b"\0" * 8)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "stream ends early": (share((0, b"\0" * half)), grpc.StatusCode.INVALID_ARGUMENT),
        "past the declared dim": (
            share((0, b"\0" * 8 * (D + 1))),
            grpc.StatusCode.OUT_OF_RANGE,
        ),
        "unknown round (share)": (
            share((0, b"\0" * 8 * D), rnd="no-such-round"),
            grpc.StatusCode.NOT_FOUND,
        ),
        "unknown round (seed)": (
            _code(
                lambda: a.SubmitSeed(
                    pb.SeedSubmission(
                        round_id="no-such-round", worker_id=who, seed=b"\1" * 32, dim=D
                    ),
                    metadata=md,
                    timeout=20,
                )
            ),
            grpc.StatusCode.NOT_FOUND,
        ),
        "unknown round (status)": (
            _code(lambda: a.GetRoundStatus(pb.RoundRef(round_id="nope"), metadata=md, timeout=20)),
            grpc.StatusCode.NOT_FOUND,
        ),
        "aggregate of an open round": (  # SHARE_ENCODING §11: the state is checked first
            _code(lambda: a.GetAggregate(pb.RoundRef(round_id=rid), metadata=md, timeout=20)),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        "bad protobuf": (
            _code(
                lambda: target.channels["a"].unary_unary("/secagg.v1.Worker/SubmitSeed")(
                    b"\xff\xff\xff\xff garbage", metadata=md, timeout=20
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "message over 4 MiB": (
            _code(
                lambda: a.SubmitSeed(
                    pb.SeedSubmission(round_id=rid, worker_id=who, seed=b"\0" * (5 << 20)),
                    metadata=md,
                    timeout=20,
                )
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
        "open a round with dim 2^40": (
            _code(
                lambda: pbg.AdminStub(target.channels["a"]).OpenRound(
                    pb.RoundConfig(
                        round_id="huge",
                        n_expected=2,
                        rule=pb.RULE_MEAN,
                        dim=2**40,
                        scale=1.0,
                        coord_bound=1.0,
                        norm_bound=1.0,
                        deadline_unix_ms=int(time.time() * 1000) + 60_000,
                    ),
                    metadata=target.md("admin"),
                    timeout=20,
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "peer RPC without A's token": (
            _code(
                lambda: pbg.PeerStub(target.channels["b"]).Session(
                    pb.SessionRequest(epoch="x", join=True), timeout=20
                )
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
    }
    CASES["documented"] += len(cases)
    wrong = {k: (got, want) for k, (got, want) in cases.items() if got != want}
    assert not wrong, wrong

    # A NaN seed is a key like any other, a NaN-pattern share a vector of int64s. (Other
    # NaN bit patterns than the fuzzers': a payload accepted before, in any round and
    # from any worker, is refused as a replay.)
    rid = open_round(target)
    nan_seed = struct.pack("<Q", 0x7FF0_0000_0000_0001) * 4  # signalling NaNs
    nan_share = np.frombuffer(struct.pack("<Q", 0xFFF8_0000_0000_0000) * D, "<i8").copy()
    ra = a.SubmitSeed(
        pb.SeedSubmission(round_id=rid, worker_id=who, seed=nan_seed, dim=D, submission_id="n"),
        metadata=md,
        timeout=20,
    )
    rb = b.SubmitShare(
        transport.share_chunk_messages(rid, who, "n", nan_share), metadata=md, timeout=20
    )
    assert ra.digest == payload_digest(nan_seed) and rb.digest == payload_digest(nan_share)
    CASES["documented"] += 2
    _assert_alive(target)


def test_a_flood_of_bad_and_parallel_requests(target: Target) -> None:
    """Hundreds of concurrent garbage calls, unauthenticated and stalled uploads, and
    parallel uploads by one worker: all answered precisely, servers unharmed."""
    ch_a, ch_b = target.channels["a"], target.channels["b"]
    raw = ch_a.unary_unary("/secagg.v1.Worker/SubmitSeed")
    up = ch_b.stream_unary("/secagg.v1.Worker/SubmitShare")

    def stalled() -> Iterator[bytes]:  # a header, then silence until the deadline
        yield pb.ShareChunk(
            round_id=target.rid,
            worker_id=IDS[6],
            dim=D,
            submission_id="slow",
            offset=0,
            data=b"\0" * 8,
        ).SerializeToString()
        time.sleep(3)

    def one(i: int) -> grpc.StatusCode:
        kind = i % 3
        if kind == 0:
            return _code(lambda: raw(bytes([i % 256]) * (i % 97), timeout=20))
        if kind == 1:  # no credentials: refused before anything is read
            return _code(lambda: up(iter([b"\x0a\x01x"] * 3), timeout=20))
        return _code(lambda: up(stalled(), metadata=target.md("worker", IDS[6]), timeout=1.5))

    with ThreadPoolExecutor(max_workers=48) as pool:
        codes = Counter(pool.map(one, range(300)))
    CASES["flood"] += 300
    stalled_codes = {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
    # the stalled uploads end at the *client's* deadline or are refused as parallel
    # uploads of one worker; everything else is answered precisely
    assert set(codes) <= PRECISE | stalled_codes, codes
    assert codes[grpc.StatusCode.RESOURCE_EXHAUSTED] > 0  # one upload per worker at a time
    _assert_alive(target)
    # and the worker whose uploads were stalled or refused can still upload normally,
    # once the server has seen the last stalled stream end (a condition, not a sleep)
    share = np.arange(D, dtype=np.int64)
    from secagg.v1 import secagg_pb2_grpc as pbg

    end = time.monotonic() + 120
    while True:
        try:
            receipt = pbg.WorkerStub(ch_b).SubmitShare(
                transport.share_chunk_messages(target.rid, IDS[6], "after-flood", share),
                metadata=target.md("worker", IDS[6]),
                timeout=20,
            )
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            assert time.monotonic() < end, "a stalled upload is still held after 120 s"
            time.sleep(0.05)
    assert receipt.digest == payload_digest(share)


def test_memory_stays_bounded(target: Target) -> None:
    """Runs last in this module: RSS after every case above, against the start."""
    _assert_alive(target)
    grew = {
        s: _rss_kb(target.dep.procs[n].pid) - target.rss0[s]
        for s, n in (("a", "server-a"), ("b", "server-b"))
    }
    # thousands of requests must not cost more than allocator noise (a leak of even
    # one 512-byte share per case would show); gRPC and sqlite caches settle early
    assert all(kb < 64 * 1024 for kb in grew.values()), grew
    # the flood's stalled request iterators each hold a gRPC consumer thread for up to
    # 3 s after their call ended: wait for those to finish; a leak never would
    end = time.monotonic() + 60
    while threading.active_count() >= 50 and time.monotonic() < end:
        time.sleep(0.1)
    assert threading.active_count() < 50
