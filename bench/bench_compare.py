"""Batched secure comparisons: secagg.compare against CrypTen's ``lt``, in one run.

    .venv/bin/python -m bench.bench_compare [--n 10000000] [--crypten-n 1000000]
        [--repeats 3] [--transport gloo|mtls] [--json out.json]

One :class:`secagg.cluster.MpcCluster` (server A, server B and the CSPRNG dealer as
separate processes on loopback). Both parties hold additive shares of the same n int64
values (uniform in the ±2^62 range validation's headroom allows, with 0, ±1, ±2^62 and
the ring's extremes among them) and compute shares of ``[x < 0]``:

* secagg: ``session.comparator().msb(x)`` (arithmetic shares of the bit, the form every
  caller uses), at ``--n`` and at ``--crypten-n``;
* CrypTen: ``MPCTensor.from_shares(x, precision=0).lt(0)`` with the same CSPRNG dealer,
  at ``--crypten-n`` (its ~300 bytes of temporaries per value make 10^7 several GB per
  party on this machine; pass ``--crypten-n 10000000`` where memory allows). When the
  sizes differ the table extrapolates CrypTen linearly to ``--n`` and says so.

Per engine and size: the median over repeats of the slower party's wall time, bytes
this party sent to the peer and exchanges (rounds) from ``session.traffic``, dealer
bytes to A, and peak RSS over the RSS before the call (VmHWM reset before each call)
for A, B and the dealer. Every repeat is checked: the opened bits equal ``x < 0`` on
the plaintext integers (opening is not timed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch

from bench.bench_distances import _barrier, _Mem
from secagg.cluster import MpcCluster

_STATE: dict[str, Any] = {}


def _progress(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def plain_values(seed: int, n: int) -> np.ndarray:
    """The compared integers: uniform in [-2^62, 2^62] plus the extreme values."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-(2**62), 2**62, n, dtype=np.int64, endpoint=True)
    edge = np.array([0, 1, -1, 2**62, -(2**62), 2**63 - 1, -(2**63), 2**62 - 1], dtype=np.int64)
    x[: min(n, len(edge))] = edge[: min(n, len(edge))]
    return x


def party_setup(session: Any, seed: int, n: int) -> None:
    _STATE.clear()
    x = plain_values(seed, n)
    mask = np.random.default_rng(seed + 1).integers(-(2**63), 2**63, n, dtype=np.int64)
    _STATE["plain"] = x
    _STATE["share"] = mask if session.rank == 0 else x - mask


def _open_bits(session: Any, share: np.ndarray) -> np.ndarray:
    peer = 1 - session.rank
    t = torch.from_numpy(np.ascontiguousarray(share))
    work = session._link.isend(t, peer)
    other = session._link.recv(torch.empty_like(t), peer)
    work.wait()
    return (other + t).numpy()


def _secagg_lt(session: Any, x: np.ndarray) -> np.ndarray:
    with session._phase("compare"), session._comparisons() as cmp:
        bits, _ = cmp.msb(x)
    assert bits is not None
    return bits


def _crypten_lt(session: Any, x: np.ndarray) -> np.ndarray:
    from secagg.mpc import MPCTensor

    with session._phase("compare"):
        out = MPCTensor.from_shares(torch.from_numpy(x), precision=0).lt(0)
        share = out._tensor.share.numpy()
    return share


def party_run(session: Any, engine: str, n: int, repeats: int) -> dict[str, Any]:
    from secagg import mpc

    x = np.ascontiguousarray(_STATE["share"][:n])
    plain = _STATE["plain"][:n]
    fn = _secagg_lt if engine == "secagg" else _crypten_lt
    fn(session, np.ascontiguousarray(x[:4096]))  # warm-up (first-call costs)
    times, traffic, peaks, ok = [], [], [], True
    for _ in range(repeats):
        _barrier(session)
        session.reset_traffic()
        d0 = mpc._client().dealer_bytes
        mem = _Mem()
        t0 = time.perf_counter()
        bits = fn(session, x)
        times.append(time.perf_counter() - t0)
        peaks.append(mem.done())
        tr = session.traffic.as_dict()
        tr["dealer_to_a"] = mpc._client().dealer_bytes - d0
        traffic.append(tr)
        opened = _open_bits(session, bits)
        ok = ok and bool(np.array_equal(opened, (plain < 0).astype(np.int64)))
        del bits, opened
    return {"times": times, "traffic": traffic[-1], "mem": peaks, "exact": ok}


