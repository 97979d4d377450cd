"""Bring a database written by an older Consortium up to :data:`SCHEMA_VERSION`.

Each step is a few statements run in the caller's write transaction (both
SQLite and PostgreSQL have transactional DDL), so an interrupted upgrade
leaves the old schema intact. A step spells out its version's change itself,
never through today's models, which a later version may have changed again.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from sqlalchemy import BigInteger, Column, Index, MetaData, String, Table, Text, inspect, text
from sqlalchemy.orm import Session

from consortium.server.store.append_only import forbid_changes

#: version 2's one-result-per-node rule in node_results, as SQLite stores the table
_SQLITE_UNIQUE = re.compile(r",\s*UNIQUE \(run_id, round, node, stage\)")
_UNIQUE_COLUMNS = {"run_id", "round", "node", "stage"}


def _checkpoint_digest_column(s: Session) -> None:
    """2: checkpoints carry a CRC-32, not a SHA-256; the column says which."""
    s.execute(text("ALTER TABLE checkpoints RENAME COLUMN sha256 TO digest"))
    if s.get_bind().dialect.name == "postgresql":  # SQLite does not enforce VARCHAR lengths
        s.execute(text("ALTER TABLE checkpoints ALTER COLUMN digest TYPE VARCHAR(80)"))
    s.execute(text("UPDATE checkpoints SET digest = 'sha256:' || digest"))


def _node_results_may_repeat(s: Session) -> None:
    """3: a node may appear twice in one stage of a round (a FedBuff step can fold two
    updates of a fast node): node_results drops unique (run_id, round, node, stage).

    A table already without it is left as it is."""
    if s.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite_node_results(s)
    else:
        for constraint in inspect(s.connection()).get_unique_constraints("node_results"):
            if set(constraint["column_names"]) == _UNIQUE_COLUMNS:
                s.execute(text(f'ALTER TABLE node_results DROP CONSTRAINT "{constraint["name"]}"'))
    s.execute(
        text("CREATE INDEX IF NOT EXISTS ix_node_results_run_round ON node_results (run_id, round)")
    )


def _rebuild_sqlite_node_results(s: Session) -> None:
    """SQLite cannot drop a constraint: copy the table into one created without it."""
    ddl = s.execute(
        text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'node_results'")
    ).scalar_one()
    without, found = _SQLITE_UNIQUE.subn("", ddl)
    if not found:
        return
    s.execute(text("ALTER TABLE node_results RENAME TO node_results_v2"))
    s.execute(text("DROP INDEX IF EXISTS ix_node_results_node"))  # it moved with the rename
    s.execute(text(without))
    s.execute(text("INSERT INTO node_results SELECT * FROM node_results_v2"))
    s.execute(text("DROP TABLE node_results_v2"))
    s.execute(text("CREATE INDEX ix_node_results_node ON node_results (node, run_id)"))


#: version 4's run statuses, spelled out here: a later version may change the model's list
_RUN_STATUSES_V4 = "'pending', 'running', 'finished', 'failed', 'stopped', 'interrupted'"
_SQLITE_RUN_STATUS = re.compile(r"(CONSTRAINT run_status CHECK \(status IN \()[^)]*\)")


def _run_status_interrupted(s: Session) -> None:
    """4: a run the server stopped under way (SIGTERM, crash) is ``interrupted``; the CHECK
    constraint on ``runs.status`` allows it."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("ALTER TABLE runs DROP CONSTRAINT IF EXISTS run_status"))
        s.execute(
            text(
                f"ALTER TABLE runs ADD CONSTRAINT run_status CHECK (status IN ({_RUN_STATUSES_V4}))"
            )
        )
        return
    # SQLite cannot alter a CHECK; loosening one by editing the schema text is the documented
    # way (sqlite.org/lang_altertable.html, section 7). Rebuilding the table instead would
    # cascade-delete every round: foreign keys cannot be switched off inside a transaction.
    ddl = s.execute(
        text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'runs'")
    ).scalar_one()
    widened, found = _SQLITE_RUN_STATUS.subn(rf"\g<1>{_RUN_STATUSES_V4})", ddl)
    if not found or widened == ddl:
        return
    version = int(s.execute(text("PRAGMA schema_version")).scalar_one())
    s.execute(text("PRAGMA writable_schema = ON"))
    s.execute(
        text("UPDATE sqlite_master SET sql = :sql WHERE type = 'table' AND name = 'runs'"),
        {"sql": widened},
    )
    s.execute(text(f"PRAGMA schema_version = {version + 1}"))
    s.execute(text("PRAGMA writable_schema = OFF"))


#: version 5's audit_log, spelled out here: a later version may change the model
_AUDIT_LOG_V5 = Table(
    "audit_log",
    MetaData(),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("time", String(32), nullable=False, index=True),
    Column("actor", String(255), nullable=False),
    Column("role", String(64), nullable=False),
    Column("organisation", String(255), nullable=False),
    Column("action", String(64), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("run_id", String(64), nullable=False),
    Column("target", Text, nullable=False),
    Column("detail", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
    Index("ix_audit_log_run", "run_id", "seq"),
    Index("ix_audit_log_actor", "actor", "seq"),
    Index("ix_audit_log_action", "action", "seq"),
)


def _audit_log(s: Session) -> None:
    """5: the hash-chained, append-only ``audit_log`` (empty: a log starts when it starts).

    A table already there (a half-upgraded copy) is kept; its triggers are (re)made."""
    _AUDIT_LOG_V5.create(s.connection(), checkfirst=True)
    forbid_changes(_AUDIT_LOG_V5, s.connection())


#: the step that brings version N - 1 to version N
STEPS: dict[int, Callable[[Session], None]] = {
    2: _checkpoint_digest_column,
    3: _node_results_may_repeat,
    4: _run_status_interrupted,
    5: _audit_log,
}


def upgrade(s: Session, version: int, target: int) -> None:
    """Run the steps from ``version`` to ``target`` in ``s``."""
    for step in range(version + 1, target + 1):
        STEPS[step](s)
