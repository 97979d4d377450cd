"""A bfloat16 model travels at 2 bytes a value: in the Arrays wire format, and through
the Fleet service (real gRPC, mutual TLS) from the server to a node and back."""

from __future__ import annotations

from typing import TYPE_CHECKING

import ml_dtypes
import numpy as np
import pytest

from consortium.core.arrays import Arrays
from consortium.core.errors import WireFormatError
from consortium.core.message import Content, Message

if TYPE_CHECKING:
    from conftest import GoodNode

VALUES = 40_000  # 80 kB in bfloat16; the test server's message limit is 256 kB
HEADER_ROOM = 1024  # prefix, JSON headers, alignment


def _model() -> Arrays:
    rng = np.random.default_rng(0)
    return Arrays(
        {
            "w": rng.normal(size=(200, VALUES // 200 - 1)).astype(ml_dtypes.bfloat16),
            "b": rng.normal(size=200).astype(ml_dtypes.bfloat16),
        }
    )


def test_bfloat16_encodes_at_two_bytes_a_value() -> None:
    model = _model()
    wire = model.to_bytes()
    assert 2 * VALUES < len(wire) <= 2 * VALUES + HEADER_ROOM
    back = Arrays.from_bytes(wire)
    assert back.equals(model) and back["w"].dtype == ml_dtypes.bfloat16
    assert not back["w"].flags.owndata  # a view over the received bytes, no copy
    as_float32 = Arrays({k: v.astype(np.float32) for k, v in model.items()})
    assert as_float32.encoded_size() > 2 * len(wire) - 2 * HEADER_ROOM


@pytest.mark.parametrize(
    "header", [b'{"a":[["x","<V2",[1],0,2]]}', b'{"a":[["x",[["f","<u2"]],[1],0,2]]}']
)
def test_two_byte_voids_are_not_bfloat16(header: bytes) -> None:
    """Only the name "bfloat16" means bfloat16: a void or structured dtype of the same
    width is refused, as before."""
    data = b"CSA1" + len(header).to_bytes(4, "little") + header
    data += bytes(-len(data) % 64) + b"\0\0"
    with pytest.raises(WireFormatError, match=r"dtype that cannot be sent|malformed"):
        Arrays.from_bytes(data)


def test_bfloat16_model_through_grpc(good_node: GoodNode) -> None:
    model = _model()
    task = Message.create(
        run_id="bf16", dst="hospital-a", round=1, kind="train", content=Content.of(arrays=model)
    )
    round_ = good_node.fed.round(task)
    payload = good_node.client.pull_task(10)
    assert payload is not None
    assert 2 * VALUES < len(payload) <= 2 * VALUES + 2 * HEADER_ROOM  # what the node received
    pulled = Message.from_bytes(payload)
    assert pulled.content is not None and pulled.content.model is not None
    assert pulled.content.model.equals(model)
    trained = Arrays({k: (v.astype(np.float32) + 1).astype(v.dtype) for k, v in model.items()})
    reply = pulled.reply(arrays=trained, metrics={"num_examples": 3})
    assert sum(len(memoryview(p)) for p in reply.to_parts()) <= 2 * VALUES + 2 * HEADER_ROOM
    assert good_node.push(reply) == (True, "ok")
    (received,) = round_.replies()
    assert received.content is not None and received.content.model is not None
    assert received.content.model.equals(trained)
    assert received.content.model["w"].dtype == ml_dtypes.bfloat16
