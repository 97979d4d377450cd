"""One contract for every Grid: simulation (threads, pool, processes, simulated time, Ray)
and the deployment's FleetGrid with real node runners (in-memory connections)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from consortium.apps.bundle import bundle_digest, make_bundle
from consortium.apps.loader import load_app
from consortium.core.arrays import Arrays
from consortium.core.fleet_info import RunBundle
from consortium.core.grid import Grid
from consortium.core.message import TRAIN, Content, Message
from consortium.node.memory import InMemoryConnection
from consortium.node.runner import NodePolicy, NodeRunner
from consortium.server.fleet import Fleet
from consortium.server.fleet_grid import FleetGrid
from consortium.simulation import AsyncSimulationGrid, SimulationGrid
from consortium.simulation.ray_backend import RayGrid, connect_ray

APP_DIR = Path(__file__).parent / "gridapp"
APP_REF = "grid_toy:client_app"
NODES = ["a", "b", "c"]
RUN_ID = "gridcontract1"


def _fleet_grid(tmp_path: Path) -> Iterator[Grid]:
    bundle = make_bundle(APP_DIR)
    run = RunBundle(
        run_id=RUN_ID, app_name="grid-toy", app_version="1.0.0", client_entry=APP_REF,
        bundle=bundle, bundle_sha256=bundle_digest(bundle), run_config_json="{}", seed=0,
    )  # fmt: skip
    fleet = Fleet(heartbeat_interval=0.2, offline_after=5.0)
    fleet.set_bundles(lambda node, run_id: run if run_id == RUN_ID else None)
    runners = [
        NodeRunner(
            InMemoryConnection(fleet, name),
            node_config={},
            work_dir=tmp_path / name,
            policy=NodePolicy(local_apps={"grid-toy": APP_DIR}),
            poll_wait=0.2,
        )
        for name in NODES
    ]
    threads = [threading.Thread(target=r.run, daemon=True) for r in runners]
    for t in threads:
        t.start()
    grid = FleetGrid(fleet)
    try:
        assert len(grid.wait_for_nodes(3, 30)) == 3
        yield grid
    finally:
        grid.close()
        for r in runners:
            r.stop.set()
        for t in threads:
            t.join(10)
        fleet.close()


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray (loopback, no dashboard) for this module's Ray grids, started on demand."""
    ray = pytest.importorskip("ray")
    started = connect_ray(num_cpus=2)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(params=["threads", "pool", "processes", "simulated-time", "fleet", "ray"])
def grid(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Grid]:
    kind = request.param
    if kind == "fleet":
        yield from _fleet_grid(tmp_path)
        return
    if kind == "ray":
        request.getfixturevalue("local_ray")
        ray_grid = RayGrid(APP_REF, NODES, app_path=[str(APP_DIR)])
        try:
            yield ray_grid
        finally:
            ray_grid.close()
        return
    app = load_app(APP_REF, [str(APP_DIR)])
    sim: SimulationGrid | AsyncSimulationGrid
    if kind == "simulated-time":
        sim = AsyncSimulationGrid(app, NODES, durations={"a": 3.0, "b": 1.0, "c": 2.0})
    elif kind == "processes":
        sim = SimulationGrid(
            APP_REF, NODES, backend="processes", workers=2, app_path=[str(APP_DIR)]
        )
    else:
        sim = SimulationGrid(app, NODES, workers=3 if kind == "pool" else 1)
    try:
        yield sim
    finally:
        sim.close()


def _tasks(nodes: list[str], value: float = 0.0, **config: str | float) -> list[Message]:
    content = Content.of(Arrays({"w": np.full(4, value)}), dict(config))
    return [
        Message.create(run_id=RUN_ID, dst=n, round=1, kind=TRAIN, content=content) for n in nodes
    ]


class TestGrid:
    def test_lists_and_waits_for_its_nodes(self, grid: Grid) -> None:
        assert sorted(grid.node_ids()) == NODES
        assert sorted(grid.wait_for_nodes(3, 5.0)) == NODES

    def test_send_and_receive_answers_in_a_deterministic_order(self, grid: Grid) -> None:
        """Task order (c, a, b) although c is the slowest; on a simulated clock the
        order the tasks finish in simulated time (b: 1 s, c: 2 s, a: 3 s)."""
        tasks = _tasks(["c", "a", "b"], 1.5, **{"delay-c": 0.3})
        replies = list(grid.send_and_receive(tasks, timeout=30))
        expected = ["b", "c", "a"] if isinstance(grid, AsyncSimulationGrid) else ["c", "a", "b"]
        assert [r.metadata.src for r in replies] == expected
        sent = {t.metadata.dst: t.metadata.message_id for t in tasks}
        assert all(r.metadata.reply_to == sent[r.metadata.src] for r in replies)
        for reply in replies:
            assert reply.error is None and reply.content is not None
            assert reply.content.model is not None
            np.testing.assert_array_equal(reply.content.model["w"], np.full(4, 2.5))

    def test_a_failing_node_answers_with_an_error_and_the_others_still_answer(
        self, grid: Grid
    ) -> None:
        replies = list(grid.send_and_receive(_tasks(NODES, fail="b"), timeout=30))
        by_node = {r.metadata.src: r for r in replies}
        assert set(by_node) == set(NODES)
        error = by_node["b"].error
        # the exception's type always; its text only where the node sends it (simulation
        # does; a deployed node by default keeps it in its own log)
        assert error is not None and error.code == "RuntimeError"
        assert by_node["a"].error is None and by_node["c"].error is None

    def test_push_then_pull_returns_each_reply_once(self, grid: Grid) -> None:
        tasks = _tasks(NODES, 0.0, **{"delay-a": 0.2})
        grid.push(tasks)
        got = []
        while len(got) < len(tasks):
            reply = grid.pull(30.0)
            assert reply is not None, f"only {len(got)} replies"
            got.append(reply)
        assert sorted(r.metadata.reply_to or "" for r in got) == sorted(
            t.metadata.message_id for t in tasks
        )
        assert all(r.error is None for r in got)
        assert grid.pull(None) is None  # nothing in flight: at once

    def test_pull_gives_up_after_its_timeout(self, grid: Grid) -> None:
        tasks = _tasks(["a"], **{"delay-a": 0.5})
        grid.push(tasks)
        start = grid.now()
        first = grid.pull(0.05)
        if first is None:  # a real clock: the task is still running
            assert grid.now() >= start
            first = grid.pull(30.0)
        assert first is not None and first.metadata.reply_to == tasks[0].metadata.message_id
        assert grid.now() >= start
