"""What a message from an untrusted sender may carry (issue 10): record limits while
decoding, the header peek a receiver judges a message by, and shapes that overflow."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from consortium.core.arrays import Arrays
from consortium.core.errors import WireFormatError
from consortium.core.message import Content, Message, peek_metadata
from consortium.core.records import RecordLimits, UnacceptableRecord

LIMITS = RecordLimits()


def _reply(metrics: dict[str, Any] | None = None, config: dict[str, Any] | None = None) -> Message:
    task = Message.create(run_id="r", dst="a", round=1, kind="train", content=Content())
    return task.reply(arrays=Arrays({"w": np.zeros(4)}), metrics=metrics or {}, config=config)


def test_an_honest_reply_passes_the_limits_unchanged() -> None:
    reply = _reply({"loss": 0.5, "num_examples": 10}, {"name": "x", "flags": [True, 2, 0.5]})
    back = Message.from_bytes(reply.to_bytes(), limits=LIMITS)
    assert back.content is not None and back.content.metric_values["loss"] == 0.5
    assert back.content.config == {"name": "x", "flags": [True, 2, 0.5]}


@pytest.mark.parametrize(
    ("metrics", "config", "words"),
    [
        ({f"m{i}": 1 for i in range(1001)}, None, "more than 1000 config and metrics entries"),
        ({f"m{i}": 1 for i in range(600)}, {f"c{i}": 1 for i in range(401)}, "more than 1000"),
        ({}, {"c": list(range(1001))}, "more than 1000"),
        ({"k" * 257: 1.0}, None, "257 characters long, more than 256"),
        ({"loss": float("nan")}, None, "'loss' is not a finite number (nan)"),
        ({"loss": float("inf")}, None, "'loss' is not a finite number (inf)"),
        ({"n": 2**64}, None, "'n' is an integer beyond 64 bits"),
        ({"ok": True}, None, "'ok' must be a number, got bool"),
        ({"s": "text"}, None, "'s' must be a number, got str"),
        ({}, {"lr": float("nan")}, "'lr' is not a finite number"),
        ({}, {"s": "x" * (64 * 1024 + 1)}, "more than 65536"),
        ({}, {"d": {"nested": 1}}, "must be a str/int/float/bool or a list of them"),
    ],
    ids=[
        "metric-keys", "metric-and-config-keys", "config-list", "key-length", "nan", "inf",
        "big-int", "bool-metric", "string-metric", "nan-config", "long-string", "nested-config",
    ],
)  # fmt: skip
def test_records_over_the_limits_are_refused(
    metrics: dict[str, Any], config: dict[str, Any] | None, words: str
) -> None:
    encoded = _reply(metrics, config).to_bytes()
    with pytest.raises(UnacceptableRecord) as info:
        Message.from_bytes(encoded, limits=LIMITS)
    assert words in str(info.value)
    with pytest.raises(UnacceptableRecord):  # the peek a server judges a reply by, too
        peek_metadata(memoryview(encoded), LIMITS)


def test_without_limits_decoding_is_as_before() -> None:
    """Simulation and nodes decode without limits: many keys and NaN still pass."""
    reply = _reply({**{f"m{i}": 1 for i in range(2000)}, "loss": float("nan")})
    back = Message.from_bytes(reply.to_bytes())
    assert back.content is not None and len(back.content.metric_values) == 2001


def test_a_header_over_its_limit_is_refused_from_the_prefix_alone() -> None:
    encoded = _reply({f"m{i}": 1.0 for i in range(100)}).to_bytes()
    small = RecordLimits(max_header_bytes=512)
    with pytest.raises(UnacceptableRecord, match="exceeds the limit of 512 bytes"):
        peek_metadata(memoryview(encoded)[:8], small)


def test_peek_waits_for_the_whole_header_then_returns_the_metadata() -> None:
    reply = _reply({"loss": 1.0})
    encoded = memoryview(reply.to_bytes())
    (head_len,) = struct.unpack_from("<I", encoded, 4)
    assert peek_metadata(encoded[:4], LIMITS) is None
    assert peek_metadata(encoded[: 8 + head_len - 1], LIMITS) is None
    assert peek_metadata(encoded[: 8 + head_len], LIMITS) == reply.metadata
    with pytest.raises(WireFormatError, match="not a message"):
        peek_metadata(memoryview(b"XXXX" + bytes(encoded[4:])), LIMITS)


def _arrays_with(entry: list[Any], data: bytes = bytes(128)) -> bytes:
    head = json.dumps({"a": [entry]}).encode()
    prefix = b"CSA1" + struct.pack("<I", len(head)) + head
    return prefix + bytes(-len(prefix) % 64) + data


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        (["w", "<f8", [2**60 + 1, 16], 0, 128], "too large for any array"),  # wraps to 16
        (["w", "<f8", [2**62, 4], 0, 0], "too large for any array"),
        (["w", "<f8", [0, 2**70], 0, 0], "too large for any array"),
        (["w", "<f8", [2**31, 2**31, 2**31], 0, 0], "too large for any array"),
        (["w", "<f8", [1] * 40, 0, 8], "40 dimensions, more than 32"),
        (["w", "<f8", [1e400], 0, 8], "malformed"),
        (["w", "(2,)f8", [1], 0, 16], "dtype that cannot be sent"),
        (["w", "V8", [1], 0, 8], "dtype that cannot be sent"),
    ],
    ids=["wraps", "product", "zero-and-huge", "three-2^31", "dims", "inf", "subarray", "void"],
)
def test_shapes_and_dtypes_that_overflow_are_wire_format_errors(
    entry: list[Any], words: str
) -> None:
    """Before issue 10 these raised numpy's ValueError or OverflowError (gRPC UNKNOWN)."""
    with pytest.raises(WireFormatError, match=words.replace("(", r"\(").replace(")", r"\)")):
        Arrays.from_bytes(_arrays_with(entry))


def test_a_large_empty_array_still_decodes() -> None:
    back = Arrays.from_bytes(_arrays_with(["w", "<f8", [0, 2**40], 0, 0]))
    assert back["w"].shape == (0, 2**40)
