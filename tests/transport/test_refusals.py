"""Issue 3, part H: bad peers and bad input are refused clearly, and the federation runs on.

Every test talks real gRPC over loopback to a mutual-TLS server wired like
``consortium server`` (see conftest.py). Each bad attempt runs inside
``good_node.keeps_serving()``: a task is in flight on the good node before the
attempt; afterwards that node says hello, heartbeats, has its in-flight reply
accepted, and completes one more full round trip through the Fleet's Grid API.

Refusals in the TLS handshake (another CA, no certificate, plain text, an
expired certificate) happen inside gRPC's TLS layer before any Python code
runs: the caller gets UNAVAILABLE with gRPC's generic "Socket closed" (with
TLS 1.3 the server's alert arrives after the client finished its side of the
handshake, and gRPC does not surface it), and our server neither logs nor
sees them; gRPC core itself logs "Handshake failed ... <reason>" to stderr.
Everything past the handshake is refused by our code with a specific status
code, a message naming the cause, and a warning on "consortium.transport"
naming the peer.
"""

from __future__ import annotations

import logging
import os
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import pytest

from consortium._version import __version__
from consortium.core.arrays import Arrays
from consortium.core.errors import TransportError
from consortium.core.message import Content, Message
from consortium.transport.auth import INSECURE_NODE_HEADER
from consortium.transport.chunks import MAX_GRPC_MESSAGE, iter_chunks
from consortium.transport.grpc_client import open_channel
from consortium.transport.proto import fleet_pb2 as pb
from consortium.transport.proto import fleet_pb2_grpc as rpc

if TYPE_CHECKING:
    from conftest import Federation, GoodNode

#: conftest.MAX_MESSAGE_BYTES (conftest.py is not importable by name; checked below)
MAX_MESSAGE_BYTES = 256 * 1024
LOGGER = "consortium.transport"
PUSH = "/consortium.v1.Fleet/PushResult"


@pytest.fixture(autouse=True)
def _transport_warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the server logged about refused peers during this test."""
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Errors logged by anyone (gRPC logs its tracebacks at ERROR)."""
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


def assert_logged(caplog: pytest.LogCaptureFixture, *words: str) -> str:
    """One refusal record names every one of ``words`` (peer and reason)."""
    lines = refusals(caplog)
    matching = [line for line in lines if all(w in line for w in words)]
    assert matching, f"no log line names {words}; got {lines}"
    assert errors(caplog) == []  # refused in words, never with a traceback
    return matching[0]


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def refused(call: Callable[[], object], code: grpc.StatusCode, *words: str) -> str:
    """``call`` fails with ``code`` and a message naming each of ``words``."""
    error = rpc_error(call)
    assert error.code() == code, (error.code(), error.details())
    details = str(error.details())
    for word in words:
        assert word in details, f"{word!r} not in {details!r}"
    return details


def hello(channel: grpc.Channel, **kwargs: object) -> pb.HelloReply:
    stub = rpc.FleetStub(channel)  # type: ignore[no-untyped-call]
    request = pb.HelloRequest(version=__version__, instance_id="intruder")
    return stub.Hello(request, timeout=10, **kwargs)


def push(channel: grpc.Channel, chunks: Iterator[Any] | list[Any]) -> pb.PushReply:
    stub = rpc.FleetStub(channel)  # type: ignore[no-untyped-call]
    return stub.PushResult((_pb(c) for c in chunks), timeout=10)


def _pb(chunk: Any) -> pb.Chunk:
    """The generated class the stub sends, from a chunks.Chunk (or one already)."""
    if isinstance(chunk, pb.Chunk):
        return chunk
    return pb.Chunk(
        message_id=chunk.message_id,
        total_size=chunk.total_size,
        index=chunk.index,
        data=bytes(chunk.data),
        crc32=chunk.crc32,
        last=chunk.last,
        total_crc32=chunk.total_crc32,
    )


