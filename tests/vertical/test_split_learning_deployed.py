"""examples/vertical_heart with ``model = "split"`` on three real `consortium node` processes
over mutual TLS: PSI, then split learning; the layers equal the simulated run's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from consortium.server import load_model
from consortium.vertical.split import SplitParams, run_split_learning
from deploy.conftest import Deployment, deployment, federation  # noqa: F401 - fixtures

from .test_split_learning import RUN_CONFIG, client, grid, shared
from .test_vertical_lr import APP, RunLog

pytest.importorskip("nacl")
pytest.importorskip("torch")

#: certificate names of the test federation -> the party each node says it is
PARTIES = {"cleveland": "hospital", "hungarian": "cardiology", "switzerland": "clinical-lab"}
CONFIG = {"model": "split", "split-epochs": 2, "split-timeout": 60.0, "compare-central": False}
SEED = 3


def test_split_learning_between_three_deployed_nodes(deployment: Deployment) -> None:  # noqa: F811
    deployment.start_server()
    for name, party in PARTIES.items():
        deployment.start_node(name, app=APP, party=party)
    run_id = deployment.start_run(APP, CONFIG, seed=SEED)
    info = deployment.wait_run(run_id, timeout=120)
    assert info["status"] == "finished", (info, deployment.log("server"))
    deployed = load_model(Path(deployment.run_dir(run_id)) / "model.npz")

    # the protocol in simulation, nodes named as deployed, rows aligned directly: same layers
    config = {**RUN_CONFIG, **CONFIG}
    sim = grid(client(shared()), PARTIES, SEED, **CONFIG)
    simulated = run_split_learning(sim, RunLog(), SplitParams.from_config(config), list(PARTIES))
    assert len(deployed) == sum(len(layers) for layers in simulated.weights.values()) > 0
    for node, layers in simulated.weights.items():
        for name, value in layers.items():
            # the same bits: the confined app process runs torch's vectorised kernels, as
            # the simulation does (without the CPU's description it fell back to scalar
            # ones, which sum in another order: 1-2 ulp apart after 18 steps)
            assert np.array_equal(deployed[f"{node}.{name}"], value), f"{node}.{name}"
    assert "cleveland.top.0.weight" in deployed and "hungarian.top.0.weight" not in deployed
    rounds = info["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["metrics"]["train_bytes"] > 0 for r in rounds), rounds[0]
    assert rounds[-1]["metrics"]["eval_accuracy"] == pytest.approx(
        simulated.metrics["test_accuracy"]
    )
