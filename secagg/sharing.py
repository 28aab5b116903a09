"""Two-server additive secret sharing of an encoded gradient, with a seeded share.

A worker with encoded vector ``x`` (int64, read as Z_2^64) draws a fresh 32-byte seed,
expands it into ``s_A = expand_seed(seed, d)`` and sends the *seed* to server A and
``s_B = x - s_A (mod 2^64)`` to server B. Server A regenerates ``s_A`` locally, so
the worker uploads d words plus 32 bytes instead of 2d words. Each server alone sees
a uniformly random value (the AES-CTR keystream for A, a one-time-padded ``x`` for
B). Normative layout: ``proto/SHARE_ENCODING.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from secagg import prg

__all__ = [
    "SEED_BYTES",
    "WorkerShares",
    "split",
    "share_a",
    "reconstruct",
    "share_to_bytes",
    "share_from_bytes",
]

SEED_BYTES: int = prg.KEY_BYTES

_WORD = np.dtype("<i8")  # wire format: little-endian two's-complement int64


def _ring_vector(x: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype != np.int64:
        raise ValueError(
            f"{name} must be an int64 ring vector, got dtype {arr.dtype}: "
            "encode it with secagg.encoding.encode first"
        )
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _check_seed(seed: object) -> bytes:
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
        got = len(seed) if isinstance(seed, (bytes, bytearray)) else type(seed).__name__
        raise ValueError(f"seed must be exactly {SEED_BYTES} bytes, got {got}")
    return bytes(seed)


def _sub_mod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # unsigned arithmetic wraps mod 2^64 by definition (C signed overflow does not),
    # and numpy raises no overflow warnings for array ops either way
    return (a.view(np.uint64) - b.view(np.uint64)).view(np.int64)


def _add_mod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a.view(np.uint64) + b.view(np.uint64)).view(np.int64)


@dataclass(frozen=True, eq=False)
class WorkerShares:
    """One worker's two shares of an encoded vector.

    ``eq=False``: generated ``==`` would compare arrays element-wise and be ambiguous;
    identity comparison is what a container of submissions needs. The seed is kept
    out of ``repr`` because seed and ``share_b`` together reveal the gradient.

    Attributes
    ----------
    seed : bytes
        32-byte seed for server A, which expands it to ``s_A``.
    share_b : numpy.ndarray
        int64 vector ``s_B = x - s_A (mod 2^64)`` for server B.
    """

    seed: bytes = field(repr=False)
    share_b: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "seed", _check_seed(self.seed))
        _ring_vector(self.share_b, "share_b")


def split(x_enc: ArrayLike) -> WorkerShares:
    """Split an encoded vector into a fresh seed (server A) and ``s_B`` (server B).

    Parameters
    ----------
    x_enc : array_like
        1-D int64 encoded gradient (from :func:`secagg.encoding.encode`). Not modified.

    Returns
    -------
    WorkerShares
        A new seed from the OS CSPRNG (``prg.fresh_key``) — never reuse it: two
        ``s_B`` under one seed leak the difference of the two gradients — and
        ``s_B = x - expand_seed(seed, d) mod 2^64``.

    Raises
    ------
    ValueError
        If ``x_enc`` is not a 1-D int64 array.
    """
    x = _ring_vector(x_enc, "x_enc")
    seed = prg.fresh_key()
    s_a = prg.expand_seed(seed, x.shape[0])
    return WorkerShares(seed=seed, share_b=_sub_mod(x, s_a))


def share_a(seed: bytes, d: int) -> np.ndarray:
    """Server A's share: expand ``seed`` into ``d`` int64 words (AES-256-CTR).

    Parameters
    ----------
    seed : bytes
        The 32-byte seed the worker sent to server A.
    d : int
        Vector dimension (non-negative).

    Returns
    -------
    numpy.ndarray
        New int64 array ``s_A`` of length ``d``.
    """
    return prg.expand_seed(_check_seed(seed), d)


def share_a_into(seed: bytes, out: np.ndarray) -> np.ndarray:
    """:func:`share_a` written into ``out`` (a C-contiguous int64 row), no temporary.

    Server A stacks n expanded seeds into one n×d matrix; expanding each into its row
    directly saves an n·d allocation and copy.
    """
    return prg.AesCtrStream(_check_seed(seed)).fill(out)


def reconstruct(seed: bytes, share_b: ArrayLike) -> np.ndarray:
    """Recombine ``s_A + s_B mod 2^64`` (tests and reference only).

    No deployed party ever holds both shares; this exists so tests and offline
    tooling can check a sharing.

    Parameters
    ----------
    seed : bytes
        The 32-byte seed (server A's share).
    share_b : array_like
        1-D int64 share of server B.

    Returns
    -------
    numpy.ndarray
        New int64 array equal to the encoded vector.
    """
    s_b = _ring_vector(share_b, "share_b")
    return _add_mod(share_a(seed, s_b.shape[0]), s_b)


def share_to_bytes(share: ArrayLike) -> bytes:
    """Serialise a share as concatenated little-endian int64 words (wire format).

    Parameters
    ----------
    share : array_like
        1-D int64 vector.

    Returns
    -------
    bytes
        ``8 · d`` bytes; word ``i`` is coordinate ``i``.
    """
    s = _ring_vector(share, "share")
    # astype to '<i8' byte-swaps on big-endian hosts and is a no-op cast otherwise
    return s.astype(_WORD, copy=False).tobytes()


def share_from_bytes(b: bytes | bytearray | memoryview, d: int) -> np.ndarray:
    """Parse ``d`` little-endian int64 words, as written by :func:`share_to_bytes`.

    Parameters
    ----------
    b : bytes-like
        Exactly ``8 · d`` bytes.
    d : int
        Expected dimension (non-negative).

    Returns
    -------
    numpy.ndarray
        New, writeable, native-endian int64 array of length ``d``.

    Raises
    ------
    ValueError
        If ``d`` is negative or ``len(b) != 8 · d`` (names expected and actual length).
    """
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0:
        raise ValueError(f"d must be a non-negative integer, got {d!r}")
    got = memoryview(b).nbytes
    want = _WORD.itemsize * int(d)
    if got != want:
        raise ValueError(
            f"share byte length mismatch: expected {want} bytes (8 · d, d = {int(d)}), "
            f"got {got} bytes"
        )
    # copy: frombuffer over immutable bytes gives a read-only view
    return np.frombuffer(b, dtype=_WORD).astype(np.int64)
