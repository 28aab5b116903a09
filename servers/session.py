"""MPC session epochs: build, watch and rebuild the CrypTen session across failures.

Who restarts what
-----------------
The three parties' processes are restarted by whatever runs them (Docker, systemd,
``LocalDeployment`` in tests); this module makes a restarted or surviving party find
its way back into a working session. Server A decides, because it hosts the session
(the rendezvous store, or the first TLS listener) and coordinates every round:

* **Server A** runs a :class:`SessionKeeper`. Whenever it has no healthy session it
  builds one under a fresh *epoch* (``<A's incarnation>-<counter>``, unique across A's
  restarts): it tells B to leave its old session (``Peer.Session(join=false)``),
  closes its own (which also tells a live dealer to end that session), tells B to join
  the new epoch (``join=true``) and joins itself. Between rounds it probes every second:
  B must still report A's epoch (a restarted B reports none) and the dealer must answer
  a ping over its channel. A failed 2PC step marks the session broken too. A broken
  session is rebuilt at once; until then no 2PC starts (rounds wait for it, up to the
  MPC timeout, and keep collecting meanwhile).
* **Server B** runs a :class:`SessionMember`: it never joins on its own, only when A
  says so, and it leaves before joining, so it can never dial a session A is about to
  tear down. Joining a new epoch rewinds every round caught in a 2PC to
  PARTICIPANTS_FIXED (:meth:`secagg.rounds.Round.rewind_2pc`): no computation survives
  a session change; A either runs it again (A restarted) or has failed it and says so.
* **The dealer** (``servers.dealer``) rejoins by itself whenever its session ends,
  cleanly (A closed it) or not (a peer died): it has no state worth keeping.

Ordering is what makes this safe: B leaves before A closes (so a half of A's 2PC still
waiting for B is released), and A's old session is closed before B dials the new one
(with gloo, a new rendezvous store on the same port must not still hold the old
session's keys). B runs leave and join on its single MPC thread in arrival order.

Timeouts: every Peer RPC here has one (``rpc_timeout_s``); joining a session is bounded
by the MPC timeout (:class:`secagg.mpc.MpcEndpoint`), as is every 2PC step.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import socket
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health

from secagg import metrics, mpc
from secagg.rounds import Round, RoundBook, RoundState
from secagg.v1 import secagg_pb2 as pb
from secagg.v1 import secagg_pb2_grpc as pbg
from servers import common

log = logging.getLogger("secagg.session")

__all__ = ["SessionKeeper", "SessionMember", "restore_rounds"]

#: B's states as reported in ``SessionReply.state``.
IDLE, LEAVING, JOINING, JOINED, FAILED = "idle", "leaving", "joining", "joined", "failed"


def _event(event: str, **fields: Any) -> None:
    log.info(json.dumps({"event": event, **fields}, sort_keys=True, default=str))


def restore_rounds(book: RoundBook, why: str) -> list[Round]:
    """Reload a server's rounds from its store; rewind those caught in a 2PC.

    The process that ran their 2PC is gone, so it cannot finish: A runs it again from
    the fixed participants, and B follows A (see the module docstring).
    """
    rounds = book.restore()
    rewound = [r.round_id for r in rounds if r.rewind_2pc(why)]
    if rounds:
        _event(
            "rounds_restored",
            server=book.server,
            rounds=len(rounds),
            open=sum(not r.state.terminal for r in rounds),
            rewound=len(rewound),
            digests=len(book.digests),
        )
    return rounds


class _Host(Protocol):
    """What the keeper and the member use of their server (ServerA / ServerB)."""

    session: mpc.MpcSession | None
    health: health.aio.HealthServicer | None

    async def _mpc(self, fn: Callable[..., Any], *args: Any) -> Any: ...


class _HostA(_Host, Protocol):
    mpc_lock: asyncio.Lock
    peer: pbg.PeerStub

    def _peer_md(self) -> list[tuple[str, str]]: ...


class _HostB(_Host, Protocol):
    book: RoundBook
    executor: ThreadPoolExecutor


def _port_free(host: str, port: int) -> bool:
    """Whether this process could listen on host:port now (as TCPStore would)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # like TCPStore: connections of the old session in TIME_WAIT do not count
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host if host not in ("", "0.0.0.0") else "0.0.0.0", port))
        except OSError:
            return False
    return True


async def _set_health(host: _Host, serving: bool) -> None:
    if host.health is not None:
        await common.set_health(host.health, serving)


