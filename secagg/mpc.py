"""Everything that touches CrypTen: the torch-2.x shim, the CSPRNG dealer, the 2PC phases.

Parties
-------
Rank 0 is server A, rank 1 is server B and rank 2 is the dealer (CrypTen's "TTP").
The three processes meet either over torch.distributed/gloo (``env://`` rendezvous
hosted by server A; plaintext TCP, for one trusted host or network) or, with
``MpcEndpoint(transport="mtls")``, over mutually authenticated TLS 1.3 links between
the parties' certificate identities (:mod:`secagg.mpc_link`), which replace CrypTen's
communicator and the dealer channel; no gloo port exists then. One
:class:`MpcSession` per server process is initialised once and reused for every round;
the dealer process runs :func:`run_dealer` until told to stop.

Why a custom dealer
-------------------
CrypTen's stock TTP derives each party's mask stream from torch's Mersenne Twister
seeded with 64 bits. 312 consecutive outputs of that generator predict all later ones,
and in the Gram opening ``E = X - R`` server A plus one colluding worker (who knows its
own row of ``X``) learns hundreds of thousands of consecutive outputs of B's stream,
so A could unmask every honest worker. Here every mask stream is AES-256-CTR
(:class:`secagg.prg.AesCtrStream`) keyed with 256 fresh bits from ``secrets`` that the
dealer sends to each party once. The TFP provider (party 0 generates all triples) is
never used.

Trust boundary for deserialisation
----------------------------------
No byte received from another party is unpickled by secagg. Dealer requests are
fixed-layout int64 headers, responses are raw int64 tensors, and every 2PC message is
a tensor moved by torch.distributed. CrypTen's own ``send_obj``/``recv_obj`` (which
use CrypTen's restricted unpickler) are not called on any path secagg runs: we
replace the TTP request channel and the shutdown message that would use them.

Fixed-point arithmetic and error
--------------------------------
Inputs are CrypTen fixed point (16 fractional bits) in Z_2^64. The Gram matrix and
the distances are computed *exactly* on the encoded integers (scale 2^32, no
truncation): the revealed matrix equals ``||x~_i - x~_j||^2`` of the rounded vectors
bit for bit, provided the headroom condition ``4 L^2 2^32 < 2^63`` holds
(:func:`secagg.encoding.check_headroom`). The only error against real arithmetic is
the encoding's rounding of each coordinate (at most 2^-17 / scale). The revealed sum
and Bulyan's window sum are exact integer sums of encoded coordinates as well: the
secure comparisons are exact and every multiplication is by a 0/1 bit at scale 1,
which needs no truncation.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import gc
import logging
import os
import sys
import time
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from secagg import compare
from secagg.prg import KEY_BYTES, AesCtrStream, fresh_key
from secagg.ringmath import matmul_nt

if TYPE_CHECKING:  # secagg.transport pulls in gRPC; only annotations need it here
    from secagg.mpc_link import Work
    from secagg.transport import TlsConfig

log = logging.getLogger("secagg.mpc")

RANK_A = 0
RANK_B = 1
RANK_DEALER = 2
WORLD_SIZE = 2  # computing parties; the dealer is rank WORLD_SIZE
FRAC_BITS = 16


# --------------------------------------------------------------------------- shim
def _install_torch_shim() -> None:
    """Let ``import crypten`` work on torch >= 2.9.

    CrypTen 0.4.1 imports ``torch.onnx._internal.registration``, which moved to
    ``torch.onnx._internal.torchscript_exporter.registration``. We alias the old name
    (a stub registry as a fallback: secagg never converts ONNX models).
    """
    name = "torch.onnx._internal.registration"
    if name in sys.modules:
        return
    try:
        import importlib

        importlib.import_module(name)
        return
    except ImportError:
        pass
    try:
        from torch.onnx._internal.torchscript_exporter import registration as moved

        sys.modules[name] = moved
    except ImportError:
        stub = types.ModuleType(name)
        stub.registry = None  # type: ignore[attr-defined]
        sys.modules[name] = stub


_install_torch_shim()

import crypten  # noqa: E402
import crypten.communicator as comm  # noqa: E402
import torch.distributed as dist  # noqa: E402
from crypten.common.util import count_wraps  # noqa: E402
from crypten.mpc import MPCTensor  # noqa: E402
from crypten.mpc.primitives import ArithmeticSharedTensor, BinarySharedTensor  # noqa: E402
from crypten.mpc.provider.ttp_provider import TrustedThirdParty  # noqa: E402


class MpcError(RuntimeError):
    """A 2PC step failed (peer or dealer gone, timeout, bad request)."""


# ------------------------------------------------------------ dealer wire format
# Requests from party 0 to the dealer are a fixed int64 header, never a pickle.
_HDR = 32
_F_TERMINATE, _F_ADDITIVE, _F_SQUARE, _F_BINARY, _F_WRAPS, _F_B2A, _F_GRAM, _F_PING = range(8)
_OPS = ("mul", "matmul")
_MAX_DIMS = 8  # CrypTen's circuits stack masks on top of the operands' dimensions
# The dealer refuses absurd sizes instead of trying to allocate them.
MAX_DEALER_ELEMENTS = 1 << 31


def _put_size(hdr: torch.Tensor, at: int, size: Sequence[int]) -> None:
    if len(size) > _MAX_DIMS:
        raise MpcError(f"tensors of more than {_MAX_DIMS} dimensions are not supported")
    hdr[at] = len(size)
    for k, s in enumerate(size):
        hdr[at + 1 + k] = int(s)


def _get_size(hdr: torch.Tensor, at: int) -> tuple[int, ...]:
    nd = int(hdr[at])
    if not 0 <= nd <= _MAX_DIMS:
        raise MpcError(f"bad dealer request: {nd} dimensions")
    size = tuple(int(v) for v in hdr[at + 1 : at + 1 + nd])
    if any(s < 0 for s in size) or int(np.prod(size, dtype=np.int64)) > MAX_DEALER_ELEMENTS:
        raise MpcError(f"bad dealer request: size {size}")
    return size


def _ring(stream: AesCtrStream, size: Sequence[int]) -> torch.Tensor:
    return torch.from_numpy(stream.ring(tuple(size)))


def symmetric_ring(stream: AesCtrStream, n: int) -> torch.Tensor:
    """A uniformly random symmetric n×n ring matrix, diagonal included.

    Party 1's share of a Gram pair's ``Z = R R^T``. ``U + U^T`` would be symmetric too
    but has an even diagonal, which made party 0's share satisfy
    ``Z_0[i, i] = sum_j R_ij mod 2`` and, with the opened ``E = X - R``, told server A
    each worker's coordinate-sum parity. Draws n·n words, like ``U``, so both ends of
    the stream stay in lockstep: the upper triangle (diagonal included) is mirrored.
    """
    u = _ring(stream, (n, n))
    return torch.triu(u) + torch.triu(u, diagonal=1).t()


def _bits(stream: AesCtrStream, size: Sequence[int], bitlength: int) -> torch.Tensor:
    return torch.from_numpy(stream.bits(tuple(size), bitlength))


def _op_size(op: str, size0: Sequence[int], size1: Sequence[int]) -> torch.Size:
    # shape inference on the meta device: no memory, no arithmetic
    a = torch.empty(tuple(size0), device="meta", dtype=torch.long)
    b = torch.empty(tuple(size1), device="meta", dtype=torch.long)
    return getattr(torch, op)(a, b).size()


# ----------------------------------------------------------------- party side
@dataclass
class Traffic:
    """Bytes and rounds this party moved, by phase (what the report shows)."""

    bytes_sent: dict[str, int] = field(default_factory=dict)
    rounds: dict[str, int] = field(default_factory=dict)
    dealer_bytes: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {
            "bytes_sent": dict(self.bytes_sent),
            "rounds": dict(self.rounds),
            "dealer_bytes": dict(self.dealer_bytes),
            "seconds": dict(self.seconds),
        }


GRAM_BLOCK_ELEMENTS = 1 << 19  # ring elements per column block of R (4 MiB)
_BULYAN_BLOCK_VALUES = 1 << 19  # θ × columns per block of Bulyan's coordinate stage
_WINDOW_ELEMENTS = 1 << 21  # masked blocks in flight during the Gram opening (16 MiB)


def gram_width(n: int) -> int:
    """Columns per block of a Gram pair's ``R`` for ``n`` rows (normative for both ends)."""
    return max(256, GRAM_BLOCK_ELEMENTS // max(n, 1))


def gram_columns(n: int, d: int) -> Iterator[tuple[int, int]]:
    """(first column, width) of each column block of a Gram pair's ``R`` for ``n`` rows.

    Layout (normative for both ends): blocks of :func:`gram_width` columns left to
    right, each drawn row-major from the sub-key's stream.
    """
    width = gram_width(n)
    for c0 in range(0, d, width):
        yield c0, min(width, d - c0)


@dataclass
class GramPlan:
    """A party's handle on a Gram pair: its sub-key for ``R_i`` and (once known) ``[Z]``."""

    n: int
    d: int
    key: bytes
    z: torch.Tensor | None


class _CsprngClient:
    """Party end of the dealer channel: a key-seeded AES-CTR stream per party."""

    def __init__(self, rank: int, ttp_group: object, timeout_s: float) -> None:
        from secagg.mpc_link import point_to_point

        self.rank = rank
        self.ttp_group = ttp_group
        # the dealer channel: gloo's ttp_group, or the mutual-TLS link to the dealer
        self.link = point_to_point(ttp_group)
        key_t = self.link.recv(torch.empty(KEY_BYTES // 8, dtype=torch.long), RANK_DEALER)
        self.stream = AesCtrStream(key_t.numpy().astype("<i8").tobytes())
        self.dealer_bytes = 0

    def send_request(self, hdr: torch.Tensor) -> None:
        """Ask the dealer for material; it starts computing while we do other work."""
        if self.rank != RANK_A:
            raise MpcError("only party 0 talks to the dealer")
        self.link.send(hdr, RANK_DEALER)
        self.dealer_bytes += hdr.numel() * 8

    def recv_result(self, result_size: Sequence[int]) -> torch.Tensor:
        out = self.link.recv(torch.empty(tuple(result_size), dtype=torch.long), RANK_DEALER)
        self.dealer_bytes += out.numel() * 8
        return out

    def request(self, hdr: torch.Tensor, result_size: Sequence[int]) -> torch.Tensor:
        self.send_request(hdr)
        return self.recv_result(result_size)


_CLIENT: _CsprngClient | None = None


def _client() -> _CsprngClient:
    if _CLIENT is None:
        raise MpcError("the MPC session is not started")
    return _CLIENT


class CsprngTTP(TrustedThirdParty):
    """CrypTen's TTP provider with AES-CTR mask streams and a Gram-pair request.

    Party ``r`` draws its share of every mask from its own stream; the dealer, which
    holds every stream key, reconstructs the masks and sends party 0 the one share
    that makes the correlation hold (``c = a*b``, ``r2 = r^2``, ``Z = R R^T``...).
    Draw order per stream is identical on both ends, which keeps them in lockstep.
    """

    NAME = "TTP"

    def generate_additive_triple(self, size0, size1, op, device=None, *args, **kwargs):  # type: ignore[override]
        if op not in _OPS or args or kwargs:
            raise MpcError(f"secagg's dealer supports only {_OPS} triples, not {op}")
        cl = _client()
        a = _ring(cl.stream, size0)
        b = _ring(cl.stream, size1)
        c_size = _op_size(op, size0, size1)
        if cl.rank == RANK_A:
            hdr = torch.zeros(_HDR, dtype=torch.long)
            hdr[0] = _F_ADDITIVE
            hdr[1] = _OPS.index(op)
            _put_size(hdr, 2, size0)
            _put_size(hdr, 11, size1)
            c = cl.request(hdr, c_size)
        else:
            c = _ring(cl.stream, c_size)
        return (
            ArithmeticSharedTensor.from_shares(a, precision=0),
            ArithmeticSharedTensor.from_shares(b, precision=0),
            ArithmeticSharedTensor.from_shares(c, precision=0),
        )

    def _pair(self, fid: int, size, make_r):  # noqa: ANN001
        cl = _client()
        r = make_r(cl.stream, size)
        if cl.rank == RANK_A:
            hdr = torch.zeros(_HDR, dtype=torch.long)
            hdr[0] = fid
            _put_size(hdr, 2, size)
            other = cl.request(hdr, size)
        else:
            other = _ring(cl.stream, size)
        return r, other

    def square(self, size, device=None):  # type: ignore[override]
        r, r2 = self._pair(_F_SQUARE, tuple(size), _ring)
        return (
            ArithmeticSharedTensor.from_shares(r, precision=0),
            ArithmeticSharedTensor.from_shares(r2, precision=0),
        )

    def generate_binary_triple(self, size0, size1, device=None):  # type: ignore[override]
        cl = _client()
        a = _ring(cl.stream, size0)
        b = _ring(cl.stream, size1)
        c_size = torch.broadcast_shapes(tuple(size0), tuple(size1))
        if cl.rank == RANK_A:
            hdr = torch.zeros(_HDR, dtype=torch.long)
            hdr[0] = _F_BINARY
            _put_size(hdr, 2, size0)
            _put_size(hdr, 11, size1)
            c = cl.request(hdr, c_size)
        else:
            c = _ring(cl.stream, c_size)
        return (
            BinarySharedTensor.from_shares(a),
            BinarySharedTensor.from_shares(b),
            BinarySharedTensor.from_shares(c),
        )

    def wrap_rng(self, size, device=None):  # type: ignore[override]
        r, theta = self._pair(_F_WRAPS, tuple(size), _ring)
        return (
            ArithmeticSharedTensor.from_shares(r, precision=0),
            ArithmeticSharedTensor.from_shares(theta, precision=0),
        )

    def B2A_rng(self, size, device=None):  # type: ignore[override]
        rb, ra = self._pair(_F_B2A, tuple(size), lambda s, z: _bits(s, z, 1))
        return (
            ArithmeticSharedTensor.from_shares(ra, precision=0),
            BinarySharedTensor.from_shares(rb),
        )

    def gram_start(self, n: int, d: int) -> GramPlan:
        """Start this party's share of a Gram pair: a uniform ``R`` (n×d) and ``Z = R R^T``.

        ``R`` is not materialised: both ends draw a fresh 256-bit sub-key from their
        shared stream, and ``R_i`` is expanded from it column block by column block
        (:func:`gram_columns`) in the online phase, so a prepared pair costs O(n²)
        memory, not O(n·d). Party 0 asks the dealer, which starts computing ``R R^T``
        at once; :meth:`gram_finish` collects its share. ``Z``'s shares are both exactly
        symmetric (party 1's is uniform among symmetric matrices, :func:`symmetric_ring`),
        so every matrix derived from them is symmetric too and exact ties break
        identically for ``D[i, j]`` and ``D[j, i]``.
        """
        cl = _client()
        if cl.rank == RANK_A:
            hdr = torch.zeros(_HDR, dtype=torch.long)
            hdr[0] = _F_GRAM
            hdr[1] = n
            hdr[2] = d
            cl.send_request(hdr)
        sub = cl.stream.read_bytes(KEY_BYTES)
        z = None
        if cl.rank != RANK_A:
            z = symmetric_ring(cl.stream, n)
        return GramPlan(n=n, d=d, key=sub, z=z)

    def gram_finish(self, plan: GramPlan) -> torch.Tensor:
        """This party's share of ``Z = R R^T`` (party 0 waits for the dealer's)."""
        if plan.z is None:
            plan.z = _client().recv_result((plan.n, plan.n))
        return plan.z

    @staticmethod
    def _init() -> None:  # CrypTen's init hook; the session does this itself
        return None

    @staticmethod
    def uninit() -> None:
        return None


def _register_provider() -> None:
    # ``crypten.mpc`` keys providers by name in a module global; we overwrite "TTP"
    # so that every CrypTen protocol that asks for triples gets the CSPRNG dealer.
    providers = vars(crypten.mpc)["__SUPPORTED_PROVIDERS"]
    providers["TTP"] = CsprngTTP()
    # TFP would let party 0 generate every triple (and so see everything): remove it.
    providers.pop("TFP", None)
    crypten.cfg.mpc.provider = "TTP"


# ------------------------------------------------------------------- dealer
class _Dealer:
    def __init__(self, ttp_group: object) -> None:
        from secagg.mpc_link import point_to_point

        self.ttp_group = ttp_group
        # gloo's ttp_group, or the dealer's mutual-TLS links to A and B
        self.link = point_to_point(ttp_group)
        keys = [fresh_key() for _ in range(WORLD_SIZE)]
        self.streams = [AesCtrStream(k) for k in keys]
        for rank, key in enumerate(keys):
            t = torch.from_numpy(np.frombuffer(key, dtype="<i8").astype(np.int64))
            self.link.send(t, rank)
        self.requests = 0
        self.bytes_sent = WORLD_SIZE * KEY_BYTES

    def _sum(self, size: Sequence[int]) -> torch.Tensor:
        out = _ring(self.streams[0], size)
        for s in self.streams[1:]:
            out += _ring(s, size)
        return out

    def _others(self, size: Sequence[int]) -> torch.Tensor:
        # the shares of parties 1.. (party 0's share is what the dealer sends)
        out = _ring(self.streams[1], size)
        for s in self.streams[2:]:
            out += _ring(s, size)
        return out

    def _xor(self, size: Sequence[int], bitlength: int = 64) -> torch.Tensor:
        out = _bits(self.streams[0], size, bitlength)
        for s in self.streams[1:]:
            out ^= _bits(s, size, bitlength)
        return out

    def handle(self, hdr: torch.Tensor) -> torch.Tensor | None:
        fid = int(hdr[0])
        if fid == _F_TERMINATE:
            return None
        if fid == _F_PING:  # liveness probe from server A: draws from no stream
            return torch.zeros(1, dtype=torch.long)
        if fid == _F_ADDITIVE:
            op_id = int(hdr[1])
            if not 0 <= op_id < len(_OPS):
                raise MpcError(f"bad dealer request: op {op_id}")
            s0, s1 = _get_size(hdr, 2), _get_size(hdr, 11)
            a, b = self._sum(s0), self._sum(s1)
            c = getattr(torch, _OPS[op_id])(a, b)
            return c - self._others(c.size())
        if fid == _F_SQUARE:
            size = _get_size(hdr, 2)
            r = self._sum(size)
            return r * r - self._others(size)
        if fid == _F_BINARY:
            s0, s1 = _get_size(hdr, 2), _get_size(hdr, 11)
            a = _ring(self.streams[0], s0) ^ _ring(self.streams[1], s0)
            b = _ring(self.streams[0], s1) ^ _ring(self.streams[1], s1)
            c = a & b
            return c ^ _ring(self.streams[1], c.size())
        if fid == _F_WRAPS:
            size = _get_size(hdr, 2)
            r = [_ring(s, size) for s in self.streams]
            return count_wraps(r) - self._others(size)
        if fid == _F_B2A:
            size = _get_size(hdr, 2)
            rb = self._xor(size, bitlength=1)
            return rb - self._others(size)
        if fid == _F_GRAM:
            n, d = int(hdr[1]), int(hdr[2])
            if n < 1 or d < 1 or n * d > MAX_DEALER_ELEMENTS:
                raise MpcError(f"bad dealer request: gram {n}x{d}")
            subs = [AesCtrStream(st.read_bytes(KEY_BYTES)) for st in self.streams]
            z = torch.zeros((n, n), dtype=torch.long)
            bufs = [np.empty(n * gram_width(n), dtype=np.int64) for _ in subs]
            for _c0, w in gram_columns(n, d):
                r = torch.from_numpy(subs[0].fill(bufs[0][: n * w].reshape(n, w)))
                for st, buf in zip(subs[1:], bufs[1:], strict=True):
                    r += torch.from_numpy(st.fill(buf[: n * w].reshape(n, w)))
                matmul_nt(r, r, out=z)  # blockwise: the dealer never holds all of R
            return z - symmetric_ring(self.streams[1], n)
        if fid == compare.FID_COMPARE:  # secure comparisons: secagg.compare's edaBits
            try:
                fix = compare.dealer_material(self.streams, int(hdr[1]), int(hdr[2]))
            except compare.CompareError as exc:
                raise MpcError(str(exc)) from None
            return torch.from_numpy(fix)
        raise MpcError(f"bad dealer request: function {fid}")

    def serve(self) -> None:
        template = torch.empty(_HDR, dtype=torch.long)
        while True:
            # idle: between rounds the dealer may wait for A as long as A lives
            hdr = self.link.recv(template, RANK_A, idle=True)
            result = self.handle(hdr)
            if result is None:
                log.info("dealer: terminate received after %d requests", self.requests)
                return
            self.requests += 1
            self.bytes_sent += result.numel() * 8
            self.link.send(result.contiguous(), RANK_A)


# --------------------------------------------------------------- session setup
@dataclass(frozen=True)
class MpcEndpoint:
    """How this party reaches the others.

    ``transport="gloo"``: torch.distributed over plaintext TCP; server A hosts the
    rendezvous store at ``master_addr:master_port`` (gloo then opens ephemeral ports).
    ``transport="mtls"``: :mod:`secagg.mpc_link`, one mutually authenticated TLS 1.3
    connection per direction; this party listens on ``listen`` (while the session is
    set up) and dials ``peers`` (party name → ``host:port``, names as in
    :data:`secagg.mpc_link.PARTY_NAMES`); ``tls`` is this party's certificate, key and
    the deployment CA. ``timeout_s`` bounds the setup and every wait for a message.
    """

    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    timeout_s: float = 120.0
    transport: str = "gloo"
    listen: str | None = None
    peers: dict[str, str] = field(default_factory=dict)
    tls: TlsConfig | None = None


def _set_env(rank: int, ep: MpcEndpoint) -> None:
    os.environ.update(
        {
            "DISTRIBUTED_BACKEND": "gloo",
            "RENDEZVOUS": "env://",
            "MASTER_ADDR": ep.master_addr,
            "MASTER_PORT": str(ep.master_port),
            "WORLD_SIZE": str(WORLD_SIZE),
            "RANK": str(rank),
            # gloo binds its extra ports on the rendezvous address's interface
            "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
        }
    )
    # gloo would wait 30 minutes for a stalled peer; fail after the configured timeout
    # (CrypTen passes no timeout, so the module default is what applies).
    dist.distributed_c10d.default_pg_timeout = datetime.timedelta(seconds=ep.timeout_s)


def _init_comm(rank: int, ep: MpcEndpoint) -> None:
    from secagg import mpc_link

    if ep.transport not in mpc_link.TRANSPORTS:
        raise MpcError(
            f"unknown MPC transport {ep.transport!r}: use one of {', '.join(mpc_link.TRANSPORTS)}"
        )
    _register_provider()
    if ep.transport == mpc_link.TRANSPORT_MTLS:
        # CrypTen's traffic and secagg's own both go over mutually authenticated TLS;
        # torch.distributed is never initialised (no store, no gloo ports).
        mpc_link.install(rank, ep)
        comm.get().reset_communication_stats()
        crypten.cfg.communicator.verbose = True
        return
    mpc_link.uninstall()  # a previous mtls session in this process must not linger
    _set_env(rank, ep)
    try:
        comm._init(use_threads=False, rank=rank, world_size=WORLD_SIZE, init_ttp=True)
    except Exception as exc:  # torch raises several types for a failed rendezvous
        # A join can fail half-way (default group up, a sub-group not): leave nothing
        # behind, or CrypTen would skip its set-up on the next attempt in this process.
        _teardown()
        raise MpcError(
            f"could not join the MPC session at {ep.master_addr}:{ep.master_port} "
            f"as rank {rank}: {exc}. Check that server A, server B and the dealer are "
            "all started with the same MPC address and port."
        ) from exc
    comm.get().reset_communication_stats()
    crypten.cfg.communicator.verbose = True


def configure_threads() -> int:
    """Set torch's intra-op threads for an MPC process from ``SECAGG_MPC_THREADS``.

    The default is 1. torch's OpenMP workers spin after every parallel region; with
    A, B and the dealer on one host (tests, benchmarks, the quick start) two-thread
    pools in each process took the distance phase from 0.43 s to 0.84 s on two cores.
    The large products run in :mod:`secagg.ringmath`'s single-threaded kernel anyway.
    On a dedicated multi-core server, more threads may speed up Bulyan's elementwise
    circuits (not measured: this project's machines have 2 cores); set
    ``SECAGG_MPC_THREADS`` to the cores the process may use.
    """
    raw = os.environ.get("SECAGG_MPC_THREADS", "1")
    try:
        threads = int(raw)
    except ValueError:
        threads = 0
    if threads < 1:
        raise MpcError(f"SECAGG_MPC_THREADS must be a positive integer, got {raw!r}")
    torch.set_num_threads(threads)
    return threads


def run_dealer(ep: MpcEndpoint, on_ready: Callable[[], None] | None = None) -> int:
    """Run the dealer (rank 2) until server A ends the session; returns requests served."""
    configure_threads()
    _init_comm(RANK_DEALER, ep)
    try:  # sending the keys can fail too (a party died meanwhile): clean up then as well
        dealer = _Dealer(comm.get().ttp_group)
        if on_ready is not None:
            on_ready()
        log.info("dealer: session up, serving CSPRNG correlated randomness")
        dealer.serve()
    finally:
        _teardown()
    return dealer.requests


def _empty_rendezvous_store() -> None:
    """Server A: delete the finished session's keys from the store it hosts.

    torch's TCPStore is multi-tenant per process and port: if anything still pins the
    old server (a failed step's pending work, a traceback), the next session's store
    *is* that server, and B or the dealer would read the dead session's addresses and
    dial ranks that no longer exist. An empty key space makes a reused server as good
    as a new one.
    """
    with contextlib.suppress(Exception):  # no default group, or not the host: nothing to do
        if dist.get_rank() != RANK_A:
            return  # only the host: a late teardown elsewhere must not wipe a new session
        store = dist.distributed_c10d._get_default_store()
        while isinstance(getattr(store, "underlying_store", None), dist.Store):
            store = store.underlying_store
        for key in store.list_keys():
            store.delete_key(key)


def _teardown() -> None:
    from secagg import mpc_link

    global _CLIENT
    # The dealer client holds gloo's ttp_group, whose store on server A is torch's
    # multi-tenant TCPStore: while referenced it keeps the rendezvous port bound with
    # the old session's keys, and a new session in this process would join stale ranks.
    _CLIENT = None
    if mpc_link.uninstall():  # closed this party's TLS links; no process group exists
        return
    # One by one: after a peer died, shutting a sub-group down can raise, and skipping
    # the rest would leave the default group (and its store, and torch's group counter)
    # behind, so that the next session in this process could never form.
    inst = comm.DistributedCommunicator.instance
    groups = [] if inst is None else [inst.main_group, inst.ttp_group]
    _empty_rendezvous_store()
    for group in [*groups, None]:
        with contextlib.suppress(Exception):
            dist.destroy_process_group(group)
    comm.DistributedCommunicator.instance = None
    del inst, groups
    # a failed 2PC step leaves tracebacks in reference cycles that still point at the
    # groups; collect them now rather than whenever the cyclic GC would
    gc.collect()


class MpcSession:
    """A server's CrypTen session: started once per process, reused for every round.

    All methods are collective: server A and server B must call the same method with
    arrays of the same shape, in the same order. They block (on one thread: CrypTen
    keeps global state) and are meant to run off the service's event loop.
    """

    def __init__(self, rank: int, ep: MpcEndpoint) -> None:
        if rank not in (RANK_A, RANK_B):
            raise ValueError("an MpcSession is server A (rank 0) or server B (rank 1)")
        global _CLIENT
        self.rank = rank
        self.endpoint = ep
        configure_threads()
        from secagg.mpc_link import point_to_point

        _init_comm(rank, ep)
        try:
            crypten._setup_prng()
            _CLIENT = _CsprngClient(rank, comm.get().ttp_group, ep.timeout_s)
        except BaseException:
            _teardown()  # do not leave links or process groups behind a failed join
            raise
        # secagg's own openings between A and B: gloo's main_group or the TLS link
        self._link = point_to_point(comm.get().main_group)
        self.traffic = Traffic()
        # seconds per step inside a phase (the benchmarks' profile of the real code path)
        self.steps: dict[str, float] = {}
        self._sent = 0  # bytes this party sent in secagg's own openings
        self._rounds = 0
        # When a list, every value this party receives in secagg's openings (and its own
        # mask share of the Gram pair) is appended as (label, array): the privacy tests
        # analyse exactly what a curious server sees. Off (None) in production.
        self.transcript: list[tuple[str, np.ndarray]] | None = None
        self._prepared: GramPlan | None = None
        self.sq_norms: np.ndarray | None = None  # set by sq_distances (secagg.dp)
        self.closed = False
        try:
            self._warm_up()
        except BaseException:
            _teardown()
            raise
        log.info("mpc: rank %d joined the session", rank)

    @staticmethod
    def _warm_up() -> None:
        """One tiny secure comparison, collectively, as the session starts.

        CrypTen's first comparison in a process costs about 0.65 s of one-off setup
        (0.70 s against 0.05 s for the next, measured on this project's machine); paid
        here, it no longer lands in the first round after its last share. It draws
        from the mask streams like any comparison, in lockstep on every party.
        """
        x = MPCTensor.from_shares(torch.zeros(2, dtype=torch.long), precision=0)
        x.lt(0)._tensor.reveal()

    # ------------------------------------------------------------ accounting
    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        # bytes_sent = what this party put on the wire: exact for secagg's own openings;
        # for CrypTen's protocols, half its counter (it logs sent + received, and every
        # 2PC exchange here is symmetric).
        c = comm.get()
        b0, r0, s0, o0 = c.comm_bytes, c.comm_rounds, self._sent, self._rounds
        d0 = _client().dealer_bytes
        t0 = time.perf_counter()
        try:
            yield
        finally:
            tr = self.traffic
            sent = (self._sent - s0) + int(c.comm_bytes - b0) // 2
            rounds = (self._rounds - o0) + int(c.comm_rounds - r0)
            tr.seconds[name] = tr.seconds.get(name, 0.0) + time.perf_counter() - t0
            tr.bytes_sent[name] = tr.bytes_sent.get(name, 0) + sent
            tr.rounds[name] = tr.rounds.get(name, 0) + rounds
            tr.dealer_bytes[name] = tr.dealer_bytes.get(name, 0) + _client().dealer_bytes - d0

    def _open(self, mine: torch.Tensor) -> torch.Tensor:
        """Open a shared tensor to both parties: send my share, receive the other's."""
        peer = 1 - self.rank
        # isend first: both parties send at once, and neither may block the other
        req = self._link.isend(mine.contiguous(), peer)
        other = self._link.recv(torch.empty_like(mine), peer)
        req.wait()
        self._sent += mine.numel() * 8
        self._rounds += 1
        self._record("received", other)
        other += mine
        return other

    def _record(self, label: str, value: torch.Tensor) -> None:
        if self.transcript is not None:
            self.transcript.append((label, value.numpy().copy()))

    def _open_to_a(self, mine: torch.Tensor) -> torch.Tensor | None:
        """Open a shared tensor to server A only."""
        self._rounds += 1
        if self.rank == RANK_A:
            other = self._link.recv(torch.empty_like(mine), RANK_B)
            self._record("received", other)
            other += mine
            return other
        self._link.send(mine.contiguous(), RANK_A)
        self._sent += mine.numel() * 8
        return None

    def reset_traffic(self) -> Traffic:
        old, self.traffic = self.traffic, Traffic()
        self.steps = {}
        return old

    def _step(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.steps[name] = self.steps.get(name, 0.0) + now - since
        return now

    @staticmethod
    def _as_tensor(share: np.ndarray) -> torch.Tensor:
        arr = np.ascontiguousarray(share)
        if arr.dtype != np.int64:
            raise TypeError(f"shares are int64 ring elements, got {arr.dtype}")
        return torch.from_numpy(arr)

    # -------------------------------------------------------------- phases
    def prepare_distances(self, n: int, d: int) -> None:
        """Fetch the Gram pair (R, R R^T) for up to n rows of dimension d ahead of time.

        The pair does not depend on the inputs, so the service calls this while shares
        are still arriving; :meth:`sq_distances` then uses the first n' <= n rows (a row
        subset of R has the matching sub-block of R R^T as its Gram matrix).
        Collective: both parties call it with the same (n, d).
        """
        provider: CsprngTTP = crypten.mpc.get_default_provider()
        with self._phase("prepare"):
            plan = provider.gram_start(n, d)
            provider.gram_finish(plan)
            self._prepared = plan

    def sq_distances(
        self, share: np.ndarray, *, reveal: bool = True, keep_share: bool = False
    ) -> np.ndarray | None:
        """Pairwise squared distances of the n shared rows, revealed to server A only.

        One masked opening ``E = X - R`` (n×d, each server sends its share once). With
        ``[G] = [X X^T] = E E^T (party 0) + E [R]^T + [R] E^T + [Z]``, each party needs a
        single n×d×n product: party 0 ``P = E (E + 2 R_0)^T``, party 1 ``P = E (2 R_1)^T``,
        so that ``P + P^T = 2([G] - [Z])`` and ``diag [G] = diag P + diag [Z]``. Then
        ``[D] = diag[G] 1^T + 1 diag[G]^T - 2[G]`` locally, exact in the ring and exactly
        symmetric, and B sends its n×n share of D to A. Returns the int64 matrix at
        scale 2^32 on A, ``None`` on B.

        The opening and the product run in column blocks (:func:`gram_width`), pipelined:
        a block's masked share is on the wire while the previous block is multiplied, and
        no n×d temporary is allocated (memory beyond the input is O(n·block)). Without a
        prepared pair the dealer computes ``R R^T`` while the parties work, and only
        its n×n share is awaited at the end.

        This party's shares of the exact squared norms ``diag G`` are kept in
        ``self.sq_norms`` (secagg.dp's norm check); ``reveal=False`` opens nothing
        (the mean rule needs only the norms); ``keep_share=True`` opens nothing and
        returns this party's additive share of D (secagg.select2pc).
        """
        x = self._as_tensor(share)
        if x.dim() != 2:
            raise ValueError("expected an n×d matrix of shares")
        n, d = x.shape
        plan, self._prepared = self._prepared, None
        provider: CsprngTTP = crypten.mpc.get_default_provider()
        with self._phase("distances"):
            t = time.perf_counter()
            if plan is None or plan.d != d or plan.n < n:
                plan = provider.gram_start(n, d)
                t = self._step("distances: dealer request (cold)", t)
            p = self._gram_product(x, plan)
            t = time.perf_counter()
            z = provider.gram_finish(plan)[:n, :n]
            t = self._step("distances: wait for the dealer's Z share", t)
            diag = torch.diagonal(p) + torch.diagonal(z)
            self.sq_norms = diag.numpy().copy()
            if not reveal:
                return None
            dsh = diag.unsqueeze(0) + diag.unsqueeze(1) - (p + p.t()) - 2 * z
            if keep_share:
                return dsh.numpy()
            out = self._open_to_a(dsh)
            self._step("distances: D share, opened to A", t)
        return None if out is None else out.numpy()

    def _gram_product(self, x: torch.Tensor, plan: GramPlan) -> torch.Tensor:
        """``P`` of :meth:`sq_distances`, block by block, with the opening pipelined.

        Up to ``window`` blocks of this party's masked share are on the wire ahead of
        the block being multiplied: a lock-step exchange (one block out, one block in,
        then the product) ran at a quarter of the link's speed.
        """
        n, d = x.shape
        peer = 1 - self.rank
        width = gram_width(plan.n)
        window = max(2, _WINDOW_ELEMENTS // (n * width))
        p = torch.zeros((n, n), dtype=torch.long)
        mine = [torch.empty(n * width, dtype=torch.long) for _ in range(window)]
        # all plan.n rows of each block are drawn (the stream's layout); the first n used
        masks = [torch.empty(plan.n * width, dtype=torch.long) for _ in range(window)]
        theirs = torch.empty(n * width, dtype=torch.long)
        recording = self.transcript is not None
        seen_r: list[torch.Tensor] = []
        seen_e: list[torch.Tensor] = []
        stream = AesCtrStream(plan.key)
        columns = gram_columns(plan.n, d)
        inflight: collections.deque[tuple[torch.Tensor, torch.Tensor, Work]] = collections.deque()
        started = 0

        def start_next() -> None:
            nonlocal started
            t = time.perf_counter()
            nxt = next(columns, None)
            if nxt is None:
                return
            c0, w = nxt
            k = started % window  # the slot of the block that left the window
            started += 1
            r_all = masks[k][: plan.n * w].view(plan.n, w)
            stream.fill(r_all.numpy())
            r = r_all[:n]
            e = mine[k][: n * w].view(n, w)
            torch.sub(x[:, c0 : c0 + w], r, out=e)
            t = self._step("distances: mask blocks (AES R_i, X - R)", t)
            inflight.append((e, r, self._link.isend(e, peer)))
            self._step("distances: send", t)

        for _ in range(window):
            start_next()
        while inflight:
            e, r, work = inflight.popleft()
            t = time.perf_counter()
            other = self._link.recv(theirs[: e.numel()].view(e.shape), peer)
            t = self._step("distances: wait for the peer's block", t)
            if recording:
                seen_r.append(r.clone())
                seen_e.append(other.clone())
            other += e  # E's block
            r.mul_(2)
            if self.rank == RANK_A:
                r += other
            matmul_nt(other, r, out=p)
            t = self._step("distances: product (ring kernel)", t)
            work.wait()  # the slot is free once its bytes have left
            self._step("distances: send", t)
            start_next()
        self._sent += n * d * 8
        self._rounds += 1
        if recording:
            self._record("own_mask_share", torch.cat(seen_r, dim=1))
            self._record("received", torch.cat(seen_e, dim=1))
        return p

    def exchange_selection(self, selected: Sequence[int] | None, n: int) -> list[int]:
        """A sends its selection to B over the MPC channel (library use; the service
        hands it over with a Peer RPC instead). Returns the selection on both."""
        with self._phase("selection"):
            count = torch.zeros(1, dtype=torch.long)
            if self.rank == RANK_A:
                assert selected is not None
                count[0] = len(selected)
            comm.get().broadcast(count, RANK_A)
            buf = torch.zeros(int(count[0]), dtype=torch.long)
            if self.rank == RANK_A:
                buf[:] = torch.tensor(list(selected), dtype=torch.long)
            comm.get().broadcast(buf, RANK_A)
        sel = [int(v) for v in buf]
        if not sel or any(not 0 <= i < n for i in sel) or len(set(sel)) != len(sel):
            raise MpcError(f"invalid selection {sel} for {n} participants")
        return sel

    def exchange_seed(self, seed: bytes | None) -> bytes:
        """A sends a fresh public 32-byte seed to B over the MPC channel (library use;
        the service sends it in the Peer RPC). Returns it on both."""
        with self._phase("validation"):
            buf = torch.zeros(KEY_BYTES // 8, dtype=torch.long)
            if self.rank == RANK_A:
                if seed is None or len(seed) != KEY_BYTES:
                    raise MpcError(f"the projection seed must be {KEY_BYTES} bytes")
                buf[:] = torch.from_numpy(np.frombuffer(seed, dtype="<i8").astype(np.int64))
            comm.get().broadcast(buf, RANK_A)
        return buf.numpy().astype("<i8").tobytes()

    def validate_inputs(
        self, share: np.ndarray, seed: bytes, projections: int, threshold: int
    ) -> np.ndarray:
        """Which rows pass the random-projection norm test (see secagg.validation).

        Each party computes its shares of P = X R^T for the public R expanded from
        ``seed`` (local, exact mod 2^64), then one batched secure comparison gives,
        per entry, whether p is outside [-T, T]; the per-worker failure counts are
        compared with 1 and only that accept bit is opened, to both servers.
        """
        from secagg.validation import projection_matrix  # no CrypTen there

        x = self._as_tensor(share)
        if x.dim() != 2:
            raise ValueError("expected an n×d matrix of shares")
        with self._phase("validation"):
            r = torch.from_numpy(projection_matrix(seed, int(projections), x.shape[1]))
            p = matmul_nt(x, r)  # exact mod 2^64
            return self._accept_bits(p, int(threshold))

    def validate_projections(self, projected: np.ndarray, threshold: int) -> np.ndarray:
        """:meth:`validate_inputs` for shares already projected (n×k, this party's
        shares of ``X R^T``): the service projects each share as it arrives, so only
        the secure comparison is left once the participants are known."""
        p = self._as_tensor(projected)
        if p.dim() != 2:
            raise ValueError("expected an n×k matrix of projection shares")
        with self._phase("validation"):
            return self._accept_bits(p, int(threshold))

    def _accept_bits(self, p: torch.Tensor, T: int) -> np.ndarray:
        n, k = p.shape
        # shares of T - p and p + T: the public T is added by party 0 only
        pub = T if self.rank == RANK_A else 0
        both = torch.stack([pub - p, p + pub]).reshape(-1)  # flat: one batched test
        one = 1 if self.rank == RANK_A else 0
        with self._comparisons() as cmp:
            outside, _ = cmp.msb(both.numpy())  # shares of 0/1 per bound: [v < 0]
            assert outside is not None
            fails = outside.reshape(2, n, k).sum(axis=(0, 2))  # per worker, in [0, 2k]
            # only this bit per worker is opened: [fails - 1 < 0], i.e. no bound failed
            return cmp.open_msb(fails - one)

    def at_most(self, values: np.ndarray, bound: int, phase: str = "norm_check") -> np.ndarray:
        """Which entries of a shared int64 vector are ``<= bound`` (public); only those
        bits are opened, to both. Values and bound must lie in (-2^62, 2^62)."""
        v = self._as_tensor(values)
        with self._phase(phase):
            pub = int(bound) if self.rank == RANK_A else 0
            over = MPCTensor.from_shares(pub - v, precision=0).lt(0)
            return over._tensor.reveal().numpy() == 0

    def reveal_sum(
        self, share: np.ndarray, selected: Sequence[int], noise: np.ndarray | None = None
    ) -> np.ndarray:
        """Each server sums its own shares of the selected rows; only that sum is opened.

        ``noise`` (secagg.dp): this server's own noise vector, added to its share of the
        sum before the opening.
        """
        x = self._as_tensor(share)
        rows = [int(i) for i in selected]
        if not rows or any(not 0 <= i < x.shape[0] for i in rows):
            raise ValueError(f"selection {rows} out of range for {x.shape[0]} rows")
        with self._phase("reveal"):
            # row by row: no copy of the selected rows (index_select took another n·d·8)
            s = x[rows[0]].clone()
            for i in rows[1:]:
                s += x[i]
            if noise is not None:
                s += self._as_tensor(noise)
            s = self._open(s)
        return s.numpy()

    def comparator(self, **kwargs: object) -> compare.Comparator:
        """This party's end of :mod:`secagg.compare` (collective, like every method here)
        on the session's A–B link and dealer channel; what it receives is recorded in
        :attr:`transcript` when that is on. ``kwargs`` go to the Comparator (tuning)."""
        cl = _client()
        record = None
        if self.transcript is not None:
            record = lambda label, arr: self._record(label, torch.from_numpy(arr))  # noqa: E731
        return compare.Comparator(
            self.rank, self._link, cl.stream, cl if self.rank == RANK_A else None,
            record=record, **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip

    @contextlib.contextmanager
    def _comparisons(self) -> Iterator[compare.Comparator]:
        cmp = self.comparator()
        try:
            yield cmp
        finally:  # its traffic counts in the enclosing phase
            self._sent += cmp.stats.bytes_sent
            self._rounds += cmp.stats.rounds

    def bulyan_window_sum(
        self,
        share: np.ndarray,
        selected: Sequence[int],
        f: int,
        *,
        block: int | None = None,
        noise: np.ndarray | None = None,
    ) -> np.ndarray:
        """Bulyan's coordinate-wise stage in 2PC; reveals only the β-window sum.

        For the θ selected rows, per coordinate: an odd-even merge sorting network
        pruned to the sorted positions the window stage reads (a selection network;
        each compare-exchange is one :mod:`secagg.compare` comparison fused with its
        bit×value product, a whole layer in one batched call),
        the median at sorted position ``(θ-1)//2`` (the lower middle for even θ), and
        among the windows of β = θ-2f consecutive sorted values containing the median
        the one with the least ``Σ|x - median|`` (linear in the sorted values, so only
        the window choice needs comparisons; ties keep the lower window). The revealed
        vector is that window's sum; the aggregate is sum / β. ``noise`` (secagg.dp) is
        added to this server's share of the window sum before it is opened.
        """
        theta = len(selected)
        beta = theta - 2 * f
        if beta < 1:
            raise ValueError(f"bulyan needs θ - 2f >= 1, got θ={theta}, f={f}")
        x = self._as_tensor(share)
        idx = torch.tensor(list(selected), dtype=torch.long)
        d = x.shape[1]
        # Coordinates are independent: the circuit runs on column blocks of about
        # 2^19 / θ coordinates, so the comparisons' working memory (secagg.compare's
        # blocks plus a layer's differences) stays bounded instead of growing with d.
        # (``block`` overrides the columns per block: tests, tuning)
        width = block if block is not None else max(1024, _BULYAN_BLOCK_VALUES // theta)
        if width < 1:
            raise ValueError(f"block must be a positive number of columns, got {width}")
        network = _selection_network(theta, _bulyan_positions(theta, f))
        with self._phase("bulyan_coordinate"), self._comparisons() as cmp:
            extra = None if noise is None else self._as_tensor(noise)
            parts = [
                self._bulyan_block(
                    cmp,
                    x[:, c0 : c0 + width].index_select(0, idx),
                    f,
                    network,
                    None if extra is None else extra[c0 : c0 + width],
                )
                for c0 in range(0, d, width)
            ]
            return torch.cat(parts).numpy()

    def _bulyan_block(
        self,
        cmp: compare.Comparator,
        rows: torch.Tensor,
        f: int,
        network: list[list[tuple[int, int]]],
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`bulyan_window_sum` on θ rows of a column block (a copy, sorted in place).

        Linear steps work on this party's raw share (exact int64 arithmetic); each
        compare-exchange is one batched :mod:`secagg.compare` call that returns shares
        of ``max(a - b, 0) = (a - b)·[b - a < 0]`` (CrypTen's ``diff * diff.gt(0)``,
        the same ring values), moved from the lower to the upper row.
        """
        theta, w = rows.shape
        beta = theta - 2 * f
        for layer in network:
            lo = torch.tensor([p[0] for p in layer], dtype=torch.long)
            hi = torch.tensor([p[1] for p in layer], dtype=torch.long)
            diff = (rows[lo] - rows[hi]).reshape(-1)
            _, (delta,) = cmp.msb((-diff).numpy(), [diff.numpy()], bits=False)
            moved = torch.from_numpy(delta).view(len(layer), w)
            rows[lo] -= moved
            rows[hi] += moved
        mid = (theta - 1) // 2
        med = rows[mid]
        best_cost = best_sum = None
        for s in range(max(0, mid - beta + 1), min(mid, theta - beta) + 1):
            below, above = mid - s, s + beta - 1 - mid
            wsum = rows[s : s + beta].sum(dim=0)
            # Σ_{j<mid}(med - x_j) + Σ_{j>mid}(x_j - med) over the window, which
            # is linear because the rows are sorted
            cost = wsum - 2 * rows[s:mid].sum(dim=0) - (1 + above - below) * med
            if best_cost is None or best_sum is None:
                best_cost, best_sum = cost, wsum
                continue
            # strict: ties keep the lower window (CrypTen's c_cost.lt(best_cost))
            step = (cost - best_cost).numpy()
            _, (dc, ds) = cmp.msb(step, [step, (wsum - best_sum).numpy()], bits=False)
            best_cost = best_cost + torch.from_numpy(dc)
            best_sum = best_sum + torch.from_numpy(ds)
        assert best_sum is not None
        if noise is not None:  # secagg.dp: this server's noise, before the opening
            best_sum = best_sum + noise
        return self._open(best_sum)

    def ping_dealer(self) -> None:
        """Server A: one round trip to the dealer, between rounds; raises if it is gone.

        Lets server A notice a dead dealer while idle, so the session is rebuilt before
        the next round needs it. Draws nothing from the mask streams.
        """
        if self.rank != RANK_A or self.closed:
            return
        hdr = torch.zeros(_HDR, dtype=torch.long)
        hdr[0] = _F_PING
        _client().request(hdr, (1,))

    def close(self) -> None:
        """End the session; server A also tells the dealer to stop."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            if self.rank == RANK_A:
                hdr = torch.zeros(_HDR, dtype=torch.long)
                hdr[0] = _F_TERMINATE
                _client().link.send(hdr, RANK_DEALER)
        _teardown()
        # Our channel to B holds gloo's main_group, which (like the dealer client, see
        # _teardown) would pin A's rendezvous store and its stale keys: let it go.
        with contextlib.suppress(AttributeError):
            del self._link


def _shared(share: torch.Tensor) -> MPCTensor:
    return MPCTensor.from_shares(share, precision=FRAC_BITS)


def _share_of(t: MPCTensor) -> torch.Tensor:
    return t._tensor.share


def _sorting_network(n: int) -> list[list[tuple[int, int]]]:
    """Batcher's odd-even merge sort for any n, as layers of disjoint (lo, hi) pairs.

    Built for the next power of two with comparators touching indices >= n dropped:
    those positions act as +inf, so dropping them keeps the network a sorter.
    """
    p2 = 1
    while p2 < n:
        p2 *= 2
    layers: list[list[tuple[int, int]]] = []
    p = 1
    while p < p2:
        k = p
        while k >= 1:
            layer = []
            for j in range(k % p, p2 - k, 2 * k):
                for i in range(min(k, p2 - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        layer.append((a, b))
            if layer:
                layers.append(layer)
            k //= 2
        p *= 2
    return layers


def _bulyan_positions(theta: int, f: int) -> set[int]:
    """Sorted positions Bulyan's window stage reads: every candidate window and the median."""
    beta = theta - 2 * f
    mid = (theta - 1) // 2
    first = max(0, mid - beta + 1)
    last = min(mid, theta - beta) + beta - 1
    return set(range(first, last + 1)) | {mid}


def _selection_network(n: int, needed: set[int]) -> list[list[tuple[int, int]]]:
    """:func:`_sorting_network` without the comparators that cannot affect ``needed``.

    Walking the layers backwards, a comparator is kept iff one of its wires is still
    needed (it then needs both of its inputs); the values on the needed wires are then
    exactly those of the full sort (a median needs a selection, not a sort).
    """
    want = set(needed)
    kept: list[list[tuple[int, int]]] = []
    for layer in reversed(_sorting_network(n)):
        keep = [(a, b) for a, b in layer if a in want or b in want]
        for a, b in keep:
            want.update((a, b))
        if keep:
            kept.append(keep)
    return kept[::-1]
