"""Digits training with DP rounds through the real servers: accuracy against ε.

The setting of :mod:`examples.train_digits` (n = 19 workers, f = 4 Byzantine, softmax
regression, one SGD step per round, public clip C = 2 in gradient units, scale 64),
every round through a real deployment (server A, server B, dealer; TLS). For each
ε ∈ {1, 2, 4, 8, ∞} (δ = 10^-5 over the whole run) the rounds are opened with the
per-server noise ``secagg dp plan`` gives for (ε, δ, T rounds, C, rule, n = 19, f = 4):
the SDK clips every submission to C, the servers check ‖x‖ ≤ C exactly in 2PC, and
each adds its discrete Gaussian before the opening. ε = ∞ is the same run without DP.

The guarantee is per worker, replace-one, and covers the released aggregates only
(``docs/dp.md``): the Multi-Krum/Bulyan selections and, for server A, the distance
matrix are not protected. The sensitivity of a robust rule's output is at least 2C
(2C/n for the mean), which is why useful accuracy needs large ε at n = 19.

Commands::

    python -m examples.train_digits_dp   # the table in examples/results/digits_dp
    python -m examples.train_digits_dp --rules multi-krum --epsilons 4 inf --rounds 5

Outputs (``--out``): ``results.md``, ``results.csv`` (final test accuracy per rule,
attack and ε, with σ per server and the ε the accountant reports for the rounds run)
and ``accuracy.png``.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from examples.train_digits import (
    Config,
    Data,
    SecureRunner,
    accuracy,
    apply_update,
    load_data,
    make_model,
    round_inputs,
)
from secagg.dp.accounting import plan, spent

EPSILONS = (1.0, 2.0, 4.0, 8.0, math.inf)


@dataclass
class DpRun:
    """One (rule, attack, ε) training run."""

    rule: str
    attack: str
    epsilon: float
    sigma: float = 0.0  # each server's noise std on the opened sum (0: no DP)
    aggregate_std: float = 0.0  # noise std per coordinate of the released aggregate
    acc: list[float] = field(default_factory=list)
    rho_total: float = 0.0
    failed_rounds: int = 0
    rejected_updates: int = 0
    excluded: int = 0  # submissions the servers dropped (validation or norm check)
    seconds: float = 0.0


def dp_fields(
    cfg: Config, rule: str, epsilon: float, delta: float
) -> tuple[dict[str, float], float, float]:
    """The round's dp_* fields for (ε, δ) over cfg.rounds rounds, plus σ and ρ per round."""
    if math.isinf(epsilon):
        return {}, 0.0, 0.0
    p = plan(epsilon, delta, cfg.rounds, clip=cfg.clip, rule=rule, n=cfg.n, f=cfg.f)
    fields = {"dp_sigma": p.sigma, "dp_clip": cfg.clip, "dp_delta": delta}
    return fields, p.sigma, p.rho_per_round


def train(
    cfg: Config,
    data: Data,
    runner: SecureRunner,
    rule: str,
    attack: str,
    epsilon: float,
    delta: float,
) -> DpRun:
    fields, sigma, rho = dp_fields(cfg, rule, epsilon, delta)
    run = DpRun(rule, attack, epsilon, sigma)
    if sigma:
        run.aggregate_std = plan(
            epsilon, delta, cfg.rounds, clip=cfg.clip, rule=rule, n=cfg.n, f=cfg.f
        ).aggregate_std
    model = make_model(cfg.model, cfg.seed)
    run.acc.append(accuracy(model, data))
    for t in range(cfg.rounds):
        inp = round_inputs(model, data, cfg, attack, rule, t)
        t0 = time.perf_counter()
        out = runner.run(inp, rule, dp=fields or None)
        run.seconds += time.perf_counter() - t0
        run.excluded += len(out.excluded)
        if out.vector is None:
            run.failed_rounds += 1
        else:
            run.rho_total += rho  # an upper bound: fewer participants, smaller Δ
            if not apply_update(model, out.vector, cfg.lr):
                run.rejected_updates += 1
        run.acc.append(accuracy(model, data))
        print(
            f"{rule:<10} {attack:<9} ε={epsilon:<4g} round {t + 1:>2}/{cfg.rounds} "
            f"acc {run.acc[-1]:.3f}",
            file=sys.stderr,
            flush=True,
        )
    return run


