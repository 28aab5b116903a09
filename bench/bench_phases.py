"""Per-phase cost of a secure round, each next to its plaintext floor, in one run.

    .venv/bin/python -m bench.bench_phases [--n 20] [--d 1000000] [--repeats 3]
        [--bulyan-n 11 --bulyan-f 2 --bulyan-d 100000] [--grid] [--json out.json]

Phases (all in one MpcCluster: real A, B and dealer processes on loopback):

* prepare      dealer Gram pair for n rows (input-independent; the service runs it while
               shares arrive)
* distances    online part after prepare: the one n×d opening, one product, D to A
* distances (cold)  the same without prepare (dealer material on the critical path)
* validation   the 2PC input check (40 projections, one batched secure comparison)
* reveal       opening the sum of the selected rows
* bulyan       Bulyan's secure coordinate stage on θ = n - 2f rows

Each 2PC figure is the median over repeats of the slower party's wall time. Plaintext
floors are measured in this process on the same sizes. ``--grid`` adds the scaling
sweep n ∈ {10, 20, 50} × d ∈ {10^4, 10^5, 10^6} for distances (cold and online) and
validation, with fitted exponents of time in n and in d.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np
import torch

from bench.bench_distances import _barrier, make_share, make_x
from secagg.cluster import MpcCluster
from secagg.prg import fresh_key
from secagg.ringmath import matmul_nt
from secagg.validation import projection_matrix, projections_plain

_STATE: dict[str, Any] = {}


def _progress(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------- party functions
def party_setup(session: Any, seed: int, n: int, d: int) -> float:
    _STATE.clear()
    _STATE["share"] = make_share(session.rank, seed, n, d, 0.01)
    return float(_STATE["share"].nbytes)


def _timed(session: Any, fn: Any, repeats: int, before: Any = None) -> dict[str, Any]:
    times, traffic = [], []
    for _ in range(repeats):
        if before is not None:
            before()
        _barrier(session)
        session.reset_traffic()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        traffic.append(session.traffic.as_dict())
    return {"times": times, "traffic": traffic[-1]}


def party_phases(session: Any, repeats: int, k: int, threshold: int) -> dict[str, Any]:
    share = _STATE["share"]
    n, d = share.shape
    seed = b"\x07" * 32  # public and fixed: both parties must use the same projections
    warm = np.ascontiguousarray(share[:, :64])
    session.sq_distances(warm)
    session.validate_inputs(warm, seed, k, threshold)
    out: dict[str, Any] = {}
    out["distances_cold"] = _timed(session, lambda: session.sq_distances(share), repeats)
    out["prepare"] = _timed(session, lambda: session.prepare_distances(n, d), repeats)
    out["distances_online"] = _timed(
        session,
        lambda: session.sq_distances(share),
        repeats,
        before=lambda: session.prepare_distances(n, d),
    )
    out["validation"] = _timed(
        session, lambda: session.validate_inputs(share, seed, k, threshold), repeats
    )
    sel = list(range(n - n // 4))
    out["reveal"] = _timed(session, lambda: session.reveal_sum(share, sel), repeats)
    return out


def party_bulyan(session: Any, f: int, repeats: int) -> dict[str, Any]:
    share = _STATE["share"]
    n = share.shape[0]
    sel = list(range(n - 2 * f))
    session.bulyan_window_sum(np.ascontiguousarray(share[:, :16]), sel, f)
    return {"bulyan": _timed(session, lambda: session.bulyan_window_sum(share, sel, f), repeats)}


# ------------------------------------------------------------------- driver
def _slowest(a: dict[str, Any], b: dict[str, Any]) -> float:
    return float(np.median([max(x, y) for x, y in zip(a["times"], b["times"], strict=True)]))


def _plain_floor(n: int, d: int, k: int, repeats: int) -> dict[str, float]:
    x = make_x(1, n, d, 0.01)
    xf = torch.from_numpy(x.astype(np.float32))
    _ = xf[:, :64] @ xf[:, :64].t()  # first-call costs are not the floor
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        g = xf @ xf.t()
        dg = torch.diagonal(g)
        _ = dg[None, :] + dg[:, None] - 2 * g
        t.append(time.perf_counter() - t0)
    tv = []
    xt = torch.from_numpy(x)
    for _ in range(max(1, repeats // 2)):
        # the same projections with the same ring kernel the parties use, in one process
        t0 = time.perf_counter()
        seed = fresh_key()
        got = matmul_nt(xt, torch.from_numpy(projection_matrix(seed, k, d)))
        tv.append(time.perf_counter() - t0)
    if not np.array_equal(got.numpy()[:2], projections_plain(x[:2], seed, k)):
        raise AssertionError("the kernel's projections differ from validation.projections_plain")
    return {"distances_float32": float(np.median(t)), "validation_int64": float(np.median(tv))}


def measure(cluster: MpcCluster, n: int, d: int, repeats: int, k: int = 40) -> dict[str, Any]:
    threshold = 1 << 40  # passes for these inputs; its value does not change the cost
    cluster.run(party_setup, (1, n, d), (1, n, d))
    a, b = cluster.run(party_phases, (repeats, k, threshold), (repeats, k, threshold))
    res: dict[str, Any] = {"n": n, "d": d}
    for name in a:
        res[name] = {
            "seconds": _slowest(a[name], b[name]),
            "bytes_sent_a": sum(a[name]["traffic"]["bytes_sent"].values()),
            "bytes_sent_b": sum(b[name]["traffic"]["bytes_sent"].values()),
            "dealer_bytes": sum(a[name]["traffic"]["dealer_bytes"].values()),
            "rounds": sum(a[name]["traffic"]["rounds"].values()),
        }
    res["plain"] = _plain_floor(n, d, k, repeats)
    return res


def _fit(xs: list[float], ys: list[float]) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--d", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bulyan-n", type=int, default=11)
    p.add_argument("--bulyan-f", type=int, default=2)
    p.add_argument("--bulyan-d", type=int, default=100_000)
    p.add_argument("--grid", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.quick:
        a.n, a.d, a.bulyan_n, a.bulyan_f, a.bulyan_d, a.repeats = 8, 5000, 7, 1, 500, 1
    out: dict[str, Any] = {"cpus": torch.get_num_threads(), "torch": torch.__version__}
    with MpcCluster(timeout_s=600) as c:
        _progress(f"phases at n={a.n}, d={a.d} ×{a.repeats}")
        out["main"] = measure(c, a.n, a.d, a.repeats)
        _progress(f"bulyan stage at n={a.bulyan_n}, f={a.bulyan_f}, d={a.bulyan_d}")
        c.run(party_setup, (2, a.bulyan_n, a.bulyan_d), (2, a.bulyan_n, a.bulyan_d))
        ba, bb = c.run(party_bulyan, (a.bulyan_f, a.repeats), (a.bulyan_f, a.repeats))
        out["bulyan"] = {
            "n": a.bulyan_n,
            "f": a.bulyan_f,
            "d": a.bulyan_d,
            "seconds": _slowest(ba["bulyan"], bb["bulyan"]),
            "bytes_sent_a": sum(ba["bulyan"]["traffic"]["bytes_sent"].values()),
            "rounds": sum(ba["bulyan"]["traffic"]["rounds"].values()),
        }
        if a.grid:
            out["grid"] = []
            for n in (10, 20, 50):
                for d in (10_000, 100_000, 1_000_000):
                    _progress(f"grid n={n}, d={d}")
                    out["grid"].append(measure(c, n, d, max(1, a.repeats - 1)))
    print(format_table(out))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


def format_table(out: dict[str, Any]) -> str:
    m = out["main"]
    n, d = m["n"], m["d"]
    floor = m["plain"]["distances_float32"]
    rows = [
        ("plaintext float32 distances (floor)", floor, "-", ""),
        (
            "distances, cold (dealer on the path)",
            m["distances_cold"]["seconds"],
            m["distances_cold"]["bytes_sent_a"],
            "target <= 2.0 s at n=20, d=1e6",
        ),
        (
            "prepare (dealer Gram pair, off-path)",
            m["prepare"]["seconds"],
            m["prepare"]["bytes_sent_a"],
            "runs during collection",
        ),
        (
            "distances, online after prepare",
            m["distances_online"]["seconds"],
            m["distances_online"]["bytes_sent_a"],
            "target <= 1.0 s",
        ),
        (
            "validation (40 projections, 2PC)",
            m["validation"]["seconds"],
            m["validation"]["bytes_sent_a"],
            "target <= 50% of distances",
        ),
        ("plaintext projections, ring kernel (floor)", m["plain"]["validation_int64"], "-", ""),
        ("reveal (sum of selected)", m["reveal"]["seconds"], m["reveal"]["bytes_sent_a"], ""),
    ]
    lines = [
        f"n={n}, d={d:,}; median of repeats, slower party; bytes = sent by A",
        f"{'phase':40} | {'seconds':>9} | {'x floor':>8} | {'bytes A->B':>12} | note",
    ]
    for name, sec, byt, note in rows:
        ratio = f"{sec / floor:,.0f}x" if floor > 0 else "-"
        b = f"{byt:,}" if isinstance(byt, int) else byt
        lines.append(f"{name:40} | {sec:9.3f} | {ratio:>8} | {b:>12} | {note}")
    v, dc, do = (
        m["validation"]["seconds"],
        m["distances_cold"]["seconds"],
        m["distances_online"]["seconds"],
    )
    lines.append(f"validation / distances (cold): {v / dc:.0%}; / distances (online): {v / do:.0%}")
    lines.append(
        f"A->B bytes in distances: {m['distances_online']['bytes_sent_a']:,} "
        f"= {m['distances_online']['bytes_sent_a'] / (8 * n * d):.4f} x 8nd"
    )
    bu = out["bulyan"]
    lines.append(
        f"bulyan coordinate stage n={bu['n']}, f={bu['f']}, d={bu['d']:,}: "
        f"{bu['seconds']:.2f} s, {bu['rounds']} rounds, {bu['bytes_sent_a']:,} B sent "
        "by A (target <= 10 s)"
    )
    if "grid" in out:
        lines.append("grid (seconds): n, d, distances cold, online, validation")
        for g in out["grid"]:
            lines.append(
                f"  {g['n']:3d} {g['d']:>9,} {g['distances_cold']['seconds']:8.3f} "
                f"{g['distances_online']['seconds']:8.3f} {g['validation']['seconds']:8.3f}"
            )
        for key in ("distances_cold", "distances_online", "validation"):
            big_d = [g for g in out["grid"] if g["d"] == 1_000_000]
            n20 = [g for g in out["grid"] if g["n"] == 20]
            en = _fit([g["n"] for g in big_d], [g[key]["seconds"] for g in big_d])
            ed = _fit([g["d"] for g in n20], [g[key]["seconds"] for g in n20])
            lines.append(f"  fitted exponent of {key}: n^{en:.2f} (d=1e6), d^{ed:.2f} (n=20)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
