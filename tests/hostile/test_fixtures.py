"""The suite's fixtures work: a server with honest nodes finishes a run."""

from __future__ import annotations

from .conftest import Deployment

from deploy.conftest import NODES, SLOW_APP


def test_honest_federation_finishes(deployment: Deployment) -> None:
    deployment.start_server()
    for name in NODES:
        deployment.start_node(name)
    run_id = deployment.start_run(SLOW_APP, {"num-rounds": 2}, seed=1)
    assert deployment.wait_run(run_id)["status"] == "finished"
