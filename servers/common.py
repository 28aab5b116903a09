"""What server A, server B and the dealer share: settings, logging, gRPC plumbing, auth."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from secagg import metrics, transport
from secagg.rounds import RoundError
from secagg.store import StateDirError

SERVICE_NAMES = ("secagg.v1.Worker", "secagg.v1.Admin", "secagg.v1.Peer")


class JsonFormatter(logging.Formatter):
    """One JSON object per line. Callers never pass shares, seeds or tokens."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
        }
        msg = record.getMessage()
        try:  # secagg.rounds already logs JSON objects: merge rather than nest
            parsed = json.loads(msg)
            if isinstance(parsed, dict):
                out.update(parsed)
            else:
                out["msg"] = msg
        except ValueError:
            out["msg"] = msg
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def tune_memory() -> bool:
    """Make glibc give share-sized blocks back to the OS when they are freed.

    A server allocates and frees many 8 MB blocks per round (each upload's buffer, its
    SQLite blob, the payload). glibc's mmap threshold adapts upwards after the first
    such free, so later ones come from per-thread heaps that keep freed memory, and
    server B's peak grew to 4.0x the share matrix over its idle footprint. Fixing the
    threshold at 6 MiB (blocks that large are mapped and unmapped; the 4 MiB MPC link
    buffers stay on the heap and are reused) and two arenas brought it to 2.9x
    (bench/bench_round.py). A fixed threshold also fixes the heap's trim threshold at
    128 KiB, which returned the link buffers to the OS after every phase and faulted
    them in again (+0.2 s on the distance phase): it is raised to 64 MiB. Linux/glibc
    only; a no-op elsewhere. Returns whether it applied. ``MALLOC_MMAP_THRESHOLD_``,
    ``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_ARENA_MAX`` in the environment win.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    ok = True
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, 6 << 20)) and ok
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        ok = bool(libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)) and ok
    if "MALLOC_ARENA_MAX" not in os.environ:
        ok = bool(libc.mallopt(_M_ARENA_MAX, 2)) and ok
    return ok


def disable_core_dumps() -> bool:
    """No core files from this process: they would hold shares, seeds and mask keys.

    Sets both the soft and the hard ``RLIMIT_CORE`` to 0 (a hard limit of 0 cannot be
    raised again by this process or its children). Returns whether it applied (not on
    platforms without ``resource``).
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return False
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return True


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


@dataclass
class CommonSettings:
    listen: str
    control_listen: str | None
    mpc_addr: str
    mpc_port: int
    mpc_timeout_s: float
    tls: transport.TlsConfig | None
    peer_token: str | None
    log_level: str
    # where the server keeps its rounds and submissions across restarts (secagg.store);
    # None: in memory only, a restart loses open rounds
    state_dir: str | None = None
    # MPC links: "gloo" (plaintext torch.distributed) or "mtls" (secagg.mpc_link); with
    # mtls this party listens on mpc_listen and dials mpc_peers (party name -> host:port)
    mpc_transport: str = "gloo"
    mpc_listen: str | None = None
    mpc_peers: dict[str, str] | None = None


