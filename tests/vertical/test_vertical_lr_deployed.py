"""examples/vertical_heart on three real `consortium node` processes over mutual TLS: PSI,
then vertical LR; the model equals the simulated protocol's, the rounds show in the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from consortium.server import load_model
from consortium.simulation.grid import SimulationGrid
from consortium.vertical.logistic import VerticalLRParams, run_vertical_lr
from deploy.conftest import Deployment, deployment, federation  # noqa: F401 - fixtures

from .test_vertical_lr import APP, RUN_CONFIG, RunLog, _client, _shared

pytest.importorskip("nacl")

#: certificate names of the test federation -> the party each node says it is
PARTIES = {"cleveland": "hospital", "hungarian": "cardiology", "switzerland": "clinical-lab"}
CONFIG = {"vlr-key-bits": 512, "vlr-iterations": 4, "vlr-timeout": 60.0}
SEED = 3


def test_vertical_heart_between_three_deployed_nodes(deployment: Deployment) -> None:  # noqa: F811
    deployment.start_server()
    for name, party in PARTIES.items():
        deployment.start_node(name, app=APP, party=party)
    run_id = deployment.start_run(APP, CONFIG, seed=SEED)
    info = deployment.wait_run(run_id, timeout=120)
    assert info["status"] == "finished", (info, deployment.log("server"))
    deployed = load_model(Path(deployment.run_dir(run_id)) / "model.npz")

    # the protocol in simulation on the same rows (aligned directly), nodes named as
    # deployed, the same seed: the same model, bit for bit
    config = {**RUN_CONFIG, **CONFIG}
    grid = SimulationGrid(_client(_shared()), list(PARTIES), run_config=config, seed=SEED,
                          node_config=lambda i, n: {"party": PARTIES[n]})  # fmt: skip
    simulated = run_vertical_lr(grid, RunLog(), VerticalLRParams.from_config(config), list(PARTIES))
    for name in PARTIES:
        assert np.array_equal(deployed[f"{name}.weights"], simulated.weights[name]["weights"])
    assert np.array_equal(deployed["cleveland.bias"], simulated.weights["cleveland"]["bias"])
    for name in PARTIES:  # each party's key statement was signed with its certificate
        assert f"run {run_id}: vertical keys signed with this node's certificate" in deployment.log(
            name
        )
    rounds = info["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    assert all(r["metrics"]["train_bytes"] > 0 for r in rounds), rounds[0]
    assert rounds[-1]["metrics"]["eval_accuracy"] == pytest.approx(
        simulated.metrics["test_accuracy"]
    )
