"""The deployment server's view of its nodes: sessions, task queues, replies, liveness.

:class:`Fleet` is both the backend of the node-facing gRPC service (nodes
pull tasks and push results through it) and the :class:`~consortium.core.grid.Grid`
the round loop drives. Tasks to one model are encoded once and shared by all
nodes. A node silent for longer than ``offline_after`` seconds is marked
offline: it gets no new tasks and its unanswered tasks fail at once, so a
round does not wait for a dead node when enough others replied; so is a node
whose call was just refused (revoked, expired, off the allow-list). Only
``sends_at_once`` tasks are being sent at any time (every download holds a
chunk and gRPC's copy of it), and of them ``large_sends_at_once`` model-sized
ones to nodes on fast links (a slow link bounds its own download: the transport
says which nodes are on one); the other nodes' pulls wait, holding nothing,
each woken only by what concerns it (a task for its node, a send slot coming
free), not all of them at every change.
Per-node and per-round bookkeeping lives in :mod:`consortium.server.fleet_state`,
the order replies are folded in in :mod:`consortium.server.fleet_order`, what
nodes send back (replies, refusals) in :mod:`consortium.server.fleet_replies`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence

from consortium.core.message import Content, Message
from consortium.core.protocol import ERROR_NODE_LOST, ERROR_NODE_OFFLINE
from consortium.core.records import RecordLimits
from consortium.server.fleet_order import TaskOrder
from consortium.server.fleet_replies import EventSink, ReplyIntake
from consortium.server.fleet_slots import SendSlots
from consortium.server.fleet_state import (
    Hold,
    NodeSession,
    Outgoing,
    Queued,
    ReplyLimits,
    RoundReplies,
    Waiter,
    call_release,
    missing_nodes,
    payload_bytes,
)
from consortium.server.heap import HeapTrimmer
from consortium.transport.fairness import LARGE_SEND_BYTES, LARGE_SENDS_AT_ONCE, SENDS_AT_ONCE
from consortium.transport.fleet_api import RunBundle
from consortium.transport.receive_budget import DEFAULT_TRANSFER_BUDGET_MB, ReceiveBudget

log = logging.getLogger("consortium.server")

#: seconds between "waiting for nodes" log lines (the default)
WAIT_LOG_EVERY = 10.0


class Fleet(ReplyIntake):
    """Connected nodes and the tasks between them and the round loop (the replies they
    send back: :class:`~consortium.server.fleet_replies.ReplyIntake`)."""

    def __init__(
        self,
        *,
        heartbeat_interval: float = 2.0,
        offline_after: float = 6.0,
        max_message_bytes: int = 16 * 1024**3,
        events: EventSink | None = None,
        bundles: Callable[[str, str], RunBundle | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        reorder_budget: int = 256 * 1024**2,
        transfer_budget: int = DEFAULT_TRANSFER_BUDGET_MB * 1024**2,
        reply_limits: ReplyLimits | None = None,
        record_limits: RecordLimits | None = None,
        wait_log_every: float = WAIT_LOG_EVERY,
        expected: Collection[str] = (),
        sends_at_once: int = SENDS_AT_ONCE,
        large_sends_at_once: int = LARGE_SENDS_AT_ONCE,
        large_send_bytes: int = LARGE_SEND_BYTES,
        heap: HeapTrimmer | None = None,
    ) -> None:
        super().__init__()
        self.heartbeat_interval = heartbeat_interval
        #: nodes that may join (the allow-list): missing while not online, even if never seen
        self.expected = frozenset(expected)
        #: seconds between "waiting for nodes" log lines
        self.wait_log_every = wait_log_every
        self.offline_after = offline_after
        self.max_message_bytes = max_message_bytes
        self._events = events or (lambda node, kind, detail: None)
        self._bundles = bundles
        self._clock = clock
        self.reorder_budget = reorder_budget
        self.transfer_budget = ReceiveBudget(transfer_budget)
        #: how large a reply may be, from its task
        self.reply_limits = reply_limits or ReplyLimits()
        #: what the Config and Metrics records of a node's message may hold
        self.record_limits = record_limits or RecordLimits()
        #: task id -> the payload it shares with the other tasks of its round
        self._outgoing: dict[str, Outgoing] = {}
        self._warned_order = False
        self._lock = threading.RLock()
        #: fleet-wide changes (who is online): wait_for_nodes waits on it
        self._cond = threading.Condition(self._lock)
        #: tasks sent at once; the other nodes' pulls wait (holding no memory) for a slot
        self._slots = SendSlots(self._lock, sends_at_once, large_sends_at_once, large_send_bytes)
        self._nodes: dict[str, NodeSession] = {}
        self._pending: dict[str, Waiter] = {}
        #: gives freed heap back to the system from the liveness watch (the server's only)
        self._heap = heap
        self._stop = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name="fleet-liveness", daemon=True)
        self._monitor.start()

    def set_bundles(self, bundles: Callable[[str, str], RunBundle | None]) -> None:
        """Where run bundles come from (the run manager, created after the fleet)."""
        self._bundles = bundles

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
            self._slots.wake_everyone()

    # -- FleetBackend -------------------------------------------------------------
    def hello(
        self, node: str, instance_id: str, *, version: str = "", organisation: str = ""
    ) -> None:
        with self._cond:
            session = self._nodes.get(node)
            restarted = session is not None and session.instance_id != instance_id
            if session is None:
                session = self._nodes[node] = NodeSession(node)
            if restarted:
                # a new process cannot answer what the old one was working on
                self._fail_node_tasks(session, "the node restarted before replying")
            session.instance_id = instance_id
            session.version, session.organisation = version, organisation
            session.online = True
            session.last_seen = self._clock()
            self._cond.notify_all()
            self._slots.wake(node)
        log.info("node %s connected (instance %s)", node, instance_id[:8])
        self._events(node, "restarted" if restarted else "connected", instance_id)

    def heartbeat(self, node: str) -> bool:
        with self._cond:
            session = self._nodes.get(node)
            if session is None:
                return False
            session.last_seen = self._clock()
            if not session.online:
                session.online = True
                log.info("node %s is back online", node)
            return True

    def next_task(
        self, node: str, wait: float, *, slow_link: bool = False
    ) -> tuple[str, list[bytes | bytearray | memoryview]] | None:
        deadline = self._clock() + wait
        with self._cond:
            cond = self._slots.condition(node)
            while True:
                session = self._nodes.get(node)
                if session is not None:
                    session.last_seen = self._clock()
                    # every node's stream holds a copy of the chunk being sent: with
                    # hundreds of nodes pulling at once, the rest wait for a free slot
                    size = _payload_bytes(session.tasks[0][1]) if session.tasks else 0
                    if session.tasks and self._slots.full(size, slow_link):
                        self._slots.wait_turn(node, size, slow_link)  # woken when there is room
                    elif session.tasks:
                        message_id, parts = session.tasks.popleft()
                        self._slots.start(node, message_id, size, slow_link)
                        session.in_flight.add(message_id)
                        shared = self._outgoing.get(message_id)
                        if shared is not None:
                            shared.started(message_id)
                        waiter = self._pending.get(message_id)
                        if waiter is not None:
                            waiter.pulled_at = self._clock()
                        return message_id, parts
                remaining = deadline - self._clock()
                if remaining <= 0 or self._stop.is_set():
                    self._slots.leave(node)
                    return None
                # every change a pull waits for wakes it; the bound is a safety net only
                cond.wait(min(remaining, 1.0))

    def tasks_waiting(self) -> bool:
        with self._cond:
            return self._slots.any_waiting()

    def task_sent(self, message_id: str) -> None:
        with self._cond:
            self._done_sending(message_id)
            self._slots.end(message_id, self._has_tasks)

    def task_crawls(self, message_id: str) -> None:
        with self._cond:
            self._slots.crawls(message_id, self._has_tasks)

    def _has_tasks(self, node: str) -> bool:
        """(Lock held.) Whether ``node`` has tasks queued (not failed or ended)."""
        session = self._nodes.get(node)
        return session is not None and bool(session.tasks)

    def task_wanted(self, message_id: str) -> bool:
        with self._cond:
            return message_id in self._pending

    def run_bundle(self, node: str, run_id: str) -> RunBundle | None:
        return self._bundles(node, run_id) if self._bundles is not None else None

    # -- Grid ---------------------------------------------------------------------
    def node_ids(self) -> list[str]:
        with self._cond:
            return sorted(n for n, s in self._nodes.items() if s.online)

    def identities(self) -> dict[str, tuple[str, str]]:
        """node -> (version, organisation) of each node heard from since the server
        started ("" where unknown)."""
        with self._cond:
            return {n: (s.version, s.organisation) for n, s in self._nodes.items()}

    def heard_ago(self) -> dict[str, float]:
        """node -> seconds since the server last heard from it (this server's run)."""
        with self._cond:
            now = self._clock()
            return {n: max(0.0, now - s.last_seen) for n, s in self._nodes.items()}

    def presence(self) -> tuple[list[str], list[str]]:
        """(online, missing): the nodes online now, and the expected or known ones that
        are not (offline, or never connected), each sorted."""
        with self._cond:
            online = {n for n, s in self._nodes.items() if s.online}
            known = self.expected | self._nodes.keys()
        return sorted(online), sorted(known - online)

    def unanswered(self, message_ids: Collection[str]) -> list[str]:
        """The nodes whose task among ``message_ids`` still awaits its reply, sorted."""
        with self._cond:
            return sorted({w.node for mid in message_ids if (w := self._pending.get(mid))})

    def wait_for_nodes(
        self, count: int, timeout: float, *, among: Collection[str] | None = None
    ) -> list[str]:
        """Block until at least ``count`` nodes (of ``among``, when given: a run's chosen
        nodes) are online, or ``timeout``; while it waits, log every ``wait_log_every``
        seconds who is online and who is not."""
        start = self._clock()
        deadline = start + timeout
        next_log = start + self.wait_log_every
        with self._cond:
            while True:
                online = sorted(
                    n for n, s in self._nodes.items() if s.online and (among is None or n in among)
                )
                now = self._clock()
                if len(online) >= count or now >= deadline or self._stop.is_set():
                    return online
                if now >= next_log:
                    next_log = now + self.wait_log_every
                    offline = missing_nodes(self._nodes, self.expected, among, now)
                    log.info(
                        "waiting for %d node(s): %d online (%s), offline: %s; waited %.0f s, "
                        "giving up in %.0f s",
                        count, len(online), ", ".join(online) or "none",
                        ", ".join(offline) or "none known", now - start, deadline - now,
                    )  # fmt: skip
                self._cond.wait(max(0.0, min(1.0, deadline - now, next_log - now)))

    def send_and_receive(
        self,
        messages: Sequence[Message],
        *,
        timeout: float | None,
        among: Collection[str] | None = None,
        hold: Hold | None = None,
    ) -> Iterator[Message]:
        """Queue the tasks now; the returned iterator yields the replies in task order.

        A reply's transfer budget goes from in flight to retained (see
        :class:`~consortium.transport.receive_budget.ReceiveBudget`) once the caller
        asks for the next one, or, with ``hold``, which takes each reply's release as
        it is yielded, when the caller calls that release."""
        replies: queue.Queue[Queued] = queue.Queue()
        ids = self.enqueue(messages, replies, among=among)
        deadline = None if timeout is None else self._clock() + timeout
        model = max((payload_bytes(m) for m in messages), default=0)
        order = TaskOrder(ids, self._reorder_bytes(model), self._clock, self._order_warning,
                          hold)  # fmt: skip
        return RoundReplies(order.replies(replies, deadline), lambda: self._end_round(ids, replies))

    def _reorder_bytes(self, model: int) -> int:
        """Bytes of early replies a round may hold back to fold in task order. Held replies
        count in the transfer budget, which must still admit the next reply beside them,
        the model being sent and the running sum: else the reply the round waits for
        could wait for budget held by the replies waiting for it."""
        return max(0, min(self.reorder_budget, self.transfer_budget.limit - 3 * model))

    def _order_warning(self) -> None:
        if not self._warned_order:
            log.info("replies too large to reorder; folding in arrival order")
            self._warned_order = True

    def enqueue(
        self,
        messages: Sequence[Message],
        replies: queue.Queue[Queued],
        *,
        among: Collection[str] | None = None,
    ) -> list[str]:
        """Queue each message for its node; replies (or error replies for nodes that are
        offline or lost, or not ``among`` the run's chosen nodes) go to ``replies`` as they
        arrive. Returns the task ids.

        Each task's model is encoded once into parts shared by all nodes and held
        only by the queued parts: once every node has been sent its task, the
        fleet holds no reference to the model.
        """
        cache: dict[int, list[bytes | memoryview]] = {}
        ids = []
        shared = Outgoing(self.transfer_budget)
        with self._cond:
            for msg in messages:
                node = msg.metadata.dst
                session = self._nodes.get(node)
                ids.append(msg.metadata.message_id)
                if among is not None and node not in among:  # never sent: not chosen
                    why = f"node {node!r} is not one of the nodes chosen for this run"
                    replies.put((msg.error_reply(ERROR_NODE_OFFLINE, why), None))
                    continue
                if session is None or not session.online:
                    error = msg.error_reply(ERROR_NODE_OFFLINE, f"node {node!r} is offline")
                    replies.put((error, None))
                    continue
                stub = Message(msg.metadata, content=Content())  # for error replies; no model
                self._pending[msg.metadata.message_id] = Waiter(
                    node,
                    stub,
                    replies,
                    queued_at=self._clock(),
                    max_reply_bytes=self.reply_limits.max_reply_bytes(msg, self.max_message_bytes),
                )
                session.remember(msg.metadata.message_id)
                session.tasks.append((msg.metadata.message_id, msg.to_parts(cache)))
                shared.add(msg)
                self._outgoing[msg.metadata.message_id] = shared
                self._slots.wake(node)
        if shared.nbytes:
            self.transfer_budget.fit(shared.nbytes)
        return ids

    def now(self) -> float:
        return self._clock()

    # -- internals ----------------------------------------------------------------
    def _end_round(self, message_ids: list[str], replies: queue.Queue[Queued]) -> None:
        """The round is over: forget its tasks; release replies nobody will consume."""
        self.cancel(message_ids)
        while True:
            try:
                _, release = replies.get_nowait()
            except queue.Empty:
                return
            call_release(release)

    def cancel(self, message_ids: list[str]) -> None:
        """Forget tasks whose round is over (answered, failed or past the deadline).
        Streams still sending one of them stop at their next chunk."""
        wanted = set(message_ids)
        with self._cond:
            for mid in message_ids:
                self._pending.pop(mid, None)
            for session in self._nodes.values():
                if session.tasks:
                    for mid, _ in session.tasks:
                        if mid in wanted:
                            self._done_sending(mid)  # never pulled: never sent
                    session.tasks = deque(t for t in session.tasks if t[0] not in wanted)
                session.in_flight -= wanted

    def _done_sending(self, message_id: str) -> None:
        """(Lock held.) One task fewer is holding its round's payload."""
        shared = self._outgoing.pop(message_id, None)
        if shared is not None:
            shared.done(message_id)

    def _go_offline(self, session: NodeSession, reason: str) -> None:
        """(Lock held.) The node gets no new tasks; the ones it has fail with ``reason``."""
        session.online = False
        self._fail_node_tasks(session, reason)
        self._cond.notify_all()

    def _fail_node_tasks(self, session: NodeSession, reason: str) -> None:
        """(Lock held.) Fail every task queued for or running on ``session``."""
        doomed = [mid for mid, w in self._pending.items() if w.node == session.name]
        for mid in doomed:
            waiter = self._pending.pop(mid)
            waiter.replies.put((waiter.task.error_reply(ERROR_NODE_LOST, reason), None))
        for mid, _ in session.tasks:
            self._done_sending(mid)
        session.tasks.clear()
        session.in_flight.clear()

    def _watch(self) -> None:
        while not self._stop.wait(min(0.5, self.offline_after / 4)):
            if self._heap is not None:
                self._heap.maybe_trim()
            now = self._clock()
            lost = []
            with self._cond:
                for session in self._nodes.values():
                    if session.online and now - session.last_seen > self.offline_after:
                        self._go_offline(
                            session, f"no heartbeat for {self.offline_after:.0f} s: node offline"
                        )
                        lost.append(session.name)
            for node in lost:
                log.warning(
                    "node %s is offline (no heartbeat for %.1f s)", node, self.offline_after
                )
                self._events(node, "offline", "heartbeat timeout")


def _payload_bytes(parts: list[bytes | bytearray | memoryview]) -> int:
    """The bytes a task's encoded parts hold."""
    return sum(part.nbytes if isinstance(part, memoryview) else len(part) for part in parts)
