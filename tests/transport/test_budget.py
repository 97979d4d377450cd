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


def test_a_reply_waiting_for_the_budget_says_so_and_waits_as_the_servers_own() -> None:
    """Others see that a reply waits (the stall watch's rate floor applies then), and the
    Reassembler wraps that wait in ``server_wait`` (the watch does not count it)."""
    from collections.abc import Iterator
    from contextlib import contextmanager

    from consortium.transport.chunks import Reassembler, iter_chunks

    budget = ReceiveBudget(100)
    budget.acquire(80)  # a reply in flight
    inside = threading.Event()

    @contextmanager
    def server_wait() -> Iterator[None]:
        inside.set()
        yield
        inside.clear()

    rebuild = Reassembler(1000, budget, server_wait=server_wait)
    chunk = next(iter_chunks([b"x" * 50], "m", chunk_size=50))
    feeding = threading.Thread(target=rebuild.feed, args=(chunk,), daemon=True)
    assert not budget.waiting()
    feeding.start()
    assert inside.wait(5)
    time.sleep(0.05)
    assert feeding.is_alive() and budget.waiting()
    budget.release(80)
    feeding.join(5)
    assert not feeding.is_alive() and not inside.is_set() and not budget.waiting()
    assert rebuild.reserved == 50
