"""Configuration files for ``consortium server`` and ``consortium node``.

A file (TOML) holds a ``[server]`` table, a ``[node]`` table, or both. Each key is a
long option of that command without its dashes (``--allow-file`` is ``allow-file``),
so every flag has a key and no key exists without a flag: the keys, their types,
defaults and help all come from the click options themselves (docs/configuration.md
is generated from them, :mod:`consortium.cli.config_file_docs`).

Where a value comes from is click's own order, highest first: the command line, the
environment (``CONSORTIUM_SERVER_<KEY>`` / ``CONSORTIUM_NODE_<KEY>``, the key in upper
case with ``_`` for ``-``), the file, the option's default. The file becomes the
context's ``default_map`` when ``--config-file`` (an eager option) is processed, and
each option is given its ``envvar``, so click does the merging
(``Context.get_parameter_source`` tells which won).

The file is checked as a whole before any value is used: an unknown key is an error
that suggests the nearest known one, a wrong type names the key and the type
expected, a value is converted by the option's own type (ranges, choices, paths that
must exist) and a URL carrying a password is refused (it belongs in the environment).
Relative paths in the file are relative to the file's folder, not to the directory
the command happens to start in.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import click

from consortium.core.errors import ConfigError

__all__ = [
    "CONFIG_FILE_OPTION",
    "SECTIONS",
    "config_key",
    "configurable",
    "env_name",
    "expected_type",
    "file_defaults",
    "keyed_options",
    "read_file",
    "unknown_environment",
]

#: the table of each command in a file, and the prefix of its environment variables
SECTIONS: dict[str, str] = {"server": "CONSORTIUM_SERVER", "node": "CONSORTIUM_NODE"}
#: the option naming the file (``--config`` was taken: the node's own KEY=VALUE config)
CONFIG_FILE_OPTION = "--config-file"
#: the metavar of a repeatable KEY=VALUE option, which a file gives as a TOML table
KEY_VALUE = "KEY=VALUE"
#: scheme://user:password@host: a secret a config file must not hold
_URL_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@:]*:[^/@]+@")


def config_key(param: click.Parameter) -> str:
    """The option's key in a file: its first long flag without the dashes."""
    long = [opt for opt in param.opts if opt.startswith("--")]
    return long[0][2:] if long else str(param.name)


def env_name(section: str, key: str) -> str:
    """The environment variable of ``key`` (``CONSORTIUM_NODE_WORK_DIR``)."""
    return f"{SECTIONS[section]}_{key.upper().replace('-', '_')}"


def keyed_options(command: click.Command) -> dict[str, click.Option]:
    """Every option a file may set, by key (not ``--config-file`` itself)."""
    return {
        config_key(p): p
        for p in command.params
        if isinstance(p, click.Option) and p.expose_value and p.name is not None
    }


def _is_table(option: click.Option) -> bool:
    return option.multiple and option.metavar == KEY_VALUE


def _element_type(option: click.Option) -> str:
    kind = option.type
    if option.is_flag:
        return "boolean"
    if isinstance(kind, click.Choice):
        return "one of " + ", ".join(f'"{c}"' for c in kind.choices)
    if isinstance(kind, click.Path):
        what = "folder" if not kind.file_okay else "file" if not kind.dir_okay else "file or folder"
        return f"path to a {what}" + (" that exists" if kind.exists else "")
    if isinstance(kind, (click.IntRange, click.FloatRange)):
        name = "integer" if isinstance(kind, click.IntRange) else "number"
        bounds = []
        if kind.min is not None:
            bounds.append(f"{'>' if kind.min_open else '>='} {kind.min}")
        if kind.max is not None:
            bounds.append(f"{'<' if kind.max_open else '<='} {kind.max}")
        return f"{name} {' and '.join(bounds)}".strip()
    if isinstance(kind, click.types.IntParamType):
        return "integer"
    if isinstance(kind, click.types.FloatParamType):
        return "number"
    return "string"


def expected_type(option: click.Option) -> str:
    """The TOML type a key takes, in words (errors and docs say the same)."""
    if _is_table(option):
        return "table of key = value"
    element = _element_type(option)
    if not option.multiple:
        return element
    return "list of strings" if element == "string" else f"list, each a {element}"


def _fits(option: click.Option, value: object) -> bool:
    """Whether one TOML value has the shape of one of the option's values."""
    if option.is_flag:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if isinstance(option.type, click.types.IntParamType):
        return isinstance(value, int)
    if isinstance(option.type, click.types.FloatParamType):
        return isinstance(value, (int, float))
    return isinstance(value, str)


def _scalar_or_list(value: object) -> bool:
    scalars = (str, int, float, bool)
    return isinstance(value, scalars) or (
        isinstance(value, list) and all(isinstance(v, scalars) for v in value)
    )


def _toml_literal(value: object) -> str:
    """A value as TOML writes it: the node reads ``--config KEY=VALUE`` values as TOML,
    so a string stays a string ("true" is not a boolean) and a number a number."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    return json.dumps(value)  # a JSON string is a TOML basic string


def _type_name(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a table"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


def read_file(path: Path) -> dict[str, dict[str, Any]]:
    """The file's tables by section; a ConfigError for bad TOML or an unknown top level."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, dict):
            continue
        if key in SECTIONS:
            raise ConfigError(f"{path}: {key} must be a table ([{key}]), got {_type_name(value)}")
        hint = _suggest(key, list(SECTIONS))
        raise ConfigError(
            f"unknown key {key!r} at the top of {path}"
            + (f"; did you mean [{hint}]?" if hint else "")
            + " (a config file has a [server] and/or a [node] table; the keys go inside)"
        )
    return data


