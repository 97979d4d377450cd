"""Transfers that stop moving are cut off, and only their node pays for it.

A node that announces a reply and then goes silent, or stops reading the task
it is being sent, would hold a server thread, its share of the transfer
budget and the round (the honest nodes' replies waiting behind it) until the
round's deadline. :class:`StallWatch` notes each transfer's last progress
(a chunk received or sent) and cancels the call of one that made none for
``timeout`` seconds; the service then fails that node's task for the round.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

log = logging.getLogger("consortium.transport")

#: seconds a transfer may make no progress (one 4 MiB chunk) before it is cut off
DEFAULT_STALL_TIMEOUT = 60.0


class Cancellable(Protocol):
    """What the watch needs of a call: a way to end it (a gRPC ServicerContext)."""

    def cancel(self) -> None: ...


class Transfer:
    """One transfer under watch: call :meth:`moved` whenever a chunk went through."""

    __slots__ = ("call", "last", "stalled", "what")

    def __init__(self, call: Cancellable, what: str, now: float) -> None:
        self.call = call
        self.what = what
        self.last = now
        #: set (once) when the watch cut the transfer off
        self.stalled = False

    def moved(self) -> None:
        self.last = time.monotonic()


class StallWatch:
    """Cancels the calls of transfers that made no progress for ``timeout`` seconds."""

    def __init__(self, timeout: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not timeout > 0:
            raise ValueError(f"the stall timeout must be > 0 seconds, got {timeout}")
        self.timeout = timeout
        self._clock = clock
        self._transfers: set[Transfer] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stall-watch", daemon=True)
        self._thread.start()

    @contextmanager
    def watching(self, call: Cancellable, what: str) -> Iterator[Transfer]:
        """Watch a transfer for the duration of the block."""
        transfer = Transfer(call, what, self._clock())
        with self._lock:
            self._transfers.add(transfer)
        try:
            yield transfer
        finally:
            with self._lock:
                self._transfers.discard(transfer)

    def close(self) -> None:
        self._stop.set()

    def check(self) -> list[Transfer]:
        """Cut off the transfers stalled now; the ones it cut off."""
        now = self._clock()
        with self._lock:
            stalled = [t for t in self._transfers if not t.stalled and now - t.last > self.timeout]
            for transfer in stalled:
                transfer.stalled = True
        for transfer in stalled:
            log.warning("cut off %s: no progress for %.0f s", transfer.what, now - transfer.last)
            transfer.call.cancel()
        return stalled

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout / 4)):
            self.check()
