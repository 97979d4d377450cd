"""A run that moves on faster than :data:`PACE` wakes its streams at most once per PACE;
its end is never held back (``RunEvents.notify``)."""

from __future__ import annotations

import asyncio
import threading

from consortium.control.events import PACE, RunEvents
from consortium.control.timeline import Timeline


def test_round_ends_sooner_than_the_pace_reach_the_streams_together() -> None:
    hub = RunEvents()
    loads: list[int] = []

    def load(run_id: str, known: Timeline | None) -> Timeline | None:
        loads.append(len(loads))
        return (known or Timeline()).extended([(len(loads), b"r;")], b"")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        watchers = [hub.subscribe("r1", loop) for _ in range(20)]
        await asyncio.gather(*(hub.timeline("r1", load) for _ in watchers))
        assert len(loads) == 1

        async def woken_after() -> list[float]:
            started = loop.time()
            await asyncio.gather(*(w.wait(10) for w in watchers))
            return [loop.time() - started]

        waits = asyncio.ensure_future(woken_after())
        await asyncio.sleep(0)
        hub.notify("r1")  # the first change: at once
        assert (await waits)[0] < PACE / 2 and len(loads) == 2
        # five more round ends from the server's thread, 20 ms apart: held, then one wake
        waits = asyncio.ensure_future(woken_after())
        await asyncio.sleep(0)

        def rounds() -> None:
            for _ in range(5):
                hub.notify("r1")
                threading.Event().wait(0.02)

        await asyncio.to_thread(rounds)
        assert not waits.done() and len(loads) == 2  # nothing yet, nothing read
        waited = (await waits)[0]
        assert PACE * 0.7 < waited < PACE * 2 and len(loads) == 3  # one read for all five
        # more within the pace wait for it; the run's end does not
        waits = asyncio.ensure_future(woken_after())
        await asyncio.sleep(0)
        hub.notify("r1")
        hub.notify("r1", ending=True)
        assert (await waits)[0] < PACE / 2 and all(w.ending for w in watchers)
        for watcher in watchers:
            watcher.close()
        assert not hub._held and not hub._woken_at and not hub._changes

    asyncio.run(scenario())


def test_a_held_change_is_dropped_with_the_last_stream_of_its_run() -> None:
    hub = RunEvents()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        watcher = hub.subscribe("r1", loop)
        hub.notify("r1")
        hub.notify("r1")  # held
        assert hub._held == {"r1"}
        watcher.close()
        assert not hub._held
        await asyncio.sleep(PACE * 1.5)  # its release finds nothing to do
        assert not hub._changes and not hub._woken_at

    asyncio.run(scenario())
