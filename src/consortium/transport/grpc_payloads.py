"""App bundles and models as chunk streams: above gRPC's per-message limit, checked early.

One gRPC message holds at most :data:`~consortium.transport.chunks.MAX_GRPC_MESSAGE`
bytes, while an app bundle may be hundreds of MiB and a model any size. So a
``StartRunRequest`` (coordinator → server), a ``RunInfo`` (server → node) and a
model download (server → coordinator) travel as the chunk streams of
:mod:`consortium.transport.chunks`: the protobuf message is encoded, cut into
chunks and rebuilt on the other side. The first chunk announces the total size,
which the receiver checks against its limit before it allocates or reads more,
so an oversized bundle is refused at its first 4 MiB, not after 1 GB.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from consortium.core.errors import WireFormatError
from consortium.core.fleet_info import RunBundle
from consortium.transport.chunks import Chunk, PayloadTooLarge, Reassembler, iter_chunks
from consortium.transport.proto import fleet_pb2 as pb

#: Room for what travels beside a bundle (run config JSON, names, digest, seed).
ENVELOPE_BYTES = 1024 * 1024
#: The largest protobuf message can hold: the limit where none was configured.
PROTOBUF_LIMIT = 2**31 - 1


class BundleTooLarge(PayloadTooLarge):
    """A bundle stream announced more than the receiver's bundle limit."""


def stream_limit(max_bundle_bytes: int | None) -> int:
    """The most bytes a stream carrying one bundle (and its envelope) may announce."""
    if max_bundle_bytes is None:
        return PROTOBUF_LIMIT
    return min(max_bundle_bytes + ENVELOPE_BYTES, PROTOBUF_LIMIT)


def receive(chunks: Iterable[Chunk], max_bytes: int, what: str) -> memoryview:
    """Rebuild one payload from ``chunks``; :class:`PayloadTooLarge` as soon as the first
    chunk announces more than ``max_bytes``, :class:`WireFormatError` for a broken stream."""
    rebuild = Reassembler(max_bytes)
    try:
        for chunk in chunks:
            rebuild.feed(chunk)
        return rebuild.result()
    except PayloadTooLarge as exc:
        raise BundleTooLarge(f"{what}: {exc}") from exc
    except WireFormatError as exc:
        raise WireFormatError(f"{what}: {exc}") from exc


def _check_bundle(size: int, max_bundle_bytes: int | None, what: str) -> None:
    if max_bundle_bytes is not None and size > max_bundle_bytes:
        raise BundleTooLarge(
            f"{what}: the app bundle is {size} bytes, over the limit of {max_bundle_bytes}"
        )


# -- StartRun: coordinator -> server ------------------------------------------------------


def start_run_chunks(bundle: bytes, run_config_json: str, seed: int) -> Iterator[Chunk]:
    """What ``StartRun`` streams: one encoded ``StartRunRequest``."""
    request = pb.StartRunRequest(bundle=bundle, run_config_json=run_config_json, seed=seed)
    return iter_chunks(request.SerializeToString(), "start-run")


def parse_start_run(payload: memoryview, max_bundle_bytes: int | None) -> pb.StartRunRequest:
    """The ``StartRunRequest`` a stream carried; WireFormatError if it is not one."""
    request = pb.StartRunRequest()
    try:
        request.ParseFromString(payload)
    except Exception as exc:  # DecodeError; invalid UTF-8 in a string field
        raise WireFormatError(f"the StartRun stream is not a StartRunRequest: {exc}") from exc
    _check_bundle(len(request.bundle), max_bundle_bytes, "StartRun")
    return request


# -- GetRun: server -> node ---------------------------------------------------------------


#: ``RunInfo.bundle``'s field number (fleet.proto)
_BUNDLE_FIELD = 5


def run_info_chunks(bundle: RunBundle) -> Iterator[Chunk]:
    """What ``GetRun`` streams: one encoded ``RunInfo``, its bundle included.

    The bundle is sent from the server's own copy, not copied into an encoded
    message per node: the other fields are encoded, then the bundle field's key
    and length, then its bytes (protobuf parses fields in any order).
    """
    info = pb.RunInfo(
        run_id=bundle.run_id,
        app_name=bundle.app_name,
        app_version=bundle.app_version,
        client_entry=bundle.client_entry,
        bundle_sha256=bundle.bundle_sha256,
        run_config_json=bundle.run_config_json,
        seed=bundle.seed,
    )
    key = _varint(_BUNDLE_FIELD << 3 | 2) + _varint(len(bundle.bundle))  # length-delimited
    parts = [info.SerializeToString(), key, memoryview(bundle.bundle)]
    return iter_chunks(parts, bundle.run_id)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def parse_run_info(payload: memoryview, max_bundle_bytes: int | None) -> RunBundle:
    """The run a ``GetRun`` stream carried; WireFormatError if it is not a ``RunInfo``."""
    info = pb.RunInfo()
    try:
        info.ParseFromString(payload)
    except Exception as exc:  # DecodeError; invalid UTF-8 in a string field
        raise WireFormatError(f"the GetRun stream is not a RunInfo: {exc}") from exc
    _check_bundle(len(info.bundle), max_bundle_bytes, f"run {info.run_id}")
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


# -- the generated Chunk class (Control service) --------------------------------------------


def to_pb(chunk: Chunk) -> pb.Chunk:
    """``chunk`` as the generated class (the Control service's generated handlers want it)."""
    return pb.Chunk(
        message_id=chunk.message_id,
        total_size=chunk.total_size,
        index=chunk.index,
        data=bytes(chunk.data),
        crc32=chunk.crc32,
        last=chunk.last,
        total_crc32=chunk.total_crc32,
    )


def from_pb(chunk: pb.Chunk) -> Chunk:
    """The generated class as a :class:`Chunk` (its data not copied)."""
    return Chunk(
        message_id=chunk.message_id,
        total_size=chunk.total_size,
        index=chunk.index,
        data=chunk.data,
        crc32=chunk.crc32,
        last=chunk.last,
        total_crc32=chunk.total_crc32,
    )
