"""Streaming aggregation: fold updates one at a time into O(model) memory."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.buffers import empty_buffer
from consortium.core.errors import UpdateRejected
from consortium.core.parallel import run_split, split_parts

#: Elements per step of the fold: temporaries stay this small whatever the model size.
BLOCK = 1 << 20

#: A model of at most this many elements, all of float dtypes, is folded in stages:
#: updates are copied into rows and folded :data:`STAGE_ROWS` at a time (see
#: :class:`_Stage`): two numpy calls per array for a stage of updates instead of two
#: per array per update, which is what small models in large simulations cost.
STAGE_MAX_ELEMENTS = 4096
#: Updates per stage: the rows of raw values, and one more row of sums, per array (at
#: most 65 x 4096 x 8 bytes x 2, ~4 MiB).
STAGE_ROWS = 64


class WeightedMean:
    """Running example-weighted mean of Arrays, in O(model) memory.

    ``accumulate="float64"`` (the default) sums in float64 (2 x a float32
    model); ``"input"`` sums floating-point parameters in their own dtype, in
    place (1 x model, what Flower does; relative rounding grows like n x 2**-24
    for float32 over n updates). Each ``weight * x`` is computed in the sum's
    dtype (``dtype=`` given to numpy: the same bits whatever numpy's promotion
    rules, which differ between numpy 1 and 2, and a float16 model's weight is not
    rounded to float16, where 65,504 examples overflow). Either way the fold runs
    in blocks of :data:`BLOCK` elements, so no model-sized temporary is made, and
    :meth:`result` divides in place. The result has each parameter's dtype.
    """

    __slots__ = (
        "_accumulate", "_dtypes", "_encoded", "_parts", "_scratch", "_stage", "_sums", "count",
        "total_weight",
    )  # fmt: skip

    def __init__(self, *, accumulate: Literal["float64", "input"] = "float64") -> None:
        if accumulate not in ("float64", "input"):
            raise ValueError(f"accumulate must be 'float64' or 'input', got {accumulate!r}")
        self._accumulate = accumulate
        self._sums: dict[str, np.ndarray] | None = None
        self._scratch: dict[np.dtype, np.ndarray] = {}
        self._parts: dict[str, np.ndarray | None] = {}
        self._dtypes: dict[str, np.dtype] = {}
        #: the sums laid out as the mean's wire encoding (see _first), or None
        self._encoded: Arrays | None = None
        #: updates after the first, waiting to be folded together (small models only)
        self._stage: _Stage | None = None
        self.total_weight = 0.0
        self.count = 0

    def _sum_dtype(self, dtype: np.dtype) -> np.dtype:
        if self._accumulate == "input" and dtype.kind in "fc":
            return dtype
        return np.dtype(np.complex128 if dtype.kind == "c" else np.float64)

    def add(self, arrays: Arrays, weight: float) -> None:
        if not 0 <= weight < math.inf:  # NaN fails too; cheaper than np.isfinite on a float
            raise UpdateRejected(f"aggregation weight must be finite and >= 0, got {weight}")
        if self._sums is None:
            self._first(arrays, weight)
        elif self._stage is not None:
            self._stage.add(arrays, weight)
        else:
            sums, parts = self._sums, self._parts
            # names and arrays side by side: the Mapping ABC's items() costs a call per item
            for name, value in zip(arrays, arrays.to_list(), strict=True):
                acc, part = sums[name], parts[name]
                if part is not None and value.shape == part.shape:  # one block: two calls
                    np.multiply(value, weight, out=part, dtype=part.dtype, casting="unsafe")
                    np.add(acc, part, out=acc)
                else:
                    self._fold(acc, value, weight, first=False)
        self.total_weight += weight
        self.count += 1

    def _first(self, arrays: Arrays, weight: float) -> None:
        """Start the sums with the first update, ``weight * arrays``, and lay out the
        scratch: one buffer per sum dtype, of the largest array's size up to
        :data:`BLOCK`, which every array of up to that size folds through (a view of it
        kept per name, so that folding a small array is one multiply and one add)."""
        values = arrays.to_list()
        sizes: dict[np.dtype, int] = {}
        for value in values:
            dtype = self._sum_dtype(value.dtype)
            sizes[dtype] = max(sizes.get(dtype, 0), min(value.size, BLOCK))
        for dtype, size in sizes.items():
            kept = self._scratch.get(dtype)
            if kept is None or kept.size < size:
                self._scratch[dtype] = np.empty(size, dtype=dtype)
        sums: dict[str, np.ndarray] = {}
        self._sums, self._parts = sums, {}
        names = list(arrays)
        # an update that cannot be adopted, summed in its own dtypes: the sums are laid out
        # as the mean's wire encoding, which is then sent as it lies (in a server's app
        # process, from shared memory the server reads: no copy of the model to send)
        self._encoded = (
            Arrays.encoded_empty((n, v.dtype, v.shape) for n, v in zip(names, values, strict=True))
            if not arrays.exclusive and all(self._sum_dtype(v.dtype) == v.dtype for v in values)
            else None
        )
        for name, value in zip(names, values, strict=True):
            self._dtypes[name] = value.dtype
            dtype = self._sum_dtype(value.dtype)
            self._parts[name] = (
                self._scratch[dtype][: value.size].reshape(value.shape)
                if value.size <= BLOCK
                else None
            )
            if self._encoded is None and self._adopt(arrays, name, value, weight):
                continue
            sums[name] = acc = (
                self._encoded[name] if self._encoded is not None else _empty(value.shape, dtype)
            )
            self._fold(acc, value, weight, first=True)
        arrays.exclusive = False  # adopted memory now belongs to the sums
        if sum(v.size for v in values) <= STAGE_MAX_ELEMENTS and all(
            v.dtype.kind == "f" for v in values
        ):
            self._stage = _Stage(sums, names, values, self._sum_dtype)

    def _fold(self, acc: np.ndarray, value: np.ndarray, weight: float, *, first: bool) -> None:
        """``acc (+)= weight * value`` in blocks of :data:`BLOCK` elements; a large array's
        blocks on several threads at once (:func:`~consortium.core.parallel.run_split`),
        each with a scratch block of its own."""
        acc = acc.reshape(-1)
        flat = value.reshape(-1)
        step = min(BLOCK, flat.size)
        parts = split_parts(flat.size)
        need = step * parts
        scratch = self._scratch.get(acc.dtype)
        if scratch is None or scratch.size < need:
            scratch = self._scratch[acc.dtype] = np.empty(need, dtype=acc.dtype)

        def fold(start: int, stop: int, index: int) -> None:
            own = scratch[index * step : (index + 1) * step]
            for i in range(start, stop, BLOCK):
                j = min(i + BLOCK, stop)
                part = own[: j - i]
                np.multiply(flat[i:j], weight, out=part, dtype=acc.dtype, casting="unsafe")
                if first:
                    acc[i:j] = part
                else:
                    acc[i:j] += part

        run_split(flat.size, fold, most=parts)  # one scratch block per range

    def _adopt(self, arrays: Arrays, name: str, value: np.ndarray, weight: float) -> bool:
        """First update, from an exclusive message: scale the array in place and make it
        the sum, saving a model-sized buffer (and its first-touch cost). The values
        are those of folding into a new buffer: ``weight * x`` in the sum's dtype."""
        if not (
            arrays.exclusive
            and value.dtype == self._sum_dtype(value.dtype)
            and value.flags.writeable
            and value.flags.c_contiguous
        ):
            return False
        assert self._sums is not None
        flat = value.reshape(-1)

        def scale(start: int, stop: int, index: int) -> None:
            for i in range(start, stop, BLOCK):
                part = flat[i : min(i + BLOCK, stop)]
                np.multiply(part, weight, out=part, dtype=part.dtype, casting="unsafe")

        run_split(flat.size, scale)
        self._sums[name] = value
        return True

    def result(self) -> Arrays | None:
        """The mean; None if nothing (or only zero weight) was added. Ends the fold."""
        if self._stage is not None:
            self._stage.fold()
            self._stage = None
        if self._sums is None or self.total_weight <= 0:
            return None
        sums, self._sums = self._sums, None  # divided in place: the sums are gone
        for acc in sums.values():
            _divide(acc.reshape(-1), self.total_weight)
        if self._encoded is not None:  # the sums are the mean's arrays, in its encoding
            out, self._encoded = self._encoded, None
            return out
        out = Arrays()
        for name, acc in sums.items():
            dtype = self._dtypes[name]
            if acc.dtype == dtype:
                out[name] = acc
            else:
                out[name] = mean = _empty(acc.shape, dtype)
                np.copyto(mean, acc, casting="unsafe")
        return out


