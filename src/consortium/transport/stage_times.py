"""Per-stage timers of the transport, off unless ``CONSORTIUM_STAGE_TIMES`` names a folder.

Where does a large-model round go: checksums and copies of the chunk encoding,
gRPC and TLS, reassembly, decoding, the checkpoint? Each stage adds its
wall seconds, its thread's CPU seconds (robust when other programs load the
machine) and its bytes to a counter of this process; with the variable set, a
snapshot of the counters (with the wall-clock time) is appended as a JSON line
to ``<folder>/<role>-<pid>.jsonl`` whenever a transfer ends (and at most every
:data:`WRITE_EVERY` seconds otherwise), so a process stopped by a signal leaves
its figures behind and a reader can take the difference between two moments
(``benchmarks/transport.py --stages`` does). Unset, :func:`stage` costs one
attribute test: the timers are for profiling runs, not for production servers.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

#: the folder the counters are written to; unset or empty: no timing at all
STAGE_TIMES_ENV = "CONSORTIUM_STAGE_TIMES"
#: seconds between two writes of a process's counters (besides the end of a transfer)
WRITE_EVERY = 0.5


class StageTimes:
    """Seconds, calls and bytes per stage name, for one process (thread-safe)."""

    def __init__(self, folder: str) -> None:
        self.enabled = bool(folder)
        self._folder = Path(folder) if folder else None
        self._role = "process"
        self._totals: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self._written = 0.0

    def set_role(self, role: str) -> None:
        """Name this process's file (``server``, ``node``, ...)."""
        self._role = role

    def add(self, name: str, seconds: float, nbytes: int = 0, cpu: float = 0.0) -> None:
        """Count ``seconds`` of wall time (``cpu`` of them on this thread's CPU)."""
        with self._lock:
            total = self._totals.setdefault(name, [0.0, 0, 0, 0.0])
            total[0] += seconds
            total[1] += 1
            total[2] += nbytes
            total[3] += cpu

    def snapshot(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {
                k: {"seconds": v[0], "calls": v[1], "bytes": v[2], "cpu": v[3]}
                for k, v in self._totals.items()
            }

    def flush(self, *, force: bool = False) -> None:
        """Write the counters (if enabled, and not written within WRITE_EVERY seconds)."""
        if self._folder is None:
            return
        now = time.monotonic()
        if not force and now - self._written < WRITE_EVERY:
            return
        self._written = now
        line = json.dumps({"time": time.time(), "stages": self.snapshot()})
        with open(self._folder / f"{self._role}-{os.getpid()}.jsonl", "a") as out:
            out.write(line + "\n")


#: this process's counters
TIMES = StageTimes(os.environ.get(STAGE_TIMES_ENV, ""))


def set_role(role: str) -> None:
    """Name this process's file of counters (``server``, ``node``)."""
    TIMES.set_role(role)


def flush(*, force: bool = False) -> None:
    """Write this process's counters, if timing is on (see :meth:`StageTimes.flush`)."""
    TIMES.flush(force=force)


@contextmanager
def stage(name: str, nbytes: int = 0) -> Iterator[None]:
    """Time the block as stage ``name`` (nothing at all when timing is off)."""
    if not TIMES.enabled:
        yield
        return
    start, cpu = time.perf_counter(), time.thread_time()
    try:
        yield
    finally:
        TIMES.add(name, time.perf_counter() - start, nbytes, time.thread_time() - cpu)


def timed(items: Iterable[T], name: str) -> Iterable[T]:
    """``items``, the time each step takes counted as stage ``name`` when timing is on;
    else ``items`` itself, untouched (no generator between the caller and, say, a gRPC
    request iterator)."""
    return _timed(items, name) if TIMES.enabled else items


def _timed(items: Iterable[T], name: str) -> Iterator[T]:
    it = iter(items)
    while True:
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            item = next(it)
        except StopIteration:
            TIMES.add(name, time.perf_counter() - start, 0, time.thread_time() - cpu)
            return
        TIMES.add(name, time.perf_counter() - start, 0, time.thread_time() - cpu)
        yield item
