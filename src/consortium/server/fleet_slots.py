"""Which nodes' pulls may send a task now: a bounded number of downloads at once.

Every node's stream being sent a task holds a chunk of the model and gRPC's
copy of it, so with hundreds of nodes pulling at once only ``limit`` tasks'
chunks are in the server at any time. A task to a node on a slow link is sent
in smaller chunks (:func:`~consortium.transport.link_chunks.send_chunk_size`), so it
takes a quarter of a place: its download lasts as long as the link makes it,
and with more slow nodes than places the downloads would otherwise go in waves.
The other pulls wait holding nothing, and each is woken only by what concerns
it -- a task queued for its node, or room coming free (longest waiting first)
-- not all of them at every change: each woken thread takes the GIL and the
fleet's lock only to go back to sleep.

Every method is called with the fleet's lock held (the conditions share it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from consortium.transport.chunks import CHUNK_SIZE
from consortium.transport.link_chunks import SLOW_LINK_CHUNK_SIZE, send_chunk_size


class SendSlots:
    """The pulls of each node, the tasks being sent, and the nodes waiting for room.

    The tasks being sent hold at most ``limit`` chunks of
    :data:`~consortium.transport.chunks.CHUNK_SIZE` together (``limit`` tasks to fast
    links, four times as many to slow ones), and of them at most ``large_limit`` are of
    ``large_bytes`` or more (model-sized: each of their streams holds more memory) to
    nodes on fast links. On two cores a few fast downloads move a model as fast as many;
    a slow link bounds its own download, so those to nodes on slow links (known from
    their earlier transfers, :mod:`consortium.transport.link_rates`) go at once, within
    ``limit``."""

    def __init__(
        self, lock: threading.RLock, limit: int, large_limit: int, large_bytes: int
    ) -> None:
        if limit < 1:
            raise ValueError(f"sends_at_once must be >= 1, got {limit}")
        if large_limit < 1:
            raise ValueError(f"large_sends_at_once must be >= 1, got {large_limit}")
        self.limit = limit
        self.large_limit = large_limit
        self.large_bytes = large_bytes
        self._lock = lock
        #: what the chunks of the tasks being sent may hold together
        self._room = limit * CHUNK_SIZE
        #: ids of the tasks being sent now (pulled, their sending not ended yet): the size
        #: of their chunks, and whether each is a large one to a fast link
        self._sending: dict[str, tuple[int, bool]] = {}
        self._held = 0  # their chunks
        self._large = 0  # of them
        #: nodes whose pull has a task to be sent and waits for room, first come first:
        #: the chunk size their task would be sent in, and whether it is a large one to a
        #: fast link
        self._waiting: dict[str, tuple[int, bool]] = {}
        #: node -> the condition its pulls wait on (sharing the fleet's lock)
        self._conds: dict[str, threading.Condition] = {}

    def condition(self, node: str) -> threading.Condition:
        """What ``node``'s pulls wait on."""
        cond = self._conds.get(node)
        if cond is None:
            cond = self._conds[node] = threading.Condition(self._lock)
        return cond

    def wake(self, node: str) -> None:
        """Wake ``node``'s waiting pulls, if any."""
        cond = self._conds.get(node)
        if cond is not None:
            cond.notify_all()

    def wake_everyone(self) -> None:
        """Wake every waiting pull (the fleet is closing)."""
        for cond in self._conds.values():
            cond.notify_all()

    def full(self, nbytes: int, slow_link: bool = False) -> bool:
        """Whether a task of ``nbytes`` (to a node on a slow link) must wait for room."""
        if self._held + send_chunk_size(slow_link) > self._room:
            return True
        return self._held_to_large(nbytes, slow_link) and self._large >= self.large_limit

    def _held_to_large(self, nbytes: int, slow_link: bool) -> bool:
        return nbytes >= self.large_bytes and not slow_link

    def wait_turn(self, node: str, nbytes: int, slow_link: bool = False) -> None:
        """``node`` has a task of ``nbytes`` to be sent (to it on a slow link) and no room:
        it is woken when there is."""
        self._waiting[node] = (send_chunk_size(slow_link), self._held_to_large(nbytes, slow_link))

    def any_waiting(self) -> bool:
        """Whether some node's pull waits for room."""
        return bool(self._waiting)

    def leave(self, node: str) -> None:
        """``node``'s pull stopped waiting (it timed out, or got its room)."""
        self._waiting.pop(node, None)

    def start(self, node: str, message_id: str, nbytes: int, slow_link: bool = False) -> None:
        """``node``'s pull takes room to send ``message_id``, of ``nbytes`` (to a node on a
        slow link: in smaller chunks)."""
        self.leave(node)
        large = self._held_to_large(nbytes, slow_link)
        chunk = send_chunk_size(slow_link)
        self._sending[message_id] = (chunk, large)
        self._held += chunk
        self._large += large

    def crawls(self, message_id: str, has_tasks: Callable[[str], bool]) -> None:
        """``message_id``'s send runs over a slow link, and goes on in smaller chunks: it
        gives back the rest of its place, and its place among the large sends to fast
        links, to the pulls that waited longest, as far as there is room for them (a pull
        woken for a large task's place that another took waits again)."""
        sending = self._sending.get(message_id)
        if sending is None or sending == (SLOW_LINK_CHUNK_SIZE, False):
            return
        chunk, large = sending
        self._sending[message_id] = (SLOW_LINK_CHUNK_SIZE, False)
        self._held -= chunk - SLOW_LINK_CHUNK_SIZE
        self._large -= large
        # no room: what it gave back is taken at the next end()
        self._wake_waiting(has_tasks)

    def end(self, message_id: str, has_tasks: Callable[[str], bool]) -> None:
        """Sending ``message_id`` ended: wake as many waiting pulls as the free room
        takes, longest waiting first, skipping nodes with nothing left to send
        (``has_tasks``: their tasks failed or ended). A woken pull that finds the room
        taken waits again."""
        sending = self._sending.pop(message_id, None)
        if sending is None:
            return
        chunk, large = sending
        self._held -= chunk
        self._large -= large
        self._wake_waiting(has_tasks)

    def _wake_waiting(self, has_tasks: Callable[[str], bool]) -> None:
        """Wake the waiting pulls that can go now, longest waiting first: each whose chunk
        fits the free room and, for a large task to a fast link, a free place among those
        (a quarter come free goes to a slow download waiting behind a fast one, which needs
        a whole place). Nodes with nothing left to send are skipped and forgotten."""
        free = self._room - self._held
        large_free = self.large_limit - self._large
        for node, (chunk, large) in list(self._waiting.items()):
            if free < SLOW_LINK_CHUNK_SIZE:
                return
            if not has_tasks(node):
                del self._waiting[node]
            elif chunk <= free and (not large or large_free > 0):
                del self._waiting[node]
                self.wake(node)
                free -= chunk
                large_free -= large
