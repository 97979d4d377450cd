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
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import click

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


def parse(args: Sequence[str], root: Path) -> tuple[str, dict[str, object]]:
    """Parse ``consortium ARGS`` (without the program name) as the CLI would.

    Returns the subcommand's name and its parsed parameters; raises
    ``click.ClickException`` (``NoSuchOption``, ``BadParameter``, ``MissingParameter``)
    as the CLI would refuse the line.
    """
    command, name, rest = _leaf(args)
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
    with command.make_context(name, mapped) as ctx:
        return name, dict(ctx.params)
