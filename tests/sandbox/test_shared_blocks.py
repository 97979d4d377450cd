"""Model-sized frames between a parent and its sandboxed child cross as shared memory.

Both ends are real :class:`Channel` s over a socket pair, the child's end in a
thread of its own (the frames, descriptors and seals are the kernel's, as
between two processes). What is checked: a payload the parent received into
its child's block reaches the child as a writable copy of its own, and the
block is reused once released; what the child sends reaches the parent
read-only, where it lies, and the child's block comes back once the parent let
it go; a block can be written by its maker only; what a child may not send
(an unsealed file, a range past its block, a descriptor without a reference,
a release of a block never lent) is a :class:`ChannelError`; and with every
block in use a payload still arrives, through the socket.
"""

from __future__ import annotations

import array
import fcntl
import json
import mmap
import os
import socket
import struct
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Mapping

import numpy as np
import pytest

from consortium.sandbox import socket_reader
from consortium.sandbox.channel import Channel, ChannelError
from consortium.sandbox.shared_blocks import MAX_BLOCKS, SHARE_MIN_BYTES, Block, Lender, Mappings

pytestmark = pytest.mark.skipif(
    not hasattr(os, "memfd_create"), reason="shared blocks need Linux memfd"
)

SIZE = SHARE_MIN_BYTES + 12345  # model-sized: large enough to be shared
HEAD = b"a small header part that crosses the socket"


@pytest.fixture
def pair() -> Iterator[tuple[Channel, Channel]]:
    ours, theirs = socket.socketpair()
    parent = Channel(ours, max_payload=1 << 30, peer="child")
    child = Channel(theirs, max_payload=1 << 30, peer="parent")
    yield parent, child
    parent.close()
    child.close()


def _address(buffer: memoryview) -> int:
    return int(np.frombuffer(buffer, dtype=np.uint8).__array_interface__["data"][0])


def _received(channel: Channel) -> dict[str, object]:
    """Receive one frame on a thread (the other end may block sending to us)."""
    got: dict[str, object] = {}

    def run() -> None:
        frame = channel.recv(timeout=10)
        got["frame"] = frame

    thread = threading.Thread(target=run)
    thread.start()
    got["thread"] = thread
    return got


def test_a_payload_in_the_childs_block_reaches_it_as_its_own_copy_and_the_block_is_reused(
    pair: tuple[Channel, Channel],
) -> None:
    parent, child = pair
    assert parent.lender is not None
    addresses = []
    for round_ in range(3):
        buffer = parent.lender.allocate(SIZE)  # as the node receives a task into it
        assert buffer is not None
        addresses.append(_address(buffer))
        np.frombuffer(buffer, dtype=np.uint8)[:] = round_ + 1
        pending = _received(child)
        parent.send("task", {"round": round_}, [HEAD, buffer])
        del buffer
        pending["thread"].join(10)  # type: ignore[attr-defined]
        frame = pending["frame"]
        payload = frame.payload  # type: ignore[attr-defined]
        assert bytes(payload[: len(HEAD)]) == HEAD
        body = np.frombuffer(payload, dtype=np.uint8)[len(HEAD) :]
        assert body.size == SIZE and int(body.min()) == int(body.max()) == round_ + 1
        assert not payload.readonly, "the child's app gets writable arrays, as before"
        body[:] = 0  # its own copy: the parent's block is untouched
        child.send("reply", {"ok": True})  # the child's release came before it
        assert parent.recv(timeout=10).kind == "reply"
        del frame, payload, body
    assert addresses == addresses[:1] * 3, "the released block is reused (warm memory)"


