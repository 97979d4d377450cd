"""The global model between rounds: held in memory, or only in its checkpoint.

Once a round's tasks are queued, the transport holds the model until every
node has been sent its copy. If the model is also safe in a checkpoint, the
round loop lets go of it then, so that during the fold the server holds the
running aggregate and the reply being received, not a third model-sized
buffer. Whoever needs the model later in the round (a server optimiser, a
clipping rule, a retry) gets it back from the checkpoint file, verified.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from consortium.core.arrays import Arrays


class GlobalModel:
    """One round's global model; :meth:`release` drops it from memory if it is on disk."""

    def __init__(self, arrays: Arrays) -> None:
        self._arrays: Arrays | None = arrays
        self._source: Path | None = None
        self._ready: Callable[[], None] = lambda: None
        self.signature = arrays.signature()

    def on_disk(self, path: Path, ready: Callable[[], None]) -> None:
        """The model is (being) written to checkpoint ``path``; ``ready()`` blocks until
        the file is complete, and raises if writing it failed."""
        self._source, self._ready = path, ready

    @property
    def in_memory(self) -> bool:
        return self._arrays is not None

    @property
    def arrays(self) -> Arrays:
        """The model, read back from its checkpoint if it was released."""
        if self._arrays is None:
            self._arrays = self._load()
        return self._arrays

    def release(self) -> bool:
        """Drop the in-memory model if its checkpoint can give it back."""
        if self._source is None:
            return False
        self._arrays = None
        return True

    def current(self) -> Arrays:
        """The model for the strategy's aggregation: itself if in memory, else arrays
        that read the checkpoint only if the strategy actually looks at them."""
        if self._arrays is not None:
            return self._arrays
        return _LazyArrays(self._load)

    def skeleton(self) -> Arrays:
        """Names, shapes and dtypes of the model, in no memory (for validating replies)."""
        return Arrays(
            (name, np.broadcast_to(np.zeros((), dtype=np.dtype(dtype)), shape))
            for name, dtype, shape in self.signature
        )

    def _load(self) -> Arrays:
        from consortium.server.checkpoint import read_checkpoint

        assert self._source is not None
        self._ready()
        return read_checkpoint(self._source).arrays


class _LazyArrays(Arrays):
    """Arrays whose content is loaded on first use."""

    __slots__ = ("_loader",)

    def __init__(self, loader: Callable[[], Arrays]) -> None:
        super().__init__()
        self._loader: Callable[[], Arrays] | None = loader

    def __getattribute__(self, name: str) -> Any:
        if name == "_data":
            loader = object.__getattribute__(self, "_loader")
            if loader is not None:
                object.__setattr__(self, "_loader", None)
                object.__getattribute__(self, "_data").update(loader()._data)
        return object.__getattribute__(self, name)
