"""Parse a ``consortium ...`` command line from a deployment file with the real CLI.

Compose services, Kubernetes containers, systemd units and the CA job's script
all spell out ``consortium`` invocations. Each is parsed here by the click
commands themselves (``make_context``: every option must exist, take the value
it is given, and every required one must be there), so a renamed or removed flag
fails a test instead of a deployment.

Paths in those files are the container's or the host's (``/var/lib/consortium``),
which do not exist where the tests run. Options whose type demands an existing
path are pointed at the same path under a temporary root, created first as a
file or a folder as the option expects; the parsed context maps them back.
A ``--config-file`` the line names is read from ``files`` (its path where it is
deployed -> its text in the repository), its paths treated the same way, and given
to click as the ``default_map`` the real option would set.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import click

from consortium.cli.config_file import CONFIG_FILE_OPTION, file_defaults, keyed_options
from consortium.cli.main import cli


def _leaf(args: Sequence[str]) -> tuple[click.Command, str, list[str]]:
    """The subcommand ``args`` name (``ca issue``, ``server``...) and the rest."""
    command: click.Command = cli
    name = "consortium"
    rest = list(args)
    while isinstance(command, click.Group):
        if not rest or rest[0].startswith("-"):
            raise click.UsageError(f"no subcommand of {name!r} in {list(args)}")
        sub = command.get_command(click.Context(command), rest[0])
        if sub is None:
            raise click.UsageError(f"{name} has no subcommand {rest[0]!r}")
        command, name, rest = sub, f"{name} {rest[0]}", rest[1:]
    return command, name, rest


def _needs_existing(param: click.Parameter) -> click.Path | None:
    kind = param.type
    return kind if isinstance(kind, click.Path) and kind.exists else None


def _materialise(path: str, kind: click.Path | None, root: Path, as_file: bool) -> str:
    """``path`` under ``root``, created if the option wants it to exist."""
    if not path.startswith("/"):
        return path
    local = root / PurePosixPath(path).relative_to("/")
    if kind is not None:
        if as_file or not kind.dir_okay:
            local.parent.mkdir(parents=True, exist_ok=True)
            local.touch()
        else:
            local.mkdir(parents=True, exist_ok=True)
    return str(local)


def _config_file(
    command: click.Command, section: str, deployed: str, text: str, root: Path
) -> dict[str, object]:
    """The default_map the config file at ``deployed`` (holding ``text``) gives, its paths
    (relative ones beside the file, as the loader reads them) materialised under ``root``."""
    table = dict(tomllib.loads(text)[section])
    options = keyed_options(command)
    folder = PurePosixPath(deployed).parent
    for key, value in table.items():
        option = options.get(key)
        if option is None or not isinstance(option.type, click.Path):
            continue  # an unknown key: file_defaults refuses it below
        kind = _needs_existing(option)
        as_file = kind is not None and not kind.dir_okay
        paths = [str(folder / str(v)) for v in (value if isinstance(value, list) else [value])]
        local = [_materialise(path, kind, root, as_file) for path in paths]
        table[key] = local if isinstance(value, list) else local[0]
    source = Path(_materialise(deployed, None, root, as_file=True))
    return file_defaults(command, section, table, source)


def parse(
    args: Sequence[str], root: Path, files: Mapping[str, str] | None = None
) -> tuple[str, dict[str, object]]:
    """Parse ``consortium ARGS`` (without the program name) as the CLI would.

    Returns the subcommand's name and its parsed parameters; raises
    ``click.ClickException`` (``NoSuchOption``, ``BadParameter``, ``MissingParameter``)
    as the CLI would refuse the line. ``files`` holds the text of each config file the
    line may name, by its deployed path.
    """
    command, name, rest = _leaf(args)
    defaults: dict[str, object] = {}
    if CONFIG_FILE_OPTION in rest:
        at = rest.index(CONFIG_FILE_OPTION)
        deployed = rest[at + 1]
        known = files or {}
        if deployed not in known:
            raise click.BadParameter(f"{deployed}: not among the files {sorted(known)}")
        defaults = _config_file(command, name.split()[-1], deployed, known[deployed], root)
        rest = rest[:at] + rest[at + 2 :]
    options = {opt: p for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    mapped: list[str] = []
    i = positional = 0
    while i < len(rest):
        arg = rest[i]
        flag, eq, inline = arg.partition("=")
        param = options.get(flag) if arg.startswith("--") else options.get(arg)
        if param is not None and isinstance(param, click.Option) and not param.is_flag:
            kind = _needs_existing(param)
            as_file = kind is not None and not kind.dir_okay
            if eq:
                mapped.append(f"{flag}={_materialise(inline, kind, root, as_file)}")
            elif i + 1 < len(rest):
                mapped += [arg, _materialise(rest[i + 1], kind, root, as_file)]
                i += 1
            else:
                mapped.append(arg)
        elif arg.startswith("-"):
            mapped.append(arg)
        else:
            target = arguments[positional] if positional < len(arguments) else None
            positional += 1
            kind = None if target is None else _needs_existing(target)
            mapped.append(_materialise(arg, kind, root, as_file=bool(PurePosixPath(arg).suffix)))
        i += 1
    with command.make_context(name, mapped, default_map=defaults) as ctx:
        return name, dict(ctx.params)
