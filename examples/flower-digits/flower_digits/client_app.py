"""ClientApp: local SGD on this node's shard; Byzantine nodes may send a Gaussian update.

``secagg_mod`` is registered on the app; it only acts on train messages that name a
secagg round (``secagg-round-id``), so the same ClientApp serves Flower's own
strategies too: with them the reply goes to Flower unchanged (plaintext).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from secagg.flower import secagg_mod
from secagg.flower.arrays import to_record
from secagg.flower.mod import ROUND_ID_KEY

from . import task


def maybe_secagg(msg: Message, context: Context, call_next):  # noqa: ANN001, ANN201
    """secagg_mod for secagg rounds; plaintext Flower otherwise (the comparison runs)."""
    config = msg.content.config_records.get("config")
    if config is not None and ROUND_ID_KEY in config:
        return secagg_mod(msg, context, call_next)
    return call_next(msg, context)


app = ClientApp(mods=[maybe_secagg])


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = context.run_config
    arrays = {k: v.numpy() for k, v in msg.content["arrays"].items()}
    server_round = int(msg.content["config"]["server-round"])
    pid = int(context.node_config["partition-id"])
    n = int(cfg["num-nodes"])
    d = task.data(n)
    shard = d.shards[pid]
    rng = np.random.default_rng([pid, server_round])
    new, loss = task.train(
        arrays,
        d.x_train[shard],
        d.y_train[shard],
        steps=int(cfg["local-steps"]),
        lr=float(cfg["lr"]),
        batch=int(cfg["batch-size"]),
        rng=rng,
    )
    if context.node_config.get("byzantine", False) and cfg["attack"] == "gaussian":
        new = task.gaussian_attack(arrays, rng)
    content = RecordDict(
        {
            "arrays": to_record(new),
            "metrics": MetricRecord({"num-examples": int(len(shard)), "train-loss": loss}),
        }
    )
    return Message(content=content, reply_to=msg)
