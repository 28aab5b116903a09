"""Prometheus metrics (secagg.metrics): pre-initialised series, what round events count,
and a real deployment's /metrics endpoints over a real round."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from clients.admin import AdminClient
from clients.sdk import SecAggClient
from secagg import encoding, metrics, reference, transport
from secagg.rounds import RoundBook, RoundConfig, RoundError
from secagg.v1 import secagg_pb2 as pb
from secagg.v1 import secagg_pb2_grpc as pbg
from servers.launcher import LocalDeployment

PARAMS = encoding.EncodingParams(scale=1.0, coord_bound=50.0, norm_bound=150.0)


@pytest.fixture
def installed() -> Iterator[metrics.Metrics]:
    metrics.uninstall()
    yield metrics.install("server-b")
    metrics.uninstall()


def _samples(m: metrics.Metrics) -> dict:
    from prometheus_client import generate_latest

    return metrics.parse(generate_latest(m.registry).decode())


def test_every_labelled_series_exists_at_zero_before_anything_happens() -> None:
    s = _samples(metrics.Metrics("server-a"))
    v = metrics.value
    for state in ("done", "failed"):
        assert v(s, "secagg_rounds_total", state=state) == 0
    for res in metrics.SUBMISSION_RESULTS:
        assert v(s, "secagg_submissions_total", result=res) == 0
    for why in metrics.EXCLUSION_REASONS:
        assert v(s, "secagg_workers_excluded_total", reason=why) == 0
    assert v(s, "secagg_bytes_total", phase="collection", link="worker_to_server") == 0
    for phase in metrics.MPC_PHASES:
        for link in ("server_to_server", "dealer_to_server"):
            assert v(s, "secagg_bytes_total", phase=phase, link=link) == 0
        assert v(s, "secagg_mpc_phase_duration_seconds_count", phase=phase) == 0
    for phase in metrics.ROUND_PHASES:
        assert v(s, "secagg_round_phase_duration_seconds_count", phase=phase) == 0
    for res in ("ok", "failed"):
        assert v(s, "secagg_mpc_session_builds_total", result=res) == 0
    assert v(s, "secagg_mpc_session_rebuilds_total") == 0
    assert v(s, "secagg_rpc_requests_total", method="Worker/SubmitShare") == 0
    for code in ("INVALID_ARGUMENT", "UNAUTHENTICATED", "ALREADY_EXISTS", "UNAVAILABLE"):
        assert v(s, "secagg_rpc_errors_total", method="Worker/SubmitShare", code=code) == 0
        assert v(s, "secagg_rpc_errors_total", method="Peer/RunPhase", code=code) == 0


def _config(rid: str, n: int = 3) -> RoundConfig:
    return RoundConfig(
        round_id=rid,
        n_expected=n,
        f=0,
        rule="mean",
        dim=4,
        scale=PARAMS.scale,
        coord_bound=PARAMS.coord_bound,
        norm_bound=PARAMS.norm_bound,
        deadline_unix_ms=int((time.time() + 600) * 1000),
        skip_validation=True,  # the state machine goes straight from fixed to reveal
    )


def test_round_events_count_by_enumerated_reason_without_worker_data(
    installed: metrics.Metrics,
) -> None:
    ids = ["alice-7f3a", "bob-91c2", "carol-55d0"]
    book = RoundBook(workers=ids, server="server-b")
    rnd = book.open(_config("round-secret-1d9e"))
    shares = [np.arange(4, dtype=np.int64) + 10 * i for i in range(3)]
    for w, x in zip(ids, shares, strict=True):
        rnd.submit(w, f"sub-{w}", x)
    rnd.submit(ids[0], f"sub-{ids[0]}", shares[0])  # an identical retry
    with pytest.raises(RoundError):
        rnd.submit(ids[0], "sub-other", shares[1] + 1)  # a different payload
    with pytest.raises(RoundError):
        rnd.submit("mallory-0000", "sub-m", shares[2] + 5)  # not registered
    rnd.fix_participants(ids[:2])  # carol "dropped out" on the other server
    rnd.start_reveal(ids[:2])
    rnd.finish()
    book.open(_config("round-secret-2b7c")).fail("server A: the 7th moon rose")

    s = _samples(installed)
    v = metrics.value
    assert v(s, "secagg_submissions_total", result="accepted") == 3
    assert v(s, "secagg_submissions_total", result="duplicate") == 1
    assert v(s, "secagg_submissions_total", result="conflicting") == 1
    assert v(s, "secagg_submissions_total", result="unknown_worker") == 1
    assert v(s, "secagg_workers_excluded_total", reason="dropout_or_mismatch") == 1
    assert v(s, "secagg_rounds_total", state="done") == 1
    assert v(s, "secagg_rounds_total", state="failed") == 1
    for phase in ("collecting", "participants_fixed", "reveal"):
        assert v(s, "secagg_round_phase_duration_seconds_count", phase=phase) == 1
    assert v(s, "secagg_round_phase_duration_seconds_count", phase="open") == 2
    # labels and values are enumerations and counts: no id, reason text or data
    from prometheus_client import generate_latest

    text = generate_latest(installed.registry).decode()
    for secret in [*ids, "mallory", "round-secret", "7th moon", "sub-"]:
        assert secret not in text


def test_validation_exclusions_and_unknown_reasons_map_to_enumerations() -> None:
    assert metrics.exclusion_reason("failed input validation (8 projections > T)") == ("validation")
    assert metrics.exclusion_reason("dropped out or mismatched when participants were fixed") == (
        "dropout_or_mismatch"
    )
    assert metrics.exclusion_reason("worker 17 looked odd: 3.14") == "other"
    assert metrics.submission_result("refused", "ReplayedSubmission") == "replayed"
    assert metrics.submission_result("refused", "SomethingNew") == "other"


def test_metrics_listen_is_checked() -> None:
    assert metrics.parse_listen("0.0.0.0:9464") == ("0.0.0.0", 9464)
    assert metrics.parse_listen("[::1]:9464") == ("::1", 9464)
    with pytest.raises(SystemExit, match="HOST:PORT"):
        metrics.parse_listen("9464x")


# ------------------------------------------------------------- real deployment
IDS = [f"w{i:02d}" for i in range(6)]


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeployment]:
    d = LocalDeployment(
        tmp_path_factory.mktemp("metrics"), IDS, tls=True, mpc_timeout_s=60, metrics=True
    )
    d.start()
    yield d
    d.stop()


def _scrape(dep: LocalDeployment, name: str) -> dict:
    return metrics.parse(metrics.scrape(dep.metrics_url(name), str(dep.pki / "ca.pem")))


def test_a_real_round_moves_the_counters_over_https(dep: LocalDeployment) -> None:
    n, d, f = 5, 64, 1
    before = {name: _scrape(dep, name) for name in ("server-a", "server-b")}
    rid = f"m-{uuid.uuid4().hex[:8]}"
    cfg = RoundConfig(
        round_id=rid,
        n_expected=n,
        f=f,
        rule="krum",
        dim=d,
        scale=PARAMS.scale,
        coord_bound=PARAMS.coord_bound,
        norm_bound=PARAMS.norm_bound,
        deadline_unix_ms=int((time.time() + 120) * 1000),
    )
    with AdminClient(dep.control_a, dep.tls_for("admin")) as adm:
        adm.open_round(cfg)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(n, d)) * 0.3
    for wid, row in zip(IDS[:n], X, strict=True):
        with SecAggClient(
            dep.addr_a, dep.addr_b, wid, dep.tokens[wid], tls=dep.worker_tls(), timeout_s=30
        ) as c:
            c.submit(rid, row, PARAMS)
    # refused requests: a second, different seed to A; a share with the wrong dim to B
    wid = IDS[0]
    md = transport.worker_metadata(wid, dep.tokens[wid])
    with transport.make_channel(dep.addr_a, dep.worker_tls()) as ch:
        with pytest.raises(grpc.RpcError) as err:
            pbg.WorkerStub(ch).SubmitSeed(
                pb.SeedSubmission(
                    round_id=rid, worker_id=wid, seed=b"\x01" * 32, dim=d, submission_id="x2"
                ),
                metadata=md,
                timeout=30,
            )
        assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS
    with transport.make_channel(dep.addr_b, dep.worker_tls()) as ch:
        with pytest.raises(grpc.RpcError) as err:
            pbg.WorkerStub(ch).SubmitShare(
                transport.share_chunk_messages(rid, wid, "x3", np.zeros(8, dtype=np.int64)),
                metadata=md,
                timeout=30,
            )
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with SecAggClient(
        dep.addr_a, dep.addr_b, IDS[0], dep.tokens[IDS[0]], tls=dep.worker_tls(), timeout_s=30
    ) as c:
        agg = c.wait_for_result(rid, timeout_s=120)
    Xenc = np.stack([encoding.encode(r, PARAMS) for r in X])
    ref = reference.aggregate_encoded(Xenc, "krum", f)
    np.testing.assert_array_equal(agg.vector, encoding.decode(ref.encoded_sum, PARAMS, ref.divisor))

    v = metrics.value
    for name in ("server-a", "server-b"):
        # B reports the round done when its reveal finishes, A a moment later
        deadline = time.monotonic() + 30
        while True:
            after = _scrape(dep, name)
            if v(after, "secagg_rounds_total", state="done") >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        b4 = before[name]

        def moved(sample: str, after: dict = after, b4: dict = b4, **labels: str) -> float:
            return v(after, sample, **labels) - v(b4, sample, **labels)

        assert moved("secagg_rounds_total", state="done") == 1, name
        assert moved("secagg_submissions_total", result="accepted") == n, name
        assert moved("secagg_round_phase_duration_seconds_count", phase="collecting") == 1
        assert moved("secagg_round_phase_duration_seconds_count", phase="distances") == 1
        assert moved("secagg_mpc_phase_duration_seconds_count", phase="distances") == 1
        assert moved("secagg_bytes_total", phase="distances", link="server_to_server") > 0
        assert moved("secagg_bytes_total", phase="reveal", link="server_to_server") > 0
        assert v(after, "secagg_mpc_session_builds_total", result="ok") >= 1
        assert v(after, "secagg_mpc_session_up") == 1
        assert v(after, "process_resident_memory_bytes") > 0
    a, b = _scrape(dep, "server-a"), _scrape(dep, "server-b")
    assert v(a, "secagg_rpc_requests_total", method="Worker/SubmitSeed") >= n + 1
    assert v(a, "secagg_submissions_total", result="conflicting") == 1
    assert v(a, "secagg_rpc_errors_total", method="Worker/SubmitSeed", code="ALREADY_EXISTS") == 1
    assert (
        v(b, "secagg_rpc_errors_total", method="Worker/SubmitShare", code="INVALID_ARGUMENT") == 1
    )
    assert v(b, "secagg_rpc_requests_total", method="Peer/RunPhase") >= 2
    link = {"phase": "collection", "link": "worker_to_server"}
    assert v(b, "secagg_bytes_total", **link) - v(
        before["server-b"], "secagg_bytes_total", **link
    ) == (n * d * 8)
    assert v(a, "secagg_bytes_total", **link) - v(
        before["server-a"], "secagg_bytes_total", **link
    ) == (n * 32)
    dealer = metrics.parse(metrics.scrape(dep.metrics_url("dealer"), str(dep.pki / "ca.pem")))
    assert v(dealer, "secagg_mpc_session_builds_total", result="ok") >= 1
    # no worker id, round id or value of the round in any label
    for name in ("server-a", "server-b"):
        text = metrics.scrape(dep.metrics_url(name), str(dep.pki / "ca.pem"))
        assert rid not in text and not any(f'"{w}"' in text for w in IDS)


def test_the_endpoint_is_https_with_the_servers_certificate(dep: LocalDeployment) -> None:
    import ssl
    import urllib.error

    url = dep.metrics_url("server-b")
    assert url.startswith("https://")
    with pytest.raises(urllib.error.URLError) as err:  # not trusted without the CA
        metrics.scrape(url, None)
    assert isinstance(err.value.reason, ssl.SSLCertVerificationError)
