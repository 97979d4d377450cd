"""Message-sized buffers: uninitialised, and reused from round to round.

``bytearray(n)`` zero-fills n fresh bytes, faulting them in 4 KiB pages. On
the 2-core CI machine kind (a VM), the first touch of memory the guest has not
used recently costs about 3.5 s of system time per GB (the host backs it page
by page); memory this process freed a moment ago costs ~20x less. A round
needs the same few model-sized buffers every time (a node's task, the
server's replies), so they are kept and handed out again.

A buffer handed out is a view of a pooled numpy array (numpy asks for
transparent huge pages on large allocations); when the last reference to it
and to everything built on it (``memoryview``, ``np.frombuffer`` arrays, the
decoded Message) is gone, the array goes back to the pool.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
import weakref
from collections.abc import Callable

import numpy as np

#: Below this, a buffer is allocated normally and never pooled.
POOL_MIN_BYTES = 16 * 1024 * 1024
#: Pooled sizes are rounded up to this (a huge page), so that messages whose
#: size varies by a few bytes from round to round (their metrics) share buffers.
POOL_GRANULE = 2 * 1024 * 1024


class BufferPool:
    """Idle buffers by exact size, at most ``max_idle`` bytes of them."""

    def __init__(self, *, min_bytes: int = POOL_MIN_BYTES, max_idle: int = 2 * 1024**3) -> None:
        self.min_bytes = min_bytes
        self.max_idle = max_idle
        self._free: dict[int, list[np.ndarray]] = {}
        self._idle = 0
        #: bytes handed out and not yet returned, and the most ever held (out + idle)
        self.in_use = 0
        self.high_water = 0
        # reentrant: a buffer's finalizer (_release) runs in whatever thread drops it, and
        # a garbage-collection pass that an allocation starts inside the lock runs such
        # finalizers there; a plain lock would then wait for itself
        self._lock = threading.RLock()

    def empty(self, nbytes: int) -> memoryview:
        """A writable, uninitialised buffer of ``nbytes`` bytes."""
        if nbytes < self.min_bytes:
            return np.empty(nbytes, dtype=np.uint8).data
        size = -(-nbytes // POOL_GRANULE) * POOL_GRANULE
        with self._lock:
            stack = self._free.get(size)
            base = stack.pop() if stack else None
            if base is not None:
                self._idle -= size
            self.in_use += size
            self.high_water = max(self.high_water, self.in_use + self._idle)
        if base is None:
            base = np.empty(size, dtype=np.uint8)
        view = base[:nbytes]  # a new object over the memory: its death returns ``base``
        weakref.finalize(view, self._release, base)
        return view.data

    def clear(self) -> None:
        """Give every idle buffer back to the operating system."""
        with self._lock:
            self._free.clear()
            self._idle = 0

    @property
    def idle_bytes(self) -> int:
        return self._idle

    def _release(self, base: np.ndarray) -> None:
        with self._lock:
            self.in_use -= base.nbytes
            if self._idle + base.nbytes <= self.max_idle:
                self._free.setdefault(base.nbytes, []).append(base)
                self._idle += base.nbytes


_POOL = BufferPool()


def empty_buffer(nbytes: int) -> memoryview:
    """A writable, uninitialised ``nbytes`` buffer (from the process-wide pool when large)."""
    return _POOL.empty(nbytes)


#: where :func:`sendable_buffer` takes large buffers from (None: the pool)
_SENDABLE: Callable[[int], memoryview | None] | None = None


def send_buffers_from(allocate: Callable[[int], memoryview | None] | None) -> None:
    """Take :func:`sendable_buffer` s from ``allocate`` (a server app process: its shared
    blocks, which the server reads a model from where it lies), or the pool (None)."""
    global _SENDABLE
    _SENDABLE = allocate


def sendable_buffer(nbytes: int) -> memoryview:
    """A buffer for arrays this process will send as they are (a model it computed): from
    the allocator :func:`send_buffers_from` set, when it has one, else :func:`empty_buffer`."""
    chosen = _SENDABLE(nbytes) if _SENDABLE is not None else None
    return chosen if chosen is not None else _POOL.empty(nbytes)


def pool_stats() -> dict[str, float]:
    """The process-wide pool in MiB: in use, idle, and the high-water mark of both."""
    mib = 1024.0 * 1024.0
    return {
        "in_use_mb": _POOL.in_use / mib,
        "idle_mb": _POOL.idle_bytes / mib,
        "high_water_mb": _POOL.high_water / mib,
    }


def clear_pool() -> None:
    """Return idle pooled buffers to the operating system (e.g. after a run)."""
    _POOL.clear()


#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def tune_malloc(
    *,
    mmap_threshold: int = 32 * 1024 * 1024,
    trim_threshold: int = 64 * 1024 * 1024,
    arena_max: int = 2,
) -> bool:
    """Keep freed message-sized memory in the process (glibc only; False elsewhere).

    gRPC moves a large model as thousands of 4 MiB messages. With glibc's
    defaults each is mmap'ed and unmapped again, or trimmed from the heap, so
    every one faults in fresh pages: on the VM kind measured (free memory is
    reported back to the host) that was ~1 s of system time per 100M-parameter
    round on the server. Serving them from the heap (mmap only above 32 MiB)
    and keeping up to ``trim_threshold`` bytes of free heap makes them reuse
    warm memory. Long-running processes (server, node) call this at start.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(
        mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        and mallopt(_M_TRIM_THRESHOLD, trim_threshold)
        and mallopt(_M_ARENA_MAX, arena_max)
    )