def add_common_args(p: argparse.ArgumentParser, default_listen: str) -> None:
    """Every flag also reads an environment variable (the compose file sets those)."""
    p.add_argument(
        "--listen",
        default=env("SECAGG_LISTEN", default_listen),
        help="worker-facing address (TLS with server authentication)",
    )
    p.add_argument(
        "--control-listen",
        default=env("SECAGG_CONTROL_LISTEN"),
        help="Peer/Admin address: mutual TLS required (only with --tls-dir)",
    )
    p.add_argument(
        "--mpc-addr",
        default=env("SECAGG_MPC_ADDR", "127.0.0.1"),
        help="host of server A's MPC rendezvous (torch.distributed store)",
    )
    p.add_argument("--mpc-port", type=int, default=int(env("SECAGG_MPC_PORT", "29500") or 29500))
    p.add_argument(
        "--mpc-timeout", type=float, default=float(env("SECAGG_MPC_TIMEOUT_S", "300") or 300)
    )
    p.add_argument(
        "--tls-dir",
        default=env("SECAGG_TLS_DIR"),
        help="directory with ca.pem, NAME.pem, NAME.key (secagg certs makes them)",
    )
    p.add_argument(
        "--peer-token-file",
        default=env("SECAGG_PEER_TOKEN_FILE"),
        help="shared secret A presents to B when TLS is off",
    )
    p.add_argument(
        "--mpc-transport",
        choices=("gloo", "mtls"),
        default=env("SECAGG_MPC_TRANSPORT"),
        help="MPC links: mtls (mutually authenticated TLS between the parties; needs "
        "--tls-dir, --mpc-listen and --mpc-peers) or gloo (plaintext torch.distributed, "
        "for one trusted host; the rendezvous flags apply). Default: mtls when --tls-dir "
        "is given, gloo otherwise",
    )
    p.add_argument(
        "--mpc-listen",
        default=env("SECAGG_MPC_LISTEN"),
        help="mtls: host:port this party accepts MPC links on (open only while a session "
        "is being set up)",
    )
    p.add_argument(
        "--mpc-peers",
        default=env("SECAGG_MPC_PEERS", ""),
        help="mtls: the other parties' MPC addresses, e.g. "
        "server-a=10.0.0.1:7100,server-b=10.0.0.2:7100,dealer=10.0.0.3:7100",
    )
    p.add_argument("--log-level", default=env("SECAGG_LOG_LEVEL", "INFO"))
    p.add_argument(
        "--metrics-listen",
        default=env("SECAGG_METRICS_LISTEN"),
        help="host:port of this server's Prometheus /metrics endpoint (HTTPS with its "
        "certificate when --tls-dir is given); unset: no metrics",
    )
    p.add_argument(
        "--state-dir",
        default=env("SECAGG_STATE_DIR"),
        help="directory for the durable round state (SQLite, fsynced before every "
        "receipt); a restarted server resumes its open rounds from it. Unset: memory only",
    )


def common_settings(args: argparse.Namespace, name: str) -> CommonSettings:
    tls = None
    if args.tls_dir:
        d = Path(args.tls_dir)
        tls = transport.TlsConfig(
            ca_cert=d / "ca.pem", cert=d / f"{name}.pem", key=d / f"{name}.key"
        )
    token = None
    if args.peer_token_file:
        token = Path(args.peer_token_file).read_text().strip()
    return CommonSettings(
        listen=args.listen,
        control_listen=getattr(args, "control_listen", None),
        mpc_addr=args.mpc_addr,
        mpc_port=args.mpc_port,
        mpc_timeout_s=args.mpc_timeout,
        tls=tls,
        peer_token=token,
        log_level=args.log_level,
        state_dir=getattr(args, "state_dir", None),
        mpc_transport=_mpc_transport(args, tls),
        mpc_listen=getattr(args, "mpc_listen", None),
        mpc_peers=_mpc_peers(getattr(args, "mpc_peers", "") or ""),
    )


def _mpc_transport(args: argparse.Namespace, tls: transport.TlsConfig | None) -> str:
    # TLS on every link: with certificates, the MPC links use them unless told otherwise
    chosen = getattr(args, "mpc_transport", None) or ("mtls" if tls is not None else "gloo")
    where = getattr(args, "mpc_listen", None), getattr(args, "mpc_peers", "")
    if chosen == "mtls" and not all(where):
        raise SystemExit(
            "the MPC links use mutual TLS (the default with --tls-dir): give --mpc-listen "
            "HOST:PORT and --mpc-peers NAME=HOST:PORT,... (SECAGG_MPC_LISTEN / "
            "SECAGG_MPC_PEERS), or choose plaintext links on one trusted host with "
            "--mpc-transport gloo"
        )
    return chosen


def _mpc_peers(text: str) -> dict[str, str]:
    # the same grammar as secagg.mpc_link.parse_peers, without importing torch here
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, addr = item.partition("=")
        if not sep or not name or ":" not in addr:
            raise SystemExit(f"--mpc-peers: expected NAME=host:port items, got {item!r}")
        out[name] = addr
    return out


