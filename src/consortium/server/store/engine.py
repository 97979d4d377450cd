"""Opening a state-store database: URL checks and per-backend connection settings.

SQLite runs in WAL mode with a busy timeout, foreign keys on, and writes in
``BEGIN IMMEDIATE`` transactions: a writer takes the lock up front, so two
threads that read then write never deadlock on a lock upgrade; readers use a
plain ``BEGIN`` and never block. PostgreSQL gets the same bound as a
``lock_timeout``. The busy timeout bounds one attempt; the store retries a
write that must not be lost (:meth:`StoreBase.persist`) up to its own bound.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import DeclarativeBase, Session

from consortium.core.errors import ConfigError, MissingDependencyError

#: Execution option marking a read-only session (SQLite: deferred BEGIN).
READ_ONLY = "consortium_read_only"


def parse_url(url: str) -> URL:
    """A SQLAlchemy URL for SQLite (a file) or PostgreSQL (via psycopg 3)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"invalid state store URL {url!r}: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        memory = parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory"
        if memory:
            raise ConfigError("the state store needs a file: use sqlite:///path/to/state.db")
        return parsed
    if backend == "postgresql":
        if parsed.get_driver_name() != "psycopg":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return parsed
    raise ConfigError(
        f"unsupported state store backend {backend!r}: use sqlite:///… or postgresql+psycopg://…"
    )


def create_store_engine(url: URL, *, busy_timeout: float = 30.0) -> Engine:
    """An engine for ``url`` (from :func:`parse_url`), safe to share between threads;
    a statement waits at most ``busy_timeout`` seconds for another connection's lock."""
    serializer = _strict_json
    busy_ms = max(1, round(busy_timeout * 1000))
    if url.get_backend_name() == "sqlite":
        assert url.database is not None
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, json_serializer=serializer)
        _configure_sqlite(engine, busy_ms)
        return engine
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError.for_extra("psycopg", "deploy") from exc
    engine = create_engine(url, json_serializer=serializer, pool_pre_ping=True)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"SET lock_timeout = {busy_ms}")
        cursor.close()
        dbapi_connection.commit()  # a session setting, kept past this transaction

    return engine


def _strict_json(value: Any) -> str:
    # NaN is not JSON; PostgreSQL rejects it, so refuse it on SQLite too
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def _configure_sqlite(engine: Engine, busy_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def insert_new(s: Session, model: type[DeclarativeBase], **values: Any) -> None:
    """INSERT a row unless its key exists: race-free, unlike get-then-add."""
    insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
    s.execute(insert(model).values(**values).on_conflict_do_nothing())
