"""Transfers that stop moving, or crawl while others wait behind them, are cut off, and
only their node pays for it.

A node that announces a reply and then goes silent, or stops reading the task
it is being sent, would hold a server thread, its share of the transfer
budget and the round (the honest nodes' replies waiting behind it) until the
round's deadline. :class:`StallWatch` notes each transfer's progress and
cancels the call of one that made none for ``timeout`` seconds; the service
then fails that node's task for the round.

Moving a little is not enough either: one 4 MiB chunk a minute passes the
stall check, yet holds a send slot, a receive slot or the transfer budget that
other nodes wait for. So a transfer that others wait behind must also move at
least ``min_rate`` bytes a second, averaged over the last ``timeout`` seconds,
or it is cut off the same way. Nobody waiting, a slow link is left alone.

Time the server spends waiting on itself (a reply held back until the transfer
budget admits it) is not the node's: a transfer is not judged while
:meth:`Transfer.paused`, and its clock starts again afterwards.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

log = logging.getLogger("consortium.transport")

#: seconds a transfer may make no progress (one 4 MiB chunk) before it is cut off
DEFAULT_STALL_TIMEOUT = 60.0
#: the least a transfer that others wait behind must move, in megabits a second over
#: the stall timeout: far below a hospital's link (tens of Mbit/s), far above one chunk
#: a minute (0.56 Mbit/s, all the stall timeout demands)
DEFAULT_MIN_RATE_MBIT = 1.0
BYTES_PER_MBIT = 125_000


def mbit(rate: float) -> str:
    """``rate`` (bytes a second) in megabits a second, for people."""
    return f"{rate / BYTES_PER_MBIT:.2f} Mbit/s"


class Cancellable(Protocol):
    """What the watch needs of a call: a way to end it (a gRPC ServicerContext)."""

    def cancel(self) -> None: ...


class Transfer:
    """One transfer under watch: call :meth:`moved` whenever a chunk went through."""

    __slots__ = (
        "_clock",
        "_paused_at",
        "_paused_for",
        "_pauses",
        "_samples",
        "call",
        "held_to_rate",
        "last",
        "moved_bytes",
        "stalled",
        "started",
        "too_slow",
        "what",
    )

    def __init__(
        self, call: Cancellable, what: str, clock: Callable[[], float], held_to_rate: bool
    ) -> None:
        self.call = call
        self.what = what
        #: whether the rate floor applies (it holds something other transfers may wait for)
        self.held_to_rate = held_to_rate
        self._clock = clock
        self.started = self.last = clock()
        self.moved_bytes = 0
        #: set (once) when the watch cut the transfer off for making no progress...
        self.stalled = False
        #: ...or the rate it moved at (bytes a second) when cut off for being too slow
        self.too_slow: float | None = None
        self._pauses = 0
        self._paused_at = 0.0  # when the pauses now in progress began
        self._paused_for = 0.0  # seconds paused before that
        #: (time, bytes moved) at each of the watch's looks within the last window
        self._samples: deque[tuple[float, int]] = deque()

    @property
    def cut(self) -> bool:
        return self.stalled or self.too_slow is not None

    def moved(self, nbytes: int) -> None:
        self.moved_bytes += nbytes
        self.last = self._clock()

    @property
    def is_paused(self) -> bool:
        return self._pauses > 0

    def rate_over(self, now: float, window: float) -> float | None:
        """What it moved a second over the last ``window`` seconds, as the watch looked at
        ``now``; None before it was watched, unpaused, that long (the watch's thread)."""
        samples = self._samples
        samples.append((now, self.moved_bytes))
        while len(samples) > 1 and now - samples[1][0] >= window:
            samples.popleft()
        since, moved = samples[0]
        if now - since < window:
            return None
        return (self.moved_bytes - moved) / (now - since)

    def forget_rate(self) -> None:
        """Start the window again (the watch's thread, while the transfer is paused)."""
        self._samples.clear()

    def moving_seconds(self) -> float:
        """Seconds since the transfer began, less those it spent paused: the time its
        bytes took to move (its node's link, and the server's reading of them)."""
        now = self._clock()
        paused = self._paused_for + (now - self._paused_at if self._pauses else 0.0)
        return now - self.started - paused

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The server waits on itself for the block: that time is not the node's."""
        if not self._pauses:
            self._paused_at = self._clock()
        self._pauses += 1
        try:
            yield
        finally:
            self.last = self._clock()  # before the count drops: the watch sees it fresh
            if self._pauses == 1:
                self._paused_for += self.last - self._paused_at
            self._pauses -= 1


class StallWatch:
    """Cancels the calls of transfers that made no progress for ``timeout`` seconds, or,
    while ``others_waiting()``, moved less than ``min_rate`` bytes a second over it."""

    def __init__(
        self,
        timeout: float,
        *,
        min_rate: float = 0.0,
        others_waiting: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"the stall timeout must be > 0 seconds, got {timeout}")
        if not min_rate >= 0:
            raise ValueError(f"the minimum rate must be >= 0 bytes a second, got {min_rate}")
        self.timeout = timeout
        self.min_rate = min_rate
        self._others_waiting = others_waiting
        self._clock = clock
        self._transfers: set[Transfer] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stall-watch", daemon=True)
        self._thread.start()

    @contextmanager
    def watching(
        self, call: Cancellable, what: str, *, held_to_rate: bool = True
    ) -> Iterator[Transfer]:
        """Watch a transfer for the duration of the block (``held_to_rate``: the rate
        floor applies to it, as to anything holding what other transfers may wait for)."""
        transfer = Transfer(call, what, self._clock, held_to_rate)
        with self._lock:
            self._transfers.add(transfer)
        try:
            yield transfer
        finally:
            with self._lock:
                self._transfers.discard(transfer)

    def close(self) -> None:
        self._stop.set()

    def reason(self, transfer: Transfer, stopped: str, crawled: str) -> str:
        """Why ``transfer`` was cut off, for its node: ``stopped`` (e.g. "its reply stopped
        arriving") or ``crawled`` (e.g. "its reply arrived") completed."""
        if transfer.too_slow is not None:
            return (
                f"{crawled} at {mbit(transfer.too_slow)} while other transfers waited, "
                f"under the floor of {mbit(self.min_rate)}"
            )
        return f"{stopped} for {self.timeout:.0f} s"

    def check(self) -> list[Transfer]:
        """Cut off the transfers stalled, or too slow, now; the ones it cut off."""
        now = self._clock()
        with self._lock:
            cut, crawling = [], []
            for transfer in self._transfers:
                if transfer.cut:
                    continue
                if transfer.is_paused:  # the server's wait: the window starts again after it
                    transfer.forget_rate()
                elif now - transfer.last > self.timeout:
                    transfer.stalled = True
                    cut.append(transfer)
                elif self.min_rate and transfer.held_to_rate:
                    rate = transfer.rate_over(now, self.timeout)
                    if rate is not None and rate < self.min_rate:
                        crawling.append((transfer, rate))
        if crawling and self._others_waiting is not None and self._others_waiting():
            for transfer, rate in crawling:
                transfer.too_slow = rate
                cut.append(transfer)
        for transfer in cut:
            if transfer.too_slow is None:
                why = f"no progress for {now - transfer.last:.0f} s"
            else:
                why = f"{mbit(transfer.too_slow)} over {self.timeout:.0f} s while others waited"
            log.warning("cut off %s: %s", transfer.what, why)
            transfer.call.cancel()
        return cut

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout / 4)):
            self.check()
