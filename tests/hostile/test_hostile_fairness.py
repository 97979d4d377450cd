"""One node cannot take the server's threads: forty long-polls from one certificate.

Each node-facing call holds a server worker thread while it runs, a long-poll
for as long as it waits. A node with a valid certificate used to open forty
of them and take all 32 threads: every other node looked offline and an
admin call took 28 s. Now each node may have at most ``CALLS_PER_NODE`` calls
in progress; the rest are refused at once with RESOURCE_EXHAUSTED, the admin
API answers promptly, and the honest nodes' run completes with the right model.
"""

from __future__ import annotations

import threading
import time

import grpc
import psutil

from consortium.core.errors import TransportError
from consortium.server import load_model
from consortium.transport.fairness import CALLS_PER_NODE
from consortium.transport.grpc_client import FleetClient
from deploy.conftest import NODES, SLOW_APP, import_app

from .conftest import Deployment

HOSTILE = "va"
HONEST = [n for n in NODES if n != HOSTILE]
POLLS = 40


def _simulated(rounds: int) -> object:
    slow_toy = import_app(SLOW_APP, "slow_toy")
    from consortium.simulation import run_simulation

    config = {"num-rounds": rounds, "delay": 0.0, "min-replies": 3, "min-nodes": 3,
              "round-timeout": 60.0}  # fmt: skip
    return run_simulation(
        slow_toy.server_app, slow_toy.client_app, node_ids=HONEST, run_config=config, seed=6
    ).arrays


def test_forty_long_polls_from_one_node_cannot_starve_the_others(deployment: Deployment) -> None:
    deployment.start_server()
    tls = deployment.fed.tls(HOSTILE)
    address = f"127.0.0.1:{deployment.port}"
    outcomes: list[str] = []
    lock = threading.Lock()

    def poll() -> None:
        client = FleetClient(address, tls=tls, timeout=30)
        try:
            client.pull_task(12.0)
            outcome = "waited"
        except TransportError as exc:
            cause = exc.__cause__
            refused = isinstance(cause, grpc.Call) and cause.code() == (
                grpc.StatusCode.RESOURCE_EXHAUSTED
            )
            outcome = "refused" if refused else f"other: {exc}"
        finally:
            client.close()
        with lock:
            outcomes.append(outcome)

    pollers = [threading.Thread(target=poll, daemon=True) for _ in range(POLLS)]
    for thread in pollers:
        thread.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the refusals come at once, not after 30 s
        with lock:
            if outcomes.count("refused") >= POLLS - CALLS_PER_NODE:
                break
        time.sleep(0.05)
    with lock:
        assert outcomes.count("refused") == POLLS - CALLS_PER_NODE, outcomes

    # while the hostile node's long-polls wait, the coordinator is answered promptly...
    admin = deployment.fed.admin(deployment.port)
    try:
        latencies = []
        for _ in range(20):
            started = time.perf_counter()
            admin.list_runs()
            latencies.append(time.perf_counter() - started)
    finally:
        admin.close()
    assert max(latencies) < 2.0, latencies  # it was 28 s
    # ...and the honest nodes connect, train and finish
    for name in HONEST:
        deployment.start_node(name)
    config = {"num-rounds": 3, "delay": 0.0, "min-replies": 3, "min-nodes": 3}
    run_id = deployment.start_run(SLOW_APP, config, seed=6)
    info = deployment.wait_run(run_id, timeout=120)
    assert info["status"] == "finished", (info, deployment.log("server"))
    model = load_model(deployment.run_dir(run_id) / "model.npz")
    assert model.equals(_simulated(3))  # type: ignore[arg-type]
    assert psutil.Process(deployment.procs["server"].pid).memory_info().rss < 400 * 1024**2
    assert "over 3 calls in progress" in deployment.log("server")
    for thread in pollers:
        thread.join(30)
