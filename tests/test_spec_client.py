"""A worker written from ``proto/`` and ``proto/SHARE_ENCODING.md`` alone.

Nothing from the SDK or secagg's encoding/sharing/PRG code is imported: the client
below encodes, expands seeds and serialises shares with only ``struct`` and the
``cryptography`` AES primitive, talks to the real servers through the stubs generated
from the .proto, and checks the decoded aggregate itself. If the document and the
servers ever disagree, this test fails.

Beyond the honest round there is one test per rule the documents make normative: the
exact norm bound (§2.2) and its vectors (§8.4), the id grammar (§9), where a worker
reads a round's parameters and the selection's pick order (§10), a retry resending the
same submission (§3), and each refusal of the error table (§11) with its status code, a
refused stream storing nothing.
"""

from __future__ import annotations

import math
import os
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction

import grpc
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secagg.v1 import secagg_pb2 as pb  # generated from proto/, the wire contract
from secagg.v1 import secagg_pb2_grpc as pbg
from servers.launcher import LocalDeployment

M64 = 1 << 64
STEP = 1 << 20  # §5: chunks of at most 1 MiB
SC = grpc.StatusCode


def encode(x: list[float], scale: float) -> list[int]:  # §2: roundTiesToEven(scale·x·2^16)
    return [round(scale * v * 65536.0) for v in x]  # Python's round() is ties-to-even


def within_bounds(x: list[float], scale: float, c: float, bound: float) -> bool:
    """§2 steps 2 and 4: every |fl(scale·x_i)| <= C, then Σ x̃_i² <= ⌊(L·2^16)²⌋ exactly."""
    if any(not math.isfinite(scale * v) or abs(scale * v) > c for v in x):
        return False
    limit = Fraction(bound) * 65536  # L·2^16 is exact in binary64; square it exactly
    return sum(v * v for v in encode(x, scale)) <= math.floor(limit * limit)


def expand(seed: bytes, d: int) -> list[int]:  # §4: AES-256-CTR, zero counter block, LE int64
    ks = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor().update(bytes(8 * d))
    return list(struct.unpack(f"<{d}q", ks))


def signed(v: int) -> int:
    v %= M64
    return v - M64 if v >= 1 << 63 else v


def split(x: list[float], scale: float) -> tuple[bytes, bytes]:
    """§3 + §5: a fresh seed for A and the little-endian bytes of s_B for B."""
    seed = os.urandom(32)
    enc = encode(x, scale)
    s_b = [signed(a - b) for a, b in zip(enc, expand(seed, len(enc)), strict=True)]
    return seed, struct.pack(f"<{len(enc)}q", *s_b)


def test_vector_from_the_document():
    seed = bytes(range(32))
    x = encode([1.5, -0.25, 3.0e-4, 100.0, -7.0], 1.0)
    assert x == [98304, -16384, 20, 6553600, -458752]
    s_a = expand(seed, 5)
    assert s_a[0] == -3413929544732602126
    s_b = [signed(a - b) for a, b in zip(x, s_a, strict=True)]
    assert s_b[-1] == 4790936418954462194


# --------------------------------------------------------------- §2.2 / §8.4: the bound

_AT_LIMIT = [1073741823, 46340, 296, 19, 6, 5, 3]  # §8.4, in units of 2^-16


