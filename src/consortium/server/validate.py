"""Checks every reply before it can touch the aggregate."""

from __future__ import annotations

import math

import numpy as np

from consortium.core.arrays import Arrays, is_floating
from consortium.core.errors import UpdateRejected
from consortium.core.message import Message
from consortium.core.protocol import NUM_EXAMPLES
from consortium.core.records import Metrics


def check_update(template: Arrays, update: Arrays | None) -> None:
    """Raise :class:`UpdateRejected` unless ``update`` matches ``template`` and is finite."""
    if update is None:
        raise UpdateRejected("the reply carries no model")
    # names, then the arrays side by side (the Mapping ABC's items() costs calls per item)
    if list(template) != list(update) or not all(
        [
            x.shape == y.shape and x.dtype == y.dtype
            for x, y in zip(template.to_list(), update.to_list(), strict=True)
        ]
    ):
        mismatch = _mismatch(template.signature(), update.signature())
        raise UpdateRejected(f"arrays do not match the global model: {mismatch}")
    check_finite(update)


def check_finite(arrays: Arrays, *, what: str = "") -> None:
    """Raise :class:`UpdateRejected` if any float/complex array holds NaN or inf."""
    suspects = [
        (name, value)
        for name, value in zip(arrays, arrays.to_list(), strict=True)
        # bfloat16's kind is "V": is_floating, not the kind, says it can hold NaN
        if (value.dtype.kind == "c" or is_floating(value.dtype)) and not _small_is_finite(value)
    ]
    if not suspects:
        return
    with np.errstate(all="ignore"):  # once for all of them: entering it costs ~1 us
        for name, value in suspects:
            if _sum_is_finite(value) or np.isfinite(value).all():
                continue
            bad = int(value.size - np.count_nonzero(np.isfinite(value)))
            where = f"{what} " if what else ""
            raise UpdateRejected(f"{where}array {name!r} contains {bad} NaN/inf value(s)")


#: Arrays up to this many elements are summed in Python (see :func:`_small_is_finite`).
SMALL_ARRAY = 64


def _small_is_finite(value: np.ndarray) -> bool:
    """The test of :func:`_sum_is_finite` for a small float array, as Python floats: NaN
    and inf propagate through their sum too, and an overflow gives inf without a warning
    or error, so no ``np.errstate`` is needed (whose cost is that of summing ~100
    elements). False (not: not finite) for any other array."""
    if value.dtype.kind != "f" or value.size > SMALL_ARRAY:
        return False
    return math.isfinite(sum(value.ravel().tolist()))


def _sum_is_finite(value: np.ndarray) -> bool:
    """A fast sufficient test: NaN and inf propagate through a sum, so a finite sum
    means every element is finite (one read, no temporary, ~15x faster than
    ``isfinite(value).all()``). A non-finite sum may also be an overflow of finite
    values, so the caller then checks element by element. Call it under
    ``np.errstate(all="ignore")``: an overflow must not warn or raise."""
    return bool(np.isfinite(np.add.reduce(value, axis=None)))


def _mismatch(
    expected: list[tuple[str, str, tuple[int, ...]]], got: list[tuple[str, str, tuple[int, ...]]]
) -> str:
    exp, have = {n: (d, s) for n, d, s in expected}, {n: (d, s) for n, d, s in got}
    missing = [n for n in exp if n not in have]
    extra = [n for n in have if n not in exp]
    if missing or extra:
        return f"missing {missing}, unexpected {extra}"
    for name, (dtype, shape) in exp.items():
        if have[name] != (dtype, shape):
            return (
                f"{name!r} should be {np.dtype(dtype)}{list(shape)}, "
                f"got {np.dtype(have[name][0])}{list(have[name][1])}"
            )
    return "arrays are in a different order"


def num_examples(metrics: Metrics) -> int:
    """The ``num_examples`` a reply reports, validated."""
    value = metrics.get(NUM_EXAMPLES)
    if value is None:
        raise UpdateRejected("the reply does not report num_examples")
    try:
        finite = math.isfinite(value)  # a number (numpy's scalars too); ~20x np.isfinite's speed
    except TypeError:
        raise UpdateRejected(
            f"num_examples must be a number, got {type(value).__name__} {value!r:.40}"
        ) from None
    if isinstance(value, float) and not value.is_integer():
        raise UpdateRejected(f"num_examples must be a whole number, got {value}")
    if value < 0 or not finite:
        raise UpdateRejected(f"num_examples must be >= 0, got {value}")
    return int(value)


def reply_metrics(reply: Message) -> Metrics:
    assert reply.content is not None
    return dict(reply.content.metric_values)
