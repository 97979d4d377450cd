"""The fleet hands replies to the round loop one at a time and keeps none it handed over."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from consortium.core.arrays import Arrays
from consortium.core.message import Content, Message
from consortium.server.fleet import Fleet

NODES = ("a", "b", "c")


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    """A fleet with nodes a, b and c connected."""
    fleet = Fleet(offline_after=60.0)
    for node in NODES:
        fleet.hello(node, "instance")
    yield fleet
    fleet.close()


def _tasks(nodes: tuple[str, ...], model: Arrays | None = None) -> list[Message]:
    content = Content() if model is None else Content.of(model, {})
    return [
        Message.create(run_id="r", dst=node, round=1, kind="train", content=content)
        for node in nodes
    ]


def test_a_consumed_reply_is_not_kept_while_the_next_one_is_awaited(fleet: Fleet) -> None:
    nodes = NODES
    tasks = _tasks(nodes)
    refs: list[weakref.ref[np.ndarray]] = []
    alive_when_next_arrived: list[bool] = []

    def deliver(i: int) -> None:
        if refs:
            alive_when_next_arrived.append(refs[-1]() is not None)
        reply = tasks[i].reply(arrays=Arrays({"w": np.full(10, float(i))}), metrics={})
        assert reply.content is not None and reply.content.model is not None
        refs.append(weakref.ref(reply.content.model["w"]))
        accepted, detail = fleet.deliver(nodes[i], reply)
        assert accepted, detail

    stream = fleet.send_and_receive(tasks, timeout=30)
    seen = []
    for i in range(len(nodes)):
        timer = threading.Timer(0.1, deliver, (i,))
        timer.start()
        got = next(stream)
        assert got.content is not None and got.content.model is not None
        seen.append(float(got.content.model["w"][0]))
        del got  # the round loop folds it and lets go of it
        timer.join()
    assert seen == [0.0, 1.0, 2.0]
    assert alive_when_next_arrived == [False, False]


def test_every_accepted_reply_is_released_once_even_if_the_round_stops_early(
    fleet: Fleet,
) -> None:
    nodes = NODES
    tasks = _tasks(nodes)
    released: list[str] = []
    stream = fleet.send_and_receive(tasks, timeout=30)
    for task, node in zip(tasks, nodes, strict=True):
        reply = task.reply(arrays=Arrays({"w": np.zeros(3)}), metrics={})
        ok, _ = fleet.deliver(node, reply, lambda node=node: released.append(node))
        assert ok
    first = next(stream)
    assert first.metadata.src == "a" and released == []  # in use: not released yet
    next(stream)
    assert released == ["a"]  # asked for the next: the first is done
    stream.close()  # e.g. the round failed: what was not consumed is released too
    assert sorted(released) == ["a", "b", "c"]
    late = tasks[0].reply(arrays=Arrays({"w": np.zeros(3)}), metrics={})
    assert fleet.deliver("a", late, lambda: released.append("late")) == (
        False,
        "no task is waiting for this reply (late, duplicate or unknown)",
    )
    assert "late" not in released  # refused: the caller keeps responsibility


def test_with_hold_a_reply_is_released_when_its_consumer_says_so_not_on_the_next(
    fleet: Fleet,
) -> None:
    """The server's app process says itself when it is done with a reply (its
    ``ReplyWindow``): the server, which forwards the next one before that, must not
    release the one before (its budget would let another upload in while the app
    still reads it: a new shared block)."""
    nodes = NODES
    tasks = _tasks(nodes)
    released: list[str] = []
    held: list[Callable[[], None] | None] = []
    stream = fleet.send_and_receive(tasks, timeout=30, hold=held.append)
    for task, node in zip(tasks, nodes, strict=True):
        reply = task.reply(arrays=Arrays({"w": np.zeros(3)}), metrics={})
        ok, _ = fleet.deliver(node, reply, lambda node=node: released.append(node))
        assert ok
    next(stream)
    next(stream)
    assert released == [] and len(held) == 2, "forwarded on: not released for that"
    release = held.pop(0)
    assert release is not None
    release()
    assert released == ["a"]
    stream.close()  # what was never handed over is released; what was, is the holder's
    assert sorted(released) == ["a", "c"]
    release = held.pop(0)
    assert release is not None
    release()
    assert sorted(released) == ["a", "b", "c"]


def test_the_model_counts_as_outgoing_until_every_task_is_sent_or_withdrawn(
    fleet: Fleet,
) -> None:
    tasks = _tasks(("a", "b"), Arrays({"w": np.zeros(1000, dtype="f4")}))
    stream = fleet.send_and_receive(tasks, timeout=30)
    assert fleet.transfer_budget.held_bytes == 0  # queued, nobody is being sent it
    pulled_a, pulled_b = fleet.next_task("a", 0.0), fleet.next_task("b", 0.0)
    assert pulled_a is not None and pulled_b is not None
    assert fleet.transfer_budget.held_bytes == 4000  # once, although two are sent it
    fleet.task_sent(pulled_a[0])
    assert fleet.transfer_budget.held_bytes == 4000  # b is still being sent it
    assert fleet.task_wanted(pulled_b[0])
    stream.close()  # the round ends: b's task is withdrawn
    assert not fleet.task_wanted(pulled_b[0])
    fleet.task_sent(pulled_b[0])  # its stream stops at the next chunk
    assert fleet.transfer_budget.held_bytes == 0


def test_a_node_slow_to_pull_does_not_hold_up_the_others(fleet: Fleet) -> None:
    tasks = _tasks(("a", "b"), Arrays({"w": np.zeros(1000, dtype="f4")}))
    stream = fleet.send_and_receive(tasks, timeout=30)
    pulled = fleet.next_task("a", 0.0)
    assert pulled is not None
    fleet.task_sent(pulled[0])
    assert fleet.transfer_budget.held_bytes == 0  # b has not asked: a's reply may come in
    stream.close()
