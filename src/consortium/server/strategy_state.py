"""A strategy's state in a checkpoint: JSON for its tree, the Arrays wire format for its arrays.

A strategy keeps what it needs across rounds (an optimizer's moments, a
control variate, counters) as nested Python values and numpy arrays. A
checkpoint stores the tree as JSON, with each array replaced by a reference
into an :class:`~consortium.core.arrays.Arrays` record written beside it, so
no value is pickled and every array keeps its exact bytes and dtype.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from consortium.core.arrays import WIRE_KINDS, Arrays
from consortium.core.errors import StrategyError

_TAG = "$"


def encode_strategy_state(state: Mapping[str, Any]) -> tuple[dict[str, Any], Arrays]:
    """A JSON tree and the arrays it refers to; raises StrategyError on what cannot be saved.

    Handles None, bool, int, float (NaN too), str, bytes, list, tuple, dict (any
    hashable keys), numpy arrays and scalars of numeric/bool dtype, and Arrays.
    """
    blobs = Arrays()

    def ref(value: np.ndarray[Any, Any], path: str) -> str:
        if value.dtype.kind not in WIRE_KINDS:
            raise StrategyError(f"strategy state {path}: dtype {value.dtype} cannot be saved")
        key = str(len(blobs))
        blobs[key] = value
        return key

    def enc(value: Any, path: str) -> Any:
        if isinstance(value, np.generic):  # before float: np.float64 is a float
            return {_TAG: "scalar", "ref": ref(np.asarray(value), path)}
        if isinstance(value, np.ndarray):
            return {_TAG: "ndarray", "ref": ref(value, path)}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, Arrays):
            refs = [[n, ref(a, f"{path}[{n!r}]")] for n, a in value.items()]
            return {_TAG: "arrays", "refs": refs}
        if isinstance(value, bytes):
            return {_TAG: "bytes", "hex": value.hex()}
        if isinstance(value, list):
            return [enc(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, tuple):
            return {_TAG: "tuple", "items": [enc(v, f"{path}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, Mapping):
            if all(isinstance(k, str) for k in value) and _TAG not in value:
                return {k: enc(v, f"{path}[{k!r}]") for k, v in value.items()}
            items = [[enc(k, path), enc(v, f"{path}[{k!r}]")] for k, v in value.items()]
            return {_TAG: "dict", "items": items}
        raise StrategyError(
            f"strategy state {path} is a {type(value).__name__}, which a checkpoint cannot "
            "hold: use numbers, strings, lists, dicts, numpy arrays or Arrays"
        )

    tree = enc(dict(state), "state")
    assert isinstance(tree, dict)
    return tree, blobs


def decode_strategy_state(tree: dict[str, Any], blobs: Arrays) -> dict[str, Any]:
    """Invert :func:`encode_strategy_state`; arrays come back as writable copies."""

    def dec(value: Any) -> Any:
        if isinstance(value, list):
            return [dec(v) for v in value]
        if not isinstance(value, dict):
            return value
        tag = value.get(_TAG)
        if tag is None:
            return {k: dec(v) for k, v in value.items()}
        if tag == "ndarray":
            return np.array(blobs[value["ref"]], copy=True)
        if tag == "scalar":
            return np.array(blobs[value["ref"]], copy=True)[()]
        if tag == "arrays":
            return Arrays((n, np.array(blobs[r], copy=True)) for n, r in value["refs"])
        if tag == "bytes":
            return bytes.fromhex(value["hex"])
        if tag == "tuple":
            return tuple(dec(v) for v in value["items"])
        if tag == "dict":
            return {dec(k): dec(v) for k, v in value["items"]}
        raise ValueError(f"unknown tag {tag!r} in strategy state")

    out = dec(tree)
    if not isinstance(out, dict):
        raise ValueError("strategy state is not a mapping")
    return out
