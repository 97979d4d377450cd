"""A refused call from a node of ours takes it offline at once; refusals are recorded."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from consortium.core.message import Content, Message
from consortium.server.fleet import Fleet
from consortium.server.records import fleet_event_sink
from consortium.server.store import StateStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def events() -> list[tuple[str, str, str]]:
    return []


@pytest.fixture
def fleet(clock: Clock, events: list[tuple[str, str, str]]) -> Iterator[Fleet]:
    fleet = Fleet(offline_after=3600.0, clock=clock, events=lambda *event: events.append(event))
    for node in ("a", "b"):
        fleet.hello(node, "instance")
    events.clear()
    yield fleet
    fleet.close()


def _task(node: str) -> Message:
    return Message.create(run_id="r", dst=node, round=1, kind="train", content=Content())


def test_a_refused_node_goes_offline_and_its_task_fails_at_once(
    fleet: Fleet, events: list[tuple[str, str, str]]
) -> None:
    tasks = [_task("a"), _task("b")]
    replies = fleet.send_and_receive(tasks, timeout=3600)
    fleet.refused("a", "ipv4:127.0.0.1:4000", "certificate 'a' was revoked")
    first = next(replies)  # without waiting for the heartbeat timeout or the deadline
    assert first.metadata.src == "a" and first.error is not None
    assert first.error.code == "node-lost"
    assert first.error.reason == "node refused: certificate 'a' was revoked"
    assert fleet.node_ids() == ["b"]
    assert events == [("a", "refused", "certificate 'a' was revoked")]
    # the others carry on: b still gets its task and its reply is received
    assert fleet.next_task("b", 0) is not None
    accepted, detail = fleet.deliver("b", tasks[1].reply(metrics={}))
    assert accepted, detail
    assert next(replies).metadata.src == "b"
    replies.close()
    # a new task for a is refused up front: it is offline
    [offline] = list(fleet.send_and_receive([_task("a")], timeout=3600))
    assert offline.error is not None and offline.error.code == "node-offline"


def test_a_node_that_connects_again_after_a_refusal_is_back(fleet: Fleet) -> None:
    fleet.refused("a", "peer", "certificate 'a' has expired")
    assert fleet.node_ids() == ["b"]
    fleet.hello("a", "instance")  # e.g. with a renewed certificate
    assert fleet.node_ids() == ["a", "b"]


def test_refusals_are_recorded_once_a_minute_per_caller_and_reason(
    fleet: Fleet, clock: Clock, events: list[tuple[str, str, str]]
) -> None:
    for _ in range(3):  # a revoked node retrying
        fleet.refused("a", "peer", "revoked")
    clock.now += 30
    fleet.refused("a", "peer", "revoked")
    fleet.refused("a", "peer", "not on the allow-list")  # a new reason is news
    clock.now += 61
    fleet.refused("a", "peer", "not on the allow-list")
    # a caller that is not one of our nodes is recorded under its address
    fleet.refused(None, "ipv4:10.0.0.9:5555", "admin certificate 'x' is not accepted here")
    assert events == [
        ("a", "refused", "revoked"),
        ("a", "refused", "not on the allow-list"),
        ("a", "refused", "not on the allow-list"),
        ("ipv4:10.0.0.9:5555", "refused", "admin certificate 'x' is not accepted here"),
    ]
    assert fleet.node_ids() == ["b"]


def test_the_state_store_records_refusals_and_the_node_going_offline(tmp_path: Path) -> None:
    with StateStore(f"sqlite:///{tmp_path / 'state.db'}") as store:
        sink = fleet_event_sink(store)
        store.upsert_node("a", allow_listed=True)
        sink("a", "connected", "instance")
        online = store.get_node("a")
        assert online is not None and online.status == "online"
        sink("a", "refused", "certificate 'a' was revoked")
        sink("ipv4:10.0.0.9:5555", "refused", "no client certificate")
        node = store.get_node("a")
        assert node is not None and node.status == "offline"
        assert [(e.node, e.kind, e.detail) for e in store.list_node_events("a")][:2] == [
            ("a", "disconnected", "refused"),
            ("a", "refused", "certificate 'a' was revoked"),
        ]
        [stranger] = store.list_node_events("ipv4:10.0.0.9:5555")
        assert (stranger.kind, stranger.detail) == ("refused", "no client certificate")
        assert store.get_node("ipv4:10.0.0.9:5555") is None  # a stranger is not registered


def test_waiting_for_nodes_says_who_is_online_and_who_is_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fleet = Fleet(heartbeat_interval=1.0, offline_after=60.0, wait_log_every=0.1)
    try:
        fleet.hello("cleveland", "i1")
        fleet.hello("va", "i2")
        fleet.refused("va", "127.0.0.1:1", "certificate revoked")  # va goes offline
        with caplog.at_level(logging.INFO, logger="consortium.server"):
            online = fleet.wait_for_nodes(2, 0.5)
        assert online == ["cleveland"]
        lines = [r.getMessage() for r in caplog.records if "waiting for 2 node(s)" in r.message]
        assert lines, caplog.text
        assert "1 online (cleveland)" in lines[-1] and "offline: va (last seen" in lines[-1]
    finally:
        fleet.close()
