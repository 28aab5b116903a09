"""Worker SDK: encode, secret-share and submit a gradient; fetch the aggregate.

A worker's vector ``x`` is fixed-point encoded (:mod:`secagg.encoding`), split into a
fresh 32-byte seed for server A and the share ``s_B = x - expand(seed)`` for server B
(:mod:`secagg.sharing`); the seed goes to A in one message and ``s_B`` streams to B in
chunks of at most 1 MiB. Neither server alone learns anything about ``x``.

This module imports numpy, grpc, protobuf and cryptography only; torch is imported
lazily inside the model helpers (:func:`flatten_state`, :func:`unflatten`,
:func:`flatten_grads`) and CrypTen never.

Example
-------
>>> client = SecAggClient("a.example:50051", "b.example:50051", "w7", token, tls=tls)
>>> client.submit("round-12", grad_vector)            # parameters fetched from server A
>>> mean = client.wait_for_aggregate("round-12", timeout_s=600)
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np

from secagg import encoding, sharing
from secagg.contract import Receipt, RoundState, check_id, payload_digest
from secagg.dp.mechanism import DpConfigError, clip_and_encode
from secagg.transport import (
    SERVER_A_NAME,
    SERVER_B_NAME,
    ProtocolError,
    TlsConfig,
    make_channel,
    read_aggregate_stream,
    share_chunk_messages,
    worker_metadata,
)
from secagg.v1 import secagg_pb2, secagg_pb2_grpc

if TYPE_CHECKING:
    import torch

__all__ = [
    "Aggregate",
    "FlatEntry",
    "FlatSpec",
    "SecAggClient",
    "SecAggClientError",
    "SubmissionReceipt",
    "client_error_from_rpc",
    "flatten_grads",
    "flatten_state",
    "unflatten",
]

log = logging.getLogger("secagg.sdk")

T = TypeVar("T")

#: Transient failures worth retrying; every other status is an answer, not an accident.
RETRYABLE: frozenset[grpc.StatusCode] = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
)

_HINTS: Mapping[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAVAILABLE: (
        "the server could not be reached: check the address, that it is running, and the "
        "TLS settings (CA certificate, server name)"
    ),
    grpc.StatusCode.DEADLINE_EXCEEDED: (
        "the call did not finish within timeout_s: raise timeout_s for large vectors or "
        "slow links, then submit again (retries are idempotent)"
    ),
    grpc.StatusCode.UNIMPLEMENTED: (
        "the server does not speak secagg.v1 with this role: check which server "
        "(A or B) the address points to"
    ),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (
        "a message exceeded the server's limits: upgrade the SDK to match the server"
    ),
    grpc.StatusCode.UNAUTHENTICATED: "check the worker id and token given to SecAggClient",
}


class SecAggClientError(Exception):
    """Any failure of the SDK, with the server's message and what to do next.

    Attributes
    ----------
    code : grpc.StatusCode or None
        The gRPC status, when the failure came from a call.
    server : str
        "server-a", "server-b" or "" (local failure, e.g. encoding).
    details : str
        The server's own message (or the local error's).
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        server: str = "",
        details: str = "",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.server = server
        self.details = details or message


def client_error_from_rpc(
    exc: grpc.RpcError, server: str, what: str, attempts: int = 1
) -> SecAggClientError:
    """Turn a failed call into a :class:`SecAggClientError` with the server's message
    and, for transport-level codes, a hint on what to do."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    tried = f" after {attempts} attempts" if attempts > 1 else ""
    hint = _HINTS.get(code, "")
    msg = f"{server} {what} failed{tried}: {code.name}: {details}"
    if hint:
        msg += f" ({hint})"
    return SecAggClientError(msg, code=code, server=server, details=details)


def _receipt(msg: secagg_pb2.Receipt) -> Receipt:
    return Receipt(
        round_id=msg.round_id,
        worker_id=msg.worker_id,
        submission_id=msg.submission_id,
        digest=msg.digest,
        dim=msg.dim,
        accepted_unix_ms=msg.accepted_unix_ms,
        server=msg.server,
    )


@dataclass(eq=False)
class _Pending:
    """A submission that has not got both receipts yet: what a retry resends."""

    submission_id: str
    digest: bytes  # of the encoded vector: a retry must carry the same one
    shares: sharing.WorkerShares = field(repr=False)
    receipt_a: secagg_pb2.Receipt | None = None


@dataclass(frozen=True)
class SubmissionReceipt:
    """Both servers' receipts for one submission (digests already verified)."""

    round_id: str
    worker_id: str
    submission_id: str
    server_a: Receipt
    server_b: Receipt


