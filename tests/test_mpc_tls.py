"""The parties' MPC links over mutual TLS (secagg.mpc_link).

* Rounds of every rule over the encrypted transport equal the plaintext reference bit
  for bit, and the traffic counters still count.
* A party with a certificate from another CA, or from the right CA for the wrong
  identity, cannot join: the session fails with a reason naming it, in bounded time.
* A recording TCP proxy between the parties (no root needed) captures every byte they
  exchange during a round: none of the values a party receives in the openings (the
  halves of E, B's share of D, the sum shares) nor any input share row appears in it.
  Control: the same proxy and the same search over the same framing *without* TLS find
  every one of them, so the search can see a leak. (gloo itself cannot be put behind
  the proxy: its data connections go to ephemeral ports that the peers learn from its
  rendezvous store, not to an address we configure.)
* A peer that stalls makes the other fail after the configured timeout; a peer that
  dies makes it fail at once. Frames are validated (chunking, sequence numbers).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from secagg import encoding, reference, sharing
from secagg.cluster import ClusterError, MpcCluster, free_port
from secagg.mpc import MpcEndpoint, MpcError
from secagg.protocol import RoundPlan, run_round
from secagg.transport import TlsConfig, make_dev_pki

NAMES = ("server-a", "server-b", "dealer")
PARAMS = encoding.EncodingParams(scale=1.0, coord_bound=1e3, norm_bound=2e4)


# ------------------------------------------------------------------ helpers
class RecordingProxy:
    """Loopback TCP proxy (asyncio, own thread) in front of each party's listen
    address; keeps every byte of every connection, per direction."""

    def __init__(self, targets: dict[str, str]) -> None:
        self.targets = targets
        self.streams: list[bytearray] = []
        self.addrs: dict[str, str] = {}
        self.loop = asyncio.new_event_loop()
        self._servers: list[asyncio.base_events.Server] = []
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        for name, target in self.targets.items():
            host, port = target.rsplit(":", 1)
            server = self.loop.run_until_complete(
                asyncio.start_server(
                    lambda r, w, h=host, p=int(port): self._handle(r, w, h, p), "127.0.0.1", 0
                )
            )
            self._servers.append(server)
            self.addrs[name] = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        ready.set()
        self.loop.run_forever()

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int
    ) -> None:
        # like a listening socket the party has not opened yet, wait for the target (a
        # proxy that hung up instead would look like a refusal to the plaintext control)
        for _ in range(600):
            try:
                up_r, up_w = await asyncio.open_connection(host, port)
                break
            except OSError:
                await asyncio.sleep(0.1)
        else:
            writer.close()
            return
        there, back = bytearray(), bytearray()
        self.streams += [there, back]
        await asyncio.gather(self._pipe(reader, up_w, there), self._pipe(up_r, writer, back))

    @staticmethod
    async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, rec: bytearray) -> None:
        try:
            while data := await r.read(1 << 16):
                rec += data
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    def clear(self) -> None:
        for s in self.streams:
            s.clear()

    def captured(self) -> list[bytes]:
        return [bytes(s) for s in self.streams]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class PlainLayer:
    """The control's security layer: no TLS; the identity is whatever the hello claims."""

    def __init__(self, tls: object) -> None:
        pass

    def client(self, raw: socket.socket, expect: str) -> tuple[socket.socket, str]:
        return raw, expect

    def server(self, raw: socket.socket) -> tuple[socket.socket, str]:
        head = b""
        while len(head) < 7:  # peek at the hello (magic, version, sender rank, ...)
            head = raw.recv(7, socket.MSG_PEEK)
        return raw, NAMES[head[5]]


def install_plaintext() -> None:
    """Run in each party process of the control cluster (MpcCluster's setup hook)."""
    from secagg import mpc_link

    mpc_link.make_security_layer = PlainLayer


def round_with_transcript(session, share: np.ndarray, plan: RoundPlan):  # noqa: ANN001, ANN201
    """Runs in a party process: the round plus every value it received in openings."""
    session.transcript = []
    try:
        return run_round(session, share, plan), session.transcript
    finally:
        session.transcript = None


