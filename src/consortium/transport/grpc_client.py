"""Clients of the Fleet (node) and Control (coordinator) services.

A failed call raises :class:`~consortium.core.errors.ServerUnavailable` when the
server could not be reached in time (worth retrying),
:class:`~consortium.core.errors.NodeRefused` when it refused the caller for who
it is (UNAUTHENTICATED, PERMISSION_DENIED: revoked, expired, not allow-listed,
wrong role; retrying cannot help), and a plain
:class:`~consortium.core.errors.TransportError` when it refused the call.
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
from consortium.transport.chunks import Buffer, Reassembler, decode_chunk, encode_chunk, iter_chunks
from consortium.transport.grpc_server import GRPC_OPTIONS
from consortium.transport.proto import fleet_pb2 as pb
from consortium.transport.proto import fleet_pb2_grpc as rpc

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
    """A node's connection to the server over gRPC (a node ``NodeConnection``)."""

    def __init__(
        self,
        address: str,
        *,
        tls: ClientTls | None,
        insecure_name: str | None = None,
        max_message_bytes: int = 16 * 1024**3,
        timeout: float = 30.0,
    ) -> None:
        self.address = address
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
        self._metadata = (
            [(INSECURE_NODE_HEADER, insecure_name)] if tls is None and insecure_name else []
        )
        self.max_message_bytes = max_message_bytes
        self.timeout = timeout

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

    def pull_task(self, wait: float) -> memoryview | None:
        """The next task (an encoded Message), or None if none came within ``wait`` s."""

        def pull() -> memoryview | None:
            stream = self._pull(
                pb.PullRequest(wait_seconds=wait), metadata=self._metadata, timeout=wait + 600
            )
            rebuild = Reassembler(self.max_message_bytes)
            seen = False
            for chunk in stream:
                seen = True
                rebuild.feed(chunk)
            return rebuild.result() if seen else None

        return _call(pull, "pulling a task")

    def push_result(self, parts: Sequence[Buffer], message_id: str) -> tuple[bool, str]:
        def push() -> tuple[bool, str]:
            reply = self._push(iter_chunks(parts, message_id), metadata=self._metadata, timeout=600)
            return bool(reply.accepted), str(reply.detail)

        return _call(push, "sending a result")

    def get_run(self, run_id: str) -> RunBundle:
        info = _call(
            lambda: self._stub.GetRun(
                pb.RunRequest(run_id=run_id), metadata=self._metadata, timeout=120
            ),
            f"fetching run {run_id}",
        )
        return RunBundle(
            run_id=info.run_id,
            app_name=info.app_name,
            app_version=info.app_version,
            client_entry=info.client_entry,
            bundle=info.bundle,
            bundle_sha256=info.bundle_sha256,
            run_config_json=info.run_config_json,
            seed=info.seed,
        )


class ControlClient:
    """The coordinator's connection to the server (admin certificate)."""

    def __init__(self, address: str, *, tls: ClientTls | None, insecure_name: str | None = None):
        self._channel = open_channel(address, tls)
        self._stub = rpc.ControlStub(self._channel)  # type: ignore[no-untyped-call]
        self._metadata = (
            [(INSECURE_NODE_HEADER, insecure_name)] if tls is None and insecure_name else []
        )

    def close(self) -> None:
        self._channel.close()

    def start_run(self, bundle: bytes, run_config: dict[str, Any], seed: int) -> str:
        request = pb.StartRunRequest(
            bundle=bundle, run_config_json=json.dumps(run_config), seed=seed
        )
        reply = _call(
            lambda: self._stub.StartRun(request, metadata=self._metadata, timeout=120),
            "starting the run",
        )
        return str(reply.run_id)

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
