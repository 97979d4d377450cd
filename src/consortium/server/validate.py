"""Checks every reply before it can touch the aggregate."""

from __future__ import annotations

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.errors import UpdateRejected
from consortium.core.message import Message
from consortium.core.protocol import NUM_EXAMPLES
from consortium.core.records import Metrics


def check_update(template: Arrays, update: Arrays | None) -> None:
    """Raise :class:`UpdateRejected` unless ``update`` matches ``template`` and is finite."""
    if update is None:
        raise UpdateRejected("the reply carries no model")
    if len(template) != len(update) or any(
        a != b or x.shape != y.shape or x.dtype != y.dtype
        for (a, x), (b, y) in zip(template.items(), update.items(), strict=True)
    ):
        mismatch = _mismatch(template.signature(), update.signature())
        raise UpdateRejected(f"arrays do not match the global model: {mismatch}")
    check_finite(update)


def check_finite(arrays: Arrays, *, what: str = "") -> None:
    """Raise :class:`UpdateRejected` if any float/complex array holds NaN or inf."""
    for name, value in arrays.items():
        if value.dtype.kind not in "fc" or _sum_is_finite(value):
            continue
        if not np.isfinite(value).all():
            bad = int(value.size - np.count_nonzero(np.isfinite(value)))
            where = f"{what} " if what else ""
            raise UpdateRejected(f"{where}array {name!r} contains {bad} NaN/inf value(s)")


def _sum_is_finite(value: np.ndarray) -> bool:
    """A fast sufficient test: NaN and inf propagate through a sum, so a finite sum
    means every element is finite (one read, no temporary, ~15x faster than
    ``isfinite(value).all()``). A non-finite sum may also be an overflow of finite
    values, so the caller then checks element by element."""
    with np.errstate(all="ignore"):
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
    if isinstance(value, float) and not value.is_integer():
        raise UpdateRejected(f"num_examples must be a whole number, got {value}")
    if value < 0 or not np.isfinite(value):
        raise UpdateRejected(f"num_examples must be >= 0, got {value}")
    return int(value)


def reply_metrics(reply: Message) -> Metrics:
    assert reply.content is not None
    return dict(reply.content.metric_values)
