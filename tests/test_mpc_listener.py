"""The MPC link listener cannot be stalled and talks TLS only to the configured peers
(issue #15, item 4). Link layer only (threads, no CrypTen), on loopback."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from secagg import transport
from secagg.cluster import free_port
from secagg.mpc import MpcEndpoint, MpcError
from secagg.transport import TlsConfig

NAMES = ("server-a", "server-b", "dealer")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return transport.make_dev_pki(tmp_path_factory.mktemp("pki"))


def _endpoints(pki: Path, timeout_s: float) -> tuple[dict[str, str], list[MpcEndpoint]]:
    addrs = {name: f"127.0.0.1:{free_port()}" for name in NAMES}
    eps = [
        MpcEndpoint(
            timeout_s=timeout_s,
            transport="mtls",
            listen=addrs[name],
            peers={o: addrs[o] for o in NAMES if o != name},
            tls=TlsConfig.from_pki(pki, name),
        )
        for name in NAMES
    ]
    return addrs, eps


def _start(rank: int, ep: MpcEndpoint, out: dict[int, object]) -> threading.Thread:
    from secagg import mpc_link

    def run() -> None:
        try:
            out[rank] = mpc_link.TlsLinks.establish(rank, ep)
        except Exception as exc:
            out[rank] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _wait_listening(addr: str, timeout_s: float = 10.0) -> None:
    host, port = addr.rsplit(":", 1)
    end = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.02)


def test_idle_connections_do_not_delay_the_peers(pki: Path) -> None:
    """Three idle TCP connections opened before the real peers dial used to hold the
    one-at-a-time acceptor for 10 s each; handshakes now run concurrently."""
    from secagg import mpc_link

    addrs, eps = _endpoints(pki, timeout_s=8.0)
    out: dict[int, object] = {}
    threads = [_start(0, eps[0], out)]
    _wait_listening(addrs["server-a"])  # the probe itself is one more idle connection
    host, port = addrs["server-a"].rsplit(":", 1)
    idle = [socket.create_connection((host, int(port))) for _ in range(3)]
    try:
        t0 = time.monotonic()
        threads += [_start(1, eps[1], out), _start(2, eps[2], out)]
        for t in threads:
            t.join(15)
        elapsed = time.monotonic() - t0
    finally:
        for s in idle:
            s.close()
    try:
        for r in range(3):
            assert isinstance(out.get(r), mpc_link.TlsLinks), (r, out.get(r))
        assert elapsed < 5.0, f"links took {elapsed:.1f} s with idle connections around"
    finally:
        for r in out.values():
            if isinstance(r, mpc_link.TlsLinks):
                r.close()


def test_connections_from_other_addresses_get_no_tls(pki: Path) -> None:
    """A connection from an address that is not a configured peer's is closed before
    TLS, even with a valid party certificate; the listener says why."""
    from secagg import mpc_link

    addrs, eps = _endpoints(pki, timeout_s=3.0)
    out: dict[int, object] = {}
    t = _start(0, eps[0], out)
    _wait_listening(addrs["server-a"])
    host, port = addrs["server-a"].rsplit(":", 1)
    try:
        raw = socket.create_connection((host, int(port)), source_address=("127.0.0.2", 0))
    except OSError as exc:  # pragma: no cover - a loopback without 127.0.0.0/8
        pytest.skip(f"cannot bind 127.0.0.2: {exc}")
    raw.settimeout(5)
    layer = mpc_link.TlsLayer(TlsConfig.from_pki(pki, "server-b"))
    with pytest.raises((ssl.SSLError, OSError)):
        sock, _ = layer.client(raw, "server-a")
        sock.close()
    raw.close()
    t.join(10)
    assert isinstance(out[0], MpcError)  # nobody legitimate came
    assert "127.0.0.2 is not a configured peer address" in str(out[0]), out[0]


def test_peer_sources_resolve_the_configured_addresses(
    pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secagg import mpc_link

    _, eps = _endpoints(pki, timeout_s=1.0)
    assert mpc_link.peer_sources(eps[0], (1, 2)) == frozenset({"127.0.0.1"})
    monkeypatch.setenv(mpc_link.SOURCE_CHECK_ENV, "0")
    assert mpc_link.peer_sources(eps[0], (1, 2)) is None
