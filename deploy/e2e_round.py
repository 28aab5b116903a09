"""A round interrupted by a party's crash, for scripts/compose-e2e.sh (inside `workers`).

Run in the compose deployment's ``workers`` container, fed on stdin::

    docker-compose ... run --rm --no-deps -T workers python - open  < deploy/e2e_round.py
    (the script kills a party's container and waits until it is back and healthy)
    docker-compose ... run --rm --no-deps -T workers python - finish < deploy/e2e_round.py

``open`` opens a round on server A (operator certificate) and submits the first half of
the workers (seed to A, share to B, both receipts checked); the round id and the inputs
go to the ``results`` volume. ``finish`` submits the other half, waits for the result
and checks it against the plaintext reference on the same encoded inputs (selection and
aggregate bit for bit), and that the first half, submitted before the crash, are among
the participants: the killed party brought them back from its durable state. Exit status
0 only if all of that holds.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from clients.admin import AdminClient
from clients.sdk import SecAggClient
from secagg import encoding, reference
from secagg.rounds import RoundConfig
from secagg.transport import TlsConfig

RESULTS = Path("/results")
OPERATOR = Path("/run/secagg/operator")
WORKERS = Path("/run/secagg/workers")
N = int(os.environ.get("SECAGG_WORKERS", "8"))
DIM = int(os.environ.get("SECAGG_DEMO_DIM", "1000"))
RULE = os.environ.get("SECAGG_DEMO_RULE", "multi-krum")
F = int(os.environ.get("SECAGG_DEMO_F", "2"))
EDGE_A = f"edge-a:{os.environ.get('SECAGG_EDGE_A_PORT', '50071')}"
EDGE_B = f"edge-b:{os.environ.get('SECAGG_EDGE_B_PORT', '50072')}"
ADMIN = f"admin-a:{os.environ.get('SECAGG_ADMIN_A_PORT', '50081')}"
PARAMS = encoding.EncodingParams(scale=1.0, coord_bound=50.0, norm_bound=150.0)
NAMES = ("server-a", "server-b")


def _say(msg: str) -> None:
    print(json.dumps({"event": "e2e", "msg": msg}), flush=True)


def _tokens() -> dict[str, str]:
    return json.loads((WORKERS / "worker-tokens.plain.json").read_text())


def _submit(rid: str, X: np.ndarray, ids: list[str]) -> None:
    tokens = _tokens()
    tls = TlsConfig(ca_cert=WORKERS / "ca.pem")
    for wid, row in zip(ids, X, strict=True):
        with SecAggClient(
            EDGE_A, EDGE_B, wid, tokens[wid], tls=tls, timeout_s=60, retries=10,
            server_names=NAMES,
        ) as c:  # fmt: skip
            c.submit(rid, row, PARAMS)


def cmd_open() -> int:
    ids = sorted(_tokens())[:N]
    rng = np.random.default_rng(11)
    X = rng.normal(size=DIM) * 0.5 + rng.normal(size=(N, DIM)) * 0.3
    X[-F:] *= -4  # F far-off rows for the rule to reject
    rid = f"e2e-{uuid.uuid4().hex[:8]}"
    cfg = RoundConfig(
        round_id=rid,
        n_expected=N,
        f=F,
        rule=RULE,
        dim=DIM,
        scale=PARAMS.scale,
        coord_bound=PARAMS.coord_bound,
        norm_bound=PARAMS.norm_bound,
        deadline_unix_ms=int((time.time() + 600) * 1000),
    )
    tls = TlsConfig(ca_cert=OPERATOR / "ca.pem", cert=OPERATOR / "admin.pem",
                    key=OPERATOR / "admin.key")  # fmt: skip
    with AdminClient(ADMIN, tls, server_name="server-a") as adm:
        adm.open_round(cfg)
    np.save(RESULTS / "e2e-inputs.npy", X)
    (RESULTS / "e2e-round.json").write_text(json.dumps({"round_id": rid, "ids": ids}))
    half = N // 2
    _submit(rid, X[:half], ids[:half])
    _say(f"round {rid}: {half} of {N} workers submitted before the crash")
    return 0


def cmd_finish() -> int:
    meta = json.loads((RESULTS / "e2e-round.json").read_text())
    rid, ids = meta["round_id"], meta["ids"]
    X = np.load(RESULTS / "e2e-inputs.npy")
    half = N // 2
    _submit(rid, X[half:], ids[half:])
    tls = TlsConfig(ca_cert=WORKERS / "ca.pem")
    with SecAggClient(
        EDGE_A, EDGE_B, ids[0], _tokens()[ids[0]], tls=tls, timeout_s=60, retries=10,
        server_names=NAMES,
    ) as c:  # fmt: skip
        agg = c.wait_for_result(rid, timeout_s=300)
        status = c.status(rid, "b")
    Xenc = np.stack([encoding.encode(r, PARAMS) for r in X])
    ref = reference.aggregate_encoded(Xenc, RULE, F)
    want = encoding.decode(ref.encoded_sum, PARAMS, ref.divisor)
    ok_sel = list(agg.selected) == [ids[i] for i in ref.selected]
    ok_vec = bool(np.array_equal(agg.vector, want))
    ok_kept = set(ids[:half]) <= set(status.participants)
    _say(
        f"round {rid}: selection matches the plaintext rule: {ok_sel}; aggregate bit for "
        f"bit: {ok_vec}; shares from before the crash among B's participants: {ok_kept}"
    )
    return 0 if ok_sel and ok_vec and ok_kept else 1


if __name__ == "__main__":
    step = sys.argv[1] if len(sys.argv) > 1 else ""
    if step not in ("open", "finish"):
        sys.exit("usage: python - open|finish < deploy/e2e_round.py")
    sys.exit(cmd_open() if step == "open" else cmd_finish())
