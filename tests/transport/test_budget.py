"""ReceiveBudget: replies wait for room, counted until their memory is freed; nothing
waits forever."""

from __future__ import annotations

import gc
import threading
import time

import numpy as np

from consortium.transport.receive_budget import ReceiveBudget

MB = 1024 * 1024


def _acquire_in_thread(budget: ReceiveBudget, nbytes: int) -> threading.Event:
    done = threading.Event()

    def run() -> None:
        budget.acquire(nbytes)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done


def test_a_reply_waits_while_the_model_is_being_sent() -> None:
    budget = ReceiveBudget(512 * MB)
    budget.hold_outgoing(400 * MB)  # the model, still going out to the nodes
    admitted = _acquire_in_thread(budget, 400 * MB)
    assert not admitted.wait(0.2)
    budget.release_outgoing(400 * MB)
    assert admitted.wait(5)


def test_one_reply_is_always_admitted_when_nothing_is_in_flight_or_outgoing() -> None:
    budget = ReceiveBudget(100 * MB)
    budget.acquire(400 * MB)  # larger than the whole budget: admitted, alone
    budget.release(400 * MB)
    owner = np.empty(1)
    budget.acquire(400 * MB)
    budget.consumed(400 * MB, owner)  # kept (e.g. as the running sum): retained
    admitted = _acquire_in_thread(budget, 400 * MB)
    assert admitted.wait(5)  # retained memory alone never blocks: no deadlock


def test_a_consumed_reply_counts_until_its_memory_is_freed() -> None:
    budget = ReceiveBudget(1000 * MB)
    first, second = np.empty(1), np.empty(1)
    budget.acquire(400 * MB)
    budget.acquire(400 * MB)
    budget.consumed(400 * MB, first)  # folded, memory kept as the sum
    budget.consumed(400 * MB, second)
    assert budget.held_bytes == 800 * MB
    del second
    gc.collect()
    assert budget.held_bytes == 400 * MB
    budget.acquire(400 * MB)  # 400 retained + 400 fits in 1000
    third = _acquire_in_thread(budget, 400 * MB)  # 1200 would not
    time.sleep(0.2)
    assert not third.is_set()
    del first
    gc.collect()
    assert third.wait(5)