def mpc_endpoint(settings: CommonSettings, master_addr: str | None = None) -> Any:
    """The :class:`secagg.mpc.MpcEndpoint` for these settings (gloo or mtls)."""
    from secagg import mpc

    if settings.mpc_transport == "mtls" and settings.tls is None:
        raise SystemExit("--mpc-transport mtls needs --tls-dir (the parties' certificates)")
    return mpc.MpcEndpoint(
        settings.mpc_addr if master_addr is None else master_addr,
        settings.mpc_port,
        settings.mpc_timeout_s,
        transport=settings.mpc_transport,
        listen=settings.mpc_listen,
        peers=dict(settings.mpc_peers or {}),
        tls=settings.tls,
    )


def make_server(settings: CommonSettings) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    server = grpc.aio.server(
        options=transport.server_options(), interceptors=[metrics.rpc_interceptor()]
    )
    hs = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    if settings.tls is not None:
        # Workers authenticate by token on the worker port (server-auth TLS). Peer and
        # Admin callers must come through the control port, whose handshake demands a
        # client certificate from our CA; the RPCs then check its identity (CN).
        ports = [(settings.listen, settings.tls.server_credentials(require_client_auth=False))]
        if settings.control_listen:
            ports.append(
                (settings.control_listen, settings.tls.server_credentials(require_client_auth=True))
            )
        for addr, creds in ports:
            bind_port(addr, lambda a, c=creds: server.add_secure_port(a, c))
    else:
        for addr in filter(None, (settings.listen, settings.control_listen)):
            bind_port(addr, server.add_insecure_port)
    return server, hs


def bind_port(addr: str, add: Callable[[str], int]) -> int:
    """``add(addr)`` (a gRPC server's add_*_port), or exit with one line saying why.

    gRPC returns 0 or raises RuntimeError when the address is taken; with port reuse
    off (``transport.server_options``) that includes a second server on the same port.
    """
    try:
        port = add(addr)
    except RuntimeError:
        port = 0
    if port == 0:
        raise SystemExit(
            f"cannot listen on {addr}: the port is in use (another server already runs "
            "there?) or the address is not local; stop the other process or choose "
            "another address"
        )
    return port


@contextlib.contextmanager
def starting(name: str) -> Iterator[None]:
    """Start-up: turn a failure into one line saying what and what to do, no traceback.

    Wraps what a server does before it serves (reading its files, taking its state
    directory and ports). Anything else still gets a traceback: it is a bug.
    """
    try:
        yield
    except StateDirError as exc:
        raise SystemExit(f"{name} cannot start: {exc}") from None
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise SystemExit(
            f"{name} cannot start: {exc.strerror or exc}{where}: check the path given in "
            "its flags or environment and the file's permissions"
        ) from None
    except ValueError as exc:  # e.g. a token file that is not the expected JSON
        raise SystemExit(f"{name} cannot start: {exc}: fix its flags or files") from None


#: Each health servicer's open problems: what -> why (why it is NOT_SERVING).
_PROBLEMS: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()


async def report_health(hs: health.aio.HealthServicer, what: str, problem: str | None) -> None:
    """Record (``problem``) or clear (None) one reason for NOT_SERVING.

    A server is SERVING when nothing is wrong: its MPC session ("mpc"), its peer
    ("peer", server A's heartbeat of B) and its disk ("store"). Each change is logged
    with every reason, since the health protocol itself carries none.
    """
    problems = _PROBLEMS.setdefault(hs, {})
    before = dict(problems)
    if problem is None:
        problems.pop(what, None)
    else:
        problems[what] = problem
    status = (
        health_pb2.HealthCheckResponse.NOT_SERVING
        if problems
        else health_pb2.HealthCheckResponse.SERVING
    )
    if problems != before:
        logging.getLogger("secagg.health").info(
            json.dumps({"event": "health", "serving": not problems, "reasons": problems})
        )
    for name in ("", *SERVICE_NAMES):
        await hs.set(name, status)


async def set_health(hs: health.aio.HealthServicer, serving: bool) -> None:
    """The MPC session is up (or not): see :func:`report_health`."""
    await report_health(hs, "mpc", None if serving else "the MPC session is not up")


