"""Wire-level pieces: dev PKI, real mTLS gRPC calls, tokens, chunking."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secagg.rounds import UnknownRound, payload_digest
from secagg.transport import (
    MAX_CHUNK_BYTES,
    MAX_MESSAGE_BYTES,
    ChunkAssembler,
    ProtocolError,
    TlsConfig,
    TokenStore,
    add_health_service,
    aggregate_chunk_messages,
    check_health,
    hash_token,
    issue_tokens,
    iter_chunks,
    make_channel,
    make_dev_pki,
    peer_identity,
    read_aggregate_stream,
    read_share_stream,
    server_options,
    share_chunk_messages,
    worker_metadata,
)
from secagg.v1 import secagg_pb2

SC = grpc.StatusCode


# ---------------------------------------------------------------------------- PKI


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dev_pki(tmp_path_factory.mktemp("pki"), workers=2)


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dev_pki(tmp_path_factory.mktemp("other-pki"), names=("admin",))


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_pki_layout_permissions_and_certificates(pki: Path) -> None:
    names = ["server-a", "server-b", "dealer", "admin", "worker-0", "worker-1"]
    ca = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for name in ["ca", *names]:
        assert stat.S_IMODE((pki / f"{name}.key").stat().st_mode) == 0o600
    for name in names:
        cert = x509.load_pem_x509_certificate((pki / f"{name}.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert cn == name
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if name in ("admin", "worker-0", "worker-1"):
            # client-only identities (issue #15): no server usage, no host names
            assert set(san.get_values_for_type(x509.DNSName)) == {name}
            assert san.get_values_for_type(x509.IPAddress) == []
            assert set(eku) == {ExtendedKeyUsageOID.CLIENT_AUTH}
        else:
            assert set(san.get_values_for_type(x509.DNSName)) == {name, "localhost"}
            assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
            assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
        assert 364 <= days <= 366


def test_pki_is_idempotent_and_refuses_to_replace_ca(tmp_path: Path) -> None:
    d = make_dev_pki(tmp_path / "p", names=("server-a",))
    before = _snapshot(d)
    make_dev_pki(d, names=("server-a",))
    assert _snapshot(d) == before
    # adding a name reuses the CA and leaves existing files untouched
    make_dev_pki(d, names=("server-a", "admin"))
    after = _snapshot(d)
    assert {k: after[k] for k in before} == before
    assert "admin.pem" in after
    # a half-present CA is refused rather than silently replaced
    (d / "ca.key").unlink()
    with pytest.raises(FileExistsError, match="force=True"):
        make_dev_pki(d, names=("server-a",))
    make_dev_pki(d, names=("server-a", "admin"), force=True)
    new = _snapshot(d)
    assert new["ca.pem"] != before["ca.pem"]
    assert new["server-a.pem"] != before["server-a.pem"]


def test_pki_rejects_names_that_are_not_dns_labels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="DNS label"):
        make_dev_pki(tmp_path, names=("Server A",))


# --------------------------------------------------------------------- real mTLS


def _who_am_i(request: bytes, context: grpc.ServicerContext) -> bytes:
    return (peer_identity(context) or "<none>").encode()


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def _upload(request_iterator: Iterator[secagg_pb2.ShareChunk], context: grpc.ServicerContext):
    try:
        got = read_share_stream(request_iterator, lambda rid: 300_000)
    except ProtocolError as exc:
        exc.abort(context)
    return secagg_pb2.Receipt(
        round_id=got.round_id, worker_id=got.worker_id, digest=got.digest, dim=got.dim
    )


@pytest.fixture(scope="module")
def tls_server(pki: Path) -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=server_options())
    add_health_service(server, services=("secagg.v1.Peer",))
    handlers = {
        "WhoAmI": grpc.unary_unary_rpc_method_handler(_who_am_i),
        "Echo": grpc.unary_unary_rpc_method_handler(_echo),
        "Upload": grpc.stream_unary_rpc_method_handler(
            _upload,
            request_deserializer=secagg_pb2.ShareChunk.FromString,
            response_serializer=secagg_pb2.Receipt.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Probe", handlers),))
    creds = TlsConfig.from_pki(pki, "server-b").server_credentials(require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", creds)
    assert port
    server.start()
    yield port
    server.stop(grace=None)


def test_mtls_accepted_and_peer_identity_is_the_cn(pki: Path, tls_server: int) -> None:
    with make_channel(f"localhost:{tls_server}", TlsConfig.from_pki(pki, "server-a")) as ch:
        assert check_health(ch)
        assert check_health(ch, "secagg.v1.Peer")
        assert ch.unary_unary("/test.Probe/WhoAmI")(b"", timeout=5) == b"server-a"
    # the server certificate also verifies under its own name (SAN) via an override
    tls = TlsConfig.from_pki(pki, "admin")
    with make_channel(f"127.0.0.1:{tls_server}", tls, server_name="server-b") as ch:
        assert ch.unary_unary("/test.Probe/WhoAmI")(b"", timeout=5) == b"admin"


def test_client_cert_from_another_ca_is_refused(
    pki: Path, other_pki: Path, tls_server: int
) -> None:
    foreign = TlsConfig(
        ca_cert=pki / "ca.pem", cert=other_pki / "admin.pem", key=other_pki / "admin.key"
    )
    with make_channel(f"localhost:{tls_server}", foreign) as ch, pytest.raises(grpc.RpcError) as e:
        check_health(ch, timeout_s=5)
    assert e.value.code() == SC.UNAVAILABLE


def test_client_without_cert_is_refused(pki: Path, tls_server: int) -> None:
    with (
        make_channel(f"localhost:{tls_server}", TlsConfig(ca_cert=pki / "ca.pem")) as ch,
        pytest.raises(grpc.RpcError) as e,
    ):
        check_health(ch, timeout_s=5)
    assert e.value.code() == SC.UNAVAILABLE


def test_server_from_another_ca_is_not_trusted(pki: Path, other_pki: Path, tls_server: int) -> None:
    tls = TlsConfig(
        ca_cert=other_pki / "ca.pem", cert=other_pki / "admin.pem", key=other_pki / "admin.key"
    )
    with make_channel(f"localhost:{tls_server}", tls) as ch, pytest.raises(grpc.RpcError) as e:
        check_health(ch, timeout_s=5)
    assert e.value.code() == SC.UNAVAILABLE


def test_oversize_message_refused_and_chunked_upload_passes(pki: Path, tls_server: int) -> None:
    tls = TlsConfig.from_pki(pki, "server-a")
    with make_channel(f"localhost:{tls_server}", tls) as ch:
        echo = ch.unary_unary("/test.Probe/Echo")
        assert echo(b"x" * 1000, timeout=5) == b"x" * 1000
        with pytest.raises(grpc.RpcError) as e:
            echo(b"x" * (MAX_MESSAGE_BYTES + 1), timeout=5)
        assert e.value.code() == SC.RESOURCE_EXHAUSTED
        # 300k elements = 2.4 MB: three chunks, each message far below the cap
        share = np.random.default_rng(0).integers(-(2**63), 2**63 - 1, 300_000, dtype=np.int64)
        upload = ch.stream_unary(
            "/test.Probe/Upload",
            request_serializer=secagg_pb2.ShareChunk.SerializeToString,
            response_deserializer=secagg_pb2.Receipt.FromString,
        )
        receipt = upload(share_chunk_messages("r1", "w1", "s1", share), timeout=10)
        assert receipt.digest == payload_digest(share)
        with pytest.raises(grpc.RpcError) as e:
            upload(share_chunk_messages("r1", "w1", "s1", share[:-1]), timeout=10)
        assert e.value.code() == SC.INVALID_ARGUMENT
        assert "differs from round" in e.value.details()


# ----------------------------------------------------------------------- tokens


def test_token_store_accepts_and_refuses(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    tokens = issue_tokens(["w1", "w2"], path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_text()
    assert all(t not in raw for t in tokens.values())
    assert json.loads(raw) == {w: hash_token(t) for w, t in tokens.items()}

    store = TokenStore.load(path)
    assert store.worker_ids == {"w1", "w2"}
    assert store.verify("w1", tokens["w1"])
    assert not store.verify("w1", tokens["w2"])
    assert not store.verify("w3", tokens["w1"])
    assert store.authenticate(worker_metadata("w2", tokens["w2"])) == "w2"
    # byte values (as grpc may deliver) work too
    md = [(k, v.encode()) for k, v in worker_metadata("w1", tokens["w1"])]
    assert store.authenticate(md) == "w1"

    bad = [
        [],
        [("x-secagg-worker", "w1")],
        [("authorization", "Bearer " + tokens["w1"])],
        [("x-secagg-worker", "w1"), ("authorization", tokens["w1"])],
        list(worker_metadata("w1", tokens["w2"])),
        list(worker_metadata("nobody", tokens["w1"])),
    ]
    for metadata in bad:
        with pytest.raises(ProtocolError) as e:
            store.authenticate(metadata)
        assert e.value.code == SC.UNAUTHENTICATED
        assert tokens["w1"] not in e.value.message and tokens["w2"] not in e.value.message

    # re-issuing one worker keeps the other's entry and revokes the old token
    again = issue_tokens(["w1"], path)
    store = TokenStore.load(path)
    assert store.verify("w1", again["w1"]) and not store.verify("w1", tokens["w1"])
    assert store.verify("w2", tokens["w2"])


def test_token_store_rejects_plain_tokens_in_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"w1": "not-a-hash"}))
    with pytest.raises(ValueError, match="SHA-256 hex"):
        TokenStore.load(path)


# ----------------------------------------------------------------------- chunks


@pytest.mark.parametrize("dim", [1, 7, 131_072, 131_073, 300_001])
def test_chunks_round_trip(dim: int) -> None:
    x = np.random.default_rng(dim).integers(-(2**63), 2**63 - 1, dim, dtype=np.int64)
    pieces = list(iter_chunks(x))
    assert all(len(b) <= MAX_CHUNK_BYTES and len(b) % 8 == 0 for _, b in pieces)
    asm = ChunkAssembler(dim)
    for off, data in pieces:
        asm.add(off, data)
    out = asm.finish()
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, x)
    assert asm.digest() == payload_digest(x)


def test_small_chunk_size_and_type_checks() -> None:
    x = np.arange(10, dtype=np.int64)
    assert [o for o, _ in iter_chunks(x, max_chunk_bytes=24)] == [0, 3, 6, 9]
    with pytest.raises(ValueError):
        list(iter_chunks(x, max_chunk_bytes=12))
    with pytest.raises(ValueError):
        list(iter_chunks(x, max_chunk_bytes=MAX_CHUNK_BYTES + 8))
    with pytest.raises(ValueError, match="dtype"):
        list(iter_chunks(x.astype(np.float64)))
    with pytest.raises(ValueError, match="1-D"):
        list(iter_chunks(x.reshape(2, 5)))


def _assert_refused(code: grpc.StatusCode, fn, *args) -> ProtocolError:  # noqa: ANN001
    with pytest.raises(ProtocolError) as e:
        fn(*args)
    assert e.value.code == code, e.value.message
    return e.value


def test_assembler_rejects_every_malformed_case() -> None:
    b8 = np.arange(4, dtype="<i8").tobytes()  # 4 elements

    asm = ChunkAssembler(8)
    _assert_refused(SC.INVALID_ARGUMENT, asm.add, 4, b8)  # gap at start
    asm.add(0, b8)
    err = _assert_refused(SC.INVALID_ARGUMENT, asm.add, 2, b8)  # overlap
    assert "overlaps" in err.message and "expected offset 4" in err.message
    err = _assert_refused(SC.INVALID_ARGUMENT, asm.add, 6, b8)  # gap
    assert "gap" in err.message
    _assert_refused(SC.INVALID_ARGUMENT, asm.add, 4, b"")  # empty
    _assert_refused(SC.INVALID_ARGUMENT, asm.add, 4, b8[:12])  # not a multiple of 8
    _assert_refused(SC.INVALID_ARGUMENT, asm.finish)  # incomplete
    # more data than declared: refused before it is appended
    err = _assert_refused(SC.OUT_OF_RANGE, asm.add, 4, b8 + b8)
    assert "declared dim 8" in err.message
    assert asm.received == 4
    asm.add(4, b8)
    asm.finish()
    _assert_refused(SC.FAILED_PRECONDITION, asm.add, 8, b8)  # after the end

    big = ChunkAssembler(10**6)
    _assert_refused(SC.INVALID_ARGUMENT, big.add, 0, bytes(MAX_CHUNK_BYTES + 8))  # oversize
    _assert_refused(SC.INVALID_ARGUMENT, ChunkAssembler, 0)


def _chunks(share: np.ndarray, **header) -> list[secagg_pb2.ShareChunk]:  # noqa: ANN003
    msgs = list(share_chunk_messages("r1", "w1", "s1", share, max_chunk_bytes=16))
    for key, value in header.items():
        setattr(msgs[0], key, value)
    return msgs


def test_read_share_stream_validates_header_and_round() -> None:
    share = np.arange(5, dtype=np.int64)

    def dims(round_id: str) -> int:
        if round_id != "r1":
            raise UnknownRound(f"no round {round_id!r}")
        return 5

    got = read_share_stream(_chunks(share), dims, authenticated_worker="w1")
    np.testing.assert_array_equal(got.share, share)
    assert (got.round_id, got.worker_id, got.submission_id, got.dim) == ("r1", "w1", "s1", 5)
    assert got.digest == payload_digest(share)

    _assert_refused(SC.INVALID_ARGUMENT, read_share_stream, [], dims)
    _assert_refused(SC.INVALID_ARGUMENT, read_share_stream, _chunks(share, round_id=""), dims)
    _assert_refused(SC.INVALID_ARGUMENT, read_share_stream, _chunks(share, dim=6), dims)
    _assert_refused(SC.NOT_FOUND, read_share_stream, _chunks(share, round_id="r2"), dims)
    err = _assert_refused(
        SC.PERMISSION_DENIED,
        lambda: read_share_stream(_chunks(share), dims, authenticated_worker="w2"),
    )
    assert "w2" in err.message
    # a later chunk switching to another submission, or changing any header field alone
    for field, value in (
        ("submission_id", "s2"),
        ("dim", 6),
        ("round_id", "r2"),
        ("worker_id", "w2"),
    ):
        msgs = _chunks(share)
        setattr(msgs[1], field, value)
        err = _assert_refused(SC.INVALID_ARGUMENT, read_share_stream, msgs, dims)
        assert field in err.message
    # a later chunk repeating part of the header unchanged is fine
    msgs = _chunks(share)
    msgs[2].submission_id, msgs[2].dim = "s1", 5
    read_share_stream(msgs, dims)
    # a later chunk repeating the same header is fine
    msgs = _chunks(share)
    msgs[1].MergeFrom(
        secagg_pb2.ShareChunk(round_id="r1", worker_id="w1", submission_id="s1", dim=5)
    )
    read_share_stream(msgs, dims)
    # truncated and overlong streams
    _assert_refused(SC.INVALID_ARGUMENT, read_share_stream, _chunks(share)[:-1], dims)
    _assert_refused(
        SC.OUT_OF_RANGE, read_share_stream, _chunks(np.arange(6, dtype=np.int64), dim=5), dims
    )


def test_aggregate_stream_round_trip_and_corruption() -> None:
    v = np.random.default_rng(1).normal(size=200_000)
    header = secagg_pb2.AggregateHeader(round_id="r1", selected=["w1", "w3"], divisor=2.0)
    msgs = list(aggregate_chunk_messages(header, v))
    assert len(msgs) == 2 and msgs[0].header.dim == 200_000
    hdr, out = read_aggregate_stream(msgs)
    np.testing.assert_array_equal(out, v)
    assert list(hdr.selected) == ["w1", "w3"] and hdr.divisor == 2.0

    msgs[1].data = bytes(len(msgs[1].data))
    _assert_refused(SC.DATA_LOSS, read_aggregate_stream, msgs)
    _assert_refused(SC.INVALID_ARGUMENT, read_aggregate_stream, msgs[1:])


def test_assembler_hashing_at_the_end_gives_the_same_digest() -> None:
    # server B hashes a finished share off its event loop instead of chunk by chunk
    x = np.random.default_rng(5).integers(-(2**63), 2**63 - 1, 300_001, dtype=np.int64)
    asm = ChunkAssembler(x.shape[0], hash_chunks=False)
    for off, data in iter_chunks(x):
        asm.add(off, data)
    assert asm.digest() == payload_digest(x[: asm.received])  # also before finish
    out = asm.finish()
    np.testing.assert_array_equal(out, x)
    assert asm.digest() == payload_digest(x)
