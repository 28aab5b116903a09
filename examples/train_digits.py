"""Federated training on scikit-learn's digits through the real servers, under attack.

Setting: n = 19 workers of which f = 4 are Byzantine (AggregaThor's setting,
``shared/seeds/damaskinos-2019-aggregathor-poster.txt``), a small torch model
(softmax regression 64→10 by default, ``--model mlp`` for 64-32-10), one SGD step per
round. The digits data set ships inside scikit-learn, so nothing is downloaded.

Every round of the *secure* run goes through a real deployment
(:class:`servers.launcher.LocalDeployment`: server A, server B and the dealer as
separate processes with TLS): the operator opens the round with
:class:`clients.admin.AdminClient`, every worker submits through
:class:`clients.sdk.SecAggClient` (honest workers with ``clip=True``), and the model
is updated with the aggregate the servers return. Next to it, a *plaintext* run
trains an identical model with :func:`secagg.reference.aggregate` on the same kind of
inputs (same minibatches, same attacker randomness), which is what a trusted server
with the same rule would do. Same-round inputs are also checked: each secure
aggregate is compared with the reference on exactly the vectors submitted that round.

Attacks (:mod:`secagg.attacks`): none, sign flip, Gaussian N(0, 200²), label flip,
ALIE, IPM (ε = 0.1; ``ipm-large`` for ε = 100), mimic, the El Mhamdi coordinate
attack, and the ring wrap-around. The Byzantine workers are the last f. The float
attacks go through the SDK with ``clip=True``, i.e. they respect the round's public
bounds (an out-of-bounds vector would be dropped by input validation, issue #5).
The wrap-around attackers bypass the SDK: each uploads shares of the clipped honest
mean with 2^63 added to the output bias of one class (distinct coordinates, because
an even number of 2^63 offsets on one coordinate cancels mod 2^64). Squared
distances in the ring do not change, so without input validation the robust rules
select these vectors and the opened sum is destroyed, where the plaintext rules (which
see the decoded vectors) reject them. Two columns show it:

* ``wraparound``: rounds as the servers open them by default. Where the servers
  validate inputs in 2PC (#5) the attackers are dropped; with Bulyan at n = 4f+3 the
  round then has too few workers and fails (a denial of service, no corruption).
* ``wraparound-unvalidated``: the same attack against rounds opened with
  ``skip_validation`` (only where the servers support switching it off): the secure
  aggregate is destroyed. Servers without input validation behave like this in the
  ``wraparound`` column too. The table reports what happens, not what should.

The plaintext run applies the same public bounds exactly where the secure round
validates inputs (dropping out-of-bounds vectors, failing the round when too few
remain), and no check where it does not.

Encoding: the public per-round ``scale`` maps the public clipping norm (``--clip``,
gradient units) to the norm bound (128 in scaled units: with input validation the
servers accept norm bounds up to about 200), so scale = 64 and gradient coordinates of
~1e-3 keep a resolution of 2^-16 / scale ≈ 2.4e-7.

Commands::

    python -m examples.train_digits            # the demo grid (what `secagg demo` runs):
                                               # mean, krum, multi-krum × none, alie,
                                               # wraparound, wraparound-unvalidated;
                                               # 10 rounds, about 2 min on 2 cores
    python -m examples.train_digits --full     # 4 rules × 8 attack columns, 30 rounds
                                               # (about 25 min on 2 cores; Bulyan's
                                               # secure comparisons take 2-4 s a round)
    python -m examples.train_digits --rules krum bulyan --attacks mimic coordinate --rounds 20

Outputs (``--out``, default ``out/digits``): ``results.md`` and ``results.csv`` (final
test accuracy, secure next to plaintext, plus how often a Byzantine worker was
selected, validation drops, failed rounds, and the largest same-round gap between
the secure aggregate and the float and exact-integer references),
``history.json`` (accuracy per round) and ``accuracy.png`` (matplotlib, if installed).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from secagg import attacks, encoding, reference, sharing, transport
from secagg.rules import RULES, RuleError

DEMO_RULES: tuple[str, ...] = ("mean", "krum", "multi-krum")
DEMO_ATTACKS: tuple[str, ...] = ("none", "alie", "wraparound", "wraparound-unvalidated")
FULL_ATTACKS: tuple[str, ...] = (
    "none",
    "sign-flip",
    "gaussian",
    "label-flip",
    "alie",
    "ipm",
    "wraparound",
    "wraparound-unvalidated",
)
#: Grid names beyond secagg.attacks.ATTACKS: the wrap-around attack against rounds
#: opened with ``skip_validation`` (what every round was before input validation, #5).
UNVALIDATED = "wraparound-unvalidated"
GRID_ATTACKS: tuple[str, ...] = (*attacks.ATTACKS, UNVALIDATED)


def validation_switch_supported() -> bool:
    """Whether this secagg's RoundConfig can turn input validation off for a round."""
    import dataclasses

    from secagg.rounds import RoundConfig

    return "skip_validation" in {f.name for f in dataclasses.fields(RoundConfig)}


