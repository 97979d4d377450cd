"""Model-sized payloads between a process and its app process, as shared memory.

A 100M-parameter model crossing the socket between a node (or the server) and
its app process costs a copy into the kernel and one out of it, ~0.13 CPU-s per
400 MB, on the round's critical path (``docs/benchmarks.md``, "Deployment
transport"), and, in the server's app, a copy of every reply it folds. With
shared memory (``spawn(..., shared=True)``) each side writes
large payloads into **blocks** of its own, memfds it keeps and reuses (warm
pages: fresh memory costs ~3.5 s a GB on the VM kind measured), and a frame
names a range of a block instead of carrying its bytes
(:mod:`~consortium.sandbox.channel`):

* **Parent to child** (a task to the node's app, a reply to the server's app):
  the parent receives the payload from the network straight into one of its
  app process's blocks (:meth:`Lender.allocate`, the reassembly buffer itself),
  so this costs no memory beyond the buffer it replaces. A node's app maps the
  range privately, copy-on-write (:meth:`Mappings.private_view`: the app gets
  writable arrays, as from the socket, and a page is copied only where it writes
  one), and gives the block back with its reply, once its task is gone (a
  kernel that refuses such a mapping: it copies the range out and says so at
  once). The server's app reads the range where it lies, read-only (it folds
  the reply from there, so no copy of it waits in the app) and says so as soon
  as its last view of it is gone (a thread of its channel's; no later than its
  next frame, :mod:`~consortium.sandbox.let_go`); until then the parent keeps
  what it sent alive (:meth:`Lender.lend`), so the server's transfer budget
  still counts the reply. The parent reuses the block once both are done with
  it; a payload that finds the block given back but the parent's own buffer
  over it not yet dead waits a moment for it rather than take a new block.
* **Child to parent** (a node app's reply, the server app's model): the child
  copies the payload into one of its own blocks (:meth:`Lender.stage`), unless
  it already lies in one (the server app's model: the fold computes it there,
  ``Arrays.encoded_empty`` over ``core.buffers.sendable_buffer``), and the
  parent reads it where it lies, read-only, without a copy; the child gets the
  block back once the parent's last view of it is gone (told with the parent's
  next frame). The
  parent decodes such a payload once into its own objects (headers, names,
  shapes); the child can still change the array bytes while the parent sends
  them on, which changes only what the child's own reply carries: a parent must
  copy what it checks the content of before relying on it (nothing does today).

What keeps each side in its place:

* A block is sealed as soon as it is made (``F_SEAL_FUTURE_WRITE``,
  ``F_SEAL_SHRINK``, ``F_SEAL_GROW``, ``F_SEAL_SEAL``): only its maker's own
  mapping can write it; the other side can map it read-only, never write it,
  and a reader refuses a block that is not sealed against shrinking (its maker
  could otherwise cut it under the reader: a SIGBUS).
* Each child has blocks of its own (its channel's :class:`Lender`), never
  used for anything else: the parent's blocks a child has seen hold that
  child's run's data only, whatever it keeps mapped.
* A side has at most :data:`MAX_BLOCKS` blocks; when all are in use (a child
  that keeps payloads alive) a payload goes into an ordinary buffer and through
  the socket, as before.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import mmap
import os
import stat
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from consortium.core.buffers import POOL_GRANULE, POOL_MIN_BYTES
from consortium.core.errors import ConsortiumError

Buffer = bytes | bytearray | memoryview

#: payloads from this size on are received into a block (smaller: the socket is as cheap)
SHARE_MIN_BYTES = POOL_MIN_BYTES
#: a part of a frame from this size on, lying in a block, travels as a reference to it
REFERENCE_MIN_BYTES = 64 * 1024
#: the most blocks one child has
MAX_BLOCKS = 4
#: how long a payload waits for a block being freed before it takes a new one (see
#: Lender._await_freeing), and how often it looks
FREEING_WAIT_SECONDS = 0.5
FREEING_POLL_SECONDS = 0.002
#: linux/fcntl.h; Python's fcntl module does not name it (Linux 5.1+)
F_SEAL_FUTURE_WRITE = 0x0010
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | F_SEAL_FUTURE_WRITE | fcntl.F_SEAL_SEAL


class SharedBlockError(ConsortiumError):
    """A frame's reference to shared memory is not one this side accepts."""


