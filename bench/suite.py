"""The end-to-end benchmark suite of issue #9: one command, a table and a JSON file.

Run from the repository root::

    .venv/bin/python -m bench.suite [--n 10,20,50] [--d 10000,100000,1000000]
        [--rules krum,multi-krum,bulyan] [--repeats 3] [--max-cell-seconds 150]
        [--max-total-seconds 1800] [--json bench/results/suite.json] [--quick]

One :class:`secagg.cluster.MpcCluster` (server A, server B and the CSPRNG dealer as
separate processes over loopback gloo) serves every cell. For each (n, d) the parties
hold seed-based shares of the same encoded vectors (n - f honest N(0, σ²) gradients
and f shifted ones, f = max(1, (n - 3) // 4), so Bulyan's n >= 4f + 3 holds), and for
each rule the suite measures, median over ``--repeats`` of the slower party's wall time:

* a whole secure round after all shares are present (:func:`secagg.protocol.run_round`:
  input validation, distances, selection, reveal or Bulyan's coordinate stage),
  *cold* (the dealer's Gram pair on the critical path) and *online* (after
  ``prepare_distances(n, d)``, which the service runs while shares arrive), with each
  phase's time, A<->B bytes and dealer bytes (``session.traffic``);
* the plaintext robust aggregation of the same encoded vectors in this process:
  the float32 floor (``X Xᵀ`` distances, :func:`secagg.rules.select`, sum or Bulyan
  window) and the exact int64 path of :mod:`secagg.reference` (the oracle);
* peak RSS of A, B and the dealer during the cell (VmHWM reset before it).

Per (n, d) it also runs CrypTen's default secure distances (``X.matmul(X.t())``
with the TTP provider, :func:`bench.bench_distances.party_crypten_default`) as the
naive secure baseline, and per d the exact protobuf size of one worker's upload
(``SeedSubmission`` to A, the ``ShareChunk`` stream to B). Fitted exponents of time in
n (at the largest d) and in d (at n = 20, or the nearest n) follow the table.

Cost caps: before a secure cell or a CrypTen baseline runs, the cost of one repeat is
estimated from the cells of the same kind already measured (sizes ascend; the first
large cell of a kind is preceded by a one-repeat pilot on its first 2,000 columns),
scaled by the exponents fitted on them (at least 1 in n and in d; 2 in n and 1 in d
until there are two points). Repeats are reduced to fit ``--max-cell-seconds`` and
what is left of ``--max-total-seconds``; a cell where not even one fits is not run and
appears in the table and JSON as ``skipped: estimated X s > cap Y s``.

Every secure result is checked against the plaintext reference on the same inputs
(distances bit for bit, the selection, the opened sum, every repeat); CrypTen's
baseline within its truncation tolerance. The exit status is 1 if any check fails or
a cell fails. Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import importlib
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import bench_distances as bd
from secagg import encoding, reference, rules, sharing
from secagg.transport import share_chunk_messages
from secagg.v1 import secagg_pb2
from secagg.validation import ValidationParams, check_validated_headroom

SCHEMA = "secagg-bench-suite/1"
DEFAULT_JSON = "bench/results/suite.json"
DEFAULT_N = (10, 20, 50)
DEFAULT_D = (10_000, 100_000, 1_000_000)
DEFAULT_RULES = ("krum", "multi-krum", "bulyan")
QUICK_N = (7, 11)
QUICK_D = (1_000, 4_000)
FIT_N = 20  # the n for the exponent in d
SIGMA = 0.01  # std of the honest gradients' coordinates
BYZ_SHIFT = 2.0  # the f Byzantine rows are shifted by BYZ_SHIFT·σ on every coordinate
PILOT_D = 2_000  # columns of the cost pilot that precedes the first large cell of a kind
WARM_COLS = 16  # columns of the untimed warm-up rounds (first-call costs)
GRPC_FRAME = 5  # gRPC's length prefix per message (compressed flag + 4-byte length)
UPLOAD_IDS = {"round_id": "round-000001", "worker_id": "worker-0001"}
# estimated-cost model: exponents are at least this (every phase is at least linear
# in n and in d), and these until two points of a kind are measured along an axis
MIN_EXPONENT = 1.0
DEFAULT_EXPONENT = {"n": 2.0, "d": 1.0}

# Party-process state (module globals live in each spawned party process).
_STATE: dict[str, Any] = {}
_IDLE: dict[str, int | None] = {}  # RSS after the warm-up: the process without any cell


def _progress(msg: str) -> None:
    print(f"[suite {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------ inputs
def default_f(n: int) -> int:
    """The f used for n workers: the largest Bulyan allows (n >= 4f + 3), at least 1."""
    return max(1, (n - 3) // 4)


def encoding_params(d: int) -> encoding.EncodingParams:
    """Public encoding parameters that every generated vector meets (norm ≈ 2.3σ√d)."""
    return encoding.EncodingParams(
        scale=1.0, coord_bound=1.0, norm_bound=4.0 * SIGMA * math.sqrt(d) + 1.0
    )


def worker_vector(seed: int, i: int, n: int, d: int, f: int) -> np.ndarray:
    """Worker ``i``'s float gradient: N(0, σ²), shifted by ``BYZ_SHIFT``·σ for the
    last ``f`` workers (the "Byzantine" ones the rules should drop)."""
    rng = np.random.default_rng([seed, n, d, i])
    g = rng.standard_normal(d) * SIGMA
    if i >= n - f:
        g += BYZ_SHIFT * SIGMA
    return g


def encoded_row(seed: int, i: int, n: int, d: int, f: int) -> np.ndarray:
    """Worker ``i``'s encoded int64 vector (what the SDK shares)."""
    return encoding.encode(worker_vector(seed, i, n, d, f), encoding_params(d))


def worker_seed(seed: int, i: int, n: int, d: int) -> bytes:
    """Worker ``i``'s 32-byte sharing seed (deterministic here so both parties can
    generate their shares themselves; a real worker draws a fresh one)."""
    return hashlib.sha256(f"secagg-bench-suite/{seed}/{n}/{d}/{i}".encode()).digest()


def encoded_matrix(seed: int, n: int, d: int, f: int) -> np.ndarray:
    """The n×d encoded int64 inputs of a cell (the plaintext reference's view)."""
    out = np.empty((n, d), dtype=np.int64)
    for i in range(n):
        out[i] = encoded_row(seed, i, n, d, f)
    return out


def party_share(rank: int, seed: int, n: int, d: int, f: int) -> np.ndarray:
    """Server A's (rank 0: expanded seeds) or server B's (rank 1: x - s_A) share matrix."""
    out = np.empty((n, d), dtype=np.int64)
    for i in range(n):
        s_a = sharing.share_a(worker_seed(seed, i, n, d), d)
        if rank == 0:
            out[i] = s_a
        else:
            # int64 array subtraction wraps: this is subtraction in Z_2^64
            np.subtract(encoded_row(seed, i, n, d, f), s_a, out=out[i])
    return out


