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
