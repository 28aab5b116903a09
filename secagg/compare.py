"""Secure comparison of secret-shared Z_2^64 values: two parties and the CSPRNG dealer.

What it computes
----------------
For a vector ``x`` additively shared between server A (party 0) and server B (party 1)
in Z_2^64, the most significant bit ``b = [x < 0]`` (x read as a signed int64, exactly,
for every ring element), either opened to both parties (:meth:`Comparator.open_msb`)
or as arithmetic shares of ``b`` and of ``b * y`` for shared vectors ``y``
(:meth:`Comparator.msb`). ``a < b`` is ``msb(a - b)``; CrypTen's ``lt``/``gt`` are the
same bits (``x.lt(y) = msb(x - y)``, ``x.gt(y) = msb(y - x)``), so results are
identical to the CrypTen circuits this replaces.

Protocol (per value; all correlated randomness from the dealer's AES-CTR streams)
--------------------------------------------------------------------------------
The dealer supplies an edaBit: a uniform ``r`` shared arithmetically (``r_A + r_B``)
and as XOR shares of its 64 bits, the XOR shares of the 32 pairwise products
``r_{2j+1} & r_{2j}`` (of ``r`` with bit 63 cleared), packed AND triples for the
carry tree, and a random bit ``s`` shared both ways with ``s * v`` for each masked
``y`` (``v`` uniform).

1. Open ``c = x + r`` (uniform: only a masked value is opened) and ``f_k = y_k - v_k``.
2. ``x = c - r``, so ``msb(x) = c63 ^ r63 ^ [c' < r']`` on the low 63 bits. The borrow
   ``[c' < r']`` is a carry-lookahead over (generate, propagate) bit pairs,
   ``g_i = r_i & ~c_i``, ``p_i = ~(c_i ^ r_i)``: linear in r's bits since ``c`` is
   public. Level 1 (pairs of bits) is local too, because the dealer's pairwise products
   make every term linear. Levels 2..6 combine groups ``(G, P) = (G_hi ^ P_hi & G_lo,
   P_hi & P_lo)``: one opening of packed Beaver AND operands per level, 32, 16, 8, 4
   and 2 bits per value (``c63 ^ r63`` rides in the top group's G, which only ever
   enters by XOR).
3. Shares of ``b``: open ``e = b ^ s`` (one bit); ``b = e + s - 2es`` and
   ``b * y = e*y + (1 - 2e)(f*s + s*v)``, local.

Cost per value, each party: 8 + 8·k bytes in round 1 (k products), 2·(32+16+8+4+2)
bits = 15.5 bytes over levels 2..6, and one bit for ``e`` (or for opening ``b``):
about 23.6 bytes and 7 rounds for a comparison with its arithmetic bit (CrypTen's
``lt``: some 300 bytes each way and 13+ rounds). The dealer sends party 0 about 28 + 8·k
bytes per value (party 1 expands all of its material from its stream).
This is the floor of the protocol family (nothing is padded: sub-byte levels are
bit-packed); :mod:`bench.bench_compare` prints measured figures next to CrypTen's.

Privacy: each party receives only ``c`` (masked by ``r``), the Beaver openings (masked
by the triples), ``f`` (masked by ``v``) and ``e`` (masked by ``s``), all uniform and
independent of the inputs; party 0's dealer material is its shares XOR/minus party 1's
stream values, uniform to it (``tests/privacy/test_compare_view.py``).

Compute: the bit-sliced layers run in a native kernel (``secagg/native/bit_compare.c``,
compiled like :mod:`secagg.ringmath`'s) with a numpy fallback that gives the same bytes
(``SECAGG_NATIVE=0`` forces it; the tests compare both). Values are processed in
superblocks (memory O(superblock), not O(batch)), several in flight so that one
superblock's messages travel while another is computed.

This module imports no CrypTen; :mod:`secagg.mpc` wires it to the session's link, its
dealer channel and the dealer's request loop (function :data:`FID_COMPARE`).
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from secagg.prg import AesCtrStream

log = logging.getLogger("secagg.compare")

FID_COMPARE = 8
"""Dealer function id of a comparison-material request (header: fid, n, k)."""
ALIGN = 64  # values per block are a multiple of this (every packed level is whole words)
WIDTHS = (32, 16, 8, 4, 2)  # bits per value of the AND operands of levels 2..6
SUPERBLOCK = 1 << 17
WINDOW = 2
MAX_PRODUCTS = 8
MAX_BLOCK = 1 << 22
_LOW63 = np.uint64(0x7FFFFFFFFFFFFFFF)
_SRC = Path(__file__).with_name("native") / "bit_compare.c"
_ABI = 1


class CompareError(RuntimeError):
    """A comparison request or message was malformed (never carries a shared value)."""


# --------------------------------------------------------------------- layout
def own_layout(n: int, k: int) -> list[tuple[str, int]]:
    """(name, bytes) each party draws from its own stream, in order (normative)."""
    items = [("r", 8 * n)]
    for w in WIDTHS:
        items += [(f"a{w}", n * w // 8), (f"b{w}", n * w // 8)]
    items.append(("sbit", n // 8))
    items += [(f"v{j}", 8 * n) for j in range(k)]
    return items


def fix_layout(n: int, k: int) -> list[tuple[str, int]]:
    """(name, bytes) party 1 draws after :func:`own_layout`; party 0 gets them from the
    dealer, in this order (the correlation's fixing shares)."""
    items = [("rb", 8 * n), ("rr", 4 * n)]
    items += [(f"c{w}", n * w // 8) for w in WIDTHS]
    items.append(("s", 8 * n))
    items += [(f"sv{j}", 8 * n) for j in range(k)]
    return items


def _nbytes(items: list[tuple[str, int]]) -> int:
    return sum(b for _, b in items)


def _slices(buf: np.ndarray, items: list[tuple[str, int]]) -> dict[str, np.ndarray]:
    out, pos = {}, 0
    for name, b in items:
        out[name] = buf[pos : pos + b]
        pos += b
    return out


class _Pool:
    """Reusable draw buffers: a fresh multi-MB array per block costs its page faults
    (as much as the AES that fills it)."""

    def __init__(self) -> None:
        self.free: dict[int, list[np.ndarray]] = collections.defaultdict(list)

    def take(self, words: int) -> np.ndarray:
        spare = self.free[words]
        return spare.pop() if spare else np.empty(words, dtype=np.int64)

    def give(self, buf: np.ndarray) -> None:
        if len(self.free[buf.size]) < 4:
            self.free[buf.size].append(buf)


def _draw(
    stream: AesCtrStream, items: list[tuple[str, int]], pool: _Pool | None = None
) -> dict[str, np.ndarray]:
    words = _nbytes(items) // 8  # every item is whole words (n % 64 == 0)
    buf = pool.take(words) if pool is not None else np.empty(words, dtype=np.int64)
    stream.fill(buf)
    out = _slices(buf.view(np.uint8), items)
    out["_buf"] = buf
    return out


def _u64(b: np.ndarray) -> np.ndarray:
    return b.view(np.uint64)


def check_request(n: int, k: int) -> None:
    """Raise :class:`CompareError` unless (n, k) is a block the dealer may serve."""
    if not (0 < n <= MAX_BLOCK and n % ALIGN == 0):
        raise CompareError(f"bad comparison request: {n} values per block")
    if not 0 <= k <= MAX_PRODUCTS:
        raise CompareError(f"bad comparison request: {k} products")


# --------------------------------------------------------------------- kernels
class Kernels(Protocol):
    """The bit-sliced layers (native and numpy implementations give equal bytes)."""

    name: str

    def level1(
        self, n: int, p0: bool, c: np.ndarray, rb: np.ndarray, rr: np.ndarray,
        a: np.ndarray, b: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]: ...  # fmt: skip

    def level(
        self, n: int, w: int, p0: bool, mine: np.ndarray, theirs: np.ndarray, a: np.ndarray,
        b: np.ndarray, c: np.ndarray, ghi: np.ndarray, a_next: np.ndarray | None,
        b_next: np.ndarray | None,
    ) -> np.ndarray: ...  # fmt: skip

    def b2a(
        self, n: int, p0: bool, e_mine: np.ndarray, e_theirs: np.ndarray, s: np.ndarray,
        y: np.ndarray, f: np.ndarray, sv: np.ndarray, want_bits: bool,
    ) -> tuple[np.ndarray | None, np.ndarray]: ...  # fmt: skip

    def dealer_bits(
        self, n: int, r0: np.ndarray, r1: np.ndarray, rb1: np.ndarray, rr1: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def dealer_and(
        self, a0: np.ndarray, a1: np.ndarray, b0: np.ndarray, b1: np.ndarray, c1: np.ndarray
    ) -> np.ndarray: ...

    def dealer_b2a(
        self, n: int, sb0: np.ndarray, sb1: np.ndarray, s1: np.ndarray, v0: np.ndarray,
        v1: np.ndarray, sv1: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]: ...  # fmt: skip


_U = np.uint64


def _even(x: np.ndarray) -> np.ndarray:
    """Even-indexed bits of each word compressed into its low half (bit 2j -> j)."""
    x = x & _U(0x5555555555555555)
    for shift, mask in (
        (1, 0x3333333333333333), (2, 0x0F0F0F0F0F0F0F0F), (4, 0x00FF00FF00FF00FF),
        (8, 0x0000FFFF0000FFFF), (16, 0x00000000FFFFFFFF),
    ):  # fmt: skip
        x = (x | (x >> _U(shift))) & _U(mask)
    return x


def _unpack(buf: np.ndarray, n: int, w: int) -> np.ndarray:
    """n values of w bits from a packed stream (low bits first) as uint64."""
    if w >= 8:
        return buf.view({32: "<u4", 16: "<u2", 8: "u1"}[w])[:n].astype(np.uint64)
    per = 8 // w
    out = np.empty(n, dtype=np.uint64)
    for j in range(per):
        out[j::per] = (buf[: n // per] >> np.uint8(w * j)) & np.uint8((1 << w) - 1)
    return out


def _pack(vals: np.ndarray, w: int) -> np.ndarray:
    if w >= 8:
        return vals.astype({32: "<u4", 16: "<u2", 8: "u1"}[w]).view(np.uint8)
    per = 8 // w
    out = np.zeros(len(vals) // per, dtype=np.uint8)
    for j in range(per):
        out |= (vals[j::per].astype(np.uint8) << np.uint8(w * j)).astype(np.uint8)
    return out


def _prep(g: np.ndarray, p: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h = _U(w // 2)
    phi = _even(p >> _U(1))
    return phi | (phi << h), _even(g) | (_even(p) << h), _even(g >> _U(1))


class NumpyKernels:
    """Reference implementation of the layers (the fallback; same bytes as native)."""

    name = "numpy"

    def level1(
        self,
        n: int,
        p0: bool,
        c: np.ndarray,
        rb: np.ndarray,
        rr: np.ndarray,
        a: np.ndarray,
        b: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        k0 = _U(0xFFFFFFFFFFFFFFFF if p0 else 0)
        nc = ~(c & _LOW63)
        r = rb & _LOW63
        q = _unpack(rr, n, 32)
        rlo, rhi = _even(r), _even(r >> _U(1))
        nlo, nhi = _even(nc), _even(nc >> _U(1))
        g = (rhi & nhi) ^ (nlo & (q ^ (nhi & rlo)))
        p = q ^ (nlo & rhi) ^ (nhi & rlo) ^ (k0 & nhi & nlo)
        g ^= (((k0 & c) ^ rb) >> _U(63)) << _U(31)
        x, y, gh = _prep(g, p, 32)
        de = np.concatenate([_pack(x ^ _unpack(a, n, 32), 32), _pack(y ^ _unpack(b, n, 32), 32)])
        return de, gh.astype(np.uint16)

    def level(
        self,
        n: int,
        w: int,
        p0: bool,
        mine: np.ndarray,
        theirs: np.ndarray,
        a: np.ndarray,
        b: np.ndarray,
        c: np.ndarray,
        ghi: np.ndarray,
        a_next: np.ndarray | None,
        b_next: np.ndarray | None,
    ) -> np.ndarray:
        ln = n * w // 8
        dd = mine[:ln] ^ theirs[:ln]
        ee = mine[ln:] ^ theirs[ln:]
        z = c ^ (dd & b) ^ (ee & a)
        if p0:
            z ^= dd & ee
        zz = _unpack(z, n, w)
        h = w // 2
        g = ghi.astype(np.uint64) ^ (zz & _U((1 << h) - 1))
        if h == 1:
            return _pack(g & _U(1), 1)
        x, y, gh = _prep(g, zz >> _U(h), h)
        ghi[:] = gh
        return np.concatenate([_pack(x ^ _unpack(a_next, n, h), h),
                               _pack(y ^ _unpack(b_next, n, h), h)])  # fmt: skip

    def b2a(
        self,
        n: int,
        p0: bool,
        e_mine: np.ndarray,
        e_theirs: np.ndarray,
        s: np.ndarray,
        y: np.ndarray,
        f: np.ndarray,
        sv: np.ndarray,
        want_bits: bool,
    ) -> tuple[np.ndarray | None, np.ndarray]:
        e = np.unpackbits(e_mine ^ e_theirs, bitorder="little")[:n].astype(np.int64)
        sign = 1 - 2 * e
        s = s.view(np.int64)
        bits = (e if p0 else 0) + sign * s if want_bits else None
        f2, sv2 = f.view(np.int64).reshape(-1, n), sv.view(np.int64).reshape(-1, n)
        prod = e * y.view(np.int64).reshape(-1, n) + sign * (f2 * s + sv2)
        return bits, prod

    def dealer_bits(
        self, n: int, r0: np.ndarray, r1: np.ndarray, rb1: np.ndarray, rr1: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        r = r0 + r1
        lo = r & _LOW63
        return r ^ rb1, _pack(_even(lo & (lo >> _U(1))) ^ _unpack(rr1, n, 32), 32)

    def dealer_and(
        self, a0: np.ndarray, a1: np.ndarray, b0: np.ndarray, b1: np.ndarray, c1: np.ndarray
    ) -> np.ndarray:
        return ((a0 ^ a1) & (b0 ^ b1)) ^ c1

    def dealer_b2a(
        self,
        n: int,
        sb0: np.ndarray,
        sb1: np.ndarray,
        s1: np.ndarray,
        v0: np.ndarray,
        v1: np.ndarray,
        sv1: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        s = np.unpackbits(sb0 ^ sb1, bitorder="little")[:n].astype(np.uint64)
        sv0 = s[None, :] * (v0 + v1).reshape(-1, n) - sv1.reshape(-1, n)
        return s - s1, sv0.reshape(-1)


def _ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


class NativeKernels:
    """The same layers through ``secagg/native/bit_compare.c`` (GIL released)."""

    name = "native"

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib

    def level1(
        self,
        n: int,
        p0: bool,
        c: np.ndarray,
        rb: np.ndarray,
        rr: np.ndarray,
        a: np.ndarray,
        b: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        de = np.empty(8 * n, dtype=np.uint8)
        ghi = np.empty(n, dtype=np.uint16)
        self.lib.secagg_cmp_level1(n, int(p0), _ptr(c), _ptr(rb), _ptr(rr), _ptr(a), _ptr(b),
                                   _ptr(de), _ptr(ghi))  # fmt: skip
        return de, ghi

    def level(
        self,
        n: int,
        w: int,
        p0: bool,
        mine: np.ndarray,
        theirs: np.ndarray,
        a: np.ndarray,
        b: np.ndarray,
        c: np.ndarray,
        ghi: np.ndarray,
        a_next: np.ndarray | None,
        b_next: np.ndarray | None,
    ) -> np.ndarray:
        h = w // 2
        out = np.empty(n // 8 if h == 1 else 2 * n * h // 8, dtype=np.uint8)
        ptrs = [_ptr(v) for v in (mine, theirs, a, b, c, ghi, a_next, b_next, out)]
        self.lib.secagg_cmp_level(n, w, int(p0), *ptrs)
        return out

    def b2a(
        self,
        n: int,
        p0: bool,
        e_mine: np.ndarray,
        e_theirs: np.ndarray,
        s: np.ndarray,
        y: np.ndarray,
        f: np.ndarray,
        sv: np.ndarray,
        want_bits: bool,
    ) -> tuple[np.ndarray | None, np.ndarray]:
        k = y.shape[0]
        bits = np.empty(n, dtype=np.int64) if want_bits else None
        prod = np.empty((k, n), dtype=np.int64)
        self.lib.secagg_cmp_b2a(n, int(p0), _ptr(e_mine), _ptr(e_theirs), _ptr(s), k, _ptr(y),
                                y.strides[0] // 8 if k else n, _ptr(f), _ptr(sv), _ptr(bits),
                                _ptr(prod))  # fmt: skip
        return bits, prod

    def dealer_bits(
        self, n: int, r0: np.ndarray, r1: np.ndarray, rb1: np.ndarray, rr1: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        rb0 = np.empty(n, dtype=np.uint64)
        rr0 = np.empty(4 * n, dtype=np.uint8)
        self.lib.secagg_cmp_dealer_bits(n, _ptr(r0), _ptr(r1), _ptr(rb1), _ptr(rr1),
                                        _ptr(rb0), _ptr(rr0))  # fmt: skip
        return rb0, rr0

    def dealer_and(
        self, a0: np.ndarray, a1: np.ndarray, b0: np.ndarray, b1: np.ndarray, c1: np.ndarray
    ) -> np.ndarray:
        c0 = np.empty_like(c1)
        self.lib.secagg_cmp_dealer_and(len(c1), _ptr(a0), _ptr(a1), _ptr(b0), _ptr(b1),
                                       _ptr(c1), _ptr(c0))  # fmt: skip
        return c0

    def dealer_b2a(
        self,
        n: int,
        sb0: np.ndarray,
        sb1: np.ndarray,
        s1: np.ndarray,
        v0: np.ndarray,
        v1: np.ndarray,
        sv1: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        k = v0.size // n
        s0 = np.empty(n, dtype=np.uint64)
        sv0 = np.empty(k * n, dtype=np.uint64)
        self.lib.secagg_cmp_dealer_b2a(n, _ptr(sb0), _ptr(sb1), _ptr(s1), k, _ptr(v0),
                                       _ptr(v1), _ptr(sv1), _ptr(s0), _ptr(sv0))  # fmt: skip
        return s0, sv0


_LOCK = threading.Lock()
_KERNELS: dict[bool, Kernels] = {}
_REASON = "not loaded yet"


def _load_native() -> NativeKernels | None:
    global _REASON
    if os.environ.get("SECAGG_NATIVE", "1") == "0":
        _REASON = "numpy fallback (disabled by SECAGG_NATIVE=0)"
        return None
    from secagg.ringmath import build

    try:
        lib = ctypes.CDLL(str(build(src=_SRC)))
        if lib.secagg_cmp_abi() != _ABI:
            raise RuntimeError("stale kernel ABI; delete secagg/native/_build")
    except (OSError, RuntimeError, AttributeError) as exc:
        _REASON = f"numpy fallback ({exc})"
        log.warning(
            "comparison kernel unavailable, using numpy (several times slower): %s. "
            "Install a C compiler and run `python -m secagg.ringmath --build`.",
            exc,
        )
        return None
    p, i = ctypes.c_void_p, ctypes.c_int64
    sigs = {
        "secagg_cmp_level1": [i, i, p, p, p, p, p, p, p],
        "secagg_cmp_level": [i, i, i, p, p, p, p, p, p, p, p, p],
        "secagg_cmp_b2a": [i, i, p, p, p, i, p, i, p, p, p, p],
        "secagg_cmp_dealer_bits": [i, p, p, p, p, p, p],
        "secagg_cmp_dealer_and": [i, p, p, p, p, p, p],
        "secagg_cmp_dealer_b2a": [i, p, p, p, i, p, p, p, p, p],
    }
    for name, args in sigs.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = None, args
    _REASON = "native"
    return NativeKernels(lib)


def kernels(native: bool | None = None) -> Kernels:
    """The layer implementation: native when available (``native=False``: numpy)."""
    want = native is not False
    with _LOCK:
        if want not in _KERNELS:
            found = _load_native() if want else None
            _KERNELS[want] = found if found is not None else NumpyKernels()
        k = _KERNELS[want]
    if native is True and k.name != "native":
        raise CompareError(f"the native comparison kernel is not available: {_REASON}")
    return k


def backend() -> str:
    """``"native"`` or ``"numpy fallback (why)"``: what :func:`kernels` gives by default."""
    return "native" if kernels().name == "native" else _REASON


# --------------------------------------------------------------------- dealer
def dealer_material(
    streams: Sequence[AesCtrStream], n: int, k: int, native: bool | None = None
) -> np.ndarray:
    """The dealer's answer to a comparison request: party 0's fixing shares (int64 words).

    Draws, in order, party 0's own material from ``streams[0]`` and party 1's own then
    fixing material from ``streams[1]``: exactly what the parties draw.
    """
    check_request(n, k)
    kern = kernels(native)
    own0 = _draw(streams[0], own_layout(n, k), _DEALER_POOL)
    own1 = _draw(streams[1], own_layout(n, k), _DEALER_POOL)
    fix1 = _draw(streams[1], fix_layout(n, k), _DEALER_POOL)
    out = np.empty(_nbytes(fix_layout(n, k)) // 8, dtype=np.int64)
    fix0 = _slices(out.view(np.uint8), fix_layout(n, k))
    rb0, rr0 = kern.dealer_bits(n, _u64(own0["r"]), _u64(own1["r"]), _u64(fix1["rb"]), fix1["rr"])
    fix0["rb"][:] = rb0.view(np.uint8)
    fix0["rr"][:] = rr0
    for w in WIDTHS:
        fix0[f"c{w}"][:] = kern.dealer_and(own0[f"a{w}"], own1[f"a{w}"], own0[f"b{w}"],
                                           own1[f"b{w}"], fix1[f"c{w}"])  # fmt: skip
    v0 = np.concatenate([_u64(own0[f"v{j}"]) for j in range(k)]) if k else np.empty(0, np.uint64)
    v1 = np.concatenate([_u64(own1[f"v{j}"]) for j in range(k)]) if k else np.empty(0, np.uint64)
    sv1 = np.concatenate([_u64(fix1[f"sv{j}"]) for j in range(k)]) if k else np.empty(0, np.uint64)
    s0, sv0 = kern.dealer_b2a(n, own0["sbit"], own1["sbit"], _u64(fix1["s"]), v0, v1, sv1)
    fix0["s"][:] = s0.view(np.uint8)
    for j in range(k):
        fix0[f"sv{j}"][:] = sv0[j * n : (j + 1) * n].view(np.uint8)
    for drawn in (own0, own1, fix1):
        _DEALER_POOL.give(drawn["_buf"])
    return out


_DEALER_POOL = _Pool()


# --------------------------------------------------------------------- parties
class Link(Protocol):
    """secagg's point-to-point channel between A and B (:mod:`secagg.mpc_link`)."""

    def isend(self, tensor: torch.Tensor, dst: int) -> Any: ...

    def recv(self, like: torch.Tensor, src: int, *, idle: bool = False) -> torch.Tensor: ...


class DealerChannel(Protocol):
    """Party 0's request channel to the dealer (``secagg.mpc._CsprngClient``)."""

    def send_request(self, hdr: torch.Tensor) -> None: ...

    def recv_result(self, result_size: Sequence[int]) -> torch.Tensor: ...


@dataclass
class CompareStats:
    """What this party's comparisons moved (bytes it sent to the peer, exchanges)."""

    bytes_sent: int = 0
    rounds: int = 0
    values: int = 0


@dataclass
class _Block:
    lo: int
    hi: int
    n: int
    k: int
    own: dict[str, np.ndarray]
    fix: dict[str, np.ndarray] | None


HEADER_WORDS = 32  # = secagg.mpc's dealer request header


class Comparator:
    """One party's end of the comparison protocol (collective: A and B make the same
    calls with arrays of the same shapes, in the same order).

    Parameters
    ----------
    rank
        0 (server A, talks to the dealer) or 1 (server B).
    link
        The A–B channel; messages are raw tensors (never pickled).
    stream
        This party's AES-CTR stream shared with the dealer (drawn in lockstep).
    dealer
        Party 0's dealer channel (``None`` on party 1).
    record
        Optional ``(label, array)`` sink for everything this party receives (privacy
        tests analyse it).
    """

    def __init__(
        self,
        rank: int,
        link: Link,
        stream: AesCtrStream,
        dealer: DealerChannel | None = None,
        *,
        record: Callable[[str, np.ndarray], None] | None = None,
        superblock: int = SUPERBLOCK,
        window: int = WINDOW,
        native: bool | None = None,
    ) -> None:
        if rank not in (0, 1):
            raise ValueError("a comparison party is rank 0 or 1")
        if rank == 0 and dealer is None:
            raise ValueError("party 0 needs the dealer channel")
        if superblock < ALIGN or superblock % ALIGN or superblock > MAX_BLOCK:
            raise ValueError(f"superblock must be a multiple of {ALIGN} up to {MAX_BLOCK}")
        self.rank, self.link, self.stream, self.dealer = rank, link, stream, dealer
        self.peer = 1 - rank
        self.record = record
        self.superblock, self.window = superblock, max(1, window)
        self.kern = kernels(native)
        self.stats = CompareStats()
        self._unrequested: collections.deque[_Block] = collections.deque()
        self._pool = _Pool()
        self._awaiting = False

    # ---------------------------------------------------------------- public
    def msb(
        self, x: np.ndarray, ys: Sequence[np.ndarray] = (), *, bits: bool = True
    ) -> tuple[np.ndarray | None, list[np.ndarray]]:
        """Shares of ``b = [x < 0]`` (if ``bits``) and of ``b * y`` for each ``y``.

        ``x`` and every ``y`` are this party's int64 shares of the same length (1-D).
        Returns int64 arrays (this party's additive shares in Z_2^64).
        """
        xs = self._flat(x)
        yl = [self._flat(y) for y in ys]
        if len(yl) > MAX_PRODUCTS or any(len(y) != len(xs) for y in yl):
            raise ValueError(f"up to {MAX_PRODUCTS} vectors y, each as long as x")
        out_b = np.empty(len(xs), dtype=np.int64) if bits else None
        out_p = [np.empty(len(xs), dtype=np.int64) for _ in yl]
        self._run(xs, yl, lambda blk: self._job_shared(blk, xs, yl, out_b, out_p, bits))
        return out_b, out_p

    def open_msb(self, x: np.ndarray) -> np.ndarray:
        """``[x < 0]`` opened to both parties (bool array): only the bits are revealed."""
        xs = self._flat(x)
        out = np.empty(len(xs), dtype=bool)
        self._run(xs, [], lambda blk: self._job_open(blk, xs, out))
        return out

    # ---------------------------------------------------------------- driver
    @staticmethod
    def _flat(a: np.ndarray) -> np.ndarray:
        arr = np.ascontiguousarray(a)
        if arr.dtype != np.int64 or arr.ndim != 1:
            raise TypeError("comparison inputs are 1-D int64 arrays of ring shares")
        return arr

    def _prepare(self, lo: int, hi: int, k: int) -> _Block:
        n = -(-(hi - lo) // ALIGN) * ALIGN
        blk = _Block(lo, hi, n, k, _draw(self.stream, own_layout(n, k), self._pool), None)
        if self.rank == 0:
            self._unrequested.append(blk)
            self._pump()
        else:
            blk.fix = _draw(self.stream, fix_layout(n, k), self._pool)
        return blk

    def _pump(self) -> None:
        """Party 0: send the next block's request once the previous answer is in.

        One request in flight at a time: over gloo the dealer's answer is a blocking
        send, so a second request behind an unread answer would deadlock; one ahead
        is enough for the dealer to compute a block while the parties run another.
        """
        if self._awaiting or not self._unrequested:
            return
        assert self.dealer is not None
        blk = self._unrequested.popleft()
        hdr = torch.zeros(HEADER_WORDS, dtype=torch.long)
        hdr[0], hdr[1], hdr[2] = FID_COMPARE, blk.n, blk.k
        self.dealer.send_request(hdr)  # the dealer computes while we work
        self._awaiting = True

    def _fix(self, blk: _Block, k: int) -> dict[str, np.ndarray]:
        if blk.fix is None:
            assert self.dealer is not None and self._awaiting
            words = _nbytes(fix_layout(blk.n, k)) // 8
            t = self.dealer.recv_result((words,))
            self._awaiting = False
            self._pump()
            buf = t.numpy().view(np.uint8)
            if self.record is not None:
                self.record("cmp_dealer", buf.copy())
            blk.fix = _slices(buf, fix_layout(blk.n, k))
        return blk.fix

    def _run(
        self,
        xs: np.ndarray,
        ys: list[np.ndarray],
        job: Callable[[_Block], Generator[None, None, None]],
    ) -> None:
        total = len(xs)
        self.stats.values += total
        starts = list(range(0, total, self.superblock))
        ready: collections.deque[_Block] = collections.deque()
        active: collections.deque[Generator[None, None, None]] = collections.deque()
        nxt = 0

        def prepare_more() -> None:
            nonlocal nxt
            # one block's material beyond the window is requested ahead: the dealer
            # computes it while the window's blocks run
            while nxt < len(starts) and len(ready) + len(active) < self.window + 1:
                lo = starts[nxt]
                ready.append(self._prepare(lo, min(total, lo + self.superblock), len(ys)))
                nxt += 1

        prepare_more()
        while ready or active:
            while ready and len(active) < self.window:
                gen = job(ready.popleft())
                next(gen)  # first message out
                active.append(gen)
                prepare_more()
            gen = active.popleft()
            try:
                next(gen)
                active.append(gen)
            except StopIteration:
                prepare_more()

    def _exchange(self, mine: np.ndarray, label: str) -> Generator[None, None, np.ndarray]:
        t = torch.from_numpy(mine)
        work = self.link.isend(t, self.peer)
        self.stats.bytes_sent += mine.nbytes
        self.stats.rounds += 1
        yield
        theirs = self.link.recv(torch.empty_like(t), self.peer).numpy()
        work.wait()
        if self.record is not None:
            self.record(label, theirs.copy())
        return theirs

    def _opened_c(
        self, blk: _Block, xs: np.ndarray, ys: list[np.ndarray]
    ) -> Generator[None, None, tuple[np.ndarray, np.ndarray]]:
        n, m = blk.n, blk.hi - blk.lo
        k = len(ys)
        msg = np.zeros((1 + k) * n, dtype=np.int64)
        msg[:m] = xs[blk.lo : blk.hi]
        msg[:n] += blk.own["r"].view(np.int64)
        for j, y in enumerate(ys):
            row = msg[(j + 1) * n : (j + 2) * n]
            row[:m] = y[blk.lo : blk.hi]
            row -= blk.own[f"v{j}"].view(np.int64)
        theirs = yield from self._exchange(msg, "cmp_masked")
        msg += theirs
        return msg[:n].view(np.uint64), msg[n:]

    def _bit_share(self, blk: _Block, c: np.ndarray, k: int) -> Generator[None, None, np.ndarray]:
        """This party's XOR share of msb(x), packed 8 per byte (levels 1..6)."""
        n, p0, own = blk.n, self.rank == 0, blk.own
        fix = self._fix(blk, k)
        de, ghi = self.kern.level1(n, p0, c, _u64(fix["rb"]), fix["rr"], own["a32"], own["b32"])
        for i, w in enumerate(WIDTHS):
            theirs = yield from self._exchange(de, "cmp_and")
            nw = WIDTHS[i + 1] if i + 1 < len(WIDTHS) else None
            de = self.kern.level(
                n, w, p0, de, theirs, own[f"a{w}"], own[f"b{w}"], fix[f"c{w}"], ghi,
                own.get(f"a{nw}"), own.get(f"b{nw}"),
            )  # fmt: skip
        return de

    def _job_shared(
        self,
        blk: _Block,
        xs: np.ndarray,
        ys: list[np.ndarray],
        out_b: np.ndarray | None,
        out_p: list[np.ndarray],
        bits: bool,
    ) -> Generator[None, None, None]:
        k, n, m = len(ys), blk.n, blk.hi - blk.lo
        c, f = yield from self._opened_c(blk, xs, ys)
        b = yield from self._bit_share(blk, c, k)
        e_mine = b ^ blk.own["sbit"]
        e_theirs = yield from self._exchange(e_mine, "cmp_e")
        fix = blk.fix
        assert fix is not None
        y = np.zeros((k, n), dtype=np.int64)
        for j, yy in enumerate(ys):
            y[j, :m] = yy[blk.lo : blk.hi]
        sv = np.concatenate([fix[f"sv{j}"].view(np.int64) for j in range(k)]) if k else y
        bb, prod = self.kern.b2a(n, self.rank == 0, e_mine, e_theirs, fix["s"].view(np.int64),
                                 y, f, sv, bits)  # fmt: skip
        if out_b is not None and bb is not None:
            out_b[blk.lo : blk.hi] = bb[:m]
        for j in range(k):
            out_p[j][blk.lo : blk.hi] = prod.reshape(k, n)[j, :m]
        self._release(blk)

    def _release(self, blk: _Block) -> None:
        self._pool.give(blk.own["_buf"])
        if self.rank == 1 and blk.fix is not None:
            self._pool.give(blk.fix["_buf"])

    def _job_open(
        self, blk: _Block, xs: np.ndarray, out: np.ndarray
    ) -> Generator[None, None, None]:
        m = blk.hi - blk.lo
        c, _ = yield from self._opened_c(blk, xs, [])
        b = yield from self._bit_share(blk, c, 0)
        theirs = yield from self._exchange(b, "cmp_bits")
        out[blk.lo : blk.hi] = np.unpackbits(b ^ theirs, bitorder="little")[:m].astype(bool)
        self._release(blk)