def test_norm_bound_vectors_from_the_document():
    at = [v / 65536.0 for v in _AT_LIMIT]
    assert encode(at, 1.0) == _AT_LIMIT and sum(v * v for v in _AT_LIMIT) == 2**60
    assert within_bounds(at, 1.0, 16384.0, 16384.0)  # equality is accepted
    assert within_bounds(at[::-1], 1.0, 16384.0, 16384.0)  # in any order
    over = at[:-1] + [4 / 65536.0]  # Σ x̃² = 2^60 + 7
    assert not within_bounds(over, 1.0, 16384.0, 16384.0)
    # what the document warns about: binary64 cannot see the excess
    assert math.sqrt(sum(t * t for t in over)) <= 16384.0
    assert math.hypot(*over) <= 16384.0
    # rounding to 2^-16 counts: ||x|| < L, yet Σ x̃² = 25·2^32 + 393217
    up = [3 + 2**-17 + 2**-20, 4 - 7 * 2**-20]
    assert math.hypot(*up) < 5.0 and encode(up, 1.0) == [196609, 262144]
    assert not within_bounds(up, 1.0, 10.0, 5.0)
    exact = [3.0, 4 - 2**-18 + 2**-20]
    assert encode(exact, 1.0) == [196608, 262144] and within_bounds(exact, 1.0, 10.0, 5.0)


def test_ids_grammar_from_the_document():
    import re

    ident = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # §9
    good = ["a", "0", "worker-007", "r.1_x", "A" * 128]
    bad = ["", "-a", ".a", "_a", "a b", "a/b", "é", "A" * 129]
    assert all(ident.fullmatch(v) for v in good)
    assert not any(ident.fullmatch(v) for v in bad)


# ------------------------------------------------------------------------ deployment


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    d = LocalDeployment(tmp_path_factory.mktemp("spec"), [f"s{i}" for i in range(5)], tls=True)
    d.start()
    yield d
    d.stop()


@contextmanager
def operator_channel(dep: LocalDeployment) -> Iterator[grpc.Channel]:
    """Server A's control port with the operator's certificate (CN "admin")."""
    ca = (dep.pki / "ca.pem").read_bytes()
    creds = grpc.ssl_channel_credentials(
        ca, (dep.pki / "admin.key").read_bytes(), (dep.pki / "admin.pem").read_bytes()
    )
    with grpc.secure_channel(dep.control_a, creds) as ch:
        yield ch


@contextmanager
def admin_stub(dep: LocalDeployment) -> Iterator[pbg.AdminStub]:
    with operator_channel(dep) as ch:
        yield pbg.AdminStub(ch)


@contextmanager
def worker_stubs(dep: LocalDeployment) -> Iterator[tuple[pbg.WorkerStub, pbg.WorkerStub]]:
    creds = grpc.ssl_channel_credentials((dep.pki / "ca.pem").read_bytes())
    with (
        grpc.secure_channel(dep.addr_a, creds) as ca_ch,
        grpc.secure_channel(dep.addr_b, creds) as cb_ch,
    ):
        yield pbg.WorkerStub(ca_ch), pbg.WorkerStub(cb_ch)


def md(dep: LocalDeployment, wid: str) -> tuple[tuple[str, str], ...]:
    return (("x-secagg-worker", wid), ("authorization", f"Bearer {dep.tokens[wid]}"))


def config(**over: object) -> pb.RoundConfig:
    base: dict[str, object] = {
        "round_id": f"spec-{uuid.uuid4().hex[:8]}",
        "n_expected": 5,
        "f": 0,
        "rule": pb.RULE_MEAN,
        "dim": 10,
        "scale": 1.0,
        "coord_bound": 10.0,
        "norm_bound": 20.0,
        "deadline_unix_ms": int((time.time() + 600) * 1000),
    }
    base.update(over)
    return pb.RoundConfig(**base)  # type: ignore[arg-type]


