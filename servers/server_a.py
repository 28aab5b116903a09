"""Server A: workers' seeds, the Admin API, and the coordinator of every round.

A runs rank 0 of the CrypTen session (it also hosts the MPC rendezvous), drives server
B through the Peer service, sees the distance matrix, runs the robust rule and serves
the aggregate. CrypTen work runs on one dedicated thread, off the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health

from secagg import encoding, metrics, mpc, protocol, rules, sharing, transport
from secagg.dp.accounting import NORM_CHECK_REASON, PrivacyLedger
from secagg.prg import fresh_key
from secagg.rounds import (
    Round,
    RoundBook,
    RoundConfig,
    RoundError,
    RoundFailed,
    RoundState,
    Rule,
)
from secagg.store import StoredOutcome, open_store
from secagg.v1 import secagg_pb2 as pb
from secagg.v1 import secagg_pb2_grpc as pbg
from servers import common
from servers.precompute import MatrixBuffer, Projector
from servers.session import SessionKeeper, failed_rounds, restore_rounds, rounds_to_resume

log = logging.getLogger("secagg.server_a")

PHASE_OF_RULE = {Rule.BULYAN: pb.PHASE_BULYAN_COORDINATE}

#: Deadline of A's OpenRound forward to B: well inside the admin client's 60 s, so
#: that A's answer (success, or the round failed on both) reaches the operator.
OPEN_FORWARD_TIMEOUT_S = 20.0

#: How often a round's 2PC is run before the round fails: a rerun follows a session
#: rebuild (B or the dealer died mid-2PC); a failure that repeats is not a passing one.
MAX_2PC_RUNS = 3

#: Peer call failures after which B may or may not have acted on the request.
_UNANSWERED = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


@dataclass
class Outcome:
    """What server A keeps after a round (aggregate and, for the operator, distances)."""

    aggregate: np.ndarray | None = None
    divisor: int = 0
    distances: np.ndarray | None = None  # float, decoded; what A saw
    selected_idx: list[int] = field(default_factory=list)
    dp_rho: float = 0.0  # DP rounds: ρ-zCDP of this round against one server
    # the aggregate's wire bytes and digest, made once per round on first read
    _wire: tuple[bytes, bytes] | None = field(default=None, repr=False)

    def wire(self) -> tuple[bytes, bytes]:
        """The aggregate as little-endian float64 bytes and their SHA-256, cached:
        concurrent readers share one copy instead of serialising and hashing it each."""
        if self._wire is None:
            assert self.aggregate is not None
            data = self.aggregate.astype("<f8").tobytes()
            self._wire = (data, hashlib.sha256(data).digest())
        return self._wire


#: Aggregate downloads served at once; more are refused RESOURCE_EXHAUSTED (retry later).
MAX_AGGREGATE_READERS = 32


class ServerA(pbg.WorkerServicer, pbg.AdminServicer):
    def __init__(
        self,
        settings: common.CommonSettings,
        tokens: transport.TokenStore,
        peer: str,
        admin_token: str | None,
        phase_timeout_s: float,
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.store = open_store(settings.state_dir, "server-a")
        self.book = RoundBook(workers=tokens.worker_ids, server="server-a", store=self.store)
        self.outcomes: dict[str, Outcome] = {}
        self.noise_keys: dict[str, bytes] = {}  # DP: this server's per-round noise key
        self.dp_spent = PrivacyLedger()  # ρ over this process's DP rounds (secagg.dp)
        self.peer_target = peer
        self.admin_token = admin_token
        self.phase_timeout_s = phase_timeout_s
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mpc")
        # validation projections of each share as it arrives (servers.precompute)
        self.precompute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="precompute")
        self.projectors: dict[str, Projector] = {}
        self.matrix = MatrixBuffer()  # the share matrix's pages, reused round after round
        self.session: mpc.MpcSession | None = None
        self.mpc_lock = asyncio.Lock()  # one 2PC computation at a time
        self.tasks: dict[str, asyncio.Task] = {}
        self._opening: dict[str, asyncio.Future[Round]] = {}  # OpenRound in progress
        self.open_forward_timeout_s = OPEN_FORWARD_TIMEOUT_S
        self.channel = common.client_channel(peer, settings.tls, transport.SERVER_B_NAME)
        self.peer = pbg.PeerStub(self.channel)
        self.health: health.aio.HealthServicer | None = None  # serve() sets it
        # builds, watches and rebuilds the MPC session with B and the dealer
        self.keeper = SessionKeeper(self)
        # a restart picks up every round the killed process had (servers.session)
        self.restored = restore_rounds(
            self.book, "server A restarted during the 2PC: it is run again"
        )
        if self.store is not None:
            for rid, kept in self.store.load_outcomes().items():
                self.outcomes[rid] = Outcome(
                    kept.aggregate, kept.divisor, kept.distances, list(kept.selected)
                )
        self.keeper.unsynced.update(failed_rounds(self.restored))
        self._aggregate_readers = 0

    async def _reader(self, context) -> str:  # noqa: ANN001
        """A worker id or common.OPERATOR; nobody reads anonymously."""
        return await common.authenticate_reader(
            context, self.tokens, self.settings.tls is not None, self.admin_token
        )

    # ------------------------------------------------------------------ helpers
    def _peer_md(self) -> list[tuple[str, str]]:
        if self.settings.tls is None and self.settings.peer_token:
            return [("authorization", f"Bearer {self.settings.peer_token}")]
        return []

    async def _mpc(self, fn, *args):  # noqa: ANN001, ANN202
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def start_mpc(self) -> None:
        ep = common.mpc_endpoint(
            self.settings,
            "0.0.0.0" if self.settings.mpc_addr in ("", "0.0.0.0") else self.settings.mpc_addr,
        )
        for rnd in rounds_to_resume(self.restored):  # collection goes on meanwhile
            if rnd.round_id in self.tasks:  # an OpenRound retry got to it first
                continue
            self.outcomes.setdefault(rnd.round_id, Outcome())
            self.tasks[rnd.round_id] = asyncio.create_task(self._coordinate(rnd))
        log.info('{"event": "mpc_starting", "rank": 0}')
        # the keeper builds the session, and rebuilds it whenever a party fails;
        # this returns once the first one is up
        await self.keeper.start(ep)

    def _round(self, round_id: str) -> Round:
        return self.book.get(round_id)

    # ------------------------------------------------------------- Worker API
    async def SubmitSeed(self, request: pb.SeedSubmission, context) -> pb.Receipt:  # noqa: N802
        await common.authenticate_worker(context, self.tokens, request.worker_id)
        try:
            rnd = self._round(request.round_id)
            if request.dim != rnd.config.dim:
                raise transport.ProtocolError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"dim {request.dim} does not match the round's {rnd.config.dim}",
                )
            if len(request.seed) != sharing.SEED_BYTES:
                raise transport.ProtocolError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"a seed is exactly {sharing.SEED_BYTES} bytes, got {len(request.seed)}",
                )
            # the store fsyncs before the receipt goes out: off the event loop
            receipt = await asyncio.to_thread(
                rnd.submit, request.worker_id, request.submission_id, bytes(request.seed)
            )
            metrics.ingest_bytes(len(request.seed))
            proj = self.projectors.get(rnd.round_id)
            if proj is not None:
                proj.add(request.worker_id, bytes(request.seed))
            return receipt.to_proto()
        except (RoundError, transport.ProtocolError, ValueError) as exc:
            await common.abort_for(context, exc)
            raise

    async def SubmitShare(self, request_iterator, context) -> pb.Receipt:  # noqa: N802
        await common.authenticate_worker(context, self.tokens)
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "server A takes seeds (SubmitSeed); send the share vector to server B",
        )

    async def GetRoundStatus(self, request: pb.RoundRef, context) -> pb.RoundStatus:  # noqa: N802
        reader = await self._reader(context)
        try:
            return common.status_for(self._round(request.round_id).to_proto(), reader)
        except RoundError as exc:
            await common.abort_for(context, exc)
            raise

    async def GetAggregate(self, request: pb.RoundRef, context):  # noqa: N802
        reader = await self._reader(context)
        try:
            rnd = self._round(request.round_id)
        except RoundError as exc:
            await common.abort_for(context, exc)
            raise
        if rnd.state is not RoundState.DONE:
            why = f": {rnd.failure_reason}" if rnd.state is RoundState.FAILED else ""
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"round {rnd.round_id!r} is {rnd.state.value}{why}; poll "
                "GetRoundStatus until it is done",
            )
        # after the state check: any registered worker may see the state anyway
        if reader != common.OPERATOR and reader not in rnd.participants:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"only the participants of round {rnd.round_id!r} (and the operator) may "
                "read its aggregate; this worker is not one of them",
            )
        out = self.outcomes.get(rnd.round_id)
        if out is None or out.aggregate is None:
            # killed after finishing the round but before storing its outcome
            await context.abort(
                grpc.StatusCode.DATA_LOSS,
                f"round {rnd.round_id!r} finished but server A lost its aggregate in a "
                "restart; run the round again",
            )
        assert out is not None and out.aggregate is not None
        if self._aggregate_readers >= MAX_AGGREGATE_READERS:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{MAX_AGGREGATE_READERS} aggregate downloads are in progress: retry in a "
                "moment",
            )
        self._aggregate_readers += 1
        try:
            data, digest = out.wire()
            # the rule's pick order is the operator's; a worker gets the selected set
            selected = list(rnd.selected)
            header = pb.AggregateHeader(
                round_id=rnd.round_id,
                dim=rnd.config.dim,
                rule=rnd.config.rule.to_proto(),
                selected=selected if reader == common.OPERATOR else sorted(selected),
                divisor=float(out.divisor),
                scale=rnd.config.scale,
                digest=digest,
            )
            view = memoryview(data)
            step = transport.MAX_CHUNK_BYTES
            for k, off in enumerate(range(0, max(len(data), 1), step)):
                chunk = pb.AggregateChunk(offset=off // 8, data=bytes(view[off : off + step]))
                if k == 0:
                    chunk.header.CopyFrom(header)
                yield chunk
        finally:
            self._aggregate_readers -= 1

    # -------------------------------------------------------------- Admin API
    async def _admin(self, context) -> None:  # noqa: ANN001
        await common.require_identity(
            context, "admin", self.settings.tls is not None, self.admin_token
        )

    async def OpenRound(self, request: pb.RoundConfig, context) -> pb.RoundStatus:  # noqa: N802
        """Open a round on both servers, atomically: when this returns or its caller
        gives up, the round is open on A and B with its coordinator running, or failed
        on both (B is told once it is reachable).

        No MPC session is needed yet: a round collects meanwhile, and its 2PC waits
        for the session (``_run_2pc_when_ready``).
        """
        await self._admin(context)
        try:
            config = RoundConfig.from_proto(request)
        except ValueError as exc:
            await common.abort_for(context, exc)
            raise
        rid = config.round_id
        job = self._opening.get(rid)
        if job is None:
            # A task, shielded below: a caller's deadline cancels this handler, not the
            # opening, which then ends one way or the other (issue #17)
            job = asyncio.ensure_future(self._open_round(request, config))
            self._opening[rid] = job
            job.add_done_callback(lambda t: self._opened(rid, t))
        try:
            rnd = await asyncio.shield(job)
        except (RoundError, ValueError) as exc:
            await common.abort_for(context, exc)
            raise
        except grpc.aio.AioRpcError as exc:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"server B did not accept the round ({exc.code().name}: {exc.details()}); "
                "the round is failed on both servers: check that server B is up, then "
                "open the round under a new round_id",
            )
            raise
        if rnd.state is RoundState.FAILED:  # an identical retry of a failed opening
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"round {rid!r} failed: {rnd.failure_reason}; open a new round_id",
            )
        return rnd.to_proto()

    def _opened(self, rid: str, job: asyncio.Future[Round]) -> None:
        self._opening.pop(rid, None)
        if not job.cancelled():
            job.exception()  # seen by the caller, if it waited; no "never retrieved"

    async def _open_round(self, request: pb.RoundConfig, config: RoundConfig) -> Round:
        """OpenRound's work (see there); raises B's refusal after failing the round."""
        rnd = self.book.open(config)  # the same configuration again: the same round
        if rnd.state.terminal or rnd.round_id in self.tasks:
            return rnd  # already opened on both (or over): nothing to redo
        try:
            await self.peer.OpenRound(
                request, metadata=self._peer_md(), timeout=self.open_forward_timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            reason = f"server B did not accept the round: {exc.code().name}: {exc.details()}"
            rnd.fail(reason)
            if exc.code() in _UNANSWERED:
                # B may have opened it and the answer got lost: fail B's copy too (told
                # once it is reachable). A definitive refusal means B has no such round
                # (an id taken by another configuration is not this round's to fail).
                await self._fail_peer(rnd.round_id, reason)
            raise
        self.outcomes[rnd.round_id] = Outcome()
        self.tasks[rnd.round_id] = asyncio.create_task(self._coordinate(rnd))
        return rnd

    async def ListRounds(self, request: pb.ListRoundsRequest, context) -> pb.ListRoundsResponse:  # noqa: N802
        await self._admin(context)
        states = [RoundState.from_proto(s) for s in request.states]
        rounds = self.book.list(states or None, request.limit)
        return pb.ListRoundsResponse(rounds=[r.to_proto() for r in rounds])

    async def GetRoundReport(self, request: pb.RoundRef, context) -> pb.RoundReport:  # noqa: N802
        """Operator-only: the distance matrix server A saw, with the status."""
        await self._admin(context)
        try:
            rnd = self._round(request.round_id)
        except RoundError as exc:
            await common.abort_for(context, exc)
            raise
        out = self.outcomes.get(rnd.round_id, Outcome())
        dist = [] if out.distances is None else out.distances.ravel().tolist()
        return pb.RoundReport(
            status=rnd.to_proto(),
            distances=dist,
            selected_indices=out.selected_idx,
            **self.dp_spent.report_fields(out.dp_rho, rnd.config.dp_delta),
        )

    # ------------------------------------------------------------ coordinator
    async def _peer_received(self, round_id: str) -> int:
        st = await self.peer.GetPeerStatus(
            pb.RoundRef(round_id=round_id), metadata=self._peer_md(), timeout=10
        )
        return int(st.received)

    async def _coordinate(self, rnd: Round) -> None:
        rid = rnd.round_id
        try:
            if rnd.state in (RoundState.OPEN, RoundState.COLLECTING):
                self._start_projector(rnd)
                if rnd.config.rule is not Rule.MEAN:
                    await self._prepare_if_ready(rnd)
                if not await self._collect(rnd):
                    return
                participants = await self._fix_participants(rnd)
            elif rnd.state is RoundState.PARTICIPANTS_FIXED:
                # restored after a restart (rewound from its interrupted 2PC): run it again
                participants = list(rnd.participants)
            else:
                return
            await self._run_2pc_when_ready(rnd, participants)
            self.projectors.pop(rid, None)
            await asyncio.to_thread(self._save_outcome, rnd)
            return
        except RoundError as exc:
            log.warning('{"event": "round_failed", "round_id": "%s"}', rid)
            reason = exc.message
            if not rnd.state.terminal:  # e.g. a refused transition: the round cannot go on
                rnd.fail(reason)
        except Exception as exc:  # a failed round must not take the server down
            log.exception('{"event": "round_error", "round_id": "%s"}', rid)
            reason = f"{type(exc).__name__}: {exc}"
            rnd.fail(reason)
        # Outside the except blocks: a failed 2PC step's traceback references the MPC
        # session's process groups, and must be garbage before the session is rebuilt.
        self.projectors.pop(rid, None)
        await self._fail_peer(rid, reason)

    def _start_projector(self, rnd: Round) -> None:
        """Draw the round's projection seed now and project shares as they arrive."""
        cfg = rnd.config
        if cfg.validation_threshold() is None or rnd.round_id in self.projectors:
            return
        self.projectors[rnd.round_id] = Projector.for_round(rnd, fresh_key(), self.precompute)

    async def _collect(self, rnd: Round) -> bool:
        """Wait for quorum on both servers, or the deadline; False if the round ended."""
        while True:
            if rnd.state.terminal:
                return False
            if rnd.ready_to_fix():
                if rnd.deadline_passed():
                    return True
                try:
                    if await self._peer_received(rnd.round_id) >= rnd.config.effective_quorum:
                        return True
                except grpc.aio.AioRpcError:
                    pass  # B is away (restarting?): keep collecting; the deadline still holds
            await asyncio.sleep(0.05)

    async def _fix_participants(self, rnd: Round) -> list[str]:
        """Intersect with B's holdings; retry while B is unreachable, up to the MPC timeout.

        B answers a repeated request (A restarted after B fixed them) with the
        participants it already fixed, which are a subset of A's stored holdings.
        """
        holdings = rnd.holdings()  # worker -> submission id
        req = pb.ParticipantsRequest(
            round_id=rnd.round_id,
            entries=[
                pb.ParticipantEntry(worker_id=w, submission_id=s) for w, s in holdings.items()
            ],
        )
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.settings.mpc_timeout_s
        while True:
            try:
                reply = await self.peer.FixParticipants(req, metadata=self._peer_md(), timeout=30)
                break
            except grpc.aio.AioRpcError as exc:
                transient = exc.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
                if not transient:
                    # B refused (e.g. too few workers at the deadline) and says why: a
                    # round failure with B's reason, not a server error
                    raise RoundFailed(
                        f"server B refused to fix the participants: {exc.details()}"
                    ) from None
                if loop.time() >= give_up:
                    raise RuntimeError(
                        f"server B could not fix participants: {exc.details()}"
                    ) from exc
                await asyncio.sleep(0.5)
        return rnd.fix_participants(list(reply.participants), mismatched=reply.mismatched)

    async def _run_2pc_when_ready(self, rnd: Round, participants: list[str]) -> None:
        """Run the round's 2PC once the session is healthy, and again if it breaks.

        Waits for a healthy session (up to the phase timeout; a round that races a
        session rebuild waits for it, issue #17) and first checks that B is still in
        that session's epoch. A 2PC step that fails or times out leaves the three
        parties out of step, so the session is marked broken and rebuilt; the round,
        whose shares are durable on both servers, is rewound to its fixed
        participants and run again on the new session (at most ``MAX_2PC_RUNS``
        times), as after A's own restart.
        """
        loop = asyncio.get_running_loop()
        for run in range(1, MAX_2PC_RUNS + 1):
            give_up = loop.time() + self.phase_timeout_s
            while True:
                if not await self.keeper.wait_ready(give_up - loop.time()):
                    raise RuntimeError(
                        f"no MPC session within {self.phase_timeout_s:.0f} s "
                        f"({self.keeper.last_error})"
                    )
                await self.mpc_lock.acquire()
                if self.keeper.healthy and await self.keeper.confirm_peer():
                    break
                self.mpc_lock.release()  # it broke while we waited, or B left it
            try:
                await self._run_2pc(rnd, participants)
                return
            except RoundError:
                raise  # refused by the round's own rules, with every phase completed
            except Exception as exc:
                first = str(exc).splitlines()[0][:300] if str(exc) else ""
                detail = f"{type(exc).__name__}: {first}"
                if isinstance(exc, grpc.aio.AioRpcError):
                    detail = f"server B: {exc.code().name}: {exc.details()}"
                self.keeper.mark_broken(f"round {rnd.round_id}: {detail}")
                again = rnd.rewind_2pc(f"the 2PC failed ({detail})") or (
                    rnd.state is RoundState.PARTICIPANTS_FIXED  # failed before its 1st phase
                )
                if run == MAX_2PC_RUNS or not again:
                    raise RuntimeError(
                        f"the 2PC failed {run} time(s) (server B or the dealer died, or a "
                        f"step timed out); the MPC session is rebuilt for the next round: "
                        f"{detail}"
                    ) from exc
                log.warning(
                    json.dumps(
                        {"event": "round_rerun", "round_id": rnd.round_id, "run": run + 1}
                    )
                )
                participants = list(rnd.participants)  # validation may have excluded some
            finally:
                try:
                    # the expanded seeds are A's shares: zero them before the next round
                    await asyncio.to_thread(self.matrix.wipe)
                finally:
                    self.mpc_lock.release()

    async def _prepare_if_ready(self, rnd: Round) -> None:
        """Best effort: without it the distance phase fetches its own Gram pair."""
        if not self.keeper.healthy:
            return
        try:
            await self._prepare(rnd)
        except Exception as exc:  # a half-done collective: rebuild before any 2PC
            self.keeper.mark_broken(f"prepare of {rnd.round_id}: {type(exc).__name__}: {exc}")

    def _save_outcome(self, rnd: Round) -> None:
        out = self.outcomes.get(rnd.round_id)
        if self.store is None or out is None or out.aggregate is None:
            return
        try:
            self.store.save_outcome(
                rnd.round_id,
                StoredOutcome(out.aggregate, out.divisor, out.distances, out.selected_idx),
            )
        except Exception:  # the round is done; only a restart would lose the aggregate
            log.exception('{"event": "store_failed", "op": "outcome"}')

    async def _prepare(self, rnd: Round) -> None:
        """Fetch the dealer's Gram pair for n_expected rows while shares arrive: it does
        not depend on them, and it is most of the distance phase's cost."""
        assert self.session is not None
        cfg = rnd.config
        t0 = time.perf_counter()
        proj = self.projectors.get(rnd.round_id)
        async with self.mpc_lock:
            await self._phase(
                rnd,
                pb.PHASE_PREPARE,
                [],
                [],
                self.session.prepare_distances,
                cfg.n_expected,
                cfg.dim,
                # B projects its shares as they arrive too (servers.precompute)
                projection_seed=proj.seed if proj is not None else b"",
            )
        rnd.record_phase("prepare", seconds=time.perf_counter() - t0)

    async def _fail_peer(self, rid: str, reason: str) -> None:
        try:
            await self.peer.FailRound(
                pb.FailRequest(round_id=rid, reason=reason), metadata=self._peer_md(), timeout=10
            )
        except grpc.aio.AioRpcError:
            self.keeper.unsynced[rid] = reason  # B is away: told once it is back

    async def _phase(
        self,
        rnd: Round,
        phase: int,
        participants: list[str],
        selected: list[int],
        fn,  # noqa: ANN001
        *args,  # noqa: ANN002
        projection_seed: bytes = b"",
    ):  # noqa: ANN202
        """Run one 2PC phase: B's half through the Peer RPC, A's half on the MPC thread."""
        req = pb.PhaseRequest(
            round_id=rnd.round_id,
            phase=phase,
            participants=participants,
            selected=selected,
            session_id=uuid.uuid4().hex,
            projection_seed=projection_seed,
        )
        peer_call = self.peer.RunPhase(req, metadata=self._peer_md(), timeout=self.phase_timeout_s)
        mine = self._mpc(fn, *args)
        reply, result = await asyncio.gather(peer_call, mine)
        return reply, result

    async def _run_2pc(self, rnd: Round, participants: list[str]) -> None:
        assert self.session is not None
        cfg = rnd.config
        n = len(participants)
        plan = protocol.RoundPlan(cfg.rule.value, cfg.f, cfg.effective_m(n), dp=cfg.dp_params())
        plan.validate(n)
        t0 = time.perf_counter()
        share = await asyncio.get_running_loop().run_in_executor(
            None,
            _expand_seeds,
            [rnd.submission(w).payload for w in participants],
            self.matrix.view(len(participants), cfg.dim),
        )
        rnd.record_phase("expand_seeds", seconds=time.perf_counter() - t0)
        self.session.reset_traffic()
        out = self.outcomes[rnd.round_id]
        compacted = False  # share is a view of self.matrix (wiped with it) until then
        threshold = cfg.validation_threshold()
        if threshold is not None:
            rnd.start_validation()
            vp = cfg.validation_params()
            proj = self.projectors.get(rnd.round_id)
            if proj is None or proj.k != vp.projections:
                # lost with a restart: a fresh seed, drawn after every vector is fixed
                proj = Projector(
                    rnd.round_id, fresh_key(), vp.projections, cfg.dim, self.precompute
                )
                self.projectors[rnd.round_id] = proj
            projected = await asyncio.to_thread(proj.projections, participants, share)
            self.projectors.pop(rnd.round_id, None)  # R (k·d bytes) is not needed again
            reply, ok = await self._phase(
                rnd,
                pb.PHASE_VALIDATION,
                participants,
                [],
                self.session.validate_projections,
                projected,
                threshold,
                projection_seed=proj.seed,
            )
            rejected = [w for w, good in zip(participants, ok, strict=True) if not good]
            if sorted(reply.rejected) != sorted(rejected):
                raise RuntimeError("servers A and B disagree on the validation outcome")
            if rejected:
                participants = rnd.exclude(
                    rejected, f"failed input validation ({vp.projections} projections > T)"
                )
                share = share[np.asarray(ok, dtype=bool)]  # a copy: wiped at the end
                compacted = True
                n = len(participants)
                plan = replace(plan, m=cfg.effective_m(n))
                plan.validate(n)
        distances = None
        if protocol.needs_distances(plan):
            rnd.start_distances()
            reply, (distances, keep) = await self._phase(
                rnd,
                pb.PHASE_DISTANCES,
                participants,
                [],
                protocol.distance_phase,
                self.session,
                share,
                plan,
            )
            if len(keep) < n:  # DP's exact norm check (secagg.dp), like validation
                rejected = [w for i, w in enumerate(participants) if i not in set(keep)]
                if sorted(reply.rejected) != sorted(rejected):
                    raise RuntimeError("servers A and B disagree on the DP norm check")
                participants = rnd.exclude(rejected, NORM_CHECK_REASON)
                kept = share[keep]
                if compacted:  # validation's copy, replaced: wipe it now
                    share.fill(0)
                share, compacted = kept, True
                n = len(participants)
                plan = replace(plan, m=cfg.effective_m(n))
                plan.validate(n)
            rnd.start_selection()
            if distances is not None:
                out.distances = distances.astype(np.float64) / (2.0**32 * cfg.scale**2)
        try:
            selected = protocol.choose(plan, distances, n)
        except rules.RuleError as exc:
            # The rule refused the revealed matrix (e.g. a wrapped, negative distance).
            # No 2PC step is in flight, so the MPC session stays up; the reason names no
            # value or position of D (rules.py), since it goes to B, logs and statuses.
            raise RoundFailed(f"the {cfg.rule.value} rule refused the distances: {exc}") from None
        out.selected_idx = selected
        rnd.start_reveal([participants[i] for i in selected])
        phase = PHASE_OF_RULE.get(cfg.rule, pb.PHASE_REVEAL)
        # one noise key per round (DP): a reveal run again after a failure adds the same
        # noise instead of opening a second, independently noised sum
        key = self.noise_keys.setdefault(rnd.round_id, fresh_key())
        _, total = await self._phase(
            rnd,
            phase,
            participants,
            selected,
            protocol.reveal,
            self.session,
            share,
            plan,
            selected,
            key,
        )
        out.divisor = plan.divisor(n, selected)
        out.aggregate = encoding.decode(total, cfg.encoding_params(), out.divisor)
        if plan.dp is not None:
            out.dp_rho = plan.dp.rho(plan.rule, n, plan.f, plan.m)
            self.dp_spent.add(out.dp_rho)
        rnd.record_mpc_traffic(self.session.traffic.as_dict())
        metrics.mpc_traffic(self.session.traffic.as_dict())
        rnd.finish()
        self.noise_keys.pop(rnd.round_id, None)
        if compacted:  # A's shares outside self.matrix, which _run_2pc_when_ready wipes
            await asyncio.to_thread(share.fill, 0)

    async def close(self) -> None:
        self.precompute.shutdown(wait=False, cancel_futures=True)
        await self.keeper.stop()
        for t in self.tasks.values():
            t.cancel()
        if self.session is not None:
            await self._mpc(self.session.close)
        await self.channel.close()