def forged_reply(task: Message, src: str) -> Message:
    """A reply to ``task`` whose metadata claims it comes from ``src``, with poisoned content."""
    assert task.content is not None and task.content.model is not None
    poisoned = task.reply(arrays=Arrays({"w": task.content.model["w"] - 1e6}), metrics={"n": 1e6})
    return Message(replace(poisoned.metadata, src=src), content=poisoned.content)


def stream(message: Message, chunk_size: int = 256) -> list[pb.Chunk]:
    return list(iter_chunks(message.to_bytes(), message.metadata.message_id, chunk_size=chunk_size))


# --------------------------------------------------------------------------- the baseline


def test_the_good_node_works_and_nothing_is_logged(
    good_node: GoodNode, caplog: pytest.LogCaptureFixture
) -> None:
    """The baseline the refusal tests rely on: without a bad attempt, nothing is refused."""
    assert good_node.fed.fleet.max_message_bytes == MAX_MESSAGE_BYTES
    with good_node.keeps_serving():
        pass
    assert refusals(caplog) == []


# --------------------------------------------------------------------------- TLS handshake


def _foreign(fed: Federation) -> grpc.Channel:
    """hospital-a's name, but a certificate from another CA (that trusts our server)."""
    pki = fed.pki
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_pem,
        private_key=pki.impostor.key_path.read_bytes(),
        certificate_chain=pki.impostor.cert_path.read_bytes(),
    )
    return grpc.secure_channel(fed.address, creds)


def _no_certificate(fed: Federation) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=fed.pki.ca_pem)
    return grpc.secure_channel(fed.address, creds)


def _plain_text(fed: Federation) -> grpc.Channel:
    return open_channel(fed.address, None)


def _expired(fed: Federation) -> grpc.Channel:
    return fed.channel(fed.pki.expired)


@pytest.mark.parametrize(
    "dial",
    [_foreign, _no_certificate, _plain_text, _expired],
    ids=["another-ca", "no-certificate", "plain-text", "expired"],
)
def test_refused_in_the_tls_handshake(
    federation: Federation,
    good_node: GoodNode,
    caplog: pytest.LogCaptureFixture,
    dial: Callable[[Federation], grpc.Channel],
) -> None:
    before = federation.fleet.node_ids()
    with good_node.keeps_serving() as in_flight:
        channel = dial(federation)
        error = rpc_error(lambda: hello(channel))
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        # the connection is refused, not just one call: a forged answer to the
        # good node's in-flight task does not get through either
        forged = forged_reply(in_flight, "hospital-a")
        error = rpc_error(lambda: push(channel, stream(forged)))
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        channel.close()
    # the handshake failed inside gRPC: no handler ran, nobody joined, nothing logged
    assert federation.fleet.node_ids() == before
    assert refusals(caplog) == [] and errors(caplog) == []


# --------------------------------------------------------------------------- certificates


def test_a_valid_certificate_not_on_the_allow_list(
    federation: Federation, good_node: GoodNode, caplog: pytest.LogCaptureFixture
) -> None:
    stranger = federation.channel(federation.pki.stranger)
    with good_node.keeps_serving() as in_flight:
        refused(
            lambda: hello(stranger),
            grpc.StatusCode.UNAUTHENTICATED,
            "'stranger' is not on this server's allow-list",
        )
        forged = forged_reply(in_flight, "hospital-a")
        refused(lambda: push(stranger, stream(forged)), grpc.StatusCode.UNAUTHENTICATED)
    stranger.close()
    assert "stranger" not in federation.fleet.node_ids()
    assert_logged(caplog, "127.0.0.1", "'stranger'", "allow-list")


