"""Arrays: an ordered mapping name -> numpy array, and its zero-copy wire format.

Wire layout (little-endian)::

    b"CSA1" | uint32 header_len | header (UTF-8 JSON) | pad to 64 | buffers...

The header is ``{"a": [[name, dtype_str, shape, offset, nbytes], ...]}`` with
offsets relative to the start of the first buffer; every buffer starts on a
64-byte boundary. Decoding validates the header and returns arrays that are
views over the received memory (``np.frombuffer``): nothing is copied and
nothing is unpickled.

``dtype_str`` is numpy's ``dtype.str`` (``"<f4"``, ``"<f2"``, ...), or the name
of one of the :data:`EXTENSION_DTYPES`: ``"bfloat16"`` (``ml_dtypes``), whose
``dtype.str`` (``"<V2"``) would not say what the bytes mean. A bfloat16 array
thus travels at 2 bytes per value. ``ml_dtypes`` is a base dependency but is
imported only when a bfloat16 array is first decoded (its import costs about
half a second, more than the rest of ``import consortium``).
"""

from __future__ import annotations

import functools
import json
import math
import struct
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from consortium.core.buffers import sendable_buffer
from consortium.core.errors import WireFormatError

MAGIC = b"CSA1"
ALIGN = 64
_PREFIX = struct.Struct("<4sI")
#: dtype kinds allowed on the wire: bool, signed/unsigned int, float, complex.
WIRE_KINDS = frozenset("biufc")
#: Floating-point dtypes numpy lacks, allowed on the wire by name (never by ``dtype.str``,
#: which is ``"<V2"`` for them): name -> the module that defines the type.
EXTENSION_DTYPES = {"bfloat16": "ml_dtypes"}
#: Most dimensions an array on the wire may have (numpy's own limit is 64).
MAX_DIMS = 32
#: Elements times item size, over the non-zero dimensions, must stay below this:
#: numpy refuses larger arrays (even empty ones) with its own errors.
_MAX_EXTENT = 2**62

Array = NDArray[Any]


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@functools.cache
def extension_dtype(name: str) -> np.dtype[Any]:
    """The dtype of :data:`EXTENSION_DTYPES` ``name``, importing its module on first use."""
    module = __import__(EXTENSION_DTYPES[name])
    dtype: np.dtype[Any] = np.dtype(module.__dict__[name])
    return dtype


def wire_dtype_name(dtype: np.dtype[Any]) -> str | None:
    """How ``dtype`` is named on the wire, or None if it cannot be sent.

    Only bool, integer, float and complex dtypes, and the exact
    :data:`EXTENSION_DTYPES` (a structured or void dtype of the same name is refused).
    """
    if dtype.kind in WIRE_KINDS and not dtype.hasobject and not dtype.shape:
        return dtype.str
    if (
        dtype.kind == "V"
        and dtype.name in EXTENSION_DTYPES
        and dtype.fields is None
        and dtype == extension_dtype(dtype.name)  # the module is loaded: the array exists
    ):
        return dtype.name
    return None


def is_floating(dtype: np.dtype[Any]) -> bool:
    """True for numpy's float dtypes and the :data:`EXTENSION_DTYPES` (bfloat16).

    ``dtype.kind == "f"`` misses bfloat16, whose kind is ``"V"``: code that checks
    or transforms floating-point parameters (finite checks, clipping, compression)
    asks this instead.
    """
    return dtype.kind == "f" or wire_dtype_name(dtype) in EXTENSION_DTYPES


