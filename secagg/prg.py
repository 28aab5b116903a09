"""Cryptographically secure pseudo-random streams over the ring Z_2^64.

Every random ring element secagg uses (a worker's seed-expanded share, the dealer's
Beaver masks) comes from AES-256 in counter mode via ``cryptography``; never from
torch's or numpy's Mersenne Twister, whose state leaks from a few hundred outputs.

Layout (normative, see ``proto/SHARE_ENCODING.md``): key = the 32-byte seed, initial
counter block = 16 zero bytes (big-endian 128-bit counter starting at 0), keystream
bytes read as consecutive little-endian two's-complement int64 words.
"""

from __future__ import annotations

import secrets
import sys

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KEY_BYTES = 32
_ZERO_NONCE = bytes(16)
_ZEROS = bytes(1 << 20)  # plaintext for the keystream: CTR encrypts zeros to itself
_SLACK = 15


def fresh_key() -> bytes:
    """A new 256-bit key from the operating system's CSPRNG."""
    return secrets.token_bytes(KEY_BYTES)


class AesCtrStream:
    """A consumable AES-256-CTR keystream, read as int64 ring elements.

    Two holders of the same key that make the same sequence of calls obtain the same
    values: this is how the dealer and a party derive shared masks without sending them.
    """

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
            raise ValueError(f"AES-CTR key must be exactly {KEY_BYTES} bytes")
        self._enc = Cipher(algorithms.AES(bytes(key)), modes.CTR(_ZERO_NONCE)).encryptor()

    def read_bytes(self, nbytes: int) -> bytes:
        if nbytes < 0:
            raise ValueError("nbytes must be non-negative")
        return self._enc.update(bytes(nbytes))

    def fill(self, out: np.ndarray) -> np.ndarray:
        """Overwrite ``out`` (a C-contiguous int64 array) with the next keystream words.

        Encrypts straight into ``out``'s memory, a MiB at a time: building a bytes
        object, then an array from it, then a copy cost 20x the AES itself.
        """
        if out.dtype != np.int64 or not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("fill needs a writeable C-contiguous int64 array")
        mv = memoryview(out.reshape(-1)).cast("B")
        total, pos = len(mv), 0
        while pos < total:
            m = min(len(_ZEROS), total - pos)
            if pos + m + _SLACK <= total:  # update_into wants block_size - 1 spare bytes
                self._enc.update_into(_ZEROS[:m], mv[pos : pos + m + _SLACK])
            else:
                mv[pos : pos + m] = self._enc.update(_ZEROS[:m])
            pos += m
        if sys.byteorder != "little":  # the keystream is read as little-endian words
            out.byteswap(inplace=True)
        return out

    def ring(self, shape: int | tuple[int, ...]) -> np.ndarray:
        """Uniform elements of Z_2^64 as an int64 array of the given shape."""
        shape_t = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
        return self.fill(np.empty(shape_t, dtype=np.int64))

    def bits(self, shape: int | tuple[int, ...], bitlength: int = 64) -> np.ndarray:
        """Uniform ``bitlength``-bit values (low bits of ring elements), as int64."""
        if not 1 <= bitlength <= 64:
            raise ValueError("bitlength must be in [1, 64]")
        words = self.ring(shape)
        if bitlength == 64:
            return words
        return words & np.int64((1 << bitlength) - 1)


def expand_seed(seed: bytes, d: int) -> np.ndarray:
    """Expand a worker's seed into its server-A share: ``d`` uniform int64 words."""
    if d < 0:
        raise ValueError("dimension must be non-negative")
    return AesCtrStream(seed).ring(d)