def write_outputs(out: Path, runs: Sequence[DpRun], cfg: Config, delta: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    eps_cols = sorted({r.epsilon for r in runs})
    with (out / "results.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "rule",
                "attack",
                "epsilon_target",
                "delta",
                "rounds",
                "sigma_per_server",
                "aggregate_noise_std",
                "epsilon_spent",
                "final_acc",
                "failed_rounds",
                "rejected_updates",
                "excluded",
                "seconds_per_round",
            ]
        )
        for r in runs:
            spent_eps = spent(r.rho_total, cfg.rounds, delta) if r.sigma else math.inf
            w.writerow(
                [
                    r.rule,
                    r.attack,
                    r.epsilon,
                    delta,
                    cfg.rounds,
                    f"{r.sigma:.6g}",
                    f"{r.aggregate_std:.6g}",
                    f"{spent_eps:.4g}",
                    f"{r.acc[-1]:.4f}",
                    r.failed_rounds,
                    r.rejected_updates,
                    r.excluded,
                    f"{r.seconds / max(cfg.rounds, 1):.3f}",
                ]
            )
    names = ["∞" if math.isinf(e) else f"{e:g}" for e in eps_cols]
    head = "| rule | attack | " + " | ".join(f"ε = {e}" for e in names) + " |"
    lines = [
        f"# Digits with DP rounds: final test accuracy after {cfg.rounds} rounds",
        "",
        f"n = {cfg.n}, f = {cfg.f}, clip C = {cfg.clip} (gradient units), δ = {delta:g} over "
        f"the run, replace-one neighbours; every round secure (A, B, dealer, TLS). Each "
        "cell: accuracy (each server's σ on the opened sum / noise std per coordinate "
        "of the released aggregate).",
        "",
        head,
        "|" + "---|" * (2 + len(eps_cols)),
    ]
    for rule, attack in dict.fromkeys((r.rule, r.attack) for r in runs):
        cells = []
        for e in eps_cols:
            r = next((x for x in runs if (x.rule, x.attack, x.epsilon) == (rule, attack, e)), None)
            if r is None:
                cells.append("")
            elif r.sigma:
                cells.append(f"{r.acc[-1]:.3f} (σ {r.sigma:.3g} / {r.aggregate_std:.3g})")
            else:
                cells.append(f"{r.acc[-1]:.3f}")
        lines.append(f"| {rule} | {attack} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Accuracy before training: {runs[0].acc[0]:.3f}. A clipped gradient has norm at "
        f"most C = {cfg.clip:g} over d = 650 coordinates (about {cfg.clip / math.sqrt(650):.2g} "
        "per coordinate on average); the noise on the aggregate must come down to that "
        "order before training helps. The guarantee covers the released aggregates only "
        "(docs/dp.md): selections and A's distance matrix are not protected.",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping accuracy.png", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    finite = [e for e in eps_cols if not math.isinf(e)]
    # ε = ∞ is drawn one octave right of the largest finite ε
    where = {e: e for e in finite} | {math.inf: max(finite) * 2 if finite else 1.0}
    xs = [where[e] for e in eps_cols]
    for rule, attack in dict.fromkeys((r.rule, r.attack) for r in runs):
        mine = sorted(
            (where[x.epsilon], x.acc[-1]) for x in runs if (x.rule, x.attack) == (rule, attack)
        )
        ax.plot([p[0] for p in mine], [p[1] for p in mine], marker="o", label=f"{rule}, {attack}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [f"{e:g}" if not math.isinf(e) else "∞" for e in eps_cols])
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"ε (δ = {delta:g}, {cfg.rounds} rounds)")
    ax.set_ylabel("final test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rules", nargs="+", default=["multi-krum", "bulyan"])
    p.add_argument("--attacks", nargs="+", default=["alie", "sign-flip"])
    p.add_argument("--epsilons", nargs="+", type=float, default=list(EPSILONS))
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path("examples/results/digits_dp"))
    args = p.parse_args(argv)
    cfg = replace(Config(), rules=tuple(args.rules), attacks=tuple(args.attacks))
    cfg = replace(cfg, rounds=args.rounds, out=args.out)
    data = load_data(cfg.n, cfg.seed)
    runs: list[DpRun] = []
    args.out.mkdir(parents=True, exist_ok=True)
    with SecureRunner(cfg, Path("out") / f"deploy-dp-{uuid.uuid4().hex[:8]}") as runner:
        for rule in cfg.rules:
            for attack in cfg.attacks:
                for eps in args.epsilons:
                    runs.append(train(cfg, data, runner, rule, attack, eps, args.delta))
                    write_outputs(args.out, runs, cfg, args.delta)  # partial results survive
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
