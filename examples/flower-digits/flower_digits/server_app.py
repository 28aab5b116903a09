"""ServerApp: one of secagg (Multi-Krum, Bulyan, ...) or Flower's plaintext strategies.

``mode`` in the run config: ``secagg`` (:class:`secagg.flower.SecAggFedAvg` with
``secagg-rule``), ``fedavg`` or ``multikrum`` (Flower's own, in plaintext). The global
model is evaluated on the held-out digits after every round; the accuracies go to
``record-dir/history-<label>.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, MultiKrum

from secagg.flower import SecAggFedAvg
from secagg.flower.arrays import to_record

from . import task

app = ServerApp()


def make_strategy(cfg: dict, n: int) -> FedAvg:
    common = {"fraction_evaluate": 0.0, "min_train_nodes": n, "min_available_nodes": n}
    mode = str(cfg["mode"])
    if mode == "secagg":
        return SecAggFedAvg.from_run_config(cfg, **common)
    if mode == "fedavg":
        return FedAvg(**common)
    if mode == "multikrum":
        f = int(cfg["secagg-f"])
        # the same m as secagg's Multi-Krum default: n - f - 2
        return MultiKrum(num_malicious_nodes=f, num_nodes_to_select=n - f - 2, **common)
    raise ValueError(f"mode must be secagg, fedavg or multikrum, got {mode!r}")


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = dict(context.run_config)
    n = int(cfg["num-nodes"])
    d = task.data(n)
    history: dict[int, float] = {}

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        acc = task.accuracy({k: v.numpy() for k, v in arrays.items()}, d.x_test, d.y_test)
        history[server_round] = acc
        return MetricRecord({"accuracy": acc})

    strategy = make_strategy(cfg, n)
    strategy.start(
        grid=grid,
        initial_arrays=to_record(task.initial_arrays()),
        num_rounds=int(cfg["num-server-rounds"]),
        evaluate_fn=evaluate,
    )
    out = Path(str(cfg["record-dir"])) / f"history-{cfg['label']}.json"
    out.write_text(json.dumps(history))
