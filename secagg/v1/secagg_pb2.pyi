from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Rule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RULE_UNSPECIFIED: _ClassVar[Rule]
    RULE_MEAN: _ClassVar[Rule]
    RULE_KRUM: _ClassVar[Rule]
    RULE_MULTI_KRUM: _ClassVar[Rule]
    RULE_BULYAN: _ClassVar[Rule]

class RoundState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUND_STATE_UNSPECIFIED: _ClassVar[RoundState]
    ROUND_STATE_OPEN: _ClassVar[RoundState]
    ROUND_STATE_COLLECTING: _ClassVar[RoundState]
    ROUND_STATE_PARTICIPANTS_FIXED: _ClassVar[RoundState]
    ROUND_STATE_DISTANCES: _ClassVar[RoundState]
    ROUND_STATE_SELECTION: _ClassVar[RoundState]
    ROUND_STATE_REVEAL: _ClassVar[RoundState]
    ROUND_STATE_DONE: _ClassVar[RoundState]
    ROUND_STATE_FAILED: _ClassVar[RoundState]
    ROUND_STATE_VALIDATION: _ClassVar[RoundState]

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[Phase]
    PHASE_DISTANCES: _ClassVar[Phase]
    PHASE_REVEAL: _ClassVar[Phase]
    PHASE_BULYAN_COORDINATE: _ClassVar[Phase]
    PHASE_VALIDATION: _ClassVar[Phase]
    PHASE_PREPARE: _ClassVar[Phase]
RULE_UNSPECIFIED: Rule
RULE_MEAN: Rule
RULE_KRUM: Rule
RULE_MULTI_KRUM: Rule
RULE_BULYAN: Rule
ROUND_STATE_UNSPECIFIED: RoundState
ROUND_STATE_OPEN: RoundState
ROUND_STATE_COLLECTING: RoundState
ROUND_STATE_PARTICIPANTS_FIXED: RoundState
ROUND_STATE_DISTANCES: RoundState
ROUND_STATE_SELECTION: RoundState
ROUND_STATE_REVEAL: RoundState
ROUND_STATE_DONE: RoundState
ROUND_STATE_FAILED: RoundState
ROUND_STATE_VALIDATION: RoundState
PHASE_UNSPECIFIED: Phase
PHASE_DISTANCES: Phase
PHASE_REVEAL: Phase
PHASE_BULYAN_COORDINATE: Phase
PHASE_VALIDATION: Phase
PHASE_PREPARE: Phase

class RoundConfig(_message.Message):
    __slots__ = ("round_id", "n_expected", "f", "rule", "m", "dim", "scale", "coord_bound", "norm_bound", "quorum", "deadline_unix_ms", "projections", "skip_validation", "invited", "dp_sigma", "dp_clip", "dp_delta")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    N_EXPECTED_FIELD_NUMBER: _ClassVar[int]
    F_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    M_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    COORD_BOUND_FIELD_NUMBER: _ClassVar[int]
    NORM_BOUND_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    PROJECTIONS_FIELD_NUMBER: _ClassVar[int]
    SKIP_VALIDATION_FIELD_NUMBER: _ClassVar[int]
    INVITED_FIELD_NUMBER: _ClassVar[int]
    DP_SIGMA_FIELD_NUMBER: _ClassVar[int]
    DP_CLIP_FIELD_NUMBER: _ClassVar[int]
    DP_DELTA_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    n_expected: int
    f: int
    rule: Rule
    m: int
    dim: int
    scale: float
    coord_bound: float
    norm_bound: float
    quorum: int
    deadline_unix_ms: int
    projections: int
    skip_validation: bool
    invited: _containers.RepeatedScalarFieldContainer[str]
    dp_sigma: float
    dp_clip: float
    dp_delta: float
    def __init__(self, round_id: _Optional[str] = ..., n_expected: _Optional[int] = ..., f: _Optional[int] = ..., rule: _Optional[_Union[Rule, str]] = ..., m: _Optional[int] = ..., dim: _Optional[int] = ..., scale: _Optional[float] = ..., coord_bound: _Optional[float] = ..., norm_bound: _Optional[float] = ..., quorum: _Optional[int] = ..., deadline_unix_ms: _Optional[int] = ..., projections: _Optional[int] = ..., skip_validation: _Optional[bool] = ..., invited: _Optional[_Iterable[str]] = ..., dp_sigma: _Optional[float] = ..., dp_clip: _Optional[float] = ..., dp_delta: _Optional[float] = ...) -> None: ...

