"""The state store's tables, as typed SQLAlchemy 2.0 ORM models.

The schema is created with ``metadata.create_all``; ``consortium_meta`` holds
its version, and :mod:`consortium.server.store.migrate` upgrades an older
database when a store opens it. Statuses are plain strings with CHECK constraints, not native
PostgreSQL enums, so adding a value later needs no type migration.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Enum,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from consortium.core.history import Outcome
from consortium.core.records import Config, Metrics
from consortium.server.store.append_only import forbid_changes
from consortium.server.store.types import MetricsJSON, UTCDateTime

#: Bumped by every schema change; a store refuses a database newer than it knows.
SCHEMA_VERSION = 5

# an autoincrementing 64-bit key (SQLite only autoincrements INTEGER PRIMARY KEY)
_BigId = BigInteger().with_variant(Integer, "sqlite")


class RunStatus(StrEnum):
    """Where a run is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"
    #: the server stopped (SIGTERM, crash, outage) while the run was under way: resumable
    INTERRUPTED = "interrupted"


class NodeStatus(StrEnum):
    """Whether a node is connected (heartbeats arriving) or not."""

    ONLINE = "online"
    OFFLINE = "offline"


class NodeEventKind(StrEnum):
    """What happened to a node (heartbeats themselves are not logged, only changes)."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    HEARTBEAT_MISSED = "heartbeat-missed"
    REFUSED = "refused"
    ALLOW_LISTED = "allow-listed"
    REVOKED = "revoked"


def _enum(cls: type[StrEnum], name: str) -> Enum:
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=20,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime}


class MetaModel(Base):
    """Key/value facts about the database itself (the schema version)."""

    __tablename__ = "consortium_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class RunModel(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    app_name: Mapped[str] = mapped_column(String(255), default="")
    app_version: Mapped[str] = mapped_column(String(64), default="")
    config: Mapped[Config] = mapped_column(JSON)
    status: Mapped[RunStatus] = mapped_column(_enum(RunStatus, "run_status"), index=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    num_rounds: Mapped[int | None]
    current_round: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)


class NodeModel(Base):
    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    status: Mapped[NodeStatus] = mapped_column(_enum(NodeStatus, "node_status"), index=True)
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime | None]
    allow_listed: Mapped[bool] = mapped_column(default=False)
    revoked: Mapped[bool] = mapped_column(default=False)
    cert_serial: Mapped[str | None] = mapped_column(String(128))


class RoundModel(Base):
    __tablename__ = "rounds"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    round: Mapped[int] = mapped_column(primary_key=True)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]
    train_metrics: Mapped[Metrics] = mapped_column(MetricsJSON)
    evaluate_metrics: Mapped[Metrics] = mapped_column(MetricsJSON)
    central_metrics: Mapped[Metrics] = mapped_column(MetricsJSON)
    seconds: Mapped[float] = mapped_column(Float)


class NodeResultModel(Base):
    """One node's part in one stage of one round; ``id`` keeps the order it was recorded in.

    A node may appear twice in one stage: a FedBuff step can fold two updates
    of a fast node (schema version 3 dropped a unique constraint that said no).
    """

    __tablename__ = "node_results"
    __table_args__ = (
        ForeignKeyConstraint(
            ["run_id", "round"], ["rounds.run_id", "rounds.round"], ondelete="CASCADE"
        ),
        Index("ix_node_results_run_round", "run_id", "round"),
        Index("ix_node_results_node", "node", "run_id"),
    )

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64))
    round: Mapped[int]
    # no foreign key: simulated nodes never appear in the nodes table
    node: Mapped[str] = mapped_column(String(255))
    stage: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[Outcome] = mapped_column(_enum(Outcome, "node_outcome"))
    metrics: Mapped[Metrics] = mapped_column(MetricsJSON)
    num_examples: Mapped[int] = mapped_column(BigInteger, default=0)
    reason: Mapped[str] = mapped_column(Text, default="")
    traceback: Mapped[str] = mapped_column(Text, default="")
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    train_seconds: Mapped[float | None] = mapped_column(Float)
    upload_seconds: Mapped[float | None] = mapped_column(Float)
    wait_seconds: Mapped[float | None] = mapped_column(Float)


class NodeEventModel(Base):
    """An audit log of node changes; ``node`` is free text so refused strangers are logged too."""

    __tablename__ = "node_events"
    __table_args__ = (Index("ix_node_events_node_at", "node", "at"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    node: Mapped[str] = mapped_column(String(255))
    at: Mapped[datetime] = mapped_column(index=True)
    kind: Mapped[NodeEventKind] = mapped_column(_enum(NodeEventKind, "node_event_kind"))
    detail: Mapped[str] = mapped_column(Text, default="")


class CheckpointModel(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "round"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    round: Mapped[int]
    path: Mapped[str] = mapped_column(Text)
    #: "crc32:<8 hex>", or "sha256:<64 hex>" for a checkpoint of format version 1
    digest: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime]


class AuditLogModel(Base):
    """The hash-chained audit log (:mod:`consortium.server.store.audit`): append-only.

    ``seq`` counts from 1 with no gaps; ``hash`` is the SHA-256 of the entry's
    canonical encoding (every other column, ``prev_hash`` included), so an entry
    edited, removed or moved breaks the chain. ``time`` is text (``…T…Z``) so the
    hashed value is exactly the stored one on both backends. Triggers refuse
    UPDATE and DELETE (:func:`~consortium.server.store.append_only.forbid_changes`).
    """

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_run", "run_id", "seq"),
        Index("ix_audit_log_actor", "actor", "seq"),
        Index("ix_audit_log_action", "action", "seq"),
    )

    # assigned by the appender, never autoincremented: a gap must mean a removal
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    time: Mapped[str] = mapped_column(String(32), index=True)
    actor: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(64))
    organisation: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    run_id: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(Text)
    #: canonical JSON (sorted keys, no spaces)
    detail: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


event.listen(AuditLogModel.__table__, "after_create", forbid_changes)
