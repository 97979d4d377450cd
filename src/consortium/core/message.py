"""Message: the one thing server and nodes exchange, in simulation and deployment.

A message is metadata plus either content (named Arrays, Config and Metrics
records) or an error. ``to_bytes``/``from_bytes`` give its wire form: a JSON
header for metadata and small records, followed by each Arrays record in its
own zero-copy wire format (see :mod:`consortium.core.arrays`).
"""

from __future__ import annotations

import itertools
import json
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from consortium.core.arrays import ALIGN, Arrays
from consortium.core.errors import WireFormatError
from consortium.core.records import (
    Config,
    Metrics,
    RecordLimits,
    UnacceptableRecord,
    check_config,
    check_metrics,
    record_budget,
)

#: Conventional record names.
MODEL = "model"
CONFIG = "config"
METRICS = "metrics"

#: Metrics record in which the transport reports where a task's time went.
TIMING_RECORD = "consortium.timing"

#: Message kinds the default round loop uses; apps may define their own.
TRAIN = "train"
EVALUATE = "evaluate"
QUERY = "query"

#: The node id of the aggregation server.
SERVER_ID = "server"

_MAGIC = b"CSM1"
_PREFIX = struct.Struct("<4sI")


# Message ids: a random per-process prefix and a counter. Unique across processes
# and restarts, and far cheaper than uuid4 per message (10,000-node simulations).
_ID_PREFIX = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count()


def new_message_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):x}"


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(slots=True)
class Content:
    """Named records carried by a message."""

    arrays: dict[str, Arrays] = field(default_factory=dict)
    configs: dict[str, Config] = field(default_factory=dict)
    metrics: dict[str, Metrics] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        arrays: Arrays | None = None,
        config: Config | None = None,
        metrics: Metrics | None = None,
    ) -> Content:
        """Content with the conventional ``model``/``config``/``metrics`` records."""
        return cls(
            {MODEL: arrays} if arrays is not None else {},
            {CONFIG: config} if config is not None else {},
            {METRICS: metrics} if metrics is not None else {},
        )

    @property
    def model(self) -> Arrays | None:
        return self.arrays.get(MODEL)

    @property
    def config(self) -> Config:
        return self.configs.get(CONFIG, {})

    @property
    def metric_values(self) -> Metrics:
        return self.metrics.get(METRICS, {})


@dataclass(frozen=True, slots=True)
class Error:
    """Why a node could not produce a reply."""

    code: str
    reason: str
    traceback: str = ""


@dataclass(frozen=True, slots=True, init=False)
class Metadata:
    """Who sends what to whom, in which run and round."""

    run_id: str
    message_id: str
    src: str
    dst: str
    round: int
    kind: str
    reply_to: str | None = None
    deadline: float | None = None
    created_at: float = 0.0

    def __init__(
        self,
        run_id: str,
        message_id: str,
        src: str,
        dst: str,
        round: int,
        kind: str,
        reply_to: str | None = None,
        deadline: float | None = None,
        created_at: float = 0.0,
    ) -> None:
        # two are made per node-task (a task and its reply): the slots are set through
        # their descriptors, in half the time of the frozen dataclass's object.__setattr__
        # per field (see _METADATA_SETTERS)
        set_run_id, set_message_id, set_src, set_dst, set_round, set_kind, set_reply_to, \
            set_deadline, set_created_at = _METADATA_SETTERS  # fmt: skip
        set_run_id(self, run_id)
        set_message_id(self, message_id)
        set_src(self, src)
        set_dst(self, dst)
        set_round(self, round)
        set_kind(self, kind)
        set_reply_to(self, reply_to)
        set_deadline(self, deadline)
        set_created_at(self, created_at)


