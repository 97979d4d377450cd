"""What the server does for its REST API process: one method per request, each checked.

The API process parses what the Internet sends, so the server trusts it less
than itself: every argument of a request is checked here (:func:`take`), an
uploaded bundle is named by its digest (never a path) and re-hashed, and an
audit event must have the audit log's shape before it is chained.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from typing import Any

from consortium.control.ipc import ProtocolError, take, take_strings
from consortium.control.registry import APPS_DIR
from consortium.control.tokens import API_DIR
from consortium.core.audit import AuditEvent, AuditSink
from consortium.core.errors import ConfigError
from consortium.server.fleet import Fleet
from consortium.server.runs import RunManager
from consortium.transport.fleet_api import BanList

#: the longest log message of the API process the server logs (a traceback included)
MAX_LOG_CHARS = 20_000
_SHA256 = re.compile(r"[0-9a-f]{64}")
_OUTCOMES = ("ok", "denied", "failed")


class ApiDesk:
    """What the server does for its API process: one method per request, each argument
    checked (the API process is less trusted than the server: it parses the Internet)."""

    def __init__(
        self, runs: RunManager, fleet: Fleet, audit: AuditSink, bans: BanList | None
    ) -> None:
        self.runs = runs
        self.fleet = fleet
        self.audit = audit
        self.bans = bans
        self.apps = runs.root / API_DIR / APPS_DIR

    def handle(self, op: str, args: Mapping[str, Any]) -> dict[str, Any]:
        if op == "presence":
            online, missing = self.fleet.presence()
            return {"online": online, "missing": missing}
        if op == "identities":
            return {"identities": {n: list(p) for n, p in self.fleet.identities().items()}}
        if op == "heard_ago":
            return {"heard_ago": self.fleet.heard_ago()}
        if op == "ban_reason":
            name = take(args, "name", str)
            return {"reason": None if self.bans is None else self.bans.reason(name)}
        if op == "waiting":
            shown = self.runs.show_run(take(args, "run_id", str))
            return {"waiting": None if shown is None else shown.get("waiting")}
        if op == "start_run":
            return {"run_id": self._start_run(args)}
        if op == "stop_run":
            return {"stopped": self.runs.stop_run(take(args, "run_id", str))}
        if op == "audit":
            self.audit(_audit_event(take(args, "event", dict)))
            return {}
        if op == "log":
            _log_record(args)
            return {}
        raise ProtocolError(f"op: no request {op!r}")

    def _start_run(self, args: Mapping[str, Any]) -> str:
        digest = take(args, "sha256", str)
        if not _SHA256.fullmatch(digest):
            raise ProtocolError("sha256: expected 64 lowercase hex digits")
        seed = take(args, "seed", int)
        if not 0 <= seed < 2**63:
            raise ProtocolError("seed: out of range")
        nodes = take_strings(args, "nodes", most=10_000)
        try:
            bundle = (self.apps / f"{digest}.cab").read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"app: no uploaded bundle {digest}") from None
        if hashlib.sha256(bundle).hexdigest() != digest:  # changed on disk since its upload
            raise ConfigError(f"app: the kept bundle {digest} no longer has that digest")
        return self.runs.start_run(bundle, take(args, "run_config", str), seed, nodes=nodes)


def _audit_event(data: Mapping[str, Any]) -> AuditEvent:
    outcome = take(data, "outcome", str)
    if outcome not in _OUTCOMES:
        raise ProtocolError(f"outcome: expected one of {', '.join(_OUTCOMES)}")
    fields = {k: take(data, k, str) for k in ("actor", "action", "role", "organisation",
                                              "run_id", "target")}  # fmt: skip
    return AuditEvent(outcome=outcome, detail=take(data, "detail", dict), **fields)  # type: ignore[arg-type]


def _log_record(args: Mapping[str, Any]) -> None:
    """A log record of the API process, logged here: into the server's log."""
    name = take(args, "name", str)
    if not name.startswith(("consortium", "uvicorn")):
        name = "consortium.control"
    level = min(max(take(args, "level", int), logging.DEBUG), logging.CRITICAL)
    logging.getLogger(name).log(level, "%s", take(args, "message", str)[:MAX_LOG_CHARS])
