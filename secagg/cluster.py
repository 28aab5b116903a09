"""A local three-process MPC cluster on loopback, for tests and benchmarks.

Server A (rank 0), server B (rank 1) and the dealer (rank 2) run as separate spawned
processes with a real CrypTen session over gloo, or over mutually authenticated TLS
(``transport="mtls"``, :mod:`secagg.mpc_link`), exactly as the services do; the
parent drives them over local pipes (objects it created itself, never network bytes).
Each party keeps its session for the cluster's lifetime, so many rounds reuse it.
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from multiprocessing.connection import wait as wait_conns
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from secagg.netutil import free_port as free_port

if TYPE_CHECKING:
    from secagg.mpc import MpcEndpoint
    from secagg.transport import TlsConfig

PARTY_NAMES = ("server-a", "server-b", "dealer")  # = secagg.mpc_link.PARTY_NAMES
# after one party failed to join, how long the others get to report their own reason
_JOIN_GRACE_S = 5.0
# spawning a party and importing torch + CrypTen precede its own (timed) join; on a
# loaded machine that alone can take tens of seconds
_STARTUP_S = 120.0


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"


def _dealer_main(ep: MpcEndpoint, conn: Any, setup: Callable[[], None] | None = None) -> None:
    from secagg import mpc

    if setup is not None:
        setup()
    try:
        mpc.run_dealer(ep, on_ready=lambda: conn.send(("ready", mpc.RANK_DEALER)))
    except Exception as exc:  # tell the driver why, then exit
        conn.send(("error", _error_text(exc)))


def _party_main(
    rank: int, ep: MpcEndpoint, conn: Any, setup: Callable[[], None] | None = None
) -> None:
    from secagg import mpc, protocol

    if setup is not None:
        setup()
    try:
        session = mpc.MpcSession(rank, ep)
    except Exception as exc:  # a failed join is reported, not a silent exit
        conn.send(("error", _error_text(exc)))
        return
    conn.send(("ready", rank))
    while True:
        op, payload = conn.recv()
        if op == "close":
            session.close()
            conn.send(("ok", None))
            return
        try:
            if op == "round":
                share, plan = payload
                result: Any = protocol.run_round(session, share, plan)
            elif op == "call":
                name, args = payload
                result = getattr(session, name)(*args)
                result = (result, session.traffic.as_dict())
            elif op == "fn":
                fn, args = payload
                result = fn(session, *args)
            else:
                raise ValueError(f"unknown op {op}")
            conn.send(("ok", result))
        except Exception as exc:  # report to the driver instead of dying silently
            conn.send(("error", _error_text(exc)))


class ClusterError(RuntimeError):
    pass


class MpcCluster:
    """Start with ``with MpcCluster() as c:``; ``c.round(share_a, share_b, plan)``.

    ``transport="mtls"`` runs the parties over :mod:`secagg.mpc_link` with a fresh
    development PKI (or ``pki_dir``). Test hooks: ``tls`` replaces a party's TLS
    material (by party name), ``dial`` the address the others dial to reach a party
    (a proxy in front of its ``listen`` address), ``listen`` the addresses the parties
    listen on, and ``setup`` is a picklable function each party process (dealer
    included) runs before it joins. A party that cannot join makes the constructor
    raise :class:`ClusterError` with every party's reason.
    """

    def __init__(
        self,
        timeout_s: float = 120.0,
        *,
        transport: str = "gloo",
        pki_dir: str | Path | None = None,
        tls: Mapping[str, TlsConfig] | None = None,
        listen: Mapping[str, str] | None = None,
        dial: Mapping[str, str] | None = None,
        setup: Callable[[], None] | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.port = free_port()
        self.transport = transport
        self._tmp: str | None = None
        self.endpoints = self._endpoints(transport, pki_dir, tls, listen, dial)
        ctx = mp.get_context("spawn")  # never fork after torch/gRPC state exists
        dealer_parent, dealer_child = ctx.Pipe()
        self._dealer_conn = dealer_parent
        self._dealer = ctx.Process(
            target=_dealer_main, args=(self.endpoints[2], dealer_child, setup), daemon=True
        )
        self._conns = []
        self._parties = []
        self._dealer.start()
        for rank in (0, 1):
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=_party_main, args=(rank, self.endpoints[rank], child, setup), daemon=True
            )
            p.start()
            self._conns.append(parent)
            self._parties.append(p)
        self._join()

    def _endpoints(
        self,
        transport: str,
        pki_dir: str | Path | None,
        tls: Mapping[str, TlsConfig] | None,
        listen: Mapping[str, str] | None,
        dial: Mapping[str, str] | None,
    ) -> list[MpcEndpoint]:
        from secagg.mpc import MpcEndpoint

        if transport == "gloo":
            return [MpcEndpoint("127.0.0.1", self.port, self.timeout_s) for _ in range(3)]
        from secagg.transport import TlsConfig, make_dev_pki

        if pki_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="secagg-mpc-pki-")
            pki_dir = make_dev_pki(self._tmp)
        material = {name: TlsConfig.from_pki(pki_dir, name) for name in PARTY_NAMES}
        material.update(tls or {})
        addrs = {name: f"127.0.0.1:{free_port()}" for name in PARTY_NAMES}
        addrs.update(listen or {})
        reach = {**addrs, **(dial or {})}
        self.listen = addrs
        return [
            MpcEndpoint(
                "127.0.0.1",
                self.port,
                self.timeout_s,
                transport=transport,
                listen=addrs[name],
                peers={other: reach[other] for other in PARTY_NAMES if other != name},
                tls=material[name],
            )
            for name in PARTY_NAMES
        ]

    def _join(self) -> None:
        """Wait for A and B to report their session up; on any failure collect every
        party's reason (briefly), stop the processes and raise ClusterError."""
        conns = {self._conns[0]: 0, self._conns[1]: 1, self._dealer_conn: 2}
        pending = {0, 1}
        errors: dict[int, str] = {}
        deadline = time.monotonic() + _STARTUP_S + self.timeout_s + _JOIN_GRACE_S
        # after a failure, keep listening (briefly) for the others' reasons, dealer's too
        while (pending or (errors and conns)) and time.monotonic() < deadline:
            ready = wait_conns(list(conns), timeout=max(0.0, deadline - time.monotonic()))
            for conn in ready:
                rank = conns.pop(conn)  # type: ignore[call-overload]
                try:
                    status, value = conn.recv()  # type: ignore[union-attr]
                except (EOFError, OSError):
                    status, value = "error", "the process exited without a word"
                pending.discard(rank)
                if status == "error":
                    errors[rank] = str(value)
                    deadline = min(deadline, time.monotonic() + _JOIN_GRACE_S)
        for rank in pending:
            late = "stopped before it reported (another party failed first)"
            errors.setdefault(rank, late if errors else f"did not join within {self.timeout_s} s")
        if errors:
            self._stop_now()
            raise ClusterError(
                "the MPC session could not start:\n"
                + "\n".join(f"[{PARTY_NAMES[r]}] {msg}" for r, msg in sorted(errors.items()))
            )

    def _recv(self, conn: Any) -> Any:
        if not conn.poll(self.timeout_s):
            raise ClusterError(f"party did not answer within {self.timeout_s} s")
        status, value = conn.recv()
        if status == "error":
            raise ClusterError(value)
        return value

    def _both(self, op: str, payload_a: Any, payload_b: Any) -> tuple[Any, Any]:
        self._conns[0].send((op, payload_a))
        self._conns[1].send((op, payload_b))
        errors, out = [], []
        for conn in self._conns:
            try:
                out.append(self._recv(conn))
            except ClusterError as exc:
                errors.append(str(exc))
                out.append(None)
        if errors:
            raise ClusterError("\n".join(errors))
        return out[0], out[1]

    def round(self, share_a: np.ndarray, share_b: np.ndarray, plan: Any) -> tuple[Any, Any]:
        return self._both("round", (share_a, plan), (share_b, plan))

    def call(self, name: str, args_a: tuple, args_b: tuple) -> tuple[Any, Any]:
        return self._both("call", (name, args_a), (name, args_b))

    def run(self, fn: Callable[..., Any], args_a: tuple, args_b: tuple) -> tuple[Any, Any]:
        """Run a module-level ``fn(session, *args)`` on both parties."""
        return self._both("fn", (fn, args_a), (fn, args_b))

    def call_one(self, rank: int, name: str, args: tuple, wait_s: float | None = None) -> Any:
        """``session.<name>(*args)`` on one party only: what a peer that stalls or died
        leaves it facing (fault tests). Waits ``wait_s`` (default: the timeout) + 10 s."""
        conn = self._conns[rank]
        conn.send(("call", (name, args)))
        limit = (self.timeout_s if wait_s is None else wait_s) + 10.0
        if not conn.poll(limit):
            raise ClusterError(f"{PARTY_NAMES[rank]} did not answer within {limit} s")
        status, value = conn.recv()
        if status == "error":
            raise ClusterError(value)
        return value

    def kill_party(self, rank: int) -> None:
        """Kill one party's process (0, 1, or 2 for the dealer) without a goodbye."""
        proc = self._dealer if rank == 2 else self._parties[rank]
        proc.kill()
        proc.join(10)

    def _stop_now(self) -> None:
        # a session that never came up has nothing to close cleanly: stop at once
        for p in [*self._parties, self._dealer]:
            if p.is_alive():
                p.kill()
            p.join(5)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(("close", None))
                conn.poll(10) and conn.recv()
            except (OSError, EOFError):
                pass
        for p in [*self._parties, self._dealer]:
            p.join(10)
            if p.is_alive():
                p.kill()
        self._cleanup()

    def __enter__(self) -> MpcCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def with_transcript(session: Any, method: str, *args: Any) -> tuple[Any, list]:
    """Run ``session.<method>(*args)`` recording what this party receives (tests)."""
    session.transcript = []
    try:
        result = getattr(session, method)(*args)
        return result, session.transcript
    finally:
        session.transcript = None
