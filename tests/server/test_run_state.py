"""Run state lives in the StateStore: a new RunManager on the same store (a restarted
server) lists and shows every run of the one before it, on SQLite and on PostgreSQL.

Runs go over a real :class:`Fleet` to in-process :class:`NodeRunner` nodes
(:class:`InMemoryConnection`, no sockets), so rounds carry real per-node timings.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from consortium.apps.bundle import make_bundle
from consortium.node.memory import InMemoryConnection
from consortium.node.runner import NodePolicy, NodeRunner
from consortium.server.checkpoint import checkpoint_digest
from consortium.server.fleet import Fleet
from consortium.server.runs import CRASHED, SHUT_DOWN, RunManager
from consortium.server.store import RunStatus, StateStore, default_url

APP_NAME = "state-toy"
NODES = ("a", "b")
ROUNDS = 3

APP_CODE = '''
"""Nodes add 1 to the model; node "b" fails its training in round 2."""
import time

import numpy as np

from consortium import Arrays, ClientApp, FedAvg, ServerApp, ServerConfig

client_app = ClientApp()


@client_app.train()
def train(msg, ctx):
    time.sleep(float(ctx.run_config["delay"]))
    if ctx.node_id == "b" and msg.metadata.round == 2:
        raise RuntimeError("disk full")
    w = msg.content.model["w"] + 1
    return msg.reply(arrays=Arrays({"w": w}), metrics={"num_examples": 10, "loss": 0.5})


@client_app.evaluate()
def evaluate(msg, ctx):
    return msg.reply(metrics={"num_examples": 5, "accuracy": 0.75})


def _server(ctx):
    strategy = FedAvg(initial_arrays=Arrays({"w": np.zeros(4)}), min_available_nodes=2)
    rounds = int(ctx.run_config["num-rounds"])
    return ServerConfig(strategy, num_rounds=rounds, node_wait=30.0, round_timeout=30.0)


server_app = ServerApp(_server)
'''

MANIFEST = f"""
[app]
name = "{APP_NAME}"
version = "1.0.0"
server = "state_toy:server_app"
client = "state_toy:client_app"

