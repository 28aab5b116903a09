"""Fixtures shared by the privacy tests: one real MPC cluster (A, B, dealer as
separate processes) and one batch of fully recorded rounds on a pair of inputs with
identical public outputs, which the view and collusion tests both analyse."""

from __future__ import annotations

import numpy as np
import pytest
from privacy_rounds import (
    COLLUDERS,
    DIM,
    PARAMS,
    RULE,
    RUNS_PER_INPUT,
    F,
    N,
    RecordedBatch,
    recorded_run,
)
from privacy_tools import make_plan, rotated_pair

from secagg.cluster import MpcCluster


@pytest.fixture(scope="session")
def cluster():
    with MpcCluster(timeout_s=120) as c:
        yield c


@pytest.fixture(scope="session")
def recorded(cluster) -> RecordedBatch:
    """RUNS_PER_INPUT rounds on X and as many on X', interleaved."""
    rng = np.random.default_rng(20240601)
    pair = rotated_pair(rng, N, DIM, RULE, F, colluders=COLLUDERS)
    plan = make_plan(RULE, F, PARAMS, DIM)
    runs = []
    for _ in range(RUNS_PER_INPUT):
        for which, X in enumerate((pair.X, pair.X2)):
            runs.append(recorded_run(cluster, X, plan, which))
    return RecordedBatch(pair, plan, runs)