def _dealer_hwm(cluster: MpcCluster, reset: bool) -> float | None:
    pid = cluster._dealer.pid
    try:
        if reset:
            with open(f"/proc/{pid}/clear_refs", "w") as fh:
                fh.write("5")
            return None
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def measure(cluster: MpcCluster, engine: str, n: int, repeats: int) -> dict[str, Any]:
    _progress(f"{engine}: {n} comparisons x {repeats}")
    _dealer_hwm(cluster, reset=True)
    ra, rb = cluster.run(party_run, (engine, n, repeats), (engine, n, repeats))
    slower = [max(a, b) for a, b in zip(ra["times"], rb["times"], strict=True)]
    tr = ra["traffic"]
    return {
        "engine": engine,
        "n": n,
        "times": slower,
        "median_s": statistics.median(slower),
        "bytes_a_to_b": tr["bytes_sent"].get("compare", 0),
        "bytes_b_to_a": rb["traffic"]["bytes_sent"].get("compare", 0),
        "rounds": tr["rounds"].get("compare", 0),
        "dealer_to_a": tr["dealer_to_a"],
        "peak_a_mib": max(m["peak_increase_mib"] for m in ra["mem"]),
        "peak_b_mib": max(m["peak_increase_mib"] for m in rb["mem"]),
        "dealer_peak_mib": _dealer_hwm(cluster, reset=False),
        "exact": ra["exact"] and rb["exact"],
    }


def _row(r: dict[str, Any], extrapolated_to: int | None = None) -> str:
    n = r["n"]
    dealer = "n/a" if r["dealer_peak_mib"] is None else f"{r['dealer_peak_mib']:.0f}"
    line = (
        f"| {r['engine']} | {n:,} | {r['median_s']:.3f} | {r['median_s'] / n * 1e9:.0f} | "
        f"{r['bytes_a_to_b'] / n:.1f} | {r['rounds']} | {r['dealer_to_a'] / n:.1f} | "
        f"{r['peak_a_mib']:.0f} / {r['peak_b_mib']:.0f} / {dealer} | "
        f"{'yes' if r['exact'] else 'NO'} |"
    )
    if extrapolated_to:
        line += f"\n| {r['engine']} (linear extrapolation) | {extrapolated_to:,} | " + (
            f"{r['median_s'] * extrapolated_to / n:.1f} | | | | | | |"
        )
    return line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=10_000_000)
    p.add_argument("--crypten-n", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--transport", default="gloo", choices=("gloo", "mtls"))
    p.add_argument("--seed", type=int, default=20)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from secagg import compare

    results = []
    with MpcCluster(timeout_s=1200.0, transport=args.transport) as cluster:
        size = max(args.n, args.crypten_n)
        cluster.run(party_setup, (args.seed, size), (args.seed, size))
        results.append(measure(cluster, "secagg", args.n, args.repeats))
        if args.crypten_n != args.n:
            results.append(measure(cluster, "secagg", args.crypten_n, args.repeats))
        results.append(measure(cluster, "crypten", args.crypten_n, args.repeats))
    by = {(r["engine"], r["n"]): r for r in results}
    ours, theirs = by[("secagg", args.crypten_n)], by[("crypten", args.crypten_n)]
    print(f"secure comparisons [x < 0], {args.transport}, kernel: {compare.backend()}, "
          f"medians of {args.repeats} (slower party)")  # fmt: skip
    print("| engine | n | seconds | ns/value | bytes A->B /value | rounds | dealer->A "
          "/value | peak MiB over start A / B / dealer | exact |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    extrapolate = args.n if args.crypten_n != args.n else None
    for r in results:
        print(_row(r, extrapolate if r["engine"] == "crypten" else None))
    ratio = theirs["median_s"] / ours["median_s"]
    print(f"speed-up at n = {args.crypten_n:,} (same n, same run): {ratio:.1f}x")
    if extrapolate:
        big = by[("secagg", args.n)]
        est = theirs["median_s"] * args.n / args.crypten_n
        print(f"at n = {args.n:,}: secagg {big['median_s']:.2f} s measured; CrypTen "
              f"{est:.1f} s extrapolated linearly from n = {args.crypten_n:,} "
              f"(not measured): {est / big['median_s']:.1f}x")  # fmt: skip
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=1)
    return 0 if all(r["exact"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
