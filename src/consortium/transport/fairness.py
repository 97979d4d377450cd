"""Per-node fairness on the server: no node may hold more than its share of call slots.

Every node-facing call holds one of the server's worker threads while it
runs, a long-poll for as long as it waits. An honest node has at most two
calls in progress (its pull or push, and its heartbeat), plus one stale call
the server has not noticed is gone after a reconnect; a node with a valid
certificate that opens forty long-polls would otherwise take the threads
every other node and the coordinator need. :class:`CallLimiter` counts each
node's calls in progress and refuses the ones over its limit, and
:func:`worker_threads` sizes the pool so that every allow-listed node can
hold its full share while calls of the coordinator still find free threads.
"""

from __future__ import annotations

import threading
from collections import Counter

#: calls one node may have in progress at once: pull or push, heartbeat, one stale call
CALLS_PER_NODE = 3
#: worker threads kept for everything else (the coordinator's calls, new nodes' hellos)
SPARE_THREADS = 16


def worker_threads(nodes: int, per_node: int = CALLS_PER_NODE) -> int:
    """Threads for a server of ``nodes`` allow-listed nodes: each node's share, plus spares.

    Threads are started only when calls need them, so a large bound costs nothing idle.
    """
    return max(32, nodes * per_node + SPARE_THREADS)


class CallLimiter:
    """Counts each node's calls in progress; :meth:`enter` refuses one over the limit."""

    def __init__(self, per_node: int = CALLS_PER_NODE) -> None:
        if per_node < 1:
            raise ValueError(f"per_node must be >= 1, got {per_node}")
        self.per_node = per_node
        self._active: Counter[str] = Counter()
        self._lock = threading.Lock()

    def enter(self, node: str) -> bool:
        """Take a slot for a call of ``node``; False (nothing taken) if it has none left."""
        with self._lock:
            if self._active[node] >= self.per_node:
                return False
            self._active[node] += 1
            return True

    def leave(self, node: str) -> None:
        """Give back the slot a call of ``node`` took."""
        with self._lock:
            self._active[node] -= 1
            if self._active[node] <= 0:
                del self._active[node]

    def active(self, node: str) -> int:
        """Calls of ``node`` in progress."""
        with self._lock:
            return self._active[node]
