"""A caller the server refuses cannot flood its log, its events or its memory.

A certificate issued by the federation's CA, for a name that is not on the
server's allow-list, makes a few hundred calls over fresh TLS connections
while the honest nodes run. Each call is refused at once (UNAUTHENTICATED,
naming the allow-list); the server logs the refusal once for that caller and
reason (then at most once a minute, with a count of the ones it did not log),
records it as one ``refused`` event, stays under the hostile suite's memory
bound, and the honest nodes' run finishes with the model simulation gives.
"""

from __future__ import annotations

import threading
import uuid

from consortium.core.errors import NodeRefused
from consortium.server import load_model
from consortium.transport.ca import CertificateAuthority
from consortium.transport.grpc_client import FleetClient
from deploy.conftest import NODES, SLOW_APP, import_app

from .conftest import Deployment
from .test_hostile_replies import RSS_BOUND, PeakRss

CALLS = 300
THREADS = 4
CONFIG = {"num-rounds": 3, "delay": 0.0, "min-replies": 4, "min-nodes": 4, "round-timeout": 60.0}


def _simulated() -> object:
    slow_toy = import_app(SLOW_APP, "slow_toy")
    from consortium.simulation import run_simulation

    return run_simulation(
        slow_toy.server_app, slow_toy.client_app, node_ids=list(NODES), run_config=CONFIG, seed=4
    ).arrays


def test_a_flood_of_refused_calls_is_logged_once_and_the_run_completes(
    deployment: Deployment,
) -> None:
    mallory = f"mallory-{uuid.uuid4().hex[:8]}"  # the CA is shared: a name of this test's own
    CertificateAuthority.load(deployment.fed.ca_dir).issue(
        "node", mallory, deployment.fed.creds(mallory)
    )
    deployment.start_server()  # mallory is not on its allow-list
    rss = PeakRss(deployment.procs["server"].pid)
    for name in NODES:
        deployment.start_node(name)
    run_id = deployment.start_run(SLOW_APP, CONFIG, seed=4)

    tls = deployment.fed.tls(mallory)
    address = f"127.0.0.1:{deployment.port}"
    refusals: list[str] = []
    lock = threading.Lock()

    def flood() -> None:
        for _ in range(CALLS // THREADS):
            client = FleetClient(address, tls=tls, timeout=30)  # a fresh TLS connection
            try:
                client.heartbeat()
                outcome = "answered"
            except NodeRefused as exc:
                outcome = str(exc)
            finally:
                client.close()
            with lock:
                refusals.append(outcome)

    threads = [threading.Thread(target=flood) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    info = deployment.wait_run(run_id, timeout=180)

    assert len(refusals) == CALLS
    assert all("not on this server's allow-list" in r for r in refusals), refusals[:3]
    assert info["status"] == "finished", (info, deployment.log("server")[-3000:])
    model = load_model(deployment.run_dir(run_id) / "model.npz")
    assert model.equals(_simulated())  # type: ignore[arg-type]
    assert rss.close() < RSS_BOUND
    log = deployment.log("server")
    lines = [line for line in log.splitlines() if mallory in line]
    assert 1 <= len(lines) <= 2, lines[:5]  # once, not once per call