def open_round(dep: LocalDeployment, **over: object) -> pb.RoundConfig:
    cfg = config(**over)
    with admin_stub(dep) as adm:
        adm.OpenRound(cfg, timeout=30)
    return cfg


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def chunk_stream(
    cfg: pb.RoundConfig, wid: str, sid: str, blob: bytes, step: int = STEP
) -> Iterator[pb.ShareChunk]:
    """§5: the header on the first chunk, then offsets in elements."""
    for off in range(0, len(blob), step):
        c = pb.ShareChunk(offset=off // 8, data=blob[off : off + step])
        if off == 0:
            c.round_id, c.worker_id, c.dim, c.submission_id = cfg.round_id, wid, cfg.dim, sid
        yield c


def wait_final(stub: pbg.WorkerStub, dep: LocalDeployment, rid: str) -> pb.RoundStatus:
    end = time.monotonic() + 300  # generous: a loaded CI machine
    while True:
        st = stub.GetRoundStatus(pb.RoundRef(round_id=rid), metadata=md(dep, "s0"), timeout=30)
        if st.state in (pb.ROUND_STATE_DONE, pb.ROUND_STATE_FAILED):
            return st
        assert time.monotonic() < end, f"round {rid} still {st.state} after 300 s"
        time.sleep(0.1)


def submit(
    dep: LocalDeployment,
    wa: pbg.WorkerStub,
    wb: pbg.WorkerStub,
    cfg: pb.RoundConfig,
    wid: str,
    x: list[float],
) -> None:
    seed, blob = split(x, cfg.scale)
    sid = uuid.uuid4().hex
    wa.SubmitSeed(
        pb.SeedSubmission(
            round_id=cfg.round_id, worker_id=wid, seed=seed, dim=cfg.dim, submission_id=sid
        ),
        metadata=md(dep, wid),
        timeout=30,
    )
    wb.SubmitShare(chunk_stream(cfg, wid, sid, blob), metadata=md(dep, wid), timeout=30)


# ------------------------------------------------------------------- the honest round


def test_independent_client_round(dep):
    n, d, scale = 5, 300_000, 0.05  # 2.4 MB per share: three 1 MiB chunks
    rows = [[math.sin(i * 7 + k) * (1 + i) for k in range(d)] for i in range(n)]
    opened = open_round(
        dep,
        dim=d,
        scale=scale,
        coord_bound=5 * scale,
        norm_bound=150.0,  # after scaling: the largest row has norm about 97
        deadline_unix_ms=int((time.time() + 60) * 1000),
    )
    rid = opened.round_id
    with worker_stubs(dep) as (wa, wb):
        # §10: the parameters come from the round's status, not from the operator
        st = wa.GetRoundStatus(pb.RoundRef(round_id=rid), metadata=md(dep, "s1"), timeout=10)
        cfg = st.config
        assert (cfg.dim, cfg.scale, cfg.coord_bound, cfg.norm_bound) == (
            d,
            scale,
            5 * scale,
            150.0,
        )
        for i, row in enumerate(rows):
            assert within_bounds(row, cfg.scale, cfg.coord_bound, cfg.norm_bound)
            submit(dep, wa, wb, cfg, f"s{i}", row)
        st = wait_final(wa, dep, rid)
        assert st.state == pb.ROUND_STATE_DONE, st.failure_reason
        md0 = md(dep, "s0")
        data = b"".join(c.data for c in wa.GetAggregate(pb.RoundRef(round_id=rid), metadata=md0))
    agg = struct.unpack(f"<{d}d", data)
    enc_sum = [sum(col) for col in zip(*(encode(r, scale) for r in rows), strict=True)]
    want = [v / 65536.0 / scale / n for v in enc_sum]
    assert max(abs(a - b) for a, b in zip(agg, want, strict=True)) <= 1e-12


def test_multi_krum_selection_is_in_pick_order(dep):
    # §10: lowest Krum score first. On a line at 3, 1.4, 2.1, 1, 0 the scores (k = 3)
    # are 7.25, 2.61, 2.51, 2.37, 7.25 (×d): the picks s3, s2, s1 are not in id order
    n, f, d = 5, 0, 4
    offsets = [3.0, 1.4, 2.1, 1.0, 0.0]
    rows = [[o + 0.01 * k for k in range(d)] for o in offsets]
    opened = open_round(
        dep,
        n_expected=n,
        f=f,
        rule=pb.RULE_MULTI_KRUM,
        dim=d,
        coord_bound=10.0,
        norm_bound=20.0,
        deadline_unix_ms=int((time.time() + 60) * 1000),
    )
    ref = pb.RoundRef(round_id=opened.round_id)
    with worker_stubs(dep) as (wa, wb):
        for i, row in enumerate(rows):
            submit(dep, wa, wb, opened, f"s{i}", row)
        st = wait_final(wa, dep, opened.round_id)
        assert st.state == pb.ROUND_STATE_DONE, st.failure_reason
        head = next(iter(wa.GetAggregate(ref, metadata=md(dep, "s0")))).header
    with operator_channel(dep) as ch:  # the pick order is the operator's to see
        report = pbg.AdminStub(ch).GetRoundReport(ref, timeout=30)
        op_head = next(iter(pbg.WorkerStub(ch).GetAggregate(ref, timeout=30))).header
    enc = [encode(r, 1.0) for r in rows]
    dist = [[sum((a - b) ** 2 for a, b in zip(u, v, strict=True)) for v in enc] for u in enc]
    k = n - f - 2
    score = [sum(sorted(dist[i][j] for j in range(n) if j != i)[:k]) for i in range(n)]
    order = sorted(range(n), key=lambda i: (score[i], i))[: n - f - 2]  # default m
    want = [f"s{i}" for i in order]
    assert want != sorted(want)  # the check means something
    assert list(report.status.selected) == list(op_head.selected) == want
    assert [report.status.participants[i] for i in report.selected_indices] == want
    # a worker is shown the selected set (in pick order or sorted, §10)
    assert sorted(st.selected) == sorted(head.selected) == sorted(want)


# ------------------------------------------------------------ §10: failure and exclusion


def test_too_few_workers_fail_cleanly_on_both_servers(dep):
    # Krum with f = 1 needs 2f+3 = 5 participants; 4 arrive before the deadline
    opened = open_round(
        dep, n_expected=5, f=1, rule=pb.RULE_KRUM, deadline_unix_ms=int((time.time() + 8) * 1000)
    )
    rid = opened.round_id
    with worker_stubs(dep) as (wa, wb):
        for i in range(4):
            submit(dep, wa, wb, opened, f"s{i}", [0.1 * i] * opened.dim)
        st_a = wait_final(wa, dep, rid)
        st_b = wb.GetRoundStatus(pb.RoundRef(round_id=rid), metadata=md(dep, "s0"), timeout=10)
        err = refused(
            lambda: wa.SubmitSeed(
                pb.SeedSubmission(
                    round_id=rid,
                    worker_id="s4",
                    seed=os.urandom(32),
                    dim=opened.dim,
                    submission_id="late",
                ),
                metadata=md(dep, "s4"),
                timeout=10,
            )
        )
    assert err.code() == SC.FAILED_PRECONDITION
    for st in (st_a, st_b):
        assert st.state == pb.ROUND_STATE_FAILED
        assert "needs at least 5" in st.failure_reason, st.failure_reason
    assert "RuntimeError" not in st_a.failure_reason and "Traceback" not in st_a.failure_reason
    # a round failure with a reason, not a server error: no ERROR record for it in A's log
    lines = [ln for ln in dep.log_text("server-a").splitlines() if rid in ln]
    assert lines and not [ln for ln in lines if '"level": "ERROR"' in ln or '"exc"' in ln]


def test_mismatched_submission_ids_are_named_on_both_servers(dep):
    opened = open_round(dep, n_expected=4, deadline_unix_ms=int((time.time() + 8) * 1000))
    rid = opened.round_id
    with worker_stubs(dep) as (wa, wb):
        for i in range(3):
            submit(dep, wa, wb, opened, f"s{i}", [0.1 * i] * opened.dim)
        seed, blob = split([0.5] * opened.dim, 1.0)
        wa.SubmitSeed(
            pb.SeedSubmission(
                round_id=rid, worker_id="s3", seed=seed, dim=opened.dim, submission_id="one"
            ),
            metadata=md(dep, "s3"),
            timeout=30,
        )
        wb.SubmitShare(chunk_stream(opened, "s3", "two", blob), metadata=md(dep, "s3"), timeout=30)
        st_a = wait_final(wa, dep, rid)
        # the excluded worker reads its own exclusion on each server
        ref = pb.RoundRef(round_id=rid)
        own_a = wa.GetRoundStatus(ref, metadata=md(dep, "s3"), timeout=10)
        own_b = wb.GetRoundStatus(ref, metadata=md(dep, "s3"), timeout=10)
    with admin_stub(dep) as adm:
        op = adm.GetRoundReport(ref, timeout=30).status
    assert st_a.state == pb.ROUND_STATE_DONE, st_a.failure_reason
    assert list(st_a.participants) == ["s0", "s1", "s2"]
    for st in (own_a, own_b, op):
        why = {e.worker_id: e.reason for e in st.excluded}
        assert set(why) == {"s3"} and "different submission ids" in why["s3"], why


# ------------------------------------------------------------------ §11: OpenRound


def test_open_round_refuses_multi_krum_m_above_the_seeds_bound(dep):
    with admin_stub(dep) as adm:
        # n = 5, f = 1: 1 <= m <= n - f - 2 = 2
        cfg = config(n_expected=5, f=1, rule=pb.RULE_MULTI_KRUM, m=3)
        err = refused(lambda: adm.OpenRound(cfg, timeout=30))
        assert err.code() == SC.INVALID_ARGUMENT
        assert "1 <= m <= n - f - 2 = 2" in err.details(), err.details()
        adm.OpenRound(config(n_expected=5, f=1, rule=pb.RULE_MULTI_KRUM, m=2), timeout=30)


def test_open_round_states_the_validation_limit_on_the_norm_bound(dep):
    with admin_stub(dep) as adm:
        err = refused(lambda: adm.OpenRound(config(norm_bound=1000.0), timeout=30))
        assert err.code() == SC.INVALID_ARGUMENT
        assert "input validation" in err.details(), err.details()
        stated = float(err.details().split("lower norm_bound to at most ")[1].split()[0])
        assert 204.0 < stated < 204.4  # §2.3: about 204.3 for the defaults
        adm.OpenRound(config(norm_bound=stated, coord_bound=stated), timeout=30)  # admissible
        err = refused(lambda: adm.OpenRound(config(norm_bound=stated + 0.01), timeout=30))
        assert err.code() == SC.INVALID_ARGUMENT
        # without validation the ring's limit, L < 2^14.5, is what remains
        adm.OpenRound(config(norm_bound=20000.0, skip_validation=True), timeout=30)
        err = refused(
            lambda: adm.OpenRound(config(norm_bound=23171.0, skip_validation=True), timeout=30)
        )
        assert err.code() == SC.INVALID_ARGUMENT and "2^14.5" in err.details()


@pytest.mark.parametrize("rid", [".r", "-r", "r r", "r" * 129, ""])
def test_open_round_refuses_malformed_round_ids(dep, rid):
    with admin_stub(dep) as adm:
        err = refused(lambda: adm.OpenRound(config(round_id=rid), timeout=30))
    assert err.code() == SC.INVALID_ARGUMENT


# --------------------------------------------------------- §11: SubmitSeed (server A)


@pytest.fixture(scope="module")
def probe(dep) -> pb.RoundConfig:
    """An open round that the refusals below must leave untouched."""
    return open_round(dep)


def seed_msg(cfg: pb.RoundConfig, wid: str = "s1", **over: object) -> pb.SeedSubmission:
    base: dict[str, object] = {
        "round_id": cfg.round_id,
        "worker_id": wid,
        "seed": os.urandom(32),
        "dim": cfg.dim,
        "submission_id": uuid.uuid4().hex,
    }
    base.update(over)
    return pb.SeedSubmission(**base)  # type: ignore[arg-type]


_SEED_CASES = [
    ("short seed", {"seed": bytes(31)}, SC.INVALID_ARGUMENT),
    ("long seed", {"seed": bytes(33)}, SC.INVALID_ARGUMENT),
    ("dim", {"dim": 11}, SC.INVALID_ARGUMENT),
    ("submission id with a space", {"submission_id": "a b"}, SC.INVALID_ARGUMENT),
    ("submission id first char", {"submission_id": "-abc"}, SC.INVALID_ARGUMENT),
    ("submission id too long", {"submission_id": "a" * 129}, SC.INVALID_ARGUMENT),
    ("empty submission id", {"submission_id": ""}, SC.INVALID_ARGUMENT),
    ("unknown round", {"round_id": "no-such-round"}, SC.NOT_FOUND),
    ("another worker's id", {"worker_id": "s2"}, SC.PERMISSION_DENIED),
]


@pytest.mark.parametrize(("case", "over", "code"), _SEED_CASES, ids=[c[0] for c in _SEED_CASES])
def test_submit_seed_refusals(dep, probe, case, over, code):
    with worker_stubs(dep) as (wa, _):
        err = refused(
            lambda: wa.SubmitSeed(seed_msg(probe, **over), metadata=md(dep, "s1"), timeout=10)
        )
        st = wa.GetRoundStatus(pb.RoundRef(round_id=probe.round_id), metadata=md(dep, "s1"))
    assert err.code() == code, (case, err.details())
    assert st.received == 0  # nothing stored


def test_wrong_token_is_unauthenticated(dep, probe):
    bad = (("x-secagg-worker", "s1"), ("authorization", "Bearer not-the-token"))
    with worker_stubs(dep) as (wa, wb):
        e1 = refused(lambda: wa.SubmitSeed(seed_msg(probe), metadata=bad, timeout=10))
        e2 = refused(
            lambda: wb.SubmitShare(
                chunk_stream(probe, "s1", "x", bytes(8 * probe.dim)), metadata=bad, timeout=10
            )
        )
        e3 = refused(lambda: wa.SubmitSeed(seed_msg(probe), timeout=10))  # no metadata
    assert e1.code() == e2.code() == e3.code() == SC.UNAUTHENTICATED


def test_a_seed_reused_by_another_worker_is_refused(dep):
    cfg = open_round(dep)
    seed = os.urandom(32)
    with worker_stubs(dep) as (wa, _):
        wa.SubmitSeed(seed_msg(cfg, "s1", seed=seed), metadata=md(dep, "s1"), timeout=10)
        err = refused(
            lambda: wa.SubmitSeed(
                seed_msg(cfg, "s2", seed=seed), metadata=md(dep, "s2"), timeout=10
            )
        )
        st = wa.GetRoundStatus(pb.RoundRef(round_id=cfg.round_id), metadata=md(dep, "s1"))
    assert err.code() == SC.ALREADY_EXISTS and st.received == 1


def test_wrong_server_is_unimplemented(dep, probe):
    with worker_stubs(dep) as (wa, wb):
        e1 = refused(lambda: wb.SubmitSeed(seed_msg(probe), metadata=md(dep, "s1"), timeout=10))
        e2 = refused(
            lambda: wa.SubmitShare(
                chunk_stream(probe, "s1", "x", bytes(8 * probe.dim)),
                metadata=md(dep, "s1"),
                timeout=10,
            )
        )
        e3 = refused(
            lambda: list(
                wb.GetAggregate(
                    pb.RoundRef(round_id=probe.round_id), metadata=md(dep, "s1"), timeout=10
                )
            )
        )
    with operator_channel(dep) as ch:  # may read any round (a worker: only its own)
        e4 = refused(
            lambda: list(
                pbg.WorkerStub(ch).GetAggregate(pb.RoundRef(round_id=probe.round_id), timeout=10)
            )
        )
    assert e1.code() == e2.code() == e3.code() == SC.UNIMPLEMENTED
    assert e4.code() == SC.FAILED_PRECONDITION  # not DONE yet


# -------------------------------------------------------- §5 / §11: SubmitShare (server B)


def _blob(d: int) -> bytes:
    return struct.pack(f"<{d}q", *[signed(int.from_bytes(os.urandom(8))) for _ in range(d)])


def _changed(field: str, value: object) -> Callable[[pb.RoundConfig, str], list[pb.ShareChunk]]:
    def make(cfg: pb.RoundConfig, sid: str) -> list[pb.ShareChunk]:
        msgs = list(chunk_stream(cfg, "s1", sid, _blob(cfg.dim), step=16))
        setattr(msgs[2], field, value)
        return msgs

    return make


def _stream(cfg: pb.RoundConfig, sid: str, blob: bytes, step: int = 16) -> list[pb.ShareChunk]:
    return list(chunk_stream(cfg, "s1", sid, blob, step=step))


def _with(msgs: list[pb.ShareChunk], i: int, **fields: object) -> list[pb.ShareChunk]:
    for k, v in fields.items():
        setattr(msgs[i], k, v)
    return msgs


_SHARE_CASES: list[tuple[str, Callable[[pb.RoundConfig, str], list[pb.ShareChunk]], object]] = [
    (
        "later chunk changes submission_id",
        _changed("submission_id", "another"),
        SC.INVALID_ARGUMENT,
    ),
    ("later chunk changes dim", _changed("dim", 99), SC.INVALID_ARGUMENT),
    ("later chunk changes round_id", _changed("round_id", "other-round"), SC.INVALID_ARGUMENT),
    ("later chunk changes worker_id", _changed("worker_id", "s2"), SC.INVALID_ARGUMENT),
    ("empty stream", lambda cfg, sid: [], SC.INVALID_ARGUMENT),
    (
        "first chunk dim",
        lambda cfg, sid: _with(_stream(cfg, sid, _blob(10)), 0, dim=11),
        SC.INVALID_ARGUMENT,
    ),
    ("share too short", lambda cfg, sid: _stream(cfg, sid, _blob(9)), SC.INVALID_ARGUMENT),
    ("share too long", lambda cfg, sid: _stream(cfg, sid, _blob(11)), SC.OUT_OF_RANGE),
    ("gap", lambda cfg, sid: _with(_stream(cfg, sid, _blob(10)), 1, offset=3), SC.INVALID_ARGUMENT),
    (
        "overlap",
        lambda cfg, sid: _with(_stream(cfg, sid, _blob(10)), 1, offset=1),
        SC.INVALID_ARGUMENT,
    ),
    (
        "misaligned chunk",
        lambda cfg, sid: _stream(cfg, sid, _blob(10), step=12),
        SC.INVALID_ARGUMENT,
    ),
    (
        "empty chunk",
        lambda cfg, sid: _stream(cfg, sid, _blob(10)) + [pb.ShareChunk(offset=10, data=b"")],
        SC.INVALID_ARGUMENT,
    ),
    (
        "chunk over 1 MiB",
        lambda cfg, sid: _with(_stream(cfg, sid, _blob(10)), 0, data=bytes(STEP + 8)),
        SC.INVALID_ARGUMENT,
    ),
    (
        "message over 4 MiB",
        lambda cfg, sid: _with(_stream(cfg, sid, _blob(10)), 0, data=bytes(4 * STEP + 8)),
        SC.RESOURCE_EXHAUSTED,
    ),
    (
        "malformed submission_id",
        lambda cfg, sid: _stream(cfg, "a b", _blob(10)),
        SC.INVALID_ARGUMENT,
    ),
    (
        "unknown round",
        lambda cfg, sid: _with(_stream(cfg, sid, _blob(10)), 0, round_id="no-such-round"),
        SC.NOT_FOUND,
    ),
    (
        "another worker's id",
        lambda cfg, sid: _with(_stream(cfg, sid, _blob(10)), 0, worker_id="s2"),
        SC.PERMISSION_DENIED,
    ),
]


@pytest.mark.parametrize(("case", "make", "code"), _SHARE_CASES, ids=[c[0] for c in _SHARE_CASES])
def test_submit_share_refusals_store_nothing(dep, probe, case, make, code):
    rid = probe.round_id
    with worker_stubs(dep) as (_, wb):
        err = refused(
            lambda: wb.SubmitShare(iter(make(probe, "sid-1")), metadata=md(dep, "s1"), timeout=10)
        )
        st = wb.GetRoundStatus(pb.RoundRef(round_id=rid), metadata=md(dep, "s1"), timeout=10)
    assert err.code() == code, (case, err.details())
    assert st.received == 0 and st.state == pb.ROUND_STATE_OPEN  # nothing stored


def test_header_repeated_unchanged_is_accepted_and_a_refusal_loses_nothing(dep):
    cfg = open_round(dep)
    blob = _blob(cfg.dim)
    with worker_stubs(dep) as (_, wb):
        bad = _changed("submission_id", "another")(cfg, "first")
        err = refused(lambda: wb.SubmitShare(iter(bad), metadata=md(dep, "s1"), timeout=10))
        assert err.code() == SC.INVALID_ARGUMENT and "submission_id" in err.details()
        # every later chunk repeating the whole header unchanged: one submission
        msgs = _stream(cfg, "first", blob)
        for m in msgs[1:]:
            m.round_id, m.worker_id, m.dim, m.submission_id = cfg.round_id, "s1", cfg.dim, "first"
        receipt = wb.SubmitShare(iter(msgs), metadata=md(dep, "s1"), timeout=10)
        st = wb.GetRoundStatus(pb.RoundRef(round_id=cfg.round_id), metadata=md(dep, "s1"))
    assert receipt.submission_id == "first" and receipt.dim == cfg.dim
    assert st.received == 1


def test_ids_at_the_grammars_edges_are_accepted(dep):
    cfg = open_round(dep, round_id="R" * 128)
    seed, blob = split([0.25] * cfg.dim, 1.0)
    sid = "0" + "._-" * 42 + "z"  # 128 characters, a digit first
    assert len(sid) == 128
    with worker_stubs(dep) as (wa, wb):
        ra = wa.SubmitSeed(
            seed_msg(cfg, "s1", seed=seed, submission_id=sid), metadata=md(dep, "s1"), timeout=10
        )
        rb = wb.SubmitShare(chunk_stream(cfg, "s1", sid, blob), metadata=md(dep, "s1"), timeout=10)
    assert ra.submission_id == rb.submission_id == sid


# ------------------------------------------------------------------ §3: retries resume


def test_a_retry_resends_the_same_submission_and_gets_the_same_receipts(dep):
    cfg = open_round(dep)
    seed, blob = split([0.5] * cfg.dim, 1.0)
    sid = uuid.uuid4().hex
    msg = seed_msg(cfg, "s1", seed=seed, submission_id=sid)
    with worker_stubs(dep) as (wa, wb):
        first_a = wa.SubmitSeed(msg, metadata=md(dep, "s1"), timeout=10)
        # the share's upload was "lost": the retry resends both halves, A first
        again_a = wa.SubmitSeed(msg, metadata=md(dep, "s1"), timeout=10)
        first_b = wb.SubmitShare(
            chunk_stream(cfg, "s1", sid, blob), metadata=md(dep, "s1"), timeout=10
        )
        again_b = wb.SubmitShare(
            chunk_stream(cfg, "s1", sid, blob), metadata=md(dep, "s1"), timeout=10
        )
        # a new seed under the same submission id is refused: the first write stands
        other = seed_msg(cfg, "s1", submission_id=sid)
        err = refused(lambda: wa.SubmitSeed(other, metadata=md(dep, "s1"), timeout=10))
        ref = pb.RoundRef(round_id=cfg.round_id)
        received = [w.GetRoundStatus(ref, metadata=md(dep, "s1")).received for w in (wa, wb)]
    assert again_a == first_a and again_b == first_b  # byte-identical receipts
    assert first_a.submission_id == first_b.submission_id == sid
    assert err.code() == SC.ALREADY_EXISTS
    assert received == [1, 1]