class Arrays(MutableMapping[str, Array]):
    """Ordered mapping of parameter name to ``numpy.ndarray``.

    Insertion order is preserved and is part of the identity of a model: two
    Arrays are *compatible* when they have the same names, in the same order,
    with the same shapes and dtypes.
    """

    __slots__ = ("_data", "_wire", "exclusive")

    def __init__(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None) -> None:
        self._data: dict[str, Array] = {}
        #: True when these arrays are writable views of a buffer nothing else uses (a
        #: message just received): a consumer such as an aggregator may then reuse
        #: their memory instead of allocating its own. Cleared by any assignment.
        self.exclusive = False
        #: the bytes these arrays are views of (decoded by :meth:`from_bytes`, or laid
        #: out by :meth:`encoded_empty`), while no array was set or removed since: an
        #: encoding of them, sent as it is when laid out as :meth:`to_bytes` would
        #: (:meth:`wire_parts` checks)
        self._wire: memoryview | None = None
        if items is not None:
            pairs = items.items() if isinstance(items, Mapping) else items
            for name, value in pairs:
                self[name] = value

    # -- mapping protocol ---------------------------------------------------
    def __getitem__(self, name: str) -> Array:
        return self._data[name]

    def __setitem__(self, name: str, value: Any) -> None:
        if not isinstance(name, str):
            raise TypeError(f"array names must be str, got {type(name).__name__}")
        self._data[name] = np.asarray(value)
        self.exclusive = False
        self._wire = None

    def __delitem__(self, name: str) -> None:
        del self._data[name]
        self._wire = None

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}: {v.dtype}{list(v.shape)}" for k, v in self._data.items())
        return f"Arrays({{{inner}}})"

    # -- conveniences ---------------------------------------------------------
    @classmethod
    def of_ndarrays(cls, pairs: Mapping[str, Array] | Iterable[tuple[str, Array]]) -> Arrays:
        """Arrays over these (name, ndarray) pairs as they are, taken from another
        ``Arrays`` (so the names are strings and the values ndarrays): no check or
        conversion per item, for code that rebuilds records once per node-task."""
        out = cls()
        out._data = dict(pairs)
        return out

    @classmethod
    def from_list(cls, arrays: Iterable[Any]) -> Arrays:
        """Name a list of arrays ``"0"``, ``"1"``, ... in order."""
        return cls((str(i), a) for i, a in enumerate(arrays))

    def to_list(self) -> list[Array]:
        return list(self._data.values())

    def copy(self) -> Arrays:
        """A deep copy: every array is copied into memory this object owns."""
        return Arrays.of_ndarrays([(k, np.array(v, copy=True)) for k, v in self._data.items()])

    @property
    def nbytes(self) -> int:
        return sum(int(v.nbytes) for v in self._data.values())

    def signature(self) -> list[tuple[str, str, tuple[int, ...]]]:
        """(name, dtype, shape) for each array, in order; dtype as named on the wire."""
        return [
            (k, wire_dtype_name(v.dtype) or v.dtype.str, tuple(v.shape))
            for k, v in self._data.items()
        ]

    def is_compatible(self, other: Arrays) -> bool:
        return self.signature() == other.signature()

    def equals(self, other: Arrays) -> bool:
        """Bit-for-bit equality: same signature and identical bytes."""
        if self.signature() != other.signature():
            return False
        return all(
            a.tobytes() == b.tobytes()
            for a, b in zip(self._data.values(), other._data.values(), strict=True)
        )

    @classmethod
    def encoded_empty(cls, specs: Iterable[tuple[str, np.dtype[Any], tuple[int, ...]]]) -> Arrays:
        """Uninitialised arrays of these (name, dtype, shape), laid out in one buffer as
        :meth:`to_bytes` lays them out, the header written: once filled, they are sent
        as that one buffer (:meth:`wire_parts`), with no copy. The buffer is a
        :func:`~consortium.core.buffers.sendable_buffer` (in a server's app process, a
        block of shared memory the server sends from)."""
        specs = [(name, np.dtype(dtype), tuple(shape)) for name, dtype, shape in specs]
        header, offsets, data_len = _layout_of(
            (name, dtype, shape, math.prod(shape) * dtype.itemsize) for name, dtype, shape in specs
        )
        start = _align(_PREFIX.size + len(header))
        wire = sendable_buffer(start + data_len)
        _PREFIX.pack_into(wire, 0, MAGIC, len(header))
        wire[_PREFIX.size : _PREFIX.size + len(header)] = header
        wire[_PREFIX.size + len(header) : start] = bytes(start - _PREFIX.size - len(header))
        out = cls()
        position = 0  # the padding between arrays is zeroed: the buffer may hold old bytes
        for (name, dtype, shape), offset in zip(specs, offsets, strict=True):
            wire[start + position : start + offset] = bytes(offset - position)
            count = math.prod(shape)
            position = offset + count * dtype.itemsize
            out._data[name] = (
                np.frombuffer(wire, dtype=dtype, count=count, offset=start + offset).reshape(shape)
                if count
                else np.empty(shape, dtype=dtype)
            )
        out._wire = wire
        return out

    # -- wire format ----------------------------------------------------------
    def _layout(self) -> tuple[bytes, list[tuple[Array, int]], int]:
        arrays = [(name, _contiguous(value)) for name, value in self._data.items()]
        header, offsets, end = _layout_of(
            (name, arr.dtype, arr.shape, int(arr.nbytes)) for name, arr in arrays
        )
        return header, [(arr, off) for (_, arr), off in zip(arrays, offsets, strict=True)], end

    def encoded_size(self) -> int:
        header, _, data_len = self._layout()
        return _align(_PREFIX.size + len(header)) + data_len

    def to_bytes(self) -> bytes:
        """Encode to the wire format (one copy of each buffer, no pickle)."""
        out = bytearray(self.encoded_size())
        self.write_into(memoryview(out))
        return bytes(out)

    def wire_parts(self) -> list[bytes | memoryview]:
        """The wire format as buffers to send back to back: the header, then the arrays' memory.

        Their concatenation is :meth:`to_bytes`, but nothing is copied: the parts
        are views of the arrays (a non-contiguous array is made contiguous first),
        which must not change until the parts have been sent. Arrays decoded by
        :meth:`from_bytes` from this encoding, and not changed since, are sent as
        the one buffer they were decoded from: forwarded as received, in one piece.
        """
        header, buffers, data_len = self._layout()
        start = _align(_PREFIX.size + len(header))
        head = _PREFIX.pack(MAGIC, len(header)) + header
        wire = self._wire
        if wire is not None and len(wire) == start + data_len and wire[: len(head)] == head:
            return [wire]  # laid out as encoded here: the bytes as they are
        parts: list[bytes | memoryview] = [head + bytes(start - len(head))]
        position = 0
        for arr, offset in buffers:
            if offset > position:
                parts.append(bytes(offset - position))
            parts.append(arr.reshape(-1).view(np.uint8).data)
            position = offset + int(arr.nbytes)
        return parts

    def write_into(self, out: memoryview) -> int:
        """Encode into a caller-owned writable buffer; returns the bytes written."""
        header, buffers, data_len = self._layout()
        start = _align(_PREFIX.size + len(header))
        total = start + data_len
        if len(out) < total:
            raise ValueError(f"buffer of {len(out)} bytes is too small for {total}")
        _PREFIX.pack_into(out, 0, MAGIC, len(header))
        out[_PREFIX.size : _PREFIX.size + len(header)] = header
        out[_PREFIX.size + len(header) : start] = bytes(start - _PREFIX.size - len(header))
        target = np.frombuffer(out, dtype=np.uint8)
        position = 0
        for arr, offset in buffers:
            # ``out`` may be uninitialised: zero the alignment padding, never leak old bytes
            target[start + position : start + offset] = 0
            n = int(arr.nbytes)
            if n:
                target[start + offset : start + offset + n] = arr.reshape(-1).view(np.uint8)
            position = offset + n
        return total

    @classmethod
    def from_bytes(
        cls, data: bytes | bytearray | memoryview, *, max_bytes: int | None = None
    ) -> Arrays:
        """Decode the wire format; arrays are read-only views over ``data``.

        Raises :class:`WireFormatError` (never anything else) on bad input.
        """
        view = memoryview(data).cast("B")
        if max_bytes is not None and len(view) > max_bytes:
            raise WireFormatError(f"arrays of {len(view)} bytes exceed the limit of {max_bytes}")
        if len(view) < _PREFIX.size:
            raise WireFormatError("arrays payload is shorter than its prefix")
        magic, header_len = _PREFIX.unpack_from(view, 0)
        if magic != MAGIC:
            raise WireFormatError(f"not an arrays payload (magic {bytes(magic)!r})")
        header_end = _PREFIX.size + header_len
        if header_end > len(view):
            raise WireFormatError("arrays header runs past the end of the payload")
        try:
            header = json.loads(bytes(view[_PREFIX.size : header_end]))
            entries = header["a"]
            if not isinstance(entries, list):
                raise TypeError("'a' is not a list")
        except (ValueError, KeyError, TypeError) as exc:
            raise WireFormatError(f"arrays header is malformed: {exc}") from exc
        start = _align(header_end)
        out = cls()
        for entry in entries:
            name, dtype, shape, offset, nbytes = _check_entry(entry)
            if name in out:
                raise WireFormatError(f"array name {name!r} appears twice")
            begin = start + offset
            if begin + nbytes > len(view) or offset < 0:
                raise WireFormatError(f"array {name!r} runs past the end of the payload")
            count = nbytes // dtype.itemsize if dtype.itemsize else 0
            try:
                if nbytes == 0:
                    arr = np.empty(shape, dtype=dtype)
                else:
                    arr = np.frombuffer(view, dtype=dtype, count=count, offset=begin)
                    arr = arr.reshape(shape)
            except (ValueError, MemoryError, OverflowError) as exc:  # a last guard
                raise WireFormatError(f"array {name!r} cannot be decoded: {exc}") from exc
            out._data[name] = arr
        out._wire = view
        return out


