"""One aggregation round as the two servers run it, on top of :mod:`secagg.mpc`.

This is the library path (both parties call :func:`run_round` with their own share
matrix and the same public plan); the gRPC service runs the same steps but hands the
selection to server B with a Peer RPC instead of the MPC channel.

What each party learns: server A the n×n squared-distance matrix (exact on the encoded
vectors), both servers the selection and the opened sum of the selected vectors (for
Bulyan: the per-coordinate window sum). Nothing else is opened. In DP rounds
(``RoundPlan.dp``, :mod:`secagg.dp`) one more bit per worker is opened (‖x‖² <= B,
exact), and each server adds its own discrete Gaussian to its share of that sum before
the opening; for the mean rule D is then computed but not opened.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from secagg import rules
from secagg.dp.mechanism import RoundDp, server_noise
from secagg.dp.sampler import Csprng
from secagg.mpc import RANK_A, MpcSession
from secagg.prg import fresh_key


@dataclass(frozen=True)
class RoundPlan:
    """The public parameters of a round, identical on both servers."""

    rule: str
    f: int
    m: int | None = None
    # Input validation (secagg.validation): the public projection threshold T, or None
    # to skip the test (only for demonstrating the attack it stops).
    threshold: int | None = None
    projections: int = 40
    # Differential privacy (secagg.dp): the exact norm check and each server's noise
    dp: RoundDp | None = None

    def validate(self, n: int) -> None:
        """Raise :class:`secagg.rules.RuleError` if the rule cannot run on n workers."""
        rules.validate_params(self.rule, n, self.f, self.m)

    def selection_size(self, n: int) -> int:
        """How many of n workers the rule selects (the mean: all of them)."""
        if self.rule == "krum":
            return 1
        if self.rule == "multi-krum":
            return self.m or n - self.f - 2
        if self.rule == "bulyan":
            return rules.bulyan_theta(n, self.f)
        return n

    def divisor(self, n: int, selected: list[int]) -> int:
        """How many values each aggregate coordinate averages."""
        if self.rule == "bulyan":
            return rules.bulyan_beta(n, self.f)
        return len(selected)


@dataclass
class PartyOutcome:
    """What one server holds after a round."""

    selected: list[int]
    encoded_sum: np.ndarray  # int64 at scale 2^16·scale, sum of `divisor` values
    divisor: int
    distances: np.ndarray | None = None  # int64 at scale 2^32 (server A only)
    traffic: dict[str, dict[str, float]] = field(default_factory=dict)
    # rows (of the share matrix given to run_round) that passed input validation;
    # `selected` and `distances` refer to positions among these
    accepted: list[int] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    # DP rounds: rows (of the share matrix) that passed the projection test but not the
    # exact norm check (also in `rejected`), and the round's ρ-zCDP against one server
    norm_rejected: list[int] = field(default_factory=list)
    dp_rho: float | None = None


def choose(plan: RoundPlan, distances: np.ndarray | None, n: int) -> list[int]:
    """Server A's selection from the revealed (exact, int64) distance matrix."""
    if plan.rule == "mean":
        return list(range(n))
    if distances is None:
        raise ValueError(f"{plan.rule} needs the distance matrix")
    return rules.select(plan.rule, distances, plan.f, plan.m)


def reveal(
    session: MpcSession,
    share: np.ndarray,
    plan: RoundPlan,
    selected: list[int],
    noise_key: bytes | None = None,
) -> np.ndarray:
    """The masked reveal: only the (window) sum of the selected vectors is opened.

    ``noise_key`` (DP rounds): this server's secret per-round key for its noise, so that
    a reveal run again after a failure adds the same noise (see :class:`Csprng`); None
    draws fresh noise.
    """
    # DP: this server's own discrete Gaussian, added to its share before the opening
    # (sigma2 = 0: this server adds none, which only the tests' control does)
    dp = plan.dp
    noise = None
    if dp is not None and dp.sigma2:
        rng = None if noise_key is None else Csprng(noise_key)
        noise = server_noise(dp.sigma2, int(share.shape[1]), rng)
    if plan.rule == "bulyan":
        return session.bulyan_window_sum(share, selected, plan.f, noise=noise)
    return session.reveal_sum(share, selected, noise=noise)