def base_attack(name: str) -> str:
    """The attack a grid name runs (the unvalidated variant runs "wraparound")."""
    return "wraparound" if name == UNVALIDATED else name


@dataclass(frozen=True)
class Config:
    """One experiment grid. Defaults: AggregaThor's n = 19, f = 4."""

    rules: tuple[str, ...] = DEMO_RULES
    attacks: tuple[str, ...] = DEMO_ATTACKS
    rounds: int = 10
    n: int = 19
    f: int = 4
    batch: int = 16
    lr: float = 0.5
    model: str = "softmax"
    seed: int = 0
    clip: float = 2.0  # public L2 bound on a gradient, in gradient units
    # the same bound after scaling; with input validation the servers accept norm
    # bounds up to about 200 (secagg.validation headroom), so precision comes from scale
    norm_bound: float = 128.0
    tls: bool = True
    out: Path = Path("out/digits")
    plaintext: bool = True

    @property
    def scale(self) -> float:
        """The public fixed-point scale: ``clip`` (gradient units) maps to ``norm_bound``."""
        return self.norm_bound / self.clip

    @property
    def params(self) -> encoding.EncodingParams:
        return encoding.EncodingParams(
            scale=self.scale, coord_bound=self.norm_bound, norm_bound=self.norm_bound
        )

    @property
    def honest(self) -> int:
        return self.n - self.f


# ------------------------------------------------------------------------ data, model
@dataclass(frozen=True)
class Data:
    """The digits data: features in [0, 1], an IID shard of the training set per worker."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    shards: tuple[np.ndarray, ...]


def load_data(n_workers: int, seed: int = 0, test_fraction: float = 0.2) -> Data:
    """scikit-learn's 8×8 digits (1797 images, shipped with the package: no download)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = perm[:n_test], perm[n_test:]
    shards = tuple(np.array_split(np.arange(len(train)), n_workers))
    return Data(x[train], y[train], x[test], y[test], shards)


def make_model(kind: str, seed: int):  # noqa: ANN201 - torch is imported lazily
    import torch

    torch.manual_seed(seed)
    if kind == "softmax":
        return torch.nn.Linear(64, 10)
    if kind == "mlp":
        return torch.nn.Sequential(
            torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
        )
    raise ValueError(f"unknown model {kind!r}: softmax or mlp")


