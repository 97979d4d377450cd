"""``GET /api/v1/audit``: the audit log, for whoever the policy lets read it (``read-audit``:
admins by default), with the head to record outside the server.

Each successful read is itself audited (``audit.read``, with the filters): who looked
at the record of who did what is part of that record. The chain is checked by
``consortium audit verify``; this endpoint only reads.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from consortium.core.audit import AUDIT_READ
from consortium.transport.authz import READ_AUDIT

if TYPE_CHECKING:
    from consortium.control.api import ApiContext

#: the most entries one call returns (the newest ones)
MAX_ENTRIES = 1000
_Filter = Annotated[str | None, Query(min_length=1, max_length=255)]


def audit_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(tags=["audit"])

    @router.get("/audit")
    async def read_audit(
        request: Request,
        run_id: _Filter = None,
        actor: _Filter = None,
        action: _Filter = None,
        limit: Annotated[int, Query(ge=1, le=MAX_ENTRIES)] = 200,
    ) -> dict[str, Any]:
        """The newest ``limit`` entries matching every filter given, oldest first, and the
        log's head (``SEQ:HASH``)."""
        # the token file, the audit log and the database are files: off the event loop
        who = await run_in_threadpool(ctx.guard.require, request, READ_AUDIT, AUDIT_READ)
        store = ctx.runs.store
        entries = await run_in_threadpool(
            store.audit_entries, run_id=run_id, actor=actor, action=action, limit=limit
        )
        head = await run_in_threadpool(store.audit_head)
        asked = {"run_id": run_id, "actor": actor, "action": action}
        facts: dict[str, object] = {k: v for k, v in asked.items() if v is not None}
        facts.update({"entries": len(entries), "token": who.token_id})
        ctx.guard.record(who.caller, AUDIT_READ, "ok", detail=facts)
        return {"head": str(head), "entries": [asdict(e) for e in entries]}

    return router
