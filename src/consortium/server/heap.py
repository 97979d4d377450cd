"""Give the server's freed heap back to the operating system (glibc only).

The server keeps freed memory on purpose (:func:`~consortium.core.buffers.tune_malloc`:
a large model's 4 MiB messages reuse warm pages instead of faulting in fresh
ones). With hundreds of nodes that free memory is what the server's RSS is
made of: measured with 200 nodes and a 1M-parameter model, glibc's arenas held
~100–170 MB free beside ~60–100 MB in use, scattered between live blocks where
no threshold trims it, and kept for the server's lifetime. :class:`HeapTrimmer`
calls ``malloc_trim(0)`` (which also releases free pages inside the heap)
whenever the free part has grown past ``above`` bytes, at most once per
``every`` seconds: what the server holds then follows what it uses, at the cost
of faulting pages in again (~25k page faults, a few ms, per 100 MB given back).
Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import time
from collections.abc import Callable

#: free heap bytes above which the trimmer gives memory back
TRIM_ABOVE = 32 * 1024 * 1024
#: the least seconds between two trims
TRIM_EVERY = 1.0


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (malloc.h, glibc >= 2.33)."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")
    ]  # fmt: skip


class Glibc:
    """``mallinfo2`` and ``malloc_trim`` of this process's C library."""

    def __init__(self, libc: ctypes.CDLL) -> None:
        self._mallinfo2 = libc.mallinfo2
        self._mallinfo2.argtypes, self._mallinfo2.restype = [], _MallInfo2
        self._trim = libc.malloc_trim
        self._trim.argtypes, self._trim.restype = [ctypes.c_size_t], ctypes.c_int

    @classmethod
    def load(cls) -> Glibc | None:
        """This process's glibc, or None (not Linux, musl, glibc before 2.33)."""
        if not sys.platform.startswith("linux"):
            return None
        try:
            return cls(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"))
        except (OSError, AttributeError):  # no such library or symbol
            return None

    def free_bytes(self) -> int:
        """Bytes free in malloc's arenas (not counting memory it has mapped separately)."""
        return int(self._mallinfo2().fordblks)

    def in_use_bytes(self) -> int:
        """Bytes allocated from malloc's arenas now."""
        return int(self._mallinfo2().uordblks)

    def mapped_bytes(self) -> int:
        """Bytes malloc has mapped apart from its arenas (large blocks), all in use."""
        return int(self._mallinfo2().hblkhd)

    def trim(self) -> None:
        self._trim(0)


class HeapTrimmer:
    """Calls ``malloc_trim`` when the heap's free part has grown; see the module docstring.

    :meth:`maybe_trim` is cheap (a clock read, and ``mallinfo2`` at most once per
    ``every`` seconds): call it from a periodic thread (the fleet's liveness watch).
    """

    def __init__(
        self,
        libc: Glibc | None,
        *,
        above: int = TRIM_ABOVE,
        every: float = TRIM_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.libc = libc
        self.above = above
        self.every = every
        self._clock = clock
        self._next = 0.0
        #: how many times it gave memory back
        self.trims = 0

    @classmethod
    def for_this_process(cls) -> HeapTrimmer:
        return cls(Glibc.load())

    def maybe_trim(self) -> bool:
        """Trim if the last look was ``every`` seconds ago and ``above`` bytes are free."""
        if self.libc is None:
            return False
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self.every
        if self.libc.free_bytes() <= self.above:
            return False
        self.libc.trim()
        self.trims += 1
        return True