@dataclass(frozen=True, slots=True, init=False)
class Message:
    """Metadata plus content (a task or result) or an error (a failed task)."""

    metadata: Metadata
    content: Content | None = None
    error: Error | None = None

    def __init__(
        self, metadata: Metadata, content: Content | None = None, error: Error | None = None
    ) -> None:
        if (content is None) == (error is None):
            raise ValueError("a message carries either content or an error, not both or neither")
        # three are made per node-task: the slots are set through their descriptors, in
        # two-thirds of the time of the frozen dataclass's object.__setattr__ per field
        _SET_METADATA(self, metadata)
        _SET_CONTENT(self, content)
        _SET_ERROR(self, error)

    @classmethod
    def create(
        cls,
        *,
        run_id: str,
        dst: str,
        round: int,
        kind: str,
        content: Content,
        src: str = SERVER_ID,
        deadline: float | None = None,
    ) -> Message:
        # (run_id, message_id, src, dst, round, kind, reply_to, deadline, created_at)
        meta = Metadata(
            run_id, new_message_id(), src, dst, round, kind, None, deadline, time.time()
        )
        return cls(meta, content=content)

    # -- replies --------------------------------------------------------------
    def _reply_meta(self) -> Metadata:
        m = self.metadata
        # as in create, positional: the reply goes back from dst to src
        return Metadata(
            m.run_id, new_message_id(), m.dst, m.src, m.round, m.kind, m.message_id, m.deadline,
            time.time(),
        )  # fmt: skip

    def reply(
        self,
        content: Content | None = None,
        *,
        arrays: Arrays | None = None,
        config: Config | None = None,
        metrics: Metrics | None = None,
    ) -> Message:
        """A reply to this message carrying ``content`` (or the conventional records)."""
        if content is None:
            content = Content.of(arrays=arrays, config=config, metrics=metrics)
        return Message(self._reply_meta(), content=content)

    def error_reply(self, code: str, reason: str, traceback: str = "") -> Message:
        return Message(self._reply_meta(), error=Error(code, reason, traceback))

    @property
    def has_error(self) -> bool:
        return self.error is not None

    # -- wire -----------------------------------------------------------------
    def _head(self, sizes: list[int]) -> tuple[bytes, list[tuple[str, int, int]], int]:
        """The prefixed, padded header and the layout (name, offset, size) of each blob."""
        meta = {k: getattr(self.metadata, k) for k in Metadata.__slots__}
        header: dict[str, Any] = {"meta": meta}
        names: list[str] = []
        if self.error is not None:
            header["error"] = [self.error.code, self.error.reason, self.error.traceback]
        else:
            assert self.content is not None
            header["configs"] = self.content.configs
            header["metrics"] = self.content.metrics
            names = list(self.content.arrays)
        # offsets are relative to the end of the aligned header
        layout: list[tuple[str, int, int]] = []
        offset = end = 0
        for name, size in zip(names, sizes, strict=True):
            layout.append((name, offset, size))
            end = offset + size
            offset = _align(end)
        header["arrays"] = layout
        head = json.dumps(header, separators=(",", ":")).encode()
        start = _align(_PREFIX.size + len(head))
        prefix = bytearray(start)
        _PREFIX.pack_into(prefix, 0, _MAGIC, len(head))
        prefix[_PREFIX.size : _PREFIX.size + len(head)] = head
        return bytes(prefix), layout, end

    def _blobs(self) -> list[Arrays]:
        return list(self.content.arrays.values()) if self.content is not None else []

    def to_bytes(self) -> bytearray:
        """Encode into one buffer; Arrays records keep their zero-copy layout."""
        blobs = self._blobs()
        head, layout, end = self._head([a.encoded_size() for a in blobs])
        out = bytearray(len(head) + end)
        out[: len(head)] = head
        view = memoryview(out)
        start = len(head)
        for arrays, (_, off, size) in zip(blobs, layout, strict=True):
            arrays.write_into(view[start + off : start + off + size])
        return out

    def to_parts(
        self, blob_cache: dict[int, list[bytes | memoryview]] | None = None
    ) -> list[bytes | bytearray | memoryview]:
        """The encoding as buffers whose concatenation is :meth:`to_bytes`, without copying.

        Arrays records are sent from the arrays' own memory (:meth:`Arrays.wire_parts`):
        a server sending one model to many nodes holds no encoded copy of it, and a
        node replying with arrays it computed (or received and changed in place)
        sends them as they are. ``blob_cache``, shared between messages, saves
        recomputing the layout of a record sent to many nodes.
        """
        cache = blob_cache if blob_cache is not None else {}
        encoded = []
        for arrays in self._blobs():
            blob = cache.get(id(arrays))
            if blob is None:
                blob = cache[id(arrays)] = arrays.wire_parts()
            encoded.append(blob)
        head, layout, _ = self._head([sum(len(memoryview(p)) for p in b) for b in encoded])
        parts: list[bytes | bytearray | memoryview] = [head]
        position = 0
        for blob, (_, off, size) in zip(encoded, layout, strict=True):
            if off > position:
                parts.append(bytes(off - position))
            parts.extend(blob)
            position = off + size
        return parts

    @classmethod
    def from_bytes(
        cls,
        data: bytes | bytearray | memoryview,
        *,
        max_bytes: int | None = None,
        exclusive: bool = False,
        limits: RecordLimits | None = None,
    ) -> Message:
        """Decode a message; raises :class:`WireFormatError` on any bad input.

        ``exclusive=True`` says the caller hands over a writable buffer nobody
        else uses: its arrays are then marked :attr:`Arrays.exclusive`.
        ``limits`` bounds the header and its records (a message from a node).
        """
        view = memoryview(data).cast("B")
        if max_bytes is not None and len(view) > max_bytes:
            raise WireFormatError(f"message of {len(view)} bytes exceeds the limit of {max_bytes}")
        head = _read_header(view, limits)
        if head is None:
            raise WireFormatError("message header runs past the end")
        meta, header, head_end = head
        if "error" in header:
            return cls(meta, error=_read_error(header))
        start = _align(head_end)
        content, layout = _read_records(header, limits)
        for entry in layout:
            try:
                name, off, size = str(entry[0]), int(entry[1]), int(entry[2])
            except (ValueError, TypeError, IndexError, OverflowError) as exc:
                raise WireFormatError(f"arrays layout entry {entry!r} is malformed") from exc
            if off < 0 or size < 0 or start + off + size > len(view):
                raise WireFormatError(f"arrays record {name!r} runs past the end of the message")
            arrays = Arrays.from_bytes(view[start + off : start + off + size])
            arrays.exclusive = exclusive and not view.readonly
            content.arrays[name] = arrays
        return cls(meta, content=content)