@dataclass(frozen=True, eq=False)
class Aggregate:
    """A round's result as served by server A."""

    round_id: str
    vector: np.ndarray
    selected: tuple[str, ...]
    divisor: float
    scale: float
    rule: str


class SecAggClient:
    """A worker's connection to the two servers.

    Parameters
    ----------
    server_a, server_b
        ``host:port`` of the servers' worker endpoints.
    worker_id
        This worker's registered id.
    token
        This worker's bearer token (from ``secagg.transport.issue_tokens``); sent as
        call metadata, never logged.
    tls
        TLS material (at least ``ca_cert``); None for a plaintext local setup.
    timeout_s
        Deadline of each attempt of each call (an upload counts as one call).
    retries
        Extra attempts after UNAVAILABLE or DEADLINE_EXCEEDED, with exponential backoff.
    retry_until_deadline
        :meth:`submit` keeps retrying those failures past ``retries``, with backoff,
        until the round's deadline: a server that is back before it gets the
        submission, and the worker is not excluded for the outage.
    """

    def __init__(
        self,
        server_a: str,
        server_b: str,
        worker_id: str,
        token: str,
        tls: TlsConfig | None = None,
        timeout_s: float = 30,
        retries: int = 3,
        *,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        server_names: tuple[str | None, str | None] = (None, None),
        retry_until_deadline: bool = True,
    ) -> None:
        try:
            check_id("worker_id", worker_id)
        except ValueError as exc:
            raise SecAggClientError(str(exc)) from None
        if not token:
            raise SecAggClientError("token is empty: pass the token the operator issued")
        if timeout_s <= 0 or retries < 0:
            raise SecAggClientError("timeout_s must be > 0 and retries >= 0")
        self.worker_id = worker_id
        self.timeout_s = float(timeout_s)
        self._dp_clips: dict[str, float] = {}  # round id -> dp_clip (0: no DP)
        self.retries = int(retries)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.retry_until_deadline = retry_until_deadline
        # unfinished submissions, kept so that submit() can complete them (see submit)
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._unfinished: dict[str, str] = {}  # round id -> its unfinished submission id
        self._metadata = worker_metadata(worker_id, token)
        # pin each server's identity: with TLS a certificate must name server-a (or
        # server-b), not merely the host dialled, which any party's dev cert carries
        name_a = server_names[0] or (SERVER_A_NAME if tls is not None else None)
        name_b = server_names[1] or (SERVER_B_NAME if tls is not None else None)
        self._chan_a = make_channel(server_a, tls, server_name=name_a)
        self._chan_b = make_channel(server_b, tls, server_name=name_b)
        self._a = secagg_pb2_grpc.WorkerStub(self._chan_a)
        self._b = secagg_pb2_grpc.WorkerStub(self._chan_b)
        self._targets = {"server-a": server_a, "server-b": server_b}

    def __repr__(self) -> str:  # the token stays out of logs and tracebacks
        return (
            f"SecAggClient(server_a={self._targets['server-a']!r}, "
            f"server_b={self._targets['server-b']!r}, worker_id={self.worker_id!r})"
        )

    def close(self) -> None:
        self._chan_a.close()
        self._chan_b.close()

    def __enter__(self) -> SecAggClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing
    def _call(
        self,
        server: str,
        what: str,
        fn: Callable[[], T],
        until: Callable[[], float | None] | None = None,
    ) -> T:
        """``fn()``, retried with backoff on RETRYABLE codes: ``retries`` times, and
        beyond while ``time.monotonic()`` is before ``until()`` (asked once, when the
        retries run out; None: no further)."""
        delay = self.backoff_s
        limit: float | None = None
        attempt = 0
        while True:
            try:
                return fn()
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if code in RETRYABLE and attempt >= self.retries and until is not None:
                    if limit is None:
                        limit = until() or 0.0
                    more = time.monotonic() + min(delay, self.max_backoff_s) < limit
                else:
                    more = attempt < self.retries
                if code in RETRYABLE and more:
                    # jitter keeps many workers from retrying in lockstep
                    pause = min(delay, self.max_backoff_s) * (1.0 + 0.25 * random.random())
                    log.info(
                        "%s %s: %s, retry %d/%d in %.2fs",
                        server,
                        what,
                        code.name if code else "?",
                        attempt + 1,
                        self.retries,
                        pause,
                    )
                    time.sleep(pause)
                    delay *= 2
                    attempt += 1
                    continue
                raise client_error_from_rpc(exc, server, what, attempt + 1) from None

    def _round_deadline(self, round_id: str) -> float | None:
        """The round's deadline on the monotonic clock, from whichever server answers
        (one attempt each); None if neither does or the round has none."""
        req = secagg_pb2.RoundRef(round_id=round_id)
        for stub in (self._a, self._b):
            try:
                st = stub.GetRoundStatus(req, timeout=self.timeout_s, metadata=self._metadata)
            except grpc.RpcError:
                continue
            ms = int(st.config.deadline_unix_ms)
            return time.monotonic() + (ms / 1000.0 - time.time()) if ms else None
        return None

    # ------------------------------------------------------------------- worker API
    def status(self, round_id: str, server: str = "a") -> secagg_pb2.RoundStatus:
        """The round as server A (``"a"``) or B (``"b"``) sees it.

        Returns
        -------
        secagg_pb2.RoundStatus
            State, participants, selection, timings and the round's configuration.
        """
        stub, name = (self._a, "server-a") if server == "a" else (self._b, "server-b")
        req = secagg_pb2.RoundRef(round_id=round_id)
        return self._call(
            name,
            "GetRoundStatus",
            lambda: stub.GetRoundStatus(req, timeout=self.timeout_s, metadata=self._metadata),
        )

    def encoding_params(self, round_id: str) -> tuple[encoding.EncodingParams, int]:
        """The round's encoding parameters and dim, from server A's status."""
        cfg = self.status(round_id).config
        self._dp_clips[round_id] = float(cfg.dp_clip)
        try:
            params = encoding.EncodingParams(
                scale=cfg.scale, coord_bound=cfg.coord_bound, norm_bound=cfg.norm_bound
            )
        except encoding.EncodingError as exc:
            raise SecAggClientError(
                f"round {round_id!r} has unusable encoding parameters ({exc}): tell the operator",
                server="server-a",
            ) from None
        return params, int(cfg.dim)

    def submit(
        self,
        round_id: str,
        vector: np.ndarray | Sequence[float],
        params: encoding.EncodingParams | None = None,
        *,
        clip: bool = False,
        submission_id: str | None = None,
        dp_clip: float | None = None,
    ) -> SubmissionReceipt:
        """Encode, split and submit ``vector`` to round ``round_id``.

        The seed goes to server A, the share to server B; retries resend the very same
        seed and share under the same ``submission_id``, so the servers treat them as
        one submission.

        Submissions are resumable: if a call fails half-way (e.g. A stored the seed,
        then B stayed unreachable), calling ``submit`` again for the same round with
        the same vector (and the same ``submission_id``, or none) completes that
        submission: this client resends the seed and share it kept, which the servers
        accept as the identical retry they are, instead of drawing a new seed that A
        would refuse. A different vector is refused locally while the round has an
        unfinished submission: under one seed, two shares for B would reveal the
        difference of the two vectors to B. What was kept is dropped once both
        receipts are in (``proto/SHARE_ENCODING.md`` §3).

        Parameters
        ----------
        round_id
            The round to join.
        vector
            1-D real vector (e.g. from :func:`flatten_grads`) of the round's dim.
        params
            Encoding parameters; fetched from server A's round configuration if None
            (which also checks the dimension before anything is uploaded).
        clip
            Clip to the round's bounds first (:func:`secagg.encoding.clip_to_bounds`)
            instead of failing on an out-of-bounds vector.
        submission_id
            Idempotency key; if None, the round's unfinished submission's (see above)
            or a random one.
        dp_clip
            DP rounds: the L2 bound C the vector is clipped to before encoding (with
            the rounding margin, :func:`secagg.dp.mechanism.clip_and_encode`), so that
            the servers' exact norm check accepts it. None: the round's ``dp_clip``
            when ``params`` is fetched from the round, else no DP clipping (a caller
            passing ``params`` for a DP round passes ``dp_clip`` too).

        Returns
        -------
        SubmissionReceipt
            Both receipts, whose digests were checked against what was sent.

        Raises
        ------
        SecAggClientError
            For a vector that cannot be encoded, a refused submission (late, duplicate
            with other data, unknown worker, ...) or an unreachable server.
        """
        if params is None:
            params, dim = self.encoding_params(round_id)
            shape = np.shape(vector)
            if shape != (dim,):
                raise SecAggClientError(
                    f"round {round_id!r} expects a 1-D vector of dim {dim}, got shape "
                    f"{np.shape(vector)}: flatten the whole model (flatten_grads)",
                )
        if dp_clip is None:  # known when params came from the round; else pass it
            dp_clip = self._dp_clips.get(round_id, 0.0)
        try:
            x = encoding.clip_to_bounds(vector, params) if clip else vector
            x_enc = clip_and_encode(x, params, dp_clip) if dp_clip else encoding.encode(x, params)
        except (encoding.EncodingError, DpConfigError) as exc:
            raise SecAggClientError(f"cannot encode the vector: {exc}") from None
        job = self._pending_for(round_id, submission_id, payload_digest(x_enc), x_enc)
        del x_enc
        sid, shares = job.submission_id, job.shares
        seed_msg = secagg_pb2.SeedSubmission(
            round_id=round_id,
            worker_id=self.worker_id,
            seed=shares.seed,
            dim=int(shares.share_b.shape[0]),
            submission_id=sid,
        )
        until = (lambda: self._round_deadline(round_id)) if self.retry_until_deadline else None
        try:
            receipt_a = job.receipt_a or self._call(
                "server-a",
                "SubmitSeed",
                lambda: self._a.SubmitSeed(
                    seed_msg, timeout=self.timeout_s, metadata=self._metadata
                ),
                until,
            )
        except SecAggClientError as exc:
            if exc.code not in RETRYABLE:
                # A answered, and refused: it holds no seed of this submission and B
                # was sent nothing, so there is nothing to complete
                self._forget(round_id, sid)
            raise
        job.receipt_a = receipt_a
        # a fresh generator per attempt: a half-consumed stream cannot be resent
        receipt_b = self._call(
            "server-b",
            "SubmitShare",
            lambda: self._b.SubmitShare(
                share_chunk_messages(round_id, self.worker_id, sid, shares.share_b),
                timeout=self.timeout_s,
                metadata=self._metadata,
            ),
            until,
        )
        self._check_receipt("server-a", receipt_a, payload_digest(shares.seed), round_id, sid)
        self._check_receipt("server-b", receipt_b, payload_digest(shares.share_b), round_id, sid)
        self._forget(round_id, sid)  # complete: the seed is kept no longer than needed
        return SubmissionReceipt(
            round_id=round_id,
            worker_id=self.worker_id,
            submission_id=sid,
            server_a=_receipt(receipt_a),
            server_b=_receipt(receipt_b),
        )

    def _pending_for(
        self, round_id: str, submission_id: str | None, digest: bytes, x_enc: np.ndarray
    ) -> _Pending:
        """The submission this call sends: the unfinished one it completes, or a new
        one with a fresh seed (kept until both receipts are in)."""
        sid = submission_id or self._unfinished.get(round_id) or uuid.uuid4().hex
        job = self._pending.get((round_id, sid))
        if job is not None:
            if not hmac.compare_digest(job.digest, digest):
                raise SecAggClientError(
                    f"round {round_id!r} has an unfinished submission ({sid}) of another "
                    "vector, which a server may already hold: submit that same vector "
                    "again to complete it (a second vector under its seed would leak the "
                    "difference of the two to server B)"
                )
            return job
        unfinished = self._unfinished.get(round_id)
        if unfinished is not None and unfinished != sid:
            raise SecAggClientError(
                f"round {round_id!r} has an unfinished submission ({unfinished}): submit "
                "the same vector again without a submission_id (or with that one) to "
                "complete it; a server may already hold half of it"
            )
        job = _Pending(sid, digest, sharing.split(x_enc))
        self._pending[(round_id, sid)] = job
        self._unfinished[round_id] = sid
        return job

    def _forget(self, round_id: str, sid: str) -> None:
        self._pending.pop((round_id, sid), None)
        if self._unfinished.get(round_id) == sid:
            del self._unfinished[round_id]

    def _check_receipt(
        self, server: str, msg: secagg_pb2.Receipt, digest: bytes, round_id: str, sid: str
    ) -> None:
        if (
            msg.round_id != round_id
            or msg.worker_id != self.worker_id
            or msg.submission_id != sid
            or not hmac.compare_digest(msg.digest, digest)
        ):
            raise SecAggClientError(
                f"{server} acknowledged something other than what was sent (round "
                f"{msg.round_id!r}, submission {msg.submission_id!r}, digest mismatch: "
                f"{msg.digest != digest}): do not resubmit; report it to the operator",
                server=server,
            )

    def fetch_aggregate(self, round_id: str) -> Aggregate:
        """Stream the finished round's aggregate from server A (round must be DONE)."""
        req = secagg_pb2.RoundRef(round_id=round_id)
        return self._call(
            "server-a",
            "GetAggregate",
            lambda: fetch_aggregate_from(
                self._a.GetAggregate(req, timeout=self.timeout_s, metadata=self._metadata)
            ),
        )

    def wait_for_result(self, round_id: str, timeout_s: float, poll_s: float = 0.2) -> Aggregate:
        """Poll server A until the round is DONE, then fetch the aggregate.

        Raises
        ------
        SecAggClientError
            If the round fails (with its reason) or is not done within ``timeout_s``.
        """
        return wait_for_result(
            round_id, timeout_s, poll_s, lambda: self.status(round_id), self.fetch_aggregate
        )

    def wait_for_aggregate(
        self, round_id: str, timeout_s: float, poll_s: float = 0.2
    ) -> np.ndarray:
        """Like :meth:`wait_for_result`, returning only the float64 aggregate vector."""
        return self.wait_for_result(round_id, timeout_s, poll_s).vector


