"""A task to a node on a slow link is sent in chunks of a quarter, and the node is told
to reply in chunks of the same size: each stream holds less while the link carries it,
so that four such transfers share what one fast one holds (``server/fleet_slots.py``,
``ReceiveSlots``). Over real gRPC and mutual TLS: the server judges the link from the
node's first model-sized download, then sends the next task in smaller chunks; an honest
node replies in them, and a reply in larger chunks than told is refused."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import grpc
import numpy as np
import pytest

from consortium.core.arrays import Arrays
from consortium.core.message import Content, Message
from consortium.transport.chunks import (
    CHUNK_SIZE,
    Reassembler,
    decode_chunk,
    encode_chunk,
    iter_chunks,
)
from consortium.transport.grpc_client import FleetClient, open_channel
from consortium.transport.link_chunks import (
    REPLY_CHUNK_HEADER,
    SLOW_LINK_CHUNK_SIZE,
    told_chunk_size,
)
from consortium.transport.proto import fleet_pb2 as pb

if TYPE_CHECKING:
    from conftest import Federation, Pki

#: a model over the 8 MiB a transfer needs to measure a link (link_rates.py)
PARAMS = 9 * 1024 * 1024 // 4
MAX_MESSAGE = 64 * 1024 * 1024
Builder = Callable[..., AbstractContextManager["Federation"]]


def _task(value: float, params: int = PARAMS) -> Message:
    model = Arrays({"w": np.full(params, value, np.float32)})
    return Message.create(
        run_id="slow", dst="hospital-a", round=1, kind="train", content=Content.of(model)
    )


def _raw_pull(
    channel: grpc.Channel, pause: tuple[float, ...] = ()
) -> tuple[Message, list[int], dict[str, str]]:
    """Pull one task on ``channel``, pausing ``pause[i]`` s after the i-th chunk of the
    model: the task, the size of each chunk it came in, and the chunk size the server
    asked the reply in, at the stream's start and at its end."""
    pull = channel.unary_stream(
        "/consortium.v1.Fleet/PullTask",
        request_serializer=pb.PullRequest.SerializeToString,
        response_deserializer=decode_chunk,
    )
    stream = pull(pb.PullRequest(wait_seconds=5.0), timeout=30)
    rebuild, sizes = Reassembler(MAX_MESSAGE), []
    for chunk in stream:
        sizes.append(len(chunk.data))
        rebuild.feed(chunk)
        model_chunks = len(sizes) - 2  # the message's header comes first, in two parts
        if 0 < model_chunks <= len(pause):
            time.sleep(pause[model_chunks - 1])
    told = {
        when: value
        for when, metadata in (
            ("start", stream.initial_metadata()),
            ("end", stream.trailing_metadata()),
        )
        if (value := dict(metadata or ()).get(REPLY_CHUNK_HEADER)) is not None
    }
    return Message.from_bytes(bytes(rebuild.result())), sizes, told


def _push(channel: grpc.Channel, reply: Message, chunk_size: int) -> pb.PushReply:
    """Push ``reply`` on ``channel`` in chunks of ``chunk_size``."""
    push = channel.stream_unary(
        "/consortium.v1.Fleet/PushResult",
        request_serializer=encode_chunk,
        response_deserializer=pb.PushReply.FromString,
    )
    chunks = iter_chunks(reply.to_parts(), reply.metadata.message_id, chunk_size=chunk_size)
    answer: pb.PushReply = push(chunks, timeout=30)
    return answer


def _honest_round(fed: Federation, node: FleetClient, value: float) -> None:
    """Queue a task; the node pulls it and pushes the honest reply, which arrives."""
    task = _task(value)
    round_ = fed.round(task)
    payload = node.pull_task(5.0)
    assert payload is not None
    reply = fed.answer(Message.from_bytes(bytes(payload)))
    assert node.push_result(reply.to_parts(), reply.metadata.message_id) == (True, "ok")
    fed.check_answer(task, round_.replies())