class _Stage:
    """Updates of a small model, folded into its sums :data:`STAGE_ROWS` at a time, with
    the bits of folding them one by one (``acc += weight * x``, in order).

    Each update is copied into a row of raw values per array (one call per array). To
    fold a stage, per array: the raw rows are multiplied by their weights into the rows
    of a second buffer, in the sum's dtype as one update is, whose row 0 holds the
    sum; ``np.add.accumulate`` down the rows adds them one after the other, row by row
    (an accumulation, unlike a reduction, is never summed pairwise), and the last row
    is the new sum.
    """

    __slots__ = ("_arrays", "_sums", "_weights")

    def __init__(
        self,
        sums: dict[str, np.ndarray],
        names: list[str],
        values: list[np.ndarray],
        sum_dtype: Callable[[np.dtype], np.dtype],
    ) -> None:
        #: per array: its name, shape and dtype; its raw rows; the rows of products under
        #: the sum
        self._arrays = [
            (
                name,
                value.shape,
                value.dtype,
                np.empty((STAGE_ROWS, *value.shape), dtype=value.dtype),
                np.empty((STAGE_ROWS + 1, *value.shape), dtype=sum_dtype(value.dtype)),
            )
            for name, value in zip(names, values, strict=True)
        ]
        self._weights: list[float] = []  # of the staged updates
        self._sums = sums

    def add(self, arrays: Arrays, weight: float) -> None:
        k = len(self._weights)
        values = arrays.to_list()
        if len(values) != len(self._arrays):
            raise UpdateRejected(f"update {arrays!r} does not match the first update's layout")
        for (_, shape, dtype, raw, _), value in zip(self._arrays, values, strict=True):
            if value.shape != shape or value.dtype != dtype:
                raise UpdateRejected(f"update {arrays!r} does not match the first update's layout")
            raw[k] = value
        self._weights.append(weight)
        if k + 1 == STAGE_ROWS:
            self.fold()

    def fold(self) -> None:
        """Fold the staged updates into the sums."""
        k = len(self._weights)
        if k == 0:
            return
        weights = np.array(self._weights)
        for name, _, _, raw, rows in self._arrays:
            acc = self._sums[name]
            rows[0] = acc
            # the weights in the sum's dtype, shaped to broadcast over a row
            scale = weights.astype(rows.dtype, copy=False).reshape((k,) + (1,) * (raw.ndim - 1))
            np.multiply(raw[:k], scale, out=rows[1 : k + 1], dtype=rows.dtype, casting="unsafe")
            np.add.accumulate(rows[: k + 1], axis=0, out=rows[: k + 1])
            acc[...] = rows[k]
        self._weights.clear()