class Block:
    """A sealed memfd and the parent's writable mapping of it."""

    def __init__(self, block_id: int, size: int) -> None:
        self.block_id = block_id
        self.size = size
        #: a buffer handed out over it is alive (the parent still uses the payload)
        self.allocated = False
        #: frames naming it that the other side has not yet released
        self.lent = 0
        #: the other side released it while its buffer here was still alive (it is
        #: free once that goes)
        self.given_back = False
        #: for each of those frames, the parts it sent from this side's buffers: kept alive
        #: until released, so that whoever waits for their memory to be freed (the
        #: server's transfer budget) counts them while the other side still reads them
        self.kept: collections.deque[list[Buffer]] = collections.deque()
        #: marks it free once the buffer handed out over it is gone (see Lender.returned)
        self.on_freed: weakref.finalize[..., Any] | None = None
        self.fd = os.memfd_create(f"consortium-{block_id}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, size)
            self._map = mmap.mmap(self.fd, size)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, _SEALS)
        except BaseException:
            os.close(self.fd)
            raise
        self.array = np.frombuffer(self._map, dtype=np.uint8)
        self.address = int(self.array.__array_interface__["data"][0])

    @property
    def free(self) -> bool:
        """Neither a buffer over it here nor a frame naming it over there is alive."""
        return not self.allocated and not self.lent

    @property
    def being_freed(self) -> bool:
        """The other side gave it back; only this side's buffer over it is left to die."""
        return self.allocated and self.given_back

    def close(self) -> None:
        del self.array
        with contextlib.suppress(BufferError):  # a payload over it still alive: GC's job
            self._map.close()
        os.close(self.fd)


@dataclass(frozen=True, slots=True)
class Reference:
    """``size`` bytes at ``offset`` in ``block``, at ``position`` in a frame's payload."""

    position: int
    block: Block
    offset: int
    size: int


