"""What the fleet keeps per node and per round: sessions, tasks awaiting replies,
the payload a round's tasks share, and the iterator a round's replies come from."""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field

from consortium.core.message import TIMING_RECORD, Message
from consortium.core.protocol import TIMING_TRAIN, TIMING_UPLOAD, TIMING_WAIT
from consortium.transport.chunks import ReceiveBudget

#: Called once the round loop is done with an accepted reply (see :meth:`Fleet.deliver`).
Release = Callable[[], None]
#: A reply waiting for the round loop, with what to call once it is consumed.
Queued = tuple[Message, Release | None]


@dataclass(slots=True)
class NodeSession:
    """A node the fleet has heard from: liveness and the tasks queued for it."""

    name: str
    instance_id: str = ""
    online: bool = True
    last_seen: float = 0.0
    tasks: deque[tuple[str, list[bytes | bytearray | memoryview]]] = field(default_factory=deque)
    in_flight: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Waiter:
    """A task sent to a node whose reply the round is waiting for."""

    node: str
    #: the task's metadata only: its model lives in the queued parts while they are sent
    task: Message
    replies: queue.Queue[Queued]
    queued_at: float = 0.0
    pulled_at: float | None = None


class Outgoing:
    """The payload a round's tasks share (the model), counted once in the transfer
    budget while at least one node is being sent it. Tasks queued but not pulled
    yet do not count: a node slow to ask for its task must not hold up the
    replies of the others."""

    def __init__(self, budget: ReceiveBudget) -> None:
        self._budget = budget
        self._sending: set[str] = set()
        self.nbytes = 0

    def add(self, message: Message) -> None:
        self.nbytes = max(self.nbytes, payload_bytes(message))

    def started(self, message_id: str) -> None:
        if not self._sending and self.nbytes:
            self._budget.hold_outgoing(self.nbytes)
        self._sending.add(message_id)

    def done(self, message_id: str) -> None:
        if message_id in self._sending:
            self._sending.discard(message_id)
            if not self._sending and self.nbytes:
                self._budget.release_outgoing(self.nbytes)


class RoundReplies(Iterator[Message]):
    """The replies of one round's tasks. Closing it, exhausting it or dropping it
    ends the round: unanswered tasks are withdrawn, unconsumed replies released."""

    def __init__(self, replies: Generator[Message, None, None], end: Callable[[], None]) -> None:
        self._gen, self._end = replies, end
        self._closed = False

    def __next__(self) -> Message:
        try:
            return next(self._gen)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._gen.close()
            self._end()

    def __del__(self) -> None:
        self.close()


def consume(item: Queued) -> Iterator[Message]:
    """Yield the reply; release it once the consumer is back (or gone)."""
    message, release = item
    del item
    try:
        yield message
    finally:
        del message
        call_release(release)


def call_release(release: Release | None) -> None:
    """Call ``release`` if there is one."""
    if release is not None:
        release()


def payload_bytes(message: Message) -> int:
    """Bytes of the arrays a message carries."""
    if message.content is None:
        return 0
    return sum(a.nbytes for a in message.content.arrays.values())


def add_timing(reply: Message, waiter: Waiter, now: float) -> None:
    """Split the task's time into waiting (queued, not yet pulled), training and upload."""
    if reply.content is None or waiter.pulled_at is None:
        return
    timing = dict(reply.content.metrics.get(TIMING_RECORD, {}))
    train = float(timing.get(TIMING_TRAIN, 0.0))
    timing[TIMING_WAIT] = waiter.pulled_at - waiter.queued_at
    timing[TIMING_UPLOAD] = max(0.0, now - waiter.pulled_at - train)  # includes the download
    reply.content.metrics[TIMING_RECORD] = timing
