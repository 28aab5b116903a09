"""Server B's ingest rate: concurrent share uploads next to a raw gRPC stream of the same bytes.

Run from the repository root::

    .venv/bin/python -m bench.bench_ingest [--workers 20,100] [--d 1000000] [--reps 3]
        [--rule mean] [--json out.json]

One :class:`servers.launcher.LocalDeployment` as in production (A, B and the dealer as
separate processes on loopback, TLS on the worker port, durable state: every receipt
leaves B only after its share is fsynced), and in the same run a *raw sink*: a separate
process serving the same RPC (``secagg.v1.Worker/SubmitShare``) with B's certificate and
B's gRPC server options, which reads the request stream as raw bytes and does nothing
with them. Both are fed the very same pre-built ``ShareChunk`` messages by the same
client code: ``N`` threads, each with its own TLS channel, released at once. So the raw
figure is what gRPC + TLS + the client cost on this machine, and the ratio says how much
B's own work (parsing, reassembly, hashing, the durable write, the receipt) takes away.

Per size: the median over ``--reps`` of the aggregate rate (N·d·8 bytes / wall time from
release to the last receipt), raw and ingest alternating within each repetition. The
round used for each ingest repetition gets no seeds on A, so after its deadline it fails
and B erases its shares; the next repetition waits for that erasure to end (B's WAL
emptied), so that it does not measure the previous one's clean-up.

``--rule mean`` (the default) keeps A's input-independent 2PC preparation (which starts
when a distance-rule round opens) out of the measurement; ``--rule multi-krum`` includes
it. Not a test: timings depend on the machine; all processes share its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from clients.admin import AdminClient
from secagg import transport
from secagg.cluster import free_port
from secagg.rounds import RoundConfig, RoundState
from secagg.v1 import secagg_pb2 as pb
from secagg.v1 import secagg_pb2_grpc as pbg
from servers.launcher import LocalDeployment

METHOD = "/secagg.v1.Worker/SubmitShare"


def _progress(msg: str) -> None:
    print(f"[bench_ingest {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ raw sink
def _sink_main(addr: str, pki: str, conn: Any) -> None:
    """A gRPC server with B's TLS and options whose SubmitShare only reads bytes."""

    async def main() -> None:
        server = grpc.aio.server(options=transport.server_options())

        async def submit(request_iterator: Any, context: Any) -> bytes:
            n = 0
            async for raw in request_iterator:
                n += len(raw)
            return b""  # an empty Receipt

        handler = grpc.stream_unary_rpc_method_handler(submit)  # raw bytes both ways
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("secagg.v1.Worker", {"SubmitShare": handler}),)
        )
        tls = transport.TlsConfig.from_pki(pki, "server-b")
        server.add_secure_port(addr, tls.server_credentials(require_client_auth=False))
        await server.start()
        conn.send("ready")
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told
        await server.stop(1)

    asyncio.run(main())


class RawSink:
    def __init__(self, pki: Path) -> None:
        self.addr = f"127.0.0.1:{free_port()}"
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_sink_main, args=(self.addr, str(pki), child))
        self._proc.start()
        if not self._conn.poll(60) or self._conn.recv() != "ready":
            raise RuntimeError("the raw sink did not start")

    def close(self) -> None:
        self._conn.send("stop")
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()


# -------------------------------------------------------------------- client
def _fire(
    target: str,
    tls: transport.TlsConfig | None,
    streams: list[list[pb.ShareChunk]],
    metadata: list[tuple[tuple[str, str], ...]],
) -> float:
    """Send every stream at once, one thread and channel each; wall seconds to the last
    reply. Raises if any upload failed."""
    n = len(streams)
    errors: list[str] = []
    start = threading.Barrier(n + 1)
    done = [0.0] * n

    def one(i: int) -> None:
        with transport.make_channel(target, tls) as ch:
            stub = pbg.WorkerStub(ch)
            # connect (TLS handshake) before the clock: a worker's channel is warm
            grpc.channel_ready_future(ch).result(timeout=30)
            start.wait()
            try:
                stub.SubmitShare(iter(streams[i]), metadata=metadata[i], timeout=600)
            except Exception as exc:  # counted and reported, never hidden
                errors.append(f"{i}: {exc}")
            done[i] = time.perf_counter()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} uploads failed, e.g. {errors[0][:300]}")
    _progress(
        f"  {target}: first receipt at {min(done) - t0:.2f} s, median "
        f"{statistics.median(done) - t0:.2f} s, last {max(done) - t0:.2f} s"
    )
    return max(done) - t0


def _streams(rid: str, ids: list[str], shares: list[np.ndarray]) -> list[list[pb.ShareChunk]]:
    return [
        list(transport.share_chunk_messages(rid, w, uuid.uuid4().hex, s))
        for w, s in zip(ids, shares, strict=True)
    ]


def _wal_bytes(dep: LocalDeployment) -> int:
    p = dep.workdir / "state" / "server-b" / "server-b.db-wal"
    return p.stat().st_size if p.exists() else 0


def _wait_round_over(dep: LocalDeployment, rid: str, limit_s: float = 300.0) -> None:
    """Until B's round is terminal and its shares are erased (the WAL emptied)."""
    deadline = time.monotonic() + limit_s
    with transport.make_channel(dep.addr_b, dep.worker_tls()) as ch:
        stub = pbg.WorkerStub(ch)
        wid = dep.worker_ids[0]
        md = transport.worker_metadata(wid, dep.tokens[wid])
        while time.monotonic() < deadline:
            st = stub.GetRoundStatus(pb.RoundRef(round_id=rid), metadata=md, timeout=10)
            if RoundState.from_proto(st.state).terminal and _wal_bytes(dep) == 0:
                return
            time.sleep(0.2)
    raise TimeoutError(f"round {rid} not over on B after {limit_s} s")


