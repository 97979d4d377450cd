"""App folders: ``consortium.toml`` parsed and validated, errors naming file and field."""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from consortium.core.errors import ConfigError
from consortium.core.records import Config, ConfigValue

MANIFEST = "consortium.toml"
_ENTRY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class AppSection(_Strict):
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    server: str
    client: str
    description: str = ""

    @field_validator("server", "client")
    @classmethod
    def _entry_point(cls, value: str) -> str:
        if not _ENTRY.match(value):
            raise ValueError(f"must look like 'package.module:attribute', got {value!r}")
        return value


class SimulationSection(_Strict):
    num_nodes: int = Field(default=2, ge=1, alias="num-nodes")
    node_ids: list[str] | None = Field(default=None, alias="node-ids")
    backend: Literal["auto", "threads", "processes", "ray"] = "auto"
    workers: int = Field(default=1, ge=1)


class Manifest(_Strict):
    app: AppSection
    run_config: dict[str, ConfigValue] = Field(default_factory=dict, alias="run-config")
    simulation: SimulationSection = Field(default_factory=SimulationSection)


class AppSpec:
    """A loaded app folder: its manifest and where its code lives."""

    def __init__(self, root: Path, manifest: Manifest) -> None:
        self.root = root
        self.manifest = manifest

    @property
    def name(self) -> str:
        return self.manifest.app.name

    def run_config(self, overrides: dict[str, ConfigValue] | None = None) -> Config:
        """The default run config with ``overrides`` applied (unknown keys refused)."""
        declared = self.manifest.run_config
        config: Config = dict(declared)
        for key, value in (overrides or {}).items():
            # an app that declares no run config takes any keys (all of them, not the first)
            if declared and key not in declared:
                known = ", ".join(sorted(declared))
                raise ConfigError(
                    f"unknown run-config key {key!r} for app {self.name!r} (known: {known})"
                )
            _check_number(f"run-config {key!r}", value)
            config[key] = _coerce(key, value, config.get(key))
        return config


def load_app_spec(path: Path | str) -> AppSpec:
    """Read and validate ``<path>/consortium.toml`` (or the file itself)."""
    path = Path(path)
    file = path if path.is_file() else path / MANIFEST
    if not file.exists():
        raise ConfigError(f"no {MANIFEST} found at {path}")
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{file}: not UTF-8 text (byte {exc.start} is "
            f"{exc.object[exc.start : exc.start + 1]!r}); save it as UTF-8"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from exc
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{file}: {_describe(exc)}") from exc
    for key, value in manifest.run_config.items():
        _check_number(f"{file}: run-config {key!r}", value)
    return AppSpec(file.parent.resolve(), manifest)


def _check_number(what: str, value: ConfigValue) -> None:
    """NaN is never a meaningful setting (every comparison with it is false): refuse it."""
    values = value if isinstance(value, list) else [value]
    if any(isinstance(v, float) and math.isnan(v) for v in values):
        raise ConfigError(f"{what} is NaN; give a number")


def _describe(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        kind = err["type"]
        if kind == "missing":
            problems.append(f"missing field '{loc}'")
        elif kind == "extra_forbidden":
            problems.append(f"unknown field '{loc}'")
        else:
            problems.append(f"field '{loc}': {err['msg']} (got {err.get('input')!r})")
    return "; ".join(problems)


#: an unquoted value that holds a second ``key=value``: the user meant two settings
_ANOTHER_PAIR = re.compile(r"\s[A-Za-z_][\w.-]*=")


def parse_override(text: str) -> tuple[str, ConfigValue]:
    """Parse ``key=value``; the value is read as TOML when it can be, else as a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--run-config expects key=value, got {text!r}")
    try:
        value: Any = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
        if _ANOTHER_PAIR.search(value):  # 'a=1 b=2' would silently set a to "1 b=2"
            raise ConfigError(
                f"--run-config takes one key=value, got {text!r}: repeat the option for "
                "each key (--run-config a=1 --run-config b=2), or quote a string value"
            ) from None
    if isinstance(value, dict):
        raise ConfigError(f"--run-config {key}: tables are not allowed")
    return key, value


def _coerce(key: str, value: ConfigValue, default: ConfigValue | None) -> ConfigValue:
    if default is None:
        return value
    if isinstance(default, bool) or isinstance(value, bool):
        if type(default) is not type(value):
            raise ConfigError(f"run-config {key!r} must be {type(default).__name__}, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    if isinstance(default, (int, float, str)) and not isinstance(value, type(default)):
        raise ConfigError(
            f"run-config {key!r} must be {type(default).__name__} "
            f"(default {default!r}), got {value!r}"
        )
    return value