def gradient(model, x: np.ndarray, y: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """Flat float64 gradient of the mean cross-entropy on one minibatch."""
    import torch

    model.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double().numpy()


def apply_update(model, step: np.ndarray, lr: float) -> bool:  # noqa: ANN001
    """``params -= lr * step``; False (and no update) if the result is not finite."""
    import torch

    with torch.no_grad():
        flat = torch.cat([p.reshape(-1) for p in model.parameters()]).double()
        # a copy: the SDK's aggregate is read-only and torch warns on such arrays
        new = flat - lr * torch.from_numpy(np.array(step, dtype=np.float64))
        if not torch.isfinite(new).all():
            return False
        off = 0
        for p in model.parameters():
            k = p.numel()
            p.copy_(new[off : off + k].reshape(p.shape))
            off += k
    return True


def accuracy(model, data: Data) -> float:  # noqa: ANN001
    import torch

    with torch.no_grad():
        pred = model(torch.from_numpy(data.x_test)).argmax(dim=1).numpy()
    return float((pred == data.y_test).mean())


# ------------------------------------------------------------------ round inputs
@dataclass
class RoundInputs:
    """What the n workers submit in one round (Byzantine workers are the last f)."""

    floats: np.ndarray  # (n, d) the float vectors (for wrap-around attackers: decoded)
    # wrap-around attackers: index -> (encoded base vector, coordinate that gets 2^63)
    wrapped: dict[int, tuple[np.ndarray, int]] = field(default_factory=dict)


def round_inputs(model, data: Data, cfg: Config, attack: str, rule: str, t: int) -> RoundInputs:  # noqa: ANN001
    """Honest gradients, clipped as the SDK does, plus the attackers' vectors.

    The minibatches and the attackers' randomness depend only on (seed, t), so the
    secure and the plaintext runs see the same draws.
    """
    rng = np.random.default_rng([cfg.seed, t])
    params = cfg.params
    rows = []
    for i, shard in enumerate(data.shards):
        idx = rng.choice(shard, size=cfg.batch, replace=False)
        y = data.y_train[idx]
        if attack == "label-flip" and i >= cfg.honest:
            y = attacks.flip_labels(y)
        g = gradient(model, data.x_train[idx], y)
        # a model broken by an earlier round can produce NaN: submit zeros rather than crash
        rows.append(encoding.clip_to_bounds(g, params) if np.all(np.isfinite(g)) else 0 * g)
    X = np.stack(rows)
    honest, own = X[: cfg.honest], X[cfg.honest :]
    out = RoundInputs(floats=X)
    if attack in ("none", "label-flip"):
        return out
    if attack == "wraparound":
        base = encoding.encode(encoding.clip_to_bounds(honest.mean(axis=0), params), params)
        d = base.shape[0]
        for k in range(cfg.f):
            i = cfg.honest + k
            # Attacker k wraps the output bias of class 9 - k (the last parameters of both
            # models): a wrapped weight on an always-blank pixel would do nothing. With a
            # non-negative base value the wrapped coordinate decodes to about -2^47/scale,
            # so the SGD step drives that bias to +1e12 and the model predicts one class.
            coord = d - 1 - k
            mine = base.copy()
            mine[coord] = max(int(mine[coord]), 0)
            out.wrapped[i] = (mine, coord)
            # the plaintext rules get what these shares decode to
            X[i] = encoding.decode(attacks.wraparound_encoded(mine, coord=coord), params)
        return out
    byz = attacks.craft(attack, honest, own, cfg.n, cfg.f, rng, rule=rule)
    for k in range(cfg.f):
        X[cfg.honest + k] = encoding.clip_to_bounds(byz[k], params)
    return out


# ------------------------------------------------------------------ secure rounds
class SecureRunner:
    """Drives rounds through a real LocalDeployment: Admin opens, SDK clients submit."""

    def __init__(self, cfg: Config, workdir: Path) -> None:
        from servers.launcher import LocalDeployment

        self.cfg = cfg
        self.ids = [f"w{i:02d}" for i in range(cfg.n)]
        self.dep = LocalDeployment(workdir, self.ids, tls=cfg.tls)
        self.clients: list = []
        self.raw: dict[str, tuple] = {}
        self.admin = None
        self.pool = ThreadPoolExecutor(max_workers=4)

    def __enter__(self) -> SecureRunner:
        from clients.admin import AdminClient
        from clients.sdk import SecAggClient
        from secagg.v1 import secagg_pb2_grpc as pbg

        self.dep.start()
        tls = self.dep.worker_tls()
        self.clients = [
            SecAggClient(
                self.dep.addr_a, self.dep.addr_b, w, self.dep.tokens[w], tls=tls, timeout_s=60
            )
            for w in self.ids
        ]
        # the wrap-around attackers bypass the SDK: their own channels to both servers
        for w in self.ids[self.cfg.honest :]:
            ca = transport.make_channel(self.dep.addr_a, tls)
            cb = transport.make_channel(self.dep.addr_b, tls)
            self.raw[w] = (ca, cb, pbg.WorkerStub(ca), pbg.WorkerStub(cb))
        self.admin = AdminClient(
            self.dep.control_a, self.dep.tls_for("admin"), token=self.dep.admin_token
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown()
        for c in self.clients:
            c.close()
        for ca, cb, _, _ in self.raw.values():
            ca.close()
            cb.close()
        if self.admin is not None:
            self.admin.close()
        self.dep.stop()

    def _submit_raw(self, rid: str, wid: str, shares: sharing.WorkerShares) -> None:
        from secagg.v1 import secagg_pb2 as pb

        _, _, stub_a, stub_b = self.raw[wid]
        md = transport.worker_metadata(wid, self.dep.tokens[wid])
        sid = uuid.uuid4().hex
        dim = int(shares.share_b.shape[0])
        stub_a.SubmitSeed(
            pb.SeedSubmission(
                round_id=rid, worker_id=wid, seed=shares.seed, dim=dim, submission_id=sid
            ),
            metadata=md,
            timeout=60,
        )
        stub_b.SubmitShare(
            transport.share_chunk_messages(rid, wid, sid, shares.share_b), metadata=md, timeout=60
        )

    def run(
        self,
        inputs: RoundInputs,
        rule: str,
        *,
        skip_validation: bool = False,
        dp: dict[str, float] | None = None,
    ) -> Outcome:
        """One real round: open it, every worker submits, wait for the aggregate.

        ``dp``: the round's ``dp_sigma``/``dp_clip``/``dp_delta`` (examples.train_digits_dp);
        the SDK then clips every submission to ``dp_clip``.
        """
        import grpc

        from clients.sdk import SecAggClientError
        from secagg.rounds import RoundConfig

        cfg = self.cfg
        d = inputs.floats.shape[1]
        rid = f"digits-{rule}-{uuid.uuid4().hex[:10]}"
        extra: dict[str, object] = {"skip_validation": True} if skip_validation else {}
        extra.update(dp or {})
        dp_clip = {"dp_clip": dp["dp_clip"]} if dp else {}
        self._open(
            RoundConfig(
                round_id=rid,
                n_expected=cfg.n,
                f=cfg.f,
                rule=rule,
                dim=d,
                scale=cfg.scale,  # public, per round
                coord_bound=cfg.norm_bound,
                norm_bound=cfg.norm_bound,
                deadline_unix_ms=int((time.time() + 120) * 1000),
                **extra,
            )
        )
        params = cfg.params

        def submit(i: int) -> None:
            if i in inputs.wrapped:
                base, coord = inputs.wrapped[i]
                self._submit_raw(rid, self.ids[i], attacks.wraparound_shares(base, coord))
            else:
                self.clients[i].submit(rid, inputs.floats[i], params, clip=True, **dp_clip)

        list(self.pool.map(submit, range(cfg.n)))
        index = {w: i for i, w in enumerate(self.ids)}
        try:
            agg = self.clients[0].wait_for_result(rid, timeout_s=600, poll_s=0.05)
        except SecAggClientError as exc:
            if exc.code != grpc.StatusCode.ABORTED:  # only "the round failed" is a result
                raise
            return Outcome(None, [], self._excluded(rid, index), failure=exc.details)
        return Outcome(agg.vector, [index[w] for w in agg.selected], self._excluded(rid, index))

    def _open(self, config) -> None:  # noqa: ANN001 - a secagg.rounds.RoundConfig
        """Open a round, waiting (up to a minute) while the servers' MPC session starts."""
        import grpc

        from clients.sdk import SecAggClientError

        deadline = time.monotonic() + 60
        while True:
            try:
                self.admin.open_round(config)
                return
            except SecAggClientError as exc:
                if exc.code != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _excluded(self, rid: str, index: dict[str, int]) -> list[int]:
        # exclusion reasons are the operator's (a worker sees only its own)
        st = self.admin.get_round_report(rid).status
        # older servers have no exclusions (no input validation)
        return sorted(index[e.worker_id] for e in getattr(st, "excluded", ()))


@dataclass
class Outcome:
    """A secure round as a worker sees it."""

    vector: np.ndarray | None  # None: the round failed
    selected: list[int]  # worker indices
    excluded: list[int]  # workers the servers dropped (failed input validation)
    failure: str = ""


# -------------------------------------------------------------------- experiment
@dataclass
class RunResult:
    """One (rule, attack) cell: accuracy per round (index 0 is before training)."""

    rule: str
    attack: str
    secure_acc: list[float] = field(default_factory=list)
    plain_acc: list[float] = field(default_factory=list)
    byz_selected_secure: int = 0  # rounds in which a Byzantine worker was selected
    byz_selected_plain: int = 0
    selection_mismatch: int = 0  # rounds where secure and reference selections differ
    max_gap: float = 0.0  # max |secure - reference| over rounds, on the same inputs
    # the same against the exact reference on the encoded integers (0.0 expected);
    # None where it does not apply (a wrapped vector overflows the exact reference)
    max_gap_exact: float | None = 0.0
    rejected_updates: int = 0  # secure aggregates that would have made the model non-finite
    failed_rounds: int = 0  # secure rounds that failed (no update that round)
    plain_failed_rounds: int = 0  # the same for the plaintext run
    byz_excluded: int = 0  # Byzantine submissions dropped by input validation
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the secure rounds

    @property
    def rounds(self) -> int:
        return max(len(self.secure_acc) - 1, 0)

    @property
    def destroyed(self) -> bool:
        """A secure aggregate was far from the plaintext rule on the same inputs (by more
        than any gradient can be: the public clip bounds honest vectors by ``clip``)."""
        return not self.max_gap <= 1e3


Progress = Callable[[int, int, str], None]


def _selected_byz(selected: Sequence[int], cfg: Config) -> bool:
    return any(i >= cfg.honest for i in selected)


def exact_gap(
    inp: RoundInputs, kept: list[int], rule: str, cfg: Config, agg: np.ndarray
) -> float | None:
    """max |secure - exact reference| on the encoded integers the workers submitted.

    The float reference can differ from the secure result by more than the fixed-point
    resolution where Bulyan's median windows tie within it; on the encoded integers the
    protocol is exact (the secure comparisons and sums are), so this must be 0.0.
    None when a wrapped vector makes the exact reference overflow (it refuses).
    """
    p = cfg.params
    rows = []
    for i in kept:
        if i in inp.wrapped:
            rows.append(attacks.wraparound_encoded(*inp.wrapped[i]))
        else:  # what the SDK's submit(clip=True) encodes
            rows.append(encoding.encode(encoding.clip_to_bounds(inp.floats[i], p), p))
    try:
        ref = reference.aggregate_encoded(np.stack(rows), rule, cfg.f)
    except (ValueError, RuleError):
        return None
    assert ref.encoded_sum is not None
    return float(np.max(np.abs(agg - encoding.decode(ref.encoded_sum, p, ref.divisor))))


def plaintext_round(
    X: np.ndarray, rule: str, cfg: Config, validated: bool
) -> tuple[np.ndarray | None, list[int]]:
    """What a trusted server with the same rule does: the aggregate (None if the round
    cannot run) and the selected worker indices.

    When the secure rounds validate inputs, the trusted server checks the same public
    bounds, exactly (the 2PC projection test is probabilistic and lets through norms up
    to ~113× the bound, never a wrapped coordinate); vectors outside are dropped and the
    round fails if too few workers remain, as on the servers.
    """
    keep = list(range(len(X)))
    if validated:
        p = cfg.params
        scaled = X * p.scale
        ok = (np.abs(scaled).max(axis=1) <= p.coord_bound) & (
            np.linalg.norm(scaled, axis=1) <= p.norm_bound * (1 + 1e-12)
        )
        keep = [int(i) for i in np.flatnonzero(ok)]
    try:
        ref = reference.aggregate(X[keep], rule, cfg.f)
    except RuleError:
        return None, []
    return np.asarray(ref.aggregate), [keep[i] for i in ref.selected]


def run_cell(
    cfg: Config,
    data: Data,
    runner: SecureRunner,
    rule: str,
    attack: str,
    tick: Callable[[str], None],
) -> RunResult:
    """Train one secure and one plaintext model for ``cfg.rounds`` rounds."""
    res = RunResult(rule, attack)
    sec = make_model(cfg.model, cfg.seed)
    res.secure_acc.append(accuracy(sec, data))
    pla = make_model(cfg.model, cfg.seed) if cfg.plaintext else None
    if pla is not None:
        res.plain_acc.append(accuracy(pla, data))
    kind = base_attack(attack)
    validated = attack != UNVALIDATED and validation_switch_supported()
    for t in range(cfg.rounds):
        inp = round_inputs(sec, data, cfg, kind, rule, t)
        t0 = time.perf_counter()
        out = runner.run(inp, rule, skip_validation=attack == UNVALIDATED)
        res.seconds += time.perf_counter() - t0
        res.byz_excluded += sum(i >= cfg.honest for i in out.excluded)
        if out.vector is None:
            res.failed_rounds += 1  # no aggregate, no step
            if out.failure not in res.failures:
                res.failures.append(out.failure)
        else:
            # the same round's inputs through the plaintext reference (on the workers
            # the servers kept): the secure path must agree up to fixed-point rounding,
            # except where the ring is exploited
            kept = [i for i in range(cfg.n) if i not in set(out.excluded)]
            ref = reference.aggregate(inp.floats[kept], rule, cfg.f)
            agg = out.vector
            finite = np.all(np.isfinite(agg))
            gap = float(np.max(np.abs(agg - ref.aggregate))) if finite else np.inf
            res.max_gap = max(res.max_gap, gap)
            exact = exact_gap(inp, kept, rule, cfg, agg)
            if exact is None or res.max_gap_exact is None:
                res.max_gap_exact = None
            else:
                res.max_gap_exact = max(res.max_gap_exact, exact)
            res.selection_mismatch += sorted(out.selected) != sorted(kept[i] for i in ref.selected)
            res.byz_selected_secure += _selected_byz(out.selected, cfg)
            if not apply_update(sec, agg, cfg.lr):
                res.rejected_updates += 1
        res.secure_acc.append(accuracy(sec, data))
        if pla is not None:
            pin = round_inputs(pla, data, cfg, kind, rule, t)
            pagg, psel = plaintext_round(pin.floats, rule, cfg, validated)
            res.byz_selected_plain += _selected_byz(psel, cfg)
            if pagg is None:
                res.plain_failed_rounds += 1
            else:
                apply_update(pla, pagg, cfg.lr)
            res.plain_acc.append(accuracy(pla, data))
        tick(f"{rule:<10} {attack:<10} round {t + 1:>2}/{cfg.rounds} acc {res.secure_acc[-1]:.3f}")
    return res


def run_grid(cfg: Config, progress: Progress | None = None) -> list[RunResult]:
    """Every rule × attack cell, all through one real deployment."""
    for rule in cfg.rules:
        if rule not in RULES:
            raise SystemExit(f"unknown rule {rule!r}; choose from {RULES}")
    for attack in cfg.attacks:
        if attack not in GRID_ATTACKS:
            raise SystemExit(f"unknown attack {attack!r}; choose from {GRID_ATTACKS}")
    data = load_data(cfg.n, cfg.seed)
    total = len(cfg.rules) * len(cfg.attacks) * cfg.rounds
    done = 0

    def tick(msg: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, msg)

    cfg.out.mkdir(parents=True, exist_ok=True)
    results = []
    with SecureRunner(cfg, cfg.out / f"deploy-{uuid.uuid4().hex[:8]}") as runner:
        if progress is not None:
            progress(0, total, "deployment up (server A, server B, dealer)")
        for rule in cfg.rules:
            for attack in cfg.attacks:
                results.append(run_cell(cfg, data, runner, rule, attack, tick))
    return results


# ----------------------------------------------------------------------- outputs
def _cell(r: RunResult) -> str:
    sec = f"{r.secure_acc[-1]:.3f}"
    if r.destroyed:
        sec = f"**{sec}**"
    if r.failed_rounds:
        sec += f" ({r.failed_rounds} failed)"
    if not r.plain_acc:
        return sec
    plain = f"{r.plain_acc[-1]:.3f}"
    if r.plain_failed_rounds:
        plain += f" ({r.plain_failed_rounds} failed)"
    return f"{sec} / {plain}"


def notes(cfg: Config, results: Sequence[RunResult]) -> list[str]:
    """What the wrap-around cells show, stated from the measured numbers."""
    out: list[str] = []
    wrap = [r for r in results if base_attack(r.attack) == "wraparound"]
    if not wrap:
        return out
    out.append(
        "Wrap-around: each of the f attackers uploads shares of the clipped honest mean "
        "with 2^63 added to its own coordinate. Squared distances in Z_2^64 do not change, "
        "so without input validation the distance-based rules select these vectors and the "
        "opened sum decodes to ~1e12 on those coordinates, while the plaintext rules see "
        "the decoded vectors and reject them (plaintext column)."
    )
    for r in wrap:
        if r.destroyed:
            out.append(
                f"- {r.rule}, {r.attack}: secure aggregate destroyed "
                f"({r.secure_acc[-1]:.3f} vs {r.plain_acc[-1]:.3f} plaintext); a Byzantine "
                f"vector was selected in {r.byz_selected_secure} of {r.rounds} rounds. "
                + (
                    "Input validation was off for these rounds: this is what it prevents (#5)."
                    if r.attack == UNVALIDATED
                    else "The servers do not validate inputs in 2PC here (#5)."
                )
                + (
                    " The plaintext run is destroyed too: the rule selected the decoded "
                    "vectors (plain averaging has no robustness at all)."
                    if r.byz_selected_plain
                    else ""
                )
            )
        elif r.byz_excluded or r.failed_rounds:
            line = f"- {r.rule}, {r.attack}: " + (
                f"input validation dropped {r.byz_excluded} Byzantine submissions of "
                f"{cfg.f * r.rounds} in {r.rounds} rounds"
                if r.byz_excluded
                else "server A's status lists no exclusions"
            )
            if r.failed_rounds:
                line += (
                    f"; {r.failed_rounds} rounds failed ({'; '.join(r.failures)[:200]}): "
                    f"with n = {cfg.n} = 4f+3 every rejected worker leaves Bulyan short of "
                    "participants, so the attack becomes a denial of service (the plaintext "
                    "server with the same bounds check fails the same way)"
                    if r.rule == "bulyan"
                    else f"; {r.failed_rounds} rounds failed ({'; '.join(r.failures)[:200]})"
                )
            out.append(line + ".")
    return out


def markdown_table(cfg: Config, results: Sequence[RunResult]) -> str:
    """The accuracy matrix (secure / plaintext) and a row per cell with the details."""
    by = {(r.rule, r.attack): r for r in results}
    lines = [
        f"Final test accuracy after {cfg.rounds} rounds, secure / plaintext "
        f"(n={cfg.n}, f={cfg.f}, {cfg.model}, batch {cfg.batch}, lr {cfg.lr}, "
        f"public scale {cfg.scale:g}); bold: secure aggregate destroyed",
        "",
        "| rule | " + " | ".join(cfg.attacks) + " |",
        "|---|" + "---|" * len(cfg.attacks),
    ]
    for rule in cfg.rules:
        cells = [_cell(by[(rule, a)]) for a in cfg.attacks if (rule, a) in by]
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| rule | attack | secure acc | plaintext acc | rounds with a Byzantine worker "
        "selected (secure / plaintext) | Byzantine submissions dropped by validation | "
        "failed rounds (secure / plaintext) | max same-round abs(secure − reference) | "
        "same, exact encoded reference | selection ≠ reference | s/round |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        plain = f"{r.plain_acc[-1]:.3f}" if r.plain_acc else "-"
        pbyz = str(r.byz_selected_plain) if r.plain_acc else "-"
        lines.append(
            f"| {r.rule} | {r.attack} | {r.secure_acc[-1]:.3f} | {plain} | "
            f"{r.byz_selected_secure} / {pbyz} (of {r.rounds}) | {r.byz_excluded} | "
            f"{r.failed_rounds} / {r.plain_failed_rounds} | {r.max_gap:.3g} | "
            f"{'n/a' if r.max_gap_exact is None else f'{r.max_gap_exact:.3g}'} | "
            f"{r.selection_mismatch} | "
            f"{r.seconds / max(r.rounds, 1):.2f} |"
        )
    extra = notes(cfg, results)
    res = encoding.resolution(cfg.params)
    if any(r.rule == "bulyan" and not r.destroyed and r.max_gap > res for r in results):
        extra.insert(
            0,
            f"Bulyan's gaps to the float reference above the resolution ({res:.2g}) come "
            "from median windows whose costs tie within it (identical attacker vectors make "
            "such ties common); the exact reference on the encoded integers is the one the "
            "protocol must match bit for bit (its column).",
        )
    if extra:
        lines += ["", *extra]
    return "\n".join(lines) + "\n"


def write_outputs(cfg: Config, results: Sequence[RunResult]) -> dict[str, Path]:
    """results.md, results.csv, history.json and (with matplotlib) accuracy.png."""
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "results.md", "csv": out / "results.csv", "json": out / "history.json"}
    paths["md"].write_text(markdown_table(cfg, results))
    with paths["csv"].open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "rule",
                "attack",
                "rounds",
                "secure_acc",
                "plaintext_acc",
                "byz_selected_secure",
                "byz_selected_plaintext",
                "max_gap_same_inputs",
                "max_gap_exact_encoded",
                "selection_mismatch",
                "seconds_per_round",
                "secure_destroyed",
                "failed_rounds",
                "plaintext_failed_rounds",
                "byz_excluded",
            ]
        )
        for r in results:
            w.writerow(
                [
                    r.rule,
                    r.attack,
                    r.rounds,
                    f"{r.secure_acc[-1]:.4f}",
                    f"{r.plain_acc[-1]:.4f}" if r.plain_acc else "",
                    r.byz_selected_secure,
                    r.byz_selected_plain if r.plain_acc else "",
                    f"{r.max_gap:.6g}",
                    "" if r.max_gap_exact is None else f"{r.max_gap_exact:.6g}",
                    r.selection_mismatch,
                    f"{r.seconds / max(r.rounds, 1):.3f}",
                    int(r.destroyed),
                    r.failed_rounds,
                    r.plain_failed_rounds,
                    r.byz_excluded,
                ]
            )
    paths["json"].write_text(
        json.dumps(
            {
                "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()},
                "runs": [
                    {
                        "rule": r.rule,
                        "attack": r.attack,
                        "secure": r.secure_acc,
                        "plaintext": r.plain_acc,
                    }
                    for r in results
                ],
            },
            indent=1,
        )
    )
    png = plot(cfg, results, out / "accuracy.png")
    if png is not None:
        paths["png"] = png
    return paths


