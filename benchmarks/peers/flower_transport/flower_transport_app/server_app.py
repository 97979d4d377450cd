"""ServerApp: FedAvg over every node, rounds timed from the strategy's evaluate_fn.

``Strategy.start`` calls ``evaluate_fn`` before round 1 and after every round;
it evaluates nothing here and only records the time, so the differences are
the wall seconds of each round. They are written as JSON to ``out-file``.
"""

from __future__ import annotations

import itertools
import json
import time

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


def split_sizes(params: int, num_arrays: int) -> list[int]:
    num_arrays = max(1, min(num_arrays, params))
    base, extra = divmod(params, num_arrays)
    return [base + (1 if i < extra else 0) for i in range(num_arrays)]


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    params, num_arrays = int(cfg["params"]), int(cfg["num-arrays"])
    nodes, rounds = int(cfg["min-nodes"]), int(cfg["num-rounds"])
    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=nodes,
        min_available_nodes=nodes,
    )
    stamps: list[float] = []

    def stamp(server_round: int, arrays: ArrayRecord) -> None:
        stamps.append(time.time())
        return None

    initial = ArrayRecord(
        [
            np.full(size, 0.5 + i, dtype=np.float32)
            for i, size in enumerate(split_sizes(params, num_arrays))
        ]
    )
    strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds, evaluate_fn=stamp)
    out = str(cfg.get("out-file", ""))
    if out:
        seconds = [round(b - a, 4) for a, b in itertools.pairwise(stamps)]
        with open(out, "w") as fh:
            json.dump({"seconds_per_round": seconds, "stamps": stamps}, fh)
