"""The server's audit log: who did what, appended to a hash chain in the state database.

:class:`AuditLog` is an :class:`~consortium.core.audit.AuditSink`: the Control
API and the run manager call it with each :class:`~consortium.core.audit.AuditEvent`.
:meth:`AuditLog.verify` walks the chain (see :mod:`.audit_chain` for what is
hashed); :meth:`AuditLog.fleet_sink` turns the fleet's node events into
``node.joined`` / ``node.refused`` entries without letting the log slow the
fleet down or stop it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from consortium.core.audit import NODE_JOINED, NODE_REFUSED, SERVER_ACTOR, AuditEvent
from consortium.server.store.audit_chain import (
    GENESIS,
    AuditEntry,
    AuditHead,
    ChainCheck,
    VerifyReport,
    verify_jsonl,
    write_jsonl,
)
from consortium.server.store.store import StateStore
from consortium.transport.refusal_gate import RefusalGate

log = logging.getLogger("consortium.server.audit")

#: the fleet's event callback: (node, kind, detail); see ``server.fleet_replies.EventSink``
FleetEvents = Callable[[str, str, str], None]


class AuditLog:
    """The audit log of one state store; call it with an event to append it."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def __call__(self, event: AuditEvent) -> None:
        self.append(event)

    def append(self, event: AuditEvent, *, retry: bool = True) -> AuditEntry:
        """Chain ``event`` (a bad field: :class:`ConfigError` naming it; a database that
        stays unusable past the store's write timeout: :class:`StateStoreError`;
        ``retry=False``: after one attempt)."""
        return self.store.append_audit(event, retry=retry)

    def entries(
        self,
        *,
        run_id: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        """Entries matching every filter given, oldest first (``limit``: the newest N)."""
        return self.store.audit_entries(
            run_id=run_id, actor=actor, action=action, since=since, limit=limit
        )

    def head(self) -> AuditHead:
        """The last entry's ``SEQ:HASH``: record it outside the database to catch a log
        whose tail was cut or that was rewritten whole."""
        return self.store.audit_head()

    def verify(self, *, expect_head: AuditHead | str | None = None) -> VerifyReport:
        """Walk the whole chain; the report names the first bad entry and why.

        ``expect_head`` (``AuditHead``, or a bare hash) is a head noted earlier:
        the log must still contain it, with the same hash.
        """
        check = ChainCheck(expect_head)
        for item in self.store.audit_rows():
            if isinstance(item, AuditEntry):
                check.feed(item)
            else:
                check.fail_at(*item)
            if check.broken:
                break
        return check.report()

    def export_jsonl(self, path: Path) -> tuple[int, AuditHead]:
        """Write every entry to ``path``, one JSON object a line, as stored (a broken log
        is exported too, for the forensics); returns how many and the last one's head.

        A row whose detail is no longer JSON is written with ``{"unreadable": text}``:
        its hash no longer matches, so the file fails verification at that entry too."""
        last: list[AuditHead] = [AuditHead(0, GENESIS)]

        def entries() -> Iterator[AuditEntry]:
            for item in self.store.audit_rows():
                entry = item if isinstance(item, AuditEntry) else self._unreadable(item[0])
                last[0] = AuditHead(entry.seq, entry.hash)
                yield entry

        return write_jsonl(entries(), path), last[0]

    def _unreadable(self, seq: int) -> AuditEntry:
        (entry,) = self.store.audit_entries(seq=seq)
        return entry

    @staticmethod
    def verify_jsonl(path: Path, *, expect_head: AuditHead | str | None = None) -> VerifyReport:
        """Check an export (:func:`~.audit_chain.verify_jsonl`)."""
        return verify_jsonl(path, expect_head=expect_head)

    def fleet_sink(
        self,
        forward: FleetEvents | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> FleetEvents:
        """A fleet event callback that passes each event to ``forward`` and audits
        node joins and refusals (:class:`FleetAuditor`)."""
        return FleetAuditor(self, forward, clock=clock)


class FleetAuditor:
    """The fleet's node events, as audit entries, kept rare enough not to stall the fleet.

    A node says hello on every reconnect: ``node.joined`` is logged only for an
    instance id this server has not seen for that node (its first hello, or a
    restarted process). A refused caller retries: ``node.refused`` is logged at
    most once per caller and reason a minute (:class:`RefusalGate`). A write is
    tried once (a locked database is waited for up to the store's lock bound, not
    its retry bound); a failed one is logged and dropped: the database must not
    stop the federation.
    """

    def __init__(
        self,
        audit: AuditLog,
        forward: FleetEvents | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._audit = audit
        self._forward = forward
        self._clock = clock
        self._lock = threading.Lock()
        #: node -> the instance id of its last logged join
        self._instances: dict[str, str] = {}
        #: which refusals are logged (once per caller and reason a minute)
        self._refusals = RefusalGate()

    def __call__(self, node: str, kind: str, detail: str) -> None:
        if self._forward is not None:
            self._forward(node, kind, detail)
        event = self._event(node, kind, detail)
        if event is None:
            return
        try:
            self._audit.append(event, retry=False)
        except Exception as exc:  # a record of the fleet, not its lifeline
            log.warning("audit log: could not record %s for %s: %s", event.action, node, exc)

    def _event(self, node: str, kind: str, detail: str) -> AuditEvent | None:
        if kind in ("connected", "restarted"):
            with self._lock:
                if self._instances.get(node) == detail:
                    return None
                self._instances[node] = detail
            return AuditEvent(
                actor=node, role="node", action=NODE_JOINED, target=node,
                detail={"instance": detail, "restarted": kind == "restarted"},
            )  # fmt: skip
        if kind == "refused":
            with self._lock:
                if not self._refusals.admit(node, detail, self._clock()):
                    return None
            return AuditEvent(
                actor=SERVER_ACTOR, action=NODE_REFUSED, outcome="denied", target=node,
                detail={"reason": detail},
            )  # fmt: skip
        return None