def _suggest(key: str, known: list[str]) -> str | None:
    spelled = key.replace("_", "-").lower()
    if spelled in known:
        return spelled
    close = difflib.get_close_matches(spelled, known, n=1, cutoff=0.6)
    return close[0] if close else None


def file_defaults(
    command: click.Command,
    section: str,
    table: Mapping[str, object],
    source: Path,
    *,
    check_paths: bool = True,
) -> dict[str, object]:
    """The ``default_map`` (option name -> value) that ``table``, the ``[section]`` of
    ``source``, gives ``command``; a ConfigError naming the key for anything wrong.

    ``check_paths=False`` leaves paths unchecked (a file written for another machine).
    """
    options = keyed_options(command)
    where = f"{source} [{section}]"
    defaults: dict[str, object] = {}
    for key, value in table.items():
        option = options.get(key)
        if option is None:
            hint = _suggest(key, sorted(options))
            raise ConfigError(
                f"unknown key {key!r} in {where}"
                + (f"; did you mean {hint!r}?" if hint else "")
                + f" (`consortium config docs` lists every key of [{section}])"
            )
        assert option.name is not None  # keyed_options keeps only named ones
        defaults[option.name] = _value(option, key, value, source, where, check_paths)
    return defaults


def _value(
    option: click.Option, key: str, value: object, source: Path, where: str, check_paths: bool
) -> object:
    """One key's value, shaped as click takes it from a default_map, converted once here
    so that a bad value names the key and the file."""
    _refuse_passwords(option, key, value, where)  # first: no error message may quote one
    wrong = ConfigError(
        f"{where} {key}: expected {expected_type(option)}, got {_type_name(value)} {value!r}"
    )
    if _is_table(option):
        if not isinstance(value, dict) or not all(map(_scalar_or_list, value.values())):
            raise wrong  # a node's config holds scalars and lists of them (core.Config)
        return [f"{k}={_toml_literal(v)}" for k, v in value.items()]
    items = value if option.multiple else [value]
    if option.multiple and not isinstance(value, list):
        raise wrong
    assert isinstance(items, list)
    converted = []
    for item in items:
        if not _fits(option, item):
            raise wrong
        converted.append(_convert(option, key, item, source, where, check_paths))
    return converted if option.multiple else converted[0]


def _strings(value: object) -> Iterator[str]:
    """Every string in a TOML value, however nested."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, dict)):
        for item in value.values() if isinstance(value, dict) else value:
            yield from _strings(item)


def _refuse_passwords(option: click.Option, key: str, value: object, where: str) -> None:
    """A URL with a password (``scheme://user:secret@host``), anywhere in the value, is
    refused: a config file is read by more people and tools than a secret should be."""
    if any(_URL_PASSWORD.match(text) for text in _strings(value)):
        raise ConfigError(
            f"{where} {key}: the URL carries a password, which does not belong in a "
            "config file: leave it out of the URL and give it in the environment "
            f"(PGPASSWORD for PostgreSQL), or give the whole URL in {option.envvar} "
            "from a secret store"
        )


def _convert(
    option: click.Option, key: str, item: object, source: Path, where: str, check_paths: bool
) -> object:
    if isinstance(option.type, click.Path) and isinstance(item, str):
        path = Path(item)
        item = str(path if path.is_absolute() else source.absolute().parent / path)
        if not check_paths:
            return item
    if option.is_flag:
        return item
    try:
        return option.type.convert(item, option, None)
    except click.BadParameter as exc:
        raise ConfigError(f"{where} {key}: {exc.message}") from None


def unknown_environment(command: click.Command, section: str) -> list[str]:
    """A warning for each ``CONSORTIUM_<SECTION>_*`` variable that names no setting (a
    typo would otherwise be ignored without a word), with the nearest one that does."""
    known = {str(p.envvar) for p in command.params if isinstance(p, click.Option)}
    warnings = []
    for name in sorted(os.environ):
        if name.startswith(SECTIONS[section] + "_") and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
            hint = f" (did you mean {close[0]}?)" if close else ""
            warnings.append(
                f"warning: {name} is not a setting of consortium {section}{hint}; ignored"
            )
    return warnings


def _load(section: str, ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    """``--config-file``'s callback (click calls it with or without a file): the file's
    values become the context's default_map, which the command line and the environment
    override (click's order); environment variables that name no setting are warned of."""
    if not ctx.resilient_parsing:
        for warning in unknown_environment(ctx.command, section):
            click.echo(warning, err=True)
    if value is None:
        return
    tables = read_file(value)
    if section not in tables:
        present = ", ".join(f"[{s}]" for s in tables) or "no table"
        raise ConfigError(
            f"{value} has no [{section}] table (it has {present}): "
            f"`consortium {section} {CONFIG_FILE_OPTION}` reads the keys under [{section}]"
        )
    defaults = file_defaults(ctx.command, section, tables[section], value)
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


def configurable(section: str) -> Callable[[click.Command], click.Command]:
    """Give ``command`` a ``--config-file`` and each option its environment variable."""

    def attach(command: click.Command) -> click.Command:
        for key, option in keyed_options(command).items():
            if option.envvar is None:
                option.envvar = env_name(section, key)
        command.params.insert(
            0,
            click.Option(
                [CONFIG_FILE_OPTION],
                type=click.Path(exists=True, dir_okay=False, path_type=Path),
                is_eager=True,
                expose_value=False,
                callback=partial(_load, section),
                envvar=env_name(section, "config-file"),
                metavar="FILE",
                help=f"Settings from this TOML file's [{section}] table "
                f"(docs/configuration.md); flags and {SECTIONS[section]}_* environment "
                "variables override it.",
            ),
        )
        return command

    return attach
