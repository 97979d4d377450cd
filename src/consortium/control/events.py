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
(``benchmarks/sse_watchers.py``). That read is of what is new only (the rounds
recorded since the last one), and what the streams send is built from it once,
as bytes, for all of them (:class:`Timeline`): a round end costs each stream
one wake-up and one write of a shared chunk. And a run that moves on faster than a
person can read (rounds of tens of milliseconds) wakes its streams at most once
per :data:`PACE`: the rounds in between reach them together, in one write, and
the run's end is never held back.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

from starlette.concurrency import run_in_threadpool

from consortium.control.timeline import Timeline
from consortium.core.history import History, RoundRecord, RunInfo
from consortium.tracking.base import RunObserver

T = TypeVar("T")
#: seconds a read of a run is shared among its watchers when the run did not move on
SHARE_FOR = 0.2
#: the least time (seconds) between two wake-ups of a run's streams; a round end sooner
#: than that after the last one is held until then, with any others, so a dashboard of a
#: fast run redraws twice a second instead of at every round (its end is never held)
PACE = 0.5


class Watcher:
    """One stream's wake-up call for one run: a flag and, while it waits, a future.

    Cheap on purpose (no task, no ``wait_for``, no timer per wait: one
    :class:`Ticker` per event loop times them all out): a run's round end wakes
    every stream watching it at once, while the next round starts.
    """

    def __init__(self, hub: RunEvents, run_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.hub = hub
        self.run_id = run_id
        self.loop = loop
        self._woken = False
        self._waiter: asyncio.Future[bool] | None = None
        #: (loop time) when the wait in progress times out
        self.deadline = 0.0
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
        self.deadline = self.loop.time() + timeout
        ticker = self.hub.ticker(self.loop)
        ticker.add(self)
        try:
            woken: bool = await waiter
            return woken
        finally:
            ticker.waiting.discard(self)
            self._waiter = None

    def timed_out(self) -> None:
        """(The stream's loop.) Its wait is over, woken or not."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(False)

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
        #: each watched run's events as its streams send them (event loop only)
        self._timelines: dict[str, Timeline] = {}
        #: reads of a run nobody watches yet, in flight (the 404 checks of a crowd of
        #: streams opening at once: one read, not one each; event loop only)
        self._probes: dict[str, asyncio.Future[Timeline | None]] = {}
        #: how each watched run's timeline is read (event loop only)
        self._loaders: dict[str, Callable[[str, Timeline | None], Timeline | None]] = {}
        self._tickers: dict[asyncio.AbstractEventLoop, Ticker] = {}
        #: (monotonic) when each watched run's streams were last woken by a change
        self._woken_at: dict[str, float] = {}
        #: watched runs whose change is held until PACE has passed since that wake-up
        self._held: set[str] = set()
        self.closed = False

    def ticker(self, loop: asyncio.AbstractEventLoop) -> Ticker:
        """The one timer of the streams that ``loop`` runs. (Their loop.)"""
        ticker = self._tickers.get(loop)
        if ticker is None:
            ticker = self._tickers[loop] = Ticker(loop)
        return ticker

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
                    self._timelines.pop(watcher.run_id, None)
                    self._loaders.pop(watcher.run_id, None)
                    self._woken_at.pop(watcher.run_id, None)
                    self._held.discard(watcher.run_id)

    def watching(self, run_id: str) -> int:
        with self._lock:
            return len(self._watchers.get(run_id, ()))

    def notify(self, run_id: str, *, ending: bool = False) -> None:
        """(Any thread.) ``run_id`` moved on: wake its streams, one call per event loop,
        at once if :data:`PACE` has passed since they were last woken (or the run ended),
        else when it has, together with whatever else happens until then."""
        with self._lock:
            watchers = self._watchers.get(run_id)
            if not watchers:
                return
            self._changes[run_id] += 1
            if ending:
                for watcher in watchers:
                    watcher.ending = True
            now = time.monotonic()
            due = self._woken_at.get(run_id, now - PACE) + PACE
            if not ending and now < due:
                if run_id not in self._held:
                    self._held.add(run_id)
                    loop = next(iter(watchers)).loop
                    with contextlib.suppress(RuntimeError):  # that loop already closed
                        loop.call_soon_threadsafe(loop.call_later, due - now, self._release, run_id)
                return
        self._wake(run_id)

    def _release(self, run_id: str) -> None:
        """(A streams' loop.) A held change's time has come (unless the run's end, or its
        last stream leaving, came first)."""
        self._wake(run_id, held=True)

    def _wake(self, run_id: str, *, held: bool = False) -> None:
        """Wake ``run_id``'s streams now, one call per event loop, and note when (``held``:
        only if its change is still held)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[Watcher]] = defaultdict(list)
        with self._lock:
            watchers = self._watchers.get(run_id)
            if not watchers or (held and run_id not in self._held):
                return
            self._held.discard(run_id)
            self._woken_at[run_id] = time.monotonic()
            for watcher in watchers:
                by_loop[watcher.loop].append(watcher)
        for loop, woken in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop already closed
                loop.call_soon_threadsafe(self._moved, run_id, woken)

    def _moved(self, run_id: str, watchers: list[Watcher]) -> None:
        """(The streams' loop.) Read what is new once, then wake the streams: each finds
        the read done and writes at once (one wake-up each, not a second one when the
        read that the first of them started is done)."""
        load = self._loaders.get(run_id)
        if load is None:  # no stream has read it yet
            _wake_all(watchers)
            return
        read = asyncio.ensure_future(self.timeline(run_id, load))
        read.add_done_callback(partial(_read_then_wake, watchers))

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
        elif read.future.done():  # most watchers of a round end: no wait, no shield
            done: T = read.future.result()
            return done
        # shielded: one stream that ends (its client left) does not cancel the others' read
        result: T = await asyncio.shield(read.future)
        return result

    async def timeline(
        self, run_id: str, load: Callable[[str, Timeline | None], Timeline | None]
    ) -> Timeline | None:
        """The run's :class:`Timeline` now (None: no such run), shared like :meth:`latest`:
        ``load(run_id, known)`` (a worker thread) extends ``known``, the one read at the
        run's last change, with what was recorded since. Call it from the event loop."""
        if not self.watching(run_id):
            return await self._probe(run_id, load)
        self._loaders[run_id] = load
        known = self._timelines.get(run_id)
        found = await self.latest(run_id, lambda rid: load(rid, known))
        newest = self._timelines.get(run_id)
        newer = found is not None and (newest is None or len(found.rounds) >= len(newest.rounds))
        if newer and found is not None and self.watching(run_id):
            self._timelines[run_id] = found
        return found

    async def _probe(
        self, run_id: str, load: Callable[[str, Timeline | None], Timeline | None]
    ) -> Timeline | None:
        """A read of a run nobody watches, shared by whoever asks while it is in flight
        (and by no one after: nothing is kept of a run nobody watches)."""
        loop = asyncio.get_running_loop()
        probe = self._probes.get(run_id)
        if probe is None or probe.get_loop() is not loop:
            probe = asyncio.ensure_future(run_in_threadpool(load, run_id, None))
            self._probes[run_id] = probe
            probe.add_done_callback(partial(self._probed, run_id))
        # shielded: one caller that ends (its client left) does not cancel the others' read
        found: Timeline | None = await asyncio.shield(probe)
        return found

    def _probed(self, run_id: str, probe: asyncio.Future[Timeline | None]) -> None:
        if self._probes.get(run_id) is probe:
            del self._probes[run_id]

    def close(self) -> None:
        """The server is stopping: every stream wakes and ends."""
        self.closed = True
        with self._lock:
            watchers = [w for ws in self._watchers.values() for w in ws]
        for watcher in watchers:
            watcher.wake()


class Ticker:
    """Times out the waits of one event loop's streams: one timer every :attr:`TICK`
    seconds while any stream waits, instead of one timer set and cancelled per stream
    per round end. A wait ends up to :attr:`TICK` late (a keep-alive of 15 s; a look
    at an ending run's status after 0.25 s)."""

    TICK = 0.1

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: set[Watcher] = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, watcher: Watcher) -> None:
        self.waiting.add(watcher)
        if self._timer is None:
            self._timer = self.loop.call_later(self.TICK, self._tick)

    def _tick(self) -> None:
        now = self.loop.time()
        due = [w for w in self.waiting if w.deadline <= now]
        for watcher in due:
            self.waiting.discard(watcher)
            watcher.timed_out()
        self._timer = self.loop.call_later(self.TICK, self._tick) if self.waiting else None


def _wake_all(watchers: list[Watcher]) -> None:
    for watcher in watchers:
        watcher.woken()


def _read_then_wake(watchers: list[Watcher], read: asyncio.Future[Timeline | None]) -> None:
    if not read.cancelled():
        read.exception()  # each stream meets a failed read itself, in its own next look
    _wake_all(watchers)


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
