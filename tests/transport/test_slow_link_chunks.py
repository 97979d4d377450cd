"""A task to a node on a slow link is sent in chunks of a quarter: its stream holds less
while the link carries it, so that four such downloads share what one fast one holds
(``server/fleet_slots.py``). Over real gRPC and mutual TLS: the server judges the link
from the node's first model-sized download, then sends the next task in smaller chunks,
which the node puts together as it does any task."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import grpc
import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.message import Content, Message
from consortium.transport.chunks import (
    CHUNK_SIZE,
    SLOW_LINK_CHUNK_SIZE,
    Reassembler,
    decode_chunk,
)
from consortium.transport.grpc_client import FleetClient, open_channel
from consortium.transport.proto import fleet_pb2 as pb

if TYPE_CHECKING:
    from conftest import Federation, Pki

#: a model over the 8 MiB a transfer needs to measure a link (link_rates.py)
PARAMS = 9 * 1024 * 1024 // 4
MAX_MESSAGE = 64 * 1024 * 1024


def _task(value: float) -> Message:
    model = Arrays({"w": np.full(PARAMS, value, np.float32)})
    return Message.create(
        run_id="slow", dst="hospital-a", round=1, kind="train", content=Content.of(model)
    )


def _pull(channel: grpc.Channel) -> tuple[Message, list[int]]:
    """Pull one task on ``channel`` as a node does: the task, and the size of each chunk
    it came in."""
    pull = channel.unary_stream(
        "/consortium.v1.Fleet/PullTask",
        request_serializer=pb.PullRequest.SerializeToString,
        response_deserializer=decode_chunk,
    )
    rebuild, sizes = Reassembler(MAX_MESSAGE), []
    for chunk in pull(pb.PullRequest(wait_seconds=5.0), timeout=30):
        sizes.append(len(chunk.data))
        rebuild.feed(chunk)
    return Message.from_bytes(bytes(rebuild.result())), sizes


def _answer(fed: Federation, node: FleetClient, channel: grpc.Channel, value: float) -> list[int]:
    """Queue a task, pull it, push the honest reply: the pulled task's chunk sizes."""
    task = _task(value)
    round_ = fed.round(task)
    pulled, sizes = _pull(channel)
    reply = fed.answer(pulled)
    assert node.push_result(reply.to_parts(), reply.metadata.message_id) == (True, "ok")
    fed.check_answer(task, round_.replies())
    return sizes


def test_a_node_known_to_be_on_a_slow_link_is_sent_its_task_in_quarter_chunks(
    server_builder: Callable[..., AbstractContextManager[Federation]], pki: Pki
) -> None:
    # a threshold over any link: a model-sized download makes its node's link slow
    with server_builder(max_message_bytes=MAX_MESSAGE, slow_link_mbit=1e9) as fed:
        node = FleetClient(fed.address, tls=pki.tls(pki.good), max_message_bytes=MAX_MESSAGE)
        channel = open_channel(fed.address, pki.tls(pki.good))
        try:
            node.hello("1.0", "instance")
            sizes = _answer(fed, node, channel, 1.0)  # the link is not known yet
            assert max(sizes) == CHUNK_SIZE and sum(sizes) > 8 * 1024 * 1024, sizes
            sizes = _answer(fed, node, channel, 2.0)  # now it is: a slow one
            assert max(sizes) == SLOW_LINK_CHUNK_SIZE < CHUNK_SIZE, sizes
            # the model's 9 MiB in nine chunks (the message's header goes before them)
            assert sizes.count(SLOW_LINK_CHUNK_SIZE) == PARAMS * 4 // SLOW_LINK_CHUNK_SIZE, sizes
        finally:
            channel.close()
            node.close()
