"""A node gets records of its own and a read-only model on every simulation backend, as
a deployed node gets them: what one node does to its task never reaches the next
node's (in the threads backend they share the server's objects; in a batch of the
processes backend, the unpickled batch's objects)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.message import Content, Message
from consortium.core.protocol import TRAIN
from consortium.core.records import Config
from consortium.simulation.grid import SimulationGrid

HERE = Path(__file__).parent
meddler = ClientApp()


@meddler.train()
def meddle(msg: Message, ctx: Context) -> Message:
    """Report what it received, then change everything it can reach of its task."""
    assert msg.content is not None and msg.content.model is not None
    model, config = msg.content.model, msg.content.config
    tags = config["tags"]
    assert isinstance(tags, list)
    run_tags, node_tags = ctx.run_config["tags"], ctx.node_config.setdefault("tags", [])
    assert isinstance(run_tags, list) and isinstance(node_tags, list)
    seen = {
        "w0": float(model["w"][0]),
        "lr": float(config["lr"]),  # type: ignore[arg-type]
        "tags": len(tags),
        "run_lr": float(ctx.run_config["lr"]),  # type: ignore[arg-type]
        "run_tags": len(run_tags),
        "node_tags": len(node_tags),
    }
    model["w"] = np.full(3, 99.0)  # replaces the entry of its own record only
    config["lr"] = 5.0
    tags.append("x")
    ctx.run_config["lr"] = 5.0  # the run's config and the node's: its own copies too
    run_tags.append("x")
    node_tags.append("x")
    msg.content.arrays["extra"] = Arrays({"z": np.zeros(1)})
    return msg.reply(metrics={"num_examples": 1, **seen})


writer = ClientApp()


@writer.train()
def write_in_place(msg: Message, ctx: Context) -> Message:
    assert msg.content is not None and msg.content.model is not None
    msg.content.model["w"] += 1.0
    return msg.reply(arrays=msg.content.model, metrics={"num_examples": 1})


def _tasks(model: Arrays, nodes: int) -> list[Message]:
    config: Config = {"lr": 0.1, "tags": ["a"]}
    content = Content(arrays={"model": model}, configs={"config": config})
    return [
        Message.create(run_id="r", dst=str(i), round=1, kind=TRAIN, content=content)
        for i in range(nodes)
    ]


@pytest.mark.parametrize(
    "backend",
    [
        {"workers": 1},
        {"workers": 3},
        # one batch of six tasks in one worker, the app loaded by reference
        {"backend": "processes", "workers": 1, "nodes_per_batch": 6},
    ],
)
def test_each_node_receives_the_task_as_sent(backend: dict[str, Any]) -> None:
    model = Arrays({"w": np.arange(3.0)})
    tasks = _tasks(model, 6)
    app = "test_node_copy:meddler" if backend.get("backend") == "processes" else meddler
    run_config: Config = {"lr": 0.1, "tags": ["a"]}
    node_configs: dict[str, Config] = {str(i): {"partition-id": i} for i in range(6)}
    grid = SimulationGrid(
        app,
        [str(i) for i in range(6)],
        app_path=[str(HERE)],
        run_config=run_config,
        node_config=lambda i, node: node_configs[node],
        **backend,
    )
    try:
        replies = list(grid.send_and_receive(tasks, timeout=None))
    finally:
        grid.close()
    assert [r.error for r in replies] == [None] * 6
    for reply in replies:
        assert reply.content is not None
        assert reply.content.metric_values == {
            "num_examples": 1, "w0": 0.0, "lr": 0.1, "tags": 1, "run_lr": 0.1, "run_tags": 1,
            "node_tags": 0,
        }  # fmt: skip
    assert run_config == {"lr": 0.1, "tags": ["a"]}
    assert node_configs == {str(i): {"partition-id": i} for i in range(6)}
    # the server's own objects are as they were
    np.testing.assert_array_equal(model["w"], np.arange(3.0))
    assert model["w"].flags.writeable
    assert tasks[0].content is not None
    assert tasks[0].content.config == {"lr": 0.1, "tags": ["a"]}
    assert list(tasks[0].content.arrays) == ["model"]


@pytest.mark.parametrize("workers", [1, 3])
def test_a_node_writing_into_its_model_fails_and_the_others_get_it_unchanged(
    workers: int,
) -> None:
    model = Arrays({"w": np.zeros(3)})
    grid = SimulationGrid(writer, [str(i) for i in range(4)], workers=workers)
    try:
        replies = list(grid.send_and_receive(_tasks(model, 4), timeout=None))
        grid.push(_tasks(model, 1))  # push/pull (FedBuff) too
        pushed = grid.pull(timeout=10)
    finally:
        grid.close()
    for reply in [*replies, pushed]:
        assert reply is not None and reply.error is not None
        assert reply.error.code == "ValueError"
        assert "read-only" in reply.error.reason
    np.testing.assert_array_equal(model["w"], np.zeros(3))
