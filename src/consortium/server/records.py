"""Bridges from the live server (fleet, runs) to its state store."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from consortium.server.fleet_replies import EventSink

if TYPE_CHECKING:
    from consortium.server.store import StateStore

log = logging.getLogger("consortium.server")


def fleet_event_sink(store: StateStore) -> EventSink:
    """Record node connections, restarts, losses and refusals (never let the store stop
    the fleet)."""

    def sink(node: str, kind: str, detail: str) -> None:
        try:
            if kind in ("connected", "restarted"):
                store.heartbeat(node)
                if kind == "restarted":
                    store.record_node_event(node, "connected", f"restarted: {detail}")
            elif kind == "offline":
                store.record_node_event(node, "heartbeat-missed", detail)
                store.disconnect(node, detail)
            elif kind == "refused":
                store.record_node_event(node, "refused", detail)
                known = store.get_node(node)
                if known is not None and known.status == "online":
                    store.disconnect(node, "refused")
        except Exception as exc:  # the database is a record, not the federation's lifeline
            log.warning("state store: could not record %s for %s: %s", kind, node, exc)

    return sink
