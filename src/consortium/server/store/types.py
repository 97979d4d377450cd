"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from consortium.core.records import Metrics

#: JSON has no NaN or infinity (PostgreSQL rejects them); metrics store them as these strings.
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime in, an aware UTC datetime out, whatever the backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the state store needs aware times")
        value = value.astimezone(UTC)
        # SQLite keeps no zone: store naive UTC and put the zone back on the way out
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class MetricsJSON(TypeDecorator[Metrics]):
    """Metrics (str → number) as JSON, with NaN and ±infinity kept."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Metrics | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return {k: _encode_number(v) for k, v in value.items()}

    def process_result_value(self, value: Any, dialect: Dialect) -> Metrics | None:
        if value is None:
            return None
        return {k: _NONFINITE[v] if isinstance(v, str) else v for k, v in value.items()}


def _encode_number(value: float | int) -> float | int | str:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value
