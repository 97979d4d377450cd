"""One run's Grid over the fleet: batches in task order, and push/pull for async workflows.

The run manager opens a :class:`FleetGrid` per run and closes it when the
run's program returns, which withdraws every task it pushed that is still
queued or running, so a finished run leaves nothing behind in the fleet.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator, Sequence

from consortium.core.message import Message
from consortium.server.fleet import Fleet
from consortium.server.fleet_state import Queued, Release, call_release


class FleetGrid:
    """A :class:`~consortium.core.grid.Grid` for one run over a deployment's :class:`Fleet`."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._inbox: queue.Queue[Queued] = queue.Queue()
        self._in_flight: set[str] = set()
        #: the transport's hold on the reply pulled last; let go at the next pull
        self._held: Release | None = None

    def node_ids(self) -> list[str]:
        return self.fleet.node_ids()

    def wait_for_nodes(self, count: int, timeout: float) -> list[str]:
        return self.fleet.wait_for_nodes(count, timeout)

    def send_and_receive(
        self, messages: Sequence[Message], *, timeout: float | None
    ) -> Iterator[Message]:
        return self.fleet.send_and_receive(messages, timeout=timeout)

    def push(self, messages: Sequence[Message]) -> None:
        self._in_flight.update(self.fleet.enqueue(messages, self._inbox))

    def pull(self, timeout: float | None) -> Message | None:
        """The next pushed task's reply to arrive (the previous one's memory is let go)."""
        self._let_go()
        if not self._in_flight:
            return None
        try:
            reply, release = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None
        self._in_flight.discard(reply.metadata.reply_to or "")
        self._held = release
        return reply

    def now(self) -> float:
        return self.fleet.now()

    def close(self) -> None:
        """Withdraw the pushed tasks still out; let go of replies nobody will pull."""
        self._let_go()
        self.fleet.cancel(sorted(self._in_flight))
        self._in_flight.clear()
        while True:
            try:
                _, release = self._inbox.get_nowait()
            except queue.Empty:
                return
            call_release(release)

    def _let_go(self) -> None:
        held, self._held = self._held, None
        call_release(held)
