"""NodeState <-> bytes, so process workers can carry a node's state between rounds."""

from __future__ import annotations

from consortium.core.context import NodeState
from consortium.core.message import Content, Message, Metadata

_META = Metadata(run_id="", message_id="", src="", dst="", round=0, kind="state")


def encode_state(state: NodeState) -> bytes:
    content = Content(arrays=state.arrays, configs=state.configs, metrics=state.metrics)
    return bytes(Message(_META, content=content).to_bytes())


def decode_state(data: bytes) -> NodeState:
    content = Message.from_bytes(data).content
    assert content is not None
    # copy arrays out of the read-only receive buffer: node code may update them in place
    arrays = {k: v.copy() for k, v in content.arrays.items()}
    return NodeState(arrays=arrays, configs=content.configs, metrics=content.metrics)
