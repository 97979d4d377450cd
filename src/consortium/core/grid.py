"""Grid: how the server reaches nodes, whatever carries the messages."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from consortium.core.message import Message


class Grid(Protocol):
    """Sends task messages to nodes and yields their replies.

    Implemented in memory by the simulation engine and over gRPC by the
    deployment server; the round loop only ever sees this interface.
    """

    def node_ids(self) -> list[str]:
        """The nodes that can receive tasks now."""
        ...

    def send_and_receive(
        self, messages: Sequence[Message], *, timeout: float | None
    ) -> Iterator[Message]:
        """Deliver ``messages`` and yield replies as they arrive.

        A node that fails yields an error reply; a node that misses the
        ``timeout`` (seconds) yields nothing. The iterator ends when every
        message was answered or the timeout passed.
        """
        ...


class AsyncGrid(Protocol):
    """Hands tasks to nodes one at a time and returns replies as they finish.

    The asynchronous loop (FedBuff) sees only this. ``now`` is the grid's own
    clock in seconds: simulated time in simulation, wall-clock time in
    deployment; deadlines and timeouts are measured on it.
    """

    def node_ids(self) -> list[str]:
        """The nodes that can receive tasks now."""
        ...

    def submit(self, message: Message) -> None:
        """Start ``message``'s task on its destination node; returns at once."""
        ...

    def next_reply(self, timeout: float | None) -> Message | None:
        """The next reply to finish (a failed node gives an error reply).

        Returns None when nothing finished within ``timeout`` seconds of
        :meth:`now`, or at once when no task is in flight.
        """
        ...

    def now(self) -> float:
        """The grid clock, in seconds."""
        ...
