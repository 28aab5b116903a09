"""Products over the ring Z_2^64: ``out += A @ B.T`` for int64 matrices, exact mod 2^64.

Every product in secagg's 2PC (the Gram matrix of the masked opening, the dealer's
``R R^T``, the validation projections) is an int64 matrix product with wrap-around.
Neither torch nor numpy has a BLAS path for int64: torch's generic loop runs at about
0.5 G multiply-adds per second here, and was most of the distance phase. This module
compiles a small tiled C loop (``secagg/native/ring_gemm.c``) with the system C compiler
on first use, loads it with ctypes, and falls back to torch's int64 matmul (same result,
bit for bit; about 8x slower) where no compiler is available.

    python -m secagg.ringmath --build    # compile now (scripts/setup.sh and the image do)
    python -m secagg.ringmath            # which backend this machine uses, and a timing

``SECAGG_NATIVE=0`` forces the torch path (the tests compare both).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

import torch

log = logging.getLogger("secagg.ringmath")

_SRC = Path(__file__).with_name("native") / "ring_gemm.c"
# every native kernel `--build` compiles (secagg.compare loads bit_compare.c)
NATIVE_SOURCES = (_SRC, _SRC.with_name("bit_compare.c"))
_ABI = 3
_LOCK = threading.Lock()
_LIB: ctypes.CDLL | None = None
_REASON = "not loaded yet"
_TRIED = False


def _tag(src: Path = _SRC) -> str:
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    plat = f"{sys.platform}-{platform.machine()}".replace(" ", "_")
    suffix = sysconfig.get_config_var("SHLIB_SUFFIX") or ".so"
    return f"{src.stem}-{digest}-{plat}{suffix}"


def _candidates() -> list[Path]:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return [_SRC.parent / "_build", Path(cache) / "secagg"]


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def build(quiet: bool = True, src: Path = _SRC) -> Path:
    """Compile a kernel (``src``, by default the ring product) into the first writable
    build directory; return its path.

    The object is written to a temporary name and renamed into place, so processes
    that build at the same moment (A, B and the dealer on one host) never load a
    half-written file.
    """
    # an object built before (e.g. in the image, whose compiler was removed after)
    for folder in _candidates():
        if (folder / _tag(src)).exists():
            return folder / _tag(src)
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    errors = []
    for folder in _candidates():
        target = folder / _tag(src)
        if target.exists():
            return target
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".so.tmp")
            os.close(fd)
        except OSError as exc:
            errors.append(f"{folder}: {exc}")
            continue
        cmd = [cc, "-O3", "-fPIC", "-shared", "-o", tmp, str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            Path(tmp).unlink(missing_ok=True)
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.strip()}")
        os.replace(tmp, target)
        if not quiet:
            print(f"built {target}")
        return target
    raise RuntimeError("no writable build directory: " + "; ".join(errors))


def _load() -> ctypes.CDLL | None:
    global _LIB, _REASON, _TRIED
    with _LOCK:
        if _TRIED:
            return _LIB
        _TRIED = True
        if os.environ.get("SECAGG_NATIVE", "1") == "0":
            _REASON = "disabled by SECAGG_NATIVE=0"
            return None
        try:
            lib = ctypes.CDLL(str(build()))
            if lib.secagg_ring_gemm_abi() != _ABI:
                raise RuntimeError("stale kernel ABI; delete secagg/native/_build")
            i64 = ctypes.c_int64
            for fn, res in ((lib.secagg_ring_gemm_nt, None), (lib.secagg_ring_gemm_nt_i8, i64)):
                fn.restype = res
                fn.argtypes = [
                    ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                    ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                    ctypes.c_int64,
                ]  # fmt: skip
            _LIB, _REASON = lib, "native"
        except (OSError, RuntimeError, AttributeError) as exc:
            _REASON = f"torch fallback ({exc})"
            log.warning(
                "ring kernel unavailable, using torch's int64 matmul (about 8x slower): %s. "
                "Install a C compiler and run `python -m secagg.ringmath --build`.",
                exc,
            )
        return _LIB


def backend() -> str:
    """``"native"`` or ``"torch fallback (why)"``: which path :func:`matmul_nt` takes."""
    _load()
    return _REASON


def _check(name: str, t: torch.Tensor, dtypes: tuple[torch.dtype, ...]) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype not in dtypes or t.dim() != 2:
        kinds = " or ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} must be a 2-D {kinds} torch tensor")
    if t.shape[0] > 1 and t.shape[1] > 0 and t.stride(1) != 1:
        raise ValueError(f"{name} must have unit column stride (rows may be strided)")


def matmul_nt(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``out += a @ b.T`` in Z_2^64 (``out`` starts at zero when not given).

    Parameters
    ----------
    a, b
        Matrices of shapes (n1, d) and (n2, d): ``a`` int64, ``b`` int64 or int8 (small
        public values such as projections, sign-extended into the ring). Rows may be
        strided (a column slice of a wider matrix is fine); columns must be contiguous.
    out
        Optional (n1, n2) contiguous int64 accumulator, updated in place.

    Returns
    -------
    torch.Tensor
        ``out``, exact mod 2^64 (two's complement wrap-around).
    """
    _check("a", a, (torch.int64,))
    _check("b", b, (torch.int64, torch.int8))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"inner dimensions differ: {tuple(a.shape)} and {tuple(b.shape)}")
    n1, d = a.shape
    n2 = b.shape[0]
    if out is None:
        out = torch.zeros((n1, n2), dtype=torch.int64)
    elif out.dtype != torch.int64 or tuple(out.shape) != (n1, n2) or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous int64 ({n1}, {n2}) tensor")
    if n1 == 0 or n2 == 0 or d == 0:
        return out
    lib = _load()
    if lib is None:
        out += a @ b.to(torch.int64).t()
        return out
    args = (a.data_ptr(), a.stride(0), b.data_ptr(), b.stride(0), out.data_ptr(), out.stride(0))
    # ctypes releases the GIL for the call: the link threads keep moving bytes meanwhile
    if b.dtype == torch.int8:
        if lib.secagg_ring_gemm_nt_i8(*args, n1, n2, d) != 0:
            out += a @ b.to(torch.int64).t()  # no scratch memory: same result, slower
    else:
        lib.secagg_ring_gemm_nt(*args, n1, n2, d)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--build", action="store_true", help="compile the kernel now and exit")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--d", type=int, default=1_000_000)
    args = p.parse_args(argv)
    if args.build:
        try:
            for src in NATIVE_SOURCES:
                build(quiet=False, src=src)
        except RuntimeError as exc:
            print(f"secagg.ringmath: build failed: {exc}", file=sys.stderr)
            print("secagg still works, with torch's slower int64 matmul.", file=sys.stderr)
            return 1
        return 0
    print(f"backend: {backend()}")
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    lo, hi = -(2**63), 2**63 - 1
    a = torch.randint(lo, hi, (args.n, args.d), dtype=torch.int64, generator=g)
    b = torch.randint(lo, hi, (args.n, args.d), dtype=torch.int64, generator=g)
    t0 = time.perf_counter()
    mine = matmul_nt(a, b)
    t1 = time.perf_counter()
    ref = a @ b.t()
    t2 = time.perf_counter()
    same = bool(torch.equal(mine, ref))
    print(f"{args.n}x{args.d}x{args.n}: matmul_nt {t1 - t0:.3f} s, torch {t2 - t1:.3f} s, "
          f"ratio {(t2 - t1) / max(t1 - t0, 1e-9):.1f}x, identical: {same}")  # fmt: skip
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
