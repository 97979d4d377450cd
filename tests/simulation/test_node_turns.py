"""A simulated node runs its tasks one at a time, in the order sent, as a deployed node does:
several workers never run one node twice at once on copies of its state."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from consortium.client import ClientApp
from consortium.core.context import Context
from consortium.core.message import Content, Message
from consortium.core.protocol import TRAIN
from consortium.simulation.grid import SimulationGrid

APP_DIR = str(Path(__file__).parent / "toyapp")
sys.path.insert(0, APP_DIR)
import toy_app  # noqa: E402

slow_client = ClientApp()


@slow_client.train()
def count(msg: Message, ctx: Context) -> Message:
    """Count this node's tasks in its state, slowly enough for two workers to overlap."""
    seen = int(ctx.state.metrics.get("toy", {}).get("rounds", 0)) + 1
    time.sleep(0.02)
    ctx.state.metrics["toy"] = {"rounds": seen}
    return msg.reply(metrics={"num_examples": 1, "rounds_seen": seen})


def _tasks(nodes: list[str], repeat: int) -> list[Message]:
    model = toy_app.make_arrays(0.0)
    return [
        Message.create(run_id="r", dst=node, round=1, kind=TRAIN, content=Content.of(model))
        for _ in range(repeat)
        for node in nodes
    ]


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_tasks_to_one_node_in_one_batch_see_each_others_state(backend: str) -> None:
    app = slow_client if backend == "threads" else "toy_app:client_app"
    grid = SimulationGrid(app, ["a", "b"], backend=backend, workers=4, app_path=[APP_DIR])
    try:
        replies = list(grid.send_and_receive(_tasks(["a", "b"], 4), timeout=None))
        counts = [
            (r.metadata.src, r.content.metric_values["rounds_seen"]) for r in replies if r.content
        ]
        assert counts == [(n, k) for k in (1, 2, 3, 4) for n in ("a", "b")]
        # and across calls: the node's fifth task sees all four
        (fifth,) = grid.send_and_receive(_tasks(["a"], 1), timeout=None)
        assert fifth.content is not None and fifth.content.metric_values["rounds_seen"] == 5
    finally:
        grid.close()


def test_pushed_tasks_to_one_node_take_turns() -> None:
    grid = SimulationGrid(slow_client, ["a"], workers=3)
    try:
        grid.push(_tasks(["a"], 3))
        seen = []
        while (reply := grid.pull(timeout=10)) is not None:
            assert reply.content is not None
            seen.append(reply.content.metric_values["rounds_seen"])
        assert seen == [1, 2, 3]
    finally:
        grid.close()
