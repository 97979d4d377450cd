"""The L2 norm of a model update and clipping it: shared by server and node clipping.

An *update* is a trained model ``y`` against the model ``x`` it started from;
its delta is ``y - x`` over every array of the model together. Both the
server-side wrapper (:class:`consortium.strategy.ClippedUpdates`) and the
node-side mod (:func:`consortium.client.mods.clip_update_mod`) use these, so
the two clip with the same arithmetic.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from consortium.core.arrays import Arrays

__all__ = ["clip_update", "update_norm"]


def _deltas(current: Arrays, update: Arrays) -> list[NDArray[np.float64]]:
    return [np.subtract(update[name], ref, dtype=np.float64) for name, ref in current.items()]


def _norm(deltas: list[NDArray[np.float64]]) -> float:
    return math.sqrt(sum(float(np.vdot(d, d)) for d in deltas))


def update_norm(current: Arrays, update: Arrays) -> float:
    """The L2 norm of ``update - current`` over all arrays together, taken in float64."""
    return _norm(_deltas(current, update))


def clip_update(current: Arrays, update: Arrays, max_norm: float) -> Arrays:
    """``update`` with its delta from ``current`` scaled to L2 norm <= ``max_norm``.

    Returns ``update`` itself (not a copy) when the norm is already within the
    bound. The norm is taken in float64; the result keeps each array's dtype.
    """
    deltas = _deltas(current, update)
    norm = _norm(deltas)
    if norm <= max_norm:
        return update
    scale = max_norm / norm
    out = Arrays()
    for (name, ref), delta in zip(current.items(), deltas, strict=True):
        delta *= scale
        delta += ref
        out[name] = delta.astype(update[name].dtype)
    return out
