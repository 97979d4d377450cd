"""A node's work survives a server outage: results are delivered after reconnecting,
and a task pulled just before the outage runs once the server is back."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from consortium.apps.bundle import make_bundle
from consortium.node.runner import NodePolicy, NodeRunner
from consortium.server.fleet import Fleet
from consortium.server.runs import RunManager
from consortium.server.store import StateStore, default_url
from consortium.transport.auth import InsecureAuthenticator
from consortium.transport.fleet_api import RunBundle
from consortium.transport.grpc_client import FleetClient
from consortium.transport.grpc_control import ControlServicer
from consortium.transport.grpc_listen import start_server
from consortium.transport.grpc_server import FleetServicer

from .conftest import SLOW_APP, wait_for

CONFIG = '{"num-rounds": 1, "delay": 1.5, "min-replies": 1, "min-nodes": 1}'


@dataclass
class Outage:
    fleet: Fleet
    runs: RunManager
    port: int
    server: Any = None

    def serve(self) -> None:
        self.server, port = start_server(
            f"127.0.0.1:{self.port}",
            fleet=FleetServicer(self.fleet, InsecureAuthenticator()),
            control=ControlServicer(self.runs, InsecureAuthenticator()),
            tls=None,
        )
        assert port == self.port or self.port == 0
        self.port = port

    def stop(self) -> None:
        self.server.stop(0).wait()


class _OutageOnFetch(FleetClient):
    """A real client whose first app fetch happens while the server is down."""

    on_fetch: Callable[[], None] = staticmethod(lambda: None)

    def get_run(self, run_id: str) -> RunBundle:
        hook, self.on_fetch = self.on_fetch, staticmethod(lambda: None)
        hook()
        return super().get_run(run_id)


@pytest.fixture
def outage(tmp_path: Path) -> Iterator[Outage]:
    fleet = Fleet(heartbeat_interval=0.2, offline_after=30.0)
    runs = RunManager(fleet, tmp_path / "server", store=StateStore(default_url(tmp_path)))
    fleet.set_bundles(runs.run_bundle)
    env = Outage(fleet, runs, 0)
    env.serve()
    yield env
    env.server.stop(0)
    fleet.close()


def _start_node(client: FleetClient, work_dir: Path) -> tuple[NodeRunner, threading.Thread]:
    node = NodeRunner(
        client,
        node_config={},
        work_dir=work_dir,
        policy=NodePolicy(local_apps={"slow-toy": SLOW_APP}),
        poll_wait=0.5,
    )
    thread = threading.Thread(target=node.run, daemon=True)
    thread.start()
    return node, thread


def _outcome(outage: Outage, run_id: str) -> list[tuple[str, str]]:
    run = outage.runs.wait(run_id, timeout=60)
    assert run.status == "finished", run.error
    return [(n.node_id, n.outcome.value) for n in run.rounds[0].nodes]


def test_result_survives_a_server_outage(outage: Outage, tmp_path: Path) -> None:
    client = FleetClient(f"127.0.0.1:{outage.port}", tls=None, insecure_name="va")
    node, thread = _start_node(client, tmp_path / "va")
    try:
        run_id = outage.runs.start_run(make_bundle(SLOW_APP), CONFIG, seed=1)
        # the node has pulled its task and loaded the app: take the server off the network
        wait_for(lambda: run_id in node._runs, 30, "the node to load the app")
        outage.stop()
        wait_for(lambda: node.tasks_done == 1, 30, "training to end")
        wait_for(lambda: len(node._outbox) == 1, 30, "the failed push")  # done, not delivered
        assert outage.fleet._pending
        outage.serve()
        assert _outcome(outage, run_id) == [("va", "ok")]
    finally:
        node.stop.set()
        thread.join(10)


def test_task_pulled_before_an_outage_runs_after_reconnecting(
    outage: Outage, tmp_path: Path
) -> None:
    client = _OutageOnFetch(f"127.0.0.1:{outage.port}", tls=None, insecure_name="va")
    client.on_fetch = outage.stop  # the task is pulled; fetching its app finds no server
    node, thread = _start_node(client, tmp_path / "va")
    try:
        run_id = outage.runs.start_run(make_bundle(SLOW_APP), CONFIG, seed=1)
        wait_for(lambda: node._held is not None and outage.server is not None, 30, "the pull")
        wait_for(lambda: client.on_fetch is not outage.stop, 30, "the outage")
        assert node.tasks_done == 0  # held, not failed
        outage.serve()
        assert _outcome(outage, run_id) == [("va", "ok")]
        assert node.tasks_done == 1
    finally:
        node.stop.set()
        thread.join(10)
