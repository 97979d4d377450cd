"""What the server holds of models in transit does not grow with the number of nodes:
a few tasks sent at once, a few replies read at once, a budget fitted to the model, and
a stream window shared among the nodes."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from consortium.core.arrays import Arrays
from consortium.core.message import TRAIN, Content, Message
from consortium.server.fleet import Fleet
from consortium.transport.fairness import (
    MAX_STREAM_WINDOW,
    MIN_STREAM_WINDOW,
    UNREAD_BYTES,
    ReceiveSlots,
    stream_window,
)
from consortium.transport.link_chunks import SLOW_LINK_CHUNK_SIZE
from consortium.transport.receive_budget import (
    DEFAULT_TRANSFER_BUDGET_MB,
    MIN_FITTED_BUDGET,
    MODELS_IN_BUDGET,
    ReceiveBudget,
)

MiB = 1024 * 1024


def test_receive_slots_admit_a_few_replies_and_one_per_node() -> None:
    slots = ReceiveSlots(2)
    assert slots.acquire("a", lambda: True) and slots.acquire("b", lambda: True)
    assert slots.in_use() == 2
    # full: a third node waits, and gives up once its call is gone
    assert not slots.acquire("c", lambda: False)
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(slots.acquire("c", lambda: True, 0.01)))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and slots.waiting()  # still waiting, and others can tell
    slots.release("a")
    waiter.join(5)
    assert got == [True] and slots.in_use() == 2 and not slots.waiting()
    # a node holding a slot waits for it even when others are free
    slots.release("c")
    assert not slots.acquire("b", lambda: False)
    with pytest.raises(ValueError, match="slots must be >= 1"):
        ReceiveSlots(0)


def test_four_replies_sent_in_quarter_chunks_share_one_slot() -> None:
    """A node told to reply in chunks of a quarter (a slow link) takes a quarter of a
    slot: four of them read at once where one fast reply would be."""
    slots = ReceiveSlots(1)
    quarter = SLOW_LINK_CHUNK_SIZE
    assert all(slots.acquire(node, lambda: True, chunk=quarter) for node in "abcd")
    assert slots.in_use() == 4
    assert not slots.acquire("e", lambda: False, chunk=quarter)  # no room for a fifth
    slots.release("a")
    assert not slots.acquire("f", lambda: False)  # a whole slot: not while three hold
    assert slots.acquire("e", lambda: True, chunk=quarter)
    for node in "bcde":
        slots.release(node)
    assert slots.acquire("f", lambda: True) and slots.in_use() == 1


def test_a_push_waiting_for_a_slot_looks_again_when_told_the_bound_grew() -> None:
    """A reply received to disk lets one more be read: the waiting push hears of it at
    once (``recount``), not at its next poll."""
    bound = [1]
    slots = ReceiveSlots(16, lambda: bound[0])
    assert slots.acquire("a", lambda: True)
    got: list[float] = []
    waiter = threading.Thread(
        target=lambda: slots.acquire("b", lambda: True, 30.0) and got.append(time.monotonic())
    )
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()
    bound[0] = 2  # a's reply went to disk
    told = time.monotonic()
    slots.recount()
    waiter.join(5)
    assert got and got[0] - told < 1.0  # not the 30 s poll


def test_model_sized_replies_are_read_only_as_far_as_the_budget_admits_them() -> None:
    """A push read past its first chunk waits for the budget in the server's memory;
    one not read yet waits with its node. With replies of a 100M-parameter model,
    the default budget admits one at a time: two are read (that one, and the next
    one's first chunk), whatever the number of nodes."""
    budget = ReceiveBudget(DEFAULT_TRANSFER_BUDGET_MB * MiB)
    slots = ReceiveSlots(16, budget.reads_at_once)
    assert budget.reads_at_once() is None  # not fitted yet: the 16 slots
    budget.fit(4 * MiB)
    assert budget.reads_at_once() is None  # small replies: the 16 slots
    budget.fit(40 * MiB)
    assert budget.reads_at_once() == 160 // 40 + 1  # 10M parameters: four admitted at once
    budget.fit(381 * MiB)
    assert budget.reads_at_once() == 2
    assert slots.acquire("a", lambda: True) and slots.acquire("b", lambda: True)
    assert not slots.acquire("c", lambda: False), "a third push read while two wait"
    slots.release("a")
    assert slots.acquire("c", lambda: True)
    budget.fit(4 * MiB)  # the next round's model is small: all 16 again
    assert slots.acquire("d", lambda: True) and slots.in_use() == 3


def test_the_stream_window_is_shared_among_the_nodes() -> None:
    assert stream_window(2) == MAX_STREAM_WINDOW  # a few nodes: full speed, as before
    assert stream_window(200) == UNREAD_BYTES // 200
    assert MIN_STREAM_WINDOW < stream_window(200) < MAX_STREAM_WINDOW
    assert stream_window(100_000) == MIN_STREAM_WINDOW
    assert stream_window(0) == MAX_STREAM_WINDOW
    # an operator with memory to spare (--unread-mb 256) gives each of 200 nodes more
    assert stream_window(200, 256 * 1024**2) == 256 * 1024**2 // 200 > stream_window(200)


def test_a_fitted_budget_holds_a_few_models_within_its_ceiling() -> None:
    budget = ReceiveBudget(1024 * MiB)
    budget.fit(4 * MiB)
    assert budget.limit == MIN_FITTED_BUDGET  # a small model: the floor
    budget.fit(100 * MiB)
    assert budget.limit == MODELS_IN_BUDGET * 100 * MiB
    budget.fit(400 * MiB)
    assert budget.limit == 1024 * MiB  # never above --transfer-budget-mb
    # a reply that does not fit waits; shrinking the limit keeps it waiting
    budget.fit(4 * MiB)
    budget.acquire(30 * MiB)
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (budget.acquire(8 * MiB), done.set()))
    waiter.start()
    assert not done.wait(0.2)
    budget.release(30 * MiB)
    assert done.wait(5)
    waiter.join(5)