def fetch_aggregate_from(stream: Any) -> Aggregate:
    """An :class:`Aggregate` from a ``Worker.GetAggregate`` response stream (header,
    chunks and digest checked by :func:`secagg.transport.read_aggregate_stream`)."""
    try:
        header, vector = read_aggregate_stream(stream)
    except ProtocolError as exc:
        raise SecAggClientError(
            f"server-a GetAggregate: {exc.message}", code=exc.code, server="server-a"
        ) from None
    return Aggregate(
        round_id=header.round_id,
        vector=vector,
        selected=tuple(header.selected),
        divisor=header.divisor,
        scale=header.scale,
        rule=secagg_pb2.Rule.Name(header.rule),
    )


def wait_for_result(
    round_id: str,
    timeout_s: float,
    poll_s: float,
    status: Callable[[], Any],
    fetch: Callable[[str], Aggregate],
) -> Aggregate:
    """Poll ``status()`` until the round is DONE, then ``fetch(round_id)``: the one
    polling loop of the worker SDK and the operator's client.

    Raises
    ------
    SecAggClientError
        If the round fails (with its reason) or is not done within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    state = RoundState.OPEN
    while True:
        try:
            st = status()
        except SecAggClientError as exc:
            # a server restarting while we wait is not the round's failure
            if exc.code not in RETRYABLE or time.monotonic() >= deadline:
                raise
        else:
            state = RoundState.from_proto(st.state)
            if state is RoundState.DONE:
                return fetch(round_id)
            if state is RoundState.FAILED:
                raise SecAggClientError(
                    f"round {round_id!r} failed: {st.failure_reason}; submit to the next round",
                    code=grpc.StatusCode.ABORTED,
                    server="server-a",
                    details=st.failure_reason,
                )
        if time.monotonic() >= deadline:
            raise SecAggClientError(
                f"round {round_id!r} is still {state.value} after {timeout_s:g} s: wait "
                "longer, or ask the operator whether enough workers submitted",
                code=grpc.StatusCode.DEADLINE_EXCEEDED,
                server="server-a",
            )
        time.sleep(max(0.0, min(poll_s, deadline - time.monotonic())))


# -------------------------------------------------------------------- torch helpers


@dataclass(frozen=True)
class FlatEntry:
    """One tensor's place in a flat vector."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name without the "torch." prefix, e.g. "float32"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class FlatSpec:
    """How a flat vector maps back to named tensors (JSON-serialisable).

    ``skipped`` lists state entries left out of the vector (non-floating buffers such
    as BatchNorm's ``num_batches_tracked``): they are not aggregated.
    """

    entries: tuple[FlatEntry, ...]
    skipped: tuple[str, ...] = ()

    @property
    def dim(self) -> int:
        return sum(e.numel for e in self.entries)

    def to_json(self) -> str:
        return json.dumps(
            {
                "entries": [[e.name, list(e.shape), e.dtype] for e in self.entries],
                "skipped": list(self.skipped),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> FlatSpec:
        data = json.loads(text)
        return cls(
            entries=tuple(FlatEntry(n, tuple(s), d) for n, s, d in data["entries"]),
            skipped=tuple(data.get("skipped", ())),
        )


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _flatten(
    named: Sequence[tuple[str, torch.Tensor]], skipped: Sequence[str]
) -> tuple[np.ndarray, FlatSpec]:
    import torch

    if not named:
        raise ValueError("nothing to flatten: the model has no floating-point tensors")
    entries = tuple(FlatEntry(n, tuple(t.shape), _dtype_name(t)) for n, t in named)
    flat = torch.cat([t.detach().reshape(-1).to("cpu", torch.float64) for _, t in named])
    return flat.numpy(), FlatSpec(entries, tuple(skipped))


def flatten_state(model_or_state_dict: Any) -> tuple[np.ndarray, FlatSpec]:
    """Flatten a model's (or a state dict's) floating-point tensors into one vector.

    Parameters
    ----------
    model_or_state_dict
        A ``torch.nn.Module`` (its ``state_dict()`` is used) or a mapping name -> tensor.

    Returns
    -------
    (numpy.ndarray, FlatSpec)
        float64 vector in state-dict order, and the spec for :func:`unflatten`.
        Integer/bool buffers are listed in ``spec.skipped`` and not included.
    """
    import torch

    state = (
        model_or_state_dict.state_dict()
        if isinstance(model_or_state_dict, torch.nn.Module)
        else model_or_state_dict
    )
    named, skipped = [], []
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state entry {name!r} is a {type(t).__name__}, not a tensor")
        if t.is_floating_point():
            named.append((name, t))
        else:
            skipped.append(name)
    return _flatten(named, skipped)


def flatten_grads(model: Any) -> tuple[np.ndarray, FlatSpec]:
    """Flatten the gradients of a model's trainable parameters into one vector.

    Parameters without a gradient (unused in the last backward pass) contribute zeros,
    so every worker's vector has the same layout and dim.

    Returns
    -------
    (numpy.ndarray, FlatSpec)
        float64 vector in ``named_parameters()`` order and the spec; ``unflatten``
        gives a dict parameter name -> gradient tensor.
    """
    import torch

    named = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        named.append((name, g))
    return _flatten(named, ())


def unflatten(vector: np.ndarray, spec: FlatSpec) -> dict[str, torch.Tensor]:
    """Split a flat vector (e.g. the aggregate) back into named tensors.

    Each tensor gets its original shape and dtype (float64 values are rounded to e.g.
    float32). Load the result with ``model.load_state_dict(d, strict=False)`` when
    ``spec.skipped`` is non-empty.

    Raises
    ------
    ValueError
        If the vector's length differs from ``spec.dim``.
    """
    import torch

    v = np.asarray(vector, dtype=np.float64).reshape(-1)
    if v.shape[0] != spec.dim:
        raise ValueError(
            f"vector has {v.shape[0]} elements but the spec describes {spec.dim}: use the "
            "spec of the model the vector was flattened from"
        )
    out: dict[str, torch.Tensor] = {}
    start = 0
    for e in spec.entries:
        piece = v[start : start + e.numel]
        start += e.numel
        out[e.name] = torch.from_numpy(piece.copy()).reshape(e.shape).to(getattr(torch, e.dtype))
    return out
