"""ServerApp: secagg's strategy for a few rounds; records what the strategy saw."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from secagg.flower import SecAggFedAvg
from secagg.flower.arrays import to_record

from .client_app import D_IN, D_OUT

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    n = int(cfg["num-nodes"])
    record_dir = Path(str(cfg["record-dir"]))
    strategy = SecAggFedAvg.from_run_config(
        cfg, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n
    )

    def record_global(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        np.savez(
            record_dir / f"global-r{server_round}.npz",
            **{k: v.numpy() for k, v in arrays.items()},
        )
        return None

    init = {"w": np.zeros((D_IN, D_OUT), np.float32), "b": np.zeros(D_OUT, np.float32)}
    strategy.start(
        grid=grid,
        initial_arrays=to_record(init),
        num_rounds=int(cfg["num-server-rounds"]),
        evaluate_fn=record_global,
    )
    outcomes = {
        r: {**asdict(o), "aggregate": np.asarray(o.aggregate).tolist()}
        for r, o in strategy.outcomes.items()
    }
    (record_dir / "outcomes.json").write_text(json.dumps(outcomes))