def test_a_child_viewing_in_place_reads_the_parents_block_where_it_lies_until_it_lets_go() -> None:
    """The server's app process (``in_place="read-only"``): a reply the server received into its
    block is read there, not copied; the block, and the parent's buffer over it (which
    the server's transfer budget watches), stay taken until the child has let go of the
    payload and said so with its next frame."""
    ours, theirs = socket.socketpair()
    parent = Channel(ours, max_payload=1 << 30, peer="child")
    child = Channel(theirs, max_payload=1 << 30, peer="parent", in_place="read-only")
    try:
        assert parent.lender is not None
        buffer = parent.lender.allocate(SIZE)  # as the server receives a reply into it
        assert buffer is not None
        owner = weakref.ref(buffer.obj)
        np.frombuffer(buffer, dtype=np.uint8)[:] = 7
        pending = _received(child)
        parent.send("reply", {}, [buffer])  # one range, nothing inline
        pending["thread"].join(10)  # type: ignore[attr-defined]
        payload = pending["frame"].payload  # type: ignore[attr-defined]
        del pending
        assert isinstance(payload, memoryview) and payload.readonly
        seen = np.frombuffer(payload, dtype=np.uint8)
        assert seen.size == SIZE and int(seen.max()) == 7
        np.frombuffer(buffer, dtype=np.uint8)[:3] = 9  # where it lies: no copy
        assert seen[:3].tolist() == [9, 9, 9]
        del buffer
        child.send("consumed", {})  # the payload is still alive: nothing released yet
        assert parent.recv(timeout=10).kind == "consumed"
        assert owner() is not None, "the parent keeps what it lent until released"
        del seen, payload
        _wait_for_release(parent, owner)  # at once, not with the child's next frame
        again = parent.lender.allocate(SIZE)
        assert again is not None and parent.lender.block_count == 1, "the block is reused"
    finally:
        parent.close()
        child.close()


def _wait_for_release(parent: Channel, owner: weakref.ref[object]) -> None:
    """Read the child's frames until the parent has let go of what it lent (``owner``):
    the child must tell it without sending a frame of its own."""
    deadline = time.monotonic() + 5
    while owner() is not None:
        assert time.monotonic() < deadline, "the child never released the block"
        with pytest.raises(TimeoutError):  # release frames only: no other frame comes
            parent.recv(timeout=0.05)


def _task_round_trip(parent: Channel, child: Channel, value: int) -> tuple[memoryview, object]:
    """The parent sends a task lying in one block range, filled with ``value``; the
    child's payload and a weak reference to the parent's buffer over the block."""
    assert parent.lender is not None
    buffer = parent.lender.allocate(SIZE)  # as the node receives a task into it
    assert buffer is not None
    owner = weakref.ref(buffer.obj)
    np.frombuffer(buffer, dtype=np.uint8)[:] = value
    pending = _received(child)
    parent.send("task", {}, [buffer])  # one range, nothing inline
    pending["thread"].join(10)  # type: ignore[attr-defined]
    payload = pending["frame"].payload  # type: ignore[attr-defined]
    assert isinstance(payload, memoryview)
    return payload, owner


def test_a_node_app_maps_its_task_copy_on_write_and_gives_the_block_back_with_its_reply() -> None:
    """A node's app process (``in_place="copy-on-write"``): its task arrives writable with
    no copy made; what it writes is its own (the node's block never changes: it stays
    sealed against the app's writes); the block stays taken while the app holds the
    task, and comes back with the app's next frame once it let go of it (its reply: a
    node reads its app's frames only while a task runs), to be reused."""
    ours, theirs = socket.socketpair()
    parent = Channel(ours, max_payload=1 << 30, peer="child")
    child = Channel(theirs, max_payload=1 << 30, peer="parent", in_place="copy-on-write")
    try:
        assert parent.lender is not None
        addresses = set()
        for round_ in range(3):
            payload, owner = _task_round_trip(parent, child, round_ + 1)
            assert not payload.readonly, "the app gets writable arrays, as before"
            body = np.frombuffer(payload, dtype=np.uint8)
            assert body.size == SIZE and int(body.min()) == int(body.max()) == round_ + 1
            (block,) = [b for b in parent.lender._blocks if b.lent]
            addresses.add(block.address)
            assert block.array[:4].tolist() == [round_ + 1] * 4
            body[:2] = 0  # copy-on-write: the app's own page, the block unchanged
            assert block.array[:4].tolist() == [round_ + 1] * 4
            assert body[:4].tolist() == [0, 0, round_ + 1, round_ + 1]
            child.send("reply", {})  # the task is alive still: nothing released
            assert parent.recv(timeout=10).kind == "reply"
            assert block.lent == 1 and owner() is not None, "taken while the app holds it"
            del payload, body
            child.send("reply", {})  # now the release rides on it
            assert parent.recv(timeout=10).kind == "reply"
            assert block.lent == 0 and owner() is None, "given back with the reply"
        assert len(addresses) == 1 and parent.lender.block_count == 1, "the block is reused"
    finally:
        parent.close()
        child.close()