def _layout_of(
    arrays: Iterable[tuple[str, np.dtype[Any], tuple[int, ...], int]],
) -> tuple[bytes, list[int], int]:
    """The header, each array's offset after it and where the data ends, for arrays of
    these (name, dtype, shape, bytes), laid out back to back, each aligned."""
    entries: list[list[Any]] = []
    offsets: list[int] = []
    offset = end = 0
    for name, dtype, shape, nbytes in arrays:
        dtype_name = wire_dtype_name(dtype)
        if dtype_name is None:
            raise WireFormatError(
                f"array {name!r} has dtype {dtype}; only numeric and bool "
                "dtypes (and bfloat16) can be sent"
            )
        entries.append([name, dtype_name, list(shape), offset, nbytes])
        offsets.append(offset)
        end = offset + nbytes
        offset = _align(end)
    header = json.dumps({"a": entries}, separators=(",", ":")).encode()
    return header, offsets, end  # no padding after the last buffer


def _contiguous(value: Array) -> Array:
    # np.ascontiguousarray would turn a 0-d array into a 1-d one
    return value if value.flags.c_contiguous else np.ascontiguousarray(value).reshape(value.shape)


def _check_entry(entry: Any) -> tuple[str, np.dtype[Any], tuple[int, ...], int, int]:
    try:
        name, dtype_str, shape, offset, nbytes = entry
        if isinstance(dtype_str, str) and dtype_str in EXTENSION_DTYPES:
            dtype = extension_dtype(dtype_str)
        else:
            dtype = np.dtype(dtype_str)
        shape_t = tuple(int(s) for s in shape)
        offset, nbytes = int(offset), int(nbytes)
    except (ValueError, TypeError, OverflowError) as exc:
        raise WireFormatError(f"arrays header entry {_brief(entry)} is malformed") from exc
    if not isinstance(name, str) or not isinstance(dtype_str, str):
        raise WireFormatError(f"arrays header entry {_brief(entry)} is malformed")
    if wire_dtype_name(dtype) is None or dtype.itemsize == 0:
        raise WireFormatError(f"array {name!r} has a dtype that cannot be sent: {dtype_str}")
    if len(shape_t) > MAX_DIMS:
        raise WireFormatError(f"array {name!r} has {len(shape_t)} dimensions, more than {MAX_DIMS}")
    if any(s < 0 for s in shape_t):
        raise WireFormatError(f"array {name!r} has a negative dimension")
    # Python integers: a product that would overflow int64 is caught, not wrapped around
    if math.prod(max(s, 1) for s in shape_t) * dtype.itemsize >= _MAX_EXTENT:
        raise WireFormatError(f"array {name!r}: shape {_brief(shape_t)} is too large for any array")
    expected = math.prod(shape_t) * dtype.itemsize
    if expected != nbytes:
        raise WireFormatError(
            f"array {name!r}: shape {shape_t} of {dtype} needs {expected} bytes, "
            f"header says {nbytes}"
        )
    return name, dtype, shape_t, offset, nbytes


def _brief(value: Any) -> str:
    """``repr(value)``, cut short: a refusal message must not echo a megabyte back."""
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."