def threshold_for(n: int, d: int) -> int:
    """The validation threshold T a real round would use for these parameters."""
    return check_validated_headroom(encoding_params(d), n, d, ValidationParams())


def digest(a: np.ndarray | None) -> str | None:
    """SHA-256 of an int64 array's bytes (None for None)."""
    if a is None:
        return None
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.int64).tobytes()).hexdigest()


# ---------------------------------------------------------------------- upload
def upload_bytes(d: int, seed: int = 0) -> dict[str, Any]:
    """Serialized size of one worker's submission for dimension ``d``.

    Built with the SDK's own message builders: the ``SeedSubmission`` server A gets
    and the ``ShareChunk`` stream (:func:`secagg.transport.share_chunk_messages`,
    <= 1 MiB of data per chunk) server B gets, with a 32-hex-digit submission id.

    Returns
    -------
    dict
        Protobuf bytes to A and to B, message counts, gRPC length prefixes, the total
        and bytes per coordinate (with and without the gRPC prefixes).
    """
    x = encoded_row(seed, 0, 1, d, 0)
    shares = sharing.split(x)
    sid = uuid.uuid4().hex
    seed_msg = secagg_pb2.SeedSubmission(seed=shares.seed, dim=d, submission_id=sid, **UPLOAD_IDS)
    to_a = seed_msg.ByteSize()
    chunks = list(
        share_chunk_messages(UPLOAD_IDS["round_id"], UPLOAD_IDS["worker_id"], sid, shares.share_b)
    )
    to_b = sum(m.ByteSize() for m in chunks)
    frames = GRPC_FRAME * (1 + len(chunks))
    total = to_a + to_b
    return {
        "d": d,
        "to_a_bytes": to_a,
        "to_b_bytes": to_b,
        "messages_to_b": len(chunks),
        "grpc_prefix_bytes": frames,
        "total_bytes": total,
        "bytes_per_coord": total / d,
        "bytes_per_coord_with_grpc_prefix": (total + frames) / d,
        "overhead_bytes": total - 8 * d,
    }


# ------------------------------------------------------------------- memory
def _proc_status_kib(pid: int | str, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm_of(pid: int | str) -> str | None:
    """Reset VmHWM of ``pid`` ("self" or a pid); the reason it failed, or None."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        return None
    except OSError as exc:
        return f"cannot reset VmHWM of {pid}: {exc}"


def _trim() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``),
    so that RSS baselines are not inflated by what earlier cells freed."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: baselines are just less tight
        pass


def _mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


# ------------------------------------------------------------ party functions
# Each runs in both party processes via MpcCluster.run(fn, args_a, args_b).
def party_pid(session: Any) -> int:
    """This party's process id (so the driver can tell the dealer's apart)."""
    return os.getpid()


def party_setup(session: Any, seed: int, n: int, d: int, f: int) -> dict[str, Any]:
    """Generate this party's share of a cell's inputs; frees the previous cell's."""
    _STATE.clear()
    bd._STATE.clear()
    _trim()
    base = _proc_status_kib("self", "VmRSS")
    t0 = time.perf_counter()
    share = party_share(session.rank, seed, n, d, f)
    _STATE["share"] = share
    _STATE["rss_base_kib"] = base
    bd._STATE["share"] = share  # what bench_distances.party_crypten_default reads
    return {"seconds": time.perf_counter() - t0, "rss_base_mib": _mib(base)}


def _hwm_begin() -> dict[str, Any]:
    _trim()
    reason = _reset_hwm_of("self")
    return {"reset_error": reason, "rss_kib": _proc_status_kib("self", "VmRSS")}


def _hwm_end(begin: dict[str, Any]) -> dict[str, Any]:
    peak = _proc_status_kib("self", "VmHWM")
    base = _STATE.get("rss_base_kib")
    idle = _IDLE.get("rss_kib")
    return {
        "peak_mib": _mib(peak),
        "rss_at_start_mib": _mib(begin["rss_kib"]),
        "rss_before_shares_mib": _mib(base),
        "peak_over_before_shares_mib": None if peak is None or base is None else _mib(peak - base),
        "rss_idle_mib": _mib(idle),
        "peak_over_idle_mib": None if peak is None or idle is None else _mib(peak - idle),
        "peak_is_cell_local": begin["reset_error"] is None,
        "note": begin["reset_error"],
    }


def party_warmup(session: Any, seed: int, rule_names: list[str]) -> float:
    """One untimed round of each rule on tiny inputs (n = 11, d = WARM_COLS), so that
    the process's first-call costs and allocations (CrypTen, torch, gloo) stay out of
    every cell's times and memory figures. Returns its seconds."""
    from secagg.protocol import RoundPlan, run_round

    n, f = 11, 2
    t0 = time.perf_counter()
    share = party_share(session.rank, seed, n, WARM_COLS, f)
    for rule in rule_names:
        run_round(session, share, RoundPlan(rule, f, None, threshold_for(n, WARM_COLS)))
    del share
    _trim()
    _IDLE["rss_kib"] = _proc_status_kib("self", "VmRSS")
    return time.perf_counter() - t0


def party_cell(
    session: Any,
    rule: str,
    f: int,
    threshold: int,
    projections: int,
    repeats: int,
    cols: int | None = None,
) -> dict[str, Any]:
    """One secure cell: ``repeats`` × (cold round, then prepare + online round).

    Rounds run through :func:`secagg.protocol.run_round` on this party's share (its
    first ``cols`` columns if given: the cost pilot); each is timed from a barrier.
    Returns wall times, per-phase traffic (``session.traffic``: seconds, bytes_sent,
    rounds, dealer_bytes), outcome digests of every run, the last outcome of each
    mode, and this party's peak RSS over the cell.
    """
    from secagg.protocol import RoundPlan, run_round

    share = _STATE["share"]
    if cols is not None:
        share = np.ascontiguousarray(share[:, :cols])
    n, d = share.shape
    plan = RoundPlan(rule, f, None, threshold, projections)
    mem = _hwm_begin()
    runs: list[dict[str, Any]] = []
    last: dict[str, Any] = {}
    for _ in range(repeats):
        for mode in ("cold", "online"):
            rec: dict[str, Any] = {"mode": mode}
            # mean computes no distances: prepared material would be left for the next
            # cell's cold round, so its online round is the cold one repeated
            if mode == "online" and rule != "mean":
                bd._barrier(session)
                session.reset_traffic()
                t0 = time.perf_counter()
                session.prepare_distances(n, d)
                rec["prepare_wall"] = time.perf_counter() - t0
                rec["prepare_traffic"] = session.traffic.as_dict()
            bd._barrier(session)
            t0 = time.perf_counter()
            out = run_round(session, share, plan)
            rec["wall"] = time.perf_counter() - t0
            rec["traffic"] = out.traffic
            rec["selected"] = list(out.selected)
            rec["accepted"] = list(out.accepted)
            rec["divisor"] = int(out.divisor)
            rec["sum_digest"] = digest(out.encoded_sum)
            rec["distances_digest"] = digest(out.distances)
            runs.append(rec)
            last[mode] = {"encoded_sum": out.encoded_sum, "distances": out.distances}
            del out
    return {"runs": runs, "last": last, "memory": _hwm_end(mem)}


