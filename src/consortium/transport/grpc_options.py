"""The options every gRPC server and channel of Consortium's transport is made with."""

from __future__ import annotations

from consortium.transport.chunks import MAX_GRPC_MESSAGE

# Measured with 200 nodes (docs/benchmarks.md, "The run's tracking in a process of its
# own"): TCP read chunk sizes, grpc.tcp_receive_buffer_size (not applied to accepted
# sockets by this grpcio), SO_RCVBUF on the listening socket, HTTP/2 write buffer and
# frame size and a cap on concurrent streams leave the server's peak where it is; only
# the stream window (lookahead_bytes, see start_server) moves it.
GRPC_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE),
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 8 * 1024 * 1024),
]
