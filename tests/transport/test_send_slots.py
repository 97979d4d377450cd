"""Pulls waiting in the fleet are woken one node at a time: by a task for their node, or
by a send slot coming free, in the order they began waiting; the server's freed heap
is given back to the system (glibc)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from consortium.core.arrays import Arrays
from consortium.core.message import Content, Message
from consortium.server.fleet import Fleet
from consortium.server.heap import Glibc, HeapTrimmer

NODES = ("a", "b", "c", "d")


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    """Nodes a-d connected; one task is sent at a time."""
    fleet = Fleet(offline_after=60.0, sends_at_once=1)
    for node in NODES:
        fleet.hello(node, "instance")
    yield fleet
    fleet.close()


def _tasks(nodes: tuple[str, ...]) -> list[Message]:
    return [
        Message.create(run_id="r", dst=node, round=1, kind="train", content=Content())
        for node in nodes
    ]


class Pull:
    """``fleet.next_task(node, wait)`` in a thread, noting when it returned."""

    def __init__(self, fleet: Fleet, node: str, wait: float = 5.0) -> None:
        self.result: tuple[str, object] | None = None
        self.returned_at: float | None = None

        def pull() -> None:
            self.result = fleet.next_task(node, wait)
            self.returned_at = time.monotonic()

        self.thread = threading.Thread(target=pull, daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


class SlowPull(Pull):
    """A pull of a node on a slow link."""

    def __init__(self, fleet: Fleet, node: str, wait: float = 5.0) -> None:
        self.result: tuple[str, object] | None = None
        self.returned_at: float | None = None

        def pull() -> None:
            self.result = fleet.next_task(node, wait, slow_link=True)
            self.returned_at = time.monotonic()

        self.thread = threading.Thread(target=pull, daemon=True)
        self.thread.start()


def _settle() -> None:
    time.sleep(0.2)  # the pull threads are waiting in the fleet


def test_a_task_wakes_its_nodes_waiting_pull_at_once(fleet: Fleet) -> None:
    pull = Pull(fleet, "a")
    _settle()
    queued = time.monotonic()
    stream = fleet.send_and_receive(_tasks(("a",)), timeout=30)
    pull.join()
    assert pull.result is not None and pull.returned_at is not None
    assert pull.returned_at - queued < 0.5  # not at the next once-a-second look
    stream.close()


def test_a_free_send_slot_wakes_the_pull_that_waited_longest(fleet: Fleet) -> None:
    stream = fleet.send_and_receive(_tasks(("a", "b", "c")), timeout=30)
    first = fleet.next_task("a", 0.0)  # takes the only send slot
    assert first is not None
    waiting_b = Pull(fleet, "b")
    _settle()
    waiting_c = Pull(fleet, "c")
    _settle()
    assert waiting_b.result is None and waiting_c.result is None  # no slot yet
    assert fleet.tasks_waiting()  # the stall watch's rate floor applies to a's download
    freed = time.monotonic()
    fleet.task_sent(first[0])
    waiting_b.join()
    assert waiting_b.result is not None and waiting_b.returned_at is not None
    assert waiting_b.returned_at - freed < 0.5
    assert waiting_c.thread.is_alive()  # one slot came free: one pull went on
    assert fleet.next_task("d", 0.0) is None  # d has no task: no slot taken by it
    fleet.task_sent(waiting_b.result[0])
    waiting_c.join()
    assert waiting_c.result is not None and not fleet.tasks_waiting()
    stream.close()


def test_a_pull_woken_for_a_node_whose_tasks_ended_does_not_waste_the_slot(
    fleet: Fleet,
) -> None:
    stream_ab = fleet.send_and_receive(_tasks(("a", "b")), timeout=30)
    stream_c = fleet.send_and_receive(_tasks(("c",)), timeout=30)
    first = fleet.next_task("a", 0.0)
    assert first is not None
    waiting_b = Pull(fleet, "b", wait=0.5)  # gives up before the slot is free
    waiting_b.join()
    assert waiting_b.result is None
    waiting_c = Pull(fleet, "c")
    _settle()
    freed = time.monotonic()
    fleet.task_sent(first[0])
    waiting_c.join()
    assert waiting_c.result is not None and waiting_c.returned_at is not None
    assert waiting_c.returned_at - freed < 0.5
    stream_ab.close()
    stream_c.close()


def _large_sends_fleet(sends_at_once: int) -> Fleet:
    """Nodes a-d connected; of ``sends_at_once`` slots, one for a task of 64 KiB or more
    to a fast link."""
    fleet = Fleet(offline_after=60.0, sends_at_once=sends_at_once, large_sends_at_once=1,
                  large_send_bytes=64 * 1024)  # fmt: skip
    for node in NODES:
        fleet.hello(node, "instance")
    return fleet


def _large_tasks(nodes: tuple[str, ...]) -> list[Message]:
    """A 128 KiB model's task for each of ``nodes``: large for :func:`_large_sends_fleet`."""
    model = Arrays({"w": np.zeros(16 * 1024)})
    return [
        Message.create(run_id="r", dst=node, round=1, kind="train", content=Content.of(model))
        for node in nodes
    ]


