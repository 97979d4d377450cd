"""Triggers that make a table append-only: the database refuses UPDATE and DELETE.

They stop a bug, a stray ORM flush or a careless ``UPDATE`` from rewriting
the audit log. They do not stop the database's owner, who can drop them: the
hash chain is what shows such a rewrite (see ``docs/operations.md``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table, text

#: PostgreSQL: one function, shared by every append-only table of the schema (no ``%``:
#: the driver would read it as a placeholder)
_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION consortium_append_only() RETURNS trigger
LANGUAGE plpgsql AS $body$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'restrict_violation',
        MESSAGE = 'table ' || TG_TABLE_NAME || ' is append-only: ' || TG_OP || ' refused';
END
$body$
"""


def trigger_names(table: str) -> tuple[str, ...]:
    """The triggers :func:`forbid_changes` creates on ``table`` (tests drop them to tamper)."""
    return (f"{table}_no_update", f"{table}_no_delete", f"{table}_no_truncate")


def forbid_changes(table: Table, connection: Connection, **_: Any) -> None:
    """Create the triggers on ``table`` (an ``after_create`` listener; also called by the
    migration that adds the table). Safe to call again: existing triggers are replaced."""
    name = table.name
    no_update, no_delete, no_truncate = trigger_names(name)
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(_PG_FUNCTION)
        for trigger, when, scope in (
            (no_update, "UPDATE", "ROW"),
            (no_delete, "DELETE", "ROW"),
            (no_truncate, "TRUNCATE", "STATEMENT"),
        ):
            connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS {trigger} ON {name}")
            connection.exec_driver_sql(
                f"CREATE TRIGGER {trigger} BEFORE {when} ON {name} "
                f"FOR EACH {scope} EXECUTE FUNCTION consortium_append_only()"
            )
        return
    # SQLite has no TRUNCATE (a DELETE without WHERE fires the DELETE trigger)
    for trigger, when in ((no_update, "UPDATE"), (no_delete, "DELETE")):
        connection.execute(text(f"DROP TRIGGER IF EXISTS {trigger}"))
        connection.execute(
            text(
                f"CREATE TRIGGER {trigger} BEFORE {when} ON {name} BEGIN "
                f"SELECT RAISE(ABORT, 'table {name} is append-only: {when} refused'); END"
            )
        )