[run-config]
num-rounds = {ROUNDS}
delay = 0.0
"""


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return default_url(tmp_path / "state")
    return str(request.getfixturevalue("postgres_db_url"))


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "consortium.toml").write_text(MANIFEST)
    (folder / "state_toy.py").write_text(APP_CODE)
    return folder


@dataclass
class Server:
    """A RunManager on a store, over a Fleet that in-process nodes pull from."""

    store: StateStore
    fleet: Fleet
    runs: RunManager
    nodes: list[tuple[NodeRunner, threading.Thread]] = field(default_factory=list)

    @classmethod
    def start(cls, url: str, workdir: Path) -> Server:
        store = StateStore(url)
        fleet = Fleet(heartbeat_interval=0.2, offline_after=30.0)
        runs = RunManager(fleet, workdir, store=store)
        fleet.set_bundles(runs.run_bundle)
        return cls(store, fleet, runs)

    def add_nodes(self, app_dir: Path, work: Path) -> None:
        for name in NODES:
            node = NodeRunner(
                InMemoryConnection(self.fleet, name),
                node_config={},
                work_dir=work / name,
                policy=NodePolicy(local_apps={APP_NAME: app_dir}),
                poll_wait=0.2,
            )
            thread = threading.Thread(target=node.run, daemon=True)
            thread.start()
            self.nodes.append((node, thread))

    def close(self) -> None:
        """What a server going away leaves behind: only the database and the files."""
        for node, _ in self.nodes:
            node.stop.set()
        for _, thread in self.nodes:
            thread.join(10)
        self.fleet.close()
        self.store.close()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[[str], Server]]:
    """Starts servers on one work folder; all are closed at teardown."""
    started: list[Server] = []

    def start(url: str) -> Server:
        started.append(Server.start(url, tmp_path / "server"))
        return started[-1]

    yield start
    for server in reversed(started):
        server.close()


def _wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_new_run_manager_serves_the_history_of_the_old_one(
    url: str, app_dir: Path, tmp_path: Path, servers: Callable[[str], Server]
) -> None:
    first = servers(url)
    first.add_nodes(app_dir, tmp_path / "nodes")
    run_id = first.runs.start_run(make_bundle(app_dir), json.dumps({"delay": 0.01}), seed=3)
    record = first.runs.wait(run_id, timeout=60)
    assert record.status == "finished", record.error
    shown, listed = first.runs.show_run(run_id), first.runs.list_runs()
    first.close()  # the server is gone; its database and files stay

    second = servers(url)
    assert second.runs.show_run(run_id) == shown
    assert second.runs.list_runs() == listed
    assert second.runs.stop_run(run_id) is False  # finished, and not executed here
    assert second.runs.run_bundle("a", run_id) is None  # bundles are served while runs run
    assert second.runs.show_run("nope") is None

    # what `run show` prints, all of it from the store
    assert shown is not None
    assert shown["app"] == f"{APP_NAME} 1.0.0" and shown["status"] == "finished"
    assert shown["rounds_done"] == ROUNDS and shown["error"] == ""
    assert shown["created"] <= shown["finished"] <= time.time()
    assert shown["run_config"] == {"num-rounds": ROUNDS, "delay": 0.01}
    assert [r["round"] for r in shown["rounds"]] == list(range(1, ROUNDS + 1))
    assert listed == [{k: shown[k] for k in listed[0]}]
    checkpoint = shown["checkpoint"]
    assert checkpoint["round"] == ROUNDS
    assert checkpoint_digest(Path(checkpoint["path"])) == checkpoint["digest"]
    for r in shown["rounds"]:
        assert r["seconds"] > 0
        assert r["metrics"]["eval_accuracy"] == 0.75 and "train_loss" in r["metrics"]
        outcomes = {(n["node"], n["stage"]): n for n in r["nodes"]}
        assert set(outcomes) == {(node, stage) for node in NODES for stage in ("train", "evaluate")}
        for (node, stage), n in outcomes.items():
            if r["round"] == 2 and (node, stage) == ("b", "train"):
                assert n["outcome"] == "failed" and "RuntimeError" in n["reason"]
                continue
            assert n["outcome"] == "ok" and n["reason"] == ""
            assert set(n["timing"]) == {"train", "upload", "wait"}, n
            assert 0 <= n["timing"]["train"] <= n["seconds"] + 1e-3


def test_a_run_left_running_by_a_crash_is_interrupted_and_keeps_its_history(
    url: str, servers: Callable[[str], Server], caplog: pytest.LogCaptureFixture
) -> None:
    crashed = servers(url)
    run_id = crashed.store.create_run(app_name="toy", app_version="2.0", seed=1, num_rounds=5)
    crashed.store.set_run_status(run_id, RunStatus.RUNNING)
    crashed.store.record_checkpoint(run_id, 0, "/ckpt/round-000000.ckpt", "crc32:0000abcd")
    crashed.close()  # killed mid-run: the store still says "running"

    restarted = servers(url)
    before = restarted.runs.show_run(run_id)
    assert before is not None and before["status"] == "running"
    assert restarted.runs.stop_run(run_id) is False  # no thread here to stop
    with caplog.at_level(logging.WARNING, logger="consortium.server"):
        assert restarted.runs.recover_interrupted(resume=False) == [run_id]
    assert f"--resume {run_id}" in caplog.text  # says how to resume it
    shown: dict[str, Any] | None = restarted.runs.show_run(run_id)
    assert shown is not None
    assert (shown["status"], shown["error"]) == ("interrupted", CRASHED)
    assert shown["checkpoint"] == {
        "round": 0,
        "path": "/ckpt/round-000000.ckpt",
        "digest": "crc32:0000abcd",
    }
    assert shown["rounds"] == [] and shown["rounds_done"] == 0
    assert restarted.runs.wait(run_id).status == "interrupted"
    # resuming a run whose files this server never had fails clearly; the run stays interrupted
    assert restarted.runs.recover_interrupted(resume=True) == [run_id]
    assert restarted.runs.wait(run_id).status == "interrupted"


def test_a_shutdown_interrupts_a_run_and_a_restart_resumes_it(
    url: str, app_dir: Path, tmp_path: Path, servers: Callable[[str], Server]
) -> None:
    server = servers(url)
    server.add_nodes(app_dir, tmp_path / "nodes")
    config = json.dumps({"num-rounds": 4, "delay": 0.05})
    run_id = server.runs.start_run(make_bundle(app_dir), config, seed=3)
    _wait_for(lambda: bool(server.store.list_rounds(run_id)), 60, "round 1")
    assert server.runs.interrupt(timeout=60) == [run_id]
    record = server.runs.wait(run_id, timeout=60)
    assert (record.status, record.error) == ("interrupted", SHUT_DOWN)
    assert 1 <= len(record.rounds) < 4
    assert server.runs.stop_run(run_id) is False


def test_a_stopped_run_is_recorded_as_stopped(
    url: str, app_dir: Path, tmp_path: Path, servers: Callable[[str], Server]
) -> None:
    server = servers(url)
    server.add_nodes(app_dir, tmp_path / "nodes")
    config = json.dumps({"num-rounds": 50, "delay": 0.05})
    run_id = server.runs.start_run(make_bundle(app_dir), config, seed=3)
    _wait_for(lambda: bool(server.store.list_rounds(run_id)), 60, "round 1")
    assert server.runs.stop_run(run_id) is True
    record = server.runs.wait(run_id, timeout=60)
    assert (record.status, record.error) == ("stopped", "")
    assert 1 <= len(record.rounds) < 50
    assert server.runs.stop_run(run_id) is False
