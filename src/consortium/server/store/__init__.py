"""The server's state store: runs, nodes, rounds and checkpoints in SQLite or PostgreSQL.

Needs the ``deploy`` extra (SQLAlchemy, psycopg); nothing else in
``consortium.server`` imports this package, so the base install stays light.
"""

from __future__ import annotations

from pathlib import Path

from consortium.core.errors import MissingDependencyError

try:
    import sqlalchemy  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError.for_extra("sqlalchemy", "deploy") from exc

from consortium.server.store.models import NodeEventKind, NodeStatus, RunStatus
from consortium.server.store.observer import StoreObserver
from consortium.server.store.store import StateStore
from consortium.server.store.views import (
    CheckpointView,
    NodeEventView,
    NodeResultView,
    NodeTiming,
    NodeView,
    RoundView,
    RunView,
)


def default_url(state_dir: Path) -> str:
    """The default store: ``sqlite:///<state_dir>/state.db``."""
    return f"sqlite:///{(state_dir / 'state.db').resolve()}"


__all__ = [
    "CheckpointView",
    "NodeEventKind",
    "NodeEventView",
    "NodeResultView",
    "NodeStatus",
    "NodeTiming",
    "NodeView",
    "RoundView",
    "RunStatus",
    "RunView",
    "StateStore",
    "StoreObserver",
    "default_url",
]