def test_only_so_many_model_sized_tasks_are_sent_at_once_and_small_ones_go_by() -> None:
    """Each stream of a model-sized task holds more of the server's memory: of the slots,
    only ``large_sends_at_once`` take tasks of ``large_send_bytes`` or more."""
    fleet = _large_sends_fleet(sends_at_once=16)
    large = _large_tasks(("a", "b"))
    stream = fleet.send_and_receive([*large, *_tasks(("c",))], timeout=30)
    try:
        first = fleet.next_task("a", 0.0)
        assert first is not None
        waiting_b = Pull(fleet, "b")
        _settle()
        assert waiting_b.result is None  # the one large slot is taken
        assert fleet.next_task("c", 0.0) is not None  # a small task has slots to spare
        freed = time.monotonic()
        fleet.task_sent(first[0])
        waiting_b.join()
        assert waiting_b.result is not None and waiting_b.returned_at is not None
        assert waiting_b.returned_at - freed < 0.5
    finally:
        stream.close()
        fleet.close()


def test_model_sized_tasks_to_nodes_on_slow_links_go_beside_the_few_large_sends() -> None:
    """A slow link bounds its own download: its model-sized task does not wait for the
    large sends to fast links (on two cores a few of those move a model as fast as
    many), only for room among all ``sends_at_once``, where it is sent in chunks of a
    quarter and takes a quarter of a place: four slow downloads share one place."""
    fleet = _large_sends_fleet(sends_at_once=2)
    for node in ("e", "f"):
        fleet.hello(node, "instance")
    large = _large_tasks((*NODES, "e", "f"))
    stream = fleet.send_and_receive(large, timeout=30)
    try:
        assert fleet.next_task("a", 0.0) is not None  # the one large place of fast links
        assert fleet.next_task("b", 0.0) is None  # a second fast one waits for it
        for node in ("b", "c", "d", "e"):  # the second place, a quarter each
            assert fleet.next_task(node, 0.0, slow_link=True) is not None, node
        assert fleet.next_task("f", 0.0, slow_link=True) is None  # no room left
    finally:
        stream.close()
        fleet.close()


def test_room_freed_by_slow_sends_goes_to_the_waiting_pulls_it_fits() -> None:
    """A quarter of a place come free wakes a slow download waiting behind a fast one
    (which needs the whole place); the fast one is woken once the place is whole."""
    fleet = Fleet(offline_after=60.0, sends_at_once=1)
    slow, late = ("a", "b", "c", "d"), ("e", "f")
    for node in (*slow, *late):
        fleet.hello(node, "instance")
    stream = fleet.send_and_receive(_tasks((*slow, *late)), timeout=30)
    try:
        sent = [fleet.next_task(node, 0.0, slow_link=True) for node in slow]
        ids = [task[0] for task in sent if task is not None]
        assert len(ids) == 4  # the one place, a quarter each
        waiting_e = Pull(fleet, "e", wait=30.0)  # fast: needs the whole place
        _settle()
        waiting_f = SlowPull(fleet, "f", wait=30.0)  # came after e
        _settle()
        assert waiting_e.result is None and waiting_f.result is None
        freed = time.monotonic()
        fleet.task_sent(ids[0])
        waiting_f.join()
        assert waiting_f.result is not None and waiting_f.returned_at is not None
        assert waiting_f.returned_at - freed < 0.5  # woken, not found at its next look
        assert waiting_e.result is None
        for message_id in (*ids[1:], waiting_f.result[0]):
            fleet.task_sent(message_id)
        waiting_e.join()
        assert waiting_e.result is not None
    finally:
        stream.close()
        fleet.close()


