"""The audit half of the state store: append to the hash chain, read it back.

Appends are serialised on both backends, across threads and processes: each
takes a row lock on one ``consortium_meta`` row (``SELECT … FOR UPDATE`` on
PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already admits one writer at a time),
then reads the last entry and writes the next. ``seq`` is the primary key, so
even a writer that skipped the lock could not fork the chain: its insert fails.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import select

from consortium.core.audit import AuditEvent
from consortium.server.store.audit_chain import (
    GENESIS,
    AuditEntry,
    AuditHead,
    check_event,
    format_time,
)
from consortium.server.store.base import StoreBase
from consortium.server.store.engine import insert_new
from consortium.server.store.models import AuditLogModel, MetaModel

#: the consortium_meta row every append locks first
_APPEND_LOCK = "audit_log_append"
#: rows read per query while walking the whole log
BATCH = 1000


class AuditRecords(StoreBase):
    """The rows of the audit log (a part of ``StateStore``; :class:`AuditLog` is the API)."""

    def append_audit(self, event: AuditEvent, *, retry: bool = True) -> AuditEntry:
        """Chain ``event`` after the last entry; retried like every write that must not be
        lost (:meth:`persist`), then :class:`StateStoreError`. ``retry=False``: one attempt
        (bounded by the lock wait), for callers that must not wait longer."""
        check_event(event)

        def write() -> AuditEntry:
            with self._write() as s:
                insert_new(s, MetaModel, key=_APPEND_LOCK, value="serialises audit_log appends")
                s.execute(
                    select(MetaModel.key).where(MetaModel.key == _APPEND_LOCK).with_for_update()
                ).one()
                last = s.execute(
                    select(AuditLogModel.seq, AuditLogModel.hash)
                    .order_by(AuditLogModel.seq.desc())
                    .limit(1)
                ).one_or_none()
                seq, prev = (last[0], last[1]) if last is not None else (0, GENESIS)
                entry = AuditEntry.chained(seq + 1, format_time(self._now()), event, prev)
                s.add(_row(entry))
                return entry

        return self.persist(f"the audit entry {event.action!r}", write) if retry else write()

    def audit_head(self) -> AuditHead:
        """The last entry's seq and hash (0 and 64 zeros when the log is empty)."""
        query = select(AuditLogModel.seq, AuditLogModel.hash).order_by(AuditLogModel.seq.desc())
        with self._read() as s:
            last = s.execute(query.limit(1)).one_or_none()
        return AuditHead(0, GENESIS) if last is None else AuditHead(last[0], last[1])

    def audit_entries(
        self,
        *,
        run_id: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        seq: int | None = None,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        """Entries matching every filter given, oldest first (``limit``: the newest N)."""
        query = select(AuditLogModel)
        if seq is not None:
            query = query.where(AuditLogModel.seq == seq)
        if run_id is not None:
            query = query.where(AuditLogModel.run_id == run_id)
        if actor is not None:
            query = query.where(AuditLogModel.actor == actor)
        if action is not None:
            query = query.where(AuditLogModel.action == action)
        if since is not None:  # the text form sorts like the times it writes
            query = query.where(AuditLogModel.time >= format_time(since))
        query = query.order_by(AuditLogModel.seq.desc()).limit(limit)
        with self._read() as s:
            rows = list(s.scalars(query))
        return [_lenient_entry(r) for r in reversed(rows)]

    def audit_rows(self, batch: int = BATCH) -> Iterator[AuditEntry | tuple[int, str]]:
        """Every entry by seq, read ``batch`` at a time (each batch its own short read,
        so walking a long log holds no lock); a row that cannot be an entry gives
        (seq, why) instead."""
        after = 0
        while True:
            query = (
                select(AuditLogModel)
                .where(AuditLogModel.seq > after)
                .order_by(AuditLogModel.seq)
                .limit(batch)
            )
            with self._read() as s:
                rows = list(s.scalars(query))
            for row in rows:
                yield _strict_entry(row)
            if len(rows) < batch:
                return
            after = rows[-1].seq


def _row(entry: AuditEntry) -> AuditLogModel:
    return AuditLogModel(
        seq=entry.seq, time=entry.time, actor=entry.actor, role=entry.role,
        organisation=entry.organisation, action=entry.action, outcome=entry.outcome,
        run_id=entry.run_id, target=entry.target,
        detail=json.dumps(entry.detail, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
        prev_hash=entry.prev_hash, hash=entry.hash,
    )  # fmt: skip


def _entry(row: AuditLogModel, detail: dict[str, Any]) -> AuditEntry:
    return AuditEntry(
        seq=row.seq, time=row.time, actor=row.actor, role=row.role,
        organisation=row.organisation, action=row.action, outcome=row.outcome,
        run_id=row.run_id, target=row.target, detail=detail, prev_hash=row.prev_hash,
        hash=row.hash,
    )  # fmt: skip


def _strict_entry(row: AuditLogModel) -> AuditEntry | tuple[int, str]:
    try:
        detail = json.loads(row.detail)
    except ValueError:
        detail = None
    if not isinstance(detail, dict):
        return row.seq, "its detail is not a JSON object: the entry was edited"
    return _entry(row, detail)


def _lenient_entry(row: AuditLogModel) -> AuditEntry:
    """For showing: an unreadable detail is shown as it is (``audit verify`` flags it)."""
    found = _strict_entry(row)
    return found if isinstance(found, AuditEntry) else _entry(row, {"unreadable": row.detail})
