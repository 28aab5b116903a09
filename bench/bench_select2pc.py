"""Seconds, bytes and rounds of secagg.select2pc's selection step (Multi-Krum scores,
ranks, opened picks) at n = 20, 50, 100 on real party processes, next to the plaintext
rule (secagg.rules.multi_krum) timed in the same run.

Run: .venv/bin/python bench/bench_select2pc.py [n ...]
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

from secagg import rules
from secagg.cluster import MpcCluster
from secagg.select2pc import select_party


def main(sizes: list[int]) -> None:
    rng = np.random.default_rng(0)
    with MpcCluster(timeout_s=600) as cluster:
        for n in sizes:
            f = (n - 3) // 2 // 2  # a quarter of workers Byzantine
            m = n - f
            x = rng.integers(-(2**10), 2**10, (n, 32), dtype=np.int64)
            d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
            d0 = rng.integers(-(2**63), 2**63, d.shape, dtype=np.int64)
            d1 = d - d0
            secure, plain = [], []
            for _ in range(3):
                t = time.perf_counter()
                (pa, _, st), (pb, _, _) = cluster.run(select_party, (d0, f, m), (d1, f, m))
                secure.append(time.perf_counter() - t)
                t = time.perf_counter()
                want = rules.multi_krum(d, f, m)
                plain.append(time.perf_counter() - t)
                assert pa == pb == want, "secure selection differs from the plaintext rule"
            s, p = statistics.median(secure), statistics.median(plain)
            print(
                f"n={n:4d} f={f:3d} m={m:4d}  secure {s:8.3f} s  bytes/party {st.bytes_sent:>12,d}"
                f"  rounds {st.rounds:6d}  |  plaintext {p * 1e3:8.3f} ms  ratio {s / p:,.0f}x",
                flush=True,
            )


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [20, 50, 100])
