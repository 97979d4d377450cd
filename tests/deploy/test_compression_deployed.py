"""Compressed updates in a real deployment (gRPC, mutual TLS, `consortium node` processes):
the same final model, bit for bit, as the simulation with the same seed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from consortium.core.arrays import Arrays
from consortium.server import load_model
from consortium.simulation import run_simulation

from .conftest import NODES, Deployment, import_app

APP = Path(__file__).resolve().parent / "compressapp"
CONFIG: dict[str, Any] = {
    "num-rounds": 3,
    "min-replies": 4,
    "min-nodes": 4,
    "round-timeout": 60.0,
    "compression-chunk": 64,
}
SEED = 23
#: int8 both ways: stochastic rounding from each node's generator and the server's (the
#: model in the tasks too); top-k: error feedback in each node's state across rounds
RUNS: tuple[dict[str, Any], ...] = (
    {"compression": "int8", "compression-downlink": "int8"},
    {"compression": "topk"},
)


def _simulate(config: dict[str, Any]) -> Arrays:
    app = import_app(APP, "compress_app")
    result = run_simulation(
        app.server_app, app.client_app, node_ids=list(NODES), run_config=config, seed=SEED
    )
    return result.arrays


def test_compressed_runs_deployed_equal_simulation(deployment: Deployment) -> None:
    deployment.start_server(offline_after=10.0)  # two CPUs shared by many tests: no false alarms
    for name in NODES:
        deployment.start_node(name, app=APP)
    plain = _simulate({**CONFIG, "compression": "none"})
    for run in RUNS:
        config = {**CONFIG, **run}
        run_id = deployment.start_run(APP, config, SEED)
        info = deployment.wait_run(run_id)
        assert info["status"] == "finished", (info, deployment.log("server"))
        for shown in info["rounds"]:
            assert [n["outcome"] for n in shown["nodes"]] == ["ok"] * 4, shown
        model = load_model(deployment.run_dir(run_id) / "model.npz")
        simulated = _simulate(config)
        # model.npz keeps bfloat16's bits but not its name (numpy's .npy header says "<V2")
        assert model["b"].dtype == np.dtype("V2")
        model["b"] = model["b"].view(simulated["b"].dtype)
        assert model.equals(simulated), run
        # compression did change the model (the codec really ran on the nodes)
        assert not np.array_equal(simulated["w"], plain["w"])
        assert simulated["b"].dtype.name == "bfloat16" and int(simulated["steps"]) == 15
