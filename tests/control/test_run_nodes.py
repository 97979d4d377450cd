"""A run's grid over chosen nodes (``POST /runs`` with ``"nodes"``): the run sees, waits for
and reaches those nodes only, whatever its program asks."""

from __future__ import annotations

import queue
import threading

from consortium.core.message import Content, Message
from consortium.core.protocol import ERROR_NODE_OFFLINE
from consortium.server.fleet import Fleet
from consortium.server.fleet_grid import NODES, FleetGrid


def _task(dst: str) -> Message:
    return Message.create(run_id="r1", dst=dst, round=1, kind="train", content=Content())


def test_a_grid_of_chosen_nodes_shows_waits_for_and_reaches_only_them() -> None:
    fleet = Fleet(offline_after=3600.0, expected=["a", "b", "c", "d"])
    grid = FleetGrid(fleet, ["b", "d"])
    try:
        for node in ("a", "b", "c"):
            fleet.hello(node, f"i-{node}", version="1.2.3", organisation=f"Org {node}")
        assert fleet.node_ids() == ["a", "b", "c"]
        assert grid.node_ids() == ["b"]
        assert fleet.identities()["b"] == ("1.2.3", "Org b")
        # three nodes are online, but only one chosen one: the wait goes on for d
        got: list[list[str]] = []
        waiter = threading.Thread(target=lambda: got.append(grid.wait_for_nodes(2, 30)))
        waiter.start()
        state = None
        for _ in range(200):
            state = grid.waiting()
            if state is not None:
                break
            threading.Event().wait(0.01)
        assert state is not None and state.stage == NODES
        assert state.online == ("b",) and state.missing == ("d",)
        fleet.hello("d", "i-d")
        waiter.join(30)
        assert got == [["b", "d"]]
        # more than were chosen can never be online: the program is told at once
        assert grid.wait_for_nodes(3, 30) == ["b", "d"]
        # a task to a node not chosen fails at once and is never queued for it
        inbox: list[Message] = []
        for reply in grid.send_and_receive([_task("a"), _task("b")], timeout=0.2):
            inbox.append(reply)
        failed = [r for r in inbox if r.error is not None]
        assert [r.metadata.src for r in failed] == ["a"]
        assert failed[0].error is not None and failed[0].error.code == ERROR_NODE_OFFLINE
        assert "not one of the nodes chosen" in failed[0].error.reason
        assert fleet.next_task("a", 0.0) is None  # nothing was queued for a
        grid.push([_task("c")])
        pulled = grid.pull(1.0)
        assert pulled is not None and pulled.error is not None
        assert fleet.next_task("c", 0.0) is None
    finally:
        grid.close()
        fleet.close()


def test_a_grid_without_a_choice_is_the_whole_fleet() -> None:
    fleet = Fleet(offline_after=3600.0)
    grid = FleetGrid(fleet)
    try:
        fleet.hello("a", "i")
        fleet.hello("b", "i")
        assert grid.node_ids() == ["a", "b"] and grid.wait_for_nodes(2, 1) == ["a", "b"]
        replies: queue.Queue[object] = queue.Queue()
        assert len(fleet.enqueue([_task("a")], replies)) == 1  # type: ignore[arg-type]
        assert replies.empty() and fleet.next_task("a", 0.0) is not None
    finally:
        grid.close()
        fleet.close()


def test_a_reported_version_is_kept_only_if_it_looks_like_one() -> None:
    from consortium.transport.grpc_requests import reported_version

    assert reported_version("1.4.0.dev3+g1a2b", "va") == "1.4.0.dev3+g1a2b"
    assert reported_version("", "va") == ""
    for junk in ("1.0\n<script>", "x" * 65, " 1.0", "../../etc"):
        assert reported_version(junk, "va") == "", junk
