"""Compressed models as message records, both ways: the settings record, codes and side arrays.

A compressed message carries no ``model`` record but three others: the
codec's settings (Config :data:`~consortium.core.protocol.COMPRESSION_RECORD`:
``codec``, ``delta``, ``chunk``, ``version``, and on a task ``dtypes``), the
codes (:data:`~consortium.core.protocol.COMPRESSION_CODES_RECORD`, one array
per model array, in the model's order) and the side arrays
(:data:`~consortium.core.protocol.COMPRESSION_AUX_RECORD`: int8 scales, top-k
indices). Node replies (the update) are decoded by the server against the
global model (:func:`decode_records` with a template); server tasks (the
global model, never a delta) by the node's ``compression_mod``, with the
template rebuilt from the codes and ``dtypes`` (:func:`task_template`).

What the other side sent is not trusted: every field is checked (the
settings' keys and types, one codes array per model array, each array's
dtype and shape, int8 scales finite and non-negative, top-k indices
increasing and in range), and a refusal (:class:`UpdateRejected`) names the
field. A decoded array is never larger than its template.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from consortium.client.compression_codecs import (
    CODECS,
    MAX_CHUNK,
    VERSION,
    CompressionSpec,
    compressible,
    decode_array,
    encode_array,
    work_dtype,
)
from consortium.core.arrays import EXTENSION_DTYPES, Arrays, extension_dtype, wire_dtype_name
from consortium.core.errors import UpdateRejected
from consortium.core.message import MODEL, Content
from consortium.core.protocol import (
    COMPRESSION_AUX_RECORD,
    COMPRESSION_CODES_RECORD,
    COMPRESSION_RECORD,
)
from consortium.core.records import Config

__all__ = [
    "COMPRESSION_RECORDS",
    "compressed_content",
    "decode_records",
    "encode_model",
    "task_template",
]

#: The Arrays records of a compressed message (not passed on to strategies or handlers).
COMPRESSION_RECORDS = frozenset({COMPRESSION_CODES_RECORD, COMPRESSION_AUX_RECORD})
_SETTINGS: dict[str, type] = {"codec": str, "delta": bool, "chunk": int, "version": int}
_DTYPES = "dtypes"  # a task's settings: each model array's dtype, as on the wire


def compressed_content(content: Content, codes: Arrays, aux: Arrays, settings: Config) -> Content:
    """``content`` with its ``model`` record replaced by compressed records."""
    arrays = {k: v for k, v in content.arrays.items() if k != MODEL}
    arrays[COMPRESSION_CODES_RECORD], arrays[COMPRESSION_AUX_RECORD] = codes, aux
    return Content(
        arrays=arrays,
        configs={**content.configs, COMPRESSION_RECORD: settings},
        metrics=dict(content.metrics),
    )


def encode_model(spec: CompressionSpec, model: Arrays, rng: np.random.Generator) -> Content:
    """A global model compressed for a task (``spec.delta`` is ignored: a task carries
    the model itself); merge into a task with :func:`compressed_content`."""
    codes, aux = Arrays(), Arrays()
    for name, value in model.items():
        if not compressible(value):
            codes[name] = value
            continue
        encoded = encode_array(spec, value.astype(work_dtype(value.dtype), copy=False), rng)
        codes[name] = encoded.codes
        if encoded.aux is not None:
            aux[name] = encoded.aux
    settings: Config = {
        "codec": spec.codec,
        "delta": False,
        "chunk": spec.chunk,
        "version": VERSION,
        _DTYPES: [str(wire_dtype_name(v.dtype)) for v in model.values()],
    }
    return compressed_content(Content(), codes, aux, settings)


def task_template(content: Content) -> Arrays | None:
    """The layout of the model a compressed task stands for (None: not compressed).

    Shapes are the codes' (a task is never top-k), dtypes the settings' ``dtypes``.
    """
    settings = content.configs.get(COMPRESSION_RECORD)
    codes = content.arrays.get(COMPRESSION_CODES_RECORD)
    if settings is None:
        return None
    dtypes = settings.get(_DTYPES)
    if codes is None or not isinstance(dtypes, list) or len(dtypes) != len(codes):
        raise UpdateRejected(
            f"a compressed task needs {COMPRESSION_CODES_RECORD!r} and one {_DTYPES!r} entry "
            "per array"
        )
    template = Arrays()
    for (name, value), dtype_name in zip(codes.items(), dtypes, strict=True):
        if not isinstance(dtype_name, str):
            raise UpdateRejected(f"compressed task: dtype of {name!r} must be a string")
        try:
            dtype = (
                extension_dtype(dtype_name)
                if dtype_name in EXTENSION_DTYPES
                else np.dtype(dtype_name)
            )
        except TypeError as exc:
            raise UpdateRejected(f"compressed task: {name!r} has dtype {dtype_name!r}") from exc
        if wire_dtype_name(dtype) is None:
            raise UpdateRejected(f"compressed task: {name!r} has dtype {dtype_name!r}")
        template[name] = np.broadcast_to(np.zeros((), dtype=dtype), value.shape)
    return template


def decode_records(
    content: Content, template: Arrays, reference: Arrays | None, *, task: bool = False
) -> Arrays | None:
    """The model compressed ``content`` stands for; None if it is not compressed.

    ``template`` gives the names, dtypes and shapes (values unused);
    ``reference`` is the model a ``delta`` is added to (None: a delta is
    refused). ``task`` allows the settings' ``dtypes`` entry. Raises
    :class:`UpdateRejected` naming what is wrong.
    """
    settings = content.configs.get(COMPRESSION_RECORD)
    found = COMPRESSION_RECORDS & content.arrays.keys()
    if settings is None:
        if found:
            raise UpdateRejected(
                f"the message carries {sorted(found)} but no {COMPRESSION_RECORD!r} settings"
            )
        return None
    codec, delta, chunk = _settings(settings, task)
    if content.model is not None:
        raise UpdateRejected("a compressed message must not also carry a 'model' record")
    codes = content.arrays.get(COMPRESSION_CODES_RECORD)
    aux = content.arrays.get(COMPRESSION_AUX_RECORD)
    if codes is None or aux is None:
        raise UpdateRejected(
            f"a compressed message needs the records {COMPRESSION_CODES_RECORD!r} and "
            f"{COMPRESSION_AUX_RECORD!r}"
        )
    if list(codes) != list(template):
        missing = [n for n in template if n not in codes]
        extra = [n for n in codes if n not in template]
        raise UpdateRejected(
            f"compressed update: codes do not match the global model: missing {missing}, "
            f"unexpected {extra}" + ("" if missing or extra else " (another order)")
        )
    if delta and reference is None:
        raise UpdateRejected("compressed update: a delta, but no global model to add it to")
    stray = [n for n in aux if n not in template or not compressible(template[n])]
    if stray:
        raise UpdateRejected(f"compressed update: side arrays for {stray}, which have none")
    out = Arrays()
    for name, t in template.items():
        c = codes[name]
        if not compressible(t):
            if c.dtype != t.dtype or c.shape != t.shape:
                raise UpdateRejected(
                    f"compressed update: array {name!r} should be {t.dtype}{list(t.shape)} "
                    f"as it is, got {c.dtype}{list(c.shape)}"
                )
            out[name] = c
            continue
        value = decode_array(codec, chunk, name, t.shape, t.dtype, c, aux.get(name))
        if delta:
            assert reference is not None
            value = _add_base(name, value, reference.get(name), t)
        with np.errstate(over="ignore"):  # an overflow is inf: validation refuses it
            out[name] = value.astype(t.dtype, copy=False)
    return out


def _add_base(name: str, value: NDArray[Any], base: NDArray[Any] | None, t: Any) -> NDArray[Any]:
    if base is None or base.shape != t.shape:
        raise UpdateRejected(f"compressed update: no global array {name!r} to add to")
    with np.errstate(over="ignore"):
        value += base.astype(work_dtype(t.dtype))
    return value


def _settings(settings: Config, task: bool) -> tuple[str, bool, int]:
    """(codec, delta, chunk) of the settings record, each key checked."""
    expected = set(_SETTINGS) | ({_DTYPES} if task else set())
    if set(settings) != expected:
        raise UpdateRejected(
            f"{COMPRESSION_RECORD!r} settings must have exactly the keys {sorted(expected)}, "
            f"got {sorted(settings)}"
        )
    for key, kind in _SETTINGS.items():
        value: Any = settings[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UpdateRejected(
                f"{COMPRESSION_RECORD!r} setting {key!r} must be a {kind.__name__}, got {value!r}"
            )
    codec, delta, chunk, version = (
        settings["codec"], settings["delta"], settings["chunk"], settings["version"]
    )  # fmt: skip
    assert isinstance(codec, str) and isinstance(chunk, int) and isinstance(delta, bool)
    if version != VERSION:
        raise UpdateRejected(f"{COMPRESSION_RECORD!r} version {version} is not {VERSION}")
    if codec not in CODECS or codec == "none" or (task and (codec == "topk" or delta)):
        raise UpdateRejected(f"{COMPRESSION_RECORD!r} codec {codec!r} is not one of {CODECS[1:]}")
    if not 1 <= chunk <= MAX_CHUNK:
        raise UpdateRejected(f"{COMPRESSION_RECORD!r} chunk {chunk} is not in [1, {MAX_CHUNK}]")
    return codec, delta, chunk