def needs_distances(plan: RoundPlan) -> bool:
    """Whether the round runs the distance phase (DP's norm check needs diag G)."""
    return plan.rule != "mean" or plan.dp is not None


def distance_phase(
    session: MpcSession, share: np.ndarray, plan: RoundPlan
) -> tuple[np.ndarray | None, list[int]]:
    """The Gram product, then (DP rounds) the exact norm check; collective.

    Returns server A's distances among the rows kept (None on B, and for the mean rule,
    whose D is never opened) and the rows kept: those with ‖x‖² <= B exactly, from the
    squared norms' shares :meth:`MpcSession.sq_distances` leaves behind (exact: vectors
    that passed the projection test cannot wrap, see secagg.validation). Only one
    accept bit per worker is opened. Without DP every row is kept.
    """
    n = int(share.shape[0])
    distances = session.sq_distances(share, reveal=plan.rule != "mean")
    if plan.dp is None:
        return distances, list(range(n))
    assert session.sq_norms is not None
    ok = session.at_most(session.sq_norms, plan.dp.bound_sq)
    keep = [i for i in range(n) if ok[i]]
    if distances is not None and len(keep) < n:
        distances = distances[np.ix_(keep, keep)]
    return distances, keep


def validate(session: MpcSession, share: np.ndarray, plan: RoundPlan) -> list[int]:
    """Rows that pass the 2PC input check (all rows when the plan skips it)."""
    n = int(share.shape[0])
    if plan.threshold is None:
        return list(range(n))
    seed = session.exchange_seed(fresh_key() if session.rank == RANK_A else None)
    ok = session.validate_inputs(share, seed, plan.projections, plan.threshold)
    return [i for i in range(n) if ok[i]]


def run_round(session: MpcSession, share: np.ndarray, plan: RoundPlan) -> PartyOutcome:
    """Run a whole round; collective (A and B call it with matching shapes)."""
    n = int(share.shape[0])
    plan.validate(n)  # public check on both sides: both raise before any 2PC step
    if plan.dp is not None and plan.threshold is None:
        # without the projection test a vector can wrap ‖x‖² around 2^64
        raise ValueError("DP rounds need input validation: do not skip it")
    session.reset_traffic()
    accepted = validate(session, share, plan)
    rejected = [i for i in range(n) if i not in set(accepted)]
    if rejected:
        try:
            plan.validate(len(accepted))
        except rules.RuleError as exc:
            raise rules.RuleError(
                f"{len(rejected)} of {n} workers failed input validation; {exc}"
            ) from None
        share = share[accepted]
    k = len(accepted)
    distances = None
    norm_rejected: list[int] = []
    if needs_distances(plan):
        distances, keep = distance_phase(session, share, plan)
        if len(keep) < k:
            norm_rejected = [accepted[i] for i in range(k) if i not in set(keep)]
            try:
                plan.validate(len(keep))
            except rules.RuleError as exc:
                raise rules.RuleError(
                    f"{len(norm_rejected)} of {k} workers failed the DP norm check; {exc}"
                ) from None
            share = share[keep]
            accepted = [accepted[i] for i in keep]
            rejected = sorted(rejected + norm_rejected)
            k = len(keep)
    mine = choose(plan, distances, k) if session.rank == RANK_A else None
    selected = session.exchange_selection(mine, k)
    total = reveal(session, share, plan, selected)
    return PartyOutcome(
        selected=selected,
        encoded_sum=total,
        divisor=plan.divisor(k, selected),
        distances=distances,
        traffic=session.traffic.as_dict(),
        accepted=accepted,
        rejected=rejected,
        norm_rejected=norm_rejected,
        dp_rho=None if plan.dp is None else plan.dp.rho(plan.rule, k, plan.f, plan.m),
    )
