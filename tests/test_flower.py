"""A Flower app end to end on Flower's deployment engine against a real secagg deployment.

Flower: one SuperLink and five SuperNodes (``flower-superlink``, ``flower-supernode``,
each with its SuperExec running the apps in subprocesses), the app submitted with
``flwr run`` (tests/flower_app). The deployment engine, not the simulation engine: it
needs no Ray (``flwr[simulation]``), and it runs every ClientApp in its own process as a
real federation does, so each client's mod really talks to the servers over the network.
secagg: server A, server B and the dealer as processes with TLS
(:class:`servers.launcher.LocalDeployment`).

Checked for each round: the new global model equals the global model plus the plaintext
rule (Multi-Krum, f = 1) applied to the clients' encoded updates, bit for bit; the
sign-flipping client is never selected; and every reply the strategy received carried
an empty ArrayRecord, i.e. no individual update reached the Flower server.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from secagg import encoding, reference

pytest.importorskip("flwr", reason="flwr is not installed: pip install 'secagg[flower]'")

from secagg.flower.config import encoding_params  # noqa: E402
from secagg.flower.local import LocalFlower  # noqa: E402
from servers.launcher import LocalDeployment  # noqa: E402

pytestmark = pytest.mark.skipif(
    LocalFlower.available() is not None, reason=str(LocalFlower.available())
)

APP = Path(__file__).resolve().parent / "flower_app"
N, ROUNDS, F, RULE, CLIP = 5, 3, 1, "multi-krum", 50.0
WORKERS = [f"w{i:02d}" for i in range(N)]
BYZANTINE = "w04"


def _secret_file(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path


@pytest.fixture(scope="module")
def flower_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("flower")
    dep = LocalDeployment(work / "secagg", WORKERS, tls=True)
    dep.start()
    try:
        secrets_dir = work / "secrets"
        secrets_dir.mkdir(mode=0o700)
        nodes = [
            {
                "partition-id": i,
                "secagg-worker-id": wid,
                "secagg-token-file": str(_secret_file(secrets_dir / wid, dep.tokens[wid])),
                "byzantine": wid == BYZANTINE,
            }
            for i, wid in enumerate(WORKERS)
        ]
        record = work / "record"
        record.mkdir()
        run_config = {
            "num-server-rounds": ROUNDS,
            "num-nodes": N,
            "record-dir": str(record),
            "secagg-server-a": dep.addr_a,
            "secagg-server-b": dep.addr_b,
            "secagg-admin": dep.control_a,
            "secagg-pki-dir": str(dep.pki),  # ca.pem, admin.pem, admin.key
            "secagg-rule": RULE,
            "secagg-f": F,
            "secagg-clip-norm": CLIP,
        }
        with LocalFlower(work / "flower", nodes) as fl:
            run = fl.run(APP, run_config, timeout_s=600)
            assert run.completed and (record / "outcomes.json").exists(), (
                f"the ServerApp did not finish ({run.status}):\n{run.logs[-4000:]}"
            )
        return record
    finally:
        dep.stop()


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_global_model_is_the_plaintext_rule_of_the_updates(flower_run: Path) -> None:
    outcomes = json.loads((flower_run / "outcomes.json").read_text())
    assert sorted(int(r) for r in outcomes) == list(range(1, ROUNDS + 1))
    params = encoding_params(CLIP)
    for r in range(1, ROUNDS + 1):
        before = _load(flower_run / f"global-r{r - 1}.npz")
        after = _load(flower_run / f"global-r{r}.npz")
        out = outcomes[str(r)]
        assert out["participants"] == WORKERS  # sorted ids: the servers' row order
        # each client's update as its mod computed it: trained minus received, clipped
        updates = []
        for wid in WORKERS:
            trained = _load(flower_run / f"client-{wid}-r{r}.npz")
            u = np.concatenate(
                [
                    (trained[k].astype(np.float64) - before[k].astype(np.float64)).ravel()
                    for k in ("w", "b")
                ]
            )
            updates.append(encoding.clip_to_bounds(u, params))
        enc = np.stack([encoding.encode(u, params) for u in updates])
        ref = reference.aggregate_encoded(enc, RULE, F)
        assert out["selected"] == [WORKERS[i] for i in ref.selected]
        assert BYZANTINE not in out["selected"]
        want = encoding.decode(ref.encoded_sum, params, ref.divisor)
        np.testing.assert_array_equal(np.asarray(out["aggregate"]), want)
        # the new global model: the old one plus the aggregate, in each array's dtype
        offset = 0
        for k in ("w", "b"):
            size = before[k].size
            piece = want[offset : offset + size].reshape(before[k].shape)
            offset += size
            expect = (before[k].astype(np.float64) + piece).astype(before[k].dtype)
            np.testing.assert_array_equal(after[k], expect)
        # and the plain (unclipped) mean of the honest updates is not what came out
        honest = np.mean([u for w, u in zip(WORKERS, updates, strict=True) if w != BYZANTINE], 0)
        assert not np.allclose(want, np.mean(updates, axis=0))
        assert np.linalg.norm(want - honest) < np.linalg.norm(np.mean(updates, 0) - honest)


def test_no_update_reached_the_flower_server(flower_run: Path) -> None:
    outcomes = json.loads((flower_run / "outcomes.json").read_text())
    for r in range(1, ROUNDS + 1):
        replies = outcomes[str(r)]["replies"]
        assert len(replies) == N
        for view in replies:
            assert not view["has_error"]
            assert view["arrays"] == 0 and view["array_bytes"] == 0, view
            assert view["metric_keys"] == ["num-examples", "train-loss"]
