"""The server's half of compression: decode compressed updates, compress the tasks' model.

A node running ``compression_mod`` replies with codes instead of a ``model``
record (:mod:`consortium.client.compression_wire`). :func:`decoded_model`
turns them back into the model they stand for, before the reply validation
checks it against the global model exactly as it checks any update: nothing
downstream (strategies, robust rules, clipping) sees a compressed update.

With ``compression-downlink`` in the run config, the round loop also sends
the global model compressed (:func:`compress_tasks`): encoded once a round,
with the server's ``compression`` random stream, and shared by every task
that carries that model. Nodes must run ``compression_mod`` to read it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from consortium.client.compression_codecs import downlink_spec
from consortium.client.compression_wire import (
    COMPRESSION_RECORDS,
    compressed_content,
    decode_records,
    encode_model,
)
from consortium.core.arrays import Arrays
from consortium.core.message import Content, Message
from consortium.core.protocol import (
    COMPRESSION_AUX_RECORD,
    COMPRESSION_CODES_RECORD,
    COMPRESSION_RECORD,
)
from consortium.core.records import Config

__all__ = ["COMPRESSION_RECORDS", "compress_tasks", "decoded_model"]


def decoded_model(content: Content, template: Arrays, reference: Arrays | None) -> Arrays | None:
    """The model a compressed reply stands for; None if the reply is not compressed.

    ``template`` gives the names, dtypes and shapes; ``reference`` is the global
    model of the round, which a delta update is added to. Raises
    :class:`~consortium.core.errors.UpdateRejected` naming what is wrong.
    """
    return decode_records(content, template, reference)


def compress_tasks(
    messages: Sequence[Message], run_config: Config, rng: np.random.Generator
) -> list[Message]:
    """``messages`` with their model compressed as ``compression-downlink`` says (as
    they are without it). Each distinct model is encoded once."""
    spec = downlink_spec(run_config)
    if spec is None:
        return list(messages)
    encoded: dict[int, tuple[Arrays, Content]] = {}  # the model is kept: its id stays unique
    out = []
    for message in messages:
        content = message.content
        if content is None or content.model is None or COMPRESSION_RECORD in content.configs:
            out.append(message)
            continue
        model = content.model
        if id(model) not in encoded:
            encoded[id(model)] = (model, encode_model(spec, model, rng))
        records = encoded[id(model)][1]
        compressed = compressed_content(
            content,
            records.arrays[COMPRESSION_CODES_RECORD],
            records.arrays[COMPRESSION_AUX_RECORD],
            records.configs[COMPRESSION_RECORD],
        )
        out.append(Message(message.metadata, content=compressed))
    return out
