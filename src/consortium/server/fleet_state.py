"""What the fleet keeps per node and per round: sessions, tasks awaiting replies,
the payload a round's tasks share, the iterator a round's replies come from, and
the checks a node's reply must pass against the task it answers."""

from __future__ import annotations

import queue
from collections import Counter, deque
from collections.abc import Callable, Collection, Generator, Iterator, Mapping
from dataclasses import dataclass, field

from consortium.core.message import QUERY, TIMING_RECORD, Message, Metadata
from consortium.core.protocol import TIMING_TRAIN, TIMING_UPLOAD, TIMING_WAIT
from consortium.transport.chunks import Refused
from consortium.transport.receive_budget import ReceiveBudget

#: Called once the round loop is done with an accepted reply (see :meth:`Fleet.deliver`).
Release = Callable[[], None]
#: A reply waiting for the round loop, with what to call once it is consumed.
Queued = tuple[Message, Release | None]

#: Task ids remembered per node, to tell a late reply from one to a task never sent.
RECENT_TASKS = 1024
#: Why a reply to a task that is over (answered, failed, past its deadline) is not taken.
LATE = "no task is waiting for this reply (late, duplicate or unknown)"


@dataclass(frozen=True, slots=True)
class ReplyLimits:
    """How large a reply may be, from the task it answers: ``factor`` times the bytes
    of the task's arrays (its model) plus ``slack`` (the header, metrics, a little
    growth). A ``query`` task (one asking a node for a model) is bounded only by the
    server's message limit."""

    factor: float = 4.0
    slack: int = 16 * 1024 * 1024

    def max_reply_bytes(self, task: Message, message_limit: int) -> int:
        if task.metadata.kind == QUERY and payload_bytes(task) == 0:
            return message_limit
        return min(message_limit, int(self.factor * payload_bytes(task)) + self.slack)


@dataclass(slots=True)
class NodeSession:
    """A node the fleet has heard from: liveness and the tasks queued for it."""

    name: str
    instance_id: str = ""
    online: bool = True
    #: the Consortium version the node reported at hello ("" unknown)
    version: str = ""
    #: its certificate's organisation (``O=``; "" none, or --insecure)
    organisation: str = ""
    last_seen: float = 0.0
    tasks: deque[tuple[str, list[bytes | bytearray | memoryview]]] = field(default_factory=deque)
    in_flight: set[str] = field(default_factory=set)
    #: ids of the last RECENT_TASKS tasks sent to it (a dict keeps their order)
    sent: dict[str, None] = field(default_factory=dict)

    def remember(self, task_id: str) -> None:
        """Note a task sent to this node."""
        self.sent[task_id] = None
        if len(self.sent) > RECENT_TASKS:
            del self.sent[next(iter(self.sent))]


@dataclass(slots=True)
class Waiter:
    """A task sent to a node whose reply the round is waiting for."""

    node: str
    #: the task's metadata only: its model lives in the queued parts while they are sent
    task: Message
    replies: queue.Queue[Queued]
    queued_at: float = 0.0
    pulled_at: float | None = None
    #: the largest encoded reply accepted (see ReplyLimits)
    max_reply_bytes: int = 0


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


def judge_reply(
    node: str,
    meta: Metadata,
    size: int,
    waiter: Waiter | None,
    session: NodeSession | None,
    counts: Counter[str],
) -> Waiter | None:
    """``waiter`` (the open task ``meta`` answers) if ``node`` may answer it with a reply
    of ``size`` bytes; None if that task of the node's is over (counted ``late``);
    else raise :class:`Refused`, counted under its reason."""
    try:
        if waiter is None:
            task_id = meta.reply_to or ""
            if session is not None and task_id in session.sent:
                counts["late"] += 1
                return None
            raise Refused(
                f"no task {task_id[:80]!r} was sent to {node!r}: refused",
                status="FAILED_PRECONDITION",
                reason="unknown-task",
            )
        check_reply(node, meta, waiter, size)
    except Refused as exc:
        counts[exc.reason] += 1
        raise
    return waiter


def check_reply(node: str, meta: Metadata, waiter: Waiter, size: int) -> None:
    """Raise :class:`Refused` unless ``meta`` (of a reply of ``size`` bytes from ``node``)
    answers ``waiter``'s task: sent to that node, same run, round and kind."""
    task = waiter.task.metadata
    if waiter.node != node:
        raise Refused(
            f"reply to a task of {waiter.node!r} sent by {node!r}: refused",
            status="FAILED_PRECONDITION",
            reason="another-node",
        )
    checks = (
        ("src", meta.src, node, "wrong-source"),
        ("run id", meta.run_id, task.run_id, "wrong-run"),
        ("round", meta.round, task.round, "wrong-round"),
        ("kind", meta.kind, task.kind, "wrong-kind"),
    )
    for what, got, expected, reason in checks:
        if got != expected:
            raise Refused(
                f"reply to task {task.message_id} has {what} {_short(got)}, the task "
                f"has {expected!r}: refused",
                status="INVALID_ARGUMENT",
                reason=reason,
            )
    if size > waiter.max_reply_bytes:
        raise Refused(
            f"reply of {size} bytes to task {task.message_id} exceeds the {waiter.max_reply_bytes} "
            "bytes its task allows (see --reply-factor)",
            status="RESOURCE_EXHAUSTED",
            reason="too-large",
        )


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


#: takes a reply's release, to call when the consumer says it is done with the reply
Hold = Callable[[Release | None], None]


def consume(item: Queued, hold: Hold | None = None) -> Iterator[Message]:
    """Yield the reply; release it once the consumer is back (or gone), or, given
    ``hold``, hand its release to ``hold`` first: the consumer calls it when it is done
    with the reply, which may be after it asked for the next one."""
    message, release = item
    del item
    if hold is not None:
        hold(release)
        yield message
        return
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


def missing_nodes(
    sessions: Mapping[str, NodeSession],
    expected: Collection[str],
    among: Collection[str] | None,
    now: float,
) -> list[str]:
    """What a "waiting for nodes" line says is missing: each offline node (of ``among``,
    when given) with how long ago it was heard from, then the expected nodes that never
    connected (ten named at most: an allow-list may hold hundreds)."""
    offline = sorted(
        f"{n} (last seen {now - s.last_seen:.0f} s ago)"
        for n, s in sessions.items()
        if not s.online and (among is None or n in among)
    )
    never = sorted(n for n in expected if n not in sessions and (among is None or n in among))
    if never:
        more = f" and {len(never) - 10} more" if len(never) > 10 else ""
        offline.append(f"never connected: {', '.join(never[:10])}{more}")
    return offline
