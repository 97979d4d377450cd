"""How messages and round records cross between the server and its app process.

A batch of messages travels as one frame: each message encoded without its
arrays, then each distinct Arrays record once (a model sent to a thousand
nodes crosses once, as it is held once in memory). Everything decoded on the
server's side is checked: the arrays and message headers by the same decoders
that check a node's messages, round records against :class:`RecordLimits`.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from typing import Any

from consortium.core.arrays import Arrays
from consortium.core.errors import WireFormatError
from consortium.core.history import (
    History,
    NodeResult,
    Outcome,
    RoundRecord,
    RunInfo,
)
from consortium.core.message import Content, Message
from consortium.core.records import (
    Metrics,
    RecordLimits,
    UnacceptableRecord,
    check_config,
    check_metrics,
    record_budget,
)

Buffer = bytes | bytearray | memoryview
#: the most bytes of messages (without their arrays) a batch carries in its header
MAX_HEADER_SKELETON = 64 * 1024
#: the most nodes one round record may describe
MAX_NODE_RESULTS = 100_000
#: the longest reason or traceback text a record may hold
MAX_TEXT = 64 * 1024


def encode_batch(
    messages: Sequence[Message], *, skeletons_in_header: bool = False
) -> tuple[dict[str, Any], list[Buffer]]:
    """(header, payload parts) for ``messages``; each Arrays object is sent once.

    With ``skeletons_in_header`` the messages without their arrays travel in the
    header (base64), when they are small (:data:`MAX_HEADER_SKELETON`), so that the
    payload is the arrays alone: a reply forwarded to the app process is then one
    range of the block it was received into, which the app reads where it lies."""
    blob_index: dict[int, int] = {}
    blobs: list[list[bytes | memoryview]] = []
    entries: list[dict[str, Any]] = []
    skeletons: list[bytearray] = []
    for msg in messages:
        refs: list[list[Any]] = []
        bare = msg
        if msg.content is not None and msg.content.arrays:
            for name, arrays in msg.content.arrays.items():
                index = blob_index.get(id(arrays))
                if index is None:
                    index = blob_index[id(arrays)] = len(blobs)
                    blobs.append(arrays.wire_parts())
                refs.append([name, index])
            c = msg.content
            bare = Message(msg.metadata, content=Content({}, c.configs, c.metrics))
        skeleton = bare.to_bytes()
        skeletons.append(skeleton)
        entries.append({"size": len(skeleton), "arrays": refs})
    header: dict[str, Any] = {"messages": entries}
    parts: list[Buffer] = []
    if skeletons_in_header and sum(len(s) for s in skeletons) <= MAX_HEADER_SKELETON:
        header["skeletons"] = [base64.b64encode(s).decode() for s in skeletons]
    else:
        parts += skeletons
    sizes = []
    for blob in blobs:
        sizes.append(sum(memoryview(p).nbytes for p in blob))
        parts.extend(blob)
    header["blobs"] = sizes
    return header, parts


def decode_batch(
    header: dict[str, Any], payload: bytes | bytearray | memoryview, limits: RecordLimits | None
) -> list[Message]:
    """The messages of one batch frame; raises WireFormatError on anything malformed."""
    try:
        entries = list(header["messages"])
        sizes = [int(s) for s in header["blobs"]]
        spans = [int(e["size"]) for e in entries]
        in_header = header.get("skeletons")
        skeletons: list[Buffer] = []
        if in_header is not None:
            skeletons = [base64.b64decode(s, validate=True) for s in in_header]
            if [len(s) for s in skeletons] != spans:
                raise ValueError("its skeletons' sizes are not its entries' sizes")
            spans = []
        spans += sizes
    except (KeyError, TypeError, ValueError) as exc:  # binascii.Error is a ValueError
        raise WireFormatError(f"a message batch header is malformed: {exc}") from exc
    if any(s < 0 for s in spans) or sum(spans) != len(payload):
        raise WireFormatError("a message batch's sizes do not add up to its payload")
    view = memoryview(payload)
    offset = 0
    if in_header is None:
        for entry in entries:
            size = int(entry["size"])
            skeletons.append(view[offset : offset + size])
            offset += size
    blobs = []
    for size in sizes:
        blobs.append(Arrays.from_bytes(view[offset : offset + size]))
        offset += size
    out = []
    for entry, skeleton in zip(entries, skeletons, strict=True):
        msg = Message.from_bytes(skeleton, limits=limits)
        refs = entry.get("arrays")
        if not isinstance(refs, list):
            raise WireFormatError("a message batch entry's arrays are not a list")
        if refs and msg.content is None:
            raise WireFormatError("an error message cannot carry arrays")
        for ref in refs:
            if not (isinstance(ref, list) and len(ref) == 2 and isinstance(ref[0], str)
                    and isinstance(ref[1], int) and 0 <= ref[1] < len(blobs)):  # fmt: skip
                raise WireFormatError(f"a message batch arrays reference {ref!r} is malformed")
            assert msg.content is not None
            msg.content.arrays[ref[0]] = blobs[ref[1]]
        out.append(msg)
    return out


# -- round records ----------------------------------------------------------------------
def round_from_json(data: Any, limits: RecordLimits) -> RoundRecord:
    """A round record (:func:`~consortium.core.history.round_to_json`) from the app process,
    checked (raises UnacceptableRecord)."""
    try:
        nodes = data["nodes"]
        if not isinstance(nodes, list) or len(nodes) > MAX_NODE_RESULTS:
            raise UnacceptableRecord("a round record's nodes are not a list of at most "
                                     f"{MAX_NODE_RESULTS}")  # fmt: skip
        return RoundRecord(
            round=_int(data["round"], "round"),
            train_metrics=_metrics(data["train"], "train metrics", limits),
            evaluate_metrics=_metrics(data["evaluate"], "evaluate metrics", limits),
            central_metrics=_metrics(data["central"], "central metrics", limits),
            seconds=_seconds(data["seconds"]),
            nodes=[_node(n, limits) for n in nodes],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UnacceptableRecord(f"a round record is malformed: {exc!r}") from exc


def _node(data: Any, limits: RecordLimits) -> NodeResult:
    return NodeResult(
        node_id=_text(data["node"], 256),
        stage=_text(data["stage"], 64),
        outcome=Outcome(data["outcome"]),
        metrics=_metrics(data["metrics"], "node metrics", limits),
        num_examples=_int(data["num_examples"], "num_examples"),
        reason=_text(data["reason"], MAX_TEXT),
        traceback=_text(data["traceback"], MAX_TEXT),
        seconds=_seconds(data["seconds"]),
        timing=_metrics(data["timing"], "node timing", limits),
    )


def run_info_to_json(info: RunInfo) -> dict[str, Any]:
    return {"num_rounds": info.num_rounds, "node_ids": info.node_ids, "params": info.params}


def run_info_from_json(data: Any, run_id: str, run_dir: str | None,
                       limits: RecordLimits) -> RunInfo:  # fmt: skip
    try:
        nodes = data["node_ids"]
        if not isinstance(nodes, list) or len(nodes) > MAX_NODE_RESULTS:
            raise UnacceptableRecord("a run's node ids are not a list")
        params = check_config(data["params"], what="run params", budget=record_budget(limits))
        return RunInfo(run_id, _int(data["num_rounds"], "num_rounds"),
                       [_text(n, 256) for n in nodes], params, run_dir)  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise UnacceptableRecord(f"a run start is malformed: {exc!r}") from exc


def history_of(rounds: Sequence[RoundRecord]) -> History:
    return History(list(rounds))


def _metrics(data: Any, what: str, limits: RecordLimits) -> Metrics:
    # bounded in count and key length, but NaN and inf pass: a diverged loss is a result
    return check_metrics(data, what=what, budget=record_budget(limits), finite_only=False)


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise UnacceptableRecord(f"{what} must be a non-negative integer, got {value!r}")
    return value


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UnacceptableRecord(f"seconds must be a finite number, got {value!r}")
    return float(value)


def _text(value: Any, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise UnacceptableRecord(f"a text field is not a string of at most {limit} characters")
    return value
