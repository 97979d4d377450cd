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

Memory is shared the same way: every stream moving a model holds a chunk of
it (and gRPC a copy), so with hundreds of nodes the server would hold a model
per node. Only :data:`SENDS_AT_ONCE` tasks are sent at once (the other pulls
wait in their long-poll) and only :data:`RECEIVES_AT_ONCE` replies are read at
once (:class:`ReceiveSlots`: the other pushes wait before reading a byte,
held back by HTTP/2 flow control), fewer when the replies are model-sized
(as many as the transfer budget admits together, and the next one's first
chunk), so the server holds a few models in transit, not one per node.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from consortium.transport.chunks import CHUNK_SIZE

#: calls one node may have in progress at once: pull or push, heartbeat, one stale call
CALLS_PER_NODE = 3
#: worker threads kept for everything else (the coordinator's calls, new nodes' hellos)
SPARE_THREADS = 16
#: tasks being sent at once (each stream holds a chunk and gRPC's copy of it). With 200
#: nodes, 16 gave 11.3 s per round and 4 gave 13.5-14.5 s, at the same peak memory
#: (docs/benchmarks.md, "Fitting what is in transit to the model"). A task to a node on a
#: slow link goes in chunks of a quarter and counts as a quarter (server/fleet_slots.py)
SENDS_AT_ONCE = 16
#: ...of which model-sized ones (tasks of at least LARGE_SEND_BYTES): each stream of one
#: holds its chunk, gRPC's copy and what its window lets through, ~17 MB a node at 100M
#: parameters, which put the server's tree over 3x the model at 12 nodes
#: (docs/benchmarks.md, "One reply block"). A few at once keep the server's own memory
#: flat in the number of nodes; the others wait their turn, holding nothing. Only tasks
#: to nodes on fast links count: a slow link bounds its own download (link_rates.py)
LARGE_SENDS_AT_ONCE = 4
LARGE_SEND_BYTES = 64 * 1024 * 1024
#: replies being read at once (the first chunk of one waiting for the budget stays in
#: memory); what was read of them counts in the transfer budget
RECEIVES_AT_ONCE = 16
#: What every node's unread streams may hold in the server together: a node may send
#: this share of it on a stream before the server reads (HTTP/2 flow control)...
UNREAD_BYTES = 64 * 1024 * 1024
#: ...within these bounds: a window under ~256 KiB stalls a stream between messages; one
#: of 4 MiB keeps a large model moving as fast as 8 MiB did, and each upload waiting for
#: its turn (model-sized replies are read one at a time) holds half as much: with 8
#: nodes and a 100M model the server's tree peaked 25-40 MB lower (benchmarks/transport.py)
MIN_STREAM_WINDOW, MAX_STREAM_WINDOW = 256 * 1024, 4 * 1024 * 1024


def worker_threads(nodes: int, per_node: int = CALLS_PER_NODE) -> int:
    """Threads for a server of ``nodes`` allow-listed nodes: each node's share, plus spares.

    Threads are started only when calls need them, so a large bound costs nothing idle.
    """
    return max(32, nodes * per_node + SPARE_THREADS)


def stream_window(nodes: int, unread_bytes: int = UNREAD_BYTES) -> int:
    """The HTTP/2 window for each stream of a server of ``nodes`` allow-listed nodes.

    A push waiting for its receive slot holds what its node sent before the window
    closed: with a window of 4 MiB, 200 nodes replying together put 200 replies in
    the server's memory whatever its budget. A few nodes keep the full window.
    ``unread_bytes`` (``consortium server --unread-mb``) is what all of them together
    may hold: more memory for faster rounds when many nodes reply at once.
    """
    share = unread_bytes // max(1, nodes)
    return max(MIN_STREAM_WINDOW, min(MAX_STREAM_WINDOW, share))


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


class ReceiveSlots:
    """At most ``slots`` replies read at once, at most one per node.

    A push waits for a slot before its first byte is read: its bytes stay with
    the node (HTTP/2 flow control), not in the server. One per node, so that a
    node cannot hold several slots with pushes that go nowhere (the stall
    timeout ends those); an honest node sends its results one at a time. A reply
    the node was told to send in smaller chunks (a node on a slow link,
    :data:`~consortium.transport.link_chunks.REPLY_CHUNK_HEADER`) holds that much less
    and takes that share of a slot: four slow uploads take one.
    """

    def __init__(
        self, slots: int = RECEIVES_AT_ONCE, fitted: Callable[[], int | None] | None = None
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.slots = slots
        #: a smaller bound for the replies now expected (the transfer budget's
        #: ``reads_at_once``: large replies are read only as fast as they can be folded)
        self._fitted = fitted
        #: each node reading a reply, and the chunk size it sends it in
        self._holders: dict[str, int] = {}
        self._held = 0  # their chunks
        self._waiting = 0
        self._cond = threading.Condition()

    def acquire(
        self, node: str, alive: Callable[[], bool], poll: float = 1.0, *, chunk: int = CHUNK_SIZE
    ) -> bool:
        """Wait for room to read ``node``'s reply, sent in chunks of ``chunk`` bytes; False
        (nothing taken) once ``alive()`` is false (the call was cancelled meanwhile)."""
        with self._cond:
            self._waiting += 1
            try:
                while self._held + chunk > self._slots_now() * CHUNK_SIZE or node in self._holders:
                    if not alive():
                        return False
                    self._cond.wait(poll)
            finally:
                self._waiting -= 1
            self._holders[node] = chunk
            self._held += chunk
            return True

    def waiting(self) -> bool:
        """Whether a push waits for a slot."""
        with self._cond:
            return self._waiting > 0

    def _slots_now(self) -> int:
        bound = self._fitted() if self._fitted is not None else None
        return self.slots if bound is None else min(self.slots, bound)

    def release(self, node: str) -> None:
        with self._cond:
            self._held -= self._holders.pop(node, 0)
            self._cond.notify_all()

    def recount(self) -> None:
        """The bound on replies read at once may have grown (one was received to disk):
        the waiting pushes look again now, not at their next poll."""
        with self._cond:
            self._cond.notify_all()

    def in_use(self) -> int:
        """Replies being read."""
        with self._cond:
            return len(self._holders)
