"""Mutually authenticated TLS links between server A, server B and the dealer.

Why not gloo
------------
torch.distributed/gloo moves tensors in the clear over TCP, lets every rank connect to
every other, and opens ephemeral ports that peers learn from a rendezvous store. Every
byte secagg's 2PC moves (masked openings, Beaver openings, comparison bits, the dealer's
correlated randomness) must instead travel encrypted and only between the pairs that
need to talk. This module replaces the whole torch.distributed layer for one session:

* :class:`TlsLinks` opens one TLS 1.3 connection per *direction* between the parties
  that talk (A→B, B→A, A→dealer, dealer→A, dealer→B; B never sends to the dealer).
  Each party listens on one configured address only while the session is being set
  up, dials its peers' configured addresses, and both ends check the other's
  certificate: chain to the deployment CA, and CN equal to the party it claims to be.
* Tensors travel as a fixed little-endian header (magic, dtype code, ndim, sequence
  number, byte count, shape) followed by raw bytes in chunks of at most 4 MiB, each
  chunk tagged with the message's sequence number and offset. Nothing is pickled:
  CrypTen's ``send_obj``/``recv_obj``/``broadcast_obj`` raise.
* :class:`MtlsCommunicator` implements CrypTen's ``Communicator`` on these links (for
  two computing parties every collective is a point-to-point exchange) and is
  installed in place of CrypTen's ``DistributedCommunicator``; CrypTen's ``_logging``
  wraps it exactly as it wraps the torch.distributed one, so traffic counters work.
* :func:`point_to_point` gives secagg's own openings and the dealer channel one
  interface over either transport.

Why one connection per direction
--------------------------------
An OpenSSL connection must not be used by two threads at once. A sender thread per
outgoing link (``isend`` must not block, or two parties that both send a large tensor
first would deadlock) and a receiver thread per incoming link (which drains the socket
into numbered slots, so blocking sends always complete) each own their connection.
Session tickets are disabled so that no post-handshake record ever flows backwards.

Timeouts
--------
Setup must finish within ``MpcEndpoint.timeout_s``; every wait for a message during a
round is bounded by the same value (the dealer, idle between rounds, waits without a
bound but notices a closed link at once, and TCP keepalive catches a vanished host).
A peer that exits closes its connections, which fails every pending and later
operation on that link with :class:`secagg.mpc.MpcError` immediately.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

# secagg.mpc installs the torch shim before it imports CrypTen; import it first.
from secagg.mpc import RANK_A, RANK_B, RANK_DEALER, WORLD_SIZE, MpcEndpoint, MpcError

# isort: split
import crypten.communicator as crypten_comm
import torch.distributed as dist
from crypten.communicator.communicator import Communicator, _logging

if TYPE_CHECKING:
    from secagg.transport import TlsConfig

log = logging.getLogger("secagg.mpc_link")

TRANSPORT_GLOO = "gloo"
TRANSPORT_MTLS = "mtls"
TRANSPORTS = (TRANSPORT_GLOO, TRANSPORT_MTLS)

# Certificate identities (CN) of the three parties, as make_dev_pki issues them.
PARTY_NAMES: tuple[str, str, str] = ("server-a", "server-b", "dealer")
# Who sends to whom. Receiving links are the reverse. B never sends to the dealer (the
# dealer only hands B its stream key), so the dealer accepts connections from A only.
SENDS_TO: Mapping[int, tuple[int, ...]] = {
    RANK_A: (RANK_B, RANK_DEALER),
    RANK_B: (RANK_A,),
    RANK_DEALER: (RANK_A, RANK_B),
}

CHUNK_BYTES = 4 << 20
"""Payloads above this travel in several chunks, each with its own tagged header."""
MAX_MESSAGE_BYTES = 1 << 34
"""A peer's header announcing more than this is a protocol error (16 GiB: the dealer's
own cap of 2^31 int64 elements)."""
MAX_DIMS = 8
HANDSHAKE_TIMEOUT_S = 5.0
"""Each inbound connection must finish TLS and hello within this; handshakes run
concurrently, so an idle connection delays no other (a loopback handshake takes ms)."""
MAX_PENDING_HANDSHAKES = 16
"""Inbound connections handshaking at once; more are closed before TLS."""
SOURCE_CHECK_ENV = "SECAGG_MPC_SOURCE_CHECK"
"""Set to 0 to accept MPC links from any source address (e.g. behind a NAT that hides
the peers' configured addresses); by default only the configured peers' addresses."""
_SMALL = 64 << 10  # payloads this small go out in one write together with their header

_MSG = struct.Struct("<4sBBHQQ")  # magic, dtype code, ndim, reserved, seq, payload bytes
_MSG_MAGIC = b"SAL1"
_CHUNK = struct.Struct("<QQQ")  # seq, offset, length
_HELLO = struct.Struct("<4sBBB")  # magic, version, sender rank, receiver rank
_HELLO_MAGIC = b"SAH1"
_REPLY = struct.Struct("<4sBH")  # magic, status (0 accepted), reason length
_REPLY_MAGIC = b"SAR1"
_VERSION = 1
_MAX_REASON = 1024

_DTYPES: dict[int, torch.dtype] = {
    1: torch.int64,
    2: torch.int32,
    3: torch.int16,
    4: torch.int8,
    5: torch.uint8,
    6: torch.bool,
    7: torch.float64,
    8: torch.float32,
}
_CODES = {dt: code for code, dt in _DTYPES.items()}

if sys.byteorder != "little":  # pragma: no cover - every supported platform is LE
    raise ImportError("secagg.mpc_link sends tensors as raw little-endian bytes")

# CrypTen's own class, restored when a TLS session ends.
GLOO_COMMUNICATOR = crypten_comm.DistributedCommunicator


def party(rank: int) -> str:
    """``server A (server-a)``: how log lines and errors name a party."""
    label = {RANK_A: "server A", RANK_B: "server B", RANK_DEALER: "the dealer"}[rank]
    return f"{label} ({PARTY_NAMES[rank]})"


def receives_from(rank: int) -> tuple[int, ...]:
    return tuple(r for r, dsts in SENDS_TO.items() if rank in dsts)


def parse_addr(addr: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) → (host, port); raises ValueError."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected host:port, got {addr!r}")
    return host.strip("[]"), int(port)


def check_endpoint(rank: int, ep: MpcEndpoint) -> None:
    """Raise MpcError naming what an mTLS endpoint lacks for party ``rank``."""
    me = party(rank)
    if ep.tls is None or ep.tls.cert is None or ep.tls.key is None:
        raise MpcError(
            f"{me}: the mtls MPC transport needs a TlsConfig with this party's certificate "
            "and key (--tls-dir with ca.pem and NAME.pem/NAME.key)"
        )
    if receives_from(rank) and not ep.listen:
        raise MpcError(f"{me}: the mtls MPC transport needs a listen address (--mpc-listen)")
    for addr in filter(None, [ep.listen]):
        try:
            parse_addr(addr)
        except ValueError as exc:
            raise MpcError(f"{me}: bad MPC listen address: {exc}") from None
    for name, addr in ep.peers.items():
        try:
            parse_addr(addr)
        except ValueError as exc:
            raise MpcError(f"{me}: bad MPC address for {name}: {exc}") from None
    missing = [PARTY_NAMES[d] for d in SENDS_TO[rank] if PARTY_NAMES[d] not in ep.peers]
    if missing:
        raise MpcError(
            f"{me}: the mtls MPC transport needs the address of {', '.join(missing)} "
            "(--mpc-peers NAME=host:port,...)"
        )


# ------------------------------------------------------------------ security layer
def _common_name(cert: dict[str, Any] | None) -> str | None:
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class TlsLayer:
    """TLS 1.3 with certificates required both ways; identities are certificate CNs.

    Hostname checking is off on purpose: parties are addressed by IP or any DNS name,
    and what must match is the *party* identity (CN), checked by the caller.
    """

    def __init__(self, tls: TlsConfig) -> None:
        if tls.cert is None or tls.key is None:
            raise MpcError("the mtls MPC transport needs this party's certificate and key")
        try:
            self.server_ctx = self._context(ssl.PROTOCOL_TLS_SERVER, tls)
            self.client_ctx = self._context(ssl.PROTOCOL_TLS_CLIENT, tls)
        except (OSError, ssl.SSLError) as exc:
            raise MpcError(
                f"cannot load the MPC TLS material (ca {tls.ca_cert}, cert {tls.cert}, key "
                f"{tls.key}): {exc}"
            ) from exc
        self.server_ctx.verify_mode = ssl.CERT_REQUIRED
        # no tickets: a receiving end must never have to write after the handshake
        self.server_ctx.num_tickets = 0
        self.client_ctx.check_hostname = False
        self.client_ctx.verify_mode = ssl.CERT_REQUIRED

    @staticmethod
    def _context(protocol: int, tls: TlsConfig) -> ssl.SSLContext:
        ctx = ssl.SSLContext(protocol)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.options |= ssl.OP_NO_TICKET
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
        ctx.load_verify_locations(cafile=str(tls.ca_cert))
        return ctx

    def client(self, raw: socket.socket, expect: str) -> tuple[socket.socket, str | None]:
        s = self.client_ctx.wrap_socket(raw, server_hostname=expect)
        return s, _common_name(s.getpeercert())

    def server(self, raw: socket.socket) -> tuple[socket.socket, str | None]:
        s = self.server_ctx.wrap_socket(raw, server_side=True)
        return s, _common_name(s.getpeercert())


# Tests swap this for a plaintext layer to prove that their capture can see a leak.
SecurityLayer = Callable[["TlsConfig"], Any]
make_security_layer: SecurityLayer = TlsLayer


def _tune(sock: socket.socket) -> None:
    # many CrypTen rounds move a few bytes: no Nagle delay
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # an idle dealer waits without a timeout; keepalive notices a host that vanished
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, opt):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    _read_into(sock, memoryview(buf))
    return bytes(buf)


def _read_into(sock: socket.socket, mv: memoryview) -> None:
    got, n = 0, len(mv)
    while got < n:
        k = sock.recv_into(mv[got:], n - got)
        if k == 0:
            raise EOFError("connection closed")
        got += k


def _close(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def _payload_view(t: torch.Tensor) -> memoryview:
    arr = t.detach().contiguous().numpy()
    return memoryview(arr.reshape(-1).view(np.uint8))


# ---------------------------------------------------------------------- work items
class Work(Protocol):
    def wait(self) -> Any: ...


class _SendWork:
    """What ``isend`` returns: ``wait()`` returns once the bytes are handed to TLS."""

    def __init__(self, link: _OutLink, header: bytes, tensor: torch.Tensor, seq: int) -> None:
        self.link, self.header, self.tensor, self.seq = link, header, tensor, seq
        self.done = threading.Event()
        self.error: BaseException | None = None

    def is_completed(self) -> bool:
        return self.done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        limit = self.link.timeout_s if timeout is None else timeout
        if not self.done.wait(limit):
            raise MpcError(
                f"sending to {party(self.link.peer)} did not complete within {limit:.0f} s "
                "(is it still reading?)"
            )
        if self.error is not None:
            raise MpcError(f"sending to {party(self.link.peer)} failed: {self.error}")
        return True


class _RecvWork:
    """What ``irecv`` returns: its sequence slot is reserved when it is posted."""

    def __init__(self, link: _InLink, seq: int, into: torch.Tensor) -> None:
        self.link, self.seq, self.into = link, seq, into
        self.done = False

    def is_completed(self) -> bool:
        return self.done

    def wait(self, timeout: float | None = None) -> bool:
        if not self.done:
            got = self.link.take(self.seq, self.into)
            self.into.copy_(got)
            self.done = True
        return True


# ---------------------------------------------------------------------- one link
class _OutLink:
    """This party → ``peer``: a sender thread owns the connection."""

    def __init__(self, sock: socket.socket, peer: int, timeout_s: float) -> None:
        self.sock, self.peer, self.timeout_s = sock, peer, timeout_s
        # a stalled peer that stops reading makes a write fail after the timeout
        sock.settimeout(timeout_s)
        self.queue: queue.SimpleQueue[_SendWork | None] = queue.SimpleQueue()
        self.seq = 0
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self.closed = False
        self.thread = threading.Thread(
            target=self._run, name=f"mpc-send-{PARTY_NAMES[peer]}", daemon=True
        )
        self.thread.start()

    def post(self, tensor: torch.Tensor) -> _SendWork:
        t = tensor.detach()
        if t.dtype not in _CODES:
            raise MpcError(f"cannot send a {t.dtype} tensor over the MPC link")
        if t.dim() > MAX_DIMS:
            raise MpcError(f"cannot send a tensor of more than {MAX_DIMS} dimensions")
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        with self.lock:
            if self.error is not None or self.closed:
                why = self.error or "the session is closed"
                raise MpcError(f"the link to {party(self.peer)} is down: {why}")
            self.seq += 1
            nbytes = t.numel() * t.element_size()
            header = _MSG.pack(_MSG_MAGIC, _CODES[t.dtype], t.dim(), 0, self.seq, nbytes)
            header += struct.pack(f"<{t.dim()}q", *t.shape)
            work = _SendWork(self, header, t, self.seq)
            self.queue.put(work)
        return work

    def _run(self) -> None:
        while True:
            work = self.queue.get()
            if work is None:
                return
            if self.error is None:
                try:
                    self._write(work)
                except (OSError, ValueError) as exc:
                    self.error = exc
                    log.warning("mpc link to %s failed: %s", party(self.peer), exc)
            work.error = self.error
            work.done.set()
            work.tensor = torch.empty(0)  # release the caller's buffer reference

    def _write(self, work: _SendWork) -> None:
        payload = _payload_view(work.tensor)
        n = len(payload)
        if n <= _SMALL:
            # one write: header, one chunk header and the bytes (one TLS record)
            self.sock.sendall(work.header + _CHUNK.pack(work.seq, 0, n) + payload.tobytes())
            return
        self.sock.sendall(work.header)
        for off in range(0, n, CHUNK_BYTES):
            piece = payload[off : off + CHUNK_BYTES]
            self.sock.sendall(_CHUNK.pack(work.seq, off, len(piece)))
            self.sock.sendall(piece)

    def close(self, flush_s: float) -> None:
        with self.lock:
            self.closed = True
            self.queue.put(None)
        # let queued messages (A's terminate to the dealer) leave before closing
        self.thread.join(flush_s)
        _close(self.sock)


class _InLink:
    """``peer`` → this party: a receiver thread drains the connection into slots."""

    def __init__(self, sock: socket.socket, peer: int, timeout_s: float) -> None:
        self.sock, self.peer, self.timeout_s = sock, peer, timeout_s
        sock.settimeout(None)  # idle between rounds is normal; waiters have timeouts
        self.cond = threading.Condition()
        self.messages: dict[int, torch.Tensor] = {}
        self.arrived = 0  # sequence number of the last complete message
        self.posted = 0  # last sequence number a receive has claimed
        self.error: str | None = None
        self.closing = False
        self.thread = threading.Thread(
            target=self._run, name=f"mpc-recv-{PARTY_NAMES[peer]}", daemon=True
        )
        self.thread.start()

    def reserve(self) -> int:
        """Claim the next sequence number (receives are matched in posting order)."""
        with self.cond:
            self.posted += 1
            return self.posted

    def take(self, seq: int, like: torch.Tensor, *, idle: bool = False) -> torch.Tensor:
        """Wait for message ``seq``; check it has ``like``'s dtype and element count.

        Waits at most ``timeout_s`` unless ``idle`` (then only a link failure ends it)."""
        deadline = None if idle else time.monotonic() + self.timeout_s
        with self.cond:
            while seq not in self.messages:
                if self.error is not None:
                    raise MpcError(f"the link from {party(self.peer)} is down: {self.error}")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    # the stream is now out of step for good: fail later calls at once
                    self.error = f"timed out waiting for message {seq}"
                    raise MpcError(
                        f"no message from {party(self.peer)} within {self.timeout_s:.0f} s: "
                        "is it still running? (the MPC session cannot continue)"
                    )
                self.cond.wait(left)
            got = self.messages.pop(seq)
        if got.dtype != like.dtype or got.numel() != like.numel():
            raise MpcError(
                f"protocol out of step with {party(self.peer)}: expected "
                f"{like.dtype}{list(like.shape)}, got {got.dtype}{list(got.shape)} (message {seq})"
            )
        return got.view(like.shape)

    def _fail(self, why: str) -> None:
        with self.cond:
            if self.error is None:
                self.error = why
            self.cond.notify_all()

    def _run(self) -> None:
        try:
            while True:
                try:
                    head = _read_exact(self.sock, _MSG.size)
                except EOFError:
                    self._fail(f"{party(self.peer)} closed the connection")
                    return
                msg = self._read_message(head)
                with self.cond:
                    self.messages[self.arrived] = msg
                    self.cond.notify_all()
        except Exception as exc:  # any failure (even an allocation) ends the link, loudly
            if self.closing:
                self._fail("the session is closed")
            else:
                self._fail(f"{type(exc).__name__}: {exc}")
                log.warning("mpc link from %s failed: %s", party(self.peer), exc)

    def _read_message(self, head: bytes) -> torch.Tensor:
        magic, code, ndim, _, seq, nbytes = _MSG.unpack(head)
        if magic != _MSG_MAGIC:
            raise MpcError("bad message header (not a secagg MPC frame)")
        if seq != self.arrived + 1:
            raise MpcError(f"message {seq} out of order (expected {self.arrived + 1})")
        if code not in _DTYPES or ndim > MAX_DIMS:
            raise MpcError(f"bad message header: dtype code {code}, {ndim} dimensions")
        shape = struct.unpack(f"<{ndim}q", _read_exact(self.sock, 8 * ndim)) if ndim else ()
        dtype = _DTYPES[code]
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if any(s < 0 for s in shape) or nbytes > MAX_MESSAGE_BYTES:
            raise MpcError(f"bad message header: shape {shape}, {nbytes} bytes")
        if math.prod(shape) * itemsize != nbytes:
            raise MpcError(f"bad message header: shape {shape} does not make {nbytes} bytes")
        out = torch.empty(shape, dtype=dtype)
        view = _payload_view(out) if nbytes else memoryview(b"")
        off = 0
        while True:  # at least one chunk, even for an empty payload
            cseq, coff, clen = _CHUNK.unpack(_read_exact(self.sock, _CHUNK.size))
            if cseq != seq or coff != off or clen > CHUNK_BYTES or off + clen > nbytes:
                raise MpcError(f"bad chunk ({cseq}, {coff}, {clen}) in message {seq}")
            _read_into(self.sock, view[off : off + clen])
            off += clen
            if off == nbytes:
                break
            if clen == 0:
                raise MpcError(f"empty chunk in the middle of message {seq}")
        self.arrived = seq
        return out

    def close(self) -> None:
        self.closing = True
        _close(self.sock)
        self.thread.join(5)


# -------------------------------------------------------------------- the mesh
@dataclass
class _Accepted:
    links: dict[int, socket.socket]
    rejected: list[str]
    error: BaseException | None = None
    # claimed rank -> why refused: a deployment certificate presented under another
    # party's name (what _dial reports if that party itself cannot be reached)
    impostors: dict[int, str] = field(default_factory=dict)


class TlsLinks:
    """This party's links to the others; ``send``/``recv`` address peers by rank."""

    def __init__(
        self,
        rank: int,
        out: Mapping[int, socket.socket],
        inbound: Mapping[int, socket.socket],
        timeout_s: float,
    ) -> None:
        self.rank = rank
        self.timeout_s = timeout_s
        self.out = {p: _OutLink(s, p, timeout_s) for p, s in out.items()}
        self.inbound = {p: _InLink(s, p, timeout_s) for p, s in inbound.items()}
        self.closed = False

    # ------------------------------------------------------------- setup
    @classmethod
    def establish(cls, rank: int, ep: MpcEndpoint) -> TlsLinks:
        """Listen, dial and authenticate every link of party ``rank`` (bounded by
        ``ep.timeout_s``); raise MpcError with every reason a link could not be made."""
        check_endpoint(rank, ep)
        assert ep.tls is not None
        layer = make_security_layer(ep.tls)
        deadline = time.monotonic() + ep.timeout_s
        me = party(rank)
        listener: socket.socket | None = None
        expected = receives_from(rank)
        if expected:
            assert ep.listen is not None
            host, port = parse_addr(ep.listen)
            try:
                listener = socket.create_server((host, port), reuse_port=False)
            except OSError as exc:
                raise MpcError(f"{me}: cannot listen on {ep.listen} for MPC links: {exc}") from exc
        accepted = _Accepted({}, [])
        stop = threading.Event()
        acceptor = None
        if listener is not None:
            acceptor = threading.Thread(
                target=_accept_loop,
                args=(
                    listener,
                    layer,
                    rank,
                    expected,
                    deadline,
                    stop,
                    accepted,
                    peer_sources(ep, expected),
                ),
                name="mpc-accept",
                daemon=True,
            )
            acceptor.start()
        out: dict[int, socket.socket] = {}
        try:
            for dst in SENDS_TO[rank]:
                try:
                    out[dst] = _dial(
                        layer, rank, dst, ep.peers[PARTY_NAMES[dst]], deadline, accepted.impostors
                    )
                except MpcError as exc:
                    if not accepted.rejected:
                        raise
                    # whoever knocked on our listener meanwhile is part of the story
                    refused = "; ".join(accepted.rejected)
                    raise MpcError(f"{exc} (meanwhile this party refused: {refused})") from exc
            if acceptor is not None:
                acceptor.join(max(0.0, deadline - time.monotonic()) + 1.0)
            missing = [r for r in expected if r not in accepted.links]
            if accepted.error is not None or missing:
                who = ", ".join(party(r) for r in missing)
                reasons = "; ".join(accepted.rejected) or "no connection attempt arrived"
                if accepted.error is not None:
                    reasons = f"{accepted.error}; {reasons}"
                raise MpcError(
                    f"{me}: {who or 'a peer'} did not open an authenticated link to "
                    f"{ep.listen} within {ep.timeout_s:.0f} s ({reasons})"
                )
        except BaseException:
            stop.set()
            for s in [*out.values(), *accepted.links.values()]:
                _close(s)
            raise
        finally:
            stop.set()
            _close(listener)  # no port stays open once the session is up
            if acceptor is not None:
                acceptor.join(2.0)
        log.info("mpc: %s has authenticated TLS links to and from its peers", me)
        return cls(rank, out, dict(accepted.links), ep.timeout_s)

    # ------------------------------------------------------------- messaging
    def _out(self, dst: int) -> _OutLink:
        link = self.out.get(dst)
        if link is None:
            raise MpcError(f"{party(self.rank)} has no link to rank {dst}")
        return link

    def _in(self, src: int | None) -> _InLink:
        link = self.inbound.get(src) if src is not None else None
        if link is None:
            raise MpcError(f"{party(self.rank)} has no link from rank {src}")
        return link

    def isend(self, tensor: torch.Tensor, dst: int) -> _SendWork:
        return self._out(dst).post(tensor)

    def send(self, tensor: torch.Tensor, dst: int) -> None:
        self.isend(tensor, dst).wait()

    def irecv(self, tensor: torch.Tensor, src: int | None) -> _RecvWork:
        link = self._in(src)
        return _RecvWork(link, link.reserve(), tensor)

    def recv(self, like: torch.Tensor, src: int, *, idle: bool = False) -> torch.Tensor:
        """The next message from ``src`` as a new tensor shaped like ``like``.

        ``idle=True`` waits without a bound (the dealer between rounds)."""
        link = self._in(src)
        return link.take(link.reserve(), like, idle=idle)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for o in self.out.values():
            o.close(flush_s=min(self.timeout_s, 30.0))
        for i in self.inbound.values():
            i.close()


def _hello_reply(sock: socket.socket, ok: bool, reason: str = "") -> None:
    msg = reason.encode("utf-8", "replace")[:_MAX_REASON]
    sock.sendall(_REPLY.pack(_REPLY_MAGIC, 0 if ok else 1, len(msg)) + msg)


def peer_sources(ep: MpcEndpoint, senders: Sequence[int]) -> frozenset[str] | None:
    """IP addresses the ``senders`` may connect from: their configured MPC addresses,
    resolved. None (any source) when one of them has no address here, when a name does
    not resolve, or when ``SECAGG_MPC_SOURCE_CHECK=0``."""
    if os.environ.get(SOURCE_CHECK_ENV, "1") == "0":
        return None
    out: set[str] = set()
    for r in senders:
        addr = ep.peers.get(PARTY_NAMES[r])
        if not addr:
            return None
        host, port = parse_addr(addr)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            return None
        out.update(str(info[4][0]) for info in infos)
    return frozenset(out)


def _accept_one(
    raw: socket.socket,
    addr: tuple[Any, ...],
    layer: Any,
    rank: int,
    expected: Sequence[int],
    deadline: float,
    impostors: dict[int, str] | None = None,
) -> tuple[int | None, socket.socket | None, str | None]:
    """One accepted connection: (peer rank, socket, None) or (None, None, why refused).

    A certificate that names another party than the one claimed is also recorded in
    ``impostors`` under the claimed rank."""
    where = f"{addr[0]}:{addr[1]}"
    raw.settimeout(max(0.1, min(HANDSHAKE_TIMEOUT_S, deadline - time.monotonic())))
    try:
        sock, cn = layer.server(raw)
    except (ssl.SSLError, OSError) as exc:
        _close(raw)
        return None, None, f"TLS handshake from {where} failed: {exc}"
    try:
        magic, version, sender, receiver = _HELLO.unpack(_read_exact(sock, _HELLO.size))
    except (OSError, EOFError, struct.error) as exc:
        _close(sock)
        return None, None, f"no hello from {where} ({cn!r}): {exc}"
    allowed = {PARTY_NAMES[r]: r for r in expected}
    why = None
    if magic != _HELLO_MAGIC or version != _VERSION:
        why = f"{where} does not speak secagg MPC link version {_VERSION}"
    elif receiver != rank:
        why = f"{where} ({cn!r}) wanted rank {receiver}, this is {party(rank)}"
    elif cn not in allowed:
        why = (
            f"certificate identity {cn!r} from {where} may not open a link to {party(rank)} "
            f"(allowed: {', '.join(allowed)})"
        )
    elif not 0 <= sender < len(PARTY_NAMES) or allowed[cn] != sender:
        claimed = PARTY_NAMES[sender] if sender < len(PARTY_NAMES) else f"rank {sender}"
        why = (
            f"certificate identity {cn!r} from {where} does not match the claimed party "
            f"{claimed!r}"
        )
        if impostors is not None and 0 <= sender < len(PARTY_NAMES):
            impostors[sender] = why
    if why is not None:
        with contextlib.suppress(OSError):
            _hello_reply(sock, False, why)
        _close(sock)
        return None, None, why
    _hello_reply(sock, True)
    return sender, sock, None


def _accept_loop(
    listener: socket.socket,
    layer: Any,
    rank: int,
    expected: Sequence[int],
    deadline: float,
    stop: threading.Event,
    acc: _Accepted,
    sources: frozenset[str] | None = None,
) -> None:
    """Accept until every expected peer has a link. Each connection is handshaken on
    its own thread with a short timeout, so idle or slow connections cannot hold up
    the real peers; connections from other addresses than the peers' are closed
    before any TLS, and at most MAX_PENDING_HANDSHAKES run at once."""
    lock = threading.Lock()
    pending = threading.BoundedSemaphore(MAX_PENDING_HANDSHAKES)

    def handle(raw: socket.socket, addr: tuple[Any, ...]) -> None:
        try:
            peer, sock, why = _accept_one(
                raw, addr, layer, rank, expected, deadline, acc.impostors
            )
            with lock:
                if why is None and peer is not None and sock is not None:
                    if peer in acc.links or stop.is_set():
                        with contextlib.suppress(OSError):
                            _hello_reply(sock, False, "duplicate link")
                        _close(sock)
                        why = f"a second link from {party(peer)} was refused"
                    else:
                        _tune(sock)
                        acc.links[peer] = sock
                        return
                assert why is not None
                log.warning("mpc: %s refused a link: %s", party(rank), why)
                acc.rejected.append(why)
        except Exception as exc:  # never let one connection end the acceptor
            _close(raw)
            with lock:
                acc.rejected.append(f"connection from {addr[0]} failed: {exc}")
        finally:
            pending.release()

    try:
        while not stop.is_set() and any(r not in acc.links for r in expected):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            listener.settimeout(min(0.2, left))
            try:
                raw, addr = listener.accept()
            except TimeoutError:
                continue
            if sources is not None and addr[0] not in sources:
                _close(raw)  # not a peer's address: no TLS, no log flood
                with lock:
                    if len(acc.rejected) < 100:
                        acc.rejected.append(f"{addr[0]} is not a configured peer address")
                continue
            if not pending.acquire(blocking=False):
                _close(raw)
                continue
            threading.Thread(
                target=handle, args=(raw, addr), name="mpc-handshake", daemon=True
            ).start()
    except OSError as exc:
        if not stop.is_set():
            acc.error = exc


def _dial(
    layer: Any,
    rank: int,
    dst: int,
    addr: str,
    deadline: float,
    impostors: dict[int, str] | None = None,
) -> socket.socket:
    """Connect to ``dst`` (retrying until it listens), check its identity, say hello.

    While ``dst`` cannot be reached, a refused inbound link that claimed to be ``dst``
    under another certificate (``impostors``, filled by the acceptor) ends the wait at
    once: the party that should be ``dst`` holds the wrong certificate, and waiting
    out the timeout would only hide why.
    """
    me, them = party(rank), party(dst)
    host, port = parse_addr(addr)
    last: BaseException | None = None
    while True:
        if last is not None and impostors and dst in impostors:
            raise MpcError(
                f"{me}: {them} at {addr} is not reachable ({last}), and the party that "
                f"dialled in as {PARTY_NAMES[dst]!r} was refused: {impostors[dst]}; "
                f"give {them} its own certificate"
            )
        left = deadline - time.monotonic()
        if left <= 0:
            raise MpcError(
                f"{me}: could not reach {them} at {addr} within the MPC timeout "
                f"(last error: {last}); check --mpc-peers and that it is running"
            )
        try:
            raw = socket.create_connection((host, port), timeout=min(left, 5.0))
        except OSError as exc:
            last = exc
            time.sleep(min(0.1, max(0.0, left)))
            continue
        if raw.getsockname() == raw.getpeername():
            # TCP self-connect: while nobody listens on a loopback port, the kernel can
            # pick that very port as our source and connect the socket to itself (and
            # then hold the port the peer wants to bind). Drop it and dial again.
            _close(raw)
            last = ConnectionRefusedError(f"self-connection on {addr}")
            time.sleep(0.1)
            continue
        raw.settimeout(max(0.1, min(HANDSHAKE_TIMEOUT_S, left)))
        try:
            sock, cn = layer.client(raw, PARTY_NAMES[dst])
        except ssl.SSLCertVerificationError as exc:
            _close(raw)
            raise MpcError(
                f"{me}: {them} at {addr} presented a certificate the deployment CA does not "
                f"vouch for ({exc.verify_message}); refusing the link"
            ) from exc
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError, TimeoutError) as exc:
            # closed or reset before any verdict (a peer still starting, a proxy whose
            # target is not up yet): try again until the deadline
            _close(raw)
            last = exc
            time.sleep(0.1)
            continue
        except ssl.SSLError as exc:
            _close(raw)
            raise MpcError(f"{me}: TLS handshake with {them} at {addr} failed: {exc}") from exc
        except OSError as exc:
            _close(raw)
            last = exc
            time.sleep(0.1)
            continue
        if cn != PARTY_NAMES[dst]:
            _close(sock)
            raise MpcError(
                f"{me}: the party at {addr} presented certificate identity {cn!r}, expected "
                f"{PARTY_NAMES[dst]!r}; refusing the link"
            )
        try:
            sock.sendall(_HELLO.pack(_HELLO_MAGIC, _VERSION, rank, dst))
            magic, status, n = _REPLY.unpack(_read_exact(sock, _REPLY.size))
            reason = _read_exact(sock, min(n, _MAX_REASON)).decode("utf-8", "replace")
        except ssl.SSLError as exc:
            _close(sock)
            raise MpcError(
                f"{me}: {them} at {addr} refused this party's certificate ({exc.reason or exc}); "
                f"it must be issued by the deployment CA for {PARTY_NAMES[rank]!r}"
            ) from exc
        except (OSError, EOFError, struct.error) as exc:
            _close(sock)
            raise MpcError(
                f"{me}: {them} at {addr} closed the link during the hello ({exc}); it may "
                f"have refused this party's certificate (must name {PARTY_NAMES[rank]!r})"
            ) from exc
        if magic != _REPLY_MAGIC or status != 0:
            _close(sock)
            raise MpcError(f"{me}: {them} at {addr} refused the link: {reason or 'no reason'}")
        _tune(sock)
        return sock


