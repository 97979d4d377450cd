"""The server side of PSI: :func:`run_psi`, a workflow over the Grid that a ServerApp main calls.

The server only relays: it asks each party for its blinded points, hands them
to the party that blinds them a second time, and hands the results on. It
needs no key and no crypto library, never holds an id, and cannot undo a
blinding. Every batch of points travels in chunks of at most ``chunk_size``
rows (one grid round trip each), so no message is larger than the deployment's
reply allowance. The steps, for a hub H (the label holder) and peers P:

1. ``psi.start`` to every party: each reads its ids, draws a key and a shuffle;
2. H's set, chunk by chunk: H sends ``kH*h``, every P blinds it (``psi.blind``)
   into ``kP*kH*h`` in the same order, which goes back to H (``psi.hub.double``);
3. each P's set, chunk by chunk: P sends ``kP*p`` and H blinds and matches it
   (``psi.hub.match``): ``kH*kP*p == kP*kH*h`` exactly when ``p == h``;
4. ``psi.hub.finish``: H keeps the rows shared with every P, and for each P the
   positions (in P's shuffled order) of those rows, which the server relays to
   P (``psi.hub.result`` then ``psi.deliver``). Each party sorts the shared ids:
   that is the aligned order, the same everywhere.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from consortium.core.arrays import Arrays
from consortium.core.errors import ConfigError, NodeError, RoundFailed, SecurityError
from consortium.core.grid import Grid
from consortium.core.message import Content, Message
from consortium.core.records import Config
from consortium.vertical.psi_protocol import (
    COUNT,
    DEFAULT_CHUNK,
    HUB,
    KIND_BLIND,
    KIND_DELIVER,
    KIND_HUB_DOUBLE,
    KIND_HUB_FINISH,
    KIND_HUB_MATCH,
    KIND_HUB_RESULT,
    KIND_SEND,
    KIND_START,
    MAX_CHUNK,
    OFFSET,
    PAYLOAD,
    PEER,
    PEERS,
    POINT_BYTES,
    POINTS,
    POSITIONS,
    ROLE,
    ROLE_HUB,
    ROLE_PARTY,
    SESSION,
    SIZE,
    TAG,
    TOTAL,
)

__all__ = ["PsiSummary", "run_psi"]

log = logging.getLogger("consortium.vertical.psi")


@dataclass(frozen=True, slots=True)
class PsiSummary:
    """What the server learns from a PSI session: sizes, never ids."""

    session: str
    hub: str
    parties: tuple[str, ...]
    #: how many distinct ids each party brought
    sizes: dict[str, int]
    #: how many ids every party shares
    intersection: int
    #: encoded bytes of the messages the server sent and received
    bytes_sent: int = 0
    bytes_received: int = 0
    #: grid round trips (``send_and_receive`` batches)
    round_trips: int = 0
    seconds: float = 0.0
    #: bytes received from each party
    bytes_from: dict[str, int] = field(default_factory=dict)
    #: whether the hub tagged the result (the parties share a ``psi-secret``: each peer
    #: checked that what it kept is what the hub kept)
    tagged: bool = False


class _Relay:
    """Sends batches of PSI tasks, checks every reply arrived without error, counts bytes."""

    def __init__(self, grid: Grid, run_id: str, step: int, session: str, timeout: float | None):
        self.grid, self.run_id, self.step = grid, run_id, step
        self.session, self.timeout = session, timeout
        self.sent = self.received = self.trips = 0
        self.received_from: dict[str, int] = {}

    def task(self, dst: str, kind: str, config: Config, arrays: Arrays | None = None) -> Message:
        content = Content(
            arrays={PAYLOAD: arrays} if arrays is not None else {},
            configs={"config": {SESSION: self.session, **config}},
        )
        return Message.create(
            run_id=self.run_id, dst=dst, round=self.step, kind=kind, content=content
        )

    def ask(self, tasks: list[Message]) -> list[Message]:
        """The replies to ``tasks``, in task order; raises if one failed or is missing.

        At most one task per node: a simulation with several workers runs the tasks of
        one batch at once, and two tasks of one node would race on its state."""
        if len({t.metadata.dst for t in tasks}) != len(tasks):
            raise AssertionError("a PSI batch sends a node two tasks")
        self.trips += 1
        self.sent += sum(_size(t) for t in tasks)
        by_task = {
            r.metadata.reply_to: r for r in self.grid.send_and_receive(tasks, timeout=self.timeout)
        }
        replies = []
        for t in tasks:
            reply = by_task.get(t.metadata.message_id)
            node, kind = t.metadata.dst, t.metadata.kind
            if reply is None:
                raise RoundFailed(
                    f"PSI session {self.session}: node {node!r} did not answer {kind}"
                )
            if reply.error is not None or reply.content is None:
                reason = reply.error.reason if reply.error is not None else "no content"
                code = reply.error.code if reply.error is not None else ""
                raise NodeError(
                    f"PSI session {self.session}: node {node!r} failed {kind}: {code}: {reason}",
                    node_id=node,
                    remote_traceback=reply.error.traceback if reply.error is not None else "",
                )
            size = _size(reply)
            self.received += size
            self.received_from[node] = self.received_from.get(node, 0) + size
            replies.append(reply)
        return replies


def run_psi(
    grid: Grid,
    *,
    run_id: str,
    parties: Sequence[str],
    hub: str | None = None,
    timeout: float | None = 600.0,
    chunk_size: int = DEFAULT_CHUNK,
    step: int = 0,
    session: str | None = None,
) -> PsiSummary:
    """Run one PSI session between ``parties`` (node ids; two or more) through ``grid``.

    ``hub`` (default: the first party; in vertical learning, the label holder)
    matches every other party's set against its own. Each party ends with the
    ids shared by all, in one order common to all, kept in its node state
    (:func:`~consortium.vertical.aligned_rows`). ``timeout`` bounds each grid
    round trip, in seconds; ``step`` is the round number the tasks carry;
    ``chunk_size`` the most points a message carries. Raises
    :class:`~consortium.core.errors.NodeError` when a party refuses or fails a
    step and :class:`~consortium.core.errors.RoundFailed` when one does not answer.
    """
    members = list(parties)
    hub = members[0] if hub is None and members else hub
    if len(members) < 2 or len(set(members)) != len(members):
        raise ConfigError(f"parties must be two or more distinct node ids, got {members!r}")
    if hub not in members:
        raise ConfigError(f"hub {hub!r} is not one of the parties {members!r}")
    if isinstance(chunk_size, bool) or not 1 <= chunk_size <= MAX_CHUNK:
        raise ConfigError(f"chunk_size must be in [1, {MAX_CHUNK}], got {chunk_size!r}")
    assert hub is not None
    peers = [p for p in members if p != hub]
    name = session or secrets.token_hex(8)
    relay = _Relay(grid, run_id, step, name, timeout)
    started = time.perf_counter()

    # 1. every party reads its ids and draws its key
    tasks = [relay.task(hub, KIND_START, {ROLE: ROLE_HUB, HUB: hub, PEERS: list(peers)})]
    tasks += [relay.task(p, KIND_START, {ROLE: ROLE_PARTY, HUB: hub}) for p in peers]
    sizes = {r.metadata.src: _int(r, SIZE) for r in relay.ask(tasks)}
    sizes = {p: sizes[p] for p in members}
    log.info("PSI session %s: sizes %s", name, sizes)

    # 2. the hub's set, blinded by every peer, back to the hub
    for offset, count in _chunks(sizes[hub], chunk_size):
        (reply,) = relay.ask([relay.task(hub, KIND_SEND, {OFFSET: offset, COUNT: count})])
        points = _points(reply, count)
        blinded = relay.ask(
            [relay.task(p, KIND_BLIND, {OFFSET: offset, TOTAL: sizes[hub]},
                        Arrays({POINTS: points}))
             for p in peers]
        )  # fmt: skip
        for p, r in zip(peers, blinded, strict=True):
            points = _points(r, count)
            relay.ask([relay.task(hub, KIND_HUB_DOUBLE, {PEER: p, OFFSET: offset},
                                  Arrays({POINTS: points}))])  # fmt: skip

    # 3. every peer's set, matched by the hub
    chunked = {p: _chunks(sizes[p], chunk_size) for p in peers}
    for index in range(max(len(c) for c in chunked.values())):
        due = [(p, chunked[p][index]) for p in peers if index < len(chunked[p])]
        sent = relay.ask([relay.task(p, KIND_SEND, {OFFSET: o, COUNT: c}) for p, (o, c) in due])
        for (p, (o, c)), r in zip(due, sent, strict=True):
            points = _points(r, c)
            relay.ask([relay.task(hub, KIND_HUB_MATCH, {PEER: p, OFFSET: o, TOTAL: sizes[p]},
                                  Arrays({POINTS: points}))])  # fmt: skip

    # 4. the hub keeps its rows; each peer gets the positions of its own
    (finish,) = relay.ask([relay.task(hub, KIND_HUB_FINISH, {})])
    shared = _int(finish, SIZE)
    assert finish.content is not None
    tag = finish.content.config.get(TAG, "")
    if not isinstance(tag, str) or len(tag) > 128:
        raise SecurityError(f"hub {hub!r} answered {TAG}={tag!r}")
    for offset, count in _chunks(shared, chunk_size):
        if shared:
            asks = [relay.task(hub, KIND_HUB_RESULT, {PEER: p, OFFSET: offset, COUNT: count})
                    for p in peers]  # fmt: skip
            parts = [_positions(relay.ask([a])[0], count) for a in asks]
        else:
            parts = [np.zeros(0, np.int64) for _ in peers]
        relay.ask(
            [relay.task(p, KIND_DELIVER, {OFFSET: offset, TOTAL: shared, TAG: tag},
                        Arrays({POSITIONS: part}))
             for p, part in zip(peers, parts, strict=True)]
        )  # fmt: skip
    summary = PsiSummary(
        session=name, hub=hub, parties=tuple(members), sizes=sizes, intersection=shared,
        bytes_sent=relay.sent, bytes_received=relay.received, round_trips=relay.trips,
        seconds=time.perf_counter() - started, bytes_from=dict(relay.received_from),
        tagged=bool(tag),
    )  # fmt: skip
    log.info("PSI session %s: %d shared ids, %d round trips, %.1f MB relayed", name, shared,
             relay.trips, (relay.sent + relay.received) / 1e6)  # fmt: skip
    return summary


def _chunks(total: int, size: int) -> list[tuple[int, int]]:
    """(offset, count) of each chunk; one empty chunk for an empty set (the receiver must
    still hear that the stream is complete)."""
    if total == 0:
        return [(0, 0)]
    return [(o, min(size, total - o)) for o in range(0, total, size)]


def _size(msg: Message) -> int:
    return sum(memoryview(p).nbytes for p in msg.to_parts())


def _int(reply: Message, key: str) -> int:
    assert reply.content is not None
    value = reply.content.config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SecurityError(f"node {reply.metadata.src!r} answered {key}={value!r}")
    return value


def _points(reply: Message, count: int) -> NDArray[np.uint8]:
    assert reply.content is not None
    record = reply.content.arrays.get(PAYLOAD)
    points = record.get(POINTS) if record is not None else None
    if points is None or points.dtype != np.uint8 or points.shape != (count, POINT_BYTES):
        raise SecurityError(f"node {reply.metadata.src!r} sent no ({count}, 32) uint8 points")
    return points


def _positions(reply: Message, count: int) -> NDArray[np.int64]:
    assert reply.content is not None
    record = reply.content.arrays.get(PAYLOAD)
    got = record.get(POSITIONS) if record is not None else None
    if got is None or got.dtype != np.int64 or got.shape != (count,):
        raise SecurityError(f"node {reply.metadata.src!r} sent no {count} int64 positions")
    return got
