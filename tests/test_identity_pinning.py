"""Every gRPC client of secagg pins the identity of the party it means to reach, and the
dev PKI separates server and client usages (issue #15, item 8). On one host every dev
certificate used to carry localhost/127.0.0.1 and both usages, so any certificate from
the CA, the admin's included, passed as server A or B."""

from __future__ import annotations

import asyncio
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from clients.admin import AdminClient
from clients.sdk import SecAggClient, SecAggClientError
from secagg import transport
from secagg.cluster import free_port
from servers import common


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return transport.make_dev_pki(tmp_path_factory.mktemp("pki"), workers=1)


def _ext(path: Path, cls: type) -> object:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.extensions.get_extension_for_class(cls).value


def test_the_dev_pki_separates_client_and_server_usages(pki: Path) -> None:
    for name in ("admin", "worker-0"):
        assert list(_ext(pki / f"{name}.pem", x509.ExtendedKeyUsage)) == [
            ExtendedKeyUsageOID.CLIENT_AUTH
        ], name
        san = _ext(pki / f"{name}.pem", x509.SubjectAlternativeName)
        assert san.get_values_for_type(x509.DNSName) == [name], name
        assert not san.get_values_for_type(x509.IPAddress), name
    for name in ("server-a", "server-b", "dealer"):  # TLS servers and clients (Peer, MPC)
        usages = set(_ext(pki / f"{name}.pem", x509.ExtendedKeyUsage))
        assert usages == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        san = _ext(pki / f"{name}.pem", x509.SubjectAlternativeName)
        assert name in san.get_values_for_type(x509.DNSName)


class _Impostor:
    """A TLS gRPC server on loopback presenting ``name``'s certificate from the same CA
    (it serves nothing: a call that gets past the handshake answers UNIMPLEMENTED)."""

    def __init__(self, pki: Path, name: str) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.addr = f"127.0.0.1:{free_port()}"
        creds = transport.TlsConfig.from_pki(pki, name).server_credentials(
            require_client_auth=False
        )
        assert self.server.add_secure_port(self.addr, creds)
        self.server.start()

    def __enter__(self) -> _Impostor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(0)


def _worker_code(pki: Path, addr: str) -> grpc.StatusCode | None:
    tls = transport.TlsConfig(ca_cert=pki / "ca.pem")
    with SecAggClient(addr, addr, "w1", "token", tls=tls, timeout_s=5, retries=0) as c:
        with pytest.raises(SecAggClientError) as err:
            c.status("r1")
    return err.value.code


def _admin_code(pki: Path, addr: str) -> grpc.StatusCode | None:
    with AdminClient(addr, transport.TlsConfig.from_pki(pki, "admin"), timeout_s=5) as a:
        with pytest.raises(SecAggClientError) as err:
            a.list_rounds()
    return err.value.code


@pytest.mark.parametrize("impostor", ["server-b", "dealer", "admin"])
def test_workers_and_the_admin_reach_only_server_a(pki: Path, impostor: str) -> None:
    with _Impostor(pki, impostor) as imp:
        assert _worker_code(pki, imp.addr) == grpc.StatusCode.UNAVAILABLE
        assert _admin_code(pki, imp.addr) == grpc.StatusCode.UNAVAILABLE
    with _Impostor(pki, "server-a") as real:  # control: the handshake itself works
        assert _worker_code(pki, real.addr) == grpc.StatusCode.UNIMPLEMENTED
        assert _admin_code(pki, real.addr) == grpc.StatusCode.UNIMPLEMENTED


def _peer_code(pki: Path, addr: str) -> grpc.StatusCode:
    from secagg.v1 import secagg_pb2 as pb
    from secagg.v1 import secagg_pb2_grpc as pbg

    async def call() -> grpc.StatusCode:
        # server A's channel to B, as ServerA builds it
        ch = common.client_channel(
            addr, transport.TlsConfig.from_pki(pki, "server-a"), transport.SERVER_B_NAME
        )
        try:
            await pbg.PeerStub(ch).GetPeerStatus(pb.RoundRef(round_id="r"), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        finally:
            await ch.close()
        raise AssertionError("the call succeeded")

    return asyncio.run(call())


@pytest.mark.parametrize("impostor", ["server-a", "dealer", "admin"])
def test_server_a_reaches_only_server_b(pki: Path, impostor: str) -> None:
    with _Impostor(pki, impostor) as imp:
        assert _peer_code(pki, imp.addr) == grpc.StatusCode.UNAVAILABLE
    with _Impostor(pki, "server-b") as real:
        assert _peer_code(pki, real.addr) == grpc.StatusCode.UNIMPLEMENTED