def _expand_seeds(seeds: list[bytes], out: np.ndarray) -> np.ndarray:
    for i, s in enumerate(seeds):
        sharing.share_a_into(s, out[i])
    return out


async def serve(args: argparse.Namespace) -> None:
    with common.starting("server-a"):  # a failure here: one line, no traceback
        settings = common.common_settings(args, "server-a")
        common.setup_logging(settings.log_level)
        common.tune_memory()
        common.disable_core_dumps()  # a core file would hold shares and keys
        metrics.serve(args.metrics_listen, "server-a", settings.tls)
        tokens = transport.TokenStore.load(Path(args.worker_tokens))
        admin_token = (
            Path(args.admin_token_file).read_text().strip() if args.admin_token_file else None
        )
        server, hs = common.make_server(settings)
        svc = ServerA(settings, tokens, args.peer, admin_token, args.phase_timeout)
    svc.health = hs  # the session keeper reports NOT_SERVING while it rebuilds
    common.add_service(server, svc, "Worker")
    common.add_service(server, svc, "Admin")
    await common.serve_until_terminated(server, hs, svc, "server-a", settings.listen)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="secagg-server-a", description=__doc__)
    common.add_common_args(p, "127.0.0.1:50051")
    p.add_argument(
        "--peer",
        default=common.env("SECAGG_PEER", "127.0.0.1:50052"),
        help="server B's gRPC address",
    )
    p.add_argument(
        "--worker-tokens",
        default=common.env("SECAGG_WORKER_TOKENS"),
        required=common.env("SECAGG_WORKER_TOKENS") is None,
        help="JSON file of worker id -> sha256 of its token",
    )
    p.add_argument("--admin-token-file", default=common.env("SECAGG_ADMIN_TOKEN_FILE"))
    p.add_argument(
        "--phase-timeout",
        type=float,
        default=float(common.env("SECAGG_PHASE_TIMEOUT_S", "600") or 600),
    )
    asyncio.run(serve(p.parse_args(argv)))


if __name__ == "__main__":
    main()
