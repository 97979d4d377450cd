"""A node whose result the server refuses for good tells the server its task failed, so the
round goes on at once with the others instead of waiting for its deadline."""

from __future__ import annotations

import time
from pathlib import Path

from deploy.conftest import NODES

from .conftest import Deployment
from .test_hostile_replies import RSS_BOUND, PeakRss

NAN_APP = Path(__file__).parent / "nanapp"


def test_a_refused_result_fails_its_task_at_once_and_the_round_goes_on(
    deployment: Deployment,
) -> None:
    deployment.start_server()
    rss = PeakRss(deployment.procs["server"].pid)
    for name in NODES:
        deployment.start_node(name, app=NAN_APP)
    started = time.monotonic()
    run_id = deployment.start_run(NAN_APP, {"num-rounds": 2}, seed=1)
    info = deployment.wait_run(run_id, timeout=100)
    assert rss.close() < RSS_BOUND
    assert info["status"] == "finished", (info, deployment.log("server"))
    assert time.monotonic() - started < 60  # the round timeout is 120 s: nobody waited for it
    for r in info["rounds"]:
        outcome = {n["node"]: n for n in r["nodes"]}
        assert all(outcome[n]["outcome"] == "ok" for n in NODES if n != "va")
        assert outcome["va"]["outcome"] == "failed"
        # refused by the server, or already by the node that isolates its app's process
        assert "refuse" in outcome["va"]["reason"] and "(nan)" in outcome["va"]["reason"]
    assert "refuse" in deployment.log("va")
