"""Who is calling the REST API, may they, and the audit entry either way.

A request's bearer token names its caller (name, role, organisation); the
server's :class:`~consortium.transport.authz.AuthzPolicy` (the same object the
gRPC Control API uses) decides what that caller may do. A missing, malformed,
expired or revoked token is 401, a refused action 403: both as the JSON
:class:`ApiError` body, both reported to the audit sink. Tokens are never
logged or audited, only their id and holder.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from consortium.control.tokens import InvalidToken, TokenAuthority
from consortium.core.audit import AuditSink, Outcome
from consortium.transport.authz import Action, AuthzPolicy, Caller, report

log = logging.getLogger("consortium.control")

#: the header a token travels in (``Authorization: Bearer <token>``)
AUTH_HEADER = "authorization"


class ApiError(Exception):
    """An error the API answers with ``{"error": {"status", "code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"status": self.status, "code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


@dataclass(frozen=True, slots=True)
class TokenCaller:
    """A caller and the token id it presented (for the audit log)."""

    caller: Caller
    token_id: str


class Guard:
    """Authenticates requests by token and authorizes them by the server's policy."""

    def __init__(self, tokens: TokenAuthority, policy: AuthzPolicy, audit: AuditSink) -> None:
        self.tokens = tokens
        self.policy = policy
        self.audit = audit

    def authenticate(self, request: Request, event: str, *, run_id: str = "") -> TokenCaller:
        """The token's holder, or 401 (audited as ``event``, denied)."""
        header = request.headers.get(AUTH_HEADER, "")
        scheme, _, token = header.partition(" ")
        try:
            if not header:
                raise InvalidToken("no token: send 'Authorization: Bearer <token>'")
            if scheme.lower() != "bearer" or not token.strip():
                raise InvalidToken("the Authorization header must be 'Bearer <token>'")
            info = self.tokens.verify(token.strip())
        except InvalidToken as exc:
            peer = f"({_peer(request)})"
            log.warning("refused %s %s from %s: %s", request.method, request.url.path, peer, exc)
            reason = {"reason": str(exc)}
            self.record(Caller(peer, ""), event, "denied", run_id=run_id, detail=reason)
            raise ApiError(401, "unauthenticated", str(exc)) from None
        return TokenCaller(Caller(info.name, info.role, info.organisation), info.id)

    def require(
        self,
        request: Request,
        action: Action,
        event: str,
        *,
        run_id: str = "",
        target: str = "",
    ) -> TokenCaller:
        """The caller, if the policy grants it ``action``; else 401/403, audited."""
        who = self.authenticate(request, event, run_id=run_id)
        decision = self.policy.decide(who.caller, action)
        if not decision.allowed:
            log.warning("refused %s %s: %s", request.method, request.url.path, decision.reason)
            detail = {"reason": decision.reason, "needs": action, "token": who.token_id}
            self.record(who.caller, event, "denied", run_id=run_id, target=target, detail=detail)
            raise ApiError(403, "forbidden", decision.reason)
        return who

    def record(
        self,
        caller: Caller,
        action: str,
        outcome: Outcome,
        *,
        run_id: str = "",
        target: str = "",
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Report one audit event (``via: rest``); a failing sink is only logged."""
        facts = {**(detail or {}), "via": "rest"}
        report(self.audit, caller, action, outcome, run_id=run_id, target=target, detail=facts)


def _peer(request: Request) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client is not None else "unknown"
