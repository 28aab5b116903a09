"""Benchmark of the secure distance phase (and Bulyan's coordinate stage).

Run from the repository root::

    .venv/bin/python -m bench.bench_distances [--n 20] [--d 1000000] [--repeats 3]
        [--bulyan-n 11] [--bulyan-f 2] [--bulyan-d 100000] [--json out.json] [--quick]

Everything is measured in one run on one :class:`secagg.cluster.MpcCluster` (server A,
server B and the CSPRNG dealer as separate processes over loopback gloo):

1. secagg's ``MpcSession.sq_distances`` (Gram-pair dealer material + one masked
   opening), split into dealer material (``prepare_distances`` timed on its own) and
   the online part (timed after a barrier, with the session's own per-step timers);
2. CrypTen's default path: ``MPCTensor.from_shares`` → ``X.matmul(X.t())`` (Beaver
   matmul with our TTP provider) → ``diag + diagᵀ - 2G`` on the MPCTensor → reveal to A;
3. the plaintext floor (float32 and exact int64 ``X @ Xᵀ`` + distances, parent process);
4. peak/increase of each party's resident memory per step (``/proc/self/status``);
5. secagg's Bulyan coordinate stage (``bulyan_window_sum``) on θ = n - 2f rows;
6. correctness: secagg's distances equal the exact int64 distances of the
   reconstructed X = share_A + share_B bit for bit; CrypTen's (fixed point, truncated
   after the product) agree within a small tolerance; Bulyan's window sum equals
   :func:`secagg.rules.bulyan_window_sum` exactly.

Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

FRAC_BITS = 16
# CrypTen's two-party truncation after the fixed-point product is local (each party
# divides its share by 2^16): ±1 per truncated entry at scale 2^16, and a distance
# combines three Gram entries. Anything beyond this tolerance is a truncation failure
# (wrong by ~2^48), which happens with probability ~|value·2^32| / 2^63 per entry.
CRYPTEN_TOL_UNITS = 8

# Targets from the issue (checked only at the target sizes).
TARGET_N, TARGET_D = 20, 1_000_000
TARGET_TOTAL_S, TARGET_ONLINE_S = 2.0, 1.0
TARGET_BULYAN = (11, 2, 100_000)
TARGET_BULYAN_S = 10.0

WARMUP_COLS = 8
QUICK = {"n": 8, "d": 10_000, "bulyan_d": 1_000}

# Party-process state (module globals live in each spawned party process).
_STATE: dict[str, Any] = {}


def _progress(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------- inputs
def make_x(seed: int, n: int, d: int, sigma: float) -> np.ndarray:
    """The plaintext matrix: N(0, sigma²) coordinates in CrypTen fixed point (int64)."""
    rng = np.random.default_rng([seed, 0])
    out = np.empty((n, d), dtype=np.int64)
    for i in range(n):  # row by row keeps the float64 temporary at one row
        out[i] = np.rint(rng.standard_normal(d) * (sigma * 2.0**FRAC_BITS)).astype(np.int64)
    return out


def make_share(rank: int, seed: int, n: int, d: int, sigma: float) -> np.ndarray:
    """Party ``rank``'s share: A's is uniform in Z_2^64, B's is ``X - share_A`` (wrapping)."""
    rng = np.random.default_rng([seed, 1])
    share_a = rng.integers(
        np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=(n, d), dtype=np.int64, endpoint=True
    )
    if rank == 0:
        return share_a
    x = make_x(seed, n, d, sigma)
    np.subtract(x, share_a, out=x)  # int64 arrays wrap: this is subtraction in the ring
    return x