def test_where_the_kernel_maps_no_block_copy_on_write_the_task_is_copied_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Mappings, "private_view", staticmethod(lambda *args: None))
    ours, theirs = socket.socketpair()
    parent = Channel(ours, max_payload=1 << 30, peer="child")
    child = Channel(theirs, max_payload=1 << 30, peer="parent", in_place="copy-on-write")
    try:
        payload, owner = _task_round_trip(parent, child, 5)
        body = np.frombuffer(payload, dtype=np.uint8)
        assert not payload.readonly and int(body.min()) == int(body.max()) == 5
        body[:] = 0  # a copy of its own
        parent.send("next", {})  # the child released the block at once: no frame needed
        assert child.recv(timeout=10).kind == "next"
        child.send("reply", {})
        assert parent.recv(timeout=10).kind == "reply"
        assert owner() is None, "released at once, the task still alive"
    finally:
        parent.close()
        child.close()


def test_a_released_block_is_marked_free_before_the_budget_hears_its_buffer_is_gone() -> None:
    """The server's transfer budget learns that a reply's memory is gone from a callback
    on the buffer's death, registered when the app consumed the reply (after the block
    was handed out); the upload it then lets in must find the block free."""
    lender = Lender()
    buffer = lender.allocate(SIZE)
    assert buffer is not None
    (reference,) = lender.references([buffer])
    assert reference is not None
    block = reference.block
    lender.lend([block], [buffer])
    free_when_told: list[bool] = []
    weakref.finalize(buffer.obj, lambda: free_when_told.append(not block.allocated))
    del buffer, reference
    lender.returned([block.block_id])
    assert free_when_told == [True]
    lender.close()


