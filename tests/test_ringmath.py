"""The ring kernel: bit-for-bit equal to torch's int64 matmul, and exact mod 2^64."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secagg import ringmath
from secagg.prg import AesCtrStream
from secagg.validation import projection_block

LO, HI = -(2**63), 2**63 - 1


def _rand(shape: tuple[int, int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(LO, HI, shape, dtype=torch.int64, generator=g)


@pytest.mark.parametrize(
    ("n1", "n2", "d"),
    [(1, 1, 1), (2, 4, 7), (3, 5, 2047), (5, 3, 2049), (20, 20, 5000), (20, 40, 4099), (7, 1, 3)],
)
def test_matches_torch_int64_matmul_bit_for_bit(n1: int, n2: int, d: int) -> None:
    a, b = _rand((n1, d), n1 + d), _rand((n2, d), n2 * d)
    assert torch.equal(ringmath.matmul_nt(a, b), a @ b.t())


@pytest.mark.parametrize(("n1", "n2", "d"), [(1, 1, 1), (20, 40, 4099), (3, 7, 2049)])
def test_int8_right_operand_is_sign_extended_into_the_ring(n1: int, n2: int, d: int) -> None:
    a = _rand((n1, d), d)
    g = torch.Generator().manual_seed(n2)
    b = torch.randint(-128, 128, (n2, d), dtype=torch.int8, generator=g)
    want = a @ b.to(torch.int64).t()
    assert torch.equal(ringmath.matmul_nt(a, b), want)
    assert torch.equal(ringmath.matmul_nt(a[:, 1:], b[:, 1:]), a[:, 1:] @ b[:, 1:].long().t())


def test_accumulates_and_takes_row_strided_views() -> None:
    x, r = _rand((6, 9000), 1), _rand((4, 3000), 2)
    start = _rand((6, 4), 3)
    out = start.clone()
    view = x[:, 5000:8000]  # a column slice: rows strided by 9000
    ringmath.matmul_nt(view, r, out=out)
    assert torch.equal(out, start + view @ r.t())


def test_exact_mod_2_64_on_extreme_values() -> None:
    vals = [LO, HI, -1, 1, 0, 2**32, 2**63 - 2**31, 3]
    a = torch.tensor([vals, vals[::-1]], dtype=torch.int64)
    b = torch.tensor([vals[3:] + vals[:3], vals], dtype=torch.int64)
    got = ringmath.matmul_nt(a, b)
    for i in range(2):
        for j in range(2):
            exact = sum(int(u) * int(v) for u, v in zip(a[i], b[j], strict=True)) % 2**64
            assert int(got[i, j]) % 2**64 == exact


def test_torch_fallback_gives_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = _rand((5, 3001), 4), _rand((6, 3001), 5)
    small = (b % 3 - 1).to(torch.int8)
    native, native8 = ringmath.matmul_nt(a, b), ringmath.matmul_nt(a, small)
    monkeypatch.setattr(ringmath, "_load", lambda: None)
    assert torch.equal(ringmath.matmul_nt(a, b), native)
    assert torch.equal(ringmath.matmul_nt(a, small), native8)


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no cc")
def test_native_kernel_is_used_where_a_compiler_exists() -> None:
    # the distance phase's speed depends on it: a silent fallback would be a regression
    assert ringmath.backend() == "native"


def test_rejects_what_it_cannot_multiply() -> None:
    a = _rand((3, 10), 6)
    with pytest.raises(TypeError, match="int64"):
        ringmath.matmul_nt(a.double(), a.double())
    with pytest.raises(ValueError, match="inner dimensions"):
        ringmath.matmul_nt(a, _rand((3, 11), 7))
    with pytest.raises(ValueError, match="column stride"):
        ringmath.matmul_nt(a.t(), a.t())
    with pytest.raises(ValueError, match="contiguous int64"):
        ringmath.matmul_nt(a, a, out=torch.zeros((3, 4), dtype=torch.int64))


# ---------------------------------------------------------- the streams it consumes
@pytest.mark.parametrize("count", [0, 1, 3, 131071, 131072, 131073, 400_001])
def test_fill_is_the_plain_aes_ctr_keystream(count: int) -> None:
    key = bytes(range(32))
    ref = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(8 * count + 8))
    s = AesCtrStream(key)
    got = s.ring(count)
    assert got.tobytes() == ref[: 8 * count]
    assert s.read_bytes(8) == ref[8 * count :]  # and the stream continues where it stopped


def _projection_block_bitwise(stream: AesCtrStream, k: int, width: int) -> np.ndarray:
    # the definition, bit by bit (the implementation uses a byte table)
    nbits = 2 * k * width
    raw = np.frombuffer(stream.read_bytes((nbits + 7) // 8), dtype=np.uint8)
    bits = np.unpackbits(raw)[:nbits].reshape(k, width, 2).astype(np.int8)
    return (bits[..., 0] * (1 - 2 * bits[..., 1])).astype(np.int64)


@pytest.mark.parametrize(("k", "widths"), [(40, [32768, 5000, 3]), (3, [1, 7, 9]), (1, [1, 2, 5])])
def test_projection_table_equals_the_bitwise_definition(k: int, widths: list[int]) -> None:
    key = bytes(range(1, 33))
    fast, slow = AesCtrStream(key), AesCtrStream(key)
    for w in widths:
        assert np.array_equal(projection_block(fast, k, w), _projection_block_bitwise(slow, k, w))


def test_a_kernel_built_before_loads_without_a_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    # the image compiles the kernel, then removes the compiler in the same layer
    if ringmath._compiler() is None:
        pytest.skip("no C compiler here to build the kernel first")
    built = ringmath.build()
    monkeypatch.setattr(ringmath, "_compiler", lambda: None)
    assert ringmath.build() == built


def test_each_kernel_source_builds_and_loads_its_own_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # build() once returned the ring kernel's object for any source already built, so a
    # fresh checkout's comparison kernel silently fell back to numpy
    if ringmath._compiler() is None:
        pytest.skip("no C compiler here to build the kernels")
    objs = {src.name: ringmath.build(src=src) for src in ringmath.NATIVE_SOURCES}
    for name, obj in objs.items():
        assert obj.name.startswith(Path(name).stem + "-"), (name, obj)
    monkeypatch.setattr(ringmath, "_compiler", lambda: None)  # prebuilt: still its own
    for src in ringmath.NATIVE_SOURCES:
        assert ringmath.build(src=src) == objs[src.name]
