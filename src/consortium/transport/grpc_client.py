"""Clients of the Fleet (node) and Control (coordinator) services.

A failed call raises :class:`~consortium.core.errors.ServerUnavailable` when the
server could not be reached in time (worth retrying),
:class:`~consortium.core.errors.NodeRefused` when it refused the caller for who
it is (UNAUTHENTICATED, PERMISSION_DENIED: revoked, expired, not allow-listed,
banned, wrong role, an action the server's policy does not grant the role;
retrying cannot help), and a plain
:class:`~consortium.core.errors.TransportError` when it refused the call.

App bundles and models travel as chunk streams (:mod:`consortium.transport.grpc_payloads`):
a bundle over the receiver's limit is refused at its first chunk.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from consortium.core.errors import NodeRefused, ServerUnavailable, TransportError
from consortium.core.fleet_info import RunBundle, Welcome
from consortium.transport.auth import INSECURE_NODE_HEADER
from consortium.transport.chunks import (
    CHUNK_SIZE,
    Allocate,
    Buffer,
    Reassembler,
    decode_chunk,
    encode_chunk,
    iter_chunks,
)
from consortium.transport.grpc_options import GRPC_OPTIONS
from consortium.transport.grpc_payloads import (
    parse_run_info,
    receive,
    start_run_chunks,
    stream_limit,
)
from consortium.transport.link_chunks import REPLY_CHUNK_HEADER, told_chunk_size
from consortium.transport.proto import fleet_pb2 as pb
from consortium.transport.proto import fleet_pb2_grpc as rpc
from consortium.transport.stage_times import flush, set_role, stage, timed

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ClientTls:
    """PEM material for a TLS client: its key/certificate and the federation CA."""

    key: bytes
    certificate: bytes
    ca: bytes
    #: the name the server's certificate must carry (defaults to the host dialled)
    server_name: str | None = None


def open_channel(address: str, tls: ClientTls | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(address, options=GRPC_OPTIONS)
    creds = grpc.ssl_channel_credentials(
        root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.certificate
    )
    options: list[tuple[str, int | str]] = list(GRPC_OPTIONS)
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.secure_channel(address, creds, options=options)


#: Statuses that mean the server was not reached in time: the call is worth retrying.
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
#: Statuses that refuse the caller's identity: retrying with it cannot help.
_REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def _call(fn: Callable[[], T], what: str) -> T:
    """``fn()``, its gRPC failure raised as ServerUnavailable, NodeRefused or TransportError."""
    try:
        return fn()
    except grpc.RpcError as exc:
        # what a call raises is also a grpc.Call (status and details); other RpcErrors
        # (none known) are reported as they are, and taken as refusals
        code = exc.code() if isinstance(exc, grpc.Call) else None
        detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        name = code.name if code is not None else "ERROR"
        if code in _REFUSED:
            raise NodeRefused(f"{what} failed ({name}): {detail}") from exc
        if code not in _UNREACHABLE:
            raise TransportError(f"{what} failed ({name}): {detail}") from exc
        hint = ""
        if code == grpc.StatusCode.UNAVAILABLE:
            # TLS refusals (wrong CA, expired certificate) look like a closed socket here
            hint = (
                " — the server is unreachable, or refused this certificate during the TLS "
                "handshake (check the address, and the certificate's CA and expiry)"
            )
        raise ServerUnavailable(f"{what} failed ({name}): {detail}{hint}") from exc


class FleetClient:
    """A node's connection to the server over gRPC (a node ``NodeConnection``).

    ``max_bundle_bytes`` is the largest app bundle it fetches (the node's bundle
    limit; None: protobuf's own); a larger one is refused at its first chunk.
    """

    def __init__(
        self,
        address: str,
        *,
        tls: ClientTls | None,
        insecure_name: str | None = None,
        max_message_bytes: int = 16 * 1024**3,
        max_bundle_bytes: int | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.address = address
        set_role("node")
        self._channel = open_channel(address, tls)
        self._stub = rpc.FleetStub(self._channel)  # type: ignore[no-untyped-call]
        # chunks skip the generated Chunk class: it copies the data 2-3 times (chunks.py)
        self._pull = self._channel.unary_stream(
            "/consortium.v1.Fleet/PullTask",
            request_serializer=pb.PullRequest.SerializeToString,
            response_deserializer=decode_chunk,
        )
        self._push = self._channel.stream_unary(
            "/consortium.v1.Fleet/PushResult",
            request_serializer=encode_chunk,
            response_deserializer=pb.PushReply.FromString,
        )
        self._get_run = self._channel.unary_stream(
            "/consortium.v1.Fleet/GetRun",
            request_serializer=pb.RunRequest.SerializeToString,
            response_deserializer=decode_chunk,
        )
        self._metadata = (
            [(INSECURE_NODE_HEADER, insecure_name)] if tls is None and insecure_name else []
        )
        self.max_message_bytes = max_message_bytes
        self.max_bundle_bytes = max_bundle_bytes
        self.timeout = timeout
        #: the chunk size of replies: as the server said with the last task pulled
        self.reply_chunk_size = CHUNK_SIZE

    def close(self) -> None:
        self._channel.close()

    def hello(self, version: str, instance_id: str) -> Welcome:
        reply = _call(
            lambda: self._stub.Hello(
                pb.HelloRequest(version=version, instance_id=instance_id),
                metadata=self._metadata,
                timeout=self.timeout,
            ),
            f"hello to {self.address}",
        )
        return Welcome(reply.node_id, reply.heartbeat_interval, reply.max_message_bytes)

    def heartbeat(self) -> bool:
        reply = _call(
            lambda: self._stub.Heartbeat(
                pb.HeartbeatRequest(), metadata=self._metadata, timeout=self.timeout
            ),
            "heartbeat",
        )
        return bool(reply.known)

    def pull_task(self, wait: float, allocate: Allocate | None = None) -> memoryview | None:
        """The next task (an encoded Message), or None if none came within ``wait`` s."""

        def pull() -> memoryview | None:
            stream = self._pull(
                pb.PullRequest(wait_seconds=wait), metadata=self._metadata, timeout=wait + 600
            )
            rebuild = Reassembler(self.max_message_bytes, allocate=allocate)
            seen = False
            for chunk in timed(stream, "recv.grpc"):
                seen = True
                rebuild.feed(chunk)
            flush(force=seen)
            if not seen:
                return None
            # the reply goes back in chunks of the size the server says it reads it in: at
            # the end of the task (once its download showed the link), or at its start
            told = dict(stream.trailing_metadata() or ()).get(REPLY_CHUNK_HEADER)
            if told is None:
                told = dict(stream.initial_metadata() or ()).get(REPLY_CHUNK_HEADER)
            self.reply_chunk_size = told_chunk_size(told)
            return rebuild.result()

        return _call(pull, "pulling a task")

    def push_result(self, parts: Sequence[Buffer], message_id: str) -> tuple[bool, str]:
        def push() -> tuple[bool, str]:
            # with stage timing on, "push" less the chunks' send.crc32 and send.copy is
            # gRPC's part (its own copy, TLS, the wait for the server)
            with stage("push"):
                chunks = iter_chunks(parts, message_id, chunk_size=self.reply_chunk_size)
                reply = self._push(chunks, metadata=self._metadata, timeout=600)
            flush(force=True)
            return bool(reply.accepted), str(reply.detail)

        return _call(push, "sending a result")

    def get_run(self, run_id: str) -> RunBundle:
        """The run's app bundle and config; a bundle over ``max_bundle_bytes`` is refused
        (a :class:`~consortium.core.errors.WireFormatError`) at its first chunk."""
        what = f"fetching run {run_id}"

        def fetch() -> memoryview:
            stream = self._get_run(
                pb.RunRequest(run_id=run_id), metadata=self._metadata, timeout=600
            )
            try:
                return receive(stream, stream_limit(self.max_bundle_bytes), what)
            finally:
                stream.cancel()  # a refused stream stops here, not after the whole bundle

        return parse_run_info(_call(fetch, what), self.max_bundle_bytes)


class ControlClient:
    """The coordinator's connection to the server (admin, researcher or observer
    certificate: the server's policy says which calls each may make).

    ``max_model_bytes`` is the largest model :meth:`download_model` takes.
    """

    def __init__(
        self,
        address: str,
        *,
        tls: ClientTls | None,
        insecure_name: str | None = None,
        max_model_bytes: int = 16 * 1024**3,
    ):
        self._channel = open_channel(address, tls)
        self._stub = rpc.ControlStub(self._channel)  # type: ignore[no-untyped-call]
        # chunks skip the generated Chunk class: it copies the data 2-3 times (chunks.py)
        self._start = self._channel.stream_unary(
            "/consortium.v1.Control/StartRun",
            request_serializer=encode_chunk,
            response_deserializer=pb.StartRunReply.FromString,
        )
        self._download = self._channel.unary_stream(
            "/consortium.v1.Control/DownloadModel",
            request_serializer=pb.RunRequest.SerializeToString,
            response_deserializer=decode_chunk,
        )
        self._metadata = (
            [(INSECURE_NODE_HEADER, insecure_name)] if tls is None and insecure_name else []
        )
        self.max_model_bytes = max_model_bytes

    def close(self) -> None:
        self._channel.close()

    def start_run(self, bundle: bytes, run_config: dict[str, Any], seed: int) -> str:
        """Upload ``bundle`` (as a chunk stream: any size the server's limit allows) and
        start a run of it; the run's id."""
        chunks = start_run_chunks(bundle, json.dumps(run_config), seed)
        reply = _call(
            lambda: self._start(chunks, metadata=self._metadata, timeout=600),
            "starting the run",
        )
        return str(reply.run_id)

    def download_model(self, run_id: str) -> memoryview:
        """The run's final (or newest checkpointed) global model, in the Arrays wire format."""
        what = f"downloading the model of run {run_id}"

        def fetch() -> memoryview:
            stream = self._download(
                pb.RunRequest(run_id=run_id), metadata=self._metadata, timeout=600
            )
            try:
                return receive(stream, self.max_model_bytes, what)
            finally:
                stream.cancel()

        return _call(fetch, what)

    def ban_node(self, name: str, reason: str) -> bool:
        """Refuse node ``name`` from its next call on; False if it was banned already."""
        reply = _call(
            lambda: self._stub.BanNode(
                pb.BanNodeRequest(name=name, reason=reason), metadata=self._metadata, timeout=30
            ),
            f"banning node {name}",
        )
        return bool(reply.changed)

    def unban_node(self, name: str) -> bool:
        """Let node ``name`` back in; False if it was not banned."""
        reply = _call(
            lambda: self._stub.UnbanNode(
                pb.BanNodeRequest(name=name), metadata=self._metadata, timeout=30
            ),
            f"lifting the ban of node {name}",
        )
        return bool(reply.changed)

    def list_runs(self) -> list[dict[str, Any]]:
        reply = _call(
            lambda: self._stub.ListRuns(pb.ListRunsRequest(), metadata=self._metadata, timeout=30),
            "listing runs",
        )
        return [json.loads(r.json) for r in reply.runs]

    def show_run(self, run_id: str) -> dict[str, Any]:
        reply = _call(
            lambda: self._stub.ShowRun(
                pb.RunRequest(run_id=run_id), metadata=self._metadata, timeout=30
            ),
            f"showing run {run_id}",
        )
        result: dict[str, Any] = json.loads(reply.json)
        return result

    def stop_run(self, run_id: str) -> bool:
        reply = _call(
            lambda: self._stub.StopRun(
                pb.StopRunRequest(run_id=run_id), metadata=self._metadata, timeout=30
            ),
            f"stopping run {run_id}",
        )
        return bool(reply.stopped)
