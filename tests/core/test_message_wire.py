"""Message wire format and replies."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle

import numpy as np
import pytest

from consortium.core.arrays import Arrays
from consortium.core.errors import WireFormatError
from consortium.core.message import Content, Message, Metadata


def _task() -> Message:
    content = Content(
        arrays={"model": Arrays({"w": np.arange(5.0)}), "control": Arrays({"c": np.ones(2)})},
        configs={"config": {"lr": 0.1, "name": "x", "flags": [True, False], "n": 3}},
        metrics={"metrics": {"loss": 0.25, "num_examples": 10}},
    )
    return Message.create(run_id="r1", dst="node-a", round=3, kind="train", content=content)


def test_round_trip_keeps_everything() -> None:
    task = _task()
    back = Message.from_bytes(task.to_bytes())
    assert back.metadata == task.metadata
    assert back.content is not None and task.content is not None
    assert back.content.configs == task.content.configs
    assert back.content.metrics == task.content.metrics
    for name, arrays in task.content.arrays.items():
        assert back.content.arrays[name].equals(arrays)


def test_reply_swaps_source_and_destination() -> None:
    task = _task()
    reply = task.reply(arrays=Arrays({"w": np.zeros(5)}), metrics={"num_examples": 4})
    assert reply.metadata.src == "node-a" and reply.metadata.dst == "server"
    assert reply.metadata.reply_to == task.metadata.message_id
    assert reply.metadata.round == 3


def test_error_reply_round_trip() -> None:
    err = _task().error_reply("ValueError", "boom", "Traceback ...")
    back = Message.from_bytes(err.to_bytes())
    assert back.error is not None and back.content is None
    assert (back.error.code, back.error.reason, back.error.traceback) == (
        "ValueError",
        "boom",
        "Traceback ...",
    )


def test_content_xor_error() -> None:
    task = _task()
    with pytest.raises(ValueError):
        Message(task.metadata)


@pytest.mark.parametrize("cut", [0, 5, 30, -1])
def test_truncated_message_refused(cut: int) -> None:
    data = _task().to_bytes()
    with pytest.raises(WireFormatError):
        Message.from_bytes(data[:cut])


def test_bad_config_value_refused() -> None:
    import json
    import struct

    data = _task().to_bytes()
    (hlen,) = struct.unpack_from("<I", data, 4)
    header = json.loads(data[8 : 8 + hlen])
    header["configs"]["config"]["lr"] = {"nested": 1}
    head = json.dumps(header).encode()
    with pytest.raises(WireFormatError, match="lr"):
        Message.from_bytes(b"CSM1" + struct.pack("<I", len(head)) + head + bytes(64))


def test_size_limit() -> None:
    with pytest.raises(WireFormatError, match="limit"):
        Message.from_bytes(_task().to_bytes(), max_bytes=100)


def test_parts_concatenate_to_the_encoding_and_share_blobs() -> None:
    task = _task()
    cache: dict[int, list[bytes | memoryview]] = {}
    parts = task.to_parts(cache)
    assert b"".join(bytes(p) for p in parts) == bytes(task.to_bytes())
    assert task.content is not None
    other = Message.create(run_id="r1", dst="node-b", round=3, kind="train", content=task.content)
    other_parts = other.to_parts(cache)
    views = [p for p in parts if isinstance(p, memoryview)]  # the arrays' own memory
    assert len(views) == sum(len(a) for a in task.content.arrays.values())
    assert all(any(v is q for q in other_parts) for v in views)  # laid out once, shared
    back = Message.from_bytes(b"".join(bytes(p) for p in other_parts))
    assert back.metadata.dst == "node-b"


def test_metadata_and_message_init_every_field_and_stay_frozen_dataclasses() -> None:
    """Their ``__init__`` is written by hand (it sets the slots through their descriptors,
    for speed): it must take every field, in order, with the field's default, and the
    objects must behave as the frozen dataclasses they are declared as."""
    for cls in (Metadata, Message):
        fields = dataclasses.fields(cls)
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        assert [p.name for p in params] == [f.name for f in fields]
        assert [p.default for p in params] == [
            inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
            for f in fields
        ]
    task = _task()
    meta = task.metadata
    assert dataclasses.replace(meta, round=4) == Metadata(
        **{**dataclasses.asdict(meta), "round": 4}
    )
    assert pickle.loads(pickle.dumps(task)).metadata == meta
    assert copy.copy(task) == task and hash(meta) == hash(dataclasses.replace(meta))
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.round = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.error = None  # type: ignore[misc]
    with pytest.raises(ValueError, match="either content or an error"):
        Message(meta)