def _task(node: str, nbytes: int = 4 * MiB) -> Message:
    content = Content.of(Arrays({"w": np.zeros(nbytes // 4, dtype=np.float32)}), {})
    return Message.create(run_id="r", dst=node, round=1, kind=TRAIN, content=content)


def test_only_a_few_tasks_are_sent_at_once_the_others_wait_in_their_pull() -> None:
    fleet = Fleet(offline_after=3600.0, sends_at_once=2)
    try:
        for node in ("a", "b", "c"):
            fleet.hello(node, "i")
        replies = fleet.send_and_receive([_task(n) for n in ("a", "b", "c")], timeout=3600)
        first, second = fleet.next_task("a", 0), fleet.next_task("b", 0)
        assert first is not None and second is not None
        assert fleet.next_task("c", 0.1) is None  # both slots taken: c's pull waits
        got: list[object] = []
        pull = threading.Thread(target=lambda: got.append(fleet.next_task("c", 10)))
        pull.start()
        fleet.task_sent(first[0])  # a's download is done: c's turn
        pull.join(10)
        assert got and got[0] is not None
        replies.close()
    finally:
        fleet.close()


def test_a_round_holds_back_no_more_early_replies_than_the_budget_has_room_for() -> None:
    fleet = Fleet(offline_after=3600.0, transfer_budget=1024 * MiB)
    try:
        fleet.hello("a", "i")
        replies = fleet.send_and_receive([_task("a")], timeout=3600)
        # fitted to a 4 MiB model: 32 MiB, of which the model being sent, the running
        # sum and the next reply need 3 models; the rest may be held back
        assert fleet.transfer_budget.limit == MIN_FITTED_BUDGET
        assert fleet._reorder_bytes(4 * MiB) == MIN_FITTED_BUDGET - 12 * MiB
        assert fleet._reorder_bytes(400 * MiB) == 0  # a large model: arrival order
        replies.close()
    finally:
        fleet.close()