class Lender:
    """One child's blocks, held by its parent."""

    def __init__(self) -> None:
        self._blocks: list[Block] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def block_count(self) -> int:
        """How many blocks this side has made (they are kept, and reused)."""
        return len(self._blocks)

    def allocate(self, nbytes: int) -> memoryview | None:
        """A writable buffer of ``nbytes`` in a free block of this child: one of that size,
        else a new one (while it has fewer than :data:`MAX_BLOCKS`, or in place of a free
        block of another size); None if all are in use or the payload is small."""
        taken = self._take(nbytes)
        return taken[1] if taken is not None else None

    def allocate_for_upload(self, nbytes: int) -> memoryview | None:
        """:meth:`allocate`, for a reply the server receives for its app: first it waits a
        moment for a block the app has given back and whose buffer here is being let go
        of (:meth:`_await_freeing`). Not for what a side keeps for long after the other
        gave it back (the app's model, which it may hold for the next round): that wait
        would come to nothing."""
        if nbytes >= SHARE_MIN_BYTES:
            self._await_freeing(_block_size(nbytes))
        return self.allocate(nbytes)

    def _take(self, nbytes: int) -> tuple[Block, memoryview] | None:
        """A free block and a buffer of ``nbytes`` at its start (see :meth:`allocate`)."""
        if nbytes < SHARE_MIN_BYTES:
            return None
        size = _block_size(nbytes)
        with self._lock:
            if self._closed:
                return None
            free = [b for b in self._blocks if b.free]
            block = next((b for b in free if b.size == size), None)
            if block is None and (len(self._blocks) < MAX_BLOCKS or free):
                # a new block; at MAX_BLOCKS, one in place of a free block of another size
                # (same id: a reader's mapping of the old one no longer matches its inode)
                index = len(self._blocks) if len(self._blocks) < MAX_BLOCKS \
                    else self._blocks.index(free[0])  # fmt: skip
                try:  # fails where there is no memfd, or under a file size limit
                    block = Block(index + 1, size)
                except OSError:
                    return None
                if index < len(self._blocks):
                    self._blocks[index].close()
                    self._blocks[index] = block
                else:
                    self._blocks.append(block)
            if block is None:
                return None
            block.allocated, block.given_back = True, False
        view = block.array[:nbytes]  # its death (and every view of it) frees the block
        block.on_freed = weakref.finalize(view, _freed, block)
        return block, view.data

    def _await_freeing(self, size: int) -> None:
        """With no free block of ``size``, wait a moment for one the other side has given
        back and whose buffer this side is letting go of: the server admits an upload once
        its app consumed the reply before, and that reply's buffer dies a moment later
        (its last reference dropped in another thread). A new block would cost a model's
        memory for the rest of the run."""
        deadline = time.monotonic() + FREEING_WAIT_SECONDS
        while time.monotonic() < deadline:
            with self._lock:
                same = [b for b in self._blocks if b.size == size]
                if any(b.free for b in same) or not any(b.being_freed for b in same):
                    return
            time.sleep(FREEING_POLL_SECONDS)  # polled: the block is marked free by a finalizer

    def stage(self, parts: Sequence[Buffer], nbytes: int) -> tuple[Reference, memoryview] | None:
        """``parts`` (``nbytes`` in all) copied back to back into a free block: the reference
        to send, and the buffer to hold until it is sent (None: no block free)."""
        taken = self._take(nbytes)
        if taken is None:
            return None
        block, view = taken
        target = np.frombuffer(view, dtype=np.uint8)
        offset = 0
        for part in parts:
            src = np.frombuffer(part, dtype=np.uint8)
            np.copyto(target[offset : offset + src.size], src)
            offset += src.size
        return Reference(0, block, 0, nbytes), view

    def references(self, parts: Sequence[Buffer]) -> list[Reference | None]:
        """For each part, where it lies in a block of this child (None: not in one)."""
        out: list[Reference | None] = []
        position = 0
        for part in parts:
            size = memoryview(part).nbytes
            out.append(self._find(part, position, size) if size >= REFERENCE_MIN_BYTES else None)
            position += size
        return out

    def _find(self, part: Buffer, position: int, size: int) -> Reference | None:
        address = int(np.frombuffer(part, dtype=np.uint8).__array_interface__["data"][0])
        for block in self._blocks:
            offset = address - block.address
            if offset >= 0 and offset + size <= block.size:
                return Reference(position, block, offset, size)
        return None

    def lend(self, blocks: Sequence[Block], parts: list[Buffer]) -> None:
        """A frame names ``blocks``; ``parts`` (what it sent from them) are kept until the
        other side releases it."""
        with self._lock:
            for block in blocks:
                block.lent += 1
                block.kept.append(parts)

    def returned(self, block_ids: object) -> None:
        """The child copied what frames named in these blocks (one id per frame and block)."""
        if not isinstance(block_ids, list):
            raise SharedBlockError("a release that is not a list of blocks")
        with self._lock:
            for block_id in block_ids:
                block = self._by_id(block_id)
                if block is None or block.lent <= 0:
                    raise SharedBlockError(f"released block {block_id!r} was not lent")
                block.lent -= 1
                block.given_back = block.lent == 0
                _free_first(block)  # before what the frame sent, kept until now, may go
                block.kept.popleft()

    def _by_id(self, block_id: object) -> Block | None:
        if type(block_id) is not int or not 0 < block_id <= len(self._blocks):
            return None
        return self._blocks[block_id - 1]

    def close(self) -> None:
        """Close every block (the child's process has ended)."""
        with self._lock:
            self._closed = True
            blocks, self._blocks = self._blocks, []
        for block in blocks:
            block.close()


