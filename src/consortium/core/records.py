"""Config and Metrics: the small typed records that travel beside Arrays.

``Config`` maps str to a scalar (str, int, float, bool) or a list of scalars;
``Metrics`` maps str to a number. Both are plain dicts so user code stays
simple; :func:`check_config` and :func:`check_metrics` validate them where
they cross a boundary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeAlias

from consortium.core.errors import WireFormatError

Scalar: TypeAlias = str | int | float | bool
ConfigValue: TypeAlias = Scalar | list[Scalar]
Config: TypeAlias = dict[str, ConfigValue]
Metrics: TypeAlias = dict[str, float | int]

_SCALARS = (str, int, float, bool)


def check_config(config: Mapping[str, Any], *, what: str = "config") -> Config:
    """Return ``config`` as a Config, or raise naming the offending key."""
    out: Config = {}
    for key, value in config.items():
        if not isinstance(key, str):
            raise WireFormatError(f"{what} key {key!r} is not a string")
        if isinstance(value, _SCALARS):
            out[key] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, _SCALARS) for v in value):
            out[key] = list(value)
        else:
            raise WireFormatError(
                f"{what} value for {key!r} must be a str/int/float/bool or a list of them, "
                f"got {type(value).__name__}"
            )
    return out


def check_metrics(metrics: Mapping[str, Any], *, what: str = "metrics") -> Metrics:
    """Return ``metrics`` as Metrics (numbers only), or raise naming the key."""
    out: Metrics = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise WireFormatError(f"{what} key {key!r} is not a string")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # numpy scalars are numbers too; normalise them to Python types
            if hasattr(value, "item") and not isinstance(value, bool):
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise WireFormatError(
                    f"{what} value for {key!r} must be a number, got {type(value).__name__}"
                )
        out[key] = value
    return out


def finite(metrics: Mapping[str, float | int]) -> bool:
    """True when every metric value is a finite number."""
    return all(math.isfinite(v) for v in metrics.values())
