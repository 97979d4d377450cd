"""Passes over model-sized arrays, split across the process's CPUs.

A server folds each reply into its running sum, checks it holds no NaN or inf,
and divides the sum into the mean: each a pass over the whole model, in numpy,
which releases the GIL inside its loops. On the 2-core machine measured, a
100M-parameter round's two checks, two folds and division took 319 ms on one
thread and 173 ms cut in halves run at once (``benchmarks/fold.py``;
``docs/benchmarks.md``, "A 100M × 2 round measured without disturbing it; the
fold on two cores"). A round waits for the last
reply's check, fold and division before the next model goes out.

The split never changes a result: each element is computed by the same
operations whichever thread computes it, so the bits are those of one thread.
Small arrays (under :data:`SPLIT_MIN_ELEMENTS`) run on the caller's thread: handing
work to another thread costs more than it saves there.
"""

from __future__ import annotations

import itertools
import os
import queue
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

#: arrays of at least this many elements are split; smaller ones run on one thread (a
#: pass over 1M float32 takes ~0.5 ms, a hand-off to another thread some tens of us)
SPLIT_MIN_ELEMENTS = 1 << 20
#: threads one pass uses at most, the caller's included
MAX_SPLIT_THREADS = 4
#: ranges are cut at multiples of this many elements: no two threads write one cache line
SPLIT_ALIGN = 4096


def cpu_count() -> int:
    """The CPUs this process may run on: its affinity on Linux (a container or
    ``taskset`` may allow fewer than the machine has), the machine's elsewhere."""
    if sys.platform == "linux":
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def split_ranges(size: int, parts: int, align: int) -> list[tuple[int, int]]:
    """``[0, size)`` cut into at most ``parts`` contiguous ranges of about equal length,
    every cut at a multiple of ``align`` (so blocks of ``align`` elements fall as they
    would in one pass); empty ranges are left out."""
    if size <= 0:
        return []
    blocks = -(-size // align)
    parts = max(1, min(parts, blocks))
    cuts = [min(size, (blocks * i // parts) * align) for i in range(parts + 1)]
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def split_parts(size: int, align: int | None = None) -> int:
    """How many ranges :func:`run_split` cuts ``size`` elements into (cut at multiples of
    ``align``, by default :data:`SPLIT_ALIGN`), from this thread: 1 for a small array, on
    one CPU, inside a range being worked on, or where no helper thread could start."""
    if size < SPLIT_MIN_ELEMENTS or _LOCAL.inside:
        return 1
    threads = _threads()
    threads = min(threads, 1 + _helpers(threads - 1).count)
    return len(split_ranges(size, threads, align or SPLIT_ALIGN))


def run_split(
    size: int,
    work: Callable[[int, int, int], T],
    *,
    align: int | None = None,
    most: int | None = None,
) -> list[T]:
    """``work(start, stop, index)`` over ``[0, size)`` cut by :func:`split_ranges` (see
    :func:`split_parts`; into at most ``most`` ranges, for a caller that sized something
    per range by an earlier :func:`split_parts`, which the process's CPUs may since
    have outgrown), the ranges at once on the process's CPUs (``index`` numbers them
    from 0, which runs on the calling thread); their results in range order. The first
    exception raised is raised, once every range ended."""
    parts = split_parts(size, align)
    if most is not None:
        parts = min(parts, most)
    if parts < 2:
        return [work(0, size, 0)] if size > 0 else []
    ranges = split_ranges(size, parts, align or SPLIT_ALIGN)
    helpers = _helpers(parts - 1)
    futures = [helpers.submit(work, a, b, i) for i, (a, b) in enumerate(ranges[1:], start=1)]
    try:
        first = _inside(work, *ranges[0], 0)
    finally:
        done = [f.exception() for f in futures]  # waits for each: none outlives the call
    for error in done:
        if error is not None:
            raise error
    return [first, *(f.result() for f in futures)]


class _Local(threading.local):
    inside = False


_LOCAL = _Local()


def _threads() -> int:
    return min(MAX_SPLIT_THREADS, cpu_count())


def _inside(work: Callable[[int, int, int], T], start: int, stop: int, index: int) -> T:
    """Run one range, marked so that a split asked for inside it stays on its thread
    (the helpers would otherwise wait for themselves)."""
    outer, _LOCAL.inside = _LOCAL.inside, True
    try:
        return work(start, stop, index)
    finally:
        _LOCAL.inside = outer


class _Helpers:
    """Threads that work on ranges handed to them, started as they are first needed; as
    many as could start (a process under an address-space limit may start none: its
    passes then stay on the caller's thread, rather than fail)."""

    def __init__(self) -> None:
        self._ranges: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.count = 0
        self._failed = False

    def grow(self, wanted: int) -> None:
        with self._lock:
            while self.count < wanted and not self._failed:
                thread = threading.Thread(
                    target=self._serve, name=f"consortium-split-{self.count + 1}", daemon=True
                )
                try:
                    thread.start()
                except RuntimeError:  # "can't start new thread"
                    self._failed = True
                    return
                self.count += 1

    def submit(self, work: Callable[[int, int, int], T], *args: int) -> Future[T]:
        future: Future[T] = Future()
        self._ranges.put((future, lambda: _inside(work, *args)))
        return future

    def _serve(self) -> None:
        while True:
            future, run = self._ranges.get()
            future.set_running_or_notify_cancel()
            try:
                future.set_result(run())
            except BaseException as exc:  # handed to the caller, who raises it
                future.set_exception(exc)
            del future, run


_HELPERS: _Helpers | None = None
_HELPERS_LOCK = threading.Lock()


def _helpers(wanted: int) -> _Helpers:
    """The process's helper threads, at least ``wanted`` of them if they can start."""
    global _HELPERS
    with _HELPERS_LOCK:
        if _HELPERS is None:
            _HELPERS = _Helpers()
        helpers = _HELPERS
    helpers.grow(wanted)
    return helpers


def _forget_helpers() -> None:
    """In a forked child: the parent's threads did not come along."""
    global _HELPERS, _HELPERS_LOCK
    _HELPERS, _HELPERS_LOCK = None, threading.Lock()


if sys.platform != "win32":
    os.register_at_fork(after_in_child=_forget_helpers)
