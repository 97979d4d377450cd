"""Portable model files: named arrays in ``.npz`` (no pickle), written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from consortium.core.arrays import Arrays


def save_model(arrays: Arrays, path: Path) -> Path:
    """Write ``arrays`` to ``path`` (.npz), via a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **dict(arrays.items()))  # type: ignore[arg-type]
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def load_model(path: Path) -> Arrays:
    """Read a model written by :func:`save_model`; order is preserved, pickle refused."""
    with np.load(path, allow_pickle=False) as data:
        return Arrays((name, data[name]) for name in data.files)
