"""The node half of the state store: registration, access, liveness and the audit log."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from consortium.server.store import convert
from consortium.server.store.base import StoreBase
from consortium.server.store.engine import insert_new
from consortium.server.store.models import NodeEventKind, NodeEventModel, NodeModel, NodeStatus
from consortium.server.store.views import NodeEventView, NodeView


class NodeRecords(StoreBase):
    """Nodes the server knows and what happened to them (a part of ``StateStore``)."""

    def upsert_node(
        self,
        name: str,
        *,
        allow_listed: bool | None = None,
        revoked: bool | None = None,
        cert_serial: str | None = None,
    ) -> NodeView:
        """Register a node (offline until it heartbeats) or change its access; logs changes."""
        now = self._now()
        with self._write() as s:
            node = self._locked_node(s, name, now)
            if allow_listed is not None and allow_listed != node.allow_listed:
                node.allow_listed = allow_listed
                detail = "added" if allow_listed else "removed"
                s.add(_event(name, now, NodeEventKind.ALLOW_LISTED, detail))
            if revoked is not None and revoked != node.revoked:
                node.revoked = revoked
                detail = "revoked" if revoked else "reinstated"
                s.add(_event(name, now, NodeEventKind.REVOKED, detail))
            if cert_serial is not None:
                node.cert_serial = cert_serial
            return convert.node_view(node)

    def heartbeat(self, name: str) -> bool:
        """Note that ``name`` is alive now; True when it just came (back) online."""
        now = self._now()
        with self._write() as s:
            node = self._locked_node(s, name, now)
            node.last_seen = now
            if node.status is NodeStatus.ONLINE:
                return False
            node.status = NodeStatus.ONLINE
            s.add(_event(name, now, NodeEventKind.CONNECTED))
            return True

    def disconnect(self, name: str, detail: str = "") -> None:
        """A node said goodbye (or its stream closed): offline, and logged."""
        now = self._now()
        with self._write() as s:
            node = self._locked_node(s, name, now)
            node.status = NodeStatus.OFFLINE
            s.add(_event(name, now, NodeEventKind.DISCONNECTED, detail))

    def mark_offline(self, timeout: float) -> list[str]:
        """Mark online nodes silent for more than ``timeout`` seconds offline; returns them."""
        now = self._now()
        cutoff = now - timedelta(seconds=timeout)
        query = (
            select(NodeModel)
            .where(NodeModel.status == NodeStatus.ONLINE, NodeModel.last_seen < cutoff)
            .order_by(NodeModel.name)
            .with_for_update()
        )
        with self._write() as s:
            stale = list(s.scalars(query))
            for node in stale:
                node.status = NodeStatus.OFFLINE
                assert node.last_seen is not None
                silent = (now - node.last_seen).total_seconds()
                detail = f"no heartbeat for {silent:.1f}s (timeout {timeout:g}s)"
                s.add(_event(node.name, now, NodeEventKind.HEARTBEAT_MISSED, detail))
            return [n.name for n in stale]

    def get_node(self, name: str) -> NodeView | None:
        with self._read() as s:
            row = s.get(NodeModel, name)
            return None if row is None else convert.node_view(row)

    def list_nodes(self, *, status: NodeStatus | str | None = None) -> list[NodeView]:
        """Known nodes by name."""
        query = select(NodeModel).order_by(NodeModel.name)
        if status is not None:
            query = query.where(NodeModel.status == NodeStatus(status))
        with self._read() as s:
            return [convert.node_view(n) for n in s.scalars(query)]

    def record_node_event(self, name: str, kind: NodeEventKind | str, detail: str = "") -> None:
        """Log an event (``refused`` works for names the server has never registered)."""
        row = _event(name, self._now(), NodeEventKind(kind), detail)
        with self._write() as s:
            s.add(row)

    def list_node_events(self, name: str | None = None, *, limit: int = 100) -> list[NodeEventView]:
        """Node events, newest first."""
        query = select(NodeEventModel).order_by(NodeEventModel.at.desc(), NodeEventModel.id.desc())
        if name is not None:
            query = query.where(NodeEventModel.node == name)
        with self._read() as s:
            return [convert.node_event_view(e) for e in s.scalars(query.limit(limit))]

    def _locked_node(self, s: Session, name: str, now: datetime) -> NodeModel:
        """The node row, created offline if new, locked for this transaction."""
        insert_new(
            s,
            NodeModel,
            name=name,
            status=NodeStatus.OFFLINE,
            first_seen=now,
            allow_listed=False,
            revoked=False,
        )
        return s.scalars(select(NodeModel).where(NodeModel.name == name).with_for_update()).one()


def _event(node: str, at: datetime, kind: NodeEventKind, detail: str = "") -> NodeEventModel:
    return NodeEventModel(node=node, at=at, kind=kind, detail=detail)
