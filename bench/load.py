"""Load test: many workers submit at once to a local deployment; is every share taken?

Run from the repository root::

    .venv/bin/python -m bench.load [--workers 100] [--d 100000] [--rule multi-krum]
        [--f 10] [--insecure] [--no-persist] [--json out.json]

One :class:`servers.launcher.LocalDeployment` (server A, server B, the dealer as
separate processes on loopback; TLS and durable state directories on by default, as in
production). Every worker's vector is encoded and split *before* the clock starts (a
real worker does that on its own machine, not on the servers' cores); then all workers
are released at once, each on its own thread and its own channels, and each sends its
seed to A and streams its share to B. Measured:

* submission latency per worker: seed RPC + share stream until both receipts are
  back (with persistence, each receipt is sent only after an fsynced commit), p50 /
  p99 / max;
* that every submission was accepted, with both receipts' digests checked;
* the round's result against the plaintext reference on the same encoded inputs
  (selection and aggregate bit for bit), and its wall time from the first submission;
* peak resident memory of each server process (VmHWM, the kernel's high-water mark),
  against its RSS before the load.

Everything shares the machine's cores: clients, both servers and the dealer. Not a test
(timings depend on the machine); ``tests/test_reliability.py`` has the CI-sized version.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from clients.admin import AdminClient
from secagg import encoding, reference, sharing, transport
from secagg.rounds import RoundConfig, RoundState, payload_digest
from secagg.v1 import secagg_pb2 as pb
from secagg.v1 import secagg_pb2_grpc as pbg
from servers.launcher import LocalDeployment


def _proc_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    n, d = args.workers, args.d
    params = encoding.EncodingParams(scale=1.0, coord_bound=1.0, norm_bound=args.norm_bound)
    ids = [f"w{i:03d}" for i in range(n)]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="secagg-load-"))
    dep = LocalDeployment(
        work, ids, tls=not args.insecure, mpc_timeout_s=300, persist=not args.no_persist
    )
    print(f"starting A, B and the dealer in {work} ...", file=sys.stderr)
    dep.start()
    try:
        return _load(args, dep, ids, params, n, d)
    finally:
        dep.stop()


def _load(
    args: argparse.Namespace,
    dep: LocalDeployment,
    ids: list[str],
    params: encoding.EncodingParams,
    n: int,
    d: int,
) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    # gradient-like rows around a common direction, a few of them far off
    X = (rng.normal(size=d) + rng.normal(size=(n, d))) * (args.norm_bound / (8 * np.sqrt(d)))
    X[: max(1, args.f // 2)] *= -3
    Xenc = np.stack([encoding.encode(row, params) for row in X])
    splits = [sharing.split(row) for row in Xenc]

    rid = f"load-{uuid.uuid4().hex[:8]}"
    cfg = RoundConfig(
        round_id=rid,
        n_expected=n,
        f=args.f,
        rule=args.rule,
        dim=d,
        scale=params.scale,
        coord_bound=params.coord_bound,
        norm_bound=params.norm_bound,
        deadline_unix_ms=int((time.time() + 900) * 1000),
    )
    with AdminClient(dep.control_a, dep.tls_for("admin")) as adm:
        adm.open_round(cfg)

    pids = {name: dep.procs[name].pid for name in ("server-a", "server-b", "dealer")}
    rss_before = {name: _proc_kb(pid, "VmRSS") for name, pid in pids.items()}
    latency: list[float] = [0.0] * n
    errors: list[str] = []
    start = threading.Barrier(n + 1)

    def worker(i: int) -> None:
        wid, parts = ids[i], splits[i]
        md = transport.worker_metadata(wid, dep.tokens[wid])
        sid = uuid.uuid4().hex
        with (
            transport.make_channel(dep.addr_a, dep.worker_tls()) as ch_a,
            transport.make_channel(dep.addr_b, dep.worker_tls()) as ch_b,
        ):
            a, b = pbg.WorkerStub(ch_a), pbg.WorkerStub(ch_b)
            seed_msg = pb.SeedSubmission(
                round_id=rid, worker_id=wid, seed=parts.seed, dim=d, submission_id=sid
            )
            start.wait()
            t0 = time.perf_counter()
            try:
                ra = a.SubmitSeed(seed_msg, metadata=md, timeout=args.timeout)
                rb = b.SubmitShare(
                    transport.share_chunk_messages(rid, wid, sid, parts.share_b),
                    metadata=md,
                    timeout=args.timeout,
                )
            except Exception as exc:  # reported, not raised: count every failure
                errors.append(f"{wid}: {exc}")
                return
            latency[i] = time.perf_counter() - t0
            if ra.digest != payload_digest(parts.seed) or rb.digest != payload_digest(
                parts.share_b
            ):
                errors.append(f"{wid}: receipt digest mismatch")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    start.wait()
    t_first = time.perf_counter()
    for t in threads:
        t.join()
    t_all = time.perf_counter() - t_first
    print(f"{n - len(errors)}/{n} accepted in {t_all:.2f} s; now the round", file=sys.stderr)

    with AdminClient(dep.control_a, dep.tls_for("admin")) as adm:
        while True:
            rep = adm.get_round_report(rid)
            state = RoundState.from_proto(rep.status.state)
            if state.terminal:
                break
            time.sleep(0.1)
    t_round = time.perf_counter() - t_first
    peak = {name: _proc_kb(pid, "VmHWM") for name, pid in pids.items()}

    correct = False
    detail = rep.status.failure_reason
    if state is RoundState.DONE:
        from clients.sdk import SecAggClient

        with SecAggClient(
            dep.addr_a, dep.addr_b, ids[0], dep.tokens[ids[0]], tls=dep.worker_tls()
        ) as c:
            agg = c.fetch_aggregate(rid)
        ref = reference.aggregate_encoded(Xenc, args.rule, args.f)
        want = encoding.decode(ref.encoded_sum, params, ref.divisor)
        correct = list(agg.selected) == sorted(ids[i] for i in ref.selected) and bool(
            np.array_equal(agg.vector, want)
        )
        detail = f"{len(agg.selected)} selected"
    ok = [x for x in latency if x > 0]
    return {
        "workers": n,
        "d": d,
        "rule": args.rule,
        "f": args.f,
        "tls": not args.insecure,
        "persist": not args.no_persist,
        "accepted": n - len(errors),
        "errors": errors[:10],
        "latency_s": {
            "p50": _pct(ok, 0.50) if ok else None,
            "p99": _pct(ok, 0.99) if ok else None,
            "max": max(ok) if ok else None,
            "mean": statistics.fmean(ok) if ok else None,
        },
        "all_submitted_s": t_all,
        "round_done_s": t_round,
        "round_state": state.value,
        "round_detail": detail,
        "correct": correct,
        "rss_before_mib": {k: round(v / 1024, 1) for k, v in rss_before.items()},
        "peak_rss_mib": {k: round(v / 1024, 1) for k, v in peak.items()},
        "share_mib_per_worker": round(d * 8 / 2**20, 3),
        "phases_a": {p.phase: round(p.seconds, 3) for p in rep.status.phases},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.load", description=__doc__)
    p.add_argument("--workers", type=int, default=100)
    p.add_argument("--d", type=int, default=100_000)
    p.add_argument("--rule", default="multi-krum")
    p.add_argument("--f", type=int, default=10)
    p.add_argument("--norm-bound", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=300.0, help="per-RPC deadline, s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--insecure", action="store_true", help="no TLS")
    p.add_argument("--no-persist", action="store_true", help="no state directories")
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)
    out = run(args)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if out["accepted"] == out["workers"] and out["correct"] else 1


if __name__ == "__main__":
    sys.exit(main())
