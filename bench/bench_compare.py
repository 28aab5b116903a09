"""Batched secure comparisons: secagg.compare against CrypTen's ``lt``, in one run.

    .venv/bin/python -m bench.bench_compare [--n 10000000] [--crypten-n 1000000]
        [--repeats 3] [--transport gloo|mtls] [--json out.json]
    .venv/bin/python -m bench.bench_compare --bulyan 20,4,1000000 [--bulyan 50,11,1000000]
        [--baseline-d 100000] [--repeats 1]

``--bulyan n,f,d`` (repeatable) measures Bulyan's secure coordinate stage instead, on
θ = n - 2f rows of benchmark shares (``bench_distances.make_share``): secagg's stage
(``session.bulyan_window_sum``) against the CrypTen circuit it replaced (kept here
verbatim as the baseline: Batcher's full sorting network, ``diff * diff.gt(0)`` per
compare-exchange, ``lt`` for the window), both checked bit for bit against
``rules.bulyan_window_sum`` of the plaintext. The baseline runs on the first
``--baseline-d`` columns (the stage is linear in d: column blocks) and is extrapolated
linearly to d when that is smaller, which the output says. Peak RSS over the start of
the call is also shown in units of the share matrix n·d·8 (the issue's ≤ 3× target).

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


# ------------------------------------------------------- Bulyan's coordinate stage
def party_bulyan_setup(session: Any, seed: int, n: int, d: int) -> None:
    from bench.bench_distances import make_share

    _STATE.clear()
    _STATE["share"] = make_share(session.rank, seed, n, d, 0.01)


def _crypten_bulyan_block(rows: torch.Tensor, f: int) -> torch.Tensor:
    """The baseline: secagg's Bulyan block before secagg.compare (CrypTen circuits)."""
    from secagg.mpc import FRAC_BITS, MPCTensor, _sorting_network

    def shared(t: torch.Tensor) -> Any:
        return MPCTensor.from_shares(t, precision=FRAC_BITS)

    theta = rows.shape[0]
    beta = theta - 2 * f
    for layer in _sorting_network(theta):
        lo = torch.tensor([p[0] for p in layer], dtype=torch.long)
        hi = torch.tensor([p[1] for p in layer], dtype=torch.long)
        diff = shared(rows[lo] - rows[hi])
        delta = (diff * diff.gt(0))._tensor.share
        rows[lo] -= delta
        rows[hi] += delta
    mid = (theta - 1) // 2
    med = rows[mid]
    best_cost = best_sum = None
    for s in range(max(0, mid - beta + 1), min(mid, theta - beta) + 1):
        below, above = mid - s, s + beta - 1 - mid
        wsum = rows[s : s + beta].sum(dim=0)
        cost = wsum - 2 * rows[s:mid].sum(dim=0) - (1 + above - below) * med
        if best_cost is None:
            best_cost, best_sum = shared(cost), shared(wsum)
            continue
        c_cost, c_sum = shared(cost), shared(wsum)
        better = c_cost.lt(best_cost)
        best_cost = best_cost + (c_cost - best_cost) * better
        best_sum = best_sum + (c_sum - best_sum) * better
    assert best_sum is not None
    return best_sum._tensor.reveal()


