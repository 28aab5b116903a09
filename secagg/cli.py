"""``secagg``: run a local deployment, a round, or one of the processes.

Commands
--------
secagg up       server A, server B and the dealer on loopback (TLS on by default)
secagg round    one aggregation round: each row of --inputs is one worker, through the SDK
secagg certs    a dev CA and certificates for server-a, server-b, dealer, admin
secagg server-a | server-b | dealer   one process, for real deployments (see deploy/)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

RULE_CHOICES = ("mean", "krum", "multi-krum", "bulyan")


def _progress(msg: str) -> None:
    print(f"[secagg] {msg}", file=sys.stderr, flush=True)


def _deployment_file(workdir: Path) -> Path:
    return workdir / "deployment.json"


# ------------------------------------------------------------------------ up
def cmd_up(args: argparse.Namespace) -> int:
    from servers.launcher import LocalDeployment

    workdir = Path(args.workdir)
    ids = [f"worker-{i:03d}" for i in range(args.workers)]
    dep = LocalDeployment(workdir, ids, tls=not args.insecure)
    _progress(f"starting server A, server B and the dealer in {workdir} ...")
    dep.start()
    info = _describe(dep)
    _deployment_file(workdir).write_text(json.dumps(info, indent=2))
    plain = workdir / "worker-tokens.plain.json"
    plain.write_text(json.dumps(dep.tokens, indent=2))
    plain.chmod(0o600)
    print(json.dumps(info, indent=2))
    _progress(f"up. worker tokens: {plain} (keep secret). Ctrl-C stops all three.")
    try:
        while all(p.poll() is None for p in dep.procs.values()):
            time.sleep(0.5)
        _progress("a process exited; see the logs in " + str(workdir / "logs"))
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        dep.stop()


def _describe(dep) -> dict:  # noqa: ANN001
    return {
        "server_a": dep.addr_a,
        "server_b": dep.addr_b,
        "admin": dep.control_a,
        "tls": dep.tls,
        "pki": str(dep.pki) if dep.tls else None,
        "workdir": str(dep.workdir),
    }


# --------------------------------------------------------------------- round
def cmd_round(args: argparse.Namespace) -> int:
    from clients.admin import AdminClient
    from clients.sdk import SecAggClient
    from secagg import encoding, transport
    from secagg.rounds import RoundConfig

    X = np.load(args.inputs)
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise SystemExit(f"--inputs must hold a 2-D array (workers × dim), got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.number):
        raise SystemExit(f"--inputs must be numeric, got dtype {X.dtype}")
    n, d = X.shape
    workdir = Path(args.workdir)
    dep = None
    t_start = time.perf_counter()
    try:
        if args.servers:
            info = json.loads(_deployment_file(workdir).read_text())
            addr_a, addr_b = args.servers.split(",")
            tokens = json.loads((workdir / "worker-tokens.plain.json").read_text())
            tls = info["tls"]
            pki = Path(info["pki"]) if tls else None
            admin_addr = args.admin or info["admin"]
            admin_token = (workdir / "admin-token").read_text() if not tls else None
        else:
            from servers.launcher import LocalDeployment

            ids = [f"worker-{i:03d}" for i in range(n)]
            rundir = workdir / f"local-{uuid.uuid4().hex[:8]}"
            dep = LocalDeployment(rundir, ids, tls=not args.insecure)
            _progress(f"starting a local deployment (A, B, dealer) for {n} workers ...")
            dep.start()
            addr_a, addr_b, admin_addr = dep.addr_a, dep.addr_b, dep.control_a
            tokens, tls, pki, admin_token = dep.tokens, dep.tls, dep.pki, dep.admin_token
        ids = sorted(tokens)[:n]
        if len(ids) < n:
            raise SystemExit(f"{n} input rows but only {len(ids)} worker tokens: issue more")
        worker_tls = transport.TlsConfig(ca_cert=pki / "ca.pem") if tls else None
        admin_tls = transport.TlsConfig.from_pki(pki, "admin") if tls else None
        coord = args.coord_bound or float(np.max(np.abs(X))) * 1.01 or 1.0
        norm = (
            args.norm_bound or float(np.max(np.linalg.norm(X * args.scale, axis=1))) * 1.01 or 1.0
        )
        norm = min(norm, encoding.MAX_NORM_BOUND * 0.999)
        round_id = args.round_id or f"round-{uuid.uuid4().hex[:12]}"
        config = RoundConfig(
            round_id=round_id,
            n_expected=n,
            f=args.f,
            rule=args.rule,
            m=args.m or 0,
            dim=d,
            scale=args.scale,
            coord_bound=coord * args.scale,
            norm_bound=norm,
            quorum=0,
            deadline_unix_ms=int((time.time() + args.deadline_s) * 1000),
        )
        admin = AdminClient(admin_addr, admin_tls, token=admin_token)
        admin.open_round(config)
        _progress(f"round {round_id} open: n={n}, d={d}, rule={args.rule}, f={args.f}")
        params = encoding.EncodingParams(
            scale=args.scale, coord_bound=coord * args.scale, norm_bound=norm
        )

        def submit(i: int) -> float:
            t0 = time.perf_counter()
            with SecAggClient(addr_a, addr_b, ids[i], tokens[ids[i]], tls=worker_tls) as c:
                c.submit(round_id, X[i].astype(np.float64), params)
            return time.perf_counter() - t0

        latencies = []
        with ThreadPoolExecutor(max_workers=min(8, n)) as pool:
            for k, lat in enumerate(pool.map(submit, range(n)), 1):
                latencies.append(lat)
                if k % max(1, n // 10) == 0 or k == n:
                    _progress(f"submitted {k}/{n} workers")
        t_sub = time.perf_counter()
        with SecAggClient(addr_a, addr_b, ids[0], tokens[ids[0]], tls=worker_tls) as c:
            agg = c.wait_for_result(round_id, timeout_s=args.deadline_s + 600)
        t_done = time.perf_counter()
        report_msg = admin.get_round_report(round_id)
        admin.close()
        status = report_msg.status
        participants = list(status.participants)
        k = len(participants)
        dist = np.asarray(report_msg.distances, dtype=np.float64)
        report = {
            "round_id": round_id,
            "rule": args.rule,
            "f": args.f,
            "m": args.m,
            "n": n,
            "dim": d,
            "participants": participants,
            "selected": list(status.selected),
            "selected_indices": list(report_msg.selected_indices),
            "distances": dist.reshape(k, k).tolist() if dist.size else None,
            "phases": {
                p.phase: {
                    "seconds": p.seconds,
                    "bytes_sent": p.bytes_sent,
                    "comm_rounds": p.comm_rounds,
                    "dealer_bytes": p.dealer_bytes,
                }
                for p in status.phases
            },
            "timing_s": {
                "submission_all_workers": t_sub - t_start,
                "round_after_last_submission": t_done - t_sub,
                "submission_latency_p50": float(np.median(latencies)),
            },
            "upload_bytes_per_worker": {"server_a": 32, "server_b": 8 * d},
        }
        np.save(args.out, agg.vector)
        Path(args.report).write_text(json.dumps(report, indent=2))
        print(f"round {round_id}: {args.rule}, f={args.f}, {k}/{n} participants")
        print(f"selected: {report['selected']}")
        head = np.array2string(agg.vector[:6], precision=5)
        print(f"aggregate[:6] = {head}  (d={d}) -> {args.out}")
        print(f"report -> {args.report}")
        if args.check:
            from secagg import reference

            Xf = X.astype(np.float64)
            enc = np.stack([encoding.encode(row, params) for row in Xf])
            exact = reference.aggregate_encoded(enc, args.rule, args.f, args.m)
            same = [ids[i] for i in exact.selected] == report["selected"]
            err = float(
                np.max(
                    np.abs(agg.vector - encoding.decode(exact.encoded_sum, params, exact.divisor))
                )
            )
            flt = reference.aggregate(Xf, args.rule, args.f, args.m)
            gap = np.abs(agg.vector - flt.aggregate)
            print(
                f"plaintext reference on the same encoded inputs: selection "
                f"{'identical' if same else 'DIFFERENT'}, max |secure - plaintext| = {err:.3g}"
            )
            res = encoding.resolution(params)
            line = (
                f"float64 plaintext reference: max |secure - plaintext| = {gap.max():.3g} "
                f"(fixed-point resolution {res:.3g})"
            )
            if args.rule == "bulyan" and gap.max() > res:
                line += (
                    f"; on {int((gap > res).sum())} of {d} coordinates two of Bulyan's "
                    "median windows tie within the resolution and rounding picks the other"
                )
            print(line)
            if not same or err != 0.0:
                return 1
        return 0
    finally:
        if dep is not None:
            dep.stop()


# ---------------------------------------------------------------------- certs
def cmd_certs(args: argparse.Namespace) -> int:
    from secagg import transport

    out = transport.make_dev_pki(Path(args.out), force=args.force)
    print(f"dev CA and certificates for server-a, server-b, dealer, admin in {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("server-a", "server-b", "dealer"):
        import importlib

        mod = importlib.import_module("servers." + argv[0].replace("-", "_"))
        mod.main(argv[1:])
        return 0
    p = argparse.ArgumentParser(
        prog="secagg", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="run A, B and the dealer locally")
    up.add_argument("--workdir", default=".secagg")
    up.add_argument("--workers", type=int, default=20)
    up.add_argument("--insecure", action="store_true", help="no TLS (tokens only)")
    up.set_defaults(fn=cmd_up)
    rd = sub.add_parser("round", help="run one aggregation round")
    rd.add_argument("--inputs", required=True, help=".npy, shape (workers, dim)")
    rd.add_argument("--f", type=int, required=True)
    rd.add_argument("--rule", choices=RULE_CHOICES, required=True)
    rd.add_argument("--m", type=int, default=None, help="multi-krum's m (default n-f-2)")
    rd.add_argument("--out", required=True)
    rd.add_argument("--report", required=True)
    rd.add_argument("--servers", default=None, help="A_ADDR,B_ADDR of a running `secagg up`")
    rd.add_argument("--admin", default=None, help="server A's admin (control) address")
    rd.add_argument("--workdir", default=".secagg")
    rd.add_argument("--scale", type=float, default=1.0, help="public fixed-point scale")
    rd.add_argument("--coord-bound", type=float, default=None)
    rd.add_argument("--norm-bound", type=float, default=None)
    rd.add_argument("--deadline-s", type=float, default=120.0)
    rd.add_argument("--round-id", default=None)
    rd.add_argument("--insecure", action="store_true")
    rd.add_argument(
        "--check",
        action="store_true",
        help="also compute the plaintext reference and print the difference",
    )
    rd.set_defaults(fn=cmd_round)
    ce = sub.add_parser("certs", help="make a dev CA and certificates")
    ce.add_argument("--out", default=".secagg/pki")
    ce.add_argument("--force", action="store_true")
    ce.set_defaults(fn=cmd_certs)
    args = p.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