def _block_size(nbytes: int) -> int:
    """The size of the block a payload of ``nbytes`` takes (whole pool granules)."""
    return -(-nbytes // POOL_GRANULE) * POOL_GRANULE


def _checked(block_id: int, fd: int, end: int) -> os.stat_result:
    """The block's ``fstat``, once it is known to hold ``end`` bytes and to be sealed
    against shrinking (or its maker could cut it under the reader: a SIGBUS) and
    against writing (or its maker could punch holes in it; in a huge-page file that
    may leave the reader's pages unbacked: a SIGBUS too)."""
    try:
        # the seals first: a size read before them could change before they are set
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as exc:  # not a memfd
        raise SharedBlockError(f"block {block_id} cannot be read: {exc}") from exc
    if seals & fcntl.F_SEAL_SHRINK == 0:
        raise SharedBlockError(f"block {block_id} could shrink under its reader")
    if seals & (F_SEAL_FUTURE_WRITE | fcntl.F_SEAL_WRITE) == 0:
        raise SharedBlockError(f"block {block_id} could lose pages under its reader")
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or end > info.st_size:
        raise SharedBlockError(f"block {block_id} does not hold the range named")
    return info


def _free_first(block: Block) -> None:
    """Have the block marked free before anything else learns that its buffer is gone.

    Of the callbacks waiting for an object's death, the one registered last runs
    first; the server's transfer budget registers its own on the buffer when its app
    says it consumed the reply, after the block's was made. Registered again here,
    when the app lets go of the block, the block's runs first: an upload the budget
    then lets in finds the block free, instead of making a new one."""
    detached = block.on_freed.detach() if block.on_freed is not None else None
    if detached is not None:  # None: the buffer is gone already, the block marked free
        owner, func, args, _ = detached
        block.on_freed = weakref.finalize(owner, func, *args)


def _freed(block: Block) -> None:
    block.allocated = False  # one attribute: safe from a finalizer, in any thread


class Mappings:
    """The child's read-only mappings of its parent's blocks, kept for reuse."""

    def __init__(self) -> None:
        self._maps: collections.OrderedDict[int, tuple[tuple[int, int], mmap.mmap]] = (
            collections.OrderedDict()
        )

    def copy(self, block_id: int, fd: int, offset: int, out: memoryview) -> None:
        """Copy ``len(out)`` bytes at ``offset`` of block ``block_id`` (its descriptor
        ``fd``, which the caller closes) into ``out``."""
        mapping = self._mapping(block_id, fd, offset + len(out))
        source = np.frombuffer(mapping, dtype=np.uint8, count=len(out), offset=offset)
        np.copyto(np.frombuffer(out, dtype=np.uint8), source)

    def _mapping(self, block_id: int, fd: int, end: int) -> mmap.mmap:
        """The block's read-only mapping (kept), once :func:`_checked` for ``end`` bytes."""
        try:
            info = _checked(block_id, fd, end)
            inode = (info.st_dev, info.st_ino)
            cached = self._maps.pop(block_id, None)
            if cached is not None and (cached[0] != inode or len(cached[1]) != info.st_size):
                with contextlib.suppress(BufferError):  # views of it alive: closed with them
                    cached[1].close()
                cached = None
            if cached is None:
                cached = (inode, mmap.mmap(fd, info.st_size, flags=mmap.MAP_SHARED,
                                           prot=mmap.PROT_READ))  # fmt: skip
        except (OSError, ValueError) as exc:  # a failed fstat or mmap
            raise SharedBlockError(f"block {block_id} cannot be read: {exc}") from exc
        self._maps[block_id] = cached
        while len(self._maps) > MAX_BLOCKS:
            with contextlib.suppress(BufferError):
                self._maps.popitem(last=False)[1][1].close()
        return cached[1]

    def view(self, block_id: int, fd: int, offset: int, nbytes: int,
             on_release: Callable[[int], None]) -> memoryview:  # fmt: skip
        """A read-only view of ``nbytes`` at ``offset`` of block ``block_id``, without a
        copy; ``on_release(block_id)`` is called once it and all built on it are gone."""
        mapping = self._mapping(block_id, fd, offset + nbytes)
        view = np.frombuffer(mapping, dtype=np.uint8, count=nbytes, offset=offset)
        weakref.finalize(view, on_release, block_id)
        return view.data

    @staticmethod
    def private_view(block_id: int, fd: int, offset: int, nbytes: int,
                     on_release: Callable[[int], None]) -> memoryview | None:  # fmt: skip
        """A writable copy-on-write view of ``nbytes`` at ``offset`` of block ``block_id``:
        a private mapping of its own, whose pages are the block's until this side writes
        one (then a copy of that page, this side's alone: the block never changes). So
        the payload costs no copy, and no memory for the pages only read.
        ``on_release(block_id)`` is called once it and all built on it are gone (the
        mapping goes with them); until then the maker must not write the block, whose
        later writes would show through the pages not copied yet. None where the
        kernel maps no such block privately writable (a caller then copies)."""
        try:
            _checked(block_id, fd, offset + nbytes)
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            mapping = mmap.mmap(fd, offset + nbytes - start, access=mmap.ACCESS_COPY,
                                offset=start)  # fmt: skip
        except (OSError, ValueError):
            return None
        view = np.frombuffer(mapping, dtype=np.uint8, count=nbytes, offset=offset - start)
        weakref.finalize(view, on_release, block_id)
        return view.data

    def close(self) -> None:
        for _, mapping in self._maps.values():
            with contextlib.suppress(BufferError):  # views still alive: closed when they go
                mapping.close()
        self._maps.clear()