def _disk_floor(folder: Path, shares: list[np.ndarray]) -> float:
    """Seconds to write and fsync every share, one after another, on the filesystem of
    B's state directory: the floor of any ingest that fsyncs each share before its
    receipt (B's SQLite store writes them one transaction at a time)."""
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i, x in enumerate(shares):
        fd = os.open(folder / f"floor-{i}", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            os.write(fd, memoryview(x).cast("B"))
            os.fsync(fd)
        finally:
            os.close(fd)
    took = time.perf_counter() - t0
    for i in range(len(shares)):
        (folder / f"floor-{i}").unlink()
    return took


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(x) for x in args.workers.split(",")]
    ids = [f"w{i:03d}" for i in range(max(sizes))]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="secagg-bench-ingest-"))
    dep = LocalDeployment(work, ids, tls=True, mpc_timeout_s=300, persist=True)
    _progress(f"starting A, B and the dealer in {work} (TLS, durable state)")
    dep.start()
    sink = RawSink(dep.pki)
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {
        "d": args.d,
        "reps": args.reps,
        "rule": args.rule,
        "nproc": os.cpu_count(),
        "sizes": {},
    }
    try:
        for n in sizes:
            shares = [rng.integers(-(2**63), 2**63 - 1, size=args.d, dtype=np.int64)
                      for _ in range(n)]  # fmt: skip
            md = [transport.worker_metadata(w, dep.tokens[w]) for w in ids[:n]]
            raw_s, ingest_s, disk_s = [], [], []
            for rep in range(args.reps):
                for x in shares:  # a new payload each time: B refuses replayed shares
                    x[0] += 1
                # the raw sink first, then B, each with streams built before the clock
                raw_s.append(
                    _fire(sink.addr, dep.worker_tls(), _streams("raw", ids[:n], shares), md)
                )
                rid = f"ingest-{uuid.uuid4().hex[:8]}"
                # long enough at 20 MB/s; the round then fails (no seeds) and is erased
                deadline_s = args.deadline_s + n * args.d * 8 / 20e6
                cfg = RoundConfig(
                    round_id=rid,
                    n_expected=n,
                    f=1 if args.rule != "mean" else 0,
                    rule=args.rule,
                    dim=args.d,
                    scale=1.0,
                    coord_bound=1.0,
                    norm_bound=100.0,
                    deadline_unix_ms=int((time.time() + deadline_s) * 1000),
                )
                streams = _streams(rid, ids[:n], shares)
                with AdminClient(dep.control_a, dep.tls_for("admin")) as adm:
                    adm.open_round(cfg)
                ingest_s.append(_fire(dep.addr_b, dep.worker_tls(), streams, md))
                del streams
                disk_s.append(_disk_floor(work / "disk-floor", shares))
                mb = n * args.d * 8 / 1e6
                _progress(
                    f"n={n} rep {rep + 1}/{args.reps}: raw {mb / raw_s[-1]:.0f} MB/s, "
                    f"B ingest {mb / ingest_s[-1]:.0f} MB/s, disk floor {mb / disk_s[-1]:.0f} MB/s"
                )
                _wait_round_over(dep, rid, limit_s=deadline_s + 300)
            total = n * args.d * 8
            raw_med, ing_med = statistics.median(raw_s), statistics.median(ingest_s)
            out["sizes"][str(n)] = {
                "workers": n,
                "bytes": total,
                "raw_s": raw_s,
                "ingest_s": ingest_s,
                "raw_mb_s": total / raw_med / 1e6,
                "ingest_mb_s": total / ing_med / 1e6,
                "ratio": raw_med / ing_med,
                "disk_s": disk_s,
                "disk_mb_s": total / statistics.median(disk_s) / 1e6,
            }
            del shares
    finally:
        sink.close()
        dep.stop()
    out["loadavg"] = os.getloadavg()
    return out


def format_table(out: dict[str, Any]) -> str:
    lines = [
        f"B ingest vs raw gRPC client streaming (same TLS, same messages, same run): "
        f"d={out['d']:,}, rule {out['rule']}, median of {out['reps']}, nproc={out['nproc']}",
        f"{'workers':>8} {'MB':>8} {'raw MB/s':>10} {'ingest MB/s':>12} {'ingest/raw':>11} "
        f"{'write+fsync MB/s':>17}",
    ]
    for s in out["sizes"].values():
        lines.append(
            f"{s['workers']:>8} {s['bytes'] / 1e6:>8.0f} {s['raw_mb_s']:>10.0f} "
            f"{s['ingest_mb_s']:>12.0f} {s['ratio']:>11.2f} {s['disk_mb_s']:>17.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="20,100", help="comma-separated concurrent uploads")
    p.add_argument("--d", type=int, default=1_000_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--rule", default="mean", choices=("mean", "krum", "multi-krum", "bulyan"))
    p.add_argument(
        "--deadline-s",
        type=float,
        default=20.0,
        help="each ingest round's deadline: this plus the time the bytes take at 20 MB/s",
    )
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    out = run(args)
    print(format_table(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