#: The slots of Metadata and Message, set by their ``__init__``: a frozen dataclass's
#: own ``__init__`` sets each field through ``object.__setattr__`` (its ``__setattr__``
#: refuses), twice as slow as the slot's descriptor, and the two are made several times
#: per node-task. They stay frozen dataclasses (``dataclasses.replace`` works on them).
_METADATA_SETTERS = tuple(Metadata.__dict__[name].__set__ for name in Metadata.__slots__)
_SET_METADATA = Message.__dict__["metadata"].__set__
_SET_CONTENT = Message.__dict__["content"].__set__
_SET_ERROR = Message.__dict__["error"].__set__


def peek_metadata(data: memoryview, limits: RecordLimits) -> Metadata | None:
    """The metadata of an encoded message from its first bytes (None until its whole
    header is there), checking the header and its records against ``limits``.

    A receiver calls it as the bytes arrive, to judge a message before taking the rest.
    Raises :class:`WireFormatError` on anything :meth:`Message.from_bytes` would refuse
    in the header.
    """
    head = _read_header(memoryview(data).cast("B"), limits)
    if head is None:
        return None
    meta, header, _ = head
    if "error" in header:
        _read_error(header)
    else:
        _read_records(header, limits)
    return meta


def _read_header(
    view: memoryview, limits: RecordLimits | None
) -> tuple[Metadata, dict[str, Any], int] | None:
    """(metadata, header, end of header) of an encoded message; None if ``view`` ends first."""
    if len(view) < _PREFIX.size:
        return None
    magic, head_len = _PREFIX.unpack_from(view, 0)
    if magic != _MAGIC:
        raise WireFormatError(f"not a message (magic {bytes(magic)!r})")
    if limits is not None and head_len > limits.max_header_bytes:
        raise UnacceptableRecord(
            f"message header of {head_len} bytes exceeds the limit of "
            f"{limits.max_header_bytes} bytes"
        )
    head_end = _PREFIX.size + head_len
    if head_end > len(view):
        return None
    try:
        header = json.loads(bytes(view[_PREFIX.size : head_end]))
        meta = Metadata(**header["meta"])
        _check_metadata(meta)
    except (ValueError, KeyError, TypeError) as exc:
        raise WireFormatError(f"message header is malformed: {exc}") from exc
    return meta, header, head_end


def _read_error(header: dict[str, Any]) -> Error:
    try:
        code, reason, tb = header["error"]
    except (ValueError, TypeError) as exc:
        raise WireFormatError("message error record is malformed") from exc
    return Error(str(code), str(reason), str(tb))


def _read_records(header: dict[str, Any], limits: RecordLimits | None) -> tuple[Content, list[Any]]:
    """The Config and Metrics records of a header, checked, and its arrays layout."""
    content = Content()
    budget = record_budget(limits)
    try:
        records = len(header.get("configs", {})) + len(header.get("metrics", {}))
        if limits is not None and records > limits.max_entries:
            raise UnacceptableRecord(f"the message carries {records} records")
        for name, cfg in dict(header.get("configs", {})).items():
            content.configs[str(name)] = check_config(
                cfg, what=f"config record {_short(name)}", budget=budget
            )
        for name, met in dict(header.get("metrics", {})).items():
            content.metrics[str(name)] = check_metrics(
                met, what=f"metrics record {_short(name)}", budget=budget
            )
        layout = list(header.get("arrays", []))
    except (ValueError, TypeError, AttributeError) as exc:
        raise WireFormatError(f"message records are malformed: {exc}") from exc
    return content, layout


def _short(name: object) -> str:
    """A record's name for a message, cut short."""
    text = repr(name)
    return text if len(text) <= 60 else text[:60] + "..."


_META_TYPES: dict[str, tuple[type, ...]] = {
    "run_id": (str,),
    "message_id": (str,),
    "src": (str,),
    "dst": (str,),
    "round": (int,),
    "kind": (str,),
    "reply_to": (str, type(None)),
    "deadline": (int, float, type(None)),
    "created_at": (int, float),
}


def _check_metadata(meta: Metadata) -> None:
    for name, types in _META_TYPES.items():
        value = getattr(meta, name)
        if isinstance(value, bool) or not isinstance(value, types):
            raise TypeError(f"metadata field {name!r} has the wrong type ({type(value).__name__})")
