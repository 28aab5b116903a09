"""The recorded-round setting shared by the privacy tests: parameters, containers and
the helper that runs one real round with both servers' complete views recorded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import privacy_hooks
from privacy_tools import InputPair

from secagg import encoding, sharing
from secagg.cluster import MpcCluster
from secagg.protocol import RoundPlan

# n = 9, f = 2: Multi-Krum's n >= 2f+3 with two colluding Byzantine workers (rows 0, 1).
N, F, DIM = 9, 2, 160  # 2·160 consecutive colluder mask words > the 312 MT needs
COLLUDERS = (0, 1)
RULE = "multi-krum"
RUNS_PER_INPUT = 20
# encoded inputs stay below 2^18 per coordinate: norm <= 2.6e6 < L·2^16 with L = 64
PARAMS = encoding.EncodingParams(scale=1.0, coord_bound=64.0, norm_bound=64.0)


@dataclass
class PartyView:
    outcome: object  # secagg.protocol.PartyOutcome
    transcript: list[tuple[str, np.ndarray]]
    dealer_headers: list[np.ndarray]


@dataclass
class RecordedRun:
    """One real round: the inputs' shares and both servers' complete views."""

    which: int  # 0: X, 1: X'
    seeds: list[bytes]
    share_a: np.ndarray  # what A holds (expanded seeds)
    share_b: np.ndarray  # what B holds
    a: PartyView
    b: PartyView


@dataclass
class RecordedBatch:
    pair: InputPair
    plan: RoundPlan
    runs: list[RecordedRun]


def recorded_run(cluster: MpcCluster, X: np.ndarray, plan: RoundPlan, which: int) -> RecordedRun:
    parts = [sharing.split(row) for row in X]
    share_a = np.stack([sharing.share_a(p.seed, X.shape[1]) for p in parts])
    share_b = np.stack([p.share_b for p in parts])
    (oa, ta, ha), (ob, tb, hb) = cluster.run(
        privacy_hooks.recorded_round, (share_a, plan), (share_b, plan)
    )
    return RecordedRun(
        which=which,
        seeds=[p.seed for p in parts],
        share_a=share_a,
        share_b=share_b,
        a=PartyView(oa, ta, ha),
        b=PartyView(ob, tb, hb),
    )