async def watch_store(
    hs: health.aio.HealthServicer, store: Any, where: str, interval_s: float = 2.0
) -> None:
    """Report NOT_SERVING while the state store cannot write (full or failed disk).

    Every ``interval_s`` one small durable write (``store.probe_write``), off the
    event loop; a server that cannot persist would refuse every submission.
    """
    while True:
        try:
            await asyncio.to_thread(store.probe_write)
        except Exception as exc:  # sqlite3.Error, OSError: the disk said no
            await report_health(
                hs,
                "store",
                f"cannot write its state in {where} ({type(exc).__name__}: {exc}): free or "
                "fix the disk; submissions are refused meanwhile",
            )
        else:
            await report_health(hs, "store", None)
        await asyncio.sleep(interval_s)


def client_channel(
    target: str, tls: transport.TlsConfig | None, server_name: str | None = None
) -> grpc.aio.Channel:
    """A channel to another party; with TLS its certificate must name ``server_name``
    (pinned, not just the host dialled: every dev certificate carries localhost)."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=transport.channel_options())
    options = transport.channel_options()
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(target, tls.channel_credentials(), options=options)


async def abort_for(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    """Answer a refused request with its precise status and a message that helps."""
    if isinstance(exc, RoundError):
        await context.abort(grpc.StatusCode[exc.code], exc.message)
    if isinstance(exc, transport.ProtocolError):
        await context.abort(exc.code, exc.message)
    if isinstance(exc, ValueError):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    raise exc


def metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


async def authenticate_worker(
    context: grpc.aio.ServicerContext, tokens: transport.TokenStore, claimed: str | None = None
) -> str:
    """The worker id the call's token proves; aborts UNAUTHENTICATED otherwise, and
    PERMISSION_DENIED when the message names another worker than the token's."""
    md = metadata(context)
    wid = md.get("x-secagg-worker", "")
    auth = md.get("authorization", "")
    token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
    if not wid or not tokens.verify(wid, token):
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "unknown worker or wrong token: check x-secagg-worker and "
            "the bearer token your operator issued",
        )
    if claimed is not None and claimed != wid:
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"authenticated as {wid!r} but submitting for {claimed!r}",
        )
    return wid


#: The operator's identity (mTLS CN on the control port, or the admin token with TLS off).
OPERATOR = "admin"


async def authenticate_reader(
    context: grpc.aio.ServicerContext,
    tokens: transport.TokenStore,
    tls_on: bool,
    admin_token: str | None,
) -> str:
    """Who may read a round (Worker.GetRoundStatus / GetAggregate): a registered worker
    (its token) or the operator. Returns the worker id, or :data:`OPERATOR`.

    The operator is recognised by its client certificate (CN "admin", control port) when
    TLS is on, or by the admin token when it is off; anyone else must present a worker
    token and is refused UNAUTHENTICATED otherwise. Nothing here is readable anonymously.
    """
    if tls_on:
        if transport.peer_identity(context) == OPERATOR:
            return OPERATOR
    elif admin_token:
        import hmac

        got = metadata(context).get("authorization", "")
        if hmac.compare_digest(got.encode(), f"Bearer {admin_token}".encode()):
            return OPERATOR
    return await authenticate_worker(context, tokens)


def status_for(status: Any, reader: str) -> Any:
    """The part of a ``RoundStatus`` that ``reader`` may see (SECURITY.md).

    The operator sees everything. A worker sees the round's configuration, state,
    counts, participants and failure reason, the selection as a sorted set (not the
    rule's pick order), only its own exclusion (with the reason) and no phase timings.
    """
    if reader == OPERATOR:
        return status
    out = type(status)()
    out.CopyFrom(status)
    del out.phases[:]
    own = [e for e in status.excluded if e.worker_id == reader]
    del out.excluded[:]
    out.excluded.extend(own)
    sel = sorted(out.selected)
    del out.selected[:]
    out.selected.extend(sel)
    return out


async def serve_until_terminated(
    server: grpc.aio.Server, hs: health.aio.HealthServicer, svc: Any, name: str, listen: str
) -> None:
    """Listen (NOT_SERVING), join the MPC session, report SERVING, run until stopped."""
    await set_health(hs, False)
    await server.start()
    logging.getLogger(f"secagg.{name}").info(
        '{"event": "listening", "server": "%s", "addr": "%s"}', name, listen
    )
    store = getattr(svc, "store", None)
    watcher = None
    if store is not None:
        watcher = asyncio.create_task(watch_store(hs, store, str(store.path.parent)))
    try:
        await svc.start_mpc()
        await set_health(hs, True)
        await server.wait_for_termination()
    finally:
        if watcher is not None:
            watcher.cancel()
        await svc.close()
        await server.stop(2)


