"""The ``consortium`` command: simulate an app, run the demo."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from consortium._version import __version__
from consortium.cli.app_cmd import app
from consortium.cli.audit_cmd import audit
from consortium.cli.ca_cmd import ca
from consortium.cli.config_cmd import config
from consortium.cli.demo_cmd import demo
from consortium.cli.fleet_cmd import fleet
from consortium.cli.local_cmd import local
from consortium.cli.new_cmd import new
from consortium.cli.node_cmd import node
from consortium.cli.run_cmd import run
from consortium.cli.server_cmd import server
from consortium.cli.simulate_cmd import simulate
from consortium.cli.token_cmd import token
from consortium.core.errors import ConsortiumError


@click.group(
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


cli.add_command(simulate)
cli.add_command(demo)
cli.add_command(ca)
cli.add_command(server)
cli.add_command(node)
cli.add_command(run)
cli.add_command(fleet)
cli.add_command(app)
cli.add_command(audit)
cli.add_command(token)
cli.add_command(local)
cli.add_command(new)
cli.add_command(config)


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
