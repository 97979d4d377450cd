"""Which nodes' pulls may send a task now: a bounded number of downloads at once.

Every node's stream being sent a task holds a chunk of the model and gRPC's
copy of it, so with hundreds of nodes pulling at once only ``limit`` tasks are
sent at any time. The other pulls wait holding nothing, and each is woken only
by what concerns it -- a task queued for its node, or a send slot coming free
(longest waiting first) -- not all of them at every change: each woken thread
takes the GIL and the fleet's lock only to go back to sleep.

Every method is called with the fleet's lock held (the conditions share it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class SendSlots:
    """The pulls of each node, the tasks being sent, and the nodes waiting for a slot.

    At most ``limit`` tasks are sent at once, and of them at most ``large_limit`` of
    ``large_bytes`` or more (model-sized: each of their streams holds more memory) to
    nodes on fast links. On two cores a few fast downloads move a model as fast as many;
    a slow link bounds its own download, so those to nodes on slow links (known from
    their earlier transfers, :mod:`consortium.transport.link_rates`) go at once, up to
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
        #: ids of the tasks being sent now (pulled, their sending not ended yet), and
        #: whether each is a large one to a fast link
        self._sending: dict[str, bool] = {}
        self._large = 0  # of them
        #: nodes whose pull has a task to be sent and waits for a slot, first come first
        self._waiting: dict[str, None] = {}
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
        """Whether a task of ``nbytes`` (to a node on a slow link) must wait for a slot."""
        if len(self._sending) >= self.limit:
            return True
        return self._held_to_large(nbytes, slow_link) and self._large >= self.large_limit

    def _held_to_large(self, nbytes: int, slow_link: bool) -> bool:
        return nbytes >= self.large_bytes and not slow_link

    def wait_turn(self, node: str) -> None:
        """``node`` has a task to be sent and no slot: it is woken when one is free."""
        self._waiting[node] = None

    def any_waiting(self) -> bool:
        """Whether some node's pull waits for a slot."""
        return bool(self._waiting)

    def leave(self, node: str) -> None:
        """``node``'s pull stopped waiting (it timed out, or got its slot)."""
        self._waiting.pop(node, None)

    def start(self, node: str, message_id: str, nbytes: int, slow_link: bool = False) -> None:
        """``node``'s pull takes a slot to send ``message_id``, of ``nbytes``."""
        self.leave(node)
        large = self._held_to_large(nbytes, slow_link)
        self._sending[message_id] = large
        self._large += large

    def crawls(self, message_id: str, has_tasks: Callable[[str], bool]) -> None:
        """``message_id``'s send runs over a slow link: it gives its place among the large
        sends to fast links to the pull that waited longest, if a slot is free for it
        (then that pull waits for a large task's place: a small one would have gone)."""
        if not self._sending.get(message_id):
            return
        self._sending[message_id] = False
        self._large -= 1
        # no free slot: the place is taken at the next end()
        self._wake_waiting(min(1, self.limit - len(self._sending)), has_tasks)

    def end(self, message_id: str, has_tasks: Callable[[str], bool]) -> None:
        """Sending ``message_id`` ended: wake as many waiting pulls as there are free
        slots, longest waiting first, skipping nodes with nothing left to send
        (``has_tasks``: their tasks failed or ended). A woken pull that finds the slot
        taken waits again."""
        if message_id not in self._sending:
            return
        self._large -= self._sending.pop(message_id)
        self._wake_waiting(self.limit - len(self._sending), has_tasks)

    def _wake_waiting(self, count: int, has_tasks: Callable[[str], bool]) -> None:
        """Wake up to ``count`` waiting pulls, longest waiting first, skipping (and
        forgetting) nodes with nothing left to send."""
        while count > 0 and self._waiting:
            node = next(iter(self._waiting))
            del self._waiting[node]
            if has_tasks(node):
                self.wake(node)
                count -= 1
