"""Per-node call slots and the thread pool they imply."""

from __future__ import annotations

import pytest

from consortium.transport.fairness import (
    CALLS_PER_NODE,
    SPARE_THREADS,
    CallLimiter,
    worker_threads,
)


def test_each_node_has_its_own_slots_and_gets_them_back() -> None:
    calls = CallLimiter(2)
    assert calls.enter("a") and calls.enter("a")
    assert not calls.enter("a")  # a third call of a is refused...
    assert calls.enter("b")  # ...b is not affected
    calls.leave("a")
    assert calls.active("a") == 1 and calls.enter("a")
    for node in ("a", "a", "b"):
        calls.leave(node)
    assert calls.active("a") == 0 and calls.active("b") == 0


def test_the_pool_holds_every_node_share_and_spares() -> None:
    assert worker_threads(4) == 32  # never fewer than gRPC's usual 32
    assert worker_threads(200) == 200 * CALLS_PER_NODE + SPARE_THREADS
    with pytest.raises(ValueError):
        CallLimiter(0)
