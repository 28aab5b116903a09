"""A worker written from ``proto/`` and ``proto/SHARE_ENCODING.md`` alone.

Nothing from the SDK or secagg's encoding/sharing/PRG code is imported: the client
below encodes, expands seeds and serialises shares with only ``struct`` and the
``cryptography`` AES primitive, talks to the real servers through the stubs generated
from the .proto, and checks the decoded aggregate itself. If the document and the
servers ever disagree, this test fails.
"""

from __future__ import annotations

import math
import os
import struct
import time
import uuid

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secagg.v1 import secagg_pb2 as pb  # generated from proto/, the wire contract
from secagg.v1 import secagg_pb2_grpc as pbg
from servers.launcher import LocalDeployment

M64 = 1 << 64
STEP = 1 << 20  # §5: chunks of at most 1 MiB


def encode(x: list[float], scale: float) -> list[int]:  # §2: roundTiesToEven(scale·x·2^16)
    return [round(scale * v * 65536.0) for v in x]  # Python's round() is ties-to-even


def expand(seed: bytes, d: int) -> list[int]:  # §4: AES-256-CTR, zero counter block, LE int64
    ks = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor().update(bytes(8 * d))
    return list(struct.unpack(f"<{d}q", ks))


def signed(v: int) -> int:
    v %= M64
    return v - M64 if v >= 1 << 63 else v


def test_vector_from_the_document():
    seed = bytes(range(32))
    x = encode([1.5, -0.25, 3.0e-4, 100.0, -7.0], 1.0)
    assert x == [98304, -16384, 20, 6553600, -458752]
    s_a = expand(seed, 5)
    assert s_a[0] == -3413929544732602126
    s_b = [signed(a - b) for a, b in zip(x, s_a, strict=True)]
    assert s_b[-1] == 4790936418954462194


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    d = LocalDeployment(tmp_path_factory.mktemp("spec"), [f"s{i}" for i in range(5)], tls=True)
    d.start()
    yield d
    d.stop()


def test_independent_client_round(dep):
    import grpc

    n, d, scale = 5, 300_000, 0.05  # 2.4 MB per share: three 1 MiB chunks
    rows = [[math.sin(i * 7 + k) * (1 + i) for k in range(d)] for i in range(n)]
    rid = f"spec-{uuid.uuid4().hex[:8]}"
    cfg = pb.RoundConfig(
        round_id=rid,
        n_expected=n,
        f=0,
        rule=pb.RULE_MEAN,
        dim=d,
        scale=scale,
        coord_bound=5 * scale,
        norm_bound=150.0,  # after scaling: the largest row has norm about 97
        deadline_unix_ms=int((time.time() + 60) * 1000),
    )
    ca = (dep.pki / "ca.pem").read_bytes()
    admin_creds = grpc.ssl_channel_credentials(
        ca, (dep.pki / "admin.key").read_bytes(), (dep.pki / "admin.pem").read_bytes()
    )
    with grpc.secure_channel(dep.control_a, admin_creds) as ch:
        pbg.AdminStub(ch).OpenRound(cfg, timeout=30)
    creds = grpc.ssl_channel_credentials(ca)
    with (
        grpc.secure_channel(dep.addr_a, creds) as ca_ch,
        grpc.secure_channel(dep.addr_b, creds) as cb_ch,
    ):
        wa, wb = pbg.WorkerStub(ca_ch), pbg.WorkerStub(cb_ch)
        for i, row in enumerate(rows):
            wid = f"s{i}"
            md = (("x-secagg-worker", wid), ("authorization", f"Bearer {dep.tokens[wid]}"))
            x = encode(row, scale)
            seed = os.urandom(32)
            s_b = [signed(a - b) for a, b in zip(x, expand(seed, d), strict=True)]
            blob = struct.pack(f"<{d}q", *s_b)
            sid = uuid.uuid4().hex
            wa.SubmitSeed(
                pb.SeedSubmission(round_id=rid, worker_id=wid, seed=seed, dim=d, submission_id=sid),
                metadata=md,
                timeout=30,
            )

            def chunks(blob=blob, wid=wid, sid=sid):
                for off in range(0, len(blob), STEP):
                    c = pb.ShareChunk(offset=off // 8, data=blob[off : off + STEP])
                    if off == 0:
                        c.round_id, c.worker_id, c.dim, c.submission_id = rid, wid, d, sid
                    yield c

            wb.SubmitShare(chunks(), metadata=md, timeout=30)
        md = (("x-secagg-worker", "s0"), ("authorization", f"Bearer {dep.tokens['s0']}"))
        end = time.monotonic() + 300  # generous: a loaded CI machine
        while True:
            st = wa.GetRoundStatus(pb.RoundRef(round_id=rid), metadata=md, timeout=30)
            if st.state in (pb.ROUND_STATE_DONE, pb.ROUND_STATE_FAILED):
                break
            assert time.monotonic() < end, f"round still {st.state} after 300 s"
            time.sleep(0.1)
        assert st.state == pb.ROUND_STATE_DONE, st.failure_reason
        data = b"".join(c.data for c in wa.GetAggregate(pb.RoundRef(round_id=rid), metadata=md))
    agg = struct.unpack(f"<{d}d", data)
    enc_sum = [sum(col) for col in zip(*(encode(r, scale) for r in rows), strict=True)]
    want = [v / 65536.0 / scale / n for v in enc_sum]
    assert max(abs(a - b) for a, b in zip(agg, want, strict=True)) <= 1e-12
