"""``consortium fleet``: the coordinator bans a node from the server, or lets it back in.

A ban works without the CA (which may be offline): the server refuses the node
at its next call, drops it from its runs, and remembers the ban across restarts.
Revoke its certificate too (``consortium ca revoke``) to shut it out for good.
"""

from __future__ import annotations

from pathlib import Path

import click

from consortium.cli.control_options import control_client, control_options


@click.group()
def fleet() -> None:
    """Ban nodes from the server, or lift a ban (needs the ban-node permission: admins)."""


@fleet.command("ban")
@click.argument("node")
@control_options
@click.option("--reason", required=True, help="Why: recorded in the audit log, told to the node.")
def ban(
    node: str,
    address: str,
    credentials: Path | None,
    name: str | None,
    server_name: str | None,
    insecure: bool,
    reason: str,
) -> None:
    """Refuse NODE's calls from its next one on, whatever its certificate."""
    client = control_client(address, credentials, name, server_name, insecure)
    try:
        changed = client.ban_node(node, reason)
    finally:
        client.close()
    click.echo(f"banned {node}" if changed else f"{node} was already banned")


@fleet.command("unban")
@click.argument("node")
@control_options
def unban(
    node: str,
    address: str,
    credentials: Path | None,
    name: str | None,
    server_name: str | None,
    insecure: bool,
) -> None:
    """Let NODE back in (it rejoins when it is started again)."""
    client = control_client(address, credentials, name, server_name, insecure)
    try:
        changed = client.unban_node(node)
    finally:
        client.close()
    click.echo(f"{node} may join again" if changed else f"{node} was not banned")