async def require_identity(
    context: grpc.aio.ServicerContext,
    expected: str,
    tls_on: bool,
    token: str | None,
) -> None:
    """Peer/Admin RPCs: the mTLS certificate's CN must be ``expected``; with TLS off,
    the shared token must be presented. Anything else is PERMISSION_DENIED."""
    if tls_on:
        who = transport.peer_identity(context)
        if who != expected:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this RPC is for {expected!r} only (client certificate identity "
                f"{who!r}); workers use the Worker service",
            )
        return
    md = metadata(context)
    got = md.get("authorization", "")
    import hmac

    if not token or not hmac.compare_digest(got, f"Bearer {token}"):
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"this RPC is for {expected!r} only: present its token (TLS is off)",
        )


def now_ms() -> int:
    return int(time.time() * 1000)


# ------------------------------------------------------------ service registration
class _Malformed:
    """Stands in for a request whose bytes did not parse, so the handler can answer."""

    def __init__(self, type_name: str, error: Exception) -> None:
        self.message = (
            f"malformed {type_name} message ({type(error).__name__}): the bytes are not a "
            "valid protobuf of this RPC's request type; use the stubs generated from "
            "proto/secagg/v1/secagg.proto"
        )


def _safe_deserializer(cls: Any):  # noqa: ANN202
    def parse(raw: bytes) -> Any:
        try:
            return cls.FromString(raw)
        except Exception as exc:  # DecodeError, RecursionError on hostile nesting, ...
            return _Malformed(cls.DESCRIPTOR.full_name, exc)

    return parse


def add_service(server: grpc.aio.Server, servicer: Any, service: str) -> None:
    """Register ``servicer`` for ``secagg.v1.<service>`` with requests parsed by us.

    The generated ``add_*Servicer_to_server`` lets gRPC parse request bytes, and a
    parse failure then surfaces as UNKNOWN with no explanation. Here a malformed
    request reaches the handler as :class:`_Malformed` and is answered with
    INVALID_ARGUMENT and a message saying what is wrong.
    """
    from google.protobuf import message_factory

    from secagg.v1 import secagg_pb2

    desc = secagg_pb2.DESCRIPTOR.services_by_name[service]
    handlers = {}
    for m in desc.methods:
        req_cls = message_factory.GetMessageClass(m.input_type)
        resp_cls = message_factory.GetMessageClass(m.output_type)
        behaviour = getattr(servicer, m.name)
        kwargs = {
            "request_deserializer": _safe_deserializer(req_cls),
            "response_serializer": resp_cls.SerializeToString,
        }
        if m.client_streaming and not m.server_streaming:
            handlers[m.name] = grpc.stream_unary_rpc_method_handler(
                _checked_stream(behaviour), **kwargs
            )
        elif m.server_streaming and not m.client_streaming:
            handlers[m.name] = grpc.unary_stream_rpc_method_handler(
                _checked_unary_stream(behaviour), **kwargs
            )
        elif not m.client_streaming and not m.server_streaming:
            handlers[m.name] = grpc.unary_unary_rpc_method_handler(
                _checked_unary(behaviour), **kwargs
            )
        else:  # pragma: no cover - the contract has no bidi RPC
            raise NotImplementedError(m.full_name)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(desc.full_name, handlers),)
    )


def _checked_unary(fn):  # noqa: ANN001, ANN202
    async def call(request, context):  # noqa: ANN001, ANN202
        if isinstance(request, _Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await fn(request, context)

    return call


def _checked_unary_stream(fn):  # noqa: ANN001, ANN202
    async def call(request, context):  # noqa: ANN001, ANN202
        if isinstance(request, _Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        async for item in fn(request, context):
            yield item

    return call


def _checked_stream(fn):  # noqa: ANN001, ANN202
    async def call(request_iterator, context):  # noqa: ANN001, ANN202
        async def checked():  # noqa: ANN202
            async for item in request_iterator:
                if isinstance(item, _Malformed):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, item.message)
                yield item

        return await fn(checked(), context)

    return call
