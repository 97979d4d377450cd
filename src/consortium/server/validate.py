"""Checks every reply before it can touch the aggregate."""

from __future__ import annotations

import math

import numpy as np

from consortium.core.arrays import Arrays, is_floating
from consortium.core.errors import UpdateRejected
from consortium.core.message import Message
from consortium.core.parallel import run_split, split_parts
from consortium.core.protocol import NUM_EXAMPLES
from consortium.core.records import Metrics


def check_update(template: Arrays, update: Arrays | None) -> None:
    """Raise :class:`UpdateRejected` unless ``update`` matches ``template`` and is finite."""
    if update is None:
        raise UpdateRejected("the reply carries no model")
    # one pass over the arrays side by side: the layout, and the finite test of a small
    # float array (this runs once per reply: tens of thousands of times in a simulation)
    values = update.to_list()
    expected = template.to_list()
    layout_ok = list(template) == list(update)
    suspects: list[tuple[str, np.ndarray]] = []
    if layout_ok:
        for name, x, y in zip(update, expected, values, strict=True):
            if x.shape != y.shape or x.dtype != y.dtype:
                layout_ok = False
                break
            if _may_not_be_finite(y):
                suspects.append((name, y))
    if not layout_ok:
        mismatch = _mismatch(template.signature(), update.signature())
        raise UpdateRejected(f"arrays do not match the global model: {mismatch}")
    _check_suspects(suspects, "")


def check_finite(arrays: Arrays, *, what: str = "") -> None:
    """Raise :class:`UpdateRejected` if any float/complex array holds NaN or inf."""
    suspects = [
        (name, value)
        for name, value in zip(arrays, arrays.to_list(), strict=True)
        if _may_not_be_finite(value)
    ]
    _check_suspects(suspects, what)


def _may_not_be_finite(value: np.ndarray) -> bool:
    """False when ``value`` cannot hold NaN or inf (an integer or bool array) or is a small
    float array found finite; True when it needs :func:`_check_suspects`."""
    kind = value.dtype.kind
    if kind == "f" and value.size <= SMALL_ARRAY:
        return not _small_is_finite(value)
    # bfloat16's kind is "V": is_floating, not the kind, says it can hold NaN
    return kind == "c" or is_floating(value.dtype)


def _check_suspects(suspects: list[tuple[str, np.ndarray]], what: str) -> None:
    """Raise :class:`UpdateRejected` for the first of ``suspects`` holding NaN or inf."""
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
    """The test of :func:`_sum_is_finite` for a float array of up to :data:`SMALL_ARRAY`
    elements, as Python floats: NaN and inf propagate through their sum too, and an
    overflow gives inf without a warning or error, so no ``np.errstate`` is needed
    (whose cost is that of summing ~100 elements)."""
    return math.isfinite(sum(value.ravel().tolist()))


def _sum_is_finite(value: np.ndarray) -> bool:
    """A fast sufficient test: NaN and inf propagate through a sum, so a finite sum
    means every element is finite (one read, no temporary, ~15x faster than
    ``isfinite(value).all()``). A non-finite sum may also be an overflow of finite
    values, so the caller then checks element by element. Call it under
    ``np.errstate(all="ignore")``: an overflow must not warn or raise. A large array
    is summed in parts on several threads at once, each part's sum tested."""
    if not value.flags.c_contiguous or split_parts(value.size) < 2:
        return bool(np.isfinite(np.add.reduce(value, axis=None)))
    flat = value.reshape(-1)
    return all(run_split(flat.size, lambda start, stop, _: _finite_sum(flat[start:stop])))


def _finite_sum(part: np.ndarray) -> bool:
    """Whether ``part``'s sum is finite, an overflow quiet (each thread has its own
    ``np.errstate``)."""
    with np.errstate(all="ignore"):
        return bool(np.isfinite(np.add.reduce(part)))


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
