"""``compression_mod``: a node sends its training update compressed, as its run chooses.

The codec comes from the run config (``compression = "int8"``, see
:class:`~consortium.client.compression_codecs.CompressionSpec`), so one app
runs uncompressed, cast to 16 bits, quantised to 8 bits or top-k sparsified,
run by run. A compressed reply replaces its ``model`` record by the codec's
records (:data:`~consortium.core.protocol.COMPRESSION_RECORD` and the codes
and side arrays); the server decodes them back into a model
(:mod:`consortium.server.decode`) before validating it like any other update.

Put ``compression_mod`` first in ``mods=[...]`` (outermost), so it compresses
the update every other mod has already clipped or noised. See
``docs/compression.md``.
"""

from __future__ import annotations

import numpy as np

from consortium.client.app import Handler, Mod
from consortium.client.compression_codecs import (
    CompressionSpec,
    compressible,
    decode_array,
    encode_array,
    work_dtype,
)
from consortium.client.compression_wire import (
    COMPRESSION_RECORDS,
    compressed_content,
    decode_records,
    task_template,
)
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError
from consortium.core.message import MODEL, TRAIN, Content, Message
from consortium.core.protocol import COMPRESSION_RECORD, COMPRESSION_RESIDUAL_STATE

__all__ = ["CompressedUpdate", "compress_update", "compression_mod", "decompressed_task"]

#: the stream of ``context.rng`` stochastic rounding draws from
RNG_STREAM = "compression"


def compression_mod(spec: CompressionSpec | None = None) -> Mod:
    """A mod that compresses this node's train replies.

    ``spec`` fixes the codec; by default (None) each task's run config chooses it
    (``compression``, ``compression-delta``, ``compression-error-feedback``,
    ``compression-topk``, ``compression-chunk``), and ``compression = "none"``
    (or no key) sends replies unchanged. Only train replies that carry a model
    are compressed; error-feedback residuals live in ``context.state``.
    """
    if spec is not None and not isinstance(spec, CompressionSpec):
        raise ConfigError(f"compression_mod: spec must be a CompressionSpec, got {spec!r}")

    def compression_mod(message: Message, context: Context, call_next: Handler) -> Message:
        message = decompressed_task(message)
        reply = call_next(message, context)
        if message.metadata.kind != TRAIN or message.content is None or reply.content is None:
            return reply
        received, trained = message.content.model, reply.content.model
        if received is None or trained is None:
            return reply
        chosen = spec if spec is not None else CompressionSpec.from_run_config(context.run_config)
        if chosen.codec == "none":
            return reply
        rng = context.rng(message.metadata.round, stream=RNG_STREAM)
        state = context.state.arrays
        residual = state.get(COMPRESSION_RESIDUAL_STATE) if chosen.error_feedback else None
        update = compress_update(chosen, received, trained, rng, residual)
        if chosen.error_feedback:
            assert update.residual is not None
            state[COMPRESSION_RESIDUAL_STATE] = update.residual
        content = compressed_content(reply.content, update.codes, update.aux, chosen.wire_config())
        return Message(reply.metadata, content=content)

    return compression_mod


def decompressed_task(message: Message) -> Message:
    """``message`` with the model it carries compressed (``compression-downlink``)
    decoded into its ``model`` record; any other message as it is."""
    content = message.content
    template = task_template(content) if content is not None else None
    if template is None:
        return message
    assert content is not None
    model = decode_records(content, template, None, task=True)
    assert model is not None  # the settings record is there: task_template saw it
    arrays = {k: v for k, v in content.arrays.items() if k not in COMPRESSION_RECORDS}
    arrays[MODEL] = model
    configs = {k: v for k, v in content.configs.items() if k != COMPRESSION_RECORD}
    plain = Content(arrays=arrays, configs=configs, metrics=dict(content.metrics))
    return Message(message.metadata, content=plain)


class CompressedUpdate:
    """The records of one compressed update, and the node's next residual."""

    __slots__ = ("aux", "codes", "residual")

    def __init__(self, codes: Arrays, aux: Arrays, residual: Arrays | None) -> None:
        self.codes, self.aux, self.residual = codes, aux, residual


def compress_update(
    spec: CompressionSpec,
    received: Arrays,
    trained: Arrays,
    rng: np.random.Generator,
    residual: Arrays | None = None,
) -> CompressedUpdate:
    """Encode ``trained`` against ``received`` (the model the task carried) with ``spec``.

    With error feedback, ``residual`` (None, or one of another layout, counts as
    zero) is added to the update first, and the result's ``residual`` is what the
    encoding left out: ``(update + residual) - decode(encode(update + residual))``.
    """
    if received.signature() != trained.signature():
        raise ConfigError(
            f"compression_mod: the reply's model {trained!r} does not match the model the "
            f"task carried {received!r} (same names, dtypes and shapes, in the same order)"
        )
    usable = residual if residual is not None and _fits(residual, trained) else None
    codes, aux, left = Arrays(), Arrays(), Arrays()
    for name, y in trained.items():
        if not compressible(y):
            codes[name] = y  # counters and masks travel as they are
            continue
        dtype = work_dtype(y.dtype)
        v = y.astype(dtype, copy=False)  # not written to: a float32 model is not copied
        if spec.delta:
            v = v - received[name].astype(dtype, copy=False)
        if usable is not None:
            v = v + usable[name]
        encoded = encode_array(spec, v, rng)
        codes[name] = encoded.codes
        if encoded.aux is not None:
            aux[name] = encoded.aux
        if spec.error_feedback:
            sent = decode_array(
                spec.codec, spec.chunk, name, y.shape, y.dtype, encoded.codes, encoded.aux
            )
            left[name] = v - sent
    return CompressedUpdate(codes, aux, left if spec.error_feedback else None)


def _fits(residual: Arrays, trained: Arrays) -> bool:
    names = [n for n, v in trained.items() if compressible(v)]
    return list(residual) == names and all(
        residual[n].shape == trained[n].shape and residual[n].dtype == work_dtype(trained[n].dtype)
        for n in names
    )
