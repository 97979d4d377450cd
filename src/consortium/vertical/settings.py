"""Reading a vertical protocol's ``*-`` keys from the run config, each checked by name.

Every party and the server read the same run config; a value of the wrong type or
out of its range is a :class:`ConfigError` that names the key, the range and what
was given, whichever protocol (``vlr-``, ``vsb-``, ``split-``) it belongs to.
"""

from __future__ import annotations

from consortium.core.errors import ConfigError
from consortium.core.records import Config


class SettingsReader:
    """Typed, range-checked reads of one run config."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"run-config {key!r} must be a number, got {value!r}")
        if not low <= float(value) <= high:
            raise ConfigError(f"run-config {key!r} must be in [{low}, {high}], got {value}")
        return float(value)

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.number(key, default, low, high)
        if value != int(value):
            raise ConfigError(f"run-config {key!r} must be an integer, got {value}")
        return int(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.config.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"run-config {key!r} must be true or false, got {value!r}")
        return value
