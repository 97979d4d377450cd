"""Waking the REST API's event streams (Server-Sent Events) when a run moves on.

The state store stays the one record of a run: a stream reads what happened
from it. What this module adds is *when* to look: each run this server executes
gets a :class:`RunFeed` observer (through ``RunManager(run_observers=...)``),
and each finished round or run end wakes the streams watching that run. A
watcher costs one :class:`asyncio.Event`, not a thread, and reads the store
only when something happened (or at its keep-alive), so hundreds of dashboard
tabs do not poll the database. Nor do they read it once each: the watchers of
a run share one read per change (:meth:`RunEvents.latest`), so 200 open tabs
cost the server's round loop one read of the run per round, not 200
(``benchmarks/sse_watchers.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from starlette.concurrency import run_in_threadpool

from consortium.core.history import History, RoundRecord, RunInfo
from consortium.tracking.base import RunObserver

T = TypeVar("T")
#: seconds a read of a run is shared among its watchers when the run did not move on
SHARE_FOR = 0.2


class Watcher:
    """One stream's wake-up call for one run: a flag and, while it waits, a future.

    Cheap on purpose (no task, no ``wait_for`` per wait): a run's round end wakes
    every stream watching it at once, in the server's process, while the next round
    starts.
    """

    def __init__(self, hub: RunEvents, run_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.hub = hub
        self.run_id = run_id
        self.loop = loop
        self._woken = False
        self._waiter: asyncio.Future[bool] | None = None
        #: the run's app said it ended: its final status is being written now
        self.ending = False

    def wake(self, *, ending: bool = False) -> None:
        """(Any thread.) Wake the stream."""
        self.ending = self.ending or ending
        with contextlib.suppress(RuntimeError):  # the stream's loop already closed
            self.loop.call_soon_threadsafe(self.woken)

    def woken(self) -> None:
        """(The stream's loop.) The run moved on."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)
        else:
            self._woken = True

    async def wait(self, timeout: float) -> bool:
        """True when woken within ``timeout`` seconds (and ready to be woken again)."""
        if self._woken:
            self._woken = False
            return True
        waiter = self._waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout, _settle, waiter)
        try:
            woken: bool = await waiter
            return woken
        finally:
            timer.cancel()
            self._waiter = None

    def close(self) -> None:
        self.hub.unsubscribe(self)


class RunEvents:
    """Who watches which run; ``observers(run_id)`` is the RunManager's per-run hook."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watchers: dict[str, set[Watcher]] = defaultdict(set)
        #: how many times each watched run moved on (bumped by notify, from any thread)
        self._changes: dict[str, int] = defaultdict(int)
        #: the newest read of each watched run, shared by its watchers (event loop only)
        self._reads: dict[str, SharedRead[Any]] = {}
        #: each watched run's finished rounds, as the events a stream sends (loop only)
        self._texts: dict[str, dict[int, str]] = defaultdict(dict)
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
                    self._changes.pop(watcher.run_id, None)
                    self._reads.pop(watcher.run_id, None)
                    self._texts.pop(watcher.run_id, None)

    def watching(self, run_id: str) -> int:
        with self._lock:
            return len(self._watchers.get(run_id, ()))

    def notify(self, run_id: str, *, ending: bool = False) -> None:
        """(Any thread.) ``run_id`` moved on: wake its streams, one call per event loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[Watcher]] = defaultdict(list)
        with self._lock:
            for watcher in self._watchers.get(run_id, ()):
                watcher.ending = watcher.ending or ending
                by_loop[watcher.loop].append(watcher)
            if by_loop:
                self._changes[run_id] += 1
        for loop, watchers in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop already closed
                loop.call_soon_threadsafe(_wake_all, watchers)

    async def latest(self, run_id: str, load: Callable[[str], T]) -> T:
        """``load(run_id)`` (run in a worker thread), shared by every watcher of the run
        that asks before the run moves on again and within :data:`SHARE_FOR` seconds: one
        read per change, not one per watcher. (The age bound matters where nothing is
        notified: a run's final status is written just after its end is announced, and
        its streams look again until they see it.) A run nobody watches is read afresh
        and nothing is kept for it. Call it from the event loop."""
        with self._lock:
            watched = run_id in self._watchers
            change = self._changes.get(run_id, 0)
        if not watched:
            return await run_in_threadpool(load, run_id)
        loop = asyncio.get_running_loop()
        read = self._reads.get(run_id)
        if read is None or not read.serves(change, loop):
            future = asyncio.ensure_future(run_in_threadpool(load, run_id))
            read = self._reads[run_id] = SharedRead(change, loop, future)
        # shielded: one stream that ends (its client left) does not cancel the others' read
        result: T = await asyncio.shield(read.future)
        return result

    def encoded(self, run_id: str, rnd: int, encode: Callable[[], str]) -> str:
        """Round ``rnd``'s events as a stream sends them, encoded once for every watcher
        of the run (a finished round never changes). Call it from the event loop."""
        texts = self._texts[run_id]
        text = texts.get(rnd)
        if text is None:
            text = texts[rnd] = encode()
        return text

    def close(self) -> None:
        """The server is stopping: every stream wakes and ends."""
        self.closed = True
        with self._lock:
            watchers = [w for ws in self._watchers.values() for w in ws]
        for watcher in watchers:
            watcher.wake()


def _settle(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


def _wake_all(watchers: list[Watcher]) -> None:
    for watcher in watchers:
        watcher.woken()


class SharedRead(Generic[T]):
    """One read of a run, at one count of its changes, awaited by any number of streams."""

    def __init__(
        self, change: int, loop: asyncio.AbstractEventLoop, future: asyncio.Future[T]
    ) -> None:
        self.change = change
        self.loop = loop
        self.future = future
        self.started = loop.time()

    def serves(self, change: int, loop: asyncio.AbstractEventLoop) -> bool:
        """May a watcher asking now at ``change`` take this read?"""
        fresh = loop.time() - self.started < SHARE_FOR
        return self.change == change and self.loop is loop and fresh


class RunHub(Protocol):
    """Where a :class:`RunFeed` says a run moved on: the streams' :class:`RunEvents`, or
    the server's notices to its API process (:mod:`consortium.control.process`)."""

    def notify(self, run_id: str, *, ending: bool = False) -> None: ...


class RunFeed:
    """A :class:`RunObserver` that wakes the streams of one run; it never raises."""

    def __init__(self, hub: RunHub, run_id: str) -> None:
        self.hub = hub
        self.run_id = run_id

    def on_run_start(self, info: RunInfo) -> None:
        self.hub.notify(self.run_id)

    def on_round_end(self, record: RoundRecord) -> None:
        # the store's observer comes before this one: the round is in the store now
        self.hub.notify(self.run_id)

    def on_run_end(self, history: History, *, failed: bool) -> None:
        self.hub.notify(self.run_id, ending=True)
