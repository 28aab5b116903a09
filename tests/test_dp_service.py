"""DP rounds through the real service: A, B and the dealer as processes with TLS, workers
through the SDK (which clips to dp_clip), a Byzantine worker over the bound.

The opened aggregate minus the plaintext rule's output on the same (clipped, encoded)
inputs is the servers' noise: its variance must be 2σ² (both servers' discrete
Gaussians) and must reject σ² (one server's noise missing; the library-path test
``tests/test_dp_protocol.py`` runs that control for real).
"""

from __future__ import annotations

import math
import time
import uuid

import numpy as np
import pytest

from clients.admin import AdminClient
from clients.sdk import SecAggClient
from secagg import encoding, reference
from secagg.dp import sampler
from secagg.dp.accounting import NORM_CHECK_REASON, spent
from secagg.dp.mechanism import clip_and_encode
from secagg.rounds import RoundConfig
from servers.launcher import LocalDeployment

N, D = 8, 5000
PARAMS = encoding.EncodingParams(scale=1.0, coord_bound=2.0, norm_bound=2.0)
CLIP, SIGMA, DELTA = 1.0, 0.05, 1e-5
IDS = [f"w{i:02d}" for i in range(N)]


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    d = LocalDeployment(tmp_path_factory.mktemp("deploy"), IDS, tls=True)
    d.start()
    yield d
    d.stop()


def open_dp_round(dep: LocalDeployment, rule: str, f: int) -> str:
    rid = f"dp-{rule}-{uuid.uuid4().hex[:8]}"
    cfg = RoundConfig(
        round_id=rid,
        n_expected=N,
        f=f,
        rule=rule,
        dim=D,
        scale=PARAMS.scale,
        coord_bound=PARAMS.coord_bound,
        norm_bound=PARAMS.norm_bound,
        deadline_unix_ms=int((time.time() + 90) * 1000),
        dp_sigma=SIGMA,
        dp_clip=CLIP,
        dp_delta=DELTA,
    )
    with AdminClient(dep.control_a, dep.tls_for("admin")) as a:
        a.open_round(cfg)
    return rid


def client(dep: LocalDeployment, wid: str) -> SecAggClient:
    return SecAggClient(
        dep.addr_a, dep.addr_b, wid, dep.tokens[wid], tls=dep.worker_tls(), timeout_s=30
    )


@pytest.mark.parametrize(("rule", "f"), [("mean", 0), ("multi-krum", 1)])
def test_dp_round_noise_variance_and_norm_check_through_the_service(dep, rule, f):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(N, D)) * 0.03  # norms about 2.1: the SDK clips them to C
    byz = np.zeros(D)
    byz[:4] = 0.7  # norm 1.4: inside norm_bound (passes validation), above C = 1
    rid = open_dp_round(dep, rule, f)
    for i in range(N - 1):
        with client(dep, IDS[i]) as c:
            c.submit(rid, X[i])  # round's params fetched: clipped to dp_clip
    with client(dep, IDS[-1]) as c:
        c.submit(rid, byz, PARAMS)  # params given, no dp_clip: sent unclipped
    with client(dep, IDS[0]) as c0:  # only participants read the aggregate
        agg = c0.wait_for_result(rid, timeout_s=180)
    with client(dep, IDS[-1]) as c:  # a worker sees its own exclusion
        st = c.status(rid)
        st_b = c.status(rid, server="b")
    assert {e.worker_id: e.reason for e in st.excluded} == {IDS[-1]: NORM_CHECK_REASON}
    assert [e.worker_id for e in st_b.excluded] == [IDS[-1]]
    # the plaintext rule on the same clipped, encoded honest inputs
    Xenc = np.stack([clip_and_encode(x, PARAMS, CLIP) for x in X[: N - 1]])
    assert all(int(np.dot(x, x)) <= (1 << 32) for x in Xenc)
    ref = reference.aggregate_encoded(Xenc, rule, f, None)
    assert list(agg.selected) == sorted(IDS[i] for i in ref.selected)  # a worker's view
    total = np.rint(agg.vector * (2.0**16 * PARAMS.scale) * agg.divisor).astype(np.int64)
    noise = (total - ref.encoded_sum).astype(np.float64)
    sigma2 = math.ceil(SIGMA * 2**16) ** 2
    both = 2 * sampler.variance(sigma2)
    tol = 5 * math.sqrt(2 / D)
    ratio = noise.var() / both
    assert abs(ratio - 1) < tol, ratio
    assert abs(2 * ratio - 1) > tol  # one server's noise alone (σ²) is rejected
    assert abs(noise.mean()) < 5 * math.sqrt(both / D)
    with AdminClient(dep.control_a, dep.tls_for("admin")) as a:
        rep = a.get_round_report(rid)
    m = N - 1 - f - 2
    sens = 2 * CLIP * (1 if rule == "mean" else m)
    assert rep.dp_rho == pytest.approx(sens**2 / (2 * SIGMA**2))
    assert rep.dp_rounds >= 1 and rep.dp_rho_spent >= rep.dp_rho
    assert rep.dp_epsilon_spent == pytest.approx(spent(rep.dp_rho_spent, rep.dp_rounds, DELTA))
