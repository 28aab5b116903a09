"""``secagg dp plan``: the noise a DP run needs (registered by :mod:`secagg.cli`)."""

from __future__ import annotations

import argparse
import sys

from secagg.dp.accounting import RULES, PlanError, plan


def cmd_plan(args: argparse.Namespace) -> int:
    try:
        p = plan(
            args.epsilon,
            args.delta,
            args.rounds,
            clip=args.clip,
            rule=args.rule,
            n=args.n,
            f=args.f,
            m=args.m,
            validation_delta=args.validation_delta,
        )
    except PlanError as exc:
        print(f"secagg dp plan: {exc}", file=sys.stderr)
        return 2
    for line in p.lines():
        print(line)
    print(
        f"open the rounds with dp_sigma = {p.sigma:.6g} and dp_clip = {p.clip:g} (RoundConfig); "
        "see docs/dp.md for whom this protects at each reveal level"
    )
    return 0


def add_subcommand(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``dp plan`` on the top-level ``secagg`` parser's subcommands."""
    dp = sub.add_parser("dp", help="differential privacy: plan the noise for (ε, δ)")
    dsub = dp.add_subparsers(dest="dp_cmd", required=True)
    pl = dsub.add_parser(
        "plan",
        help="print each server's discrete Gaussian σ for (ε, δ) over T rounds",
        description="Each server adds N_Z(0, σ²) to its share of the opened sum; the "
        "guarantee (replace-one neighbours) rests on one server's noise alone.",
    )
    pl.add_argument("--epsilon", type=float, required=True, help="ε over the whole run")
    pl.add_argument("--delta", type=float, required=True, help="δ over the whole run")
    pl.add_argument("--rounds", type=int, required=True, help="T, rounds in the run")
    pl.add_argument("--clip", type=float, required=True, help="C, the exact L2 bound")
    pl.add_argument("--rule", choices=RULES, required=True)
    pl.add_argument("--n", type=int, default=None, help="participants per round")
    pl.add_argument("--f", type=int, default=0, help="Byzantine workers tolerated")
    pl.add_argument("--m", type=int, default=None, help="multi-krum's m (default n-f-2)")
    pl.add_argument(
        "--validation-delta",
        type=float,
        default=1e-9,
        help="the projection test's false-rejection rate (δ_v, spent T times)",
    )
    pl.set_defaults(fn=cmd_plan)
