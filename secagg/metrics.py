"""Prometheus metrics of server A and server B, for operators (``prometheus-client``).

Conventions follow the two-aggregator services of the DAP world (Janus): one HTTP
endpoint per process on a port of its own (``--metrics-listen`` /
``SECAGG_METRICS_LISTEN``; nothing is served when unset), counters named ``*_total``,
durations in seconds as histograms, and every labelled counter created at 0 for each of
its (enumerated) label values, so that Prometheus sees the first increment as one.

What is counted (``deploy/README.md`` has the table and example queries):

* ``secagg_rounds_total{state}``: rounds that ended, by final state (done, failed);
* ``secagg_round_phase_duration_seconds{phase}``: wall time of each round state;
* ``secagg_mpc_phase_duration_seconds{phase}``: this party's 2PC time per phase;
* ``secagg_submissions_total{result}``: submissions accepted, retried (duplicate) or
  refused, by the round's reason (late, replayed, conflicting, ...);
* ``secagg_workers_excluded_total{reason}``: participants dropped, by reason;
* ``secagg_bytes_total{phase, link}``: bytes this server received from workers
  (collection) and sent or was dealt on the MPC links, per phase;
* ``secagg_mpc_session_builds_total{result}``, ``secagg_mpc_session_rebuilds_total``,
  ``secagg_mpc_session_broken_total``, ``secagg_mpc_session_up``;
* ``secagg_rpc_requests_total{method}``, ``secagg_rpc_errors_total{method, code}``;
* the client library's process metrics (CPU, resident memory, open files).

No metric carries a worker id, a share, a seed, a distance or any other data-dependent
value: labels come only from the enumerations in this module (an unexpected value is
counted under ``other``), and values are counts, byte counts of fixed-size messages
and durations.

Servers call the functions below (one line per hook); each is a no-op until
:func:`install` ran, so library users and tests that never serve metrics pay nothing.
Round events come from :mod:`secagg.rounds` through its ``EVENT_HOOKS``.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from secagg import rounds

__all__ = [
    "EXCLUSION_REASONS",
    "LINKS",
    "MPC_PHASES",
    "ROUND_PHASES",
    "SUBMISSION_RESULTS",
    "Metrics",
    "current",
    "exclusion_reason",
    "install",
    "ingest_bytes",
    "mpc_session_broken",
    "mpc_session_built",
    "mpc_traffic",
    "parse",
    "parse_listen",
    "rpc_interceptor",
    "scrape",
    "serve",
    "submission_result",
    "uninstall",
    "value",
]

log = logging.getLogger("secagg.metrics")

#: Round states whose duration is observed (every non-terminal state).
ROUND_PHASES: tuple[str, ...] = tuple(s.value for s in rounds.RoundState if not s.terminal)
#: 2PC phases of :class:`secagg.mpc.MpcSession` (its ``Traffic`` keys).
MPC_PHASES: tuple[str, ...] = (
    "prepare",
    "validation",
    "distances",
    "selection",
    "reveal",
    "bulyan_coordinate",
)
#: Links a server moves bytes on: workers' uploads to it; what it sends to the other
#: server on the MPC links; what the dealer sends it.
LINKS: tuple[str, ...] = ("worker_to_server", "server_to_server", "dealer_to_server")
#: ``secagg_bytes_total``'s phases: the collection, then the 2PC phases.
BYTE_PHASES: tuple[str, ...] = ("collection", *MPC_PHASES)
_REFUSALS: Mapping[str, str] = {
    "UnknownWorker": "unknown_worker",
    "InvalidSubmission": "invalid",
    "ConflictingSubmission": "conflicting",
    "ReplayedSubmission": "replayed",
    "LateSubmission": "late",
    "RoundFailed": "round_failed",
    "StorageError": "storage_error",
    "UnknownRound": "unknown_round",
}
#: ``secagg_submissions_total``'s results.
SUBMISSION_RESULTS: tuple[str, ...] = ("accepted", "duplicate", *_REFUSALS.values(), "other")
#: ``secagg_workers_excluded_total``'s reasons.
EXCLUSION_REASONS: tuple[str, ...] = ("validation", "dropout_or_mismatch", "other")
_CODES: tuple[str, ...] = (
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
# seconds: a health probe (ms) up to a Bulyan reveal at d = 10^7 (minutes)
_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000
)  # fmt: skip


def _rpc_methods() -> tuple[str, ...]:
    """``Service/Method`` of every RPC a server may register (the label's values)."""
    from grpc_health.v1 import health_pb2

    from secagg.v1 import secagg_pb2

    out = [
        f"{svc.name}/{m.name}"
        for svc in secagg_pb2.DESCRIPTOR.services_by_name.values()
        for m in svc.methods
    ]
    out += [f"Health/{m.name}" for m in health_pb2.DESCRIPTOR.services_by_name["Health"].methods]
    return tuple(out)


def submission_result(outcome: str, error: str = "") -> str:
    """The ``result`` label of a :mod:`secagg.rounds` ``submission`` event."""
    if outcome in ("accepted", "duplicate"):
        return outcome
    return _REFUSALS.get(error, "other")


def exclusion_reason(reason: str) -> str:
    """The ``reason`` label for an ``excluded`` event's free-text reason."""
    if reason.startswith("failed input validation"):
        return "validation"
    if reason.startswith("dropped out"):
        return "dropout_or_mismatch"
    return "other"


@dataclass
class Metrics:
    """One process's metrics, in a registry of their own."""

    server: str
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.rounds = Counter(
            "secagg_rounds", "Rounds that ended, by final state.", ["state"], registry=r
        )
        self.round_phase = Histogram(
            "secagg_round_phase_duration_seconds",
            "Wall time a round spent in each state.",
            ["phase"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.mpc_phase = Histogram(
            "secagg_mpc_phase_duration_seconds",
            "This party's time in each 2PC phase of a finished round.",
            ["phase"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.submissions = Counter(
            "secagg_submissions",
            "Submissions taken by the round state machine, by result (accepted, "
            "duplicate retry, or the refusal's reason).",
            ["result"],
            registry=r,
        )
        self.excluded = Counter(
            "secagg_workers_excluded",
            "Workers left out of a round after submitting, by reason.",
            ["reason"],
            registry=r,
        )
        self.bytes = Counter(
            "secagg_bytes",
            "Bytes per round phase and link: received from workers (collection), sent to "
            "the other server and received from the dealer (2PC phases).",
            ["phase", "link"],
            registry=r,
        )
        self.builds = Counter(
            "secagg_mpc_session_builds",
            "Attempts to set up the MPC session with the other parties, by result.",
            ["result"],
            registry=r,
        )
        self.rebuilds = Counter(
            "secagg_mpc_session_rebuilds",
            "MPC sessions set up after the first one (after a failure or restart).",
            registry=r,
        )
        self.broken = Counter(
            "secagg_mpc_session_broken",
            "Times the MPC session was found broken (a 2PC step failed, a party died).",
            registry=r,
        )
        self.session_up = Gauge(
            "secagg_mpc_session_up", "1 while this party has a working MPC session.", registry=r
        )
        self.requests = Counter(
            "secagg_rpc_requests", "gRPC calls received, by method.", ["method"], registry=r
        )
        self.rpc_errors = Counter(
            "secagg_rpc_errors",
            "gRPC calls answered with an error, by method and status code.",
            ["method", "code"],
            registry=r,
        )
        # every labelled series at 0 from the start (Janus's convention)
        for s in ("done", "failed"):
            self.rounds.labels(s)
        for p in ROUND_PHASES:
            self.round_phase.labels(p)
        for p in MPC_PHASES:
            self.mpc_phase.labels(p)
        for res in SUBMISSION_RESULTS:
            self.submissions.labels(res)
        for why in EXCLUSION_REASONS:
            self.excluded.labels(why)
        for p in BYTE_PHASES:
            for link in LINKS:
                if (p == "collection") == (link == "worker_to_server"):
                    self.bytes.labels(p, link)
        for res in ("ok", "failed"):
            self.builds.labels(res)
        self.methods = _rpc_methods()
        for m in self.methods:
            self.requests.labels(m)
            for code in _CODES:
                self.rpc_errors.labels(m, code)
        self._entered: dict[str, float] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ round events
    def on_round_event(self, event: str, fields: Mapping[str, Any]) -> None:
        """Subscriber of :data:`secagg.rounds.EVENT_HOOKS` (called under a round's lock:
        it only counts)."""
        rid = str(fields.get("round_id", ""))
        now = time.monotonic()
        if event in ("round_opened", "round_restored"):
            with self._lock:
                self._entered[rid] = now
        elif event == "round_state":
            frm, to = str(fields.get("from", "")), str(fields.get("to", ""))
            with self._lock:
                start = self._entered.pop(rid, None)
                if to not in ("done", "failed"):
                    self._entered[rid] = now
            if start is not None and frm in ROUND_PHASES:
                self.round_phase.labels(frm).observe(now - start)
            if to in ("done", "failed"):
                self.rounds.labels(to).inc()
        elif event == "submission":
            result = submission_result(str(fields.get("outcome", "")), str(fields.get("error", "")))
            self.submissions.labels(result).inc()
        elif event == "excluded":
            count = fields.get("count", 0)
            if isinstance(count, int) and count > 0:
                self.excluded.labels(exclusion_reason(str(fields.get("reason", "")))).inc(count)


_current: Metrics | None = None


def current() -> Metrics | None:
    """The installed metrics, or None."""
    return _current


def _hook(event: str, fields: dict[str, Any]) -> None:
    m = _current
    if m is None:
        return
    try:
        m.on_round_event(event, fields)
    except Exception:  # a metric must never break a round
        log.exception('{"event": "metrics_error"}')


def install(server: str) -> Metrics:
    """Create this process's metrics and subscribe to round events (idempotent)."""
    global _current
    if _current is None:
        _current = Metrics(server)
    if _hook not in rounds.EVENT_HOOKS:
        rounds.EVENT_HOOKS.append(_hook)
    return _current


def uninstall() -> None:
    """Forget the metrics and unsubscribe (tests)."""
    global _current
    _current = None
    if _hook in rounds.EVENT_HOOKS:
        rounds.EVENT_HOOKS.remove(_hook)


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) -> (host, port); SystemExit with advice if bad."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(
            f"--metrics-listen {listen!r}: expected HOST:PORT, e.g. 0.0.0.0:9464 "
            "(SECAGG_METRICS_LISTEN)"
        )
    return host.strip("[]") or "0.0.0.0", int(port)


def serve(listen: str | None, server: str, tls: Any = None) -> Metrics | None:
    """Install the metrics and serve ``/metrics`` on ``listen`` (None: install nothing).

    With ``tls`` (the server's :class:`secagg.transport.TlsConfig`) the endpoint speaks
    HTTPS with the server's own certificate, so a scraper checks whom it reads with the
    deployment's ``ca.pem``; without, plain HTTP (TLS-less development deployments).
    """
    if not listen:
        return None
    m = install(server)
    host, port = parse_listen(listen)
    kwargs: dict[str, Any] = {}
    if tls is not None and tls.cert is not None and tls.key is not None:
        kwargs = {"certfile": str(tls.cert), "keyfile": str(tls.key)}
    try:
        start_http_server(port, host, registry=m.registry, **kwargs)
    except OSError as exc:
        raise SystemExit(
            f"cannot serve metrics on {listen}: {exc}; choose a free port with "
            "--metrics-listen / SECAGG_METRICS_LISTEN"
        ) from None
    log.info(
        '{"event": "metrics_listening", "addr": "%s", "scheme": "%s"}',
        listen,
        "https" if kwargs else "http",
    )
    return m


# --------------------------------------------------------------- server hooks
def ingest_bytes(n: int) -> None:
    """A worker's accepted upload of ``n`` bytes (seed or share)."""
    if _current is not None:
        _current.bytes.labels("collection", "worker_to_server").inc(n)


def mpc_traffic(traffic: Mapping[str, Mapping[str, float]]) -> None:
    """A finished round's 2PC costs (``secagg.mpc.Traffic.as_dict()``)."""
    m = _current
    if m is None:
        return
    for name, secs in traffic.get("seconds", {}).items():
        phase = name if name in MPC_PHASES else "other"
        if phase == "other":
            continue  # not an enumerated phase: never a new label value
        m.mpc_phase.labels(phase).observe(float(secs))
        m.bytes.labels(phase, "server_to_server").inc(int(traffic["bytes_sent"].get(name, 0)))
        m.bytes.labels(phase, "dealer_to_server").inc(int(traffic["dealer_bytes"].get(name, 0)))


def mpc_session_built(ok: bool) -> None:
    """A session set-up ended; every working one after the process's first is a rebuild."""
    m = _current
    if m is None:
        return
    m.builds.labels("ok" if ok else "failed").inc()
    if ok:
        m.session_up.set(1)
        if m.builds.labels("ok")._value.get() > 1:
            m.rebuilds.inc()


def mpc_session_broken() -> None:
    """The session was found broken (it is rebuilt before the next 2PC)."""
    m = _current
    if m is not None:
        m.broken.inc()
        m.session_up.set(0)


# ------------------------------------------------------------- RPC interceptor
def _code_name(context: Any, exc: BaseException | None) -> str:
    import asyncio

    code = None
    try:
        code = context.code()
    except Exception:  # not every context implementation has it
        code = None
    name = getattr(code, "name", None) if code is not None else None
    if name and name != "OK":
        return name if name in _CODES else "UNKNOWN"
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    return "UNKNOWN" if exc is not None else ""


def rpc_interceptor() -> Any:
    """A ``grpc.aio.ServerInterceptor`` counting calls and errors by method and code."""
    import grpc

    class _Interceptor(grpc.aio.ServerInterceptor):
        async def intercept_service(
            self,
            continuation: Callable[[Any], Awaitable[Any]],
            details: Any,
        ) -> Any:
            handler = await continuation(details)
            m = _current
            if handler is None or m is None:
                return handler
            parts = details.method.rsplit("/", 2)
            method = f"{parts[-2].rsplit('.', 1)[-1]}/{parts[-1]}" if len(parts) >= 2 else ""
            if method not in m.methods:
                return handler  # unknown to the contract: never a new label value
            return _wrap(handler, m, method)

    return _Interceptor()


def _wrap(handler: Any, m: Metrics, method: str) -> Any:
    def done(context: Any, exc: BaseException | None) -> None:
        code = _code_name(context, exc)
        if code:
            m.rpc_errors.labels(method, code).inc()

    if handler.unary_unary is not None or handler.stream_unary is not None:
        attr = "unary_unary" if handler.unary_unary is not None else "stream_unary"
        inner = getattr(handler, attr)

        async def call(request: Any, context: Any) -> Any:
            m.requests.labels(method).inc()
            try:
                out = await inner(request, context)
            except BaseException as exc:
                done(context, exc)
                raise
            done(context, None)
            return out

        return handler._replace(**{attr: call})
    attr = "unary_stream" if handler.unary_stream is not None else "stream_stream"
    inner = getattr(handler, attr)
    if not inspect.isasyncgenfunction(inner):
        return handler  # a coroutine writing with context.write: left uncounted

    async def stream(request: Any, context: Any) -> Any:
        m.requests.labels(method).inc()
        try:
            async for item in inner(request, context):
                yield item
        except BaseException as exc:
            done(context, exc)
            raise
        done(context, None)

    return handler._replace(**{attr: stream})


# ------------------------------------------------------------------- reading
def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Exposition text -> {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def scrape(url: str, ca_file: str | None = None, timeout_s: float = 10.0) -> str:
    """GET a ``/metrics`` endpoint (HTTPS checked against ``ca_file``); its text."""
    import ssl
    import urllib.request

    ctx = ssl.create_default_context(cafile=ca_file) if url.startswith("https") else None
    with urllib.request.urlopen(url, timeout=timeout_s, context=ctx) as resp:  # noqa: S310
        return resp.read().decode("utf-8")


def value(
    samples: Mapping[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """One sample's value from :func:`parse`'s output (KeyError if absent)."""
    return samples[(name, tuple(sorted(labels.items())))]