def _divide(flat: np.ndarray, total: float) -> None:
    """``flat /= total`` in place, a large array's parts on several threads at once."""

    def divide(start: int, stop: int, index: int) -> None:
        part = flat[start:stop]
        np.divide(part, total, out=part, dtype=part.dtype, casting="unsafe")

    run_split(flat.size, divide)


def _empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array whose memory comes from (and returns to) the buffer pool."""
    count = int(np.prod(shape, dtype=np.int64))
    buffer = empty_buffer(count * dtype.itemsize)
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


class DifferenceSum:
    """Running sum of ``weight * (reference - arrays)`` in float64: FedNova's and q-FedAvg's fold.

    Memory is one float64 buffer per parameter plus one scratch buffer, whatever
    the number of updates. :meth:`add` also returns the squared Euclidean norm of
    the unweighted difference over all parameters (q-FedAvg needs it per node).
    """

    __slots__ = ("_reference", "_scratch", "_sums", "count", "total_weight")

    def __init__(self, reference: Arrays) -> None:
        self._reference = reference
        self._sums = {n: np.zeros(v.shape, dtype=np.float64) for n, v in reference.items()}
        self._scratch = {n: np.empty(v.shape, dtype=np.float64) for n, v in reference.items()}
        self.total_weight = 0.0
        self.count = 0

    def add(self, arrays: Arrays, weight: float) -> float:
        """Fold ``weight * (reference - arrays)``; return ``||reference - arrays||^2``."""
        if weight < 0 or not np.isfinite(weight):
            raise UpdateRejected(f"aggregation weight must be finite and >= 0, got {weight}")
        if len(arrays) != len(self._reference) or any(
            name not in arrays or arrays[name].shape != ref.shape
            for name, ref in self._reference.items()
        ):
            raise UpdateRejected(
                f"update {arrays!r} does not match the reference model {self._reference!r}"
            )
        squared = 0.0
        for name, ref in self._reference.items():
            diff = self._scratch[name]
            np.subtract(ref, arrays[name], out=diff, dtype=np.float64)
            flat = diff.reshape(-1)
            squared += float(np.dot(flat, flat))
            np.multiply(diff, weight, out=diff)
            self._sums[name] += diff
        self.total_weight += weight
        self.count += 1
        return squared

    def result(self, scale: float) -> Arrays:
        """``reference - scale * sum``, cast back to each parameter's dtype."""
        out = Arrays()
        for name, ref in self._reference.items():
            value = np.asarray(ref, dtype=np.float64) - scale * self._sums[name]
            out[name] = value.astype(ref.dtype, copy=False)
        return out
