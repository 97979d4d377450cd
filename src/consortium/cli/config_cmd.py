"""``consortium config``: check a configuration file, generate the key reference.

``config check FILE`` parses the file exactly as ``consortium server|node
--config-file FILE`` would (the environment included) and stops before starting
anything; it exits 0 when the command would start with it and 2 (ConfigError) when
not: unreadable TOML, an unknown key, a wrong type or value, a path that does not
exist, a required setting that no source gives.
"""

from __future__ import annotations

from pathlib import Path

import click

from consortium.cli.config_file import CONFIG_FILE_OPTION, SECTIONS, config_key, read_file
from consortium.cli.config_file_docs import reference, replace_reference
from consortium.cli.node_cmd import node
from consortium.cli.server_cmd import server
from consortium.core.errors import ConfigError

#: the command each section of a file configures
COMMANDS: dict[str, click.Command] = {"server": server, "node": node}
#: how `config check` names where a value came from
_SOURCES = {
    click.core.ParameterSource.ENVIRONMENT: "environment",
    click.core.ParameterSource.DEFAULT_MAP: "file",
}


@click.group()
def config() -> None:
    """Configuration files for `consortium server` and `consortium node` (docs/configuration.md)."""


@config.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--for",
    "section",
    type=click.Choice(list(SECTIONS)),
    help="Check only this command's table [default: every table the file has].",
)
def check(file: Path, section: str | None) -> None:
    """Check FILE as `consortium server|node --config-file FILE` would read it, without
    starting anything: exit 0 if it would start, 2 if not (the message names the key)."""
    tables = read_file(file)
    if section is not None and section not in tables:
        raise ConfigError(f"{file} has no [{section}] table")
    sections = [section] if section else [s for s in SECTIONS if s in tables]
    if not sections:
        raise ConfigError(f"{file} has neither a [server] nor a [node] table")
    for name in sections:
        click.echo(f"{file} [{name}]: OK")
        for key, value, source in _effective(name, file):
            click.echo(f"  {key} = {value}  ({source})")


def _effective(section: str, file: Path) -> list[tuple[str, str, str]]:
    """(key, value, where it came from) for each setting not at its default."""
    command = COMMANDS[section]
    try:
        ctx = command.make_context(f"consortium {section}", [CONFIG_FILE_OPTION, str(file)])
    except click.ClickException as exc:  # a required option no source gives, a bad env value
        raise ConfigError(f"{file} [{section}]: {exc.format_message()}") from None
    out = []
    with ctx:
        for param in command.params:
            if not param.expose_value or param.name is None:
                continue
            source = ctx.get_parameter_source(param.name)
            if source in _SOURCES:
                value = ctx.params[param.name]
                shown = list(map(str, value)) if isinstance(value, tuple) else value
                out.append((config_key(param), str(shown), _SOURCES[source]))
    return out


@config.command("docs")
@click.option(
    "--write",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Rewrite the reference between the markers of this file (docs/configuration.md) "
    "instead of printing it.",
)
@click.option(
    "--check",
    "check_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Exit 2 if this file's reference differs from what the options generate.",
)
def docs(write: Path | None, check_file: Path | None) -> None:
    """The reference of every key (type, default, flag, environment variable), generated
    from the options of `consortium server` and `consortium node`."""
    generated = reference(COMMANDS)
    if check_file is not None:
        text = check_file.read_text(encoding="utf-8")
        if replace_reference(text, generated) != text:
            raise ConfigError(
                f"{check_file} is out of date: run consortium config docs --write {check_file}"
            )
        click.echo(f"{check_file}: the key reference is up to date")
    elif write is not None:
        text = write.read_text(encoding="utf-8")
        write.write_text(replace_reference(text, generated), encoding="utf-8")
        click.echo(f"{write}: key reference written")
    else:
        click.echo(generated, nl=False)
