"""``consortium audit``: read, check and export the server's hash-chained audit log.

The commands open the state database the server uses (``--workdir`` or
``--state``, as ``consortium server`` takes them) and may run while the
server does. ``audit verify`` exits 0 when the chain holds and 11 (a
:class:`~consortium.core.errors.SecurityError`) naming the first bad entry
when it does not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.table import Table

from consortium.cli.report import make_console
from consortium.cli.server_cmd import DEFAULT_WORKDIR
from consortium.cli.tls_options import require_deploy
from consortium.core.errors import ConfigError, SecurityError, StateStoreError

if TYPE_CHECKING:
    from consortium.server.store import StateStore
    from consortium.server.store.audit_chain import AuditHead

F = TypeVar("F", bound=Callable[..., Any])
#: entries ``audit show`` prints unless ``--limit`` says otherwise
SHOW_LIMIT = 100


def _store_options(fn: F) -> F:
    for option in reversed(
        [
            click.option(
                "--workdir",
                type=click.Path(file_okay=False, path_type=Path),
                default=DEFAULT_WORKDIR,
                show_default=True,
                help="The server's --workdir (its state.db is the log).",
            ),
            click.option(
                "--state",
                "state_url",
                metavar="URL",
                help="The server's --state database URL (default sqlite:///WORKDIR/state.db).",
            ),
        ]
    ):
        fn = option(fn)
    return fn


def _open(workdir: Path, state_url: str | None) -> StateStore:
    """The server's store; a SQLite file that is not there is an error, not a new log."""
    require_deploy()
    from consortium.server.store import StateStore, default_url
    from consortium.server.store.engine import parse_url

    url = state_url or default_url(workdir)
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        assert parsed.database is not None
        path = Path(parsed.database).expanduser()
        if not path.is_file():
            raise StateStoreError(
                f"no state database at {path}: give the server's --workdir or --state URL"
            )
    return StateStore(url)


def _parse_head(text: str | None) -> AuditHead | str | None:
    from consortium.server.store.audit_chain import AuditHead

    return None if text is None else AuditHead.parse(text)


def _parse_since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--since {text!r} is not an ISO date or time (2026-12-04, 2026-12-04T10:00Z)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@click.group()
def audit() -> None:
    """Show, verify and export the server's audit log (who did what, hash-chained)."""


@audit.command("show")
@click.option("--run", "run_id", metavar="ID", help="Only entries about this run.")
@click.option("--actor", metavar="NAME", help="Only entries by this actor (a certificate name).")
@click.option("--action", metavar="ACTION", help="Only this action (run.start, node.refused, …).")
@click.option("--since", metavar="TIME", help="Only entries at or after this ISO time (UTC).")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=SHOW_LIMIT,
    show_default=True,
    help="Show the newest N matching entries (0: all).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line, as exported.")
@_store_options
def show(
    run_id: str | None,
    actor: str | None,
    action: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
    workdir: Path,
    state_url: str | None,
) -> None:
    """List entries, oldest first, filtered by run, actor, action and time."""
    from consortium.server.store.audit import AuditLog

    with _open(workdir, state_url) as store:
        found = AuditLog(store).entries(
            run_id=run_id, actor=actor, action=action, since=_parse_since(since),
            limit=limit + 1 if limit else None,
        )  # fmt: skip
    more = bool(limit) and len(found) > limit
    if more:
        found = found[1:]
        click.echo(f"(the newest {limit} shown; --limit 0 shows all)", err=True)
    if as_json:
        for entry in found:
            click.echo(entry.to_json())
        return
    table = Table(title="Audit log, oldest first")
    for col in ("seq", "time (UTC)", "actor", "role", "org", "action", "outcome", "run",
                "target", "detail"):  # fmt: skip
        table.add_column(col, overflow="fold")
    for e in found:
        detail = json.dumps(e.detail, sort_keys=True, ensure_ascii=False) if e.detail else ""
        table.add_row(str(e.seq), e.time[:19].replace("T", " "), e.actor, e.role,
                      e.organisation, e.action, e.outcome, e.run_id, e.target, detail)  # fmt: skip
    make_console().print(table)


@audit.command("verify")
@click.option(
    "--expect-head",
    metavar="SEQ:HASH",
    help="A head noted earlier (from `audit verify` or `audit export`): the log must still "
    "hold it. Catches a cut tail, and a chain rewritten whole.",
)
@click.option(
    "--file",
    "file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Check this JSON-lines export instead of the database.",
)
@_store_options
def verify(
    expect_head: str | None, file: Path | None, workdir: Path, state_url: str | None
) -> None:
    """Check the hash chain: exit 0 if it holds, 11 naming the first bad entry if not."""
    from consortium.server.store.audit import AuditLog

    head = _parse_head(expect_head)
    if file is not None:
        report = AuditLog.verify_jsonl(file, expect_head=head)
        where = str(file)
    else:
        with _open(workdir, state_url) as store:
            report = AuditLog(store).verify(expect_head=head)
            where = store.safe_url
    if not report.ok:
        raise SecurityError(f"{where}: {report}")
    click.echo(str(report))


@audit.command("export")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The JSON-lines file to write (check it with `audit verify --file`).",
)
@_store_options
def export(output: Path, workdir: Path, state_url: str | None) -> None:
    """Write every entry to a JSON-lines file, oldest first."""
    from consortium.server.store.audit import AuditLog

    with _open(workdir, state_url) as store:
        count, head = AuditLog(store).export_jsonl(output)
    click.echo(f"exported {count} entries to {output}; head {head}")
