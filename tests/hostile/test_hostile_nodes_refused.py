"""A node refused for good stops; the honest nodes' run goes on.

A node whose certificate is revoked while a run is under way is refused at its
next call (the server rereads the CA's revocation list), its task fails at
once instead of at the round's timeout, the node process exits 11 within
seconds saying why, without retrying, and the round completes with the
honest nodes.
"""

from __future__ import annotations

import subprocess
import time
import uuid

from consortium.transport.ca import CertificateAuthority
from deploy.conftest import EXE, NODES, SLOW_APP

from .conftest import Deployment, wait_for
from .test_hostile_replies import RSS_BOUND, PeakRss


def test_a_revoked_node_stops_with_exit_11_and_the_run_completes(
    deployment: Deployment,
) -> None:
    mallory = f"mallory-{uuid.uuid4().hex[:8]}"  # the CA is shared: a name of this test's own
    ca = CertificateAuthority.load(deployment.fed.ca_dir)
    ca.issue("node", mallory, deployment.fed.creds(mallory))
    deployment.start_server("--allow", mallory)
    rss = PeakRss(deployment.procs["server"].pid)
    for name in (*NODES, mallory):
        deployment.start_node(name)
    wait_for(lambda: "connected to" in deployment.log(mallory), 60, "mallory to connect")
    # each task takes 3 s: the revocation (a CLI process, ~1-2 s) lands while mallory
    # trains round 2, so round 2 cannot count its reply whatever the machine's speed
    config = {"num-rounds": 3, "delay": 3.0, "min-nodes": 4, "min-replies": 4}
    run_id = deployment.start_run(SLOW_APP, config, seed=3)
    wait_for(lambda: "round 1: train done" in deployment.log(mallory), 60, "mallory's first task")
    revoked = subprocess.run(
        [EXE, "ca", "revoke", mallory, "--dir", str(deployment.fed.ca_dir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert revoked.returncode == 0, revoked.stderr
    refused_at = time.monotonic()

    node = deployment.procs[mallory]
    assert node.wait(timeout=20) == 11, deployment.log(mallory)
    assert time.monotonic() - refused_at < 20
    log = deployment.log(mallory)
    last = log.strip().splitlines()[-1]
    assert last.startswith("error: the server refused this node"), log
    assert "revoked" in last
    assert "retrying in" not in log and "attempts in a row" not in log  # never retried

    info = deployment.wait_run(run_id)
    assert rss.close() < RSS_BOUND
    assert info["status"] == "finished", info
    assert info["rounds_done"] == 3
    for r in info["rounds"][1:]:  # after the revocation: only the honest nodes take part
        assert {n["node"] for n in r["nodes"] if n["outcome"] == "ok"} == set(NODES)
    assert "revoked" in deployment.log("server")
