"""Legacy ServerApp: Flower's Krum strategy behind Flower's SecAgg+ workflow.

SecAgg+ reveals only the sum; the workflow then hands Krum the unmasked mean as every
client's parameters (flwr/server/workflow/secure_aggregation/secaggplus_workflow.py),
so Krum selects one of n identical vectors: the mean, Byzantine updates included.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flower_digits import task
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import Krum
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = dict(context.run_config)
    n, f = int(cfg["num-nodes"]), int(cfg["secagg-f"])
    d = task.data(n)
    history: dict[int, float] = {}

    def evaluate(server_round: int, params: list[np.ndarray], config: dict) -> tuple:
        acc = task.accuracy({"w": params[0], "b": params[1]}, d.x_test, d.y_test)
        history[server_round] = acc
        return 0.0, {"accuracy": acc}

    init = task.initial_arrays()
    strategy = Krum(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=n,
        min_available_clients=n,
        num_malicious_clients=f,
        num_clients_to_keep=0,
        initial_parameters=ndarrays_to_parameters([init["w"], init["b"]]),
        evaluate_fn=evaluate,
        on_fit_config_fn=lambda rnd: {"server_round": rnd},
    )
    legacy = LegacyContext(
        context=context,
        config=ServerConfig(num_rounds=int(cfg["num-server-rounds"])),
        strategy=strategy,
    )
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(num_shares=n, reconstruction_threshold=n // 2 + 1)
    )
    workflow(grid, legacy)
    out = Path(str(cfg["record-dir"])) / f"history-{cfg['label']}.json"
    out.write_text(json.dumps(history))