def party_crypten(session: Any, repeats: int, cols: int | None = None) -> dict[str, Any]:
    """CrypTen's default distance path on this cell's share (bench_distances' function;
    on its first ``cols`` columns if given), with this party's peak RSS over the call."""
    full = _STATE["share"]
    mem = _hwm_begin()
    if cols is not None:
        bd._STATE["share"] = np.ascontiguousarray(full[:, :cols])
    try:
        out = bd.party_crypten_default(session, repeats)
    finally:
        bd._STATE["share"] = full
    out.pop("mem", None)  # its per-step figures reset VmHWM themselves; ours spans the call
    out["memory"] = _hwm_end(mem)
    return out


# ------------------------------------------------------------------ statistics
def _median(xs: Sequence[float]) -> float | None:
    return float(statistics.median(xs)) if xs else None


def _pairmax(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [max(x, y) for x, y in zip(a, b, strict=True)]


def fit_exponent(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Slope of log y against log x (least squares); None with < 2 distinct x or y <= 0."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None and y > 0 and x > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    lx = np.log([x for x, _ in pts])
    ly = np.log([y for _, y in pts])
    return float(np.polyfit(lx, ly, 1)[0])


class CostModel:
    """Estimated seconds of a not-yet-run cell from the measured cells of its kind.

    The nearest measured cell (in log n + log d) is scaled by ``(n/n0)^en (d/d0)^ed``;
    each exponent is the largest slope fitted along that axis (at any fixed value of
    the other one), at least :data:`MIN_EXPONENT`, or :data:`DEFAULT_EXPONENT` until
    two sizes along the axis have been measured.
    """

    def __init__(self) -> None:
        self.points: dict[str, list[tuple[int, int, float]]] = {}

    def add(self, kind: str, n: int, d: int, seconds: float) -> None:
        self.points.setdefault(kind, []).append((n, d, seconds))

    def exponent(self, kind: str, axis: str) -> float:
        pts = self.points.get(kind, [])
        groups: dict[int, list[tuple[int, float]]] = {}
        for n, d, t in pts:
            key, x = (d, n) if axis == "n" else (n, d)
            groups.setdefault(key, []).append((x, t))
        slopes = [
            s
            for g in groups.values()
            if (s := fit_exponent([x for x, _ in g], [t for _, t in g])) is not None
        ]
        if not slopes:
            return DEFAULT_EXPONENT[axis]
        return max(MIN_EXPONENT, max(slopes))

    def estimate(self, kind: str, n: int, d: int) -> float | None:
        """Seconds for one unit of ``kind`` at (n, d), or None with nothing measured."""
        pts = self.points.get(kind)
        if not pts:
            return None
        n0, d0, t0 = min(pts, key=lambda p: abs(math.log(n / p[0])) + abs(math.log(d / p[1])))
        en, ed = self.exponent(kind, "n"), self.exponent(kind, "d")
        return t0 * (n / n0) ** en * (d / d0) ** ed


def plan_cell(
    model: CostModel,
    kind: str,
    n: int,
    d: int,
    repeats: int,
    cap: float | None,
    budget_left: float | None = None,
) -> dict[str, Any]:
    """How many repeats of ``kind`` to run at (n, d) under the caps.

    Each repeat is estimated at :meth:`CostModel.estimate` seconds. The repeats are
    reduced until their estimate fits ``cap`` (seconds per cell) and ``budget_left``
    (seconds left of the whole run); if not even one fits, the cell is skipped.

    Returns
    -------
    dict
        ``repeats`` (0: skipped), ``estimated_seconds`` (for the repeats run, or for one
        repeat when skipped; None with nothing measured yet), ``reason`` (the
        ``"skipped: estimated X s > cap Y s"`` text, or None) and ``note`` (set when
        the repeats were reduced).
    """
    per = model.estimate(kind, n, d)
    out: dict[str, Any] = {"repeats": repeats, "estimated_seconds": None, "reason": None}
    out["note"] = None
    if per is None:
        return out
    fit = repeats
    if cap is not None:
        fit = min(fit, int(cap // per))
    if budget_left is not None:
        fit = min(fit, int(max(budget_left, 0.0) // per))
    if fit < 1:
        out["repeats"] = 0
        out["estimated_seconds"] = per
        if cap is not None and per > cap:
            out["reason"] = f"skipped: estimated {per:,.0f} s > cap {cap:,.0f} s"
        else:
            out["reason"] = (
                f"skipped: estimated {per:,.0f} s > {max(budget_left or 0.0, 0.0):,.0f} s "
                "left of the total budget"
            )
        return out
    out["repeats"] = fit
    out["estimated_seconds"] = per * fit
    if fit < repeats:
        out["note"] = (
            f"repeats reduced from {repeats} to {fit}: {repeats} × {per:,.0f} s "
            "estimated would exceed the cap or the budget"
        )
    return out


# ----------------------------------------------------------------- plaintext
def plain_floor(x: np.ndarray, rule: str, f: int, repeats: int) -> dict[str, Any]:
    """The plaintext robust aggregation of the encoded rows in float32: ``X Xᵀ``
    distances (torch), :func:`secagg.rules.select`, the sum of the selected rows or
    Bulyan's window sum. Median seconds over ``repeats`` and the selection it made."""
    xf = torch.from_numpy(x.astype(np.float32))
    _ = xf[:, :WARM_COLS] @ xf[:, :WARM_COLS].t()  # first-call costs are not the floor
    times, sel = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        g = xf @ xf.t()
        dg = torch.diagonal(g)
        dist = (dg.unsqueeze(0) + dg.unsqueeze(1) - 2 * g).double()
        dist.fill_diagonal_(0.0)
        dist.clamp_(min=0.0)
        dist = (dist + dist.t()) / 2  # exactly symmetric, as the rules require
        sel = rules.select(rule, dist.numpy(), f)
        rows = x[sel].astype(np.float32)
        _ = rules.bulyan_window_sum(rows, f) if rule == "bulyan" else rows.sum(axis=0)
        times.append(time.perf_counter() - t0)
    return {"seconds": _median(times), "selected": [int(i) for i in sel]}


def plain_reference(x: np.ndarray, dist: np.ndarray, rule: str, f: int) -> dict[str, Any]:
    """The exact int64 result (the oracle): selection on the exact distances, the sum
    of the selected rows (Bulyan: the window sum) and its divisor, and the seconds of
    that step (the exact distances are timed separately, once per (n, d))."""
    t0 = time.perf_counter()
    sel = rules.select(rule, dist, f)
    if rule == "bulyan":
        total = rules.bulyan_window_sum(x[sel], f)
        divisor = rules.bulyan_beta(x.shape[0], f)
    else:
        total = x[sel].sum(axis=0)
        divisor = len(sel)
    return {
        "selected": [int(i) for i in sel],
        "encoded_sum": np.asarray(total, dtype=np.int64),
        "divisor": int(divisor),
        "seconds": time.perf_counter() - t0,
    }


# -------------------------------------------------------------- cell analysis
def _phase_medians(ra: list[dict], rb: list[dict], key: str = "traffic") -> dict[str, float]:
    out: dict[str, float] = {}
    names = sorted({p for r in ra + rb for p in r[key]["seconds"]})
    for p in names:
        sa = [r[key]["seconds"].get(p, 0.0) for r in ra]
        sb = [r[key]["seconds"].get(p, 0.0) for r in rb]
        m = _median(_pairmax(sa, sb))
        if m is not None:
            out[p] = m
    return out


def _traffic(ra: dict, rb: dict, key: str = "traffic") -> dict[str, dict[str, int]]:
    ta, tb = ra[key], rb[key]
    names = sorted(set(ta["bytes_sent"]) | set(tb["bytes_sent"]))
    return {
        p: {
            "a_to_b_bytes": int(ta["bytes_sent"].get(p, 0)),
            "b_to_a_bytes": int(tb["bytes_sent"].get(p, 0)),
            "rounds": int(max(ta["rounds"].get(p, 0), tb["rounds"].get(p, 0))),
            "dealer_bytes_a": int(ta["dealer_bytes"].get(p, 0)),
            "dealer_bytes_b": int(tb["dealer_bytes"].get(p, 0)),
        }
        for p in names
    }


def analyse_cell(
    a: dict[str, Any],
    b: dict[str, Any],
    ref: dict[str, Any],
    ref_dist: np.ndarray,
    n: int,
    rule: str,
) -> dict[str, Any]:
    """Times, bytes and checks of one secure cell from both parties' results."""
    res: dict[str, Any] = {"seconds": {}, "phases": {}, "bytes": {}, "checks": {}}
    for mode in ("cold", "online"):
        ra = [r for r in a["runs"] if r["mode"] == mode]
        rb = [r for r in b["runs"] if r["mode"] == mode]
        res["seconds"][f"round_{mode}"] = _median(
            _pairmax([r["wall"] for r in ra], [r["wall"] for r in rb])
        )
        res["seconds"][f"round_{mode}_runs"] = _pairmax(
            [r["wall"] for r in ra], [r["wall"] for r in rb]
        )
        res["phases"][mode] = _phase_medians(ra, rb)
        res["bytes"][mode] = _traffic(ra[-1], rb[-1])
        if mode == "online" and "prepare_traffic" in ra[-1]:
            res["phases"]["online"].update(_phase_medians(ra, rb, "prepare_traffic"))
            res["bytes"]["online"].update(_traffic(ra[-1], rb[-1], "prepare_traffic"))
    res["seconds"]["distances_cold"] = res["phases"]["cold"].get("distances")
    res["seconds"]["distances_online"] = res["phases"]["online"].get("distances")
    res["seconds"]["prepare"] = res["phases"]["online"].get("prepare")

    want_sum, want_dist = digest(ref["encoded_sum"]), digest(ref_dist)
    all_rows = list(range(n))
    runs = a["runs"] + b["runs"]
    ck = res["checks"]
    ck["all_accepted"] = all(r["accepted"] == all_rows for r in runs)
    ck["selection"] = all(r["selected"] == ref["selected"] for r in runs)
    ck["divisor"] = all(r["divisor"] == ref["divisor"] for r in runs)
    ck["aggregate_exact"] = all(r["sum_digest"] == want_sum for r in runs)
    if rule == "mean":  # no distances are computed, and none may be revealed
        want_dist = None
    ck["distances_exact"] = all(r["distances_digest"] == want_dist for r in a["runs"]) and all(
        r["distances_digest"] is None for r in b["runs"]
    )
    if not ck["aggregate_exact"]:
        got = a["last"]["online"]["encoded_sum"]
        res["aggregate_max_abs_diff"] = int(np.max(np.abs(got - ref["encoded_sum"])))
    if not ck["distances_exact"] and a["last"]["online"]["distances"] is not None:
        got = a["last"]["online"]["distances"]
        res["distances_entries_differing"] = int(np.sum(got != ref_dist))
    ck["passed"] = all(ck.values())
    res["memory_mib"] = {"A": a["memory"], "B": b["memory"]}
    return res


def crypten_summary(a: dict[str, Any], b: dict[str, Any], ref_dist: np.ndarray) -> dict[str, Any]:
    """CrypTen default path: median time, traffic and the tolerance check."""
    wall = _pairmax([r["seconds"] for r in a["runs"]], [r["seconds"] for r in b["runs"]])
    trip = _pairmax([r["triple_s"] for r in a["runs"]], [r["triple_s"] for r in b["runs"]])
    got = np.asarray(a["distances_scale16"], dtype=np.int64)
    err = np.abs(got - (ref_dist >> bd.FRAC_BITS))
    ok = bool((err <= bd.CRYPTEN_TOL_UNITS).all())
    return {
        "status": "ok",
        "seconds": _median(wall),
        "seconds_runs": wall,
        "triple_seconds": _median(trip),
        # CrypTen's counter is sent + received; every exchange here is symmetric
        "a_to_b_bytes": a["runs"][-1]["counted_bytes"] // 2,
        "b_to_a_bytes": b["runs"][-1]["counted_bytes"] // 2,
        "rounds": a["runs"][-1]["rounds"],
        "dealer_bytes_a": a["runs"][-1]["dealer_bytes"],
        "checks": {
            "within_tolerance": ok,
            "max_err_units_2^-16": int(err.max()),
            "tolerance_units_2^-16": bd.CRYPTEN_TOL_UNITS,
            "passed": ok,
        },
        "memory_mib": {"A": a["memory"], "B": b["memory"]},
    }


# -------------------------------------------------------------------- driver
def machine_facts() -> dict[str, Any]:
    """nproc, affinity, CPU model, memory, load average, versions."""
    model = None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as fh:
            mem = round(int(fh.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model,
        "mem_total_gib": mem,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads_parent": torch.get_num_threads(),
        "platform": platform.platform(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


class DealerMemory:
    """Peak RSS of the dealer process, read from this (parent) process via /proc."""

    def __init__(self, pid: int | None, why: str | None) -> None:
        self.pid, self.why = pid, why

    def begin(self) -> str | None:
        if self.pid is None:
            return self.why
        return _reset_hwm_of(self.pid)

    def end(self, reset_error: str | None) -> dict[str, Any]:
        if self.pid is None:
            return {"peak_mib": None, "unavailable": self.why}
        peak = _proc_status_kib(self.pid, "VmHWM")
        if peak is None:
            return {"peak_mib": None, "unavailable": f"/proc/{self.pid}/status is unreadable"}
        return {
            "peak_mib": _mib(peak),
            "rss_mib": _mib(_proc_status_kib(self.pid, "VmRSS")),
            "peak_is_cell_local": reset_error is None,
            "note": reset_error,
        }


def find_dealer(party_pids: set[int]) -> DealerMemory:
    """The dealer is the cluster's one child process that is neither A nor B."""
    kids = [p for p in mp.active_children() if p.pid not in party_pids]
    if len(kids) != 1:
        return DealerMemory(None, f"{len(kids)} candidate dealer processes among the children")
    return DealerMemory(kids[0].pid, None)


def _grid(args: argparse.Namespace) -> list[tuple[int, int]]:
    # ascending size, so every capped cell is estimated from smaller measured ones
    return sorted(((n, d) for n in args.n for d in args.d), key=lambda c: (c[0] * c[1], c[1]))


def run_suite(args: argparse.Namespace) -> dict[str, Any]:
    """Run every cell; the whole result as a JSON-ready dict (arrays dropped)."""
    from secagg.cluster import MpcCluster

    res: dict[str, Any] = {
        "schema": SCHEMA,
        "machine": machine_facts(),
        "config": {
            "n": list(args.n),
            "d": list(args.d),
            "rules": list(args.rules),
            "repeats": args.repeats,
            "max_cell_seconds": args.max_cell_seconds,
            "max_total_seconds": args.max_total_seconds,
            "quick": args.quick,
            "seed": args.seed,
            "sigma": SIGMA,
            "byzantine_shift_sigma": BYZ_SHIFT,
            "f": {str(n): default_f(n) for n in args.n},
            "projections": ValidationParams().projections,
            "fit_n": args.fit_n,
            "crypten": not args.no_crypten,
            "transport": "gloo (loopback)",
        },
        "upload": [],
        "cells": [],
        "baselines": [],
    }
    _progress(
        f"machine: {res['machine']['nproc']} CPUs, load {res['machine']['loadavg_start']}; "
        f"grid n={list(args.n)} × d={list(args.d)} × {list(args.rules)}, "
        f"repeats={args.repeats}, cap {args.max_cell_seconds} s/cell, "
        f"budget {args.max_total_seconds} s"
    )
    for d in sorted(args.d):
        res["upload"].append(upload_bytes(d, args.seed))
    t_start = time.perf_counter()
    with MpcCluster(timeout_s=args.timeout) as cluster:
        run = _Suite(cluster, args, res, t_start)
        for n, d in _grid(args):
            run.nd(n, d)
    res["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    res["total_seconds"] = time.perf_counter() - t_start
    res["scaling"] = scaling(res, args)
    res["checks"] = {"passed": not run.failures, "failures": run.failures}
    return res


class _Suite:
    """The driver's state while the cells run on one cluster."""

    def __init__(
        self, cluster: Any, args: argparse.Namespace, res: dict[str, Any], t_start: float
    ) -> None:
        self.cluster, self.args, self.res, self.t_start = cluster, args, res, t_start
        self.me = importlib.import_module("bench.suite")  # pickle party fns by import name
        self.model = CostModel()
        self.failures: list[str] = []
        self.broken: str | None = None
        pa, pb = cluster.run(self.me.party_pid, (), ())
        self.dealer = find_dealer({pa, pb})
        res["machine"]["pids"] = {"A": pa, "B": pb, "dealer": self.dealer.pid}
        _progress(f"cluster up: A pid {pa}, B pid {pb}, dealer pid {self.dealer.pid}")
        wa, wb = cluster.run(
            self.me.party_warmup, (args.seed, list(args.rules)), (args.seed, list(args.rules))
        )
        res["machine"]["warmup_seconds"] = max(wa, wb)

    def _plan(self, kind: str, n: int, d: int) -> dict[str, Any]:
        left = None
        if self.args.max_total_seconds is not None:
            left = self.args.max_total_seconds - (time.perf_counter() - self.t_start)
        return plan_cell(
            self.model, kind, n, d, self.args.repeats, self.args.max_cell_seconds, left
        )

    def _pilot(
        self, kind: str, n: int, d: int, f: int, rule: str | None, x: np.ndarray
    ) -> dict[str, Any] | None:
        """With nothing of ``kind`` measured yet, time one repeat on the first
        :data:`PILOT_D` columns, so that even the first cell of a kind is estimated
        (its result is checked like any other). None when not needed."""
        if self.model.points.get(kind) or d <= PILOT_D:
            return None
        cols = PILOT_D
        xs = np.ascontiguousarray(x[:, :cols])
        rd = reference.sq_distances_int(xs)
        _progress(f"n={n} d={d:,} {rule or kind}: cost pilot on {cols:,} columns")
        if rule is None:
            a, b = self.cluster.run(self.me.party_crypten, (1, cols), (1, cols))
            cs = crypten_summary(a, b, rd)
            unit, passed = cs["seconds"], cs["checks"]["passed"]
        else:
            ref = plain_reference(xs, rd, rule, f)
            pilot_args = (rule, f, threshold_for(n, d), ValidationParams().projections, 1, cols)
            a, b = self.cluster.run(self.me.party_cell, pilot_args, pilot_args)
            out = analyse_cell(a, b, ref, rd, n, rule)
            s = out["seconds"]
            unit = (s["round_cold"] or 0.0) + (s["round_online"] or 0.0) + (s["prepare"] or 0.0)
            passed = out["checks"]["passed"]
        self.model.add(kind, n, cols, unit)
        if not passed:
            self.failures.append(f"n={n} d={cols:,} {rule or kind} (cost pilot): checks failed")
        return {"d": cols, "seconds_per_repeat": unit, "checks_passed": passed}

    def nd(self, n: int, d: int) -> None:
        """Every rule's cell and the baselines at one (n, d); a failure stops the rest."""
        f = default_f(n)
        if self.broken is None:
            try:
                self._nd(n, d, f)
                return
            except Exception as exc:  # the cluster may be gone: report, stop, exit 1
                reason = f"{type(exc).__name__}: {str(exc)[:2000]}"
                self.failures.append(f"n={n} d={d}: {reason}")
                _progress(f"n={n} d={d}: FAILED: {reason[:500]}")
                self.broken = f"not run: an earlier cell failed ({type(exc).__name__})"
        else:
            reason = self.broken
        done = {(c["n"], c["d"], c["rule"]) for c in self.res["cells"]}
        for rule in self.args.rules:
            if (n, d, rule) not in done:
                self.res["cells"].append(
                    {"n": n, "d": d, "rule": rule, "f": f, "status": "error", "reason": reason}
                )

    def _nd(self, n: int, d: int, f: int) -> None:
        args, tag = self.args, f"n={n} d={d:,}"
        _progress(f"{tag}: inputs (f={f}) and the exact plaintext distances")
        x = encoded_matrix(args.seed, n, d, f)
        t0 = time.perf_counter()
        ref_dist = reference.sq_distances_int(x)
        ref_dist_s = time.perf_counter() - t0
        sa, sb = self.cluster.run(self.me.party_setup, (args.seed, n, d, f), (args.seed, n, d, f))
        base = {
            "n": n,
            "d": d,
            "f": f,
            "plaintext": {"exact_distances_seconds": ref_dist_s},
            "setup_seconds": max(sa["seconds"], sb["seconds"]),
            # A's share is the AES-CTR expansion of the n seeds: what A's setup times
            "seed_expansion_seconds_a": sa["seconds"],
        }
        for rule in args.rules:
            self._cell(n, d, f, rule, x, ref_dist, ref_dist_s)
        base["crypten_default"] = self._crypten(n, d, ref_dist, x)
        self.res["baselines"].append(base)

    def _cell(
        self,
        n: int,
        d: int,
        f: int,
        rule: str,
        x: np.ndarray,
        ref_dist: np.ndarray,
        ref_dist_s: float,
    ) -> None:
        args, tag = self.args, f"n={n} d={d:,} {rule}"
        cell: dict[str, Any] = {"n": n, "d": d, "rule": rule, "f": f}
        self.res["cells"].append(cell)
        ref = plain_reference(x, ref_dist, rule, f)
        if n * d <= 2_000_000:  # cross-check the composition against the module's oracle
            full = reference.aggregate_encoded(x, rule, f)
            if full.selected != ref["selected"] or not np.array_equal(
                full.encoded_sum, ref["encoded_sum"]
            ):
                raise AssertionError("reference.aggregate_encoded disagrees with rules + sum")
        floor = plain_floor(x, rule, f, args.repeats)
        cell["plaintext"] = {
            "floor_seconds": floor["seconds"],
            "floor_selection_matches_exact": floor["selected"] == ref["selected"],
            "exact_seconds": ref_dist_s + ref["seconds"],
            "selected": ref["selected"],
            "divisor": ref["divisor"],
        }
        kind = f"round:{rule}"
        pilot = self._pilot(kind, n, d, f, rule, x)
        if pilot is not None:
            cell["pilot"] = pilot
        plan = self._plan(kind, n, d)
        cell["repeats"] = plan["repeats"]
        cell["estimated_seconds"] = plan["estimated_seconds"]
        if plan["reason"] is not None:
            cell.update(status="skipped", reason=plan["reason"])
            _progress(f"{tag}: {plan['reason']}")
            return
        if plan["note"]:
            cell["note"] = plan["note"]
        est = plan["estimated_seconds"]
        _progress(
            f"{tag}: {plan['repeats']}× (cold + online round)"
            + (f", estimated {est:,.1f} s" if est is not None else "")
            + (f" ({plan['note']})" if plan["note"] else "")
        )
        cell_args = (
            rule,
            f,
            threshold_for(n, d),
            ValidationParams().projections,
            plan["repeats"],
        )
        reset = self.dealer.begin()
        t_cell = time.perf_counter()
        a, b = self.cluster.run(self.me.party_cell, cell_args, cell_args)
        cell_s = time.perf_counter() - t_cell
        out = analyse_cell(a, b, ref, ref_dist, n, rule)
        out["memory_mib"]["dealer"] = self.dealer.end(reset)
        cell.update(status="ok", cell_seconds=cell_s, **out)
        s = cell["seconds"]
        s["plain_floor"] = floor["seconds"]
        floor_s = floor["seconds"] or float("nan")
        cell["x_floor_online"] = (s["round_online"] or float("nan")) / floor_s
        unit = (s["round_cold"] or 0.0) + (s["round_online"] or 0.0) + (s["prepare"] or 0.0)
        self.model.add(kind, n, d, unit)
        if not out["checks"]["passed"]:
            bad = [k for k, v in out["checks"].items() if v is False]
            self.failures.append(f"{tag}: checks failed: {bad}")
        _progress(
            f"{tag}: round {s['round_online']:.3f} s online, {s['round_cold']:.3f} s cold "
            f"(floor {floor_s:.4f} s), checks {'ok' if out['checks']['passed'] else 'FAILED'} "
            f"({cell_s:.1f} s)"
        )

    def _crypten(self, n: int, d: int, ref_dist: np.ndarray, x: np.ndarray) -> dict[str, Any]:
        """CrypTen's default path: the naive secure baseline for the distances."""
        tag = f"n={n} d={d:,} crypten default"
        if self.args.no_crypten:
            return {"status": "skipped", "reason": "skipped: --no-crypten"}
        pilot = self._pilot("crypten", n, d, default_f(n), None, x)
        plan = self._plan("crypten", n, d)
        if plan["reason"] is not None:
            _progress(f"{tag}: {plan['reason']}")
            return {
                "status": "skipped",
                "reason": plan["reason"],
                "estimated_seconds": plan["estimated_seconds"],
                "pilot": pilot,
            }
        _progress(f"{tag}: {plan['repeats']}× X.matmul(X.t())")
        reset = self.dealer.begin()
        a, b = self.cluster.run(self.me.party_crypten, (plan["repeats"],), (plan["repeats"],))
        cs = crypten_summary(a, b, ref_dist)
        cs["memory_mib"]["dealer"] = self.dealer.end(reset)
        cs["repeats"] = plan["repeats"]
        cs["pilot"] = pilot
        cs["estimated_seconds"] = plan["estimated_seconds"]
        if plan["note"]:
            cs["note"] = plan["note"]
        self.model.add("crypten", n, d, cs["seconds"])
        if not cs["checks"]["passed"]:
            self.failures.append(f"{tag}: outside tolerance")
        _progress(
            f"{tag}: {cs['seconds']:.3f} s, within tolerance={cs['checks']['within_tolerance']}"
        )
        return cs


# -------------------------------------------------------------------- scaling
METRICS: tuple[tuple[str, Callable[[dict[str, Any]], float | None]], ...] = (
    ("round_online", lambda c: c["seconds"].get("round_online")),
    ("round_cold", lambda c: c["seconds"].get("round_cold")),
    ("validation", lambda c: c["phases"]["online"].get("validation")),
    ("distances_cold", lambda c: c["phases"]["cold"].get("distances")),
    ("distances_online", lambda c: c["phases"]["online"].get("distances")),
    ("prepare", lambda c: c["phases"]["online"].get("prepare")),
    ("selection", lambda c: c["phases"]["online"].get("selection")),
    ("reveal", lambda c: c["phases"]["online"].get("reveal")),
    ("bulyan_coordinate", lambda c: c["phases"]["online"].get("bulyan_coordinate")),
    ("plain_floor", lambda c: c["plaintext"]["floor_seconds"]),
)


def _fit_series(points: list[tuple[float, float | None]]) -> dict[str, Any]:
    pts = [(x, y) for x, y in points if y is not None]
    e = fit_exponent([x for x, _ in pts], [y for _, y in pts])
    return {"exponent": e, "points": [[x, y] for x, y in pts]}


def scaling(res: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Fitted exponents of time in n (at the largest d) and in d (at n = fit_n, or the
    nearest n of the grid) for each rule and phase, and for CrypTen's default path."""
    d_max = max(args.d)
    n_fit = min(args.n, key=lambda v: (abs(v - args.fit_n), -v))
    ok = [c for c in res["cells"] if c.get("status") == "ok"]
    out: dict[str, Any] = {"n_at_d": d_max, "d_at_n": n_fit, "rules": {}}
    for rule in args.rules:
        mine = [c for c in ok if c["rule"] == rule]
        r: dict[str, Any] = {}
        for name, get in METRICS:
            by_n = sorted((c["n"], get(c)) for c in mine if c["d"] == d_max)
            by_d = sorted((c["d"], get(c)) for c in mine if c["n"] == n_fit)
            if all(y is None for _, y in by_n + by_d):
                continue
            r[name] = {"in_n": _fit_series(by_n), "in_d": _fit_series(by_d)}
        out["rules"][rule] = r
    cb = [b for b in res["baselines"] if b.get("crypten_default", {}).get("status") == "ok"]
    out["crypten_default"] = {
        "in_n": _fit_series(
            sorted((b["n"], b["crypten_default"]["seconds"]) for b in cb if b["d"] == d_max)
        ),
        "in_d": _fit_series(
            sorted((b["d"], b["crypten_default"]["seconds"]) for b in cb if b["n"] == n_fit)
        ),
    }
    return out


# ---------------------------------------------------------------------- table
def _s(v: float | None, w: int = 8) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return f"{'-':>{w}}"
    if v >= 100:
        return f"{v:>{w},.0f}"
    if v >= 1:
        return f"{v:>{w}.2f}"
    return f"{v:>{w}.3f}" if v >= 0.01 else f"{v:>{w}.4f}"


def _b(v: float | None, w: int = 9) -> str:
    if v is None:
        return f"{'-':>{w}}"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= div:
            return f"{v / div:>{w - 3}.1f} {unit}"
    return f"{v:>{w - 2}.0f} B"


def _table(head: list[str], rows: list[list[str]], right: int = 3) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = [
        (lambda s, w: f"{s:<{w}}") if i < right else (lambda s, w: f"{s:>{w}}")
        for i in range(len(head))
    ]
    out = [" | ".join(fmt[i](h, widths[i]) for i, h in enumerate(head))]
    out.append("-+-".join("-" * w for w in widths))
    for r in rows:
        out.append(" | ".join(fmt[i](c, widths[i]) for i, c in enumerate(r)))
    return out


def format_report(res: dict[str, Any]) -> str:
    """The printed tables: machine, times, bytes, memory, scaling, checks."""
    m, cfg = res["machine"], res["config"]
    lines = [
        f"secagg benchmark suite ({SCHEMA}): {m['nproc']} CPUs ({m['cpu_model']}), "
        f"{m['mem_total_gib']} GiB, torch {m['torch']}, python {m['python']}",
        f"load average at start {m['loadavg_start']}, at end {m.get('loadavg_end')}; "
        f"repeats={cfg['repeats']} (median of the slower party), "
        f"cap {cfg['max_cell_seconds']} s per cell, total {res.get('total_seconds', 0):.0f} s",
        "",
        "Times (seconds). round = validation + distances + selection + reveal/Bulyan stage "
        "after all shares are present; online = after prepare_distances (run during "
        "collection), cold = dealer material on the path",
    ]
    crypt = {(b["n"], b["d"]): b.get("crypten_default", {}) for b in res["baselines"]}
    head = [
        "n", "d", "rule", "round online", "round cold", "validation", "dist cold",
        "dist online", "prepare", "selection", "reveal/bulyan", "plain floor", "x floor",
        "crypten dist",
    ]  # fmt: skip
    rows = []
    for c in res["cells"]:
        first = [str(c["n"]), f"{c['d']:,}", c["rule"]]
        if c.get("status") != "ok":
            floor = c.get("plaintext", {}).get("floor_seconds")
            rows.append(first + [str(c.get("status", "?"))] + ["-"] * 7 + [_s(floor), "-", "-"])
            continue
        ph, s = c["phases"], c["seconds"]
        last = ph["online"].get("bulyan_coordinate", ph["online"].get("reveal"))
        cd = crypt.get((c["n"], c["d"]), {})
        cdt = _s(cd.get("seconds")) if cd.get("status") == "ok" else "skipped"
        xf = c.get("x_floor_online")
        rows.append(
            first
            + [
                _s(s["round_online"]),
                _s(s["round_cold"]),
                _s(ph["online"].get("validation")),
                _s(ph["cold"].get("distances")),
                _s(ph["online"].get("distances")),
                _s(ph["online"].get("prepare")),
                _s(ph["online"].get("selection")),
                _s(last),
                _s(c["plaintext"]["floor_seconds"]),
                "-" if xf is None or math.isnan(xf) else f"{xf:,.0f}x",
                cdt,
            ]
        )
    lines += _table(head, rows)
    for c in res["cells"]:
        if c.get("status") != "ok":
            lines.append(f"  n={c['n']} d={c['d']:,} {c['rule']}: {c.get('reason')}")
        elif c.get("note"):
            lines.append(f"  n={c['n']} d={c['d']:,} {c['rule']}: {c['note']}")
    exp = [
        f"n={b['n']} d={b['d']:,}: {b['seed_expansion_seconds_a']:.3f} s"
        for b in res["baselines"]
        if "seed_expansion_seconds_a" in b
    ]
    if exp:
        lines.append("  A's seed expansion (not in the round times): " + "; ".join(exp))
    skipped = [b for b in res["baselines"] if b.get("crypten_default", {}).get("status") != "ok"]
    for b in skipped:
        why = b["crypten_default"]["reason"]
        lines.append(f"  crypten default at n={b['n']} d={b['d']:,}: {why}")

    lines += ["", "Bytes per worker upload (protobuf, SDK message builders)"]
    rows = [
        [
            f"{u['d']:,}",
            f"{u['to_a_bytes']:,}",
            f"{u['to_b_bytes']:,}",
            str(u["messages_to_b"]),
            f"{u['bytes_per_coord']:.4f}",
            f"{u['bytes_per_coord_with_grpc_prefix']:.4f}",
        ]
        for u in res["upload"]
    ]
    lines += _table(
        ["d", "to A (seed)", "to B (share)", "msgs to B", "B/coord", "B/coord +gRPC prefix"],
        rows,
        right=1,
    )

    lines += [
        "",
        "Bytes per phase (online round and its prepare, last repeat; cold rounds move the "
        "same bytes, with prepare's dealer bytes inside distances). A<->B: bytes each "
        "party sent on the 2PC link (validation and reveal are symmetric); dealer: "
        "dealer->A (B draws its masks from its own stream); 8nd = one n×d opening",
    ]
    head = [
        "n", "d", "rule", "dist A->B", "dist B->A", "A->B/8nd", "validation", "selection",
        "reveal/bulyan", "dealer: prepare", "dealer: validation", "dealer: reveal/bulyan",
    ]  # fmt: skip
    rows = []
    for c in res["cells"]:
        if c.get("status") != "ok":
            continue
        t = c["bytes"]["online"]
        zero = {"a_to_b_bytes": None, "b_to_a_bytes": None, "dealer_bytes_a": None}
        dist, val = t.get("distances", zero), t.get("validation", zero)
        sel, prep = t.get("selection", zero), t.get("prepare", zero)
        last = t.get("bulyan_coordinate", t.get("reveal", zero))
        ratio = dist["a_to_b_bytes"]
        rows.append(
            [
                str(c["n"]),
                f"{c['d']:,}",
                c["rule"],
                _b(dist["a_to_b_bytes"]),
                _b(dist["b_to_a_bytes"]),
                "-" if ratio is None else f"{ratio / (8 * c['n'] * c['d']):.4f}",
                _b(val["a_to_b_bytes"]),
                _b(sel["a_to_b_bytes"]),
                _b(last["a_to_b_bytes"]),
                _b(prep["dealer_bytes_a"]),
                _b(val["dealer_bytes_a"]),
                _b(last["dealer_bytes_a"]),
            ]
        )
    lines += _table(head, rows)
    for b in res["baselines"]:
        cd = b.get("crypten_default", {})
        if cd.get("status") == "ok":
            lines.append(
                f"  crypten default n={b['n']} d={b['d']:,}: A->B {_b(cd['a_to_b_bytes']).strip()}"
                f", B->A {_b(cd['b_to_a_bytes']).strip()}, {cd['rounds']} rounds, dealer->A "
                f"{_b(cd['dealer_bytes_a']).strip()}"
            )

    lines += [
        "",
        "Peak RSS per process during the cell (MiB; VmHWM reset at the cell's start, the "
        "shares resident throughout). 'over idle' = peak - RSS of the party after the "
        "warm-up (torch + CrypTen + session, no shares), also in units of one share "
        "matrix n·d·8",
    ]
    head = [
        "n", "d", "rule", "A peak", "B peak", "dealer peak", "A over idle", "B over idle",
        "n·d·8 MiB", "max over idle / n·d·8",
    ]  # fmt: skip
    rows = []
    for c in res["cells"]:
        if c.get("status") != "ok":
            continue
        mm = c["memory_mib"]
        share_mib = c["n"] * c["d"] * 8 / 2**20
        over = [mm[w]["peak_over_idle_mib"] for w in ("A", "B")]
        known = [v for v in over if v is not None]
        rows.append(
            [
                str(c["n"]),
                f"{c['d']:,}",
                c["rule"],
                _s(mm["A"]["peak_mib"]),
                _s(mm["B"]["peak_mib"]),
                _s(mm["dealer"].get("peak_mib")),
                _s(over[0]),
                _s(over[1]),
                _s(share_mib),
                f"{max(known) / share_mib:,.1f}x" if known else "-",
            ]
        )
    lines += _table(head, rows)
    for c in res["cells"]:
        why = c.get("memory_mib", {}).get("dealer", {}).get("unavailable")
        if why:
            lines.append(f"  dealer peak unavailable: {why}")
            break

    sc = res["scaling"]
    lines += [
        "",
        f"Scaling: fitted exponent of time in n (at d={sc['n_at_d']:,}) and in d "
        f"(at n={sc['d_at_n']})",
    ]
    rows = []
    for rule, metrics in sc["rules"].items():
        for name, fit in metrics.items():
            en, ed = fit["in_n"]["exponent"], fit["in_d"]["exponent"]
            rows.append(
                [
                    rule,
                    name,
                    "-" if en is None else f"n^{en:.2f}",
                    "-" if ed is None else f"d^{ed:.2f}",
                ]
            )
    cdf = sc["crypten_default"]
    en, ed = cdf["in_n"]["exponent"], cdf["in_d"]["exponent"]
    rows.append(
        [
            "crypten",
            "distances",
            "-" if en is None else f"n^{en:.2f}",
            "-" if ed is None else f"d^{ed:.2f}",
        ]
    )
    lines += _table(["rule", "metric", "in n", "in d"], rows, right=2)

    ck = res["checks"]
    n_ok = sum(1 for c in res["cells"] if c.get("status") == "ok")
    n_skip = sum(1 for c in res["cells"] if c.get("status") == "skipped")
    lines += [
        "",
        f"checks: {n_ok} secure cells run ({n_skip} skipped by the cap), every repeat: "
        "distances bit-exact on the encoded integers, selection identical, aggregate exact; "
        f"CrypTen within {bd.CRYPTEN_TOL_UNITS} units of 2^-16 -> "
        + ("PASSED" if ck["passed"] else "FAILED: " + "; ".join(ck["failures"])),
    ]
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(float(v)) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line; ``--quick`` replaces the sizes with tiny ones."""
    ap = argparse.ArgumentParser(
        prog="python -m bench.suite",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--n", type=_ints, default=list(DEFAULT_N), help="workers, comma separated")
    ap.add_argument("--d", type=_ints, default=list(DEFAULT_D), help="dimensions (1e6 ok)")
    ap.add_argument(
        "--rules",
        type=lambda s: [r.strip() for r in s.split(",") if r.strip()],
        default=list(DEFAULT_RULES),
        help="comma separated, from krum, multi-krum, bulyan, mean",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--max-cell-seconds",
        type=float,
        default=150.0,
        help="skip a cell whose estimated cost exceeds this (0: no cap)",
    )
    ap.add_argument(
        "--max-total-seconds",
        type=float,
        default=1800.0,
        help="skip cells whose estimate exceeds what is left of this budget (0: none)",
    )
    ap.add_argument("--fit-n", type=int, default=FIT_N, help="n of the exponent in d")
    ap.add_argument("--no-crypten", action="store_true", help="skip CrypTen's default path")
    ap.add_argument("--seed", type=int, default=20240609)
    ap.add_argument("--timeout", type=float, default=None, help="cluster timeout per call (s)")
    ap.add_argument("--json", default=DEFAULT_JSON, help=f"output JSON (default {DEFAULT_JSON})")
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"tiny sizes: n={list(QUICK_N)}, d={list(QUICK_D)}, repeats 1 (< 40 s)",
    )
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.d, a.repeats = list(QUICK_N), list(QUICK_D), 1
    a.n = sorted(set(a.n))
    a.d = sorted(set(a.d))
    bad = [r for r in a.rules if r not in rules.RULES]
    if bad:
        ap.error(f"unknown rules {bad}; choose from {list(rules.RULES)}")
    if a.repeats < 1 or not a.n or not a.d or min(a.n) < 7 or min(a.d) < WARM_COLS:
        ap.error(f"need --repeats >= 1, every n >= 7 (Bulyan with f >= 1), d >= {WARM_COLS}")
    if a.max_cell_seconds is not None and a.max_cell_seconds <= 0:
        a.max_cell_seconds = None
    if a.max_total_seconds is not None and a.max_total_seconds <= 0:
        a.max_total_seconds = None
    if a.timeout is None:
        a.timeout = max(1200.0, 8 * (a.max_cell_seconds or 600.0))
    return a


def main(argv: list[str] | None = None) -> int:
    """Run the suite, print the tables, write the JSON; 1 if a check or cell failed."""
    args = parse_args(argv)
    res = run_suite(args)
    print(format_report(res), flush=True)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    # arrays (sums, distances) are checked in the run, not stored
    path.write_text(json.dumps(bd.jsonable(res, arrays=False), indent=2))
    _progress(f"wrote {path}; {res['total_seconds']:.1f} s")
    return 0 if res["checks"]["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