def test_a_node_known_to_be_on_a_slow_link_is_sent_its_task_and_replies_in_quarter_chunks(
    server_builder: Builder, pki: Pki
) -> None:
    # a threshold over any link: a model-sized download makes its node's link slow
    with server_builder(max_message_bytes=MAX_MESSAGE, slow_link_mbit=1e9) as fed:
        node = FleetClient(fed.address, tls=pki.tls(pki.good), max_message_bytes=MAX_MESSAGE)
        channel = open_channel(fed.address, pki.tls(pki.good))
        try:
            node.hello("1.0", "instance")
            # the first task: the link is not known when it leaves, so its chunks are full
            # ones; its download shows the link slow, and the node is told so at its end
            task = _task(1.0)
            round_ = fed.round(task)
            pulled, sizes, told = _raw_pull(channel)
            assert max(sizes) == CHUNK_SIZE, sizes
            assert told == {"start": str(CHUNK_SIZE), "end": str(SLOW_LINK_CHUNK_SIZE)}
            assert _push(channel, fed.answer(pulled), SLOW_LINK_CHUNK_SIZE).accepted
            fed.check_answer(task, round_.replies())

            # an honest node (the transport's own client) replies as it is told
            _honest_round(fed, node, 2.0)
            assert node.reply_chunk_size == SLOW_LINK_CHUNK_SIZE

            task = _task(3.0)
            round_ = fed.round(task)
            pulled, sizes, told = _raw_pull(channel)
            assert told == {"start": str(SLOW_LINK_CHUNK_SIZE)}
            # the model's 9 MiB in nine chunks (the message's header goes before them)
            assert max(sizes) == SLOW_LINK_CHUNK_SIZE, sizes
            assert sizes.count(SLOW_LINK_CHUNK_SIZE) == PARAMS * 4 // SLOW_LINK_CHUNK_SIZE
            # a reply in chunks larger than told is refused...
            reply = fed.answer(pulled)
            with pytest.raises(grpc.RpcError) as refused:
                _push(channel, reply, CHUNK_SIZE)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"over the {SLOW_LINK_CHUNK_SIZE} this node was told" in str(
                refused.value.details()
            )
            # ...and the same reply, in the chunks told, is then received
            assert _push(channel, reply, SLOW_LINK_CHUNK_SIZE).accepted
            fed.check_answer(task, round_.replies())
        finally:
            channel.close()
            node.close()


def test_a_download_found_crawling_goes_on_in_quarter_chunks(
    server_builder: Builder, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """A node's first task leaves in full chunks; read slowly (8 MiB in over 2 s: under
    any threshold), the rest of it comes in quarter chunks, the server's log says so, and
    the node is told at the stream's end to reply in them."""
    caplog.set_level(logging.INFO, "consortium.transport")
    with server_builder(max_message_bytes=MAX_MESSAGE, slow_link_mbit=1e9) as fed:
        node = FleetClient(fed.address, tls=pki.tls(pki.good), max_message_bytes=MAX_MESSAGE)
        channel = open_channel(fed.address, pki.tls(pki.good))
        try:
            node.hello("1.0", "instance")
            task = _task(1.0, params=4 * PARAMS)  # 36 MiB
            round_ = fed.round(task)
            pulled, sizes, told = _raw_pull(channel, pause=(1.1, 1.1))
            assert sizes[2:4] == [CHUNK_SIZE, CHUNK_SIZE], sizes  # after the header's two
            assert sizes[-5:] == [SLOW_LINK_CHUNK_SIZE] * 5, sizes
            assert told == {"start": str(CHUNK_SIZE), "end": str(SLOW_LINK_CHUNK_SIZE)}
            said = r"task \S+ to hospital-a crawls at [0-9.]+ MB/s"
            assert re.search(said, caplog.text), caplog.text
            assert _push(channel, fed.answer(pulled), SLOW_LINK_CHUNK_SIZE).accepted
            fed.check_answer(task, round_.replies())
        finally:
            channel.close()
            node.close()


@pytest.mark.parametrize(
    ("header", "size"),
    [
        (None, CHUNK_SIZE),
        (str(SLOW_LINK_CHUNK_SIZE), SLOW_LINK_CHUNK_SIZE),
        ("1", SLOW_LINK_CHUNK_SIZE),  # no server makes a node's upload crawl
        (str(1 << 30), CHUNK_SIZE),
        ("lots", CHUNK_SIZE),
    ],
)
def test_a_node_takes_the_reply_chunk_size_it_is_told_within_bounds(
    header: str | None, size: int
) -> None:
    assert told_chunk_size(header) == size