def test_a_certificate_revoked_while_the_server_runs(
    federation: Federation, good_node: GoodNode, caplog: pytest.LogCaptureFixture
) -> None:
    pki = federation.pki
    node = federation.channel(pki.doomed)
    assert hello(node).node_id == "hospital-r"
    assert "hospital-r" in federation.fleet.node_ids()
    with good_node.keeps_serving():
        waiting = federation.round(federation.make_task("hospital-r"))  # never to be answered
        pki.ca.revoke("hospital-r", reason="key-compromise")
        # the open connection is refused at its next call...
        started = time.monotonic()
        refused(lambda: hello(node), grpc.StatusCode.UNAUTHENTICATED, "'hospital-r'", "revoked")
        # ...which takes the node offline and fails its task now, not at its heartbeat
        # timeout (60 s here) or the round's deadline (20 s)
        [lost] = waiting.replies()
        assert time.monotonic() - started < 5
        assert lost.error is not None and lost.error.code == "node-lost"
        assert "refused" in lost.error.reason and "revoked" in lost.error.reason
        assert "hospital-r" not in federation.fleet.node_ids()
        # ...and so is a new connection
        again = federation.channel(pki.doomed)
        refused(lambda: hello(again), grpc.StatusCode.UNAUTHENTICATED, "revoked")
        again.close()
    node.close()
    assert_logged(caplog, "127.0.0.1", "'hospital-r'", "revoked")
    assert "node hospital-r is offline: refused" in caplog.text


