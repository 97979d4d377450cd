"""Replies received to disk while the transfer budget is full: slow links upload at once.

The transfer budget keeps a large model's replies out of the server's memory
until the ones before are folded: with a 100M-parameter model, one reply at a
time. On a fast link that costs little; on a hospital's 20 Mbit/s link it
turns four 160-second uploads into one of 640 seconds, each node's upload
waiting for the one before. A reply that has waited ``--spill-after`` seconds
(:data:`DEFAULT_SPILL_AFTER_SECONDS`) for the budget, or at once one from a node
known to be on a slow link (:mod:`consortium.transport.link_rates`), is instead
received into a file of the server's spill folder (``--spill-dir``, at most
``--spill-mb`` in all), written chunk by chunk as it arrives: the page cache
holds it, not the server's own memory, and the kernel writes it out and
reclaims it as it needs. Once the upload is complete it waits for the budget
like any other reply and is read back into memory in one pass, so the fold
sees nothing different; its file is gone as soon as it was read, or when the
transfer ends any other way.

Each reply on disk lets the server read one more reply at once (the receive
slots), which waits its turn and spills in turn if its wait is long too (at
once from a slow link). On a fast link the fold frees the budget first, so
nothing is written and no more streams are open than without spilling (each
open stream holds gRPC's buffers). Spilling every waiting reply at once while
one is on disk, whatever the link, was tried: with 8 nodes and a 100M model on
loopback, the warm-up rounds then read 7 replies at once and the server's tree
peaked at 3.09x the model (2.89-2.92x without); judged by the link, loopback
never spills at once.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path

from consortium.core.errors import ConsortiumError

log = logging.getLogger("consortium.transport")

#: ``--spill-mb``'s default: room for a few large replies at once (0 turns spilling off)
DEFAULT_SPILL_MB = 4096
#: how long a reply waits for the budget before it is received to disk instead. On a
#: fast link the budget comes free sooner, so replies wait in memory: with 8 nodes and a
#: 100M model on loopback, spilling after 2 s gained nothing and the server's own memory
#: grew (233-258 MB against 136-199: more streams read at once); after 10 s only the two
#: warm-up rounds spilled (docs/operations.md). On a 20 Mbit/s link an
#: upload of that model takes 160 s.
DEFAULT_SPILL_AFTER_SECONDS = 10.0


class SpillError(ConsortiumError):
    """A spilled reply could not be written or read back (the disk is full, say)."""


class SpillStore:
    """A folder for spilled replies and the bytes they may take there together."""

    def __init__(
        self, folder: Path, capacity: int, after: float = DEFAULT_SPILL_AFTER_SECONDS
    ) -> None:
        if capacity < 0:
            raise ValueError(f"the spill capacity must be >= 0 bytes, got {capacity}")
        if after < 0:
            raise ValueError(f"the wait before spilling must be >= 0 seconds, got {after}")
        self.folder = folder
        self.capacity = capacity
        #: seconds a reply waits for the budget before it is received here
        self.after = after
        self._used = 0
        self._open = 0
        self._lock = threading.Lock()
        if capacity:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    @property
    def used(self) -> int:
        with self._lock:
            return self._used

    @property
    def files_open(self) -> int:
        """Replies being received to disk, or received and waiting to be read back."""
        with self._lock:
            return self._open

    def open(self, nbytes: int, why: str) -> SpillFile | None:
        """A new file for a reply of ``nbytes``, its room reserved; None if it does not fit.
        ``why`` it is received to disk, for the log."""
        with self._lock:
            if self._used + nbytes > self.capacity:
                return None
            self._used += nbytes
            self._open += 1
        try:
            fd, name = tempfile.mkstemp(prefix="reply-", suffix=".spill", dir=self.folder)
        except OSError as exc:
            self.release(nbytes)
            log.warning("could not spill a reply to %s: %s", self.folder, exc)
            return None
        log.info("receiving a reply of %.0f MB to disk: %s", nbytes / 1e6, why)
        return SpillFile(self, fd, Path(name), nbytes)

    def release(self, nbytes: int) -> None:
        """A spilled reply's room is free again (its file closed)."""
        with self._lock:
            self._used -= nbytes
            self._open -= 1


class SpillFile:
    """One reply being received to disk: :meth:`write` as it arrives, then
    :meth:`read_into` memory; :meth:`close` (always) removes it."""

    def __init__(self, store: SpillStore, fd: int, path: Path, nbytes: int) -> None:
        self._store = store
        self._fd = fd
        self.path = path
        self.nbytes = nbytes
        self.written = 0
        # unlinked at once: a crash leaves nothing behind, and no other process may open it
        path.unlink()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        try:
            while view.nbytes:
                n = os.write(self._fd, view)
                view = view[n:]
                self.written += n
        except OSError as exc:
            raise SpillError(f"could not write a spilled reply: {exc}") from exc

    def read_into(self, buffer: memoryview) -> None:
        """The whole reply, into ``buffer`` (of :attr:`written` bytes or more)."""
        target = buffer.cast("B") if buffer.format != "B" else buffer
        done = 0
        try:
            while done < self.written:
                n = os.preadv(self._fd, [target[done : self.written]], done)
                if n <= 0:
                    raise SpillError(f"a spilled reply ended after {done} of {self.written} bytes")
                done += n
        except OSError as exc:
            raise SpillError(f"could not read a spilled reply back: {exc}") from exc

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._store.release(self.nbytes)
