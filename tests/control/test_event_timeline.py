"""What a run's event streams share: one incremental read per change, done before they
wake, its bytes built once (``Timeline``); one timer per loop for their waits."""

from __future__ import annotations

import asyncio
import threading
import time

from consortium.control.events import RunEvents, Ticker
from consortium.control.timeline import Timeline

Load = tuple[str, Timeline | None]


def test_a_timeline_sends_what_a_stream_lacks_as_one_chunk() -> None:
    empty = Timeline()
    assert empty.since(0) == b"" and empty.last == 0
    two = empty.extended([(1, b"r1;"), (2, b"r2;")], b"")
    assert (two.rounds, two.last, two.since(0), two.since(1), two.since(2)) == (
        (1, 2),
        2,
        b"r1;r2;",
        b"r2;",
        b"",
    )
    assert two.since(7) == b""  # a stream resumed past the run's rounds
    assert two.extended([], b"") is two  # nothing new: the same timeline, chunks and all
    ended = two.extended([(3, b"r3;")], b"end;")
    assert ended.since(1) == b"r2;r3;end;" and ended.since(3) == b"end;"
    assert two.since(0) == b"r1;r2;"  # never changed by what was built from it


def test_streams_woken_by_a_change_find_its_read_done_and_incremental() -> None:
    hub = RunEvents()
    loads: list[Load] = []
    lock = threading.Lock()

    def load(run_id: str, known: Timeline | None) -> Timeline | None:
        with lock:
            loads.append((run_id, known))
            n = len(loads)
        base = known or Timeline()
        return base.extended([(n, f"r{n};".encode())], b"")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        watchers = [hub.subscribe("r1", loop) for _ in range(50)]
        first = await asyncio.gather(*(hub.timeline("r1", load) for _ in watchers))
        assert len(loads) == 1 and {t.since(0) for t in first if t} == {b"r1;"}
        waits = [asyncio.ensure_future(w.wait(10)) for w in watchers]
        await asyncio.sleep(0)
        hub.notify("r1")  # from the server: the hub reads once, then wakes them
        assert all(await asyncio.gather(*waits))
        assert len(loads) == 2 and loads[1][1] is first[0]  # from the last read on
        # every woken stream takes the done read: no read, no wait of its own
        tasks = [asyncio.ensure_future(hub.timeline("r1", load)) for _ in watchers]
        await asyncio.sleep(0)
        assert all(t.done() for t in tasks) and len(loads) == 2
        assert {t.result().since(0) for t in tasks if t.result()} == {b"r1;r2;"}
        for watcher in watchers:
            watcher.close()
        assert not hub._timelines and not hub._loaders

    asyncio.run(scenario())


def test_the_opening_checks_of_a_crowd_share_one_read_in_flight() -> None:
    hub = RunEvents()
    calls: list[str] = []
    release = threading.Event()

    def load(run_id: str, known: Timeline | None) -> Timeline | None:
        calls.append(run_id)
        release.wait(5)
        return None if run_id == "nope" else Timeline()

    async def scenario() -> None:
        crowd = [asyncio.ensure_future(hub.timeline("r1", load)) for _ in range(30)]
        await asyncio.sleep(0.05)
        release.set()
        assert all(t is not None for t in await asyncio.gather(*crowd))
        assert calls == ["r1"] and not hub._probes
        # after it, nothing is kept of a run nobody watches: a later check reads again
        assert await hub.timeline("r1", load) is not None and calls == ["r1", "r1"]
        assert await hub.timeline("nope", load) is None and not hub._timelines

    asyncio.run(scenario())


def test_one_ticker_times_out_the_waits_of_a_loop() -> None:
    hub = RunEvents()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        slow, fast = hub.subscribe("r1", loop), hub.subscribe("r1", loop)
        started = time.monotonic()
        waits = asyncio.gather(slow.wait(0.3), fast.wait(0.05))
        await asyncio.sleep(0)
        ticker = hub.ticker(loop)
        assert ticker.waiting == {slow, fast}
        assert await waits == [False, False]
        took = time.monotonic() - started
        assert 0.3 <= took < 0.3 + 3 * Ticker.TICK + 0.5
        assert not ticker.waiting
        await asyncio.sleep(Ticker.TICK * 2)
        assert ticker._timer is None  # nobody waits: no timer
        # a wake ends a wait at once, and takes it off the ticker
        waiting = asyncio.ensure_future(slow.wait(30))
        await asyncio.sleep(0)
        hub.notify("r1")
        assert await asyncio.wait_for(waiting, 2) is True and slow not in ticker.waiting

    asyncio.run(scenario())