def test_a_certificate_that_expires_during_a_connection(
    federation: Federation,
    good_node: GoodNode,
    caplog: pytest.LogCaptureFixture,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """TLS checks expiry at the handshake; our verifier checks it on every call."""
    now = datetime.now(UTC)
    brief = federation.pki.ca.issue(
        "node",
        "brief",
        tmp_path_factory.mktemp("brief"),
        not_before=now - timedelta(minutes=1),
        not_after=now + timedelta(seconds=2),
    )
    node = federation.channel(brief)
    assert hello(node).node_id == "brief"
    with good_node.keeps_serving():
        left = (brief.certificate.not_valid_after_utc - datetime.now(UTC)).total_seconds()
        time.sleep(max(0.0, left) + 0.05)
        refused(lambda: hello(node), grpc.StatusCode.UNAUTHENTICATED, "'brief'", "expired")
    node.close()
    assert_logged(caplog, "127.0.0.1", "'brief'", "expired")


def test_an_admin_certificate_on_the_fleet_api(
    federation: Federation, good_node: GoodNode, caplog: pytest.LogCaptureFixture
) -> None:
    admin = federation.channel(federation.pki.admin)
    with good_node.keeps_serving() as in_flight:
        refused(
            lambda: hello(admin),
            grpc.StatusCode.UNAUTHENTICATED,
            "admin certificate 'alice' is not accepted here (expected node)",
        )
        forged = forged_reply(in_flight, "hospital-a")
        refused(lambda: push(admin, stream(forged)), grpc.StatusCode.UNAUTHENTICATED, "admin")
    admin.close()
    assert_logged(caplog, "127.0.0.1", "admin certificate 'alice'", "expected node")


def test_a_node_certificate_on_the_control_api(
    federation: Federation, good_node: GoodNode, caplog: pytest.LogCaptureFixture
) -> None:
    admin = federation.control(federation.pki.admin)
    assert admin.list_runs() == []  # the Control API works for its admin
    channel = federation.channel(federation.pki.good)
    control = rpc.ControlStub(channel)  # type: ignore[no-untyped-call]
    with good_node.keeps_serving():
        expected = "node certificate 'hospital-a' is not accepted here (expected admin)"
        refused(
            lambda: control.ListRuns(pb.ListRunsRequest(), timeout=10),
            grpc.StatusCode.UNAUTHENTICATED,
            expected,
        )
        refused(
            lambda: control.StartRun(iter([pb.Chunk(data=b"zip", last=True)]), timeout=10),
            grpc.StatusCode.UNAUTHENTICATED,
            expected,
        )
    channel.close()
    assert admin.list_runs() == []  # nothing was started
    admin.close()
    assert_logged(caplog, "127.0.0.1", "node certificate 'hospital-a'", "expected admin")


def test_the_insecure_name_header_is_ignored_with_tls(
    federation: Federation, good_node: GoodNode
) -> None:
    """hospital-b cannot claim hospital-a's name through the --insecure header."""
    channel = federation.channel(federation.pki.peer)
    with good_node.keeps_serving():
        reply = hello(channel, metadata=[(INSECURE_NODE_HEADER, "hospital-a")])
        assert reply.node_id == "hospital-b"
    channel.close()


def test_a_version_that_is_not_one_is_dropped_not_shown_to_coordinators(
    federation: Federation, good_node: GoodNode, caplog: pytest.LogCaptureFixture
) -> None:
    """What a node says at hello reaches GET /api/v1/nodes: terminal escapes and an essay
    are dropped (logged), the node still joins, the federation runs on."""
    channel = federation.channel(federation.pki.peer)
    stub = rpc.FleetStub(channel)  # type: ignore[no-untyped-call]
    with good_node.keeps_serving():
        for version in ("\x1b[2J\x1b[31mowned", "9" * 5000, "1.0.0\nadmin: yes"):
            reply = stub.Hello(pb.HelloRequest(version=version, instance_id="b1"), timeout=10)
            assert reply.node_id == "hospital-b"
            assert federation.fleet.identities()["hospital-b"][0] == ""
        stub.Hello(pb.HelloRequest(version="0.1.0+local", instance_id="b1"), timeout=10)
        assert federation.fleet.identities()["hospital-b"][0] == "0.1.0+local"
    channel.close()
    assert "node hospital-b reported a version that is not one" in caplog.text


# --------------------------------------------------------------------------- bad streams


def _payload() -> Message:
    """An honest-looking reply from hospital-b (to a task nobody waits for), ~1 KiB encoded."""
    model = Arrays({"w": np.ones(64, dtype=np.float32)})
    task = Message.create(
        run_id="refusals", dst="hospital-b", round=1, kind="train", content=Content.of(model)
    )
    return task.reply(arrays=model, metrics={"n": 1})


def _reply_to(task: object) -> Message:
    """A well-formed message whose reply_to is ``task`` (the server expects a task id)."""
    honest = _payload()
    return Message(replace(honest.metadata, reply_to=task), content=honest.content)  # type: ignore[arg-type]


def _corrupt(chunks: list[Any]) -> list[pb.Chunk]:
    bad = _pb(chunks[1])
    bad.data = bytes([bad.data[0] ^ 0x01]) + bad.data[1:]
    return [_pb(chunks[0]), bad, *map(_pb, chunks[2:])]


def _announce(total: int, data: bytes = b"\0" * 64) -> list[pb.Chunk]:
    return [pb.Chunk(message_id="m", total_size=total, index=0, data=data, crc32=zlib.crc32(data))]


def _raw_stream(payload: bytes) -> list[pb.Chunk]:
    return list(iter_chunks(payload, "m", chunk_size=256))


BAD_STREAMS: dict[str, tuple[Callable[[], list[pb.Chunk]], grpc.StatusCode, str]] = {
    "bad-checksum": (
        lambda: _corrupt(stream(_payload())),
        grpc.StatusCode.DATA_LOSS,
        "checksum mismatch in chunk 1",
    ),
    "truncated": (  # before the header is whole: past it, the unknown task is refused first
        lambda: stream(_payload(), chunk_size=64)[:2],
        grpc.StatusCode.DATA_LOSS,
        "truncated stream",
    ),
    "empty": (lambda: [], grpc.StatusCode.DATA_LOSS, "truncated stream"),
    "reordered": (
        lambda: [c for i, c in enumerate(stream(_payload())) if i != 1],
        grpc.StatusCode.DATA_LOSS,
        "chunk 2 arrived where 1 was expected",
    ),
    "more-than-announced": (
        lambda: [
            *_announce(64, bytes(_payload().to_bytes()[:64])),
            *_raw_stream(os.urandom(512))[1:],
        ],
        grpc.StatusCode.DATA_LOSS,
        "chunks carry more than the announced 64 bytes",
    ),
    "one-byte-over-the-limit": (
        lambda: _raw_stream(os.urandom(MAX_MESSAGE_BYTES + 1)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"message of {MAX_MESSAGE_BYTES + 1} bytes exceeds the limit of {MAX_MESSAGE_BYTES}",
    ),
    "announces-4-EiB": (
        lambda: _announce(2**62),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"exceeds the limit of {MAX_MESSAGE_BYTES} bytes",
    ),
    "not-a-message": (
        lambda: _raw_stream(os.urandom(1000)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "not a Consortium message",
    ),
    "not-a-reply": (
        lambda: stream(_reply_to(None)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "not a reply",
    ),
    "reply-to-of-the-wrong-type": (
        lambda: stream(_reply_to(["a", "list"])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "'reply_to' has the wrong type",
    ),
    "message-with-a-broken-header": (
        lambda: _raw_stream(b"CSM1\x05\x00\x00\x00{nope" + bytes(51)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "header is malformed",
    ),
}


@pytest.mark.parametrize("case", list(BAD_STREAMS))
def test_a_bad_chunk_stream(
    federation: Federation, good_node: GoodNode, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    make, code, words = BAD_STREAMS[case]
    sender = federation.channel(federation.pki.peer)
    with good_node.keeps_serving():
        refused(lambda: push(sender, make()), code, words)
    sender.close()
    assert_logged(caplog, "hospital-b", words)


def test_a_message_over_the_limit_is_refused_before_allocating(
    federation: Federation, good_node: GoodNode
) -> None:
    """Announcing 64 MiB (over the 256 KiB limit) makes the server allocate nothing of it."""
    sender = federation.channel(federation.pki.peer)
    with good_node.keeps_serving():
        tracemalloc.start()
        try:
            refused(
                lambda: push(sender, _announce(64 * 1024**2)),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "exceeds the limit",
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 8 * 1024**2, f"the server allocated {peak} bytes for a refused message"
    sender.close()


def test_a_grpc_message_over_the_transport_limit(
    federation: Federation, good_node: GoodNode, caplog: pytest.LogCaptureFixture
) -> None:
    """One chunk bigger than gRPC's per-message limit never reaches our code."""
    sender = federation.channel(federation.pki.peer)
    data = bytes(MAX_GRPC_MESSAGE + 1)
    huge = pb.Chunk(message_id="m", total_size=len(data), index=0, data=data, last=True)
    with good_node.keeps_serving():
        refused(lambda: push(sender, [huge]), grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max")
    sender.close()
    # gRPC cancels the call itself, often before our handler runs, so what our
    # log says (if anything) is up to gRPC's timing; it never logs a traceback
    assert errors(caplog) == []


@pytest.mark.parametrize(
    "raw",
    [b"\x0a\xff\xff\xff\xff\x0f", b"\x22\x10short", b"\xff\xff\xff\xff"],
    ids=["string-length-past-the-end", "bytes-length-past-the-end", "bad-tag"],
)
def test_a_protobuf_that_does_not_parse(
    federation: Federation, good_node: GoodNode, caplog: pytest.LogCaptureFixture, raw: bytes
) -> None:
    sender = federation.channel(federation.pki.peer)
    call = sender.stream_unary(
        PUSH,
        request_serializer=lambda b: b,
        response_deserializer=pb.PushReply.FromString,
    )
    with good_node.keeps_serving():
        refused(
            lambda: call(iter([raw]), timeout=10),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not a valid consortium.v1.Chunk",
        )
    sender.close()
    assert_logged(caplog, "hospital-b", "consortium.v1.Chunk")
    assert errors(caplog) == []  # no "Exception deserializing message!" traceback from gRPC


def test_a_unary_request_that_does_not_parse(
    federation: Federation, good_node: GoodNode, caplog: pytest.LogCaptureFixture
) -> None:
    sender = federation.channel(federation.pki.peer)
    call = sender.unary_unary(
        "/consortium.v1.Fleet/Hello",
        request_serializer=lambda b: b,
        response_deserializer=pb.HelloReply.FromString,
    )
    with good_node.keeps_serving():
        refused(
            lambda: call(b"\x0a\x05ab", timeout=10),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not a valid consortium.v1.HelloRequest",
        )
    sender.close()
    assert_logged(caplog, "hospital-b", "consortium.v1.HelloRequest")


def test_an_unauthenticated_peer_learns_nothing_about_parsing(
    federation: Federation, good_node: GoodNode
) -> None:
    """Garbage from a peer not on the allow-list is refused for who it is, not for the bytes."""
    stranger = federation.channel(federation.pki.stranger)
    call = stranger.stream_unary(
        PUSH, request_serializer=lambda b: b, response_deserializer=pb.PushReply.FromString
    )
    with good_node.keeps_serving():
        refused(
            lambda: call(iter([b"\xff\xff"]), timeout=10),
            grpc.StatusCode.UNAUTHENTICATED,
            "allow-list",
        )
    stranger.close()


# --------------------------------------------------------------------------- spoofing


@pytest.mark.parametrize("claimed", ["hospital-a", "hospital-b"])
def test_a_reply_to_another_nodes_task_is_not_accepted(
    federation: Federation,
    good_node: GoodNode,
    caplog: pytest.LogCaptureFixture,
    claimed: str,
) -> None:
    """hospital-b answers hospital-a's task, claiming to be hospital-a or honestly itself.

    Refused with FAILED_PRECONDITION as soon as the header arrived, and counted
    (issue 10: every refusal is a clear status, logged and counted)."""
    intruder = federation.node(federation.pki.peer)
    assert intruder.hello(__version__, "b").node_id == "hospital-b"
    before = federation.fleet.refusal_counts().get("hospital-b", {}).get("another-node", 0)
    with good_node.keeps_serving() as in_flight:
        forged = forged_reply(in_flight, claimed)
        with pytest.raises(TransportError, match="FAILED_PRECONDITION") as info:
            intruder.push_result(forged.to_parts(), forged.metadata.message_id)
        assert "'hospital-a'" in str(info.value) and "'hospital-b'" in str(info.value)
    # keeps_serving checked that the round received hospital-a's own answer, not the forgery
    intruder.close()
    assert_logged(caplog, "hospital-b", "refused", "'hospital-a'")
    assert federation.fleet.refusal_counts()["hospital-b"]["another-node"] == before + 1


def test_a_reply_claiming_another_source_for_ones_own_task(
    federation: Federation, good_node: GoodNode, caplog: pytest.LogCaptureFixture
) -> None:
    """hospital-b answers its own task but says the answer comes from hospital-a."""
    node_b = federation.node(federation.pki.peer)
    assert node_b.hello(__version__, "b").node_id == "hospital-b"
    before = federation.fleet.refusal_counts().get("hospital-b", {}).get("wrong-source", 0)
    with good_node.keeps_serving():
        task = federation.make_task("hospital-b")
        round_ = federation.round(task)
        payload = node_b.pull_task(10)
        assert payload is not None
        pulled = Message.from_bytes(payload)
        forged = forged_reply(pulled, "hospital-a")
        with pytest.raises(TransportError, match=r"INVALID_ARGUMENT.*has src 'hospital-a'"):
            node_b.push_result(forged.to_parts(), forged.metadata.message_id)
        honest = federation.answer(pulled)  # the forgery did not use up the task
        assert node_b.push_result(honest.to_parts(), honest.metadata.message_id) == (True, "ok")
        federation.check_answer(task, round_.replies())
    node_b.close()
    assert_logged(caplog, "hospital-b", "refused", "src")
    assert federation.fleet.refusal_counts()["hospital-b"]["wrong-source"] == before + 1
