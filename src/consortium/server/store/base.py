"""The state store's plumbing: engine, sessions, write transactions, clock and schema.

Every part of :class:`~consortium.server.store.StateStore` builds on
:class:`StoreBase`: each method opens its own short session (``_read`` or
``_write``) and returns frozen views, never live ORM objects.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self, TypeVar

from sqlalchemy import inspect, select
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from consortium.core.errors import ConfigError, StateStoreError
from consortium.server.store import migrate
from consortium.server.store.engine import READ_ONLY, create_store_engine, insert_new, parse_url
from consortium.server.store.models import SCHEMA_VERSION, Base, MetaModel

log = logging.getLogger("consortium.server.store")

#: Where a store's times come from: aware UTC datetimes (tests inject a fake one).
Clock = Callable[[], datetime]
T = TypeVar("T")
#: One attempt at a write waits at most this long for a lock (less if the bound is shorter).
ATTEMPT_TIMEOUT = 5.0


def utc_now() -> datetime:
    """The default clock."""
    return datetime.now(UTC)


class StoreBase:
    """A database opened (schema created or upgraded) and the sessions to use it."""

    def __init__(self, url: str, *, clock: Clock = utc_now, write_timeout: float = 30.0) -> None:
        if not write_timeout > 0:
            raise ConfigError(f"the state store's write timeout must be > 0, not {write_timeout}")
        self.url = parse_url(url)
        #: how long :meth:`persist` retries a failing write before it gives up
        self.write_timeout = write_timeout
        self._clock = clock
        self._engine = create_store_engine(
            self.url, busy_timeout=min(write_timeout, ATTEMPT_TIMEOUT)
        )
        self._file: tuple[Path, tuple[int, int]] | None = None
        self._session = sessionmaker(self._engine, expire_on_commit=False)
        read_engine = self._engine.execution_options(**{READ_ONLY: True})
        self._read_sessions = sessionmaker(read_engine, expire_on_commit=False)
        # SQLite has one writer at a time anyway: queueing our threads here beats its
        # busy-wait, which sleeps in growing steps while another thread holds the lock
        self._write_lock: AbstractContextManager[Any] = (
            threading.Lock() if self.dialect == "sqlite" else nullcontext()
        )
        try:
            self._create_schema()
            self._file = self._database_file()
            self._check_file(writing=True)
        except OperationalError as exc:
            self._engine.dispose()
            raise ConfigError(f"cannot open the state store {self.safe_url}: {exc.orig}") from exc
        except BaseException:
            self._engine.dispose()
            raise

    @property
    def safe_url(self) -> str:
        """The database URL with any password hidden, for logs and messages."""
        return self.url.render_as_string(hide_password=True)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._engine.dialect.name

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def persist(self, what: str, action: Callable[[], T]) -> T:
        """Run ``action`` (one or more writes that must not be lost), retried while the
        database is locked, gone or failing, for at most :attr:`write_timeout` seconds; then
        :class:`StateStoreError` naming the database, ``what`` and the cause."""
        deadline = time.monotonic() + self.write_timeout
        delay = 0.05
        while True:
            try:
                return action()
            except (DBAPIError, StateStoreError) as exc:
                if isinstance(exc, IntegrityError):  # a rule broken: retrying cannot help
                    raise
                cause = str(exc.orig) if isinstance(exc, DBAPIError) else str(exc)
                if time.monotonic() + delay > deadline:
                    raise StateStoreError(
                        f"the state store {self.safe_url} could not record {what} "
                        f"(retried for {self.write_timeout:g} s): {cause}"
                    ) from exc
                log.warning("state store %s: recording %s failed, retrying: %s",
                            self.safe_url, what, cause)  # fmt: skip
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """A session in a write transaction, committed on success."""
        with self._write_lock:
            self._check_file(writing=True)
            with self._session.begin() as s:
                yield s

    def _read(self) -> Session:
        """A session for reading (SQLite: a plain ``BEGIN``, which never waits)."""
        self._check_file(writing=False)
        return self._read_sessions()

    def _database_file(self) -> tuple[Path, tuple[int, int]] | None:
        """A SQLite database's file and identity (device, inode); None for PostgreSQL."""
        if self.dialect != "sqlite" or self.url.database is None:
            return None
        path = Path(self.url.database).expanduser().resolve()
        st = path.stat()
        return path, (st.st_dev, st.st_ino)

    def _check_file(self, *, writing: bool) -> None:
        """Refuse to use a SQLite file that was deleted or replaced (its open connections
        would go on with a file nobody will ever read again), or to write one made read-only."""
        if self._file is None:
            return
        path, identity = self._file
        try:
            st = path.stat()
        except FileNotFoundError:
            raise StateStoreError(
                f"the state database {path} is gone (deleted, or its folder was)"
            ) from None
        except OSError as exc:
            raise StateStoreError(f"the state database {path} cannot be reached: {exc}") from exc
        if (st.st_dev, st.st_ino) != identity:
            raise StateStoreError(f"the state database {path} was replaced while the server ran")
        if writing and (not st.st_mode & 0o222 or not os.access(path, os.W_OK)):
            raise StateStoreError(f"the state database {path} is read-only")

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ConfigError("the state store clock must return aware datetimes")
        return now

    def _create_schema(self) -> None:
        # a new database gets today's schema; an existing one changes only through its
        # migrations, in one transaction (create_all would add new tables outside it)
        if not inspect(self._engine).has_table(MetaModel.__tablename__):
            Base.metadata.create_all(self._engine)
        with self._write() as s:
            insert_new(s, MetaModel, key="schema_version", value=str(SCHEMA_VERSION))
            row = s.scalars(
                select(MetaModel).where(MetaModel.key == "schema_version").with_for_update()
            ).one()
            version = int(row.value)
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"the state store {self.safe_url} has schema version {row.value}; this "
                    f"Consortium knows up to {SCHEMA_VERSION}: upgrade Consortium"
                )
            if version < SCHEMA_VERSION:
                log.info(
                    "upgrading the state store %s from schema version %d to %d",
                    self.safe_url, version, SCHEMA_VERSION,
                )  # fmt: skip
                migrate.upgrade(s, version, SCHEMA_VERSION)
                row.value = str(SCHEMA_VERSION)