def exact_sq_distances(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Exact squared distances of int64 rows via the int64 Gram matrix, and its time."""
    xt = torch.from_numpy(x)
    t0 = time.perf_counter()
    g = xt @ xt.t()
    diag = torch.diagonal(g)
    dist = diag.unsqueeze(0) + diag.unsqueeze(1) - 2 * g
    return dist.numpy(), time.perf_counter() - t0


def float_sq_distances_time(xf: Any) -> float:
    t0 = time.perf_counter()
    g = xf @ xf.t()
    diag = torch.diagonal(g)
    dist = diag.unsqueeze(0) + diag.unsqueeze(1) - 2 * g
    dist.clamp_(min=0)
    return time.perf_counter() - t0


# --------------------------------------------------------------------- memory
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _reset_hwm() -> bool:
    """Reset VmHWM (Linux >= 4.0: write 5 to clear_refs); False if not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class _Mem:
    """RSS before a step and peak RSS during it (MiB)."""

    def __init__(self) -> None:
        self.reset_ok = _reset_hwm()
        self.before = _status_kib("VmRSS") / 1024

    def done(self) -> dict[str, float | bool]:
        hwm = _status_kib("VmHWM") / 1024
        after = _status_kib("VmRSS") / 1024
        return {
            "rss_before_mib": round(self.before, 1),
            "rss_after_mib": round(after, 1),
            "peak_mib": round(hwm, 1),
            "peak_increase_mib": round(hwm - self.before, 1),
            "peak_is_step_local": self.reset_ok,
        }


def _merge_mem(acc: dict[str, Any], name: str, m: dict[str, Any]) -> None:
    old = acc.get(name)
    if old is None or m["peak_increase_mib"] > old["peak_increase_mib"]:
        acc[name] = m


# --------------------------------------------------------------- party functions
# Each runs in both party processes via MpcCluster.run(fn, args_a, args_b).
def _barrier(session: Any) -> None:
    from secagg import mpc

    mpc.dist.barrier(group=mpc.comm.get().main_group)


def _warm(share: np.ndarray) -> np.ndarray:
    """A few columns of the share: untimed warm-up calls (first-call costs in torch,
    CrypTen and gloo, ~1 s for CrypTen's first triple) run on this before timing."""
    return np.ascontiguousarray(share[:, :WARMUP_COLS])


def party_setup(session: Any, seed: int, n: int, d: int, sigma: float) -> dict[str, Any]:
    _STATE.clear()
    gc.collect()
    mem = _Mem()
    t0 = time.perf_counter()
    _STATE["share"] = make_share(session.rank, seed, n, d, sigma)
    return {
        "mem": {f"setup {n}×{d}": mem.done()},
        "seconds": time.perf_counter() - t0,
        "rss_mib": _status_kib("VmRSS") / 1024,
        "torch_threads": torch.get_num_threads(),
        "pid": os.getpid(),
    }


def party_gram_pair(session: Any, repeats: int) -> dict[str, Any]:
    """Dealer material alone: ``session.prepare_distances(n, d)`` (both parties).

    That is this party's sub-key for its share of R plus, on A, the dealer's round trip
    for its share of Z = R R^T (the dealer expands R block by block and multiplies).
    """
    from secagg import mpc

    n, d = _STATE["share"].shape
    client = mpc._client()
    times, mems = [], {}
    session.prepare_distances(n, WARMUP_COLS)
    session.sq_distances(_warm(_STATE["share"]))  # consume the warm-up pair
    dealer0 = client.dealer_bytes
    for _ in range(repeats):
        _barrier(session)
        mem = _Mem()
        t0 = time.perf_counter()
        session.prepare_distances(n, d)
        times.append(time.perf_counter() - t0)
        _merge_mem(mems, "gram_pair", mem.done())
    return {
        "times": times,
        "dealer_bytes": (client.dealer_bytes - dealer0) // max(repeats, 1),
        "mem": mems,
    }


def party_sq_distances(session: Any, repeats: int) -> dict[str, Any]:
    """The real thing: ``session.sq_distances(share)``, timed and traffic-counted."""
    share = _STATE["share"]
    times, traffic, mems, out = [], [], {}, None
    session.sq_distances(_warm(share))
    for _ in range(repeats):
        _barrier(session)
        session.reset_traffic()
        mem = _Mem()
        t0 = time.perf_counter()
        out = session.sq_distances(share)
        times.append(time.perf_counter() - t0)
        _merge_mem(mems, "sq_distances", mem.done())
        traffic.append(session.traffic.as_dict())
    return {"times": times, "traffic": traffic, "distances": out, "mem": mems}


def party_profile(session: Any) -> dict[str, Any]:
    """Where the time goes: the real ``sq_distances`` after ``prepare_distances``.

    A barrier separates the dealer material from the online part; the steps are the
    session's own timers inside the real code path (``session.steps``), so the profile
    cannot drift from the implementation.
    """
    x = np.ascontiguousarray(_STATE["share"])
    n, d = x.shape
    _barrier(session)
    t_all = time.perf_counter()
    session.prepare_distances(n, d)
    t_mat = time.perf_counter() - t_all
    _barrier(session)
    session.reset_traffic()
    t_on = time.perf_counter()
    out = session.sq_distances(x)
    t_online = time.perf_counter() - t_on
    steps = {"material: prepare_distances (sub-key; dealer's Z share on A)": t_mat}
    steps.update({f"online: {k.removeprefix('distances: ')}": v for k, v in session.steps.items()})
    return {
        "steps": steps,
        "material_s": t_mat,
        "online_s": t_online,
        "distances": out,
    }


def _crypten_distances(share: torch.Tensor) -> torch.Tensor:
    """CrypTen's stock API: D = diag 1ᵀ + 1 diagᵀ - 2 X Xᵀ; raw ring values (scale 2^16)
    revealed to A (B gets an undefined buffer)."""
    from secagg import mpc

    idx = torch.arange(share.shape[0])
    xs = mpc.MPCTensor.from_shares(share, precision=FRAC_BITS)
    g = xs.matmul(xs.t())  # Beaver matmul (opens X - A and Xᵀ - B), then truncation
    diag = g[idx, idx]
    dist = diag.unsqueeze(0) + diag.unsqueeze(1) - g - g
    return dist._tensor.reveal(dst=mpc.RANK_A)


def party_crypten_default(session: Any, repeats: int) -> dict[str, Any]:
    """CrypTen's stock path on the same shares: Beaver matmul + distances + reveal to A."""
    from secagg import mpc

    share = torch.from_numpy(np.ascontiguousarray(_STATE["share"]))
    _crypten_distances(torch.from_numpy(_warm(_STATE["share"])))
    c = mpc.comm.get()
    cl = mpc._client()
    provider = mpc.crypten.mpc.get_default_provider()
    triple_s = [0.0]
    orig = provider.generate_additive_triple

    def timed_triple(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return orig(*args, **kwargs)
        finally:
            triple_s[0] += time.perf_counter() - t0

    runs, mems, raw = [], {}, None
    provider.generate_additive_triple = timed_triple  # instance attribute, removed below
    try:
        for _ in range(repeats):
            _barrier(session)
            triple_s[0] = 0.0
            b0, r0, d0 = c.comm_bytes, c.comm_rounds, cl.dealer_bytes
            mem = _Mem()
            t0 = time.perf_counter()
            raw = _crypten_distances(share)
            elapsed = time.perf_counter() - t0
            _merge_mem(mems, "crypten_default", mem.done())
            runs.append(
                {
                    "seconds": elapsed,
                    "triple_s": triple_s[0],
                    "counted_bytes": int(c.comm_bytes - b0),  # CrypTen: sent + received
                    "rounds": int(c.comm_rounds - r0),
                    "dealer_bytes": int(cl.dealer_bytes - d0),
                }
            )
    finally:
        del provider.generate_additive_triple
    return {
        "runs": runs,
        "distances_scale16": raw.numpy() if session.rank == mpc.RANK_A else None,
        "mem": mems,
    }


def party_bulyan(session: Any, selected: list[int], f: int, repeats: int) -> dict[str, Any]:
    share = _STATE["share"]
    times, traffic, mems, out = [], [], {}, None
    session.bulyan_window_sum(_warm(share), selected, f)
    for _ in range(repeats):
        _barrier(session)
        session.reset_traffic()
        mem = _Mem()
        t0 = time.perf_counter()
        out = session.bulyan_window_sum(share, selected, f)
        times.append(time.perf_counter() - t0)
        _merge_mem(mems, "bulyan_window_sum", mem.done())
        traffic.append(session.traffic.as_dict())
    return {"times": times, "traffic": traffic, "window_sum": out, "mem": mems}


def party_final_memory(session: Any) -> dict[str, Any]:
    return {
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "vm_rss_mib": _status_kib("VmRSS") / 1024,
    }


# ------------------------------------------------------------------ driver
def _med(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def _pairmax(a: list[float], b: list[float]) -> list[float]:
    return [max(x, y) for x, y in zip(a, b, strict=True)]


def _mb(nbytes: float) -> str:
    if nbytes >= 1e5:
        return f"{nbytes / 1e6:,.1f} MB"
    if nbytes >= 1e3:
        return f"{nbytes / 1e3:,.1f} kB"
    return f"{nbytes:.0f} B"


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from secagg import rules
    from secagg.cluster import MpcCluster

    # pickle the party functions under the module's import name, not __main__
    me = importlib.import_module("bench.bench_distances")
    n, d, reps = args.n, args.d, args.repeats
    bn, bf, bd = args.bulyan_n, args.bulyan_f, args.bulyan_d
    theta = bn - 2 * bf
    res: dict[str, Any] = {
        "config": {
            "n": n,
            "d": d,
            "repeats": reps,
            "sigma": args.sigma,
            "seed": args.seed,
            "quick": args.quick,
            "bulyan": {"n": bn, "f": bf, "d": bd, "theta": theta, "beta": theta - 2 * bf},
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads_parent": torch.get_num_threads(),
            "python": platform.python_version(),
        },
        "notes": [
            "party processes: server A, server B, dealer on one machine over loopback gloo",
            "order inside each party: secagg gram_pair, secagg sq_distances, profile, "
            "CrypTen default, Bulyan; peaks are per step (VmHWM reset before each step "
            "via /proc/self/clear_refs when permitted); the process peak is the largest step "
            "peak (max_step_peak_mib): ru_maxrss is reported too but the VmHWM resets "
            "also reset the kernel's hiwater mark that it reads, so it is not a lifetime "
            "peak here",
            "median s of a 2PC step = median over repeats of max(A's wall, B's wall)",
            "CrypTen counts sent+received bytes; 'sent' is half of its counter",
            f"each method first runs once untimed on {WARMUP_COLS} columns (warm-up)",
        ],
    }

    # ---- plaintext floor and exact reference (parent process)
    _progress(f"plaintext: building X ({n}×{d}) and reconstructing it from both shares")
    x = make_x(args.seed, n, d, args.sigma)
    x_rec = make_share(0, args.seed, n, d, args.sigma)
    x_rec += make_share(1, args.seed, n, d, args.sigma)  # wrapping: share_A + share_B
    if not np.array_equal(x_rec, x):
        raise SystemExit("share generation is broken: share_A + share_B != X")
    del x_rec
    ref_d, _ = exact_sq_distances(x)
    if (ref_d < 0).any():
        raise SystemExit("reference distances wrapped past 2^63: lower --sigma")
    xf = torch.from_numpy(x).to(torch.float32).div_(2.0**FRAC_BITS)
    float_sq_distances_time(xf[:, :WARMUP_COLS].contiguous())  # warm-up, untimed
    t_f32 = [float_sq_distances_time(xf) for _ in range(reps)]
    t_i64 = [exact_sq_distances(x)[1] for _ in range(reps)]
    del xf
    res["plaintext"] = {
        "float32": {"median_s": _med(t_f32), "times": t_f32},
        "int64_exact": {"median_s": _med(t_i64), "times": t_i64},
    }
    _progress(f"plaintext: float32 {_med(t_f32):.4f} s, int64 {_med(t_i64):.4f} s")

    # Bulyan's inputs and reference (small)
    bx = make_x(args.seed + 1, bn, bd, args.sigma)
    sel_rng = np.random.default_rng([args.seed, 2])
    selected = sorted(int(i) for i in sel_rng.choice(bn, size=theta, replace=False))
    bulyan_ref = rules.bulyan_window_sum(bx[selected], bf)
    t_bp = []
    for _ in range(reps):
        t1 = time.perf_counter()
        rules.bulyan_window_sum(bx[selected], bf)
        t_bp.append(time.perf_counter() - t1)
    res["plaintext"]["bulyan_window_sum"] = {"median_s": _med(t_bp), "times": t_bp}

    _progress("starting cluster (server A, server B, dealer)")
    t0 = time.perf_counter()
    with MpcCluster(timeout_s=args.timeout) as cl:
        res["config"]["cluster_start_s"] = time.perf_counter() - t0
        mem: dict[str, dict[str, Any]] = {"A": {}, "B": {}}

        def both(fn: Callable[..., Any], *a: Any) -> tuple[Any, Any]:
            return cl.run(fn, a, a)

        def collect_mem(ra: dict[str, Any], rb: dict[str, Any]) -> None:
            for who, r in (("A", ra), ("B", rb)):
                for k, v in r.get("mem", {}).items():
                    mem[who][k] = v

        _progress(f"parties: generating shares {n}×{d}")
        sa, sb = both(me.party_setup, args.seed, n, d, args.sigma)
        collect_mem(sa, sb)
        res["config"]["torch_threads_party"] = sa["torch_threads"]

        # ---- 1. secagg distances
        _progress(f"secagg: gram_pair alone ×{reps}")
        ga, gb = both(me.party_gram_pair, reps)
        collect_mem(ga, gb)
        _progress(f"secagg: sq_distances ×{reps}")
        da, db = both(me.party_sq_distances, reps)
        collect_mem(da, db)
        _progress("secagg: step profile ×1")
        pa, pb = both(me.party_profile)
        tr_a, tr_b = da["traffic"][-1], db["traffic"][-1]
        wall = _pairmax(da["times"], db["times"])
        gp = _pairmax(ga["times"], gb["times"])
        secagg_ok = bool(np.array_equal(da["distances"], ref_d))
        profile_ok = bool(np.array_equal(pa["distances"], ref_d))
        res["secagg"] = {
            "median_s": _med(wall),
            "median_s_a": _med(da["times"]),
            "median_s_b": _med(db["times"]),
            "times_a": da["times"],
            "times_b": db["times"],
            "bytes_sent": {
                "A": tr_a["bytes_sent"]["distances"],
                "B": tr_b["bytes_sent"]["distances"],
            },
            "dealer_bytes": tr_a["dealer_bytes"]["distances"],
            "rounds": {"A": tr_a["rounds"]["distances"], "B": tr_b["rounds"]["distances"]},
            "gram_pair": {
                "median_s": _med(gp),
                "median_s_a": _med(ga["times"]),
                "median_s_b": _med(gb["times"]),
                "dealer_bytes": ga["dealer_bytes"],
            },
            # online estimate 1: full phase minus dealer material measured alone
            "online_s_by_difference": max(_med(wall) - _med(gp), 0.0),
            # online estimate 2: the profiled run's online part, after a barrier
            "online_s": max(pa["online_s"], pb["online_s"]),
            "profile": {
                "A": {
                    "steps": pa["steps"],
                    "material_s": pa["material_s"],
                    "online_s": pa["online_s"],
                },
                "B": {
                    "steps": pb["steps"],
                    "material_s": pb["material_s"],
                    "online_s": pb["online_s"],
                },
            },
        }
        _progress(f"secagg: {_med(wall):.3f} s (gram_pair {_med(gp):.3f} s), exact={secagg_ok}")

        # ---- 2. CrypTen default path
        _progress(f"crypten default: Beaver matmul + distances ×{reps}")
        ca, cb = both(me.party_crypten_default, reps)
        collect_mem(ca, cb)
        c_wall = _pairmax([r["seconds"] for r in ca["runs"]], [r["seconds"] for r in cb["runs"]])
        c_trip = _pairmax([r["triple_s"] for r in ca["runs"]], [r["triple_s"] for r in cb["runs"]])
        got = ca["distances_scale16"]
        want = ref_d >> FRAC_BITS  # exact distances at scale 2^16 (floor)
        err = np.abs(got.astype(np.int64) - want)  # |.| small unless truncation failed
        crypten_ok = bool((err <= CRYPTEN_TOL_UNITS).all())
        res["crypten_default"] = {
            "median_s": _med(c_wall),
            "median_s_a": _med([r["seconds"] for r in ca["runs"]]),
            "median_s_b": _med([r["seconds"] for r in cb["runs"]]),
            "triple_median_s": _med(c_trip),
            "runs_a": ca["runs"],
            "runs_b": cb["runs"],
            "counted_bytes": {
                "A": ca["runs"][-1]["counted_bytes"],
                "B": cb["runs"][-1]["counted_bytes"],
            },
            "bytes_sent": {
                "A": ca["runs"][-1]["counted_bytes"] // 2,
                "B": cb["runs"][-1]["counted_bytes"] // 2,
            },
            "dealer_bytes": ca["runs"][-1]["dealer_bytes"],
            "rounds": {"A": ca["runs"][-1]["rounds"], "B": cb["runs"][-1]["rounds"]},
        }
        _progress(f"crypten default: {_med(c_wall):.3f} s, within tolerance={crypten_ok}")

        # ---- 5. Bulyan coordinate stage
        _progress(f"bulyan: shares {bn}×{bd}, θ={theta}, f={bf}")
        collect_mem(*both(me.party_setup, args.seed + 1, bn, bd, args.sigma))
        _progress(f"bulyan: bulyan_window_sum ×{reps}")
        ba, bb = both(me.party_bulyan, selected, bf, reps)
        collect_mem(ba, bb)
        b_wall = _pairmax(ba["times"], bb["times"])
        bulyan_ok = bool(np.array_equal(ba["window_sum"], bulyan_ref)) and bool(
            np.array_equal(bb["window_sum"], bulyan_ref)
        )
        btr_a, btr_b = ba["traffic"][-1], bb["traffic"][-1]
        key = "bulyan_coordinate"
        res["bulyan"] = {
            "median_s": _med(b_wall),
            "times_a": ba["times"],
            "times_b": bb["times"],
            "selected": selected,
            "bytes_sent": {"A": btr_a["bytes_sent"][key], "B": btr_b["bytes_sent"][key]},
            "dealer_bytes": btr_a["dealer_bytes"][key],
            "rounds": {"A": btr_a["rounds"][key], "B": btr_b["rounds"][key]},
        }
        _progress(f"bulyan: {_med(b_wall):.3f} s, exact={bulyan_ok}")

        fa, fb = both(me.party_final_memory)
        for who, f in (("A", fa), ("B", fb)):
            steps = [v["peak_mib"] for k, v in mem[who].items()]
            f["max_step_peak_mib"] = max(steps) if steps else float("nan")
            mem[who]["lifetime"] = f
        res["memory"] = mem

    res["correctness"] = {
        "secagg_exact": secagg_ok,
        "profile_exact": profile_ok,
        "crypten_max_err_units_2^-16": int(err.max()),
        "crypten_entries_over_tol": int((err > CRYPTEN_TOL_UNITS).sum()),
        "crypten_tol_units_2^-16": CRYPTEN_TOL_UNITS,
        "crypten_within_tol": crypten_ok,
        "bulyan_exact": bulyan_ok,
        "passed": secagg_ok and profile_ok and crypten_ok and bulyan_ok,
    }
    res["targets"] = _targets(res)
    return res


def _targets(res: dict[str, Any]) -> dict[str, Any]:
    cfg = res["config"]
    n, d = cfg["n"], cfg["d"]
    b = cfg["bulyan"]
    at_size = (n, d) == (TARGET_N, TARGET_D)
    b_at_size = (b["n"], b["f"], b["d"]) == TARGET_BULYAN
    s = res["secagg"]
    byte_limit = 8 * n * d + 8 * n * n + 1024  # 8nd each way, + O(n²) (B's n×n share of D)
    max_sent = max(s["bytes_sent"].values())
    return {
        "distance_total": {
            "limit_s": TARGET_TOTAL_S,
            "value_s": s["median_s"],
            "applies": at_size,
            "met": s["median_s"] <= TARGET_TOTAL_S,
        },
        "distance_online": {
            "limit_s": TARGET_ONLINE_S,
            "value_s": s["online_s"],
            "applies": at_size,
            "met": s["online_s"] <= TARGET_ONLINE_S,
        },
        "distance_bytes": {
            "limit_bytes": byte_limit,
            "value_bytes": max_sent,
            "applies": True,
            "met": max_sent <= byte_limit,
        },
        "bulyan": {
            "limit_s": TARGET_BULYAN_S,
            "value_s": res["bulyan"]["median_s"],
            "applies": b_at_size,
            "met": res["bulyan"]["median_s"] <= TARGET_BULYAN_S,
        },
    }


def _verdict(t: dict[str, Any]) -> str:
    if not t["applies"]:
        return "n/a at this size"
    return "MET" if t["met"] else "MISSED"


def format_table(res: dict[str, Any]) -> str:
    cfg = res["config"]
    n, d = cfg["n"], cfg["d"]
    b = cfg["bulyan"]
    floor = res["plaintext"]["float32"]["median_s"]
    tg = res["targets"]
    s, c = res["secagg"], res["crypten_default"]
    bfloor = res["plaintext"]["bulyan_window_sum"]["median_s"]

    def ratio(x: float, base: float = floor) -> str:
        if not base > 0:
            return "-"
        r = x / base
        return f"{r:,.0f}×" if r >= 10 else f"{r:.2g}×"

    def sent(bs: dict[str, int]) -> str:
        return f"A {_mb(bs['A'])} / B {_mb(bs['B'])}"

    rows = [
        (
            "plaintext float32 X Xᵀ + dist",
            res["plaintext"]["float32"]["median_s"],
            "1×",
            "-",
            "floor",
        ),
        (
            "plaintext int64 (exact) X Xᵀ + dist",
            res["plaintext"]["int64_exact"]["median_s"],
            ratio(res["plaintext"]["int64_exact"]["median_s"]),
            "-",
            "-",
        ),
        (
            "secagg sq_distances (total)",
            s["median_s"],
            ratio(s["median_s"]),
            sent(s["bytes_sent"]),
            f"≤ {TARGET_TOTAL_S} s: {_verdict(tg['distance_total'])}; "
            f"≤ 8nd+O(n²) = {_mb(tg['distance_bytes']['limit_bytes'])}: "
            f"{_verdict(tg['distance_bytes'])}",
        ),
        (
            "  dealer material (gram_pair alone)",
            s["gram_pair"]["median_s"],
            ratio(s["gram_pair"]["median_s"]),
            f"dealer→A {_mb(s['gram_pair']['dealer_bytes'])}",
            "-",
        ),
        (
            "  online (profile, after barrier)",
            s["online_s"],
            ratio(s["online_s"]),
            sent(s["bytes_sent"]),
            f"≤ {TARGET_ONLINE_S} s: {_verdict(tg['distance_online'])}",
        ),
        (
            "  online (total - gram_pair)",
            s["online_s_by_difference"],
            ratio(s["online_s_by_difference"]),
            "",
            "",
        ),
        (
            "CrypTen default (Beaver matmul)",
            c["median_s"],
            ratio(c["median_s"]),
            sent(c["bytes_sent"]),
            "naive baseline",
        ),
        (
            "  of which triple generation",
            c["triple_median_s"],
            ratio(c["triple_median_s"]),
            f"dealer→A {_mb(c['dealer_bytes'])}",
            "-",
        ),
        (f"plaintext Bulyan window sum (d={b['d']:,})", bfloor, "1×", "-", "floor (Bulyan)"),
        (
            f"secagg Bulyan coord (n={b['n']},f={b['f']},d={b['d']:,})",
            res["bulyan"]["median_s"],
            ratio(res["bulyan"]["median_s"], bfloor),
            sent(res["bulyan"]["bytes_sent"]),
            f"≤ {TARGET_BULYAN_S} s: {_verdict(tg['bulyan'])}",
        ),
    ]
    head = ("method", "median s", "vs plaintext", "bytes sent per party", "target")
    w0 = max(len(r[0]) for r in rows + [head])
    w3 = max(len(r[3]) for r in rows + [head])
    lines = [
        f"Distance phase n={n}, d={d:,} (repeats={cfg['repeats']}, "
        f"{cfg['cpu_count']} CPUs, torch {cfg['torch']}); Bulyan n={b['n']}, f={b['f']}, "
        f"d={b['d']:,}, θ={b['theta']}",
        f"{head[0]:<{w0}} | {head[1]:>9} | {head[2]:>12} | {head[3]:<{w3}} | {head[4]}",
        "-" * (w0 + w3 + 60),
    ]
    for name, sec, rat, byt, tgt in rows:
        lines.append(f"{name:<{w0}} | {sec:>9.4f} | {rat:>12} | {byt:<{w3}} | {tgt}")
    lines.append("")
    lines.append(
        f"rounds: secagg distances A {s['rounds']['A']} / B {s['rounds']['B']}, "
        f"dealer→A {_mb(s['dealer_bytes'])}; CrypTen default A {c['rounds']['A']} / "
        f"B {c['rounds']['B']} (CrypTen counter: sent+received A "
        f"{_mb(c['counted_bytes']['A'])}); Bulyan A {res['bulyan']['rounds']['A']} / "
        f"B {res['bulyan']['rounds']['B']}, dealer→A {_mb(res['bulyan']['dealer_bytes'])}"
    )
    lines.append("secagg distance profile (s):")
    steps = list(s["profile"]["A"]["steps"])
    for k in s["profile"]["B"]["steps"]:
        if k not in steps:
            steps.append(k)
    steps.sort(key=lambda k: not k.startswith("material"))  # stable: material first
    for k in steps:
        va = s["profile"]["A"]["steps"].get(k)
        vb = s["profile"]["B"]["steps"].get(k)
        fa = f"{va:.4f}" if va is not None else "-"
        fb = f"{vb:.4f}" if vb is not None else "-"
        lines.append(f"  {k:<46} A {fa:>8}  B {fb:>8}")
    lines.append("peak RSS per step, MiB (increase over RSS at step start; run in this order):")
    for who in ("A", "B"):
        m = res["memory"][who]
        parts = [
            f"{k} +{v['peak_increase_mib']:.0f} (peak {v['peak_mib']:.0f})"
            for k, v in m.items()
            if k != "lifetime"
        ]
        life = m["lifetime"]
        lines.append(f"  {who}: " + "; ".join(parts))
        lines.append(
            f"     process peak {life['max_step_peak_mib']:.0f} (largest step peak); "
            f"ru_maxrss {life['ru_maxrss_mib']:.0f} (reset along with VmHWM, not lifetime)"
        )
    cr = res["correctness"]
    lines.append(
        f"correctness: secagg exact={cr['secagg_exact']} (profile {cr['profile_exact']}), "
        f"CrypTen max err {cr['crypten_max_err_units_2^-16']} units of 2^-16 "
        f"(tol {cr['crypten_tol_units_2^-16']}, over tol: {cr['crypten_entries_over_tol']}), "
        f"Bulyan exact={cr['bulyan_exact']} -> {'PASSED' if cr['passed'] else 'FAILED'}"
    )
    return "\n".join(lines)


def jsonable(o: Any, *, arrays: bool = True) -> Any:
    """A results tree as plain JSON: numpy scalars as numbers, arrays as lists (or
    dropped with ``arrays=False``), non-finite floats as null."""
    if isinstance(o, dict):
        return {str(k): jsonable(v, arrays=arrays) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v, arrays=arrays) for v in o]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, np.ndarray):
        return o.tolist() if arrays else None
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.bench_distances",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--n", type=int, default=TARGET_N, help="workers (rows)")
    ap.add_argument("--d", type=int, default=TARGET_D, help="dimension")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bulyan-n", type=int, default=TARGET_BULYAN[0])
    ap.add_argument("--bulyan-f", type=int, default=TARGET_BULYAN[1])
    ap.add_argument("--bulyan-d", type=int, default=TARGET_BULYAN[2])
    ap.add_argument(
        "--sigma",
        type=float,
        default=0.01,
        help="std of the plaintext coordinates (gradient-like; default 0.01)",
    )
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--timeout", type=float, default=300.0, help="per-step cluster timeout")
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"small sizes for tests: n={QUICK['n']}, d={QUICK['d']}, bulyan d={QUICK['bulyan_d']}",
    )
    ap.add_argument("--json", help="write all figures to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.d, args.bulyan_d = QUICK["n"], QUICK["d"], QUICK["bulyan_d"]
    if args.repeats < 1 or args.n < 2 or args.d < 1:
        ap.error("need --repeats >= 1, --n >= 2, --d >= 1")
    if args.bulyan_n - 2 * args.bulyan_f < 2 * args.bulyan_f + 3:
        ap.error("Bulyan needs n >= 4f+3")

    t0 = time.perf_counter()
    res = run_bench(args)
    res["config"]["total_s"] = time.perf_counter() - t0
    print(format_table(res))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(jsonable(res), fh, indent=2)
        _progress(f"wrote {args.json}")
    _progress(f"done in {res['config']['total_s']:.1f} s")
    return 0 if res["correctness"]["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
