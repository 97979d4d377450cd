"""A result finished while the server was unreachable is delivered after reconnecting."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from consortium.apps.bundle import make_bundle
from consortium.node.runner import NodePolicy, NodeRunner
from consortium.server.fleet import Fleet
from consortium.server.runs import RunManager
from consortium.transport.auth import InsecureAuthenticator
from consortium.transport.grpc_client import FleetClient
from consortium.transport.grpc_server import ControlServicer, FleetServicer, start_server

from .conftest import SLOW_APP, wait_for


def test_result_survives_a_server_outage(tmp_path: Path) -> None:
    fleet = Fleet(heartbeat_interval=0.2, offline_after=30.0)
    runs = RunManager(fleet, tmp_path / "server")
    fleet.set_bundles(runs.run_bundle)

    def serve(address: str) -> tuple[object, int]:
        return start_server(
            address,
            fleet=FleetServicer(fleet, InsecureAuthenticator()),
            control=ControlServicer(runs, InsecureAuthenticator()),
            tls=None,
        )

    server, port = serve("127.0.0.1:0")
    client = FleetClient(f"127.0.0.1:{port}", tls=None, insecure_name="va")
    node = NodeRunner(
        client,
        node_config={},
        work_dir=tmp_path / "va",
        policy=NodePolicy(local_apps={"slow-toy": SLOW_APP}),
        poll_wait=0.5,
    )
    thread = threading.Thread(target=node.run, daemon=True)
    thread.start()
    try:
        config = '{"num-rounds": 1, "delay": 1.5, "min-replies": 1, "min-nodes": 1}'
        run_id = runs.start_run(make_bundle(SLOW_APP), config, seed=1)
        # the node has pulled its task and is training: take the server off the network
        wait_for(lambda: any(w.pulled_at is not None for w in fleet._pending.values()), 30, "pull")
        server.stop(0).wait()  # type: ignore[attr-defined]
        time.sleep(2.5)  # training ends meanwhile; the push fails; the result waits
        assert node.tasks_done == 1 and fleet._pending  # done, not delivered
        server, again = serve(f"127.0.0.1:{port}")
        assert again == port
        run = runs.wait(run_id, timeout=60)
        assert run.status == "finished", run.error
        outcome = [(n.node_id, n.outcome.value) for n in run.rounds[0].nodes]
        assert outcome == [("va", "ok")]
    finally:
        node.stop.set()
        server.stop(0)  # type: ignore[attr-defined]
        fleet.close()
        thread.join(10)
