"""What nodes send back to the fleet: replies judged against their tasks, refusals.

:class:`ReplyIntake` is the reply side of :class:`~consortium.server.fleet.Fleet`
(its base class): a reply is judged from its metadata before its bytes are
received (:meth:`ReplyIntake.admit_reply`) and again when it is handed to the
round waiting for it (:meth:`ReplyIntake.deliver`); what is refused is counted
per node and reason; a transfer that stopped moving fails its task at once; a
node of ours whose call was refused (revoked, expired, taken off the
allow-list) goes offline. Every method takes the fleet's lock.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable

from consortium.core.message import Message, Metadata
from consortium.core.protocol import ERROR_TRANSFER_STALLED
from consortium.server.fleet_state import (
    LATE,
    NodeSession,
    Release,
    Waiter,
    add_timing,
    judge_reply,
    payload_bytes,
)
from consortium.transport.refusal_gate import RefusalGate

log = logging.getLogger("consortium.server")

#: (node, kind, detail) — e.g. ("cleveland", "connected", "instance 3f2a")
EventSink = Callable[[str, str, str], None]
#: a buffer of the size asked for, or None (see ReplyIntake.receive_replies_into)
ReplyBuffers = Callable[[int], "memoryview | None"]


class ReplyIntake:
    """Replies and refusals; the state it shares with the fleet is declared below."""

    _cond: threading.Condition
    _clock: Callable[[], float]
    _events: EventSink
    _nodes: dict[str, NodeSession]
    #: task id -> the round waiting for its reply
    _pending: dict[str, Waiter]

    def __init__(self) -> None:
        #: node -> reason -> replies refused (see count_refusal)
        self._reply_refusals: dict[str, Counter[str]] = {}
        #: which refused calls are recorded as events (see refused)
        self._refusals = RefusalGate()
        #: run id -> where its replies are received (its app process's shared memory)
        self._reply_buffers: dict[str, ReplyBuffers] = {}

    def receive_replies_into(self, run_id: str, buffers: ReplyBuffers | None) -> None:
        """Receive ``run_id``'s large replies into ``buffers`` (its app process's shared
        blocks, ``sandbox/shared_blocks.py``), or no longer (None)."""
        with self._cond:
            if buffers is None:
                self._reply_buffers.pop(run_id, None)
            else:
                self._reply_buffers[run_id] = buffers

    def reply_buffer(self, run_id: str, size: int) -> memoryview | None:
        """Where to receive a reply of ``size`` bytes for ``run_id`` (None: anywhere)."""
        with self._cond:
            buffers = self._reply_buffers.get(run_id)
        return buffers(size) if buffers is not None else None

    def _go_offline(self, session: NodeSession, reason: str) -> None:
        """(Lock held.) The node gets no new tasks; the ones it has fail (the fleet's)."""
        raise NotImplementedError

    def deliver(
        self, node: str, reply: Message, on_consumed: Release | None = None
    ) -> tuple[bool, str]:
        """Hand a node's reply to the round waiting for it.

        If it is accepted, ``on_consumed`` is called exactly once, when the round
        loop is done with the reply (folded it, or the round ended without it):
        the transport keeps its receive budget until then, so replies that wait
        for the fold count against it. If not accepted, it is not called.
        """
        with self._cond:
            session = self._nodes.get(node)
            if session is not None:
                session.last_seen = self._clock()
            waiter = self._judge(node, reply.metadata, payload_bytes(reply))
            if waiter is None:
                return False, LATE
            del self._pending[reply.metadata.reply_to or ""]
            if session is not None:
                session.in_flight.discard(reply.metadata.reply_to or "")
        add_timing(reply, waiter, self._clock())
        waiter.replies.put((reply, on_consumed))
        return True, "ok"

    def admit_reply(self, node: str, meta: Metadata, size: int) -> str | None:
        """Judge a reply of ``size`` bytes from its metadata, before it is received.

        None: take it. A reason: it answers a task of the node's that is over (late
        or duplicate; the node may go on). Raises :class:`Refused` (and counts it)
        for a reply to a task never sent to this node, one whose run, round, kind
        or source differ from its task's, and one larger than its task allows.
        """
        with self._cond:
            return LATE if self._judge(node, meta, size) is None else None

    def count_refusal(self, node: str, reason: str) -> None:
        """Count a refused reply of ``node`` (``reason``: a short key, e.g. ``wrong-run``)."""
        with self._cond:
            self._reply_refusals.setdefault(node, Counter())[reason] += 1

    def transfer_stalled(self, node: str, task_id: str, reason: str) -> None:
        """``node``'s task (sent to it, or its reply) stopped moving and was cut off: the
        task fails now, so its round goes on with the others. An empty ``task_id`` (a
        reply cut off before its header named its task) fails every task of the node."""
        with self._cond:
            self._reply_refusals.setdefault(node, Counter())["stalled"] += 1
            doomed = [
                mid
                for mid, w in self._pending.items()
                if w.node == node and (mid == task_id or not task_id)
            ]
            waiters = [self._pending.pop(mid) for mid in doomed]
            session = self._nodes.get(node)
            if session is not None:
                session.in_flight.difference_update(doomed)
        for mid, waiter in zip(doomed, waiters, strict=True):
            log.warning("node %s: task %s failed: %s", node, mid, reason)
            waiter.replies.put((waiter.task.error_reply(ERROR_TRANSFER_STALLED, reason), None))

    def refusal_counts(self) -> dict[str, dict[str, int]]:
        """Replies refused so far: node -> reason -> how many (late ones as ``late``)."""
        with self._cond:
            return {n: dict(reasons) for n, reasons in self._reply_refusals.items() if reasons}

    def _judge(self, node: str, meta: Metadata, size: int) -> Waiter | None:
        """(Lock held.) See :func:`judge_reply`; counts what it refuses."""
        counts = self._reply_refusals.setdefault(node, Counter())
        waiter = self._pending.get(meta.reply_to or "")
        return judge_reply(node, meta, size, waiter, self._nodes.get(node), counts)

    def refused(self, node: str | None, peer: str, reason: str) -> None:
        """A call was refused. A node of ours refused now (revoked, expired, taken off
        the allow-list) cannot answer its tasks: it goes offline and they fail at
        once, so the round goes on with the others instead of waiting for its
        heartbeat timeout. Recorded as a ``refused`` event (the same caller and
        reason at most once a minute: a refused node keeps retrying)."""
        lost = False
        who = node or peer
        with self._cond:
            session = self._nodes.get(node) if node is not None else None
            if session is not None and session.online:
                self._go_offline(session, f"node refused: {reason}")
                lost = True
            record = self._refusals.admit(who, reason, self._clock()) or lost
        if lost:
            log.warning("node %s is offline: refused (%s); its tasks fail now", node, reason)
        if record:
            self._events(who, "refused", reason)
