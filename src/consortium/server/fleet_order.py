"""A round's replies in the order its tasks were sent, so that folding is deterministic.

Replies arrive in whatever order the nodes finish. :class:`TaskOrder` holds
early replies back until their predecessors are in, while they fit in a
number of bytes (held replies keep their transfer budget); past it, replies
are released in arrival order: memory stays bounded, at the cost of
bit-identity with a simulation of the same run.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Generator, Sequence

from consortium.core.message import Message
from consortium.server.fleet_state import Hold, Queued, call_release, consume, payload_bytes


class TaskOrder:
    """Orders the replies of one round's tasks ``ids`` (see the module docstring)."""

    def __init__(
        self,
        ids: Sequence[str],
        reorder_bytes: int,
        clock: Callable[[], float],
        out_of_order: Callable[[], None],
        hold: Hold | None = None,
    ) -> None:
        self.ids = list(ids)
        #: the most bytes of early replies held back
        self.reorder_bytes = reorder_bytes
        self._clock = clock
        #: called when a reply is released ahead of its predecessors
        self._out_of_order = out_of_order
        #: takes each reply's release as it is yielded (see fleet_state.consume)
        self._hold = hold

    def replies(
        self, replies: queue.Queue[Queued], deadline: float | None
    ) -> Generator[Message, None, None]:
        """Yield the replies from ``replies`` until all are in or ``deadline`` passed.

        A reply's release callback runs once the consumer asks for the next one, or,
        with ``hold``, when the consumer calls it.
        """
        position = {mid: i for i, mid in enumerate(self.ids)}
        held: dict[int, Queued] = {}
        held_bytes = 0
        next_index = 0
        received = 0
        try:
            while received < len(self.ids):
                remaining = None if deadline is None else max(0.0, deadline - self._clock())
                try:
                    got, release = replies.get(timeout=remaining)
                except queue.Empty:
                    break
                received += 1
                index = position.get(got.metadata.reply_to or "", -1)
                size = payload_bytes(got)
                now = index == next_index
                if now:
                    next_index += 1
                elif held_bytes + size <= self.reorder_bytes:
                    held[index] = (got, release)
                    held_bytes += size
                else:
                    now = True
                    self._out_of_order()
                if now:
                    yield from consume((got, release), self._hold)
                del got  # consumed: not kept alive while waiting for the next one
                while next_index in held:
                    held_bytes -= payload_bytes(held[next_index][0])
                    next_index += 1
                    yield from consume(held.pop(next_index - 1), self._hold)
            for index in sorted(held):  # deadline passed or all in: flush what arrived
                yield from consume(held.pop(index), self._hold)
        finally:
            for _, release in held.values():  # the consumer stopped early
                call_release(release)
