"""The operator's client for server A's ``Admin`` service (open and list rounds).

Server A's admin port requires mTLS; the operator's certificate CN ("admin" in the dev
PKI) is what server A authorises. Used by the CLI and the tests.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import grpc

from clients.sdk import (
    Aggregate,
    SecAggClientError,
    client_error_from_rpc,
    fetch_aggregate_from,
    wait_for_result,
)
from secagg.contract import RoundConfig, RoundState
from secagg.transport import SERVER_A_NAME, TlsConfig, make_channel
from secagg.v1 import secagg_pb2, secagg_pb2_grpc

__all__ = ["AdminClient"]

T = TypeVar("T")


class AdminClient:
    """Calls server A's Admin service.

    Parameters
    ----------
    server_a
        ``host:port`` of server A's admin endpoint.
    tls
        The operator's TLS material (CA, certificate, key); None for a plaintext
        local setup.
    timeout_s
        Deadline of each attempt; longer than server A's forward of OpenRound to B
        (20 s), so that A's answer arrives.
    retries, backoff_s, max_backoff_s
        A call answered UNAVAILABLE (server A restarting, a connection reset) is tried
        again up to ``retries`` times, after ``backoff_s`` doubling up to
        ``max_backoff_s`` (with jitter). Every Admin call is safe to repeat: opening
        the same configuration again returns the same round.
    server_name
        Name expected in server A's certificate if it differs from the host in
        ``server_a``.
    token
        The operator's token, needed only when TLS is off (with TLS the admin
        certificate is the identity).
    """

    def __init__(
        self,
        server_a: str,
        tls: TlsConfig | None = None,
        timeout_s: float = 60,
        *,
        server_name: str | None = None,
        token: str | None = None,
        retries: int = 6,
        backoff_s: float = 0.25,
        max_backoff_s: float = 4.0,
    ) -> None:
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self._md = (("authorization", f"Bearer {token}"),) if token else ()
        # pin server A's identity (any party's dev certificate carries the host name)
        pinned = server_name or (SERVER_A_NAME if tls is not None else None)
        self._channel = make_channel(server_a, tls, server_name=pinned)
        self._stub = secagg_pb2_grpc.AdminStub(self._channel)
        # the operator reads rounds through the Worker service on the same (control)
        # port: its identity there is the admin certificate (or token without TLS)
        self._worker = secagg_pb2_grpc.WorkerStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()``, retried on UNAVAILABLE with bounded exponential backoff."""
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if code is not grpc.StatusCode.UNAVAILABLE or attempt == self.retries:
                    raise client_error_from_rpc(exc, "server-a", what, attempt + 1) from None
                time.sleep(min(delay, self.max_backoff_s) * (1.0 + 0.25 * random.random()))
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def open_round(self, config: RoundConfig | secagg_pb2.RoundConfig) -> secagg_pb2.RoundStatus:
        """Open a round on server A (which forwards it to server B).

        The configuration is validated locally first, so a bound violation is reported
        without a round trip; the server validates it again.

        Raises
        ------
        SecAggClientError
            With the violated bound, or the server's refusal.
        """
        if isinstance(config, RoundConfig):
            try:
                # the dim cap is the server's to choose; everything else is universal
                config.validate(max_dim=2**63 - 1)
            except ValueError as exc:
                raise SecAggClientError(f"invalid round configuration: {exc}") from None
            msg = config.to_proto()
        else:
            msg = config
        return self._call(
            "OpenRound",
            lambda: self._stub.OpenRound(msg, timeout=self.timeout_s, metadata=self._md),
        )

    def list_rounds(
        self, states: Iterable[RoundState] = (), limit: int = 0
    ) -> list[secagg_pb2.RoundStatus]:
        """Rounds known to server A, newest first, optionally filtered by state."""
        req = secagg_pb2.ListRoundsRequest(
            states=[RoundState(s).to_proto() for s in states], limit=limit
        )
        return list(
            self._call(
                "ListRounds",
                lambda: self._stub.ListRounds(req, timeout=self.timeout_s, metadata=self._md),
            ).rounds
        )

    def status(self, round_id: str) -> secagg_pb2.RoundStatus:
        """The round's full status as the operator sees it (exclusion reasons, pick
        order and timings included; workers see less, SECURITY.md)."""
        ref = secagg_pb2.RoundRef(round_id=round_id)
        return self._call(
            "GetRoundStatus",
            lambda: self._worker.GetRoundStatus(ref, timeout=self.timeout_s, metadata=self._md),
        )

    def fetch_aggregate(self, round_id: str) -> Aggregate:
        """The finished round's aggregate, read as the operator (its ``selected`` in the
        rule's pick order)."""
        ref = secagg_pb2.RoundRef(round_id=round_id)
        return self._call(
            "GetAggregate",
            lambda: fetch_aggregate_from(
                self._worker.GetAggregate(ref, timeout=self.timeout_s, metadata=self._md)
            ),
        )

    def wait_for_result(self, round_id: str, timeout_s: float, poll_s: float = 0.2) -> Aggregate:
        """Poll the round until it is DONE, then fetch its aggregate (as the operator).

        Raises
        ------
        SecAggClientError
            If the round fails (with its reason) or is not done within ``timeout_s``.
        """
        return wait_for_result(
            round_id, timeout_s, poll_s, lambda: self.status(round_id), self.fetch_aggregate
        )

    def get_round_report(self, round_id: str) -> secagg_pb2.RoundReport:
        """The round's status, the distance matrix server A saw, and the selection."""
        ref = secagg_pb2.RoundRef(round_id=round_id)
        return self._call(
            "GetRoundReport",
            lambda: self._stub.GetRoundReport(ref, timeout=self.timeout_s, metadata=self._md),
        )