def plot(cfg: Config, results: Sequence[RunResult], path: Path) -> Path | None:
    """Accuracy per round, one panel per attack; None (with a note) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping accuracy.png", file=sys.stderr)
        return None
    cols = min(4, len(cfg.attacks))
    rows = (len(cfg.attacks) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    colors = dict(zip(RULES, ("tab:gray", "tab:blue", "tab:green", "tab:red"), strict=True))
    for ax, attack in zip(axes.flat, cfg.attacks, strict=False):
        for r in results:
            if r.attack != attack:
                continue
            x = range(len(r.secure_acc))
            ax.plot(x, r.secure_acc, color=colors[r.rule], label=f"{r.rule} (secure)")
            if r.plain_acc:
                ax.plot(x, r.plain_acc, color=colors[r.rule], ls="--", alpha=0.7)
        ax.set_title(attack)
        ax.set_ylim(0, 1)
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(cfg.attacks) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower right", title="dashed: plaintext", title_fontsize=7)
    fig.suptitle(f"digits, n={cfg.n}, f={cfg.f}: secure (solid) vs plaintext (dashed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- CLI
def progress_line(done: int, total: int, msg: str) -> None:
    """A one-line progress bar on stderr (redrawn in place on a terminal)."""
    width = 28
    filled = int(width * done / max(total, 1))
    bar = "#" * filled + "." * (width - filled)
    line = f"[{bar}] {done}/{total} {msg}"
    if sys.stderr.isatty():
        end = "\n" if done == total else ""
        print(f"\r{line:<100}", end=end, file=sys.stderr, flush=True)
    else:
        print(line, file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None = None) -> Config:
    p = argparse.ArgumentParser(
        prog="python -m examples.train_digits",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--full", action="store_true", help="4 rules × 8 attack columns, 30 rounds")
    p.add_argument("--rules", nargs="+", choices=RULES, default=None)
    p.add_argument("--attacks", nargs="+", choices=GRID_ATTACKS, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--model", choices=("softmax", "mlp"), default="softmax")
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clip", type=float, default=2.0, help="public gradient L2 bound")
    p.add_argument("--out", type=Path, default=Path("out/digits"))
    p.add_argument("--insecure", action="store_true", help="no TLS between workers and servers")
    p.add_argument("--no-plaintext", action="store_true", help="skip the plaintext runs")
    a = p.parse_args(argv)
    rules = tuple(a.rules or (RULES if a.full else DEMO_RULES))
    atts = tuple(a.attacks or (FULL_ATTACKS if a.full else DEMO_ATTACKS))
    if UNVALIDATED in atts and not validation_switch_supported():
        # without input validation in the servers, "wraparound" already is this case
        print(f"note: these servers have no input validation; dropping {UNVALIDATED}")
        atts = tuple(x for x in atts if x != UNVALIDATED)
    rounds = a.rounds or (30 if a.full else 10)
    if rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    return Config(
        rules=rules,
        attacks=atts,
        rounds=rounds,
        model=a.model,
        lr=a.lr,
        batch=a.batch,
        seed=a.seed,
        clip=a.clip,
        out=a.out,
        tls=not a.insecure,
        plaintext=not a.no_plaintext,
    )


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    cells = len(cfg.rules) * len(cfg.attacks)
    print(
        f"digits: {cells} cells ({', '.join(cfg.rules)} × {', '.join(cfg.attacks)}), "
        f"{cfg.rounds} rounds each through real servers (TLS {'on' if cfg.tls else 'off'}), "
        f"n={cfg.n}, f={cfg.f}",
        file=sys.stderr,
        flush=True,
    )
    t0 = time.perf_counter()
    results = run_grid(cfg, progress_line)
    paths = write_outputs(cfg, results)
    print(markdown_table(cfg, results))
    print(f"wrote {', '.join(str(p) for p in paths.values())} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
