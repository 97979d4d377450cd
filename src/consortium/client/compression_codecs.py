"""The codecs of compressed updates: their settings, encoding, and strict decoding.

A node's update (its trained model ``y`` against the model ``x`` the task
carried) is encoded array by array; both ends use this module, the node's
``compression_mod`` to encode (and, for error feedback, to decode what it
sent) and the server to decode before validation. Floating-point arrays
(bfloat16 included) are compressed; any other array (a step counter) travels
as it is. With ``delta`` the codec sees ``v = y - x`` (in float32, float64 for
a float64 array), else ``v = y``.

=========  ===============================  =====================================
codec      codes (aux)                      bytes per value
=========  ===============================  =====================================
float16    ``v`` as float16                 2
bfloat16   ``v`` as bfloat16                2
int8       uint8 codes, shape of ``v``      1 + 8 / chunk
           (float32 ``[lo, scale]`` per
           chunk of ``chunk`` values)
topk       float32 values of the k largest  8 k / n (uint32 indices; uint64 past
           ``|v|`` (their sorted flat       2**32 values)
           indices)
=========  ===============================  =====================================

int8 rounds stochastically, ``code = floor((v - lo) / scale + u)`` with ``u``
uniform in [0, 1), so the decoded ``lo + code * scale`` is ``v`` in
expectation (unbiased, variance at most ``scale**2 / 4`` per value; a float32
update is rounded in float32, which moves that expectation by under 2**-14 of
a step). See ``docs/compression.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from consortium.core.arrays import extension_dtype, is_floating
from consortium.core.errors import ConfigError, UpdateRejected
from consortium.core.records import Config

__all__ = [
    "CODECS",
    "CompressionSpec",
    "Encoded",
    "compressible",
    "decode_array",
    "encode_array",
    "work_dtype",
]

Array = NDArray[Any]

#: The codecs a run may name in its run config (``compression = "int8"``); "none" sends
#: the model as it is.
CODECS = ("none", "float16", "bfloat16", "int8", "topk")
#: Wire version of the codec settings record; a reply with another is refused.
VERSION = 1
#: Largest int8 chunk (values sharing one scale): one scale per tensor up to this size.
MAX_CHUNK = 1 << 24
#: Run-config keys (the codec's settings come from the run, so a run chooses them).
KEY_CODEC = "compression"
KEY_DELTA = "compression-delta"
KEY_ERROR_FEEDBACK = "compression-error-feedback"
KEY_TOPK = "compression-topk"
KEY_CHUNK = "compression-chunk"
KEY_DOWNLINK = "compression-downlink"
#: Codecs the server may send the global model with (a model, not an update: no top-k).
DOWNLINK_CODECS = ("none", "float16", "bfloat16", "int8")
_LEVELS = 255  # int8 codes 0..255


@dataclass(frozen=True, slots=True)
class CompressionSpec:
    """How a node compresses its updates in a run.

    ``delta``: encode ``y - x`` instead of ``y`` (required by top-k and error
    feedback); ``error_feedback``: add what compression left out of the
    previous updates (kept in the node's state) to the next one; ``topk``:
    fraction of each array's values top-k keeps; ``chunk``: values per int8
    scale.
    """

    codec: str = "none"
    delta: bool = True
    error_feedback: bool = False
    topk: float = 0.01
    chunk: int = 1024

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ConfigError(f"{KEY_CODEC} must be one of {list(CODECS)}, got {self.codec!r}")
        if not (isinstance(self.topk, float) and 0.0 < self.topk <= 1.0):
            raise ConfigError(f"{KEY_TOPK} must be a fraction in (0, 1], got {self.topk!r}")
        if not (isinstance(self.chunk, int) and 1 <= self.chunk <= MAX_CHUNK):
            raise ConfigError(f"{KEY_CHUNK} must be an int in [1, {MAX_CHUNK}], got {self.chunk!r}")
        if self.codec == "topk" and not self.delta:
            raise ConfigError(
                f"{KEY_CODEC} = 'topk' sparsifies an update: {KEY_DELTA} must be true"
            )
        if self.error_feedback and not self.delta:
            raise ConfigError(f"{KEY_ERROR_FEEDBACK} needs {KEY_DELTA} = true")

    @classmethod
    def from_run_config(cls, run: Config) -> CompressionSpec:
        """The spec a run config names; error feedback defaults to on for top-k only."""
        codec = run.get(KEY_CODEC, "none")
        if not isinstance(codec, str):
            raise ConfigError(f"{KEY_CODEC} must be a string, got {codec!r}")
        delta = _flag(run, KEY_DELTA, True)
        feedback = _flag(run, KEY_ERROR_FEEDBACK, codec == "topk")
        topk = run.get(KEY_TOPK, 0.01)
        chunk = run.get(KEY_CHUNK, 1024)
        if isinstance(topk, bool) or not isinstance(topk, int | float):
            raise ConfigError(f"{KEY_TOPK} must be a number, got {topk!r}")
        if isinstance(chunk, bool) or not isinstance(chunk, int):
            raise ConfigError(f"{KEY_CHUNK} must be an int, got {chunk!r}")
        return cls(codec, delta, feedback, float(topk), chunk)

    def wire_config(self) -> Config:
        """The settings record a compressed reply carries (what the server decodes by)."""
        return {"codec": self.codec, "delta": self.delta, "chunk": self.chunk, "version": VERSION}


def downlink_spec(run: Config) -> CompressionSpec | None:
    """How the server compresses the global model in train tasks (None: it does not).

    ``compression-downlink`` names the codec (``none`` by default); int8 takes
    ``compression-chunk``. The model itself is encoded, never a delta.
    """
    codec = run.get(KEY_DOWNLINK, "none")
    if codec not in DOWNLINK_CODECS:
        raise ConfigError(f"{KEY_DOWNLINK} must be one of {list(DOWNLINK_CODECS)}, got {codec!r}")
    if codec == "none":
        return None
    chunk = run.get(KEY_CHUNK, 1024)
    if isinstance(chunk, bool) or not isinstance(chunk, int):
        raise ConfigError(f"{KEY_CHUNK} must be an int, got {chunk!r}")
    return CompressionSpec(str(codec), delta=False, chunk=chunk)


def _flag(run: Config, key: str, default: bool) -> bool:
    value = run.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Encoded:
    """One array, encoded: its codes and (int8, top-k) its side array."""

    codes: Array
    aux: Array | None


def work_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype an update of a ``dtype`` array is computed in: float64 for float64
    arrays, float32 for every narrower float (bfloat16 and float16 included)."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _index_dtype(size: int) -> np.dtype[Any]:
    return np.dtype(np.uint32) if size < 2**32 else np.dtype(np.uint64)


def encode_array(spec: CompressionSpec, v: Array, rng: np.random.Generator) -> Encoded:
    """Encode ``v`` (a float32/float64 array: the update, or the model) with ``spec``."""
    if spec.codec == "float16":
        with np.errstate(over="ignore"):
            codes = v.astype(np.float16)
        if not np.isfinite(codes).all():
            raise ValueError("compression float16: the update has values beyond ±65504")
        return Encoded(codes, None)
    if spec.codec == "bfloat16":
        return Encoded(v.astype(extension_dtype("bfloat16")), None)
    if spec.codec == "int8":
        return _encode_int8(v, spec.chunk, rng)
    if spec.codec == "topk":
        flat = v.reshape(-1)
        k = min(flat.size, max(1, math.ceil(spec.topk * flat.size))) if flat.size else 0
        index = np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :] if k else flat[:0]
        index = np.sort(index).astype(_index_dtype(flat.size))
        return Encoded(np.ascontiguousarray(flat[index]), index)
    raise ConfigError(f"compression {spec.codec!r} has no encoding: the model is sent as it is")


def _padded_rows(flat: Array, chunk: int) -> Array:
    """``flat`` as rows of ``chunk`` values, the last one padded with its last value (a
    view, no copy, when ``chunk`` divides the size)."""
    pad = -flat.size % chunk
    if pad:
        flat = np.concatenate([flat, np.repeat(flat[-1:], pad)])
    return flat.reshape(-1, chunk)


def _encode_int8(v: Array, chunk: int, rng: np.random.Generator) -> Encoded:
    # per chunk (lo, scale) in float64; per value in the update's own precision (float32
    # for a float32 model: half the memory traffic of float64; its rounding moves the
    # chance of rounding up by under 2**-14, far inside the stochastic rounding's spread)
    work = work_dtype(v.dtype)
    flat = v.reshape(-1)
    n = flat.size
    if n == 0:
        return Encoded(np.zeros(v.shape, np.uint8), np.zeros((0, 2), np.float32))
    rows = _padded_rows(flat, chunk)
    lo64, hi = rows.min(axis=1).astype(np.float64), rows.max(axis=1).astype(np.float64)
    # the grid is the float32 one the server decodes with: lo rounded down, and a scale
    # rounded up so that lo + 255 * scale reaches hi (codes then stay in 0..255)
    lo = lo64.astype(np.float32)
    lo = np.where(lo > lo64, np.nextafter(lo, np.float32(-np.inf)), lo)
    scale = ((hi - lo) / _LEVELS).astype(np.float32)
    short = lo.astype(np.float64) + _LEVELS * scale.astype(np.float64) < hi
    scale = np.where(short, np.nextafter(scale, np.float32(np.inf)), scale)
    safe = np.where(scale > 0, scale, 1.0)
    # codes = floor((v - lo) / scale + u), u uniform in [0, 1): in place, one buffer
    t = np.subtract(rows, lo.astype(work)[:, None], dtype=work)
    t /= safe.astype(work)[:, None]
    t += rng.random(t.shape, dtype=work)
    np.floor(t, out=t)
    np.clip(t, 0, _LEVELS, out=t)
    codes = t.astype(np.uint8)
    aux = np.stack([lo, scale], axis=1).astype(np.float32)
    return Encoded(codes.reshape(-1)[:n].reshape(v.shape), aux)


def decode_array(
    codec: str, chunk: int, name: str, shape: tuple[int, ...], dtype: np.dtype[Any],
    codes: Array, aux: Array | None,
) -> Array:  # fmt: skip
    """The update (or model) the codes of array ``name`` stand for, in :func:`work_dtype`.

    ``shape`` and ``dtype`` are the model array's. Raises :class:`UpdateRejected`
    naming the array and what is wrong with its codes: this reads what a node sent.
    """
    size = math.prod(shape)
    out_dtype = work_dtype(dtype)
    if codec in ("float16", "bfloat16"):
        expected = np.dtype(np.float16) if codec == "float16" else extension_dtype("bfloat16")
        _expect(name, "codes", codes, expected, shape)
        _no_aux(name, aux)
        _finite(name, "codes", codes)
        return codes.astype(out_dtype)
    if codec == "int8":
        _expect(name, "codes", codes, np.dtype(np.uint8), shape)
        chunks = -(-size // chunk)
        if aux is None:
            raise UpdateRejected(f"compressed update: array {name!r} has no int8 scales")
        _expect(name, "scales", aux, np.dtype(np.float32), (chunks, 2))
        _finite(name, "scales", aux)
        lo, scale = aux[:, 0].astype(np.float64), aux[:, 1].astype(np.float64)
        if (scale < 0).any():
            raise UpdateRejected(f"compressed update: array {name!r} has a negative int8 scale")
        top = lo + _LEVELS * scale
        if not np.isfinite(top).all() or (np.abs(top) > np.finfo(out_dtype).max).any():
            raise UpdateRejected(f"compressed update: array {name!r} has int8 scales out of range")
        # lo + code * scale in the model's precision (float32: one rounding more than
        # float64, then cast; every decoder of these codes computes the same)
        rows = _padded_rows(codes.reshape(-1), chunk).astype(out_dtype)
        rows *= aux[:, 1:].astype(out_dtype)
        rows += aux[:, :1].astype(out_dtype)
        return rows.reshape(-1)[:size].reshape(shape)
    if codec == "topk":
        if codes.ndim != 1 or codes.shape[0] > size or codes.dtype != out_dtype:
            raise UpdateRejected(
                f"compressed update: array {name!r} top-k values should be {out_dtype}[k] "
                f"with k <= {size}, got {codes.dtype}{list(codes.shape)}"
            )
        if aux is None:
            raise UpdateRejected(f"compressed update: array {name!r} has no top-k indices")
        _expect(name, "indices", aux, _index_dtype(size), codes.shape)
        _finite(name, "values", codes)
        if aux.size and (int(aux[-1]) >= size or not (np.diff(aux.astype(np.int64)) > 0).all()):
            raise UpdateRejected(
                f"compressed update: array {name!r} top-k indices must be increasing and "
                f"below {size}"
            )
        dense = np.zeros(size, dtype=out_dtype)
        dense[aux] = codes
        return dense.reshape(shape)
    raise UpdateRejected(f"compressed update: unknown codec {codec!r}")


def _expect(
    name: str, what: str, value: Array, dtype: np.dtype[Any], shape: tuple[int, ...]
) -> None:
    if value.dtype != dtype or tuple(value.shape) != tuple(shape):
        raise UpdateRejected(
            f"compressed update: array {name!r} {what} should be {dtype}{list(shape)}, "
            f"got {value.dtype}{list(value.shape)}"
        )


def _no_aux(name: str, aux: Array | None) -> None:
    if aux is not None:
        raise UpdateRejected(f"compressed update: array {name!r} has side data its codec lacks")


def _finite(name: str, what: str, value: Array) -> None:
    if not np.isfinite(value).all():
        raise UpdateRejected(f"compressed update: array {name!r} {what} hold NaN/inf")


def compressible(value: Array) -> bool:
    """Whether a model array is compressed (floating point) or sent as it is."""
    return is_floating(value.dtype)
