"""The state store's plumbing: engine, sessions, write transactions, clock and schema.

Every part of :class:`~consortium.server.store.StateStore` builds on
:class:`StoreBase`: each method opens its own short session (``_read`` or
``_write``) and returns frozen views, never live ORM objects.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any, Self

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from consortium.core.errors import ConfigError
from consortium.server.store import migrate
from consortium.server.store.engine import READ_ONLY, create_store_engine, insert_new, parse_url
from consortium.server.store.models import SCHEMA_VERSION, Base, MetaModel

log = logging.getLogger("consortium.server.store")

#: Where a store's times come from: aware UTC datetimes (tests inject a fake one).
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The default clock."""
    return datetime.now(UTC)


class StoreBase:
    """A database opened (schema created or upgraded) and the sessions to use it."""

    def __init__(self, url: str, *, clock: Clock = utc_now) -> None:
        self.url = parse_url(url)
        self._clock = clock
        self._engine = create_store_engine(self.url)
        self._session = sessionmaker(self._engine, expire_on_commit=False)
        read_engine = self._engine.execution_options(**{READ_ONLY: True})
        self._read = sessionmaker(read_engine, expire_on_commit=False)
        # SQLite has one writer at a time anyway: queueing our threads here beats its
        # busy-wait, which sleeps in growing steps while another thread holds the lock
        self._write_lock: AbstractContextManager[Any] = (
            threading.Lock() if self.dialect == "sqlite" else nullcontext()
        )
        try:
            self._create_schema()
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

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """A session in a write transaction, committed on success."""
        with self._write_lock, self._session.begin() as s:
            yield s

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ConfigError("the state store clock must return aware datetimes")
        return now

    def _create_schema(self) -> None:
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
