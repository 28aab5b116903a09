"""ClientApp: one least-squares gradient step on this node's synthetic data.

A node started with ``byzantine=true`` in its node config sends ``global - 5 * update``
(a scaled sign flip). Before the mod takes the reply, the trained arrays are saved to
``record-dir`` so that the test can recompute the rule in plaintext.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from secagg.flower import secagg_mod
from secagg.flower.arrays import to_record

app = ClientApp(mods=[secagg_mod])

D_IN, D_OUT, BATCH, LR = 6, 2, 32, 0.1


def local_data(partition: int, server_round: int) -> tuple[np.ndarray, np.ndarray]:
    """This node's batch for the round (a fixed linear map plus node-specific noise)."""
    truth = np.arange(D_IN * D_OUT, dtype=np.float64).reshape(D_IN, D_OUT) / 10.0
    rng = np.random.default_rng([partition, server_round])
    x = rng.normal(size=(BATCH, D_IN))
    y = x @ truth + 0.1 * rng.normal(size=(BATCH, D_OUT))
    return x, y


@app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = {k: v.numpy() for k, v in msg.content["arrays"].items()}
    w, b = arrays["w"].astype(np.float64), arrays["b"].astype(np.float64)
    server_round = int(msg.content["config"]["server-round"])
    partition = int(context.node_config["partition-id"])
    x, y = local_data(partition, server_round)
    err = x @ w + b - y
    loss = float(np.mean(err**2))
    new_w = w - LR * 2 * x.T @ err / BATCH
    new_b = b - LR * 2 * err.mean(axis=0)
    if context.node_config.get("byzantine", False):
        new_w, new_b = w - 5 * (new_w - w), b - 5 * (new_b - b)
    new = {"w": new_w.astype(np.float32), "b": new_b.astype(np.float32)}
    record_dir = str(context.run_config["record-dir"])
    if record_dir:
        worker = str(context.node_config["secagg-worker-id"])
        np.savez(Path(record_dir) / f"client-{worker}-r{server_round}.npz", **new)
    content = RecordDict(
        {
            "arrays": to_record(new),
            "metrics": MetricRecord({"num-examples": BATCH, "train-loss": loss}),
        }
    )
    return Message(content=content, reply_to=msg)
