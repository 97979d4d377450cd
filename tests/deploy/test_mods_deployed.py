"""A ClientApp with two mods, run by real `consortium node` processes: same model as simulation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from consortium.core.arrays import Arrays
from consortium.core.history import History
from consortium.server import load_model
from consortium.simulation import run_simulation

from .conftest import NODES, Deployment, import_app

MOD_APP = Path(__file__).resolve().parent / "modapp"
CONFIG: dict[str, Any] = {
    "num-rounds": 3,
    "min-replies": 4,
    "min-nodes": 4,
    "round-timeout": 60.0,
}
SEED = 17


def _simulate() -> tuple[Arrays, History]:
    mod_app = import_app(MOD_APP, "mod_app")
    result = run_simulation(
        mod_app.server_app, mod_app.client_app, node_ids=list(NODES), run_config=CONFIG, seed=SEED
    )
    return result.arrays, result.history


def test_mod_chain_deployed_equals_simulation(deployment: Deployment) -> None:
    deployment.start_server()
    for name in NODES:
        deployment.start_node(name, app=MOD_APP)
    run_id = deployment.start_run(MOD_APP, CONFIG, SEED)
    info = deployment.wait_run(run_id)
    assert info["status"] == "finished", (info, deployment.log("server"))
    model = load_model(deployment.workdir / "server" / "runs" / run_id / "model.npz")
    arrays, history = _simulate()
    assert model.equals(arrays)

    # the mods ran on the nodes: the norm they reported is the clipped one, as simulated
    for shown, simulated in zip(info["rounds"], history.rounds, strict=True):
        assert shown["metrics"]["train_update_norm"] == simulated.train_metrics["update_norm"]
        assert shown["metrics"]["train_update_norm"] <= 1.0 + 1e-12
        for node in shown["nodes"]:
            assert node["outcome"] == "ok", node
            # the node still reports its timing after running the task through the mods
            assert set(node["timing"]) == {"train", "upload", "wait"}, node
