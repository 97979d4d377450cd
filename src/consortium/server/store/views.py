"""Read-only snapshots the state store hands out (never live ORM objects)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from consortium.core.history import Outcome
from consortium.core.records import Config, Metrics
from consortium.server.store.models import NodeEventKind, NodeStatus, RunStatus


@dataclass(frozen=True, slots=True)
class RunView:
    """One run, as ``consortium run list`` shows it."""

    id: str
    app_name: str
    app_version: str
    config: Config
    status: RunStatus
    seed: int
    num_rounds: int | None
    current_round: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    #: how many rounds (or steps) the run has recorded
    rounds_done: int = 0


@dataclass(frozen=True, slots=True)
class RoundView:
    """One finished round's global metrics and how long it took."""

    round: int
    started_at: datetime
    finished_at: datetime
    train_metrics: Metrics
    evaluate_metrics: Metrics
    central_metrics: Metrics
    seconds: float


@dataclass(frozen=True, slots=True)
class NodeTiming:
    """Where a node's time went in one stage of a round, when the transport can tell."""

    train_seconds: float | None = None
    upload_seconds: float | None = None
    wait_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class NodeResultView:
    """One node's part in one stage of one round, with its timing."""

    round: int
    node: str
    stage: str
    outcome: Outcome
    metrics: Metrics
    num_examples: int
    reason: str
    traceback: str
    seconds: float
    timing: NodeTiming = field(default_factory=NodeTiming)


@dataclass(frozen=True, slots=True)
class NodeView:
    """A node the server knows: connection status, access and identity."""

    name: str
    status: NodeStatus
    first_seen: datetime
    last_seen: datetime | None
    allow_listed: bool
    revoked: bool
    cert_serial: str | None

    @property
    def allowed(self) -> bool:
        """May this node connect: allow-listed and not revoked."""
        return self.allow_listed and not self.revoked


@dataclass(frozen=True, slots=True)
class NodeEventView:
    """One entry of the node audit log."""

    node: str
    at: datetime
    kind: NodeEventKind
    detail: str


@dataclass(frozen=True, slots=True)
class CheckpointView:
    """A checkpoint file written after a round, and the checksum it carries
    (``"crc32:<8 hex>"``; ``"sha256:<64 hex>"`` for a version-1 file)."""

    run_id: str
    round: int
    path: str
    digest: str
    created_at: datetime