# --------------------------------------------------------------------- server A
class SessionKeeper:
    """Server A's side: owns the session's life cycle (see the module docstring).

    Parameters
    ----------
    host
        Server A: its ``session``, ``mpc_lock`` (held during any 2PC), ``peer`` stub,
        ``_peer_md()``, ``_mpc()`` (runs on the MPC thread) and ``health``.
    probe_interval_s
        Seconds between liveness probes of B and the dealer while idle.
    rpc_timeout_s
        Timeout of every Peer.Session / FailRound call and of the dealer ping.
    retry_s
        First pause after a failed build (doubles up to 10 s).
    hung_after_s
        B is reported (health NOT_SERVING, with the reason in the log) once it has not
        answered a heartbeat for this long: hung (SIGSTOP, a stuck host) or gone.
    """

    def __init__(
        self,
        host: _HostA,
        *,
        probe_interval_s: float = 1.0,
        rpc_timeout_s: float = 10.0,
        retry_s: float = 1.0,
        hung_after_s: float = 10.0,
    ) -> None:
        self.host = host
        self.probe_interval_s = probe_interval_s
        self.hung_after_s = hung_after_s
        self.b_answered = 0.0  # loop time of B's last answer to a heartbeat
        self.rpc_timeout_s = rpc_timeout_s
        self.retry_s = retry_s
        self.incarnation = secrets.token_hex(4)  # epochs stay unique across restarts
        self._counter = itertools.count(1)
        self.endpoint: mpc.MpcEndpoint | None = None
        self.epoch = ""
        self.broken: str | None = None
        self.last_error = "the MPC session has not been built yet"
        self.builds = 0
        # rounds failed while B could not be told: round id -> reason (FailRound later)
        self.unsynced: dict[str, str] = {}
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._beat: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------- state
    @property
    def healthy(self) -> bool:
        return self.host.session is not None and self.broken is None

    def mark_broken(self, reason: str) -> None:
        """A 2PC step failed or a probe saw a dead party: rebuild before the next 2PC."""
        self._ready.clear()
        if self.broken is None and self.host.session is not None:
            self.broken = reason
            self.last_error = reason
            _event("mpc_session_broken", epoch=self.epoch, reason=reason)
            metrics.mpc_session_broken()

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait until a healthy session exists; False after ``timeout_s``."""
        if self.healthy:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), max(0.0, timeout_s))
        return self.healthy

    # ------------------------------------------------------------- lifecycle
    async def start(self, ep: mpc.MpcEndpoint, *, wait: bool = True) -> None:
        """Start the keeper; with ``wait``, return once the first session is up."""
        self.endpoint = ep
        self._task = asyncio.create_task(self._run(), name="mpc-session-keeper")
        self._beat = asyncio.create_task(self._heartbeat(), name="peer-heartbeat")
        if wait:
            await self._ready.wait()

    async def stop(self) -> None:
        for task in (self._task, self._beat):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._beat = None

    async def _heartbeat(self) -> None:
        """Ask B for its session state every ``probe_interval_s``, also during a 2PC
        (B's Peer service answers while its MPC thread computes); report a B that
        stays silent for ``hung_after_s`` in A's health, and clear it when B is back.
        """
        h = self.host
        loop = asyncio.get_running_loop()
        self.b_answered = loop.time()
        while True:
            try:
                await h.peer.Session(
                    pb.SessionRequest(epoch="", join=False),
                    metadata=h._peer_md(),
                    timeout=max(1.0, self.hung_after_s / 3),
                )
                self.b_answered = loop.time()
                problem = None
            except grpc.aio.AioRpcError as exc:
                silent = loop.time() - self.b_answered
                problem = (
                    f"server B has not answered for {silent:.0f} s ({exc.code().name}): "
                    "it is hung, stopped or unreachable"
                    if silent >= self.hung_after_s
                    else None
                )
            if h.health is not None:
                await common.report_health(h.health, "peer", problem)
            await asyncio.sleep(self.probe_interval_s)

    async def _run(self) -> None:
        pause = self.retry_s
        while True:
            try:
                if not self.healthy:
                    if await self._build():
                        pause = self.retry_s
                    else:
                        await asyncio.sleep(pause)
                        pause = min(2 * pause, 10.0)
                    continue
                await asyncio.sleep(self.probe_interval_s)
                await self._probe()
                await self.sync_failures()
            except asyncio.CancelledError:
                raise
            except Exception:  # the keeper must outlive any single bad probe
                log.exception(json.dumps({"event": "mpc_keeper_error"}))
                await asyncio.sleep(self.retry_s)

    # ----------------------------------------------------------------- build
    async def _call_b(self, epoch: str, *, join: bool) -> pb.SessionReply | None:
        try:
            return await self.host.peer.Session(
                pb.SessionRequest(epoch=epoch, join=join),
                metadata=self.host._peer_md(),
                timeout=self.rpc_timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            self.last_error = f"server B: {exc.code().name}: {exc.details()}"
            return None

    async def _build(self) -> bool:
        h = self.host
        assert self.endpoint is not None
        epoch = f"{self.incarnation}-{next(self._counter)}"
        async with h.mpc_lock:
            self._ready.clear()
            await _set_health(h, False)
            old, h.session = h.session, None
            # B first: a half of ours still waiting for B is released when B closes
            # its end; then ours, which also tells a live dealer to end the session.
            await self._call_b(epoch, join=False)
            if old is not None:
                with contextlib.suppress(Exception):
                    await h._mpc(old.close)
            if old is not None:
                del old  # nothing of the old session may pin its rendezvous store
                await self._rendezvous_released()
            if await self._call_b(epoch, join=True) is None:
                return False
            _event("mpc_joining", epoch=epoch, rank=mpc.RANK_A)
            try:
                session = await h._mpc(mpc.MpcSession, mpc.RANK_A, self.endpoint)
            except Exception as exc:  # MpcError, or whatever the transport raised
                self.last_error = f"building session {epoch} failed: {type(exc).__name__}: {exc}"
                _event("mpc_join_failed", epoch=epoch, error=self.last_error)
                metrics.mpc_session_built(False)
                return False
            h.session = session
            self.epoch = epoch
            self.broken = None
            self.builds += 1
        _event("mpc_ready", epoch=epoch, rank=mpc.RANK_A, builds=self.builds)
        metrics.mpc_session_built(True)
        await _set_health(h, True)
        self._ready.set()
        await self.sync_failures()
        return True

    async def _rendezvous_released(self, limit_s: float = 2.0) -> None:
        """With gloo, wait briefly until the old session's rendezvous port is free.

        The old store's server thread takes a moment to go after the session is
        closed (~0.2-0.4 s measured). Should something pin it longer (a failed step's
        pending work), torch's multi-tenant TCPStore reuses it for the new session;
        ``secagg.mpc`` empties its keys at teardown so that a reused server carries no
        addresses of the dead session. Either way the join can go ahead.
        """
        ep = self.endpoint
        if ep is None or getattr(ep, "transport", "gloo") != "gloo":
            return
        loop = asyncio.get_running_loop()
        start = loop.time()
        while not _port_free(ep.master_addr, ep.master_port):
            if loop.time() - start > limit_s:
                _event("mpc_rendezvous_busy", port=ep.master_port, waited_s=limit_s)
                return  # join anyway: a failed attempt is retried
            await asyncio.sleep(0.05)
        waited = loop.time() - start
        if waited > 0.05:
            _event("mpc_rendezvous_released", waited_s=round(waited, 3))

    # ----------------------------------------------------------------- watch
    async def _probe(self) -> None:
        h = self.host
        if h.mpc_lock.locked() or not self.healthy:
            return  # a round is using the session and reports its own failures
        reply = await self._call_b("", join=False)
        # An unreachable B is not proof of a dead session (a network blip); a B that
        # answers with another epoch (none, after a restart) is.
        if reply is not None and reply.epoch != self.epoch:
            self.mark_broken(
                f"server B is not in session {self.epoch} (it reports "
                f"{reply.epoch or 'none'}, {reply.state}): it restarted or left"
            )
            return
        async with h.mpc_lock:
            session = h.session
            if session is None or not self.healthy:
                return
            try:
                await asyncio.wait_for(h._mpc(session.ping_dealer), self.rpc_timeout_s)
            except Exception as exc:
                self.mark_broken(f"the dealer did not answer a ping: {type(exc).__name__}: {exc}")

    async def confirm_peer(self) -> bool:
        """Just before a 2PC (mpc_lock held): is B still in this session's epoch?

        The probe runs once a second, so a B that restarted moments ago may not have
        been noticed yet; a 2PC started then fails at once ("B's MPC session is not
        up yet"). An unreachable B proves nothing (the 2PC finds out, and the round
        is run again after the rebuild).
        """
        reply = await self._call_b("", join=False)
        if reply is not None and reply.epoch != self.epoch:
            self.mark_broken(
                f"server B is not in session {self.epoch} (it reports "
                f"{reply.epoch or 'none'}, {reply.state}): it restarted or left"
            )
            return False
        return True

    async def sync_failures(self) -> None:
        """Tell B about rounds A failed while B could not be reached (idempotent on B)."""
        h = self.host
        for rid, reason in list(self.unsynced.items()):
            try:
                await h.peer.FailRound(
                    pb.FailRequest(round_id=rid, reason=reason),
                    metadata=h._peer_md(),
                    timeout=self.rpc_timeout_s,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    return  # B still away: next time
                # NOT_FOUND and the like: B has nothing to fail
            self.unsynced.pop(rid, None)


# --------------------------------------------------------------------- server B
class SessionMember:
    """Server B's side: leave and join session epochs when server A says so.

    Leave and join run on B's single MPC thread, in the order A asked, after whatever
    2PC step is still running there (which fails once A closes its end).
    """

    def __init__(self, host: _HostB) -> None:
        self.host = host
        self.endpoint: mpc.MpcEndpoint | None = None
        self.epoch = ""  # epoch of the live session; "" when none
        self.target = ""  # the epoch A last asked for
        self.state = IDLE
        self.detail = ""
        self._joined = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, ep: mpc.MpcEndpoint, *, wait: bool = True) -> None:
        """Remember the endpoint; with ``wait``, return once A had B join a session."""
        self.endpoint = ep
        if wait:
            await self._joined.wait()

    def reply(self) -> pb.SessionReply:
        return pb.SessionReply(epoch=self.epoch, state=self.state, detail=self.detail)

    def handle(self, request: pb.SessionRequest) -> pb.SessionReply:
        """Peer.Session: queue a leave or a join, answer at once with B's view.

        The job goes to the MPC thread right here, synchronously, so leave and join
        run in the order A sent them, after whatever 2PC step is still running there.
        """
        if request.epoch:
            if request.join:
                if not (request.epoch == self.target and self.state in (JOINING, JOINED)):
                    self._forget()
                    self.target, self.state, self.detail = request.epoch, JOINING, ""
                    _event("mpc_joining", epoch=request.epoch, rank=mpc.RANK_B)
                    job = self._submit(self._join_blocking, request.epoch)
                    self._spawn(self._after_join(request.epoch, job))
            else:
                self._forget()
                self.state = LEAVING
                self._spawn(self._after_leave(self._submit(self._close_current)))
        return self.reply()

    def _forget(self) -> None:
        # from now on B does not claim the old epoch, even before the thread gets to it
        self.epoch = ""
        self._joined.clear()

    def _submit(self, fn: Callable[..., None], *args: Any) -> asyncio.Future[None]:
        return asyncio.get_running_loop().run_in_executor(self.host.executor, fn, *args)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _close_current(self) -> None:  # on the MPC thread
        session, self.host.session = self.host.session, None
        if session is not None:
            session.close()

    def _join_blocking(self, epoch: str) -> None:  # on the MPC thread
        self._close_current()
        # no 2PC survives a session change: A re-runs these rounds or fails them
        for rnd in self.host.book.list():
            rnd.rewind_2pc(f"MPC session rebuilt (epoch {epoch})")
        assert self.endpoint is not None
        self.host.session = mpc.MpcSession(mpc.RANK_B, self.endpoint)

    async def _after_leave(self, job: asyncio.Future[None]) -> None:
        await _set_health(self.host, False)
        with contextlib.suppress(Exception):
            await job
        if self.state == LEAVING:
            self.state = IDLE
        _event("mpc_left", rank=mpc.RANK_B)

    async def _after_join(self, epoch: str, job: asyncio.Future[None]) -> None:
        await _set_health(self.host, False)
        try:
            await job
        except Exception as exc:
            if self.target == epoch:
                self.state, self.detail = FAILED, f"{type(exc).__name__}: {exc}"
            _event("mpc_join_failed", epoch=epoch, error=f"{type(exc).__name__}: {exc}")
            metrics.mpc_session_built(False)
            return
        if self.target != epoch:
            return  # A moved on meanwhile; its later leave/join closes this session
        self.epoch, self.state, self.detail = epoch, JOINED, ""
        _event("mpc_ready", epoch=epoch, rank=mpc.RANK_B)
        metrics.mpc_session_built(True)
        await _set_health(self.host, True)
        self._joined.set()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()


def rounds_to_resume(rounds: list[Round]) -> list[Round]:
    """Server A: the restored rounds its coordinator must pick up again."""
    return [r for r in rounds if not r.state.terminal]


def failed_rounds(rounds: list[Round]) -> dict[str, str]:
    """Server A: restored failed rounds, whose failure B may not have heard of."""
    return {r.round_id: r.failure_reason for r in rounds if r.state is RoundState.FAILED}
