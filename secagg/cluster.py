"""A local three-process MPC cluster on loopback, for tests and benchmarks.

Server A (rank 0), server B (rank 1) and the dealer (rank 2) run as separate spawned
processes with a real CrypTen session over gloo, exactly as the services do; the
parent drives them over local pipes (objects it created itself, never network bytes).
Each party keeps its session for the cluster's lifetime, so many rounds reuse it.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (racy by nature; fine for tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dealer_main(port: int, timeout_s: float) -> None:
    from secagg import mpc

    mpc.run_dealer(mpc.MpcEndpoint("127.0.0.1", port, timeout_s))


def _party_main(rank: int, port: int, timeout_s: float, conn: Any) -> None:
    from secagg import mpc, protocol

    session = mpc.MpcSession(rank, mpc.MpcEndpoint("127.0.0.1", port, timeout_s))
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
            conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


class ClusterError(RuntimeError):
    pass


class MpcCluster:
    """Start with ``with MpcCluster() as c:``; ``c.round(share_a, share_b, plan)``."""

    def __init__(self, timeout_s: float = 120.0) -> None:
        self.timeout_s = timeout_s
        self.port = free_port()
        ctx = mp.get_context("spawn")  # never fork after torch/gRPC state exists
        self._dealer = ctx.Process(target=_dealer_main, args=(self.port, timeout_s), daemon=True)
        self._conns = []
        self._parties = []
        self._dealer.start()
        for rank in (0, 1):
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=_party_main, args=(rank, self.port, timeout_s, child), daemon=True
            )
            p.start()
            self._conns.append(parent)
            self._parties.append(p)
        for conn in self._conns:
            self._recv(conn)

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
