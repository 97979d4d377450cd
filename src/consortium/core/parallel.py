"""Passes over model-sized arrays, split across the process's CPUs.

A server folds each reply into its running sum, checks it holds no NaN or inf,
and divides the sum into the mean: each a pass over the whole model, in numpy,
which releases the GIL inside its loops. On the 2-core machine measured, a
100M-parameter round's two checks, two folds and division took 315 ms on one
thread and 171 ms cut in halves run at once (``benchmarks/fold.py``;
``docs/benchmarks.md``, "The fold on two cores"). A round waits for the last
reply's check, fold and division before the next model goes out.

The split never changes a result: each element is computed by the same
operations whichever thread computes it, so the bits are those of one thread.
Small arrays (under :data:`SPLIT_MIN_ELEMENTS`) run on the caller's thread: handing
work to another thread costs more than it saves there.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

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
    one CPU, or inside a range being worked on."""
    if size < SPLIT_MIN_ELEMENTS or _LOCAL.inside:
        return 1
    return len(split_ranges(size, _threads(), align or SPLIT_ALIGN))


def run_split(
    size: int, work: Callable[[int, int, int], T], *, align: int | None = None
) -> list[T]:
    """``work(start, stop, index)`` over ``[0, size)`` cut by :func:`split_ranges`, the
    ranges at once on the process's CPUs (``index`` numbers them from 0, which runs on
    the calling thread); their results in range order. One range, on the caller's
    thread, below :data:`SPLIT_MIN_ELEMENTS`, on one CPU, or when called from a range
    being worked on. The first exception raised is raised, once every range ended."""
    parts = split_parts(size, align)
    if parts < 2:
        return [work(0, size, 0)] if size > 0 else []
    ranges = split_ranges(size, parts, align or SPLIT_ALIGN)
    pool = _pool(_threads() - 1)
    futures: list[Future[T]] = [
        pool.submit(_inside, work, a, b, i) for i, (a, b) in enumerate(ranges[1:], start=1)
    ]
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
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _threads() -> int:
    return min(MAX_SPLIT_THREADS, cpu_count())


def _inside(work: Callable[[int, int, int], T], start: int, stop: int, index: int) -> T:
    """Run one range, marked so that a split asked for inside it stays on its thread
    (the pool's threads would otherwise wait for themselves)."""
    outer, _LOCAL.inside = _LOCAL.inside, True
    try:
        return work(start, stop, index)
    finally:
        _LOCAL.inside = outer


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(workers, thread_name_prefix="consortium-split")
        return _POOL


def _forget_pool() -> None:
    """In a forked child: the parent's threads did not come along."""
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


if sys.platform != "win32":
    os.register_at_fork(after_in_child=_forget_pool)
