"""Input-validation projections computed while shares arrive (servers A and B).

The projection test (:mod:`secagg.validation`) needs, per worker, this server's share of
``x R^T`` for k public ±1/0 vectors R. That is local work on one share, so it need not
wait for the participants to be fixed: server A draws the projection seed when the round
opens, gives it to B with the PREPARE phase, and both servers project every share as it
is accepted. After the last share only the secure comparison is left.

Why drawing the seed early is sound: the test needs R independent of every vector it
checks. The seed goes from A to B over the mutually authenticated peer channel and
nowhere else (no worker, log, report or status carries it), and the servers do not
collude with workers, so what a worker submits cannot depend on R.

Anything not precomputed (a share that arrived before B had the seed and was not
caught up yet, a server that restarted and lost this in-memory state) is projected at
the validation phase from the round's share matrix: the result is the same either way.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading

import numpy as np
import torch

from secagg import sharing
from secagg.ringmath import matmul_nt
from secagg.rounds import Round
from secagg.validation import projection_matrix

log = logging.getLogger("secagg.precompute")


class Projector:
    """One round's projections of this server's shares, filled in as shares arrive.

    Parameters
    ----------
    round_id
        For the log line that says how many rows were ready in advance.
    seed
        The round's 32-byte projection seed (secret to the two servers).
    k, d
        Number of projections and vector dimension.
    pool
        Where the work runs (one thread: it must not compete with the 2PC for cores
        more than one share at a time).
    """

    def __init__(
        self, round_id: str, seed: bytes, k: int, d: int, pool: concurrent.futures.Executor
    ) -> None:
        self.round_id = round_id
        self.seed, self.k, self.d = bytes(seed), int(k), int(d)
        self._pool = pool
        self._lock = threading.Lock()
        self._r: torch.Tensor | None = None
        self._rows: dict[str, np.ndarray] = {}
        self._pending: list[concurrent.futures.Future[None]] = []

    def _matrix(self) -> torch.Tensor:
        with self._lock:
            if self._r is None:
                self._r = torch.from_numpy(projection_matrix(self.seed, self.k, self.d))
            return self._r

    def _project(self, worker: str, share: np.ndarray) -> None:
        row = torch.from_numpy(np.ascontiguousarray(share, dtype=np.int64)).view(1, -1)
        p = matmul_nt(row, self._matrix()).numpy()[0].copy()
        with self._lock:
            self._rows[worker] = p

    def _project_seed(self, worker: str, seed: bytes) -> None:
        buf = np.empty(self.d, dtype=np.int64)
        self._project(worker, sharing.share_a_into(seed, buf))

    def add_share(self, worker: str, share: np.ndarray) -> None:
        """Project B's share of ``worker`` in the background."""
        self._submit(self._project, worker, share)

    def add_seed(self, worker: str, seed: bytes) -> None:
        """Project A's share (the worker's expanded seed) in the background."""
        self._submit(self._project_seed, worker, seed)

    def add(self, worker: str, payload: bytes | np.ndarray) -> None:
        """Project a stored submission's payload: A's seed (bytes) or B's share."""
        if isinstance(payload, np.ndarray):
            self.add_share(worker, payload)
        elif payload:  # a finished round's payloads are b"": nothing to project
            self.add_seed(worker, bytes(payload))

    @classmethod
    def for_round(
        cls, rnd: Round, seed: bytes, pool: concurrent.futures.Executor
    ) -> Projector:
        """A projector for ``rnd`` that also projects what the round already holds."""
        cfg = rnd.config
        proj = cls(rnd.round_id, seed, cfg.validation_params().projections, cfg.dim, pool)
        for w in rnd.holdings():  # accepted before the seed existed (or before a restart)
            proj.add(w, rnd.submission(w).payload)
        return proj

    def _submit(self, fn, *args) -> None:  # noqa: ANN001
        try:
            fut = self._pool.submit(fn, *args)
        except RuntimeError:  # the pool is shut down (server stopping): phase time does it
            return
        with self._lock:
            self._pending = [f for f in self._pending if not f.done()] + [fut]

    def _wait(self) -> None:
        with self._lock:
            pending = list(self._pending)
        for fut in pending:
            try:
                fut.result()
            except Exception:  # computed again from the share matrix
                log.exception("precompute: a background projection failed")

    def has_all(self, participants: list[str]) -> bool:
        """Whether every participant's row is ready (after the background work)."""
        self._wait()
        with self._lock:
            return all(w in self._rows for w in participants)

    def projections(self, participants: list[str], share: np.ndarray | None) -> np.ndarray:
        """This server's n×k projection shares, rows in ``participants`` order.

        Waits for the background work; rows it does not have are projected now from
        ``share`` (the round's n×d share matrix, same row order; ``None`` only when
        :meth:`has_all` said every row is ready).
        """
        self._wait()
        out = np.empty((len(participants), self.k), dtype=np.int64)
        missing = []
        with self._lock:
            for i, w in enumerate(participants):
                row = self._rows.get(w)
                if row is None:
                    missing.append(i)
                else:
                    out[i] = row
        if missing:
            if share is None:
                raise ValueError(f"{len(missing)} rows are not projected yet: pass the shares")
            rows = torch.from_numpy(np.ascontiguousarray(share[missing]))
            out[missing] = matmul_nt(rows, self._matrix()).numpy()
        event = {
            "event": "validation_projections",
            "round_id": self.round_id,
            "precomputed": len(participants) - len(missing),
            "at_phase": len(missing),
        }
        log.info(json.dumps(event, sort_keys=True, separators=(",", ":")))
        return out

    @property
    def precomputed(self) -> int:
        with self._lock:
            return len(self._rows)


class MatrixBuffer:
    """One reusable n×d int64 buffer for server A's share matrix.

    A fresh 160 MB array (n=20, d=10^6) costs about 0.1 s of page faults before a
    single value is written, on the critical path after the last share. A runs one
    round's 2PC at a time (it holds the MPC lock), and nothing outlives the 2PC that
    points into A's matrix (its submissions are seeds), so the previous round's
    pages can be reused. The buffer grows to the largest round seen and stays
    allocated.
    """

    def __init__(self) -> None:
        self._flat = np.empty(0, dtype=np.int64)
        self._used = 0  # elements written since the last wipe

    def view(self, n: int, d: int) -> np.ndarray:
        """A C-contiguous (n, d) int64 view; its contents are garbage until written."""
        if self._flat.size < n * d:
            self._flat = np.empty(n * d, dtype=np.int64)
        self._used = max(self._used, n * d)
        return self._flat[: n * d].reshape(n, d)

    def wipe(self) -> None:
        """Zero every element a round wrote: the expanded seeds are A's shares, and
        must not outlive the round in a buffer kept for the next one."""
        self._flat[: self._used].fill(0)
        self._used = 0
