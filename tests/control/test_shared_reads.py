"""Many event streams of one run share one read of it per change (``RunEvents.latest``)."""

from __future__ import annotations

import asyncio
import threading

from consortium.control.events import SHARE_FOR, RunEvents


def test_watchers_of_a_run_share_one_read_per_change() -> None:
    hub = RunEvents()
    reads: list[str] = []
    lock = threading.Lock()

    def load(run_id: str) -> int:
        with lock:
            reads.append(run_id)
            return len(reads)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        watchers = [hub.subscribe("r1", loop) for _ in range(50)]
        first = await asyncio.gather(*(hub.latest("r1", load) for _ in watchers))
        assert first == [1] * 50 and reads == ["r1"]
        hub.notify("r1")  # the run moved on: one new read for all of them
        second = await asyncio.gather(*(hub.latest("r1", load) for _ in watchers))
        assert second == [2] * 50 and len(reads) == 2
        # no change, but older than SHARE_FOR: looked at again (a run's final status)
        await asyncio.sleep(SHARE_FOR * 1.5)
        assert await hub.latest("r1", load) == 3
        # another run is read on its own; a run nobody watches any more is forgotten
        other = hub.subscribe("r2", loop)
        assert await hub.latest("r2", load) == 4
        for watcher in watchers:
            watcher.close()
        other.close()
        assert hub.watching("r1") == 0 and not hub._reads and not hub._changes
        # a run nobody watches (a 404 probe, say) is read each time, and nothing is kept
        before = len(reads)
        await asyncio.gather(hub.latest("zz", load), hub.latest("zz", load))
        assert len(reads) == before + 2 and not hub._reads

    asyncio.run(scenario())
