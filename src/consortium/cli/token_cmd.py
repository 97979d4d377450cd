"""``consortium token``: issue, list and revoke the REST API's bearer tokens.

Run on the server's machine, against its ``--workdir`` (the signing secret and
the token list live in ``WORKDIR/api``); the server need not be stopped: it
sees a revocation at the next request. ``token create`` prints the token alone
on stdout (pipe it into a file; it is shown once and never stored). Issuing and
revoking are recorded in the server's audit log (``token.create``,
``token.revoke``, by the local user), as the API's own writes are.
"""

from __future__ import annotations

import getpass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from consortium.cli.server_cmd import DEFAULT_WORKDIR
from consortium.cli.tls_options import require_deploy
from consortium.core.audit import TOKEN_CREATE, TOKEN_REVOKE

if TYPE_CHECKING:  # the token module needs cryptography (the deploy extra)
    from consortium.control.tokens import TokenAuthority, TokenInfo

#: how long a token lives unless --days says otherwise
DEFAULT_DAYS = 30.0

_workdir = click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_WORKDIR,
    show_default=True,
    help="The server's --workdir.",
)
_state_option = click.option(
    "--state",
    "state_url",
    metavar="URL",
    help="The server's --state database, for the audit log (default sqlite:///WORKDIR/state.db).",
)


@click.group()
def token() -> None:
    """Bearer tokens for the REST API (consortium server --http)."""


@token.command("create")
@click.option(
    "--role",
    required=True,
    help="admin, researcher or observer: what the server's policy "
    "lets that role do (consortium server --authz).",
)
@click.option("--name", required=True, help="Who holds it (named in the audit log).")
@click.option("--org", "organisation", default="", help="The holder's organisation.")
@click.option(
    "--days",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_DAYS,
    show_default=True,
    help="Days until it expires.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the token to this file (mode 0600) instead of stdout.",
)
@_workdir
@_state_option
def create(
    role: str,
    name: str,
    organisation: str,
    days: float,
    out: Path | None,
    workdir: Path,
    state_url: str | None,
) -> None:
    """Issue a token for NAME in ROLE; prints the token (only once: keep it)."""
    token_text, info = _authority(workdir).create(
        name=name, role=role, organisation=organisation, days=days
    )
    facts = {"token": info.id, "role": info.role, "organisation": info.organisation,
             "expires_at": info.expires_at}  # fmt: skip
    record_token_act(workdir, state_url, TOKEN_CREATE, info.name, facts)
    click.echo(f"token {info.id} for {info.role} {info.name!r}, expires {_when(info.expires_at)}",
               err=True)  # fmt: skip
    if out is None:
        click.echo(token_text)
        return
    write_secret(out, token_text + "\n")
    click.echo(f"written to {out}", err=True)


@token.command("list")
@_workdir
def list_tokens(workdir: Path) -> None:
    """Every token issued: id, holder, role, expiry, revoked (never the tokens)."""
    tokens = _authority(workdir).list()
    if not tokens:
        click.echo("no tokens issued")
        return
    click.echo(f"{'ID':<17} {'ROLE':<11} {'NAME':<20} {'EXPIRES':<17} STATE")
    for info in tokens:
        click.echo(f"{info.id:<17} {info.role:<11} {info.name:<20} "
                   f"{_when(info.expires_at):<17} {_state(info)}")  # fmt: skip


@token.command("revoke")
@click.argument("token_id")
@_workdir
@_state_option
def revoke(token_id: str, workdir: Path, state_url: str | None) -> None:
    """Revoke the token TOKEN_ID: refused from the server's next request on."""
    info = _authority(workdir).revoke(token_id)
    record_token_act(
        workdir, state_url, TOKEN_REVOKE, info.name, {"token": info.id, "role": info.role}
    )
    click.echo(f"token {info.id} ({info.role} {info.name!r}) revoked")


def _authority(workdir: Path) -> TokenAuthority:
    require_deploy()
    from consortium.control.tokens import TokenAuthority

    return TokenAuthority(workdir)


def record_token_act(
    workdir: Path, state_url: str | None, action: str, holder: str, detail: dict[str, Any]
) -> None:
    """Append the act to the server's audit log, by the local user who did it."""
    from consortium.core.audit import AuditEvent
    from consortium.server.store import StateStore, default_url
    from consortium.server.store.audit import AuditLog

    if state_url is None and not (workdir / "state.db").exists():
        click.echo(f"warning: no state database in {workdir} yet (has the server run there?): "
                   f"this {action} is not in the audit log", err=True)  # fmt: skip
        return
    store = StateStore(state_url or default_url(workdir))
    try:
        # in brackets, which no certificate or token name can hold: a local account
        actor = f"(local user {getpass.getuser()})"
        AuditLog(store)(AuditEvent(actor=actor, action=action, target=holder, detail=detail))
    finally:
        store.close()


def write_secret(path: Path, text: str) -> None:
    """Write ``text`` to a new or existing file readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def _state(info: TokenInfo) -> str:
    if info.revoked_at is not None:
        return f"revoked {_when(info.revoked_at)}"
    now = datetime.now(UTC).timestamp()
    return "expired" if now >= info.expires_at else "valid"
