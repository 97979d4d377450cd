"""The ``consortium`` command: simulate an app, run the demo."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

import click

from consortium._version import __version__
from consortium.core.errors import ConsortiumError

#: each subcommand and the module that defines it, imported only when the subcommand is
#: asked for: ``consortium ca issue`` or ``consortium run list`` need neither the server,
#: the simulation engine nor numpy, which importing every subcommand took 0.5 s to load
COMMANDS = {
    "app": "consortium.cli.app_cmd",
    "audit": "consortium.cli.audit_cmd",
    "ca": "consortium.cli.ca_cmd",
    "config": "consortium.cli.config_cmd",
    "demo": "consortium.cli.demo_cmd",
    "fleet": "consortium.cli.fleet_cmd",
    "local": "consortium.cli.local_cmd",
    "new": "consortium.cli.new_cmd",
    "node": "consortium.cli.node_cmd",
    "run": "consortium.cli.run_cmd",
    "server": "consortium.cli.server_cmd",
    "simulate": "consortium.cli.simulate_cmd",
    "token": "consortium.cli.token_cmd",
}


class LazyGroup(click.Group):
    """A group whose subcommands (:data:`COMMANDS`, each a command of its module's of the
    same name) are imported when first asked for: by name when one runs, all of them for
    ``--help``."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            command = vars(importlib.import_module(COMMANDS[cmd_name]))[cmd_name]
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="consortium")
def cli() -> None:
    """Consortium: federated learning across silos whose data never leaves them.

    \b
    Start here:
      consortium demo                      four hospitals learn heart disease together
      consortium simulate examples/fraud   run an app folder with virtual nodes
      consortium new NAME --template T     a new app folder (T: numpy, sklearn, torch)
      consortium local --dir DIR           a server, its REST API and 4 hospitals, locally

    \b
    Deploy (see docs/deploy.md):
      consortium ca init / ca issue        the federation's certificates
      consortium server                    the aggregation server
      consortium node                      one per silo, beside its data
      consortium config check FILE         a server.toml / node.toml, before starting
      consortium run start|list|show|stop  the coordinator's commands
      consortium run download RUN_ID       the global model a run finished with
      consortium fleet ban NODE            refuse a node at its next call
      consortium audit show|verify|export  who did what, hash-chained
      consortium token create|list|revoke  bearer tokens for the REST API (docs/api.md)
    """


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: user errors print one clear line and exit with their own code."""
    try:
        cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except ConsortiumError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
