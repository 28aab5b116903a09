"""Benchmark of the exact discrete Gaussian sampler (secagg.dp.sampler).

Run from the repository root::

    .venv/bin/python -m bench.bench_dp_sampler [--d 1000000] [--repeats 3]

For each σ (encoded units: 3; 1000; 6 553 600 = σ 100 at scale 1, a typical DP round's
noise) it times ``discrete_gaussian(σ², d)`` and prints the median over repeats, next to
two baselines measured in the same run: reading the same number of 8-byte words from
``os.urandom`` (the CSPRNG alone) and numpy's *inexact, non-cryptographic*
``rint(default_rng().normal(0, σ, d))`` (what the exact sampler replaces; never use it
for DP). Also prints the sample std as a sanity check.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

from secagg.dp.sampler import discrete_gaussian


def _median_s(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    d, r = args.d, args.repeats
    urandom_s = _median_s(lambda: os.urandom(8 * d), r)
    print(f"d = {d}, median of {r}")
    print(f"baseline os.urandom({8 * d} bytes): {urandom_s:.3f} s")
    rng = np.random.default_rng()
    for sigma in (3, 1000, 6_553_600):
        numpy_s = _median_s(lambda s=sigma: np.rint(rng.normal(0, s, d)), r)
        exact_s = _median_s(lambda s=sigma: discrete_gaussian(s * s, d), r)
        std = float(discrete_gaussian(sigma * sigma, min(d, 200_000)).std())
        print(
            f"σ = {sigma:>9}: exact {exact_s:.2f} s ({d / exact_s / 1e6:.3f} M samples/s); "
            f"numpy rint(normal) baseline {numpy_s:.3f} s (ratio {exact_s / numpy_s:.0f}x); "
            f"sample std {std:.5g}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
