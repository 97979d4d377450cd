"""One run's Grid over the fleet: batches in task order, and push/pull for async workflows.

The run manager opens a :class:`FleetGrid` per run and closes it when the
run's program returns, which withdraws every task it pushed that is still
queued or running, so a finished run leaves nothing behind in the fleet.
While the run's program waits for nodes, :meth:`FleetGrid.waiting` says for
whom and for how long (``run show`` reports it to the coordinator).

A run may be given the nodes it runs on (``POST /api/v1/runs`` with ``"nodes"``):
its grid then shows only those nodes to the run's program, waits only for them,
and never sends a task to another (such a task fails at once, as to an offline
node), whatever the program asks.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

from consortium.core.message import Message
from consortium.server.fleet import Fleet
from consortium.server.fleet_replies import ReplyBuffers
from consortium.server.fleet_state import Hold, Queued, Release, call_release

#: Waiting.stage: the run waits for enough nodes to be online (``wait_for_nodes``)
NODES = "nodes"
#: Waiting.stage: the run waits for the replies of tasks it sent
REPLIES = "replies"


@dataclass(frozen=True, slots=True)
class Waiting:
    """A run waiting for nodes: who is missing, who is online, since how long."""

    #: NODES or REPLIES
    stage: str
    #: nodes the wait asks for (online ones for NODES; replies of the batch for REPLIES)
    needed: int
    #: for NODES, the allow-listed or known nodes not online (offline, or never
    #: connected); for REPLIES, the nodes whose reply has not arrived
    missing: tuple[str, ...]
    online: tuple[str, ...]
    #: seconds since the wait began
    seconds: float

    def as_dict(self) -> dict[str, object]:
        """The JSON shape (``run show``'s ``waiting``)."""
        return {
            "stage": self.stage,
            "needed": self.needed,
            "missing": list(self.missing),
            "online": list(self.online),
            "seconds": round(self.seconds, 1),
        }


class FleetGrid:
    """A :class:`~consortium.core.grid.Grid` for one run over a deployment's :class:`Fleet`."""

    def __init__(self, fleet: Fleet, nodes: Collection[str] | None = None) -> None:
        self.fleet = fleet
        #: the only nodes this run may use (None: every node of the fleet)
        self.chosen = frozenset(nodes) if nodes is not None else None
        #: (nodes needed, when the wait began) while wait_for_nodes blocks; read by
        #: other threads (``run show``), hence the lock
        self._wait: tuple[int, float] | None = None
        #: (the task ids of the last batch sent, when it was sent)
        self._batch: tuple[tuple[str, ...], float] | None = None
        self._wait_lock = threading.Lock()
        self._inbox: queue.Queue[Queued] = queue.Queue()
        self._in_flight: set[str] = set()
        #: the transport's hold on the reply pulled last; let go at the next pull
        self._held: Release | None = None

    def node_ids(self) -> list[str]:
        return self._mine(self.fleet.node_ids())

    def _mine(self, nodes: list[str]) -> list[str]:
        return nodes if self.chosen is None else [n for n in nodes if n in self.chosen]

    def wait_for_nodes(self, count: int, timeout: float) -> list[str]:
        if self.chosen is not None and count > len(self.chosen):
            # more than were chosen can never be online: the program decides at once
            return self.node_ids()
        with self._wait_lock:
            self._wait = (count, self.fleet.now())
        try:
            return self.fleet.wait_for_nodes(count, timeout, among=self.chosen)
        finally:
            with self._wait_lock:
                self._wait = None

    def waiting(self) -> Waiting | None:
        """Who the run is waiting for, or None when it is not waiting for nodes.

        Safe to call from any thread while the run's program runs.
        """
        with self._wait_lock:
            wait, batch = self._wait, self._batch
        online, absent = self.fleet.presence()
        online, absent = self._mine(online), self._mine(absent)
        if self.chosen is not None:  # chosen but never seen: missing too
            absent = sorted({*absent, *(self.chosen - {*online, *absent})})
        if wait is not None:
            needed, since = wait
            missing = absent
            stage = NODES
        elif batch is not None:
            ids, since = batch
            missing = self.fleet.unanswered(ids)  # empty once every task is answered or over
            if not missing:
                return None
            needed, stage = len(ids), REPLIES
        else:
            return None
        seconds = max(0.0, self.fleet.now() - since)
        return Waiting(stage, needed, tuple(missing), tuple(online), seconds)

    def send_and_receive(
        self, messages: Sequence[Message], *, timeout: float | None, hold: Hold | None = None
    ) -> Iterator[Message]:
        """See :meth:`Fleet.send_and_receive` (``hold``: the server's app process, which
        says itself when it is done with each reply)."""
        self._sent(messages)
        return self.fleet.send_and_receive(messages, timeout=timeout, among=self.chosen, hold=hold)

    def push(self, messages: Sequence[Message]) -> None:
        self._sent(messages)
        self._in_flight.update(self.fleet.enqueue(messages, self._inbox, among=self.chosen))

    def _sent(self, messages: Sequence[Message]) -> None:
        with self._wait_lock:
            ids = tuple(m.metadata.message_id for m in messages)
            self._batch = (ids, self.fleet.now())

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

    def receive_replies_into(self, run_id: str, buffers: ReplyBuffers | None) -> None:
        """See :meth:`~consortium.server.fleet_replies.ReplyIntake.receive_replies_into`."""
        self.fleet.receive_replies_into(run_id, buffers)

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
