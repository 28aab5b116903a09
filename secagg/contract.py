"""The round contract: ids, rules, states, configuration, errors, receipts, digests.

What clients, transport and the store share with the round state machine
(:mod:`secagg.rounds`), and nothing else: no state machine, no store, no torch, no
network (issue #14). :mod:`secagg.rounds` re-exports every name here, so older
``from secagg.rounds import ...`` lines keep working.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from secagg.v1 import secagg_pb2

__all__ = [
    "ALLOWED_TRANSITIONS",
    "ConflictingSubmission",
    "DEFAULT_MAX_DIM",
    "DuplicateRound",
    "ID_PATTERN",
    "IllegalTransition",
    "InvalidSubmission",
    "LateSubmission",
    "MIN_MEAN_PARTICIPANTS",
    "NotInvited",
    "PhaseStats",
    "Receipt",
    "ReplayedSubmission",
    "RoundConfig",
    "RoundError",
    "RoundFailed",
    "RoundSnapshot",
    "RoundState",
    "Rule",
    "SEED_BYTES",
    "StorageError",
    "Submission",
    "UnknownRound",
    "UnknownWorker",
    "check_id",
    "min_participants",
    "payload_digest",
]

#: Largest vector a round may declare by default: 2^26 elements = 512 MiB per share.
#: Server B holds n of them in memory, so deployments size this to their RAM.
DEFAULT_MAX_DIM: int = 1 << 26

#: Round and worker ids: short, printable, safe in logs, file names and DNS labels.
ID_PATTERN: re.Pattern[str] = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

#: A mean over a single worker would open that worker's vector in the clear.
MIN_MEAN_PARTICIPANTS: int = 2

#: Server A's share is an AES-256-CTR key (``secagg.prg.KEY_BYTES``).
SEED_BYTES: int = 32


def _now_ms(clock: Callable[[], float]) -> int:
    return int(clock() * 1000)


def check_id(kind: str, value: object) -> str:
    """Return ``value`` if it is a valid round/worker id, else raise ValueError.

    Parameters
    ----------
    kind
        What the id names ("round_id", "worker_id", ...), for the message.
    value
        The candidate id.
    """
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise ValueError(
            f"{kind} {value!r} is not a valid id: use 1-128 characters from "
            "[A-Za-z0-9._-], starting with a letter or digit"
        )
    return value


# ----------------------------------------------------------------------------- enums


class Rule(StrEnum):
    """Aggregation rule; values are the names used by :mod:`secagg.rules`."""

    MEAN = "mean"
    KRUM = "krum"
    MULTI_KRUM = "multi-krum"
    BULYAN = "bulyan"

    @classmethod
    def parse(cls, value: str | Rule) -> Rule:
        """Accept ``"multi-krum"``, ``"MULTI_KRUM"``, ``"multi_krum"`` or a Rule."""
        if isinstance(value, Rule):
            return value
        if isinstance(value, str):
            key = value.strip().lower().replace("_", "-")
            if key.startswith("rule-"):  # the proto enum's value name
                key = key[len("rule-") :]
            for rule in cls:
                if rule.value == key:
                    return rule
        raise ValueError(f"unknown rule {value!r}: expected one of {[r.value for r in cls]}")

    def to_proto(self) -> int:
        from secagg.v1 import secagg_pb2

        return secagg_pb2.Rule.Value("RULE_" + self.name)

    @classmethod
    def from_proto(cls, value: int) -> Rule:
        from secagg.v1 import secagg_pb2

        name = secagg_pb2.Rule.Name(value)
        if name == "RULE_UNSPECIFIED":
            raise ValueError(
                "rule is unset (RULE_UNSPECIFIED): choose mean, krum, multi-krum or bulyan"
            )
        return cls[name[len("RULE_") :]]


class RoundState(StrEnum):
    """State of a round; mirrors the proto enum ``RoundState`` (without its prefix)."""

    OPEN = "open"
    COLLECTING = "collecting"
    PARTICIPANTS_FIXED = "participants_fixed"
    VALIDATION = "validation"
    DISTANCES = "distances"
    SELECTION = "selection"
    REVEAL = "reveal"
    DONE = "done"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (RoundState.DONE, RoundState.FAILED)

    def to_proto(self) -> int:
        from secagg.v1 import secagg_pb2

        return secagg_pb2.RoundState.Value("ROUND_STATE_" + self.name)

    @classmethod
    def from_proto(cls, value: int) -> RoundState:
        from secagg.v1 import secagg_pb2

        name = secagg_pb2.RoundState.Name(value)
        if name == "ROUND_STATE_UNSPECIFIED":
            raise ValueError("round state is unset (ROUND_STATE_UNSPECIFIED)")
        return cls[name[len("ROUND_STATE_") :]]


_S = RoundState
#: Legal transitions. FAILED is reachable from every non-terminal state (see
#: :meth:`Round.fail`); the mean's shortcut PARTICIPANTS_FIXED -> REVEAL is checked
#: against the rule in :meth:`Round.transition`.
ALLOWED_TRANSITIONS: Mapping[RoundState, frozenset[RoundState]] = {
    _S.OPEN: frozenset({_S.COLLECTING, _S.FAILED}),
    _S.COLLECTING: frozenset({_S.PARTICIPANTS_FIXED, _S.FAILED}),
    _S.PARTICIPANTS_FIXED: frozenset({_S.VALIDATION, _S.DISTANCES, _S.REVEAL, _S.FAILED}),
    _S.VALIDATION: frozenset({_S.DISTANCES, _S.REVEAL, _S.FAILED}),
    _S.DISTANCES: frozenset({_S.SELECTION, _S.FAILED}),
    _S.SELECTION: frozenset({_S.REVEAL, _S.FAILED}),
    _S.REVEAL: frozenset({_S.DONE, _S.FAILED}),
    _S.DONE: frozenset(),
    _S.FAILED: frozenset(),
}

#: States in which a 2PC computation is running. Recovery (:meth:`Round.rewind_2pc`)
#: may take a round from these back to PARTICIPANTS_FIXED, outside the table above:
#: the computation died with its MPC session and is run again.
_TWO_PC_STATES: frozenset[RoundState] = frozenset(
    {_S.VALIDATION, _S.DISTANCES, _S.SELECTION, _S.REVEAL}
)


# ---------------------------------------------------------------------------- errors


class RoundError(Exception):
    """A request the round state machine refuses.

    Attributes
    ----------
    code : str
        The gRPC status code name a server should answer with (``grpc.StatusCode[code]``);
        a string so that this module does not import grpc.
    message : str
        What happened and what the caller should do; safe to send to the client.
    """

    code: ClassVar[str] = "FAILED_PRECONDITION"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnknownRound(RoundError):
    code = "NOT_FOUND"


class DuplicateRound(RoundError):
    code = "ALREADY_EXISTS"


class UnknownWorker(RoundError):
    code = "PERMISSION_DENIED"


class InvalidSubmission(RoundError):
    code = "INVALID_ARGUMENT"


class ConflictingSubmission(RoundError):
    code = "ALREADY_EXISTS"


class ReplayedSubmission(RoundError):
    code = "ALREADY_EXISTS"


class LateSubmission(RoundError):
    code = "FAILED_PRECONDITION"


class NotInvited(RoundError):
    """The round is full (``n_expected`` workers submitted) or has an invitation list
    without this worker."""

    code = "PERMISSION_DENIED"


class RoundFailed(RoundError):
    code = "FAILED_PRECONDITION"


class IllegalTransition(RoundError):
    code = "FAILED_PRECONDITION"


class StorageError(RoundError):
    """The submission could not be written to disk, so no receipt was issued."""

    code = "UNAVAILABLE"  # transient: the SDK retries UNAVAILABLE


# ---------------------------------------------------------------------------- config


def min_participants(rule: Rule | str, f: int) -> int:
    """Fewest participants ``rule`` accepts with ``f`` Byzantine workers.

    Krum and Multi-Krum need ``n >= 2f+3``, Bulyan ``n >= 4f+3`` (``secagg.rules``);
    the mean needs :data:`MIN_MEAN_PARTICIPANTS` so that no single vector is opened.
    """
    r = Rule.parse(rule)
    if r in (Rule.KRUM, Rule.MULTI_KRUM):
        return 2 * f + 3
    if r is Rule.BULYAN:
        return 4 * f + 3
    return MIN_MEAN_PARTICIPANTS


def _is_int(v: object) -> bool:
    # bool is an int subclass; n_expected=True is a bug, not 1
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclass(frozen=True, kw_only=True)
class RoundConfig:
    """Configuration of one round; mirrors the proto message ``RoundConfig``.

    Parameters
    ----------
    round_id : str
        Unique id (:data:`ID_PATTERN`).
    n_expected : int
        Workers invited.
    f : int
        Byzantine workers tolerated.
    rule : Rule or str
        ``mean``, ``krum``, ``multi-krum`` or ``bulyan``.
    dim : int
        Vector length.
    scale, coord_bound, norm_bound : float
        Encoding parameters (:class:`secagg.encoding.EncodingParams`).
    m : int, default 0
        Multi-Krum's m; 0 means the default ``n - f - 2`` of the actual participants.
        Otherwise ``1 <= m <= n_expected - f - 2`` (the seeds' bound, AggregaThor), and
        with fewer actual participants n it is capped at ``n - f - 2``
        (:meth:`effective_m`). Must be 0 for the other rules.
    quorum : int, default 0
        Participants that let the round start before the deadline; 0 means
        ``n_expected``.
    deadline_unix_ms : int
        Collection closes at this time (milliseconds since the epoch).
    projections : int, default 0
        Input validation's k (:mod:`secagg.validation`); 0 means the default 40.
    skip_validation : bool, default False
        Skip input validation. Only for demonstrating the attack it stops: without it
        a worker can submit a ring element that wraps (see secagg.validation).
    invited : tuple of str, default ()
        If not empty, the only workers who may submit (exactly ``n_expected`` distinct
        registered ids). Either way at most ``n_expected`` workers take part: B's memory
        and the prepared Gram pair are sized for them.
    dp_sigma, dp_clip, dp_delta : float, default 0
        Differential privacy (:mod:`secagg.dp`, ``docs/dp.md``); all 0 = off. Each
        server's discrete Gaussian std on the opened sum and the exact L2 bound C, both
        in real (decoded) units (``secagg dp plan`` prints them), and the run's δ at
        which server A reports the ε spent.
    """

    round_id: str
    n_expected: int
    f: int
    rule: Rule
    dim: int
    scale: float = 1.0
    coord_bound: float
    norm_bound: float
    m: int = 0
    quorum: int = 0
    deadline_unix_ms: int
    projections: int = 0
    skip_validation: bool = False
    invited: tuple[str, ...] = ()
    dp_sigma: float = 0.0
    dp_clip: float = 0.0
    dp_delta: float = 0.0

    def __post_init__(self) -> None:
        # normalise so that equal configs compare equal (idempotent OpenRound retries)
        object.__setattr__(self, "rule", Rule.parse(self.rule))
        if isinstance(self.invited, (list, tuple)):
            object.__setattr__(self, "invited", tuple(self.invited))
        for name in ("n_expected", "f", "dim", "m", "quorum", "deadline_unix_ms", "projections"):
            v = getattr(self, name)
            if _is_int(v):
                object.__setattr__(self, name, int(v))
        for name in ("scale", "coord_bound", "norm_bound", "dp_sigma", "dp_clip", "dp_delta"):
            v = getattr(self, name)
            if _is_int(v) or isinstance(v, (float, np.floating)):
                object.__setattr__(self, name, float(v))

    # -------------------------------------------------------------- derived values
    @property
    def min_participants(self) -> int:
        """Fewest participants the rule accepts (:func:`min_participants`)."""
        return min_participants(self.rule, self.f)

    @property
    def effective_quorum(self) -> int:
        return self.quorum or self.n_expected

    def effective_m(self, n: int) -> int | None:
        """Multi-Krum's m for ``n`` actual participants; None for the other rules.

        ``min(m, n - f - 2)`` (``n - f - 2`` when m is 0): the seeds' bound
        ``m <= n - f - 2`` must hold for the participants actually present, so a
        worker dropping out does not fail the round and the bound keeps holding.
        """
        if self.rule is not Rule.MULTI_KRUM:
            return None
        cap = n - self.f - 2
        return min(self.m, cap) if self.m else cap

    def validation_params(self) -> Any:
        """The round's :class:`secagg.validation.ValidationParams`, or None if skipped."""
        if self.skip_validation:
            return None
        from secagg.validation import DEFAULT_PROJECTIONS, ValidationParams

        return ValidationParams(projections=self.projections or DEFAULT_PROJECTIONS)

    def validation_threshold(self) -> int | None:
        """The public projection bound T for this round, or None if validation is off."""
        vp = self.validation_params()
        if vp is None:
            return None
        from secagg.validation import threshold

        return threshold(self.encoding_params(), self.dim, vp)

    def dp_params(self) -> Any:
        """The round's :class:`secagg.dp.mechanism.RoundDp`, or None when DP is off."""
        from secagg.dp.mechanism import RoundDp

        return RoundDp.from_config(self.dp_sigma, self.dp_clip, self.scale)

    def encoding_params(self) -> Any:
        """The round's :class:`secagg.encoding.EncodingParams`."""
        from secagg.encoding import EncodingParams

        return EncodingParams(
            scale=self.scale, coord_bound=self.coord_bound, norm_bound=self.norm_bound
        )

    # ------------------------------------------------------------------ validation
    def validate(self, *, now_ms: int | None = None, max_dim: int = DEFAULT_MAX_DIM) -> None:
        """Check every bound; raise ValueError naming the first violated one.

        Parameters
        ----------
        now_ms
            Current time for the deadline check; the system clock if None.
        max_dim
            Largest admissible ``dim`` for this deployment.

        Raises
        ------
        ValueError
            (or its subclass ``secagg.encoding.EncodingError`` for the ring headroom).
        """
        check_id("round_id", self.round_id)
        for name in ("n_expected", "f", "dim", "m", "quorum", "deadline_unix_ms", "projections"):
            if not _is_int(getattr(self, name)):
                raise ValueError(f"{name} must be an integer, got {getattr(self, name)!r}")
        n, f = self.n_expected, self.f
        if f < 0:
            raise ValueError(f"f must be >= 0, got f={f}")
        if n < 1:
            raise ValueError(f"n_expected must be >= 1, got n_expected={n}")
        need = self.min_participants
        if n < need:
            bound = {
                Rule.KRUM: "n >= 2f+3",
                Rule.MULTI_KRUM: "n >= 2f+3",
                Rule.BULYAN: "n >= 4f+3",
                Rule.MEAN: f"n >= {MIN_MEAN_PARTICIPANTS}",
            }[self.rule]
            raise ValueError(
                f"{self.rule.value} needs {bound} = {need}, got n_expected={n}, f={f}: "
                "invite more workers or lower f"
            )
        if self.rule is Rule.MULTI_KRUM:
            if self.m != 0 and not 1 <= self.m <= n - f - 2:
                raise ValueError(
                    f"multi-krum needs 1 <= m <= n - f - 2 = {n - f - 2} (n_expected={n}, "
                    f"f={f}), got m={self.m}: lower m (0 selects the default n - f - 2)"
                )
        elif self.m != 0:
            raise ValueError(
                f"{self.rule.value} takes no m (only multi-krum does), got m={self.m}: leave m at 0"
            )
        if self.quorum != 0 and not need <= self.quorum <= n:
            raise ValueError(
                f"quorum must be within [{need}, n_expected={n}] for {self.rule.value} "
                f"with f={f}, got quorum={self.quorum} (0 means n_expected)"
            )
        if not 1 <= self.dim <= max_dim:
            raise ValueError(f"dim must be within [1, {max_dim}], got dim={self.dim}")
        if self.invited:
            for w in self.invited:
                check_id("invited worker_id", w)
            if len(set(self.invited)) != len(self.invited) or len(self.invited) != n:
                raise ValueError(
                    f"invited must list exactly n_expected={n} distinct worker ids, got "
                    f"{len(self.invited)} ({len(set(self.invited))} distinct)"
                )
        for name in ("scale", "coord_bound", "norm_bound"):
            v = getattr(self, name)
            if not isinstance(v, float) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be positive and finite, got {name}={v!r}")
        now = _now_ms(time.time) if now_ms is None else now_ms
        if self.deadline_unix_ms <= now:
            raise ValueError(
                f"deadline_unix_ms={self.deadline_unix_ms} is not in the future "
                f"(now {now}): set a later deadline"
            )
        # EncodingParams re-checks the bounds (norm_bound < 2^14.5) and check_headroom
        # that no pairwise distance or opened sum can wrap around 2^63.
        from secagg.encoding import check_headroom

        check_headroom(self.encoding_params(), n, self.dim)
        if not isinstance(self.skip_validation, bool):
            raise ValueError(f"skip_validation must be a bool, got {self.skip_validation!r}")
        vp = self.validation_params()  # checks projections within [MIN_PROJECTIONS, 256]
        if vp is not None:
            # an accepted vector may be longer than an honest one (the test's slack):
            # its distances and sums must not wrap either
            from secagg.validation import check_validated_headroom

            check_validated_headroom(self.encoding_params(), n, self.dim, vp)
        self._validate_dp()

    def _validate_dp(self) -> None:
        for name in ("dp_sigma", "dp_clip", "dp_delta"):
            v = getattr(self, name)
            if not isinstance(v, float) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be >= 0 and finite, got {name}={v!r}")
        dp = self.dp_params()  # DpConfigError (a ValueError) names what to change
        if dp is None:
            if self.dp_delta != 0:
                raise ValueError("dp_delta is set but DP is off: set dp_sigma and dp_clip too")
            return
        if self.skip_validation:
            raise ValueError(
                "DP rounds need input validation (the exact norm check relies on it): "
                "do not skip it"
            )
        if self.dp_clip * self.scale > self.norm_bound:
            raise ValueError(
                f"dp_clip·scale = {self.dp_clip * self.scale:g} exceeds norm_bound = "
                f"{self.norm_bound:g}: clipped vectors must pass validation; raise norm_bound"
            )
        if not 0 < self.dp_delta < 1:
            raise ValueError(
                f"DP rounds need dp_delta in (0, 1) (the run's δ), got {self.dp_delta!r}"
            )

    # ----------------------------------------------------------------- conversion
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rule"] = self.rule.value
        return d

    def to_proto(self) -> secagg_pb2.RoundConfig:
        from secagg.v1 import secagg_pb2

        d = self.to_dict()
        d["rule"] = self.rule.to_proto()
        return secagg_pb2.RoundConfig(**d)

    @classmethod
    def from_proto(cls, msg: secagg_pb2.RoundConfig) -> RoundConfig:
        """Build from the wire message (not validated: call :meth:`validate`)."""
        return cls(
            round_id=msg.round_id,
            n_expected=msg.n_expected,
            f=msg.f,
            rule=Rule.from_proto(msg.rule),
            m=msg.m,
            dim=msg.dim,
            scale=msg.scale,
            coord_bound=msg.coord_bound,
            norm_bound=msg.norm_bound,
            quorum=msg.quorum,
            deadline_unix_ms=msg.deadline_unix_ms,
            projections=msg.projections,
            skip_validation=msg.skip_validation,
            invited=tuple(msg.invited),
            dp_sigma=msg.dp_sigma,
            dp_clip=msg.dp_clip,
            dp_delta=msg.dp_delta,
        )


# ------------------------------------------------------------------------ submissions


def payload_digest(payload: bytes | np.ndarray) -> bytes:
    """SHA-256 of a seed, or of a share vector as little-endian int64 bytes.

    This is the digest in receipts; it equals ``sha256(share_to_bytes(share))``.
    """
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return hashlib.sha256(payload).digest()
    arr = np.ascontiguousarray(payload, dtype="<i8")
    return hashlib.sha256(memoryview(arr).cast("B")).digest()


@dataclass(frozen=True)
class Receipt:
    """What a server returns for an accepted submission (proto ``Receipt``)."""

    round_id: str
    worker_id: str
    submission_id: str
    digest: bytes
    dim: int
    accepted_unix_ms: int
    server: str = ""

    def to_proto(self) -> secagg_pb2.Receipt:
        from secagg.v1 import secagg_pb2

        return secagg_pb2.Receipt(**asdict(self))


@dataclass(frozen=True, eq=False)
class Submission:
    """A stored submission. ``payload`` is the seed (bytes) or share (int64 array)."""

    worker_id: str
    submission_id: str
    digest: bytes
    payload: bytes | np.ndarray = field(repr=False)
    receipt: Receipt


@dataclass
class PhaseStats:
    """Accumulated cost of one phase (proto ``PhaseStats``)."""

    phase: str
    seconds: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0
    comm_rounds: int = 0
    dealer_bytes: int = 0


@dataclass(frozen=True)
class RoundSnapshot:
    """A round's state without its submissions: what a store keeps and restores."""

    config: RoundConfig
    state: RoundState
    failure_reason: str
    participants: tuple[str, ...]
    mismatched: tuple[str, ...]
    selected: tuple[str, ...]
    excluded: dict[str, str]
    phases: tuple[PhaseStats, ...]
    opened_unix_ms: int
    updated_unix_ms: int