def test_what_the_child_sends_reaches_the_parent_read_only_and_its_block_comes_back(
    pair: tuple[Channel, Channel],
) -> None:
    parent, child = pair
    assert child.lender is not None
    model = np.arange(SIZE // 4, dtype=np.float32)
    for round_ in range(3):
        child.send("model", {"round": round_}, [HEAD, model.data])
        frame = parent.recv(timeout=10)
        assert frame.header == {"round": round_}
        payload = frame.payload
        assert isinstance(payload, memoryview) and payload.readonly
        assert bytes(payload[: len(HEAD)]) == HEAD
        values = np.frombuffer(payload[len(HEAD) :], dtype=np.float32)
        np.testing.assert_array_equal(values, model)
        del frame, payload, values  # the parent is done with it: released with its next frame
        parent.send("next", {})
        assert child.recv(timeout=10).kind == "next"
    assert child.lender.block_count == 1, "one block, taken back every round"


def test_a_payload_already_in_the_childs_own_block_is_read_there_not_copied(
    pair: tuple[Channel, Channel],
) -> None:
    """A server app's model, computed in a block of its own (``Arrays.encoded_empty``):
    the frame names it where it lies, with no staging copy."""
    parent, child = pair
    assert child.lender is not None
    model = child.lender.allocate(SIZE)
    assert model is not None
    np.frombuffer(model, dtype=np.uint8)[:] = 3
    child.send("model", {}, [model])
    payload = parent.recv(timeout=10).payload
    assert isinstance(payload, memoryview) and payload.readonly
    np.frombuffer(model, dtype=np.uint8)[:2] = 4  # the child's own memory, seen where it lies
    assert np.frombuffer(payload, dtype=np.uint8)[:3].tolist() == [4, 4, 3]
    assert child.lender.block_count == 1, "no block to stage a copy in"


def test_a_block_can_be_written_by_its_maker_only() -> None:
    block = Block(1, 2 * 1024 * 1024)
    try:
        block.array[:4] = 7  # the maker's own mapping stays writable
        with pytest.raises(PermissionError):
            mmap.mmap(block.fd, block.size, flags=mmap.MAP_SHARED,
                      prot=mmap.PROT_READ | mmap.PROT_WRITE)  # fmt: skip
        with pytest.raises(PermissionError):
            os.write(block.fd, b"x")
        with pytest.raises(PermissionError):
            os.ftruncate(block.fd, 4096)  # nobody can shrink it under a reader
        reader = mmap.mmap(block.fd, block.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        assert reader[:4] == b"\x07" * 4
        reader.close()
    finally:
        block.close()


def _send_raw(sock: socket.socket, header: Mapping[str, object], fds: list[int],
              payload: bytes = b"") -> None:  # fmt: skip
    head = json.dumps(header).encode()
    first = struct.pack("!IQ", len(head), len(payload)) + head
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([first], rights)
    if payload:
        sock.sendall(payload)


def _memfd(size: int, seals: int) -> int:
    fd = os.memfd_create("test", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


@pytest.mark.parametrize("case", ["unsealed", "shrink-sealed-only", "empty", "past-the-end",
                                  "past-the-payload", "fd-without-reference",
                                  "unknown-release", "reference-without-fd",
                                  "nested-header"])  # fmt: skip
def test_what_a_child_may_not_send_is_a_channel_error(case: str) -> None:
    ours, theirs = socket.socketpair()
    parent = Channel(ours, max_payload=1 << 30, peer="child")
    block = Block(1, 2 * 1024 * 1024)
    # sealed against shrinking only: its maker could still punch holes in it
    holes = _memfd(1 << 20, fcntl.F_SEAL_SHRINK)
    empty = _memfd(0, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_WRITE)
    try:
        with tempfile.TemporaryFile() as plain:
            os.ftruncate(plain.fileno(), 1 << 20)
            ref = {"kind": "model", "_shm": [[0, 1, 0, 4096]], "_fds": [1]}
            if case == "unsealed":  # a file the child could truncate under the parent
                _send_raw(theirs, ref, [plain.fileno()])
            elif case == "shrink-sealed-only":
                _send_raw(theirs, ref, [holes])
            elif case == "empty":
                _send_raw(theirs, {**ref, "_shm": [[0, 1, 0, 1]]}, [empty])
            elif case == "past-the-payload":  # the range starts after the payload's end
                _send_raw(theirs, {**ref, "_shm": [[100, 1, 0, 1]]}, [block.fd], b"AB")
            elif case == "nested-header":
                head = b"[" * 200_000
                theirs.sendall(struct.pack("!IQ", len(head), 0) + head)
            elif case == "past-the-end":
                _send_raw(theirs, {**ref, "_shm": [[0, 1, block.size - 10, 4096]]}, [block.fd])
            elif case == "fd-without-reference":
                _send_raw(theirs, {"kind": "model"}, [block.fd])
            elif case == "unknown-release":
                _send_raw(theirs, {"kind": "_released", "_released": [3]}, [])
            else:
                _send_raw(theirs, ref, [])
            with pytest.raises(ChannelError):
                parent.recv(timeout=10)
    finally:
        os.close(holes)
        os.close(empty)
        block.close()
        parent.close()
        theirs.close()


def test_release_frames_do_not_extend_the_wait_for_a_frame() -> None:
    ours, theirs = socket.socketpair()
    parent = Channel(ours, max_payload=1 << 30, peer="child")
    stop = threading.Event()

    def keep_releasing() -> None:
        while not stop.wait(0.1):
            _send_raw(theirs, {"kind": "_released", "_released": []}, [])

    threading.Thread(target=keep_releasing, daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            parent.recv(timeout=0.5)
        assert time.monotonic() - started < 3
    finally:
        stop.set()
        parent.close()
        theirs.close()


def test_a_wait_whose_deadline_has_passed_times_out_and_the_channel_still_works() -> None:
    """A release frame that arrives as the deadline passes leaves no time to wait: the
    wait times out (it once set a timeout of 0, made the socket non-blocking and read
    EAGAIN as a broken channel)."""
    ours, theirs = socket.socketpair()
    parent = Channel(ours, max_payload=1 << 30, peer="child")
    try:
        with pytest.raises(TimeoutError):
            parent.recv(timeout=0)
        _send_raw(theirs, {"kind": "hello"}, [])
        assert parent.recv(timeout=5).kind == "hello"
    finally:
        parent.close()
        theirs.close()


def test_a_frame_left_unfinished_ends_with_a_channel_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(socket_reader, "FRAME_STALL_SECONDS", 0.3)
    ours, theirs = socket.socketpair()
    parent = Channel(ours, max_payload=1 << 30)
    try:
        theirs.sendall(b"\x00")  # one byte of a frame's prefix, then nothing
        started = time.monotonic()
        with pytest.raises(ChannelError, match="middle of a frame"):
            parent.recv()
        assert time.monotonic() - started < 5
    finally:
        parent.close()
        theirs.close()


def test_a_free_block_of_another_size_makes_room_for_a_new_size() -> None:
    lender = Lender()
    try:
        for i in range(MAX_BLOCKS):  # four sizes, each let go at once
            assert lender.allocate(SHARE_MIN_BYTES + i * 4 * 1024 * 1024) is not None
        fifth = lender.allocate(SHARE_MIN_BYTES + 40 * 1024 * 1024)
        assert fifth is not None and lender.block_count == MAX_BLOCKS
        held = [lender.allocate(SHARE_MIN_BYTES + 44 * 1024 * 1024) for _ in range(MAX_BLOCKS)]
        assert sum(b is not None for b in held) == MAX_BLOCKS - 1  # ``fifth`` is in use
    finally:
        lender.close()


def test_with_every_block_in_use_a_payload_still_arrives_through_the_socket(
    pair: tuple[Channel, Channel],
) -> None:
    parent, child = pair
    assert parent.lender is not None
    held = [parent.lender.allocate(SIZE) for _ in range(MAX_BLOCKS)]
    assert all(b is not None for b in held)
    assert parent.lender.allocate(SIZE) is None, "no more blocks: an ordinary buffer instead"
    ordinary = np.full(SIZE, 9, dtype=np.uint8)
    pending = _received(child)
    parent.send("task", {}, [HEAD, ordinary.data])
    pending["thread"].join(10)  # type: ignore[attr-defined]
    payload = pending["frame"].payload  # type: ignore[attr-defined]
    assert bytes(payload[: len(HEAD)]) == HEAD
    assert int(np.frombuffer(payload, dtype=np.uint8)[len(HEAD) :].min()) == 9


def test_small_payloads_never_take_a_block(pair: tuple[Channel, Channel]) -> None:
    parent, child = pair
    assert parent.lender is not None and child.lender is not None
    assert parent.lender.allocate(SHARE_MIN_BYTES - 1) is None
    pending = _received(parent)
    child.send("reply", {}, b"x" * (SHARE_MIN_BYTES - 1))
    pending["thread"].join(10)  # type: ignore[attr-defined]
    payload = pending["frame"].payload  # type: ignore[attr-defined]
    assert len(payload) == SHARE_MIN_BYTES - 1 and not memoryview(payload).readonly
    assert child.lender.block_count == 0


def test_each_child_has_blocks_of_its_own() -> None:
    """A block a child has seen (and may keep mapped) never carries another child's data."""
    channels = []
    inodes = []
    for _ in range(2):
        ours, theirs = socket.socketpair()
        parent = Channel(ours, max_payload=1 << 30, peer="child")
        channels += [parent, Channel(theirs, max_payload=1 << 30, peer="parent")]
        assert parent.lender is not None
        buffer = parent.lender.allocate(SIZE)
        assert buffer is not None
        del buffer  # freed at once: a pool shared by children would hand it out again
        again = parent.lender.allocate(SIZE)
        assert again is not None
        (reference,) = [r for r in parent.lender.references([again]) if r is not None]
        inodes.append(os.fstat(reference.block.fd).st_ino)
        del again
    try:
        assert inodes[0] != inodes[1]
    finally:
        for channel in channels:
            channel.close()
