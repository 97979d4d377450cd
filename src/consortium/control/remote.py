"""The server as the REST API process sees it: the store read here, the rest asked for.

Reads of what the state store records (runs, rounds, metrics, nodes, audit)
and of the run folders (models) happen in the API process, so a crowd of
dashboards costs the server's process nothing but one small "run X moved on"
notice per round. What only the running server knows (who is online, whom a
round waits for, the ban list) and what only it may do (start and stop runs,
append to the audit chain) is asked over the channel (:mod:`.ipc`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from consortium.control.ipc import Caller, ChannelClosed, ProtocolError, Refused, take
from consortium.core.audit import AuditEvent
from consortium.core.errors import ConfigError
from consortium.server.rounds_cache import RoundsCache
from consortium.server.run_files import final_model_bytes
from consortium.server.run_record import RunRecord, summary
from consortium.server.runs import LIST_LIMIT
from consortium.server.store import StateStore


class RemoteRuns:
    """:class:`~consortium.control.backend.RunsBackend` of the API process."""

    def __init__(self, store: StateStore, root: Path, server: Caller) -> None:
        self.store = store
        self.root = root.resolve()
        self.server = server
        #: each recently read run's rounds (a round is written once, whole)
        self._rounds = RoundsCache(store)

    def list_runs(self) -> list[dict[str, Any]]:
        return [
            summary(v, rounds_done=v.rounds_done) for v in self.store.list_runs(limit=LIST_LIMIT)
        ]

    def record(self, run_id: str) -> RunRecord | None:
        view = self.store.get_run(run_id)
        if view is None:
            return None
        return RunRecord(view, self._rounds.get(run_id, view.rounds_done),
                         self.store.latest_checkpoint(run_id))  # fmt: skip

    def show_run(self, run_id: str) -> dict[str, Any] | None:
        record = self.record(run_id)
        if record is None:
            return None
        detail = record.detail()
        waiting = self.server.call("waiting", run_id=run_id).get("waiting")
        if waiting is not None:
            detail["waiting"] = take({"waiting": waiting}, "waiting", dict)
        return detail

    def global_model(self, run_id: str) -> bytes | None:
        if self.store.get_run(run_id) is None:  # and so run_id names no other folder
            return None
        return final_model_bytes(self.root / "runs" / run_id)

    def start_run(
        self, bundle: bytes, run_config_json: str, seed: int, nodes: Sequence[str] | None = None
    ) -> str:
        """The server starts the bundle the API's registry keeps (named by its digest, so
        the bytes need not cross the channel); a refusal of the request is a ConfigError."""
        digest = hashlib.sha256(bundle).hexdigest()
        chosen = None if nodes is None else list(nodes)
        try:
            reply = self.server.call(
                "start_run", sha256=digest, run_config=run_config_json, seed=seed, nodes=chosen
            )
        except Refused as exc:
            if exc.kind == "invalid":
                raise ConfigError(exc.message) from None
            raise RuntimeError(exc.message) from None
        return take(reply, "run_id", str)

    def stop_run(self, run_id: str) -> bool:
        return take(self.server.call("stop_run", run_id=run_id), "stopped", bool)


class RemoteFleet:
    """:class:`~consortium.control.backend.FleetView` of the API process."""

    def __init__(self, server: Caller) -> None:
        self.server = server

    def presence(self) -> tuple[list[str], list[str]]:
        reply = self.server.call("presence")
        return _names(reply, "online"), _names(reply, "missing")

    def identities(self) -> dict[str, tuple[str, str]]:
        found = take(self.server.call("identities"), "identities", dict)
        out = {}
        for name, pair in found.items():
            if not (
                isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
            ):
                raise ProtocolError("identities: expected [version, organisation] per node")
            out[str(name)] = (pair[0], pair[1])
        return out

    def heard_ago(self) -> dict[str, float]:
        found = take(self.server.call("heard_ago"), "heard_ago", dict)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in found.values()):
            raise ProtocolError("heard_ago: expected seconds per node")
        return {str(k): float(v) for k, v in found.items()}


class RemoteBans:
    """:class:`~consortium.control.backend.BanView` of the API process."""

    def __init__(self, server: Caller) -> None:
        self.server = server

    def reason(self, name: str) -> str | None:
        return take(self.server.call("ban_reason", name=name), "reason", str, optional=True)


class RemoteAudit:
    """An :class:`~consortium.core.audit.AuditSink` that has the server append the event:
    the audit log is a hash chain with one writer."""

    def __init__(self, server: Caller) -> None:
        self.server = server

    def __call__(self, event: AuditEvent) -> None:
        try:
            self.server.call("audit", event=event_to_json(event))
        except (Refused, ChannelClosed) as exc:
            raise OSError(f"the audit event was not recorded: {exc}") from None


def event_to_json(event: AuditEvent) -> dict[str, Any]:
    return {"actor": event.actor, "action": event.action, "outcome": event.outcome,
            "role": event.role, "organisation": event.organisation, "run_id": event.run_id,
            "target": event.target, "detail": dict(event.detail)}  # fmt: skip


def _names(reply: dict[str, Any], name: str) -> list[str]:
    value = take(reply, name, list)
    if not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"{name}: expected node names")
    return [str(v) for v in value]
