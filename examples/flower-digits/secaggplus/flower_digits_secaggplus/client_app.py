"""Legacy ClientApp (NumPyClient) with Flower's ``secaggplus_mod``: same training and
attack as flower_digits.client_app."""

from __future__ import annotations

import numpy as np
from flower_digits import task
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Context

KEYS = ("w", "b")


class DigitsClient(NumPyClient):
    def __init__(self, context: Context) -> None:
        self.context = context

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple:
        cfg, node = self.context.run_config, self.context.node_config
        arrays = dict(zip(KEYS, parameters, strict=True))
        pid = int(node["partition-id"])
        d = task.data(int(cfg["num-nodes"]))
        shard = d.shards[pid]
        rng = np.random.default_rng([pid, int(config.get("server_round", 0))])
        new, loss = task.train(
            arrays,
            d.x_train[shard],
            d.y_train[shard],
            steps=int(cfg["local-steps"]),
            lr=float(cfg["lr"]),
            batch=int(cfg["batch-size"]),
            rng=rng,
        )
        if node.get("byzantine", False) and cfg["attack"] == "gaussian":
            new = task.gaussian_attack(arrays, rng)
        return [new[k] for k in KEYS], int(len(shard)), {"train-loss": loss}


def client_fn(context: Context):  # noqa: ANN201
    return DigitsClient(context).to_client()


app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
