"""Privacy accounting for secagg's discrete Gaussian noise: zCDP per round, (ε, δ) per run.

The mechanism
-------------
In a DP round each server adds ``N_Z(0, σ²)^d`` (encoded units, drawn by
:mod:`secagg.dp.sampler` from its own CSPRNG) to its share of the opened sum, so the
opened vector is ``q(x) + Y_A + Y_B``. ``q(x)`` is the rule's *sum* of selected vectors
(``Σ_{i∈S} x_i``; the aggregate is that sum over the public divisor), an integer vector.

Per-round guarantee (Canonne, Kamath & Steinke 2020, arXiv:2004.00010, their theorem
that the multivariate discrete Gaussian satisfies concentrated DP — numbered Theorem 14
as we recall it; the numbering was not re-checked against the paper here): if
``q: X^n → Z^d`` has
``‖q(x) − q(x')‖₂ ≤ Δ`` for neighbouring inputs and ``Y ~ N_Z(0, σ²)^d`` has independent
coordinates, then ``q(x) + Y`` is ρ-zCDP with

    ρ = Δ² / (2σ²),

exactly the continuous Gaussian's value. No correction term enters: their one-
dimensional bound ``D_α(N_Z(μ, σ²) ‖ N_Z(ν, σ²)) ≤ α (μ − ν)² / (2σ²)`` holds for integer
μ, ν, and Rényi divergences of product distributions add over coordinates. (The τ
corrections of Kairouz, Liu & Steinke 2021 are for a *sum* of discrete Gaussians treated
as one noise; this module never needs them — see "Whose noise counts" below. CKS20's
separate direct (ε, δ) bound for the multivariate case is not used either: the (ε, δ)
here comes from the Rényi curve, which is the same bound they prove.)

ρ-zCDP means Rényi DP of every order α > 1 with ``ε(α) = αρ`` (Bun & Steinke 2016), so
the Rényi curve of the discrete Gaussian is the continuous Gaussian's curve, and that is
what :func:`epsilon` composes and converts: T rounds give ``ε(α) = Tαρ`` (composition is
additive), and (ε, δ) is ``min_α [ε(α) + log(1 − 1/α) − (log δ + log α)/(α − 1)]``
(CKS20 Proposition 12, v4 numbering) over the order grid :data:`ORDERS`. This is the same
conversion and grid as Google's ``dp_accounting`` ``RdpAccountant`` applied to
``GaussianDpEvent(σ/Δ)``, and ``tests/test_dp_accounting.py`` checks that the two agree.
Its PLD accountant is *not* equivalent: it uses the continuous Gaussian's exact privacy
loss distribution, which is not proven for the discrete one.

Whose noise counts
------------------
Against server A (or B), alone or with any coalition of workers, the other server's
``Y`` is independent of their whole view and by itself makes ``q(x) + Y`` ρ-zCDP; the
colluders' own noise can be subtracted, so it is not counted. Against anyone else (an
outsider, the workers) the release is ``(q(x) + Y_B) + Y_A``, a post-processing of a
ρ-zCDP release: ρ still holds. The two noises together have variance 2σ²; the accounting
only ever claims the one-server σ. Which views are actually protected at each reveal
level is in ``docs/dp.md``.

Neighbouring inputs and sensitivity
-----------------------------------
The participant list, the exclusions and the divisor are public outputs of a round, so
*add/remove* neighbours (one worker more or less) are told apart by the count alone: no
noise level helps. The guarantee here is for **replace-one** neighbours: one worker's
(clipped) update replaced by another, n unchanged (per round, per worker: "user-level"
when each worker is one user). The exact norm check guarantees every accepted encoded
vector has ``‖x‖₂ ≤ C`` (encoded units ``C·scale·2^16``), so per rule (the opened sum):

* mean: one summand changes: ``Δ = 2C`` (the mean's is ``2C/n``);
* Krum: the output is one input vector, possibly another one: ``Δ = 2C``;
* Multi-Krum (m selected): the whole selection may change, two sums of m vectors in the
  C-ball: ``Δ = 2mC`` (the mean's is ``2C``, as for any convex combination);
* Bulyan (θ = n − 2f selected, β = θ − 2f per coordinate): coordinate j sums β values
  ``W_j`` of different selected vectors, so ``‖v‖² = Σ_j (Σ_{i∈W_j} x_ij)² ≤
  β Σ_j Σ_{i∈W_j} x_ij² ≤ β Σ_{i∈S} ‖x_i‖² ≤ βθC²`` and ``Δ = 2√(βθ)·C`` (the mean's
  ``2√(θ/β)·C`` ≥ 2C: coordinate-wise selection is not a convex combination of inputs —
  e.g. θ = 5, β = 1: five vectors can put a median of norm √(5/3)·C > C).

Robustness costs privacy: at the same σ the noise on the released *mean* is σ/m (Multi-
Krum) against σ/n (mean), while both have the same mean sensitivity 2C or more; to reach
the same ε the robust rule needs n/m (≥ 1) times the mean's noise on the aggregate.

One more δ: the projection test (:mod:`secagg.validation`) rejects an honest worker with
probability at most δ_v (default 10^-9), which may differ between neighbours; so a round
is ``(ε_round, δ_round + δ_v)``-DP and a run of T rounds ``(ε, δ_gauss + T·δ_v)``:
:func:`plan` spends ``T·δ_v`` of the δ budget on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# dp_accounting 0.6.0's DEFAULT_RDP_ORDERS (rdp_privacy_accountant.py), copied so that
# the accountant needs no third-party package and its ε is the RdpAccountant's
ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024]
)
RULES = ("mean", "krum", "multi-krum", "bulyan")
# why a worker that passed the projection test was excluded (status, both servers)
NORM_CHECK_REASON = "failed the DP norm check (‖x‖ > dp_clip)"


class PlanError(ValueError):
    """A privacy plan that cannot be met; the message says which parameter to change."""


def zcdp_rho(sensitivity: float, sigma: float) -> float:
    """ρ of one discrete Gaussian release: ``Δ² / (2σ²)`` (CKS20, multivariate theorem)."""
    if not sigma > 0 or not sensitivity >= 0:
        raise ValueError(f"need σ > 0 and Δ >= 0, got σ={sigma}, Δ={sensitivity}")
    return sensitivity * sensitivity / (2.0 * sigma * sigma)


def epsilon_from_rdp(
    orders: Sequence[float], rdp: Sequence[float], delta: float
) -> tuple[float, float]:
    """(ε, optimal order) from a Rényi curve: CKS20 Proposition 12 (v4), per order.

    ``ε(α) + log1p(−1/α) − log(δ·α)/(α − 1)`` minimised over the given orders (α > 1.01,
    where the formula is numerically stable); an order whose divergence already gives
    ``δ² ≥ 1 − e^{−ε(α)}`` (KL bound) yields ε = 0.
    """
    if not 0 < delta < 1:
        raise ValueError(f"δ must be in (0, 1), got {delta}")
    if len(orders) != len(rdp):
        raise ValueError("orders and rdp must have the same length")
    best, best_order = math.inf, 0.0
    for a, r in zip(orders, rdp, strict=True):
        if a < 1 or r < 0:
            raise ValueError(f"invalid Rényi point (α={a}, ε(α)={r})")
        if delta**2 + math.expm1(-r) > 0:
            eps = 0.0
        elif a > 1.01:
            eps = r + math.log1p(-1 / a) - math.log(delta * a) / (a - 1)
        else:
            eps = math.inf
        if eps < best:
            best, best_order = eps, float(a)
    return max(0.0, best), best_order


def epsilon(rho_per_round: float, rounds: int, delta: float) -> float:
    """(ε, δ) of T rounds of a ρ-zCDP mechanism: ε(α) = Tαρ, converted over :data:`ORDERS`."""
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    total = rho_per_round * rounds
    return epsilon_from_rdp(ORDERS, [a * total for a in ORDERS], delta)[0]


def noise_multiplier_for(target_epsilon: float, delta: float, rounds: int) -> float:
    """The smallest z = σ/Δ (to 10^-9 relative) with ``epsilon(1/(2z²), rounds, δ) ≤ ε``."""
    if not target_epsilon > 0:
        raise PlanError(f"ε must be positive, got {target_epsilon}")
    if rounds < 1:
        raise PlanError(f"rounds must be >= 1, got {rounds}")

    def eps_of(z: float) -> float:
        return epsilon(1.0 / (2.0 * z * z), rounds, delta)

    lo, hi = 1e-3, 1.0
    while eps_of(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e9:
            raise PlanError(f"ε = {target_epsilon} over {rounds} rounds needs σ/Δ > 1e9")
    while hi - lo > 1e-9 * hi:
        mid = (lo + hi) / 2
        if eps_of(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi


@dataclass(frozen=True)
class Sensitivity:
    """L2 sensitivity of a rule's opened sum under replace-one neighbours.

    Attributes
    ----------
    sum_l2 : float
        Δ of the opened sum, in the units of the clip C (the noise is calibrated to it).
    divisor : int
        The public divisor: the aggregate is sum / divisor.
    derivation : str
        One line saying where Δ comes from.
    """

    sum_l2: float
    divisor: int
    derivation: str

    @property
    def mean_l2(self) -> float:
        """Δ of the released aggregate (the sum's over the divisor)."""
        return self.sum_l2 / self.divisor


def sensitivity(
    rule: str, clip: float, n: int | None = None, f: int = 0, m: int | None = None
) -> Sensitivity:
    """Per-rule L2 sensitivity of the opened sum (module docstring: "Neighbouring inputs").

    Parameters
    ----------
    rule
        ``mean``, ``krum``, ``multi-krum`` or ``bulyan``.
    clip
        C, the L2 bound every accepted vector meets exactly.
    n
        Participants (needed by mean's divisor, Multi-Krum's default m and Bulyan).
    f
        Byzantine workers tolerated (Multi-Krum's default m, Bulyan's θ and β).
    m
        Multi-Krum's m (default ``n − f − 2``).
    """
    if not clip > 0:
        raise PlanError(f"the clip C must be positive, got {clip}")
    if rule not in RULES:
        raise PlanError(f"unknown rule {rule!r}: choose one of {', '.join(RULES)}")
    if rule == "krum":
        return Sensitivity(2 * clip, 1, "Krum outputs one input vector: 2C")
    if n is None:
        raise PlanError(f"{rule} needs the number of participants: pass --n")
    if rule == "mean":
        return Sensitivity(2 * clip, n, "one summand of the sum changes: 2C (mean: 2C/n)")
    if rule == "multi-krum":
        mm = m if m else n - f - 2
        if not 1 <= mm <= n:
            raise PlanError(f"multi-krum needs 1 <= m <= n, got m={mm}, n={n}")
        return Sensitivity(2 * mm * clip, mm, f"the m={mm} selected may all change: 2mC (mean: 2C)")
    theta = n - 2 * f
    beta = theta - 2 * f
    if beta < 1:
        raise PlanError(f"bulyan needs n >= 4f + 1 for β >= 1, got n={n}, f={f}")
    return Sensitivity(
        2 * math.sqrt(beta * theta) * clip,
        beta,
        f"coordinate-wise windows of β={beta} among θ={theta}: 2·sqrt(βθ)·C",
    )


@dataclass(frozen=True)
class Plan:
    """What ``secagg dp plan`` prints: the per-server σ meeting (ε, δ) over T rounds."""

    rule: str
    epsilon: float
    delta: float
    rounds: int
    clip: float
    sensitivity: Sensitivity
    validation_delta: float
    noise_multiplier: float  # z = σ / Δ
    sigma: float  # each server's noise std on the opened sum, in the clip's units
    rho_per_round: float
    achieved_epsilon: float

    @property
    def aggregate_std(self) -> float:
        """Std per coordinate of the released aggregate's noise (both servers)."""
        return math.sqrt(2.0) * self.sigma / self.sensitivity.divisor

    def lines(self) -> list[str]:
        s = self.sensitivity
        return [
            f"rule {self.rule}: sensitivity of the opened sum Δ = {s.sum_l2:.6g} "
            f"({s.derivation}); divisor {s.divisor}",
            f"target (ε, δ) = ({self.epsilon:g}, {self.delta:g}) over {self.rounds} rounds, "
            f"replace-one neighbours; δ spent on validation false rejections: "
            f"{self.rounds} × {self.validation_delta:g}",
            f"noise multiplier σ/Δ = {self.noise_multiplier:.6g}; ρ per round = "
            f"{self.rho_per_round:.6g}; achieved ε = {self.achieved_epsilon:.6g}",
            f"dp_sigma (each server's discrete Gaussian std on the opened sum) = {self.sigma:.6g}",
            f"noise std per coordinate of the released aggregate (both servers) = "
            f"{self.aggregate_std:.6g}",
        ]


def plan(
    epsilon_target: float,
    delta: float,
    rounds: int,
    clip: float,
    rule: str,
    n: int | None = None,
    f: int = 0,
    m: int | None = None,
    validation_delta: float = 1e-9,
) -> Plan:
    """The per-server σ for (ε, δ) over T rounds of ``rule`` with clip C.

    Raises :class:`PlanError` naming what to change when the budget cannot be met.
    """
    if not 0 < delta < 1:
        raise PlanError(f"δ must be in (0, 1), got {delta}")
    gauss_delta = delta - rounds * validation_delta
    if gauss_delta <= 0:
        raise PlanError(
            f"δ = {delta:g} is used up by {rounds} rounds × the validation false-rejection "
            f"rate {validation_delta:g}: raise δ or lower the false-rejection rate"
        )
    sens = sensitivity(rule, clip, n, f, m)
    z = noise_multiplier_for(epsilon_target, gauss_delta, rounds)
    rho = 1.0 / (2.0 * z * z)
    return Plan(
        rule=rule,
        epsilon=epsilon_target,
        delta=delta,
        rounds=rounds,
        clip=clip,
        sensitivity=sens,
        validation_delta=validation_delta,
        noise_multiplier=z,
        sigma=z * sens.sum_l2,
        rho_per_round=rho,
        achieved_epsilon=epsilon(rho, rounds, gauss_delta),
    )


def spent(rho_total: float, rounds: int, delta: float, validation_delta: float = 1e-9) -> float:
    """ε spent by ``rounds`` rounds whose ρ add up to ``rho_total``, at total δ.

    zCDP composes additively (each round's ρ may differ: its Δ depends on how many
    participants it had), so the run so far is ``rho_total``-zCDP plus ``rounds·δ_v``.
    """
    if rounds == 0:
        return 0.0
    gauss_delta = delta - rounds * validation_delta
    if gauss_delta <= 0:
        return math.inf
    return epsilon(rho_total, 1, gauss_delta)


class PrivacyLedger:
    """ρ spent over a process's DP rounds (server A's report: "ε spent so far").

    zCDP composes by adding ρ. In memory only: a restarted server starts from zero,
    so a run's authoritative total is the operator's sum of the rounds' ``dp_rho``.
    """

    def __init__(self) -> None:
        self.rho = 0.0
        self.rounds = 0

    def add(self, rho: float) -> None:
        self.rho += rho
        self.rounds += 1

    def report_fields(self, round_rho: float, delta: float) -> dict[str, float | int]:
        """The RoundReport's DP fields (all 0 when this process ran no DP round)."""
        eps = spent(self.rho, self.rounds, delta) if self.rounds and delta > 0 else 0.0
        return {
            "dp_rho": round_rho,
            "dp_rho_spent": self.rho,
            "dp_rounds": self.rounds,
            "dp_epsilon_spent": eps,
        }