def share_rows(Xenc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    parts = [sharing.split(row) for row in Xenc]
    share_a = np.stack([sharing.share_a(p.seed, Xenc.shape[1]) for p in parts])
    share_b = np.stack([p.share_b for p in parts])
    return share_a, share_b


def random_case(rng: np.random.Generator, rule: str) -> tuple[np.ndarray, int, int | None]:
    f = int(rng.integers(1, 3))
    need = 4 * f + 3 if rule == "bulyan" else 2 * f + 3
    n = int(rng.integers(need, need + 3))
    d = int(rng.integers(1, 30))
    X = rng.normal(size=(n, d)) * rng.uniform(0.1, 10)
    for i in rng.choice(n, size=f, replace=False):
        X[i] += rng.normal(size=d) * 50
    m = int(rng.integers(1, n + 1)) if rule == "multi-krum" else None
    return np.stack([encoding.encode(row, PARAMS) for row in X]), f, m


def needles(values: list[np.ndarray], width: int = 32) -> list[bytes]:
    """Distinctive 32-byte windows (start and middle) of each value's raw bytes."""
    out = []
    for v in values:
        raw = np.ascontiguousarray(v).astype("<i8").tobytes()
        for at in {0, (len(raw) // 2) // 8 * 8}:
            if len(raw) - at >= width:
                out.append(raw[at : at + width])
    return out


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dev_pki(tmp_path_factory.mktemp("mpc-pki"))


def _proxied(pki: Path, timeout_s: float, **kw: object) -> tuple[MpcCluster, RecordingProxy]:
    listen = {name: f"127.0.0.1:{free_port()}" for name in NAMES}
    proxy = RecordingProxy(listen)
    try:
        cluster = MpcCluster(
            timeout_s, transport="mtls", pki_dir=pki, listen=listen, dial=proxy.addrs, **kw
        )
    except BaseException:
        proxy.close()
        raise
    return cluster, proxy


@pytest.fixture(scope="module")
def tls_cluster(pki: Path):
    """The encrypted cluster; all its traffic goes through a recording proxy."""
    cluster, proxy = _proxied(pki, 120.0)
    with cluster:
        yield cluster, proxy
    proxy.close()


@pytest.fixture(scope="module")
def plain_cluster(pki: Path):
    """The control: the same links and proxy without TLS; short timeout (stall test)."""
    cluster, proxy = _proxied(pki, 20.0, setup=install_plaintext)
    with cluster:
        yield cluster, proxy
    proxy.close()


# ------------------------------------------------------------ correctness
@pytest.mark.parametrize("rule", ["mean", "krum", "multi-krum", "bulyan"])
def test_rounds_over_mtls_match_reference_bit_for_bit(tls_cluster, rule):
    cluster, _ = tls_cluster
    rng = np.random.default_rng(zlib.crc32(rule.encode()))  # stable across processes
    for _ in range(1 if rule == "bulyan" else 3):
        Xenc, f, m = random_case(rng, rule)
        ref = reference.aggregate_encoded(Xenc, rule, f, m)
        share_a, share_b = share_rows(Xenc)
        out_a, out_b = cluster.round(share_a, share_b, RoundPlan(rule, f, m))
        assert out_a.selected == out_b.selected == ref.selected
        assert out_a.divisor == out_b.divisor == ref.divisor
        np.testing.assert_array_equal(out_a.encoded_sum, ref.encoded_sum)
        np.testing.assert_array_equal(out_b.encoded_sum, ref.encoded_sum)
        if rule != "mean":
            np.testing.assert_array_equal(out_a.distances, ref.distances)
        assert out_b.distances is None
        if rule == "bulyan":  # CrypTen's comparisons went through the TLS communicator
            for out in (out_a, out_b):
                assert out.traffic["rounds"]["bulyan_coordinate"] > 0
                assert out.traffic["bytes_sent"]["bulyan_coordinate"] > 0


def test_traffic_counters_over_mtls(tls_cluster):
    cluster, _ = tls_cluster
    n, d = 8, 2000
    Xenc = np.random.default_rng(1).integers(-(2**20), 2**20, size=(n, d))
    out_a, out_b = cluster.round(*share_rows(Xenc), RoundPlan("multi-krum", 1))
    for out in (out_a, out_b):
        sent = out.traffic["bytes_sent"]["distances"]
        assert 8 * n * d <= sent <= 8 * n * d + 8 * n * n + 64
        assert out.traffic["rounds"]["distances"] == 2
        # the selection goes through CrypTen's broadcast (count + indices)
        assert out.traffic["rounds"]["selection"] == 2


# --------------------------------------------------------- confidentiality
def _capture_round(cluster: MpcCluster, proxy: RecordingProxy, plan: RoundPlan, seed: int):
    rng = np.random.default_rng(seed)
    Xenc, _, _ = random_case(rng, plan.rule)
    share_a, share_b = share_rows(Xenc)
    proxy.clear()
    (out_a, seen_a), (out_b, seen_b) = cluster.run(
        round_with_transcript, (share_a, plan), (share_b, plan)
    )
    ref = reference.aggregate_encoded(Xenc, plan.rule, plan.f, plan.m)
    np.testing.assert_array_equal(out_a.encoded_sum, ref.encoded_sum)
    received = [v for label, v in [*seen_a, *seen_b] if label == "received"]
    # E_B (what A receives), E_A (what B receives), B's share of D, the sum shares
    assert len(received) >= 3
    return proxy.captured(), needles(received), needles([*share_a, *share_b, Xenc])


def test_capture_of_tls_links_holds_no_opened_value_or_share(tls_cluster):
    cluster, proxy = tls_cluster
    captured, opened, inputs = _capture_round(cluster, proxy, RoundPlan("bulyan", 1), 11)
    total = sum(map(len, captured))
    assert total > sum(map(len, opened))  # the traffic did go through the proxy
    for stream in captured:
        for needle in opened + inputs:
            assert needle not in stream


def test_control_same_capture_without_tls_sees_the_values(plain_cluster):
    cluster, proxy = plain_cluster
    captured, opened, _ = _capture_round(cluster, proxy, RoundPlan("bulyan", 1), 11)
    for needle in opened:
        assert any(needle in stream for stream in captured)


# ------------------------------------------------------------ authentication
def _rogue(pki: Path, tmp: Path, name: str) -> TlsConfig:
    other_ca = make_dev_pki(tmp / "rogue", names=(name,))
    return TlsConfig(
        ca_cert=pki / "ca.pem", cert=other_ca / f"{name}.pem", key=other_ca / f"{name}.key"
    )


def test_dealer_certificate_presented_as_server_b_cannot_join(pki):
    """The whole stack: the session cannot start, and server A says why, in bounded time."""
    timeout = 60.0
    t0 = time.monotonic()
    with pytest.raises(ClusterError) as err:
        MpcCluster(
            timeout,
            transport="mtls",
            pki_dir=pki,
            tls={"server-b": TlsConfig.from_pki(pki, "dealer")},
        )
    elapsed = time.monotonic() - t0
    text = str(err.value)
    # server A (honest) names what was wrong with the party claiming to be server B,
    # whichever handshake finished first: A's dial to it (it presents 'dealer'), or its
    # dial to A (refused; A then finds it gone and says why instead of timing out)
    line_a = next((ln for ln in text.splitlines() if ln.startswith("[server-a]")), "")
    outbound = "presented certificate identity 'dealer', expected 'server-b'; refusing the link"
    inbound = "identity 'dealer' from"
    assert "MpcError" in line_a, text
    assert outbound in line_a or (
        inbound in line_a and "does not match the claimed party 'server-b'" in line_a
    ), text
    assert elapsed < timeout, f"took {elapsed:.0f} s: a timeout, not a refusal"


@pytest.mark.parametrize(
    ("who", "material"),
    [
        ("server-b", "rogue"),  # another CA, the right name
        ("server-b", "admin"),  # the right CA, an identity that is not a party
        ("dealer", "admin"),
        ("dealer", "server-b"),  # the right CA, another party's identity
    ],
)
def test_wrong_certificates_are_refused_by_the_links(pki, tmp_path, who, material):
    """The same checks on the link layer alone (threads, no CrypTen, 4 s timeout): the
    honest server A fails with a reason that names the impostor, and so does the
    impostor; nobody waits beyond the timeout."""
    tls = {name: TlsConfig.from_pki(pki, name) for name in NAMES}
    if material == "rogue":
        tls[who] = _rogue(pki, tmp_path, who)
    else:
        tls[who] = TlsConfig.from_pki(pki, material)
    t0 = time.monotonic()
    out = _establish_in_threads(tls, timeout_s=4.0)
    try:
        assert time.monotonic() - t0 < 4.0 + 3.0
        a, impostor = out[0], out[NAMES.index(who)]
        assert isinstance(a, MpcError) and isinstance(impostor, MpcError), (a, impostor)
        text = str(a)
        if material == "rogue":
            # A's handshake refuses the chain whichever side dials
            assert "does not vouch for" in text or "certificate verify failed" in text, text
        elif material == "admin" and "unsuitable certificate purpose" in text:
            # the admin's certificate is client-only (issue #15): when A dials the
            # impostor, the handshake itself refuses it as a server
            assert "refusing the link" in text, text
        else:
            # A dialled the impostor ("presented certificate identity ... expected") or
            # refused it on its listener ("may not open" / "does not match the claimed")
            assert f"identity '{material}'" in text, text
            assert any(
                k in text for k in ("expected '", "may not open", "does not match the claimed")
            ), text
    finally:
        for r in out.values():
            if not isinstance(r, Exception):
                r.close()  # type: ignore[attr-defined]


def test_identities_refused_on_the_accepting_side(pki):
    """A listener refuses an identity that may not open a link to it, and tells why."""
    from secagg import mpc_link

    addrs = {name: f"127.0.0.1:{free_port()}" for name in NAMES}
    ep_a = MpcEndpoint(
        timeout_s=3.0,
        transport="mtls",
        listen=addrs["server-a"],
        peers={o: addrs[o] for o in NAMES if o != "server-a"},
        tls=TlsConfig.from_pki(pki, "server-a"),
    )
    result: dict[str, object] = {}
    t = threading.Thread(
        target=lambda: result.setdefault("a", _catch(mpc_link.TlsLinks.establish, 0, ep_a))
    )
    t.start()
    layer = mpc_link.TlsLayer(TlsConfig.from_pki(pki, "admin"))
    deadline = time.monotonic() + 5.0
    with pytest.raises(MpcError, match="identity 'admin' .* may not open a link to server A"):
        mpc_link._dial(layer, 1, 0, addrs["server-a"], deadline)  # admin claims server B
    layer_d = mpc_link.TlsLayer(TlsConfig.from_pki(pki, "dealer"))
    with pytest.raises(MpcError, match="identity 'dealer' .* does not match the claimed party"):
        mpc_link._dial(layer_d, 1, 0, addrs["server-a"], deadline)  # dealer claims B
    t.join(10)
    assert isinstance(result["a"], MpcError)  # nobody legitimate came: A gives up in time
    assert "'admin'" in str(result["a"])  # ...and its error lists the refusals


def _catch(fn, *args):  # noqa: ANN001, ANN002, ANN202
    try:
        return fn(*args)
    except Exception as exc:
        return exc


def test_service_round_over_mtls(tmp_path):
    """servers/*.py with --mpc-transport mtls (LocalDeployment): a Krum round through
    the SDK equals the plaintext reference; the parties log authenticated links."""
    import uuid

    from clients.admin import AdminClient
    from clients.sdk import SecAggClient
    from secagg.rounds import RoundConfig
    from servers.launcher import LocalDeployment

    n, d, f = 7, 40, 1
    ids = [f"w{i}" for i in range(n)]
    X = np.random.default_rng(3).normal(size=(n, d))
    X[0] *= -5  # an outlier for Krum to reject
    params = encoding.EncodingParams(scale=1.0, coord_bound=50.0, norm_bound=100.0)
    with LocalDeployment(tmp_path / "dep", ids, tls=True, mpc_transport="mtls") as dep:
        rid = f"r-mtls-{uuid.uuid4().hex[:8]}"
        cfg = RoundConfig(
            round_id=rid,
            n_expected=n,
            f=f,
            rule="krum",
            m=0,
            dim=d,
            scale=params.scale,
            coord_bound=params.coord_bound,
            norm_bound=params.norm_bound,
            quorum=0,
            deadline_unix_ms=int((time.time() + 60) * 1000),
        )
        with AdminClient(dep.control_a, dep.tls_for("admin")) as adm:
            adm.open_round(cfg)
        clients = [
            SecAggClient(
                dep.addr_a, dep.addr_b, w, dep.tokens[w], tls=dep.worker_tls(), timeout_s=30
            )
            for w in ids
        ]
        try:
            for c, row in zip(clients, X, strict=True):
                c.submit(rid, row, params)
            agg = clients[0].wait_for_result(rid, timeout_s=300)
        finally:
            for c in clients:
                c.close()
        logs = {name: dep.log_text(name) for name in NAMES}
    Xenc = np.stack([encoding.encode(r, params) for r in X])
    ref = reference.aggregate_encoded(Xenc, "krum", f, None)
    assert list(agg.selected) == [ids[i] for i in ref.selected]
    np.testing.assert_array_equal(
        agg.vector, encoding.decode(ref.encoded_sum, params, ref.divisor)
    )
    for name, text in logs.items():
        assert "has authenticated TLS links" in text, name


# ----------------------------------------------------------- failures
def test_stalled_peer_fails_after_the_timeout(plain_cluster):
    cluster, _ = plain_cluster
    share = np.zeros((3, 4), dtype=np.int64)
    t0 = time.monotonic()
    with pytest.raises(ClusterError) as err:  # B never takes part
        cluster.call_one(0, "reveal_sum", (share, [0, 1]))
    elapsed = time.monotonic() - t0
    assert "no message from server B (server-b) within 20 s" in str(err.value)
    assert 19 <= elapsed < 40


def test_dead_peer_fails_at_once(tls_cluster):
    # last test on the shared cluster: it kills server B
    cluster, _ = tls_cluster
    cluster.kill_party(1)
    share = np.zeros((3, 4), dtype=np.int64)
    t0 = time.monotonic()
    with pytest.raises(ClusterError) as err:
        cluster.call_one(0, "reveal_sum", (share, [0, 1]), wait_s=20)
    assert "server B (server-b)" in str(err.value)
    assert "closed the connection" in str(err.value) or "failed" in str(err.value)
    assert time.monotonic() - t0 < 10


# --------------------------------------------------- framing (in-process)
def _establish_in_threads(tls: dict[str, TlsConfig], timeout_s: float) -> dict[int, object]:
    """Each party's ``TlsLinks.establish`` on its own thread: links or the exception."""
    from secagg import mpc_link

    addrs = {name: f"127.0.0.1:{free_port()}" for name in NAMES}
    eps = [
        MpcEndpoint(
            timeout_s=timeout_s,
            transport="mtls",
            listen=addrs[name],
            peers={o: addrs[o] for o in NAMES if o != name},
            tls=tls[name],
        )
        for name in NAMES
    ]
    out: dict[int, object] = {}
    threads = [
        threading.Thread(
            target=lambda r=r: out.setdefault(r, _catch(mpc_link.TlsLinks.establish, r, eps[r]))
        )
        for r in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s + 5)
    return out


def _links_in_threads(pki: Path):  # noqa: ANN202
    from secagg import mpc_link

    out = _establish_in_threads({n: TlsConfig.from_pki(pki, n) for n in NAMES}, 20.0)
    for r in range(3):
        assert isinstance(out[r], mpc_link.TlsLinks), out[r]
    return [out[r] for r in range(3)]


def test_large_messages_are_chunked_and_exact(pki):
    from secagg import mpc_link

    a, b, d = _links_in_threads(pki)
    try:
        big = torch.randint(-(2**62), 2**62, (3, 700_000))  # 16.8 MB: 5 chunks of <= 4 MiB
        assert big.numel() * 8 > 4 * mpc_link.CHUNK_BYTES
        work = a.isend(big, 1)
        got = b.recv(torch.empty_like(big), 0)
        work.wait()
        assert torch.equal(got, big)
        for t in (torch.tensor(7), torch.zeros(0, dtype=torch.long), torch.rand(5, 2),
                  torch.tensor([True, False]), torch.arange(6, dtype=torch.int32)):
            b.send(t, 0)
            assert torch.equal(a.recv(t, 1), t)
        # receives match messages in posting order, whatever order they are waited on
        b.send(torch.tensor([1]), 0)
        b.send(torch.tensor([2]), 0)
        first, second = torch.empty(1, dtype=torch.long), torch.empty(1, dtype=torch.long)
        w1, w2 = a.irecv(first, 1), a.irecv(second, 1)
        w2.wait()
        w1.wait()
        assert (int(first), int(second)) == (1, 2)
        # a mismatch is a clear protocol error, not garbage
        b.send(torch.zeros(3), 0)
        with pytest.raises(MpcError, match="out of step"):
            a.recv(torch.zeros(4), 1)
        # only the links the protocol needs exist: B never sends to the dealer
        with pytest.raises(MpcError, match="no link"):
            b.send(torch.zeros(1), 2)
    finally:
        for links in (a, b, d):
            links.close()


def test_malformed_frames_break_the_link():
    from secagg import mpc_link

    left, right = socket.socketpair()
    link = mpc_link._InLink(right, 1, timeout_s=5.0)
    try:
        # header for message 1 (int64, 1 dim, 16 bytes), then a chunk tagged message 9
        left.sendall(mpc_link._MSG.pack(b"SAL1", 1, 1, 0, 1, 16) + struct.pack("<q", 2))
        left.sendall(mpc_link._CHUNK.pack(9, 0, 16) + bytes(16))
        with pytest.raises(MpcError, match="bad chunk"):
            link.take(link.reserve(), torch.empty(2, dtype=torch.long))
    finally:
        link.close()
        left.close()


def test_objects_are_never_pickled():
    from secagg import mpc_link

    comm = mpc_link.MtlsCommunicator.__new__(mpc_link.MtlsCommunicator)
    for call in (
        lambda: comm.send_obj({"x": 1}, 1),
        lambda: comm.recv_obj(1),
        lambda: comm.broadcast_obj({"x": 1}, 0),
    ):
        with pytest.raises(MpcError, match="pickle"):
            call()


def test_an_unreachable_peer_whose_name_an_impostor_used_fails_at_once(pki):
    """The other order of the race above: the impostor reached us first and was refused,
    then vanished. Dialling it must end with that reason, not wait for the timeout."""
    from secagg import mpc_link

    layer = mpc_link.TlsLayer(TlsConfig.from_pki(pki, "server-a"))
    addr = f"127.0.0.1:{free_port()}"  # nobody listens there
    why = "certificate identity 'dealer' from 127.0.0.1:1 does not match the claimed party"
    t0 = time.monotonic()
    with pytest.raises(MpcError, match="not reachable .* was refused: certificate identity"):
        mpc_link._dial(layer, 0, 1, addr, time.monotonic() + 60, {1: why})
    assert time.monotonic() - t0 < 5
    # without an impostor on record it keeps trying until the deadline, then says so
    with pytest.raises(MpcError, match="could not reach"):
        mpc_link._dial(layer, 0, 1, addr, time.monotonic() + 0.5, {})