def test_a_large_send_found_crawling_gives_its_place_to_the_next_large_task() -> None:
    """A node's first download, before its link was known, takes a place among the large
    sends to fast links; found crawling on the way, it hands it to the longest waiting."""
    fleet = _large_sends_fleet(sends_at_once=16)
    large = _large_tasks(("a", "b", "c"))
    stream = fleet.send_and_receive(large, timeout=30)
    try:
        first = fleet.next_task("a", 0.0)
        assert first is not None
        waiting_b = Pull(fleet, "b")
        _settle()
        waiting_c = Pull(fleet, "c")  # waits after b
        _settle()
        assert waiting_b.result is None and waiting_c.result is None
        told = time.monotonic()
        fleet.task_crawls(first[0])
        waiting_b.join()  # the longest waiting took the place a's send gave up
        assert waiting_b.result is not None and waiting_b.returned_at is not None
        assert waiting_b.returned_at - told < 0.5
        fleet.task_crawls(first[0])  # told twice: the place is not given twice
        _settle()
        assert waiting_c.result is None
        fleet.task_sent(first[0])  # a crawling send ending frees no large place...
        _settle()
        assert waiting_c.result is None  # ...b still holds the one there is
    finally:
        stream.close()
        fleet.close()


def test_a_send_found_crawling_gives_back_three_quarters_of_its_place() -> None:
    """Found crawling, a download goes on in chunks of a quarter (``_pull``): the rest of
    its place goes to the slow downloads waiting, not to a fast one, which needs it all."""
    fleet = Fleet(offline_after=60.0, sends_at_once=1)
    nodes = (*NODES, "e")
    for node in nodes:
        fleet.hello(node, "instance")
    stream = fleet.send_and_receive(_tasks(nodes), timeout=30)
    try:
        first = fleet.next_task("a", 0.0)  # the whole place, its link unknown
        assert first is not None
        slow = [SlowPull(fleet, node) for node in ("b", "c", "d")]
        fast = Pull(fleet, "e")
        _settle()
        assert all(pull.result is None for pull in (*slow, fast))
        told = time.monotonic()
        fleet.task_crawls(first[0])
        for pull in slow:
            pull.join()
            assert pull.result is not None and pull.returned_at is not None
            assert pull.returned_at - told < 0.5
        assert fast.result is None  # a whole place is not free yet
    finally:
        stream.close()
        fleet.close()


def test_closing_the_fleet_ends_every_waiting_pull(fleet: Fleet) -> None:
    pulls = [Pull(fleet, node, wait=30.0) for node in NODES]
    _settle()
    fleet.close()
    for pull in pulls:
        pull.join()
        assert pull.result is None


class FakeLibc(Glibc):
    def __init__(self, free: int) -> None:  # no C library: counts the calls
        self.free = free
        self.trimmed = 0

    def free_bytes(self) -> int:
        return self.free

    def trim(self) -> None:
        self.trimmed += 1
        self.free = 0


def test_the_heap_is_trimmed_when_enough_is_free_at_most_once_per_interval() -> None:
    now = [0.0]
    libc = FakeLibc(free=10)
    trimmer = HeapTrimmer(libc, above=100, every=1.0, clock=lambda: now[0])
    assert not trimmer.maybe_trim()  # little free: kept
    libc.free = 500
    assert not trimmer.maybe_trim()  # looked less than a second ago
    now[0] = 1.0
    assert trimmer.maybe_trim() and libc.trimmed == 1
    libc.free = 500
    now[0] = 1.5
    assert not trimmer.maybe_trim()
    assert libc.trimmed == 1


def test_without_glibc_the_trimmer_does_nothing() -> None:
    assert not HeapTrimmer(None).maybe_trim()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_trimming_gives_freed_heap_back_to_the_system() -> None:
    libc = Glibc.load()
    if libc is None:
        pytest.skip("no glibc mallinfo2/malloc_trim here")
    from consortium.core.buffers import tune_malloc

    tune_malloc()  # as the server: freed memory is kept, not returned
    kept: list[bytearray] = []

    def churn() -> None:  # in a thread: its own malloc arena, as gRPC's threads
        blocks = [bytearray(3_000_000) for _ in range(50)]
        for block in blocks:
            block[::4096] = b"\1" * len(block[::4096])  # touch every page
        kept.extend(blocks[::10])  # live blocks between the freed ones

    thread = threading.Thread(target=churn)
    thread.start()
    thread.join()
    before = _rss()
    assert HeapTrimmer(libc, above=16 * 1024 * 1024).maybe_trim()
    assert before - _rss() > 60 * 1024 * 1024  # ~120 MB were freed
