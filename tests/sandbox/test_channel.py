"""The channel between the server and a sandboxed app checks sizes before it allocates."""

from __future__ import annotations

import math
import socket
import struct
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from consortium.core.arrays import Arrays
from consortium.core.buffers import POOL_MIN_BYTES, pool_stats
from consortium.core.errors import WireFormatError
from consortium.core.message import TRAIN, Content, Message
from consortium.core.records import RecordLimits, UnacceptableRecord
from consortium.sandbox import socket_reader
from consortium.sandbox.channel import MAX_HEADER_BYTES, Channel, ChannelClosed, ChannelError
from consortium.server.isolation.wire import decode_batch, encode_batch, round_from_json


@pytest.fixture
def pair() -> Iterator[tuple[Channel, socket.socket]]:
    ours, theirs = socket.socketpair()
    channel = Channel(ours, max_payload=1024)
    yield channel, theirs
    channel.close()
    theirs.close()


def test_frames_round_trip_with_header_and_payload(pair: tuple[Channel, socket.socket]) -> None:
    channel, theirs = pair
    other = Channel(theirs, max_payload=1024)
    other.send("hello", {"n": 1}, [b"ab", memoryview(b"cd")])
    frame = channel.recv(timeout=5)
    assert (frame.kind, frame.header, bytes(frame.payload)) == ("hello", {"n": 1}, b"abcd")


def test_a_model_sized_frame_arrives_whole_in_a_pooled_buffer() -> None:
    ours, theirs = socket.socketpair()
    size = POOL_MIN_BYTES + 12345  # large enough for the buffer pool
    receiver, sender = Channel(ours, max_payload=size), Channel(theirs, max_payload=size)
    payload = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    try:
        sending = threading.Thread(target=sender.send, args=("model", {}, [payload.data]))
        sending.start()
        frame = receiver.recv(timeout=30)
        sending.join()
    finally:
        receiver.close()
        sender.close()
    assert isinstance(frame.payload, memoryview)  # not a fresh bytearray
    assert pool_stats()["in_use_mb"] * 2**20 >= size  # the pool lent it while it lives
    assert np.array_equal(np.frombuffer(frame.payload, dtype=np.uint8), payload)


@pytest.mark.parametrize(
    ("head_len", "size", "match"),
    [(MAX_HEADER_BYTES + 1, 0, "frame header"), (10, 1025, "frame payload of 1025")],
)
def test_oversized_frames_are_refused_from_their_prefix(
    pair: tuple[Channel, socket.socket], head_len: int, size: int, match: str
) -> None:
    channel, theirs = pair
    theirs.sendall(struct.pack("!IQ", head_len, size))
    with pytest.raises(ChannelError, match=match):
        channel.recv(timeout=5)


@pytest.mark.parametrize("header", [b"not json", b"[1, 2]", b'{"no": "kind"}'])
def test_malformed_headers_are_refused(pair: tuple[Channel, socket.socket], header: bytes) -> None:
    channel, theirs = pair
    theirs.sendall(struct.pack("!IQ", len(header), 0) + header)
    with pytest.raises(ChannelError):
        channel.recv(timeout=5)


def test_a_closed_peer_and_a_frame_cut_short_are_told_apart(
    pair: tuple[Channel, socket.socket],
) -> None:
    channel, theirs = pair
    theirs.sendall(struct.pack("!IQ", 100, 0) + b'{"kind"')
    theirs.close()
    with pytest.raises(ChannelClosed):
        channel.recv(timeout=5)


def test_a_sender_refuses_to_send_past_the_limit(pair: tuple[Channel, socket.socket]) -> None:
    channel, _ = pair
    with pytest.raises(ChannelError, match="exceeds 1024"):
        channel.send("big", {}, b"x" * 2000)


def _task(arrays: Arrays, dst: str) -> Message:
    return Message.create(run_id="r", dst=dst, round=1, kind=TRAIN, content=Content.of(arrays))


def test_a_model_sent_to_many_nodes_crosses_once_and_arrives_shared() -> None:
    model = Arrays({"w": np.arange(1000, dtype=np.float32)})
    messages = [_task(model, f"n{i}") for i in range(50)]
    header, parts = encode_batch(messages)
    payload = b"".join(bytes(memoryview(p)) for p in parts)

    assert len(header["blobs"]) == 1
    assert len(payload) < 2 * model.encoded_size() + 50 * 2048
    decoded = decode_batch(header, payload, RecordLimits())
    assert [m.metadata.dst for m in decoded] == [f"n{i}" for i in range(50)]
    assert decoded[0].content is not None and decoded[-1].content is not None
    assert decoded[0].content.model is decoded[-1].content.model
    np.testing.assert_array_equal(decoded[7].content.model["w"], model["w"])  # type: ignore[index]


