"""Starting the gRPC server: the Fleet service (and the Control service), with mutual TLS.

The Fleet service is registered with lenient request parsing
(:func:`~consortium.transport.grpc_requests.lenient`), so bytes that are not a
protobuf reach the handler, which authenticates the caller before refusing
them; its chunk streams skip the generated protobuf classes (one copy instead
of three, :func:`~consortium.transport.chunks.decode_chunk`).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc

from consortium.core.errors import TransportError
from consortium.transport.chunks import decode_chunk
from consortium.transport.fairness import MAX_STREAM_WINDOW
from consortium.transport.grpc_control import ControlServicer
from consortium.transport.grpc_options import GRPC_OPTIONS
from consortium.transport.grpc_requests import lenient
from consortium.transport.grpc_server import FleetServicer
from consortium.transport.proto import fleet_pb2 as pb
from consortium.transport.proto import fleet_pb2_grpc as rpc

_HANDLER_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _add_fleet_service(servicer: FleetServicer, server: grpc.Server) -> None:
    """``add_FleetServicer_to_server``, but parsing requests with :func:`lenient`."""
    service = pb.DESCRIPTOR.services_by_name["Fleet"]

    def serializer(name: str) -> Callable[[Any], bytes]:
        # PullTask yields chunks it encoded itself (see there): pass them through
        return bytes if name == "Chunk" else getattr(pb, name).SerializeToString

    handlers = {
        method.name: _HANDLER_KINDS[(method.client_streaming, method.server_streaming)](
            getattr(servicer, method.name),
            request_deserializer=lenient(
                getattr(pb, method.input_type.name),
                decode_chunk if method.input_type.name == "Chunk" else None,
            ),
            response_serializer=serializer(method.output_type.name),
        )
        for method in service.methods
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM material for a TLS server: its key/certificate and the CA that signs clients."""

    key: bytes
    certificate: bytes
    ca: bytes


def start_server(
    address: str,
    *,
    fleet: FleetServicer,
    control: ControlServicer | None = None,
    tls: TlsFiles | None,
    workers: int = 32,
    stream_window: int = MAX_STREAM_WINDOW,
) -> tuple[grpc.Server, int]:
    """Start serving on ``address`` ("host:port", port 0 picks one); returns (server, port).

    ``tls=None`` is plain text: only for ``--insecure``. The port is this server's
    alone (no ``SO_REUSEPORT``): a second server on it gets a :class:`TransportError`.
    ``stream_window``: bytes a node may send on a stream before the server reads them
    (see :func:`~consortium.transport.fairness.stream_window`).
    """
    # gRPC sets SO_REUSEPORT by default, which lets a second server bind the same port
    # and take half the connections
    options = [
        *(o for o in GRPC_OPTIONS if o[0] != "grpc.http2.lookahead_bytes"),
        ("grpc.http2.lookahead_bytes", stream_window),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options)
    _add_fleet_service(fleet, server)
    if control is not None:
        rpc.add_ControlServicer_to_server(control, server)  # type: ignore[no-untyped-call]
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            creds = grpc.ssl_server_credentials(
                [(tls.key, tls.certificate)], root_certificates=tls.ca, require_client_auth=True
            )
            port = server.add_secure_port(address, creds)
    except RuntimeError:  # recent gRPC raises where older ones returned port 0
        port = 0
    if port == 0:
        server.stop(None)
        raise TransportError(
            f"could not listen on {address}: the address is in use (another server?) "
            "or not one of this machine's"
        )
    server.start()
    return server, port
