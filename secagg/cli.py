"""``secagg``: run a local deployment, a round, or one of the processes.

Commands
--------
secagg up       server A, server B and the dealer on loopback (TLS on by default)
secagg round    one aggregation round: each row of --inputs is one worker, through the SDK
secagg certs    a dev CA and certificates for server-a, server-b, dealer, admin
secagg tokens   issue worker tokens: the hashed store both servers read, the plaintext file
secagg health   one gRPC health check (exit 0 when SERVING), for container probes
secagg relay    forward one TCP port to one target (the compose file's network edges)
secagg demo     federated training on digits under attack, secure next to plaintext
secagg server-a | server-b | dealer   one process, for real deployments (see deploy/)
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
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
    from secagg import transport
    from servers.launcher import LocalDeployment

    workdir = Path(args.workdir)
    ids = [f"worker-{i:03d}" for i in range(args.workers)]
    dep = LocalDeployment(workdir, ids, tls=not args.insecure)
    plain = workdir / "worker-tokens.plain.json"
    if _reuse_workdir(dep, plain):
        _progress(f"reusing the worker tokens, ports and credentials in {workdir}")
    # A supervisor: SIGTERM or SIGINT stops the children and waits for them (never
    # leaves them to init), a child that dies is restarted (durable state makes that
    # safe). The handlers go in first: a signal during start-up stops cleanly too.
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        _progress(f"starting server A, server B and the dealer in {workdir} ...")
        dep.start()
        dep.save_ports()
        info = _describe(dep)
        _deployment_file(workdir).write_text(json.dumps(info, indent=2))
        transport.write_private(plain, json.dumps(dep.tokens, indent=2))
        print(json.dumps(info, indent=2), flush=True)
        _progress(
            f"up. worker tokens: {plain} (keep secret). A process that exits is restarted; "
            "Ctrl-C (or SIGTERM) stops all three."
        )
        return dep.supervise(stop, _progress)
    finally:
        _progress("stopping server A, server B and the dealer ...")
        dep.stop()


def _reuse_workdir(dep, plain: Path) -> bool:  # noqa: ANN001
    """A re-run on the same workdir keeps its worker tokens and ports (issue #17)."""
    try:
        tokens = json.loads(plain.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(tokens, dict):
        return False
    if sorted(tokens) != sorted(dep.worker_ids):
        raise SystemExit(
            f"{dep.workdir} holds tokens for {len(tokens)} workers, not {len(dep.worker_ids)}:"
            f" pass --workers {len(tokens)}, or use a new --workdir for new tokens"
        )
    return bool(dep.reuse(tokens))


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
def auto_scale(X: np.ndarray, target_norm: float = 64.0) -> float:
    """A power of two (exact in binary) bringing the largest row norm to <= target_norm.

    Input validation admits vectors up to about 113× the honest bound, so the bound
    after scaling must stay near 200 or below (secagg.validation); scaling up small
    gradients uses the 16 fractional bits fully.
    """
    top = float(np.max(np.linalg.norm(X, axis=1)))
    if not np.isfinite(top) or top == 0.0:
        return 1.0
    return float(2.0 ** np.floor(np.log2(target_norm / top)))


def _pair(value: str, option: str) -> tuple[str, str]:
    parts = [p.strip() for p in value.split(",")]
    if len(parts) != 2 or not all(parts):
        raise SystemExit(f"{option} takes two comma-separated values (server A's, B's): {value!r}")
    return parts[0], parts[1]


def _remote_credentials(
    args: argparse.Namespace, workdir: Path
) -> tuple[dict[str, str], bool, Path | None, str, str | None]:
    """(tokens, tls, pki dir, admin address, admin token) for ``round --servers``.

    Explicit options win; whatever is missing comes from the ``--workdir`` that
    ``secagg up`` wrote (deployment.json, worker-tokens.plain.json, admin-token), so
    the original ``--servers`` + ``--workdir`` use keeps working unchanged, and a
    deployment that ``secagg up`` did not start (docker compose, three machines) needs
    no workdir at all: ``--tls-dir``, ``--tokens`` and ``--admin``.
    """
    info: dict | None = None

    def deployment() -> dict:
        nonlocal info
        if info is None:
            path = _deployment_file(workdir)
            if not path.exists():
                raise SystemExit(
                    f"{path} not found: for a deployment not started by `secagg up`, pass "
                    "--tls-dir (or --insecure), --tokens and --admin"
                )
            info = json.loads(path.read_text())
        return info

    tokens_file = Path(args.tokens) if args.tokens else workdir / "worker-tokens.plain.json"
    try:
        tokens = json.loads(tokens_file.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot read worker tokens from {tokens_file}: {exc}") from None
    if args.tls_dir:
        tls, pki = True, Path(args.tls_dir)
    elif args.insecure:
        tls, pki = False, None
    else:
        tls = bool(deployment()["tls"])
        pki = Path(deployment()["pki"]) if tls else None
    admin_addr = args.admin or deployment()["admin"]
    admin_token = None
    if not tls:  # with TLS the admin certificate in the pki dir is the identity
        token_file = (
            Path(args.admin_token_file) if args.admin_token_file else workdir / "admin-token"
        )
        admin_token = token_file.read_text().strip()
    return tokens, tls, pki, admin_addr, admin_token


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
            addr_a, addr_b = _pair(args.servers, "--servers")
            tokens, tls, pki, admin_addr, admin_token = _remote_credentials(args, workdir)
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
        # names in the servers' certificates, when the addresses dialled differ (relays)
        names: tuple[str | None, str | None] = (
            _pair(args.tls_server_names, "--tls-server-names")
            if args.tls_server_names
            else (None, None)
        )
        scale = args.scale or auto_scale(X)
        coord = args.coord_bound or float(np.max(np.abs(X))) * 1.01 or 1.0
        norm = args.norm_bound or float(np.max(np.linalg.norm(X * scale, axis=1))) * 1.01 or 1.0
        norm = min(norm, encoding.MAX_NORM_BOUND * 0.999)
        round_id = args.round_id or f"round-{uuid.uuid4().hex[:12]}"
        config = RoundConfig(
            round_id=round_id,
            n_expected=n,
            f=args.f,
            rule=args.rule,
            m=args.m or 0,
            dim=d,
            scale=scale,
            coord_bound=coord * scale,
            norm_bound=norm,
            quorum=0,
            skip_validation=args.skip_validation,
            deadline_unix_ms=int((time.time() + args.deadline_s) * 1000),
        )
        admin = AdminClient(admin_addr, admin_tls, token=admin_token, server_name=names[0])
        admin.open_round(config)
        _progress(f"round {round_id} open: n={n}, d={d}, rule={args.rule}, f={args.f}")
        params = encoding.EncodingParams(scale=scale, coord_bound=coord * scale, norm_bound=norm)

        def submit(i: int) -> float:
            t0 = time.perf_counter()
            with SecAggClient(
                addr_a, addr_b, ids[i], tokens[ids[i]], tls=worker_tls, server_names=names
            ) as c:
                c.submit(round_id, X[i].astype(np.float64), params)
            return time.perf_counter() - t0

        latencies = []
        with ThreadPoolExecutor(max_workers=min(8, n)) as pool:
            for k, lat in enumerate(pool.map(submit, range(n)), 1):
                latencies.append(lat)
                if k % max(1, n // 10) == 0 or k == n:
                    _progress(f"submitted {k}/{n} workers")
        t_sub = time.perf_counter()
        with SecAggClient(
            addr_a, addr_b, ids[0], tokens[ids[0]], tls=worker_tls, server_names=names
        ) as c:
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


# --------------------------------------------------------------------- tokens
def _write_secret_json(path: Path, data: dict[str, str]) -> None:
    """The file holds bearer tokens: created 0600 (:func:`secagg.transport.write_private`)."""
    from secagg import transport

    path.parent.mkdir(parents=True, exist_ok=True)
    transport.write_private(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def cmd_tokens(args: argparse.Namespace) -> int:
    from secagg import transport

    store, plain = Path(args.store), Path(args.plain)
    if args.if_absent and store.exists():
        # provisioning runs at every `docker compose up`: re-issuing would lock out
        # every worker holding the current tokens, so rotation must be asked for
        _progress(f"{store} exists; tokens unchanged (rotate: run without --if-absent)")
        return 0
    if args.ids:
        ids = [i.strip() for i in args.ids.split(",") if i.strip()]
    else:
        ids = [f"{args.prefix}{i:03d}" for i in range(args.workers)]
    if not ids:
        raise SystemExit("no worker ids: pass --workers N (N >= 1) or --ids ID,ID,...")
    try:
        tokens = transport.issue_tokens(ids, store)  # keeps other workers' hashes
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    merged = json.loads(plain.read_text()) if plain.exists() else {}
    merged.update(tokens)
    _write_secret_json(plain, merged)
    print(
        f"{len(ids)} worker tokens issued: hashes in {store} (give it to both servers), "
        f"tokens in {plain} (hand each to its worker over a secure channel)"
    )
    return 0


# ---------------------------------------------------------------------- certs
def cmd_certs(args: argparse.Namespace) -> int:
    from secagg import transport

    out = transport.make_dev_pki(Path(args.out), force=args.force)
    print(f"dev CA and certificates for server-a, server-b, dealer, admin in {out}")
    return 0


# ----------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    # examples/ is not an installed package: import it from the source checkout
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        from examples import train_digits
    except ImportError as exc:
        raise SystemExit(
            f"secagg demo needs the source checkout's examples/ and scikit-learn "
            f"(requirements/dev.txt): {exc}"
        ) from None
    forwarded = ["--rounds", str(args.rounds), "--out", args.out]
    return train_digits.main(forwarded + (["--insecure"] if args.insecure else []))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("server-a", "server-b", "dealer", "health", "relay"):
        import importlib

        mod = importlib.import_module("servers." + argv[0].replace("-", "_"))
        # health's exit status is its answer; the servers return None (0)
        return int(mod.main(argv[1:]) or 0)
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
    rd.add_argument(
        "--tls-dir",
        default=None,
        help="with --servers: ca.pem plus the operator's admin.pem/admin.key "
        "(default: the pki of the --workdir deployment)",
    )
    rd.add_argument(
        "--tokens",
        default=None,
        help="with --servers: JSON worker id -> token (default: WORKDIR/worker-tokens.plain.json)",
    )
    rd.add_argument(
        "--admin-token-file",
        default=None,
        help="with --servers and TLS off: the operator's token (default: WORKDIR/admin-token)",
    )
    rd.add_argument(
        "--tls-server-names",
        default=None,
        help="A_NAME,B_NAME expected in the servers' certificates when the --servers "
        "hosts differ (relays, IP addresses)",
    )
    rd.add_argument("--workdir", default=".secagg")
    rd.add_argument(
        "--scale",
        type=float,
        default=None,
        help="public fixed-point scale (default: the power of two that brings the "
        "largest row norm to at most 64, which input validation's headroom allows)",
    )
    rd.add_argument(
        "--skip-validation",
        action="store_true",
        help="no 2PC input validation (only to demonstrate the attack it stops)",
    )
    rd.add_argument("--coord-bound", type=float, default=None)
    rd.add_argument("--norm-bound", type=float, default=None)
    rd.add_argument("--deadline-s", type=float, default=120.0)
    rd.add_argument("--round-id", default=None)
    rd.add_argument(
        "--insecure",
        action="store_true",
        help="no TLS (tokens only); with --servers it overrides deployment.json",
    )
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
    tk = sub.add_parser("tokens", help="issue worker tokens (hashed store + plaintext file)")
    who = tk.add_mutually_exclusive_group(required=True)
    who.add_argument("--workers", type=int, help="issue PREFIX000 ... PREFIX{N-1}")
    who.add_argument("--ids", help="comma-separated worker ids (re-issue = rotate)")
    tk.add_argument("--prefix", default="worker-")
    tk.add_argument("--store", required=True, help="hashed store both servers read")
    tk.add_argument("--plain", required=True, help="id -> token JSON, for the workers")
    tk.add_argument(
        "--if-absent", action="store_true", help="do nothing when --store already exists"
    )
    tk.set_defaults(fn=cmd_tokens)
    dm = sub.add_parser(
        "demo",
        help="train on digits through real servers under attack (short grid; the full "
        "table: python -m examples.train_digits --full)",
    )
    dm.add_argument("--rounds", type=int, default=10)
    dm.add_argument("--out", default="out/demo")
    dm.add_argument("--insecure", action="store_true", help="no TLS (tokens only)")
    dm.set_defaults(fn=cmd_demo)
    from secagg.dp.cli import add_subcommand as add_dp

    add_dp(sub)
    args = p.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
