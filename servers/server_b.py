"""Server B: workers' share vectors, and its half of every 2PC phase (Peer service).

B never sees the distance matrix. It learns the participant set, the selection A hands
it, and the opened (window) sum, which is the aggregate. Its Peer service answers only
server A (mTLS identity "server-a", or the peer token when TLS is off).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health

from secagg import encoding, metrics, mpc, protocol, transport
from secagg.dp.accounting import NORM_CHECK_REASON
from secagg.prg import fresh_key
from secagg.rounds import Round, RoundBook, RoundConfig, RoundError, RoundFailed, RoundState
from secagg.store import open_store
from secagg.v1 import secagg_pb2 as pb
from secagg.v1 import secagg_pb2_grpc as pbg
from servers import common
from servers.precompute import Projector
from servers.session import SessionMember, restore_rounds

log = logging.getLogger("secagg.server_b")


class ServerB(pbg.WorkerServicer, pbg.PeerServicer):
    def __init__(self, settings: common.CommonSettings, tokens: transport.TokenStore) -> None:
        self.settings = settings
        self.tokens = tokens
        self.store = open_store(settings.state_dir, "server-b")
        self.book = RoundBook(workers=tokens.worker_ids, server="server-b", store=self.store)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mpc")
        self.noise_keys: dict[str, bytes] = {}  # DP: this server's per-round noise key
        self.session: mpc.MpcSession | None = None
        self.aggregates: dict[str, np.ndarray] = {}
        self.health: health.aio.HealthServicer | None = None  # serve() sets it
        # leaves and joins MPC session epochs when server A says so (servers.session)
        self.member = SessionMember(self)
        # Workers with a share upload in progress: one stream per worker at a time, so
        # a flood of parallel uploads cannot hold more than one share each in memory.
        self._uploads: set[str] = set()
        # round -> (participants, their shares stacked): built once per round, off the
        # event loop, instead of an n·d copy in every phase
        self._building: dict[str, tuple[tuple[str, ...], asyncio.Future[np.ndarray]]] = {}
        # validation projections of each share as it arrives, once A has sent the
        # round's seed with PREPARE (servers.precompute)
        self.precompute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="precompute")
        self.projectors: dict[str, Projector] = {}
        restore_rounds(self.book, "server B restarted during the 2PC: A runs it again")

    async def _mpc(self, fn, *args):  # noqa: ANN001, ANN202
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def start_mpc(self) -> None:
        ep = common.mpc_endpoint(self.settings)
        log.info('{"event": "mpc_starting", "rank": 1}')
        # B joins a session only when server A asks it to (Peer.Session); this returns
        # once the first one is up
        await self.member.start(ep)

    async def _peer(self, context) -> None:  # noqa: ANN001
        await common.require_identity(
            context, "server-a", self.settings.tls is not None, self.settings.peer_token
        )

    # ------------------------------------------------------------- Worker API
    async def SubmitSeed(self, request, context):  # noqa: N802, ANN001
        await common.authenticate_worker(context, self.tokens)
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "server B takes share vectors (SubmitShare); send the seed to A",
        )

    async def SubmitShare(self, request_iterator, context) -> pb.Receipt:  # noqa: N802
        wid = await common.authenticate_worker(context, self.tokens)
        if wid in self._uploads:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"worker {wid!r} already has a share upload in progress: one at a time; "
                "retry once it has finished or been cancelled",
            )
        self._uploads.add(wid)
        try:
            assembler: transport.ChunkAssembler | None = None
            header: pb.ShareChunk | None = None
            rnd: Round | None = None
            async for chunk in request_iterator:
                if header is None:
                    header = chunk
                    if header.worker_id != wid:
                        await context.abort(
                            grpc.StatusCode.PERMISSION_DENIED,
                            f"authenticated as {wid!r} but submitting for {header.worker_id!r}",
                        )
                    rnd = self.book.get(header.round_id)
                    if header.dim != rnd.config.dim:
                        raise transport.ProtocolError(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"dim {header.dim} does not match the round's {rnd.config.dim}",
                        )
                    # hashed once complete, off the event loop (below), not chunk by chunk
                    assembler = transport.ChunkAssembler(rnd.config.dim, hash_chunks=False)
                else:
                    transport.check_repeated_header(header, chunk)
                assert assembler is not None
                assembler.add(chunk.offset, chunk.data)
            if header is None or assembler is None or rnd is None:
                raise transport.ProtocolError(
                    grpc.StatusCode.INVALID_ARGUMENT, "empty stream: send at least one chunk"
                )
            share = assembler.finish()
            # off the event loop: the SHA-256 of the share (hashlib releases the GIL, so
            # other uploads go on meanwhile) and the store's fsync before the receipt
            receipt = await asyncio.to_thread(rnd.submit, wid, header.submission_id, share)
            metrics.ingest_bytes(share.nbytes)
            proj = self.projectors.get(rnd.round_id)
            if proj is not None:
                proj.add(wid, share)
            return receipt.to_proto()
        except (RoundError, transport.ProtocolError, ValueError) as exc:
            await common.abort_for(context, exc)
            raise
        finally:
            self._uploads.discard(wid)

    async def GetRoundStatus(self, request: pb.RoundRef, context) -> pb.RoundStatus:  # noqa: N802
        # B has no admin token: with TLS off only workers read here (A reads via Peer)
        reader = await common.authenticate_reader(
            context, self.tokens, self.settings.tls is not None, None
        )
        return common.status_for(await self._status(request, context), reader)

    async def _status(self, request: pb.RoundRef, context) -> pb.RoundStatus:  # noqa: ANN001
        try:
            return self.book.get(request.round_id).to_proto()
        except RoundError as exc:
            await common.abort_for(context, exc)
            raise

    async def GetAggregate(self, request, context):  # noqa: N802, ANN001
        await common.authenticate_worker(context, self.tokens)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "fetch the aggregate from server A")
        yield pb.AggregateChunk()  # pragma: no cover - makes this an async generator

    # --------------------------------------------------------------- Peer API
    async def OpenRound(self, request: pb.RoundConfig, context) -> pb.RoundStatus:  # noqa: N802
        await self._peer(context)
        try:
            return self.book.open(RoundConfig.from_proto(request)).to_proto()
        except (RoundError, ValueError) as exc:
            await common.abort_for(context, exc)
            raise

    async def GetPeerStatus(self, request: pb.RoundRef, context) -> pb.RoundStatus:  # noqa: N802
        await self._peer(context)
        return await self._status(request, context)

    async def FixParticipants(self, request: pb.ParticipantsRequest, context):  # noqa: N802, ANN001
        await self._peer(context)
        try:
            rnd = self.book.get(request.round_id)
            if rnd.participants and not rnd.state.terminal:
                # A asks again after its restart: the participants stand as fixed (a
                # subset of A's stored holdings, which only grew since)
                chosen = list(rnd.participants)
            else:
                chosen = rnd.fix_participants(
                    {e.worker_id: e.submission_id for e in request.entries}
                )
            if chosen and not rnd.state.terminal:
                # start stacking the shares now: the first 2PC phase will want them
                self._prefetch(rnd, chosen)
            return pb.ParticipantsReply(
                round_id=rnd.round_id, participants=chosen, mismatched=list(rnd.mismatched)
            )
        except (RoundError, ValueError) as exc:
            await common.abort_for(context, exc)
            raise

    def _prefetch(self, rnd: Round, participants: list[str]) -> None:
        task = asyncio.ensure_future(self._share_matrix(rnd, participants))
        # a failure here is seen again (and reported) by the phase that needs the matrix
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def _start_projector(self, rnd: Round, seed: bytes) -> Projector:
        """The round's projector for A's seed (a new seed from A replaces an old one)."""
        proj = self.projectors.get(rnd.round_id)
        k = rnd.config.validation_params().projections
        if proj is not None and proj.seed == seed and proj.k == k:
            return proj
        proj = Projector.for_round(rnd, seed, self.precompute)
        self.projectors[rnd.round_id] = proj
        return proj

    async def _share_matrix(self, rnd: Round, participants: list[str]) -> np.ndarray:
        """B's shares of ``participants`` as one n×d matrix (rows in that order).

        Built once per round, off the event loop, starting as soon as the participants
        are fixed; the round's submissions then point at their rows, so B holds one
        copy of the shares, not two. After validation excluded workers, the previous
        build is awaited and compacted in place, not rebuilt.
        """
        key = tuple(participants)
        prev = self._building.get(rnd.round_id)
        if prev is not None and prev[0] == key:
            return await asyncio.shield(prev[1])
        task = asyncio.ensure_future(self._build_matrix(rnd, key, prev))
        self._building = {rnd.round_id: (key, task)}  # one round's 2PC at a time
        return await asyncio.shield(task)

    async def _build_matrix(
        self,
        rnd: Round,
        key: tuple[str, ...],
        prev: tuple[tuple[str, ...], asyncio.Future[np.ndarray]] | None,
    ) -> np.ndarray:
        if prev is not None and set(key) <= set(prev[0]):
            try:
                old = await asyncio.shield(prev[1])
            except Exception:  # that build failed: stack afresh below
                old = None
            if old is not None:
                return await asyncio.to_thread(_compact, rnd, prev[0], old, key)
        # A fresh array per round: between rounds B keeps no n×d buffer (one kept from
        # the last round doubled B's peak while the next round's shares arrived)
        out = np.empty((len(key), rnd.config.dim), dtype=np.int64)
        return await asyncio.to_thread(_stack_into, rnd, key, out)

    def _end_of_2pc(self, round_id: str) -> None:
        self._building.pop(round_id, None)
        self.projectors.pop(round_id, None)

    async def FailRound(self, request: pb.FailRequest, context) -> pb.RoundStatus:  # noqa: N802
        await self._peer(context)
        self._end_of_2pc(request.round_id)
        try:
            rnd = self.book.get(request.round_id)
            if not rnd.state.terminal:
                rnd.fail(f"server A: {request.reason}")
            return rnd.to_proto()
        except RoundError as exc:
            await common.abort_for(context, exc)
            raise

    async def RunPhase(self, request: pb.PhaseRequest, context) -> pb.PhaseReply:  # noqa: N802
        await self._peer(context)
        if self.session is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "B's MPC session is not up yet")
        try:
            rnd = self.book.get(request.round_id)
            if request.phase == pb.PHASE_PREPARE:  # input-independent: no state change
                if len(request.projection_seed) == 32:
                    self._start_projector(rnd, bytes(request.projection_seed))
                t0 = time.perf_counter()
                await self._mpc(
                    self.session.prepare_distances, rnd.config.n_expected, rnd.config.dim
                )
                stats = pb.PhaseStats(phase="prepare", seconds=time.perf_counter() - t0)
                return pb.PhaseReply(round_id=rnd.round_id, phase=request.phase, stats=stats)
            participants = list(request.participants)
            if participants != list(rnd.participants):
                raise transport.ProtocolError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "the participant list differs from the one fixed with server B",
                )
            cfg = rnd.config
            n = len(participants)
            plan = protocol.RoundPlan(
                cfg.rule.value, cfg.f, cfg.effective_m(n), dp=cfg.dp_params()
            )
            plan.validate(n)
            # the validation comparison needs only the projections (computed as shares
            # arrived): it does not wait for the share matrix, which is still being
            # stacked since FixParticipants
            share: np.ndarray | None = None
            if request.phase != pb.PHASE_VALIDATION:
                share = await self._share_matrix(rnd, participants)
            selected = [int(i) for i in request.selected]
            t0 = time.perf_counter()
            rejected: list[str] = []
            if request.phase == pb.PHASE_VALIDATION:
                threshold = cfg.validation_threshold()
                if threshold is None or len(request.projection_seed) != 32:
                    raise transport.ProtocolError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "validation requested for a round without it, or no 32-byte seed",
                    )
                rnd.start_validation()
                self.session.reset_traffic()
                vp = cfg.validation_params()
                proj = self._start_projector(rnd, bytes(request.projection_seed))
                if await asyncio.to_thread(proj.has_all, participants):
                    projected = proj.projections(participants, None)
                else:
                    share = await self._share_matrix(rnd, participants)
                    projected = await asyncio.to_thread(proj.projections, participants, share)
                self.projectors.pop(rnd.round_id, None)  # R (k·d bytes) is not needed again
                ok = await self._mpc(self.session.validate_projections, projected, threshold)
                rejected = [w for w, good in zip(participants, ok, strict=True) if not good]
                if rejected:
                    try:
                        rnd.exclude(
                            rejected,
                            f"failed input validation ({vp.projections} projections > T)",
                        )
                    except RoundFailed:
                        # too few remain: B's round has failed with that reason; reply
                        # anyway so that A records the same exclusions and reason
                        pass
                name = "validation"
            elif request.phase == pb.PHASE_DISTANCES:
                rnd.start_distances()
                if cfg.skip_validation:  # otherwise the validation phase started the count
                    self.session.reset_traffic()
                _, keep = await self._mpc(protocol.distance_phase, self.session, share, plan)
                if len(keep) < n:  # DP's exact norm check (secagg.dp), like validation
                    rejected = [w for i, w in enumerate(participants) if i not in set(keep)]
                    try:
                        rnd.exclude(rejected, NORM_CHECK_REASON)
                    except RoundFailed:
                        pass  # B's round failed with the reason; A records the same
                if rnd.state is not RoundState.FAILED:
                    rnd.start_selection()
                name = "distances"
            elif request.phase in (pb.PHASE_REVEAL, pb.PHASE_BULYAN_COORDINATE):
                if (request.phase == pb.PHASE_BULYAN_COORDINATE) != (plan.rule == "bulyan"):
                    raise transport.ProtocolError(
                        grpc.StatusCode.INVALID_ARGUMENT, "phase does not match the round's rule"
                    )
                if any(not 0 <= i < n for i in selected) or len(set(selected)) != len(selected):
                    raise transport.ProtocolError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "selection indices out of range or repeated",
                    )
                if len(selected) != plan.selection_size(n):
                    # B opens only a sum the round's rule can produce: a selection of
                    # another size (a single vector under "mean", say) is refused
                    raise transport.ProtocolError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"{plan.rule} selects {plan.selection_size(n)} of {n} workers, "
                        f"got {len(selected)}",
                    )
                if plan.rule == "mean" and cfg.skip_validation:
                    self.session.reset_traffic()
                rnd.start_reveal([participants[i] for i in selected])
                # one noise key per round (DP): a reveal run again after a failure adds
                # the same noise instead of opening a second, independently noised sum
                key = self.noise_keys.setdefault(rnd.round_id, fresh_key())
                total = await self._mpc(
                    protocol.reveal, self.session, share, plan, selected, key
                )
                self.aggregates[rnd.round_id] = encoding.decode(
                    total, cfg.encoding_params(), plan.divisor(n, selected)
                )
                name = "bulyan_coordinate" if plan.rule == "bulyan" else "reveal"
                rnd.record_mpc_traffic(self.session.traffic.as_dict())
                metrics.mpc_traffic(self.session.traffic.as_dict())
                rnd.finish()
                self.noise_keys.pop(rnd.round_id, None)
                self._end_of_2pc(rnd.round_id)
            else:
                raise transport.ProtocolError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"unknown phase {request.phase}"
                )
            tr = self.session.traffic
            stats = pb.PhaseStats(
                phase=name,
                seconds=time.perf_counter() - t0,
                bytes_sent=tr.bytes_sent.get(name, 0),
                comm_rounds=tr.rounds.get(name, 0),
                dealer_bytes=tr.dealer_bytes.get(name, 0),
            )
            return pb.PhaseReply(
                round_id=rnd.round_id, phase=request.phase, stats=stats, rejected=rejected
            )
        except (RoundError, transport.ProtocolError, ValueError) as exc:
            await common.abort_for(context, exc)
            raise

    async def Session(self, request: pb.SessionRequest, context) -> pb.SessionReply:  # noqa: N802
        """Leave or join an MPC session epoch as server A says (servers.session)."""
        await self._peer(context)
        return self.member.handle(request)

    async def close(self) -> None:
        self.precompute.shutdown(wait=False, cancel_futures=True)
        await self.member.stop()
        if self.session is not None:
            await self._mpc(self.session.close)


def _stack_into(rnd: Round, workers: tuple[str, ...], out: np.ndarray) -> np.ndarray:
    """Copy each worker's share into its row, then let the submission use that row:
    the separate arrays are released one by one (peak: the matrix plus one row)."""
    for j, w in enumerate(workers):
        out[j] = rnd.submission(w).payload
        rnd.rebind_payloads({w: out[j]})
    return out


def _compact(
    rnd: Round, old: tuple[str, ...], mat: np.ndarray, keep: tuple[str, ...]
) -> np.ndarray:
    """Drop excluded rows in place (validation rejected some workers).

    Rows only move up; until the final rebind a kept worker's payload may show a row
    that moved, which nothing reads meanwhile (B's 2PC phases run one at a time).
    """
    where = [old.index(w) for w in keep]
    if where != sorted(where):  # not a subsequence: rebuild instead (never the case today)
        out = np.stack([rnd.submission(w).payload for w in keep])
        rnd.rebind_payloads({w: out[j] for j, w in enumerate(keep)})
        return out
    # the rows about to be overwritten keep their values in their own arrays
    rnd.rebind_payloads({w: mat[old.index(w)].copy() for w in old if w not in set(keep)})
    for j, i in enumerate(where):
        if i != j:
            mat[j] = mat[i]
    out = mat[: len(keep)]
    rnd.rebind_payloads({w: out[j] for j, w in enumerate(keep)})
    return out


async def serve(args: argparse.Namespace) -> None:
    with common.starting("server-b"):  # a failure here: one line, no traceback
        settings = common.common_settings(args, "server-b")
        common.setup_logging(settings.log_level)
        common.tune_memory()
        common.disable_core_dumps()  # a core file would hold shares and keys
        metrics.serve(args.metrics_listen, "server-b", settings.tls)
        tokens = transport.TokenStore.load(Path(args.worker_tokens))
        server, hs = common.make_server(settings)
        svc = ServerB(settings, tokens)
    svc.health = hs  # the session member reports NOT_SERVING between sessions
    common.add_service(server, svc, "Worker")
    common.add_service(server, svc, "Peer")
    await common.serve_until_terminated(server, hs, svc, "server-b", settings.listen)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="secagg-server-b", description=__doc__)
    common.add_common_args(p, "127.0.0.1:50052")
    p.add_argument(
        "--worker-tokens",
        default=common.env("SECAGG_WORKER_TOKENS"),
        required=common.env("SECAGG_WORKER_TOKENS") is None,
    )
    asyncio.run(serve(p.parse_args(argv)))


if __name__ == "__main__":
    main()
