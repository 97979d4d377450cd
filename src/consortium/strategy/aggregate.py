"""Streaming aggregation: fold updates one at a time into O(model) memory."""

from __future__ import annotations

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.errors import UpdateRejected


class WeightedMean:
    """Running example-weighted mean of Arrays, accumulated in float64.

    ``add`` may be called any number of times; memory is one float64 buffer
    per parameter plus one scratch buffer, whatever the number of nodes. The
    result is cast back to each parameter's original dtype.
    """

    __slots__ = ("_dtypes", "_scratch", "_sums", "count", "total_weight")

    def __init__(self) -> None:
        self._sums: dict[str, np.ndarray] | None = None
        self._scratch: dict[str, np.ndarray] = {}
        self._dtypes: dict[str, np.dtype] = {}
        self.total_weight = 0.0
        self.count = 0

    def add(self, arrays: Arrays, weight: float) -> None:
        if weight < 0 or not np.isfinite(weight):
            raise UpdateRejected(f"aggregation weight must be finite and >= 0, got {weight}")
        if self._sums is None:
            self._sums = {}
            for name, value in arrays.items():
                self._dtypes[name] = value.dtype
                acc = np.empty(value.shape, dtype=np.float64)
                np.multiply(value, weight, out=acc, casting="unsafe")
                self._sums[name] = acc
                self._scratch[name] = np.empty(value.shape, dtype=np.float64)
        else:
            for name, value in arrays.items():
                scratch = self._scratch[name]
                np.multiply(value, weight, out=scratch, casting="unsafe")
                self._sums[name] += scratch
        self.total_weight += weight
        self.count += 1

    def result(self) -> Arrays | None:
        """The mean so far, or None if nothing (or only zero weight) was added."""
        if self._sums is None or self.total_weight <= 0:
            return None
        out = Arrays()
        for name, acc in self._sums.items():
            mean = acc / self.total_weight
            out[name] = mean.astype(self._dtypes[name], copy=False)
        return out


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