@pytest.mark.parametrize(
    "edit",
    [
        lambda h: h.update(blobs=[10**12]),
        lambda h: h["messages"][0].update(arrays=[["model", 5]]),
        lambda h: h["messages"][0].update(arrays="nope"),
        lambda h: h.pop("messages"),
    ],
)
def test_a_malformed_batch_is_refused(edit) -> None:  # type: ignore[no-untyped-def]
    header, parts = encode_batch([_task(Arrays({"w": np.zeros(3)}), "a")])
    payload = b"".join(bytes(memoryview(p)) for p in parts)
    edit(header)
    with pytest.raises(WireFormatError):
        decode_batch(header, payload, RecordLimits())


def test_a_forwarded_reply_is_its_received_arrays_in_one_piece_beside_a_header() -> None:
    """A reply forwarded to the app process: the message without its arrays in the
    header, and the arrays as the one buffer they were decoded from (so that, received
    into a shared block, they cross as one range of it, read where they lie)."""
    model = Arrays({"w": np.arange(1000, dtype=np.float32), "b": np.ones(3)})
    received = Message.from_bytes(_task(model, "n1").to_bytes())
    header, parts = encode_batch([received], skeletons_in_header=True)
    assert received.content is not None and received.content.model is not None
    assert len(parts) == 1 and bytes(parts[0]) == model.to_bytes()
    (decoded,) = decode_batch(header, parts[0], RecordLimits())
    assert decoded.metadata == received.metadata and decoded.content is not None
    assert decoded.content.model is not None and decoded.content.model.equals(model)
    received.content.model["w"] = np.zeros(2)  # changed: encoded afresh, several parts
    assert len(encode_batch([received], skeletons_in_header=True)[1]) > 1


@pytest.mark.parametrize(
    "edit",
    [
        lambda h: h.update(skeletons=["not base64!"]),
        lambda h: h.update(skeletons=[]),
        lambda h: h.update(skeletons=[12]),
        lambda h: h.update(skeletons="abcd"),
    ],
)
def test_a_malformed_header_skeleton_is_refused(edit) -> None:  # type: ignore[no-untyped-def]
    header, parts = encode_batch([_task(Arrays({"w": np.zeros(3)}), "a")], skeletons_in_header=True)
    payload = b"".join(bytes(memoryview(p)) for p in parts)
    edit(header)
    with pytest.raises(WireFormatError):
        decode_batch(header, payload, RecordLimits())


def test_round_records_from_an_app_are_checked() -> None:
    good = {"round": 1, "train": {"loss": 0.5}, "evaluate": {}, "central": {}, "seconds": 1.0,
            "nodes": []}  # fmt: skip
    assert round_from_json(good, RecordLimits()).train_metrics == {"loss": 0.5}
    # a diverged loss is a result to record, not an attack
    diverged = round_from_json({**good, "central": {"loss": float("nan")}}, RecordLimits())
    assert math.isnan(diverged.central_metrics["loss"])
    for bad in (
        {**good, "train": {"loss": "0.5"}},
        {**good, "seconds": float("nan")},
        {**good, "train": {str(i): 1 for i in range(2000)}},
        {**good, "round": -1},
        {**good, "nodes": "x"},
        {k: v for k, v in good.items() if k != "central"},
    ):
        with pytest.raises(UnacceptableRecord):
            round_from_json(bad, RecordLimits())


def test_frames_go_out_whole_while_the_same_channel_reads_with_timeouts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each end sends model-sized frames while its own reader waits for the other end's
    with a timeout. A timeout set on the shared socket for a read made it non-blocking
    for the sending thread too: a send could fail with EAGAIN in the middle of a frame,
    and the other end then waited for the rest of it (a run's app process, 60 s later:
    "the other side stopped in the middle of a frame"). Before the fix this failed
    within 0.1-0.5 s."""
    monkeypatch.setattr(socket_reader, "FRAME_STALL_SECONDS", 2.0)
    ours, theirs = socket.socketpair()
    ends = Channel(ours, max_payload=1 << 30), Channel(theirs, max_payload=1 << 30)
    payload = np.random.default_rng(1).integers(0, 256, 1 << 20, dtype=np.uint8)
    errors: list[str] = []
    counts = [0, 0]
    stop = threading.Event()
    deadline = time.monotonic() + 3.0

    def send(end: int) -> None:
        i = 0
        while not stop.is_set() and time.monotonic() < deadline:
            ends[end].send("model", {"i": i}, payload.data)
            i += 1

    def receive(end: int) -> None:
        expected = 0
        while not stop.is_set():
            try:
                frame = ends[end].recv(timeout=0.2)
            except TimeoutError:
                if time.monotonic() > deadline:
                    return
                continue
            assert frame.header == {"i": expected}
            assert np.array_equal(np.frombuffer(frame.payload, dtype=np.uint8), payload)
            expected += 1
            counts[end] = expected

    def guarded(call, end: int) -> threading.Thread:  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                call(end)
            except BaseException as exc:
                errors.append(f"{call.__name__} at end {end}: {exc!r}")
                stop.set()

        return threading.Thread(target=run, daemon=True)

    threads = [guarded(f, end) for f in (send, receive) for end in (0, 1)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not errors, errors
        assert min(counts) > 50  # both ways carried frames all along
    finally:
        stop.set()
        for end in ends:
            end.close()
