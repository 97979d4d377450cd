"""FleetGrid.waiting(): while a run waits for nodes (or for their replies), who is missing,
who is online and for how long; None once it is not waiting."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from consortium.apps.bundle import bundle_digest, make_bundle
from consortium.core.arrays import Arrays
from consortium.core.fleet_info import RunBundle
from consortium.core.message import TRAIN, Content, Message
from consortium.node.memory import InMemoryConnection
from consortium.node.runner import NodePolicy, NodeRunner
from consortium.server.fleet import Fleet
from consortium.server.fleet_grid import NODES, REPLIES, FleetGrid, Waiting

APP_DIR = Path(__file__).parent / "gridapp"
RUN_ID = "waiting1"


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    bundle = make_bundle(APP_DIR)
    run = RunBundle(
        run_id=RUN_ID, app_name="grid-toy", app_version="1.0.0", client_entry="grid_toy:client_app",
        bundle=bundle, bundle_sha256=bundle_digest(bundle), run_config_json="{}", seed=0,
    )  # fmt: skip
    fleet = Fleet(heartbeat_interval=0.2, offline_after=5.0, expected=["a", "b", "c"])
    fleet.set_bundles(lambda node, run_id: run if run_id == RUN_ID else None)
    yield fleet
    fleet.close()


class Nodes:
    """In-process node runners over in-memory connections to the fleet."""

    def __init__(self, fleet: Fleet, work: Path) -> None:
        self.fleet, self.work = fleet, work
        self.runners: list[NodeRunner] = []
        self.threads: list[threading.Thread] = []

    def start(self, name: str) -> None:
        runner = NodeRunner(
            InMemoryConnection(self.fleet, name),
            node_config={},
            work_dir=self.work / name,
            policy=NodePolicy(local_apps={"grid-toy": APP_DIR}),
            poll_wait=0.2,
        )
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        self.runners.append(runner)
        self.threads.append(thread)

    def stop(self) -> None:
        for runner in self.runners:
            runner.stop.set()
        for thread in self.threads:
            thread.join(10)


def _until(grid: FleetGrid, ok: object, timeout: float = 10.0) -> Waiting | None:
    deadline = threading.Event()
    timer = threading.Timer(timeout, deadline.set)
    timer.start()
    try:
        while not deadline.wait(0.02):
            state = grid.waiting()
            if ok(state):  # type: ignore[operator]
                return state
        raise AssertionError(f"waiting() never became what was expected: {grid.waiting()}")
    finally:
        timer.cancel()


def test_waiting_for_nodes_names_the_missing_ones_until_enough_are_online(
    fleet: Fleet, tmp_path: Path
) -> None:
    nodes = Nodes(fleet, tmp_path)
    grid = FleetGrid(fleet)
    try:
        nodes.start("a")
        nodes.start("b")
        assert grid.waiting() is None  # not waiting for anything yet
        got: list[list[str]] = []
        waiter = threading.Thread(target=lambda: got.append(grid.wait_for_nodes(3, 30)))
        waiter.start()
        state = _until(grid, lambda w: w is not None and w.online == ("a", "b"))
        assert state is not None
        assert state.stage == NODES and state.needed == 3
        assert state.missing == ("c",)  # allow-listed, never connected
        later = _until(grid, lambda w: w is not None and w.seconds >= 0.3)
        assert later is not None and later.missing == ("c",)
        assert later.as_dict() == {
            "stage": "nodes",
            "needed": 3,
            "missing": ["c"],
            "online": ["a", "b"],
            "seconds": round(later.seconds, 1),
        }
        nodes.start("c")
        waiter.join(30)
        assert got == [["a", "b", "c"]]
        assert grid.waiting() is None  # the wait is over
    finally:
        grid.close()
        nodes.stop()


def test_a_node_that_went_offline_is_missing_again() -> None:
    clock = Clock()
    fleet = Fleet(offline_after=3600.0, clock=clock, expected=["a", "b"])
    grid = FleetGrid(fleet)
    try:
        fleet.hello("a", "i1")
        fleet.hello("b", "i2")
        fleet.refused("b", "127.0.0.1:1", "certificate revoked")  # b goes offline
        waiter = threading.Thread(target=grid.wait_for_nodes, args=(2, 3600.0), daemon=True)
        waiter.start()
        state = _until(grid, lambda w: w is not None)
        assert state == Waiting(NODES, 2, ("b",), ("a",), 0.0)
        clock.now += 42.0
        state = grid.waiting()
        assert state is not None and state.seconds == 42.0
        fleet.hello("b", "i3")  # back: the wait ends
        waiter.join(10)
        assert not waiter.is_alive()
        assert grid.waiting() is None
    finally:
        grid.close()
        fleet.close()


def _task(node: str) -> Message:
    content = Content.of(Arrays({"w": np.zeros(4)}), {})
    return Message.create(run_id=RUN_ID, dst=node, round=1, kind=TRAIN, content=content)


def test_waiting_for_replies_names_the_nodes_that_have_not_answered() -> None:
    clock = Clock()
    fleet = Fleet(offline_after=3600.0, clock=clock)
    grid = FleetGrid(fleet)
    try:
        for node in ("a", "b", "c"):
            fleet.hello(node, "i")
        tasks = [_task(n) for n in ("a", "b", "c")]
        replies = grid.send_and_receive(tasks, timeout=3600)
        clock.now += 5.0
        assert grid.waiting() == Waiting(REPLIES, 3, ("a", "b", "c"), ("a", "b", "c"), 5.0)
        for node in ("a", "c"):
            pulled = fleet.next_task(node, 0)
            assert pulled is not None
            accepted, _ = fleet.deliver(node, tasks[0 if node == "a" else 2].reply(metrics={}))
            assert accepted
        state = grid.waiting()
        assert state is not None and state.missing == ("b",) and state.stage == REPLIES
        next(replies)  # the round loop consumes a's reply; b still missing
        assert grid.waiting() is not None
        replies.close()  # the round is over: nothing is awaited
        assert grid.waiting() is None
    finally:
        grid.close()
        fleet.close()


def test_the_wait_log_names_allow_listed_nodes_that_never_connected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    expected = ["a", "b", *(f"n{i:02d}" for i in range(12))]
    fleet = Fleet(offline_after=3600.0, wait_log_every=0.05, expected=expected)
    try:
        fleet.hello("a", "i")
        with caplog.at_level(logging.INFO, logger="consortium.server"):
            assert fleet.wait_for_nodes(3, 0.3) == ["a"]
        lines = [r.getMessage() for r in caplog.records if "waiting for 3 node(s)" in r.message]
        assert lines, caplog.text
        assert "never connected: b, n00, n01" in lines[-1] and "and 3 more" in lines[-1]
    finally:
        fleet.close()
