"""What the audit log records: one :class:`AuditEvent` per admin action or security decision.

The transport (which knows who called) and the server (which knows what a run
did) both report events through an :class:`AuditSink`; the server's state
store appends them to a hash-chained log (``consortium audit verify``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Outcome = Literal["ok", "denied", "failed"]

# -- actions (one home for each name) ------------------------------------------------
RUN_START = "run.start"
RUN_STOP = "run.stop"
RUN_END = "run.end"
RUN_LIST = "run.list"
RUN_SHOW = "run.show"
MODEL_DOWNLOAD = "model.download"
NODE_UPDATES_DOWNLOAD = "model.download-node-updates"
NODE_BAN = "node.ban"
NODE_UNBAN = "node.unban"
NODE_JOINED = "node.joined"
NODE_REFUSED = "node.refused"
APP_REFUSED = "app.refused"
APP_UPLOAD = "app.upload"
APP_LIST = "app.list"
TOKEN_CREATE = "token.create"
TOKEN_REVOKE = "token.revoke"
SERVER_START = "server.start"
SERVER_STOP = "server.stop"
AUDIT_READ = "audit.read"

#: the actor named when the server itself acts (a run ends, a node is refused)
SERVER_ACTOR = "server"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One entry of the audit log, before the log chains it."""

    #: who acted: the certificate's name (an admin, researcher, observer or node), or
    #: :data:`SERVER_ACTOR`
    actor: str
    action: str
    outcome: Outcome = "ok"
    #: the actor's certificate role and organisation ("" when not known)
    role: str = ""
    organisation: str = ""
    run_id: str = ""
    #: what the action was about besides the run (a node's name, a file)
    target: str = ""
    #: JSON-serialisable facts: an app's sha256, a refusal's reason, a final status
    detail: Mapping[str, Any] = field(default_factory=dict)


class AuditSink(Protocol):
    def __call__(self, event: AuditEvent) -> None:
        """Append ``event`` to the log (raises if it could not be written)."""
        ...


def discard(event: AuditEvent) -> None:
    """An :class:`AuditSink` that keeps nothing (simulation, tests of other things)."""
