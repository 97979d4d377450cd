"""The buffer pool: model-sized buffers come back round after round."""

from __future__ import annotations

import gc

import numpy as np

from consortium.core.buffers import POOL_GRANULE, BufferPool

MB = 1024 * 1024


def _address(view: memoryview) -> int:
    return int(np.frombuffer(view, dtype=np.uint8).ctypes.data)


def test_a_freed_buffer_is_handed_out_again_for_a_slightly_different_size() -> None:
    pool = BufferPool(min_bytes=MB, max_idle=64 * MB)
    first = pool.empty(20 * MB + 123)
    where = _address(first)
    assert len(first) == 20 * MB + 123
    del first
    gc.collect()
    assert pool.idle_bytes == -(-(20 * MB + 123) // POOL_GRANULE) * POOL_GRANULE
    again = pool.empty(20 * MB + 7)  # e.g. the same model with shorter metrics
    assert _address(again) == where and len(again) == 20 * MB + 7
    assert pool.idle_bytes == 0


def test_a_buffer_returns_only_when_every_view_of_it_is_gone() -> None:
    pool = BufferPool(min_bytes=MB)
    buffer = pool.empty(4 * MB)
    array = np.frombuffer(buffer, dtype=np.float32)[10:]
    del buffer
    gc.collect()
    assert pool.idle_bytes == 0  # the array still uses the memory
    array[:] = 1.0
    del array
    gc.collect()
    assert pool.idle_bytes == 4 * MB


def test_idle_memory_is_capped_and_small_buffers_are_not_pooled() -> None:
    pool = BufferPool(min_bytes=MB, max_idle=6 * MB)
    held = [pool.empty(4 * MB) for _ in range(3)]
    small = pool.empty(MB // 2)
    del held, small
    gc.collect()
    assert pool.idle_bytes == 4 * MB  # one kept; two more would exceed 6 MB
    pool.clear()
    assert pool.idle_bytes == 0


def test_tune_malloc_applies_on_glibc_linux() -> None:
    import platform
    import sys

    from consortium.core.buffers import tune_malloc

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert tune_malloc() is glibc


def test_a_buffer_freed_inside_the_pools_own_lock_does_not_deadlock() -> None:
    """A garbage-collection pass started by an allocation inside the pool's lock runs the
    finalizers of buffers in cycles there, in the same thread: their return to the pool
    takes the lock again. Simulated here by dropping a buffer while holding the lock; a
    plain lock waited for itself forever."""
    import threading

    pool = BufferPool(min_bytes=MB)
    buffer = pool.empty(4 * MB)
    returned = threading.Event()

    def drop_inside_the_lock() -> None:
        nonlocal buffer
        with pool._lock:  # where a collection would run the finalizer
            del buffer
        returned.set()

    threading.Thread(target=drop_inside_the_lock, daemon=True).start()
    assert returned.wait(5), "the buffer's return to the pool waited for the pool's own lock"
    assert pool.idle_bytes == 4 * MB
