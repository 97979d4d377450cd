"""Config and Metrics: the small typed records that travel beside Arrays.

``Config`` maps str to a scalar (str, int, float, bool) or a list of scalars;
``Metrics`` maps str to a number. Both are plain dicts so user code stays
simple; :func:`check_config` and :func:`check_metrics` validate them where
they cross a boundary. Given :class:`RecordLimits` (the server, decoding what
a node sent) they also bound their size and refuse non-finite numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from consortium.core.errors import WireFormatError

Scalar: TypeAlias = str | int | float | bool
ConfigValue: TypeAlias = Scalar | list[Scalar]
Config: TypeAlias = dict[str, ConfigValue]
Metrics: TypeAlias = dict[str, float | int]

_SCALARS = (str, int, float, bool)


class UnacceptableRecord(WireFormatError):
    """A Config or Metrics record of the wrong type, or over its :class:`RecordLimits`."""


@dataclass(frozen=True, slots=True)
class RecordLimits:
    """How much Config and Metrics a message from an untrusted sender may carry.

    ``max_entries`` counts every key of every config and metrics record of one
    message, and every element of a config list; ``max_header_bytes`` bounds the
    encoded header that holds them (with the metadata and any error text).
    """

    max_entries: int = 1000
    max_key_length: int = 256
    max_string_length: int = 64 * 1024
    max_header_bytes: int = 4 * 1024 * 1024


class RecordBudget:
    """Entries left to one message under its :class:`RecordLimits`."""

    __slots__ = ("left", "limits")

    def __init__(self, limits: RecordLimits) -> None:
        self.limits = limits
        self.left = limits.max_entries

    def take(self, n: int, what: str) -> None:
        self.left -= n
        if self.left < 0:
            raise UnacceptableRecord(
                f"{what}: the message carries more than {self.limits.max_entries} "
                "config and metrics entries"
            )


def config_copy(config: Config) -> Config:
    """A config of its own: a new dict, its list values copied (the rest are immutable).

    What a task's handler gets of a config that other tasks share (the round's task
    config in simulation, the run's and the node's configs in its context): what one
    task changes in it reaches no other, on any backend or a deployed node."""
    copied: dict[str, Any] = dict(config)
    for key, value in copied.items():
        if isinstance(value, list):
            copied[key] = list(value)
    return copied


def record_budget(limits: RecordLimits | None) -> RecordBudget | None:
    """A fresh entry budget for one message (None: no limits)."""
    return RecordBudget(limits) if limits is not None else None


def _check_key(key: object, what: str, budget: RecordBudget | None) -> str:
    if not isinstance(key, str):
        raise UnacceptableRecord(f"{what} key {key!r} is not a string")
    if budget is not None and len(key) > budget.limits.max_key_length:
        raise UnacceptableRecord(
            f"{what} key {key[:40]!r}... is {len(key)} characters long, "
            f"more than {budget.limits.max_key_length}"
        )
    return key


def _check_limited_scalar(value: Scalar, key: str, what: str, limits: RecordLimits) -> None:
    _check_range(value, key, what)
    if isinstance(value, str) and len(value) > limits.max_string_length:
        raise UnacceptableRecord(
            f"{what} value for {key!r} is a string of {len(value)} characters, "
            f"more than {limits.max_string_length}"
        )


def check_config(
    config: Mapping[str, Any], *, what: str = "config", budget: RecordBudget | None = None
) -> Config:
    """Return ``config`` as a Config, or raise naming the offending key.

    With a ``budget`` (see :func:`record_budget`) its size and values are limited too.
    """
    if budget is not None:
        if not isinstance(config, Mapping):
            raise UnacceptableRecord(f"{what} is not a mapping")
        budget.take(len(config), what)
    out: Config = {}
    for key, value in config.items():
        key = _check_key(key, what, budget)
        if isinstance(value, _SCALARS):
            out[key] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, _SCALARS) for v in value):
            if budget is not None:
                budget.take(len(value), what)
            out[key] = list(value)
        else:
            raise UnacceptableRecord(
                f"{what} value for {key!r} must be a str/int/float/bool or a list of them, "
                f"got {type(value).__name__}"
            )
        if budget is not None:
            for item in value if isinstance(value, (list, tuple)) else (value,):
                _check_limited_scalar(item, key, what, budget.limits)
    return out


def check_metrics(
    metrics: Mapping[str, Any],
    *,
    what: str = "metrics",
    budget: RecordBudget | None = None,
    finite_only: bool = True,
) -> Metrics:
    """Return ``metrics`` as Metrics (numbers only), or raise naming the key.

    With a ``budget`` (see :func:`record_budget`) its size is limited too, and
    every value must be an int or float -- a finite one unless ``finite_only``
    is False (a server app's own metrics: a diverged loss is NaN, and that is a
    result to record, not an attack).
    """
    if budget is not None:
        if not isinstance(metrics, Mapping):
            raise UnacceptableRecord(f"{what} is not a mapping")
        budget.take(len(metrics), what)
        return {
            _check_key(k, what, budget): _number(v, k, what, finite_only=finite_only)
            for k, v in metrics.items()
        }
    out: Metrics = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise UnacceptableRecord(f"{what} key {key!r} is not a string")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # numpy scalars are numbers too; normalise them to Python types
            if hasattr(value, "item") and not isinstance(value, bool):
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UnacceptableRecord(
                    f"{what} value for {key!r} must be a number, got {type(value).__name__}"
                )
        out[key] = value
    return out


def _number(value: object, key: object, what: str, *, finite_only: bool) -> float | int:
    """``value`` if it is an int or float (not a bool; finite if ``finite_only``), else
    raise naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UnacceptableRecord(
            f"{what} value for {key!r} must be a number, got {type(value).__name__}"
        )
    _check_range(value, key, what, finite_only=finite_only)
    return value


def _check_range(value: object, key: object, what: str, *, finite_only: bool = True) -> None:
    """Refuse inf/nan (unless allowed) and integers beyond 64 bits (they break the float
    arithmetic later)."""
    if finite_only and isinstance(value, float) and not math.isfinite(value):
        raise UnacceptableRecord(f"{what} value for {key!r} is not a finite number ({value})")
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        raise UnacceptableRecord(f"{what} value for {key!r} is an integer beyond 64 bits")


def finite(metrics: Mapping[str, float | int]) -> bool:
    """True when every metric value is a finite number."""
    return all(math.isfinite(v) for v in metrics.values())