class Exclusion(_message.Message):
    __slots__ = ("worker_id", "reason")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    reason: str
    def __init__(self, worker_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class PhaseStats(_message.Message):
    __slots__ = ("phase", "seconds", "bytes_sent", "bytes_received", "comm_rounds", "dealer_bytes")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    COMM_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    DEALER_BYTES_FIELD_NUMBER: _ClassVar[int]
    phase: str
    seconds: float
    bytes_sent: int
    bytes_received: int
    comm_rounds: int
    dealer_bytes: int
    def __init__(self, phase: _Optional[str] = ..., seconds: _Optional[float] = ..., bytes_sent: _Optional[int] = ..., bytes_received: _Optional[int] = ..., comm_rounds: _Optional[int] = ..., dealer_bytes: _Optional[int] = ...) -> None: ...

class RoundStatus(_message.Message):
    __slots__ = ("round_id", "state", "failure_reason", "received", "participants", "selected", "phases", "config", "updated_unix_ms", "excluded")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    PHASES_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    state: RoundState
    failure_reason: str
    received: int
    participants: _containers.RepeatedScalarFieldContainer[str]
    selected: _containers.RepeatedScalarFieldContainer[str]
    phases: _containers.RepeatedCompositeFieldContainer[PhaseStats]
    config: RoundConfig
    updated_unix_ms: int
    excluded: _containers.RepeatedCompositeFieldContainer[Exclusion]
    def __init__(self, round_id: _Optional[str] = ..., state: _Optional[_Union[RoundState, str]] = ..., failure_reason: _Optional[str] = ..., received: _Optional[int] = ..., participants: _Optional[_Iterable[str]] = ..., selected: _Optional[_Iterable[str]] = ..., phases: _Optional[_Iterable[_Union[PhaseStats, _Mapping]]] = ..., config: _Optional[_Union[RoundConfig, _Mapping]] = ..., updated_unix_ms: _Optional[int] = ..., excluded: _Optional[_Iterable[_Union[Exclusion, _Mapping]]] = ...) -> None: ...

class RoundRef(_message.Message):
    __slots__ = ("round_id",)
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    def __init__(self, round_id: _Optional[str] = ...) -> None: ...

class SeedSubmission(_message.Message):
    __slots__ = ("round_id", "worker_id", "seed", "dim", "submission_id")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    worker_id: str
    seed: bytes
    dim: int
    submission_id: str
    def __init__(self, round_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., seed: _Optional[bytes] = ..., dim: _Optional[int] = ..., submission_id: _Optional[str] = ...) -> None: ...

class ShareChunk(_message.Message):
    __slots__ = ("round_id", "worker_id", "dim", "submission_id", "offset", "data")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    worker_id: str
    dim: int
    submission_id: str
    offset: int
    data: bytes
    def __init__(self, round_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., dim: _Optional[int] = ..., submission_id: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Receipt(_message.Message):
    __slots__ = ("round_id", "worker_id", "submission_id", "digest", "dim", "accepted_unix_ms", "server")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    worker_id: str
    submission_id: str
    digest: bytes
    dim: int
    accepted_unix_ms: int
    server: str
    def __init__(self, round_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., submission_id: _Optional[str] = ..., digest: _Optional[bytes] = ..., dim: _Optional[int] = ..., accepted_unix_ms: _Optional[int] = ..., server: _Optional[str] = ...) -> None: ...

class AggregateHeader(_message.Message):
    __slots__ = ("round_id", "dim", "rule", "selected", "divisor", "scale", "digest")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    DIVISOR_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    dim: int
    rule: Rule
    selected: _containers.RepeatedScalarFieldContainer[str]
    divisor: float
    scale: float
    digest: bytes
    def __init__(self, round_id: _Optional[str] = ..., dim: _Optional[int] = ..., rule: _Optional[_Union[Rule, str]] = ..., selected: _Optional[_Iterable[str]] = ..., divisor: _Optional[float] = ..., scale: _Optional[float] = ..., digest: _Optional[bytes] = ...) -> None: ...

class AggregateChunk(_message.Message):
    __slots__ = ("header", "offset", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: AggregateHeader
    offset: int
    data: bytes
    def __init__(self, header: _Optional[_Union[AggregateHeader, _Mapping]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ListRoundsRequest(_message.Message):
    __slots__ = ("states", "limit")
    STATES_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[RoundState]
    limit: int
    def __init__(self, states: _Optional[_Iterable[_Union[RoundState, str]]] = ..., limit: _Optional[int] = ...) -> None: ...

class ListRoundsResponse(_message.Message):
    __slots__ = ("rounds",)
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    rounds: _containers.RepeatedCompositeFieldContainer[RoundStatus]
    def __init__(self, rounds: _Optional[_Iterable[_Union[RoundStatus, _Mapping]]] = ...) -> None: ...

class RoundReport(_message.Message):
    __slots__ = ("status", "distances", "selected_indices", "dp_rho", "dp_rho_spent", "dp_rounds", "dp_epsilon_spent")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DISTANCES_FIELD_NUMBER: _ClassVar[int]
    SELECTED_INDICES_FIELD_NUMBER: _ClassVar[int]
    DP_RHO_FIELD_NUMBER: _ClassVar[int]
    DP_RHO_SPENT_FIELD_NUMBER: _ClassVar[int]
    DP_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    DP_EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    status: RoundStatus
    distances: _containers.RepeatedScalarFieldContainer[float]
    selected_indices: _containers.RepeatedScalarFieldContainer[int]
    dp_rho: float
    dp_rho_spent: float
    dp_rounds: int
    dp_epsilon_spent: float
    def __init__(self, status: _Optional[_Union[RoundStatus, _Mapping]] = ..., distances: _Optional[_Iterable[float]] = ..., selected_indices: _Optional[_Iterable[int]] = ..., dp_rho: _Optional[float] = ..., dp_rho_spent: _Optional[float] = ..., dp_rounds: _Optional[int] = ..., dp_epsilon_spent: _Optional[float] = ...) -> None: ...

class ParticipantEntry(_message.Message):
    __slots__ = ("worker_id", "submission_id", "digest")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    submission_id: str
    digest: bytes
    def __init__(self, worker_id: _Optional[str] = ..., submission_id: _Optional[str] = ..., digest: _Optional[bytes] = ...) -> None: ...

class ParticipantsRequest(_message.Message):
    __slots__ = ("round_id", "entries")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    entries: _containers.RepeatedCompositeFieldContainer[ParticipantEntry]
    def __init__(self, round_id: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[ParticipantEntry, _Mapping]]] = ...) -> None: ...

class ParticipantsReply(_message.Message):
    __slots__ = ("round_id", "participants", "mismatched")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    MISMATCHED_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    participants: _containers.RepeatedScalarFieldContainer[str]
    mismatched: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, round_id: _Optional[str] = ..., participants: _Optional[_Iterable[str]] = ..., mismatched: _Optional[_Iterable[str]] = ...) -> None: ...

class PhaseRequest(_message.Message):
    __slots__ = ("round_id", "phase", "participants", "selected", "session_id", "beta", "projection_seed")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_SEED_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    phase: Phase
    participants: _containers.RepeatedScalarFieldContainer[str]
    selected: _containers.RepeatedScalarFieldContainer[int]
    session_id: str
    beta: int
    projection_seed: bytes
    def __init__(self, round_id: _Optional[str] = ..., phase: _Optional[_Union[Phase, str]] = ..., participants: _Optional[_Iterable[str]] = ..., selected: _Optional[_Iterable[int]] = ..., session_id: _Optional[str] = ..., beta: _Optional[int] = ..., projection_seed: _Optional[bytes] = ...) -> None: ...

class PhaseReply(_message.Message):
    __slots__ = ("round_id", "phase", "stats", "rejected")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    phase: Phase
    stats: PhaseStats
    rejected: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, round_id: _Optional[str] = ..., phase: _Optional[_Union[Phase, str]] = ..., stats: _Optional[_Union[PhaseStats, _Mapping]] = ..., rejected: _Optional[_Iterable[str]] = ...) -> None: ...

class FailRequest(_message.Message):
    __slots__ = ("round_id", "reason")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    reason: str
    def __init__(self, round_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("epoch", "join")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    JOIN_FIELD_NUMBER: _ClassVar[int]
    epoch: str
    join: bool
    def __init__(self, epoch: _Optional[str] = ..., join: _Optional[bool] = ...) -> None: ...

class SessionReply(_message.Message):
    __slots__ = ("epoch", "state", "detail")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    epoch: str
    state: str
    detail: str
    def __init__(self, epoch: _Optional[str] = ..., state: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...