def _crypten_bulyan(session: Any, share: np.ndarray, sel: list[int], f: int) -> np.ndarray:
    x = torch.from_numpy(share)
    idx = torch.tensor(sel, dtype=torch.long)
    width = max(1024, (1 << 19) // len(sel))  # the baseline's own column blocks
    with session._phase("bulyan_coordinate"):
        parts = [
            _crypten_bulyan_block(x[:, c0 : c0 + width].index_select(0, idx), f)
            for c0 in range(0, x.shape[1], width)
        ]
    return torch.cat(parts).numpy()


def party_bulyan(session: Any, engine: str, f: int, d: int, repeats: int) -> dict[str, Any]:
    share = np.ascontiguousarray(_STATE["share"][:, :d])
    sel = list(range(share.shape[0] - 2 * f))
    if engine == "secagg":

        def fn(sh: np.ndarray) -> np.ndarray:
            return session.bulyan_window_sum(sh, sel, f)
    else:

        def fn(sh: np.ndarray) -> np.ndarray:
            return _crypten_bulyan(session, sh, sel, f)

    fn(np.ascontiguousarray(share[:, :64]))  # warm-up
    times, peaks, out = [], [], None
    for _ in range(repeats):
        _barrier(session)
        session.reset_traffic()
        mem = _Mem()
        t0 = time.perf_counter()
        out = fn(share)
        times.append(time.perf_counter() - t0)
        peaks.append(mem.done())
    return {"times": times, "traffic": session.traffic.as_dict(), "mem": peaks, "sum": out}


def measure_bulyan(
    cluster: MpcCluster, seed: int, n: int, f: int, d: int, base_d: int, repeats: int
) -> list[dict[str, Any]]:
    from bench.bench_distances import make_x
    from secagg import rules

    cluster.run(party_bulyan_setup, (seed, n, d), (seed, n, d))
    x = make_x(seed, n, d, 0.01)
    theta = n - 2 * f
    rows = []
    for engine, dd in (("secagg", d), ("crypten", min(d, base_d))):
        _progress(f"bulyan stage {engine}: n={n} f={f} d={dd} x {repeats}")
        _dealer_hwm(cluster, reset=True)
        ra, rb = cluster.run(party_bulyan, (engine, f, dd, repeats), (engine, f, dd, repeats))
        want = rules.bulyan_window_sum(x[:theta, :dd], f)
        slower = [max(a, b) for a, b in zip(ra["times"], rb["times"], strict=True)]
        peak = max(m["peak_increase_mib"] for m in ra["mem"] + rb["mem"])
        rows.append({
            "engine": engine, "n": n, "f": f, "d": dd, "times": slower,
            "median_s": statistics.median(slower),
            "bytes_a_to_b": ra["traffic"]["bytes_sent"].get("bulyan_coordinate", 0),
            "rounds": ra["traffic"]["rounds"].get("bulyan_coordinate", 0),
            "dealer_to_a": ra["traffic"]["dealer_bytes"].get("bulyan_coordinate", 0),
            "peak_over_start_mib": peak,
            "peak_in_share_matrices": peak * 2**20 / (n * dd * 8),
            "dealer_peak_mib": _dealer_hwm(cluster, reset=False),
            "exact": bool(np.array_equal(ra["sum"], want) and np.array_equal(rb["sum"], want)),
        })  # fmt: skip
    return rows


def bulyan_main(args: argparse.Namespace) -> int:
    from secagg import compare

    results = []
    with MpcCluster(timeout_s=3600.0, transport=args.transport) as cluster:
        for spec in args.bulyan:
            n, f, d = (int(v) for v in spec.split(","))
            results += measure_bulyan(cluster, args.seed, n, f, d, args.baseline_d, args.repeats)
    print(f"Bulyan's secure coordinate stage (θ = n - 2f rows), {args.transport}, kernel: "
          f"{compare.backend()}, medians of {args.repeats} (slower party)")  # fmt: skip
    print("| engine | n | f | d | seconds | at d (linear) | bytes A->B | rounds | "
          "dealer->A | peak over start (MiB, ×n·d·8) | exact |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        full = next(q["d"] for q in results if q["n"] == r["n"] and q["engine"] == "secagg")
        at_d = r["median_s"] * full / r["d"]
        note = f"{at_d:.1f}" + (" (extrapolated)" if r["d"] != full else "")
        print(f"| {r['engine']} | {r['n']} | {r['f']} | {r['d']:,} | {r['median_s']:.2f} | "
              f"{note} | {r['bytes_a_to_b'] / 1e6:.1f} MB | {r['rounds']} | "
              f"{r['dealer_to_a'] / 1e6:.1f} MB | {r['peak_over_start_mib']:.0f} "
              f"({r['peak_in_share_matrices']:.2f}×) | {'yes' if r['exact'] else 'NO'} |")
    for r in results:
        if r["engine"] != "secagg":
            continue
        base = next(q for q in results if q["n"] == r["n"] and q["engine"] == "crypten")
        est = base["median_s"] * r["d"] / base["d"]
        how = f" (extrapolated from d={base['d']:,})" if base["d"] != r["d"] else ""
        print(f"n={r['n']}, d={r['d']:,}: secagg {r['median_s']:.2f} s, CrypTen circuit "
              f"{est:.1f} s{how}: {est / r['median_s']:.1f}x")  # fmt: skip
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "bulyan": results}, fh, indent=1, default=str)
    return 0 if all(r["exact"] for r in results) else 1


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
    p.add_argument("--bulyan", action="append", default=[], metavar="N,F,D")
    p.add_argument("--baseline-d", type=int, default=100_000)
    args = p.parse_args(argv)
    if args.bulyan:
        return bulyan_main(args)
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