# -------------------------------------------------------- CrypTen's communicator
_REDUCE: dict[Any, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    dist.ReduceOp.SUM: torch.add,  # int64 wraps: exactly the ring Z_2^64
    dist.ReduceOp.PRODUCT: torch.mul,
    dist.ReduceOp.MIN: torch.minimum,
    dist.ReduceOp.MAX: torch.maximum,
    dist.ReduceOp.BAND: torch.bitwise_and,
    dist.ReduceOp.BOR: torch.bitwise_or,
    dist.ReduceOp.BXOR: torch.bitwise_xor,
}


def _reducer(op: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    for known, fn in _REDUCE.items():
        if op == known:
            return fn
    raise MpcError(f"reduce op {op} is not supported on the mtls MPC transport")


class MtlsCommunicator(Communicator):
    """CrypTen's ``Communicator`` for two computing parties over :class:`TlsLinks`.

    Every collective is a point-to-point exchange between rank 0 and rank 1; results
    are combined in rank order so both parties compute bit-identical values. Methods
    carry CrypTen's ``_logging`` decorator, so the traffic counters count exactly what
    they count for torch.distributed.
    """

    BYTES_PER_ELEMENT = 8
    instance: MtlsCommunicator | None = None

    def __init__(self, rank: int, links: TlsLinks) -> None:
        self.rank = rank
        self.world_size = WORLD_SIZE
        self.links = links
        # secagg's own code reaches its channels through these (see point_to_point)
        self.main_group: TlsLinks = links
        self.ttp_group: TlsLinks = links
        self.ttp_comm_group: TlsLinks = links
        self.ttp_initialized = True
        self._name = f"rank{rank}"
        self.reset_communication_stats()

    # ------------------------------------------------------------- lifecycle
    @classmethod
    def is_initialized(cls) -> bool:
        return cls.instance is not None

    @classmethod
    def get(cls) -> MtlsCommunicator | None:
        return cls.instance

    @classmethod
    def initialize(cls, rank: int, world_size: int, init_ttp: bool = False) -> None:
        raise MpcError("the mtls communicator is started by secagg.mpc (MpcSession/run_dealer)")

    @classmethod
    def shutdown(cls) -> None:
        uninstall()

    def get_world_size(self) -> int:
        return self.world_size

    def get_rank(self) -> int:
        return self.rank

    def get_ttp_rank(self) -> int:
        return self.world_size

    def set_name(self, name: str) -> None:
        self._name = name

    def get_name(self) -> str:
        return self._name

    def get_distributed_backend(self) -> str:
        return TRANSPORT_MTLS

    def _peer(self) -> int:
        if self.rank not in (RANK_A, RANK_B):
            raise MpcError("only server A and server B run CrypTen protocols")
        return 1 - self.rank

    def _exchange(self, mine: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        peer = self._peer()
        works = [self.links.isend(t, peer) for t in mine]
        theirs = [self.links.recv(t, peer) for t in mine]
        for w in works:
            w.wait()
        return theirs

    def _ordered(self, mine: torch.Tensor, theirs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (mine, theirs) if self.rank == RANK_A else (theirs, mine)

    # ------------------------------------------------------------- point to point
    @_logging
    def send(self, tensor: torch.Tensor, dst: int) -> None:
        self.links.send(tensor.data, dst)

    @_logging
    def recv(self, tensor: torch.Tensor, src: int | None = None) -> torch.Tensor:
        if src is None:
            src = self._peer()
        return self.links.recv(tensor.data, src)  # already a fresh tensor

    @_logging
    def isend(self, tensor: torch.Tensor, dst: int) -> _SendWork:
        return self.links.isend(tensor.data, dst)

    @_logging
    def irecv(self, tensor: torch.Tensor, src: int | None = None) -> _RecvWork:
        if src is None:
            src = self._peer()
        return self.links.irecv(tensor.data, src)

    # ------------------------------------------------------------- collectives
    @_logging
    def scatter(
        self,
        scatter_list: list[torch.Tensor],
        src: int,
        size: Any = None,
        device: Any = None,
    ) -> torch.Tensor:
        peer = self._peer()
        if src == self.rank:
            self.links.send(scatter_list[peer].data, peer)
            return scatter_list[self.rank]
        if size is None:
            size = scatter_list[self.rank].size()
        return self.links.recv(torch.empty(size=size, dtype=torch.long), src)

    @_logging
    def reduce(
        self, input: Any, dst: int, op: Any = dist.ReduceOp.SUM, batched: bool = False
    ) -> Any:
        fn = _reducer(op)
        tensors = list(input) if batched else [input]
        peer = self._peer()
        if self.rank != dst:
            works = [self.links.isend(t.data, peer) for t in tensors]
            for w in works:
                w.wait()
            return None
        out = [fn(*self._ordered(t.data, self.links.recv(t.data, peer))) for t in tensors]
        return out if batched else out[0]

    @_logging
    def all_reduce(self, input: Any, op: Any = dist.ReduceOp.SUM, batched: bool = False) -> Any:
        fn = _reducer(op)
        tensors = [t.data for t in (list(input) if batched else [input])]
        theirs = self._exchange(tensors)
        out = [fn(*self._ordered(m, o)) for m, o in zip(tensors, theirs, strict=True)]
        return out if batched else out[0]

    @_logging
    def gather(self, tensor: torch.Tensor, dst: int) -> list[torch.Tensor | None]:
        peer = self._peer()
        if self.rank != dst:
            self.links.send(tensor.data, dst)
            return [None]
        other = self.links.recv(tensor.data, peer)
        return list(self._ordered(tensor.data.clone(), other))

    @_logging
    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        (other,) = self._exchange([tensor.data])
        return list(self._ordered(tensor.data.clone(), other))

    @_logging
    def broadcast(self, input: Any, src: int, group: Any = None, batched: bool = False) -> Any:
        tensors = list(input) if batched else [input]
        peer = self._peer()
        if self.rank == src:
            works = [self.links.isend(t.data, peer) for t in tensors]
            for w in works:
                w.wait()
        else:
            for t in tensors:
                t.data.copy_(self.links.recv(t.data, src))
        return input

    @_logging
    def barrier(self) -> None:
        self._exchange([torch.zeros(0, dtype=torch.long)])

    # ------------------------------------------------------------- never pickle
    def send_obj(self, obj: Any, dst: int, group: Any = None) -> None:
        raise MpcError("send_obj would pickle: secagg's MPC links carry raw tensors only")

    def recv_obj(self, src: int, group: Any = None) -> Any:
        raise MpcError("recv_obj would unpickle: secagg's MPC links carry raw tensors only")

    def broadcast_obj(self, obj: Any, src: int, group: Any = None) -> Any:
        raise MpcError("broadcast_obj would pickle: secagg's MPC links carry raw tensors only")


def install(rank: int, ep: MpcEndpoint) -> MtlsCommunicator:
    """Open party ``rank``'s TLS links and make CrypTen use them (not torch.distributed)."""
    uninstall()
    links = TlsLinks.establish(rank, ep)
    inst = MtlsCommunicator(rank, links)
    MtlsCommunicator.instance = inst
    # crypten.communicator.get() looks this module global up on every call
    crypten_comm.DistributedCommunicator = MtlsCommunicator  # type: ignore[misc]
    return inst


def uninstall() -> bool:
    """Close the TLS links (if any) and give CrypTen its own communicator back."""
    crypten_comm.DistributedCommunicator = GLOO_COMMUNICATOR  # type: ignore[misc]
    inst = MtlsCommunicator.instance
    MtlsCommunicator.instance = None
    if inst is None:
        return False
    inst.links.close()
    return True


# -------------------------------------------------- secagg's own point-to-point
class PointToPoint(Protocol):
    """The channel secagg's openings and the dealer use, on either transport."""

    def isend(self, tensor: torch.Tensor, dst: int) -> Work: ...

    def send(self, tensor: torch.Tensor, dst: int) -> None: ...

    def recv(self, like: torch.Tensor, src: int, *, idle: bool = False) -> torch.Tensor: ...


class GlooPointToPoint:
    """torch.distributed on one process group (``recv`` fills ``like`` and returns it)."""

    def __init__(self, group: Any) -> None:
        self.group = group

    def isend(self, tensor: torch.Tensor, dst: int) -> Work:
        return dist.isend(tensor, dst=dst, group=self.group)

    def send(self, tensor: torch.Tensor, dst: int) -> None:
        dist.send(tensor, dst=dst, group=self.group)

    def recv(self, like: torch.Tensor, src: int, *, idle: bool = False) -> torch.Tensor:
        dist.recv(like, src=src, group=self.group)
        return like


def point_to_point(group: Any) -> PointToPoint:
    """The channel for ``comm.get().main_group`` / ``ttp_group`` on either transport."""
    if isinstance(group, TlsLinks):
        return group
    return GlooPointToPoint(group)


__all__ = [
    "CHUNK_BYTES",
    "PARTY_NAMES",
    "SENDS_TO",
    "TRANSPORTS",
    "TRANSPORT_GLOO",
    "TRANSPORT_MTLS",
    "GlooPointToPoint",
    "MtlsCommunicator",
    "PointToPoint",
    "TlsLayer",
    "TlsLinks",
    "install",
    "parse_addr",
    "point_to_point",
    "uninstall",
]

