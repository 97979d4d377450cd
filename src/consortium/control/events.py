"""Waking the REST API's event streams (Server-Sent Events) when a run moves on.

The state store stays the one record of a run: a stream reads what happened
from it. What this module adds is *when* to look: each run this server executes
gets a :class:`RunFeed` observer (through ``RunManager(run_observers=...)``),
and each finished round or run end wakes the streams watching that run. A
watcher costs one :class:`asyncio.Event`, not a thread, and reads the store
only when something happened (or at its keep-alive), so hundreds of dashboard
tabs do not poll the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import defaultdict

from consortium.core.history import History, RoundRecord, RunInfo
from consortium.tracking.base import RunObserver


class Watcher:
    """One stream's wake-up call for one run (an asyncio event, set from any thread)."""

    def __init__(self, hub: RunEvents, run_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.hub = hub
        self.run_id = run_id
        self.loop = loop
        self.event = asyncio.Event()
        #: the run's app said it ended: its final status is being written now
        self.ending = False

    def wake(self, *, ending: bool = False) -> None:
        self.ending = self.ending or ending
        with contextlib.suppress(RuntimeError):  # the stream's loop already closed
            self.loop.call_soon_threadsafe(self.event.set)

    async def wait(self, timeout: float) -> bool:
        """True when woken within ``timeout`` seconds (and ready to be woken again)."""
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except TimeoutError:
            return False
        self.event.clear()
        return True

    def close(self) -> None:
        self.hub.unsubscribe(self)


class RunEvents:
    """Who watches which run; ``observers(run_id)`` is the RunManager's per-run hook."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watchers: dict[str, set[Watcher]] = defaultdict(set)
        self.closed = False

    def observers(self, run_id: str) -> list[RunObserver]:
        """The observers a run this server executes reports to (``run_observers``)."""
        return [RunFeed(self, run_id)]

    def subscribe(self, run_id: str, loop: asyncio.AbstractEventLoop) -> Watcher:
        watcher = Watcher(self, run_id, loop)
        with self._lock:
            self._watchers[run_id].add(watcher)
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        with self._lock:
            watchers = self._watchers.get(watcher.run_id)
            if watchers is not None:
                watchers.discard(watcher)
                if not watchers:
                    del self._watchers[watcher.run_id]

    def watching(self, run_id: str) -> int:
        with self._lock:
            return len(self._watchers.get(run_id, ()))

    def notify(self, run_id: str, *, ending: bool = False) -> None:
        with self._lock:
            watchers = list(self._watchers.get(run_id, ()))
        for watcher in watchers:
            watcher.wake(ending=ending)

    def close(self) -> None:
        """The server is stopping: every stream wakes and ends."""
        self.closed = True
        with self._lock:
            watchers = [w for ws in self._watchers.values() for w in ws]
        for watcher in watchers:
            watcher.wake()


class RunFeed:
    """A :class:`RunObserver` that wakes the streams of one run; it never raises."""

    def __init__(self, hub: RunEvents, run_id: str) -> None:
        self.hub = hub
        self.run_id = run_id

    def on_run_start(self, info: RunInfo) -> None:
        self.hub.notify(self.run_id)

    def on_round_end(self, record: RoundRecord) -> None:
        # the store's observer comes before this one: the round is in the store now
        self.hub.notify(self.run_id)

    def on_run_end(self, history: History, *, failed: bool) -> None:
        self.hub.notify(self.run_id, ending=True)
