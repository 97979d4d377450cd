"""StateStore: runs, nodes, rounds, node results, node events and checkpoints in a database.

One store is shared by every thread of a server (a gRPC thread pool): each
method opens its own short session and transaction, and returns frozen views,
never live ORM objects. Times come from an injected clock (aware UTC).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from consortium.core.errors import ConfigError, WireFormatError
from consortium.core.history import History, RoundRecord
from consortium.core.records import Config, check_config
from consortium.server.store import convert, migrate
from consortium.server.store.engine import READ_ONLY, create_store_engine, insert_new, parse_url
from consortium.server.store.models import (
    SCHEMA_VERSION,
    Base,
    CheckpointModel,
    MetaModel,
    NodeEventKind,
    NodeEventModel,
    NodeModel,
    NodeResultModel,
    NodeStatus,
    RoundModel,
    RunModel,
    RunStatus,
)
from consortium.server.store.observer import StoreObserver
from consortium.server.store.views import (
    CheckpointView,
    NodeEventView,
    NodeResultView,
    NodeTiming,
    NodeView,
    RoundView,
    RunView,
)

log = logging.getLogger("consortium.server.store")

Clock = Callable[[], datetime]
_TERMINAL = (RunStatus.FINISHED, RunStatus.FAILED, RunStatus.STOPPED)
_DIGEST = re.compile(r"crc32:[0-9a-f]{8}|sha256:[0-9a-f]{64}")
_INT64 = 2**63


def utc_now() -> datetime:
    return datetime.now(UTC)


class StateStore:
    """The server's state in SQLite (``sqlite:///path/state.db``) or PostgreSQL (by URL).

    The schema is created on first use (``metadata.create_all``); migrations
    are future work, so a store refuses a database whose schema is newer than
    its own.
    """

    def __init__(self, url: str, *, clock: Clock = utc_now) -> None:
        self.url = parse_url(url)
        self._clock = clock
        self._engine = create_store_engine(self.url)
        self._session = sessionmaker(self._engine, expire_on_commit=False)
        read_engine = self._engine.execution_options(**{READ_ONLY: True})
        self._read = sessionmaker(read_engine, expire_on_commit=False)
        # SQLite has one writer at a time anyway: queueing our threads here beats its
        # busy-wait, which sleeps in growing steps while another thread holds the lock
        self._write_lock: AbstractContextManager[Any] = (
            threading.Lock() if self.dialect == "sqlite" else nullcontext()
        )
        try:
            self._create_schema()
        except OperationalError as exc:
            self._engine.dispose()
            raise ConfigError(f"cannot open the state store {self.safe_url}: {exc.orig}") from exc
        except BaseException:
            self._engine.dispose()
            raise

    @property
    def safe_url(self) -> str:
        """The database URL with any password hidden, for logs and messages."""
        return self.url.render_as_string(hide_password=True)

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def observer(self, *, strict: bool = False) -> StoreObserver:
        """A RunObserver that records one run's rounds here (errors logged unless ``strict``)."""
        return StoreObserver(self, strict=strict)

    # -- runs ---------------------------------------------------------------------
    def create_run(
        self,
        *,
        run_id: str | None = None,
        app_name: str = "",
        app_version: str = "",
        config: Mapping[str, Any] | None = None,
        seed: int = 0,
        num_rounds: int | None = None,
    ) -> str:
        """Record a new run as ``pending``; returns its id (a fresh one if none is given)."""
        run_id = run_id or uuid.uuid4().hex[:12]
        if not -_INT64 <= seed < _INT64:
            raise ConfigError(f"seed {seed} does not fit in 64 bits")
        row = RunModel(
            id=run_id,
            app_name=app_name,
            app_version=app_version,
            config=_run_config(config or {}),
            status=RunStatus.PENDING,
            seed=seed,
            num_rounds=num_rounds,
            current_round=0,
            created_at=self._now(),
        )
        try:
            with self._write() as s:
                if s.get(RunModel, run_id) is not None:
                    raise ConfigError(f"run {run_id!r} already exists")
                s.add(row)
        except IntegrityError as exc:  # created by another thread in between
            raise ConfigError(f"run {run_id!r} already exists") from exc
        return run_id

    def set_run_status(
        self,
        run_id: str,
        status: RunStatus | str,
        *,
        error: str | None = None,
        num_rounds: int | None = None,
    ) -> None:
        """Move a run to ``status`` with ``error`` as its message (None clears it).

        A finished run stays finished; any other may run again (a resume).
        """
        status = RunStatus(status)
        now = self._now()
        with self._write() as s:
            run = _locked_run(s, run_id)
            if run.status is RunStatus.FINISHED and status is not RunStatus.FINISHED:
                raise ConfigError(f"run {run_id!r} has finished and cannot become {status}")
            run.status = status
            run.error = error
            if status is RunStatus.RUNNING:
                run.started_at = run.started_at or now
                run.finished_at = None
            elif status in _TERMINAL:
                run.finished_at = now
            if num_rounds is not None:
                run.num_rounds = num_rounds

    def get_run(self, run_id: str) -> RunView | None:
        with self._read() as s:
            row = s.get(RunModel, run_id)
            return None if row is None else convert.run_view(row)

    def list_runs(
        self, *, status: RunStatus | str | None = None, limit: int = 100
    ) -> list[RunView]:
        """Runs, newest first."""
        query = select(RunModel).order_by(RunModel.created_at.desc(), RunModel.id.desc())
        if status is not None:
            query = query.where(RunModel.status == RunStatus(status))
        with self._read() as s:
            return [convert.run_view(r) for r in s.scalars(query.limit(limit))]

    # -- rounds -------------------------------------------------------------------
    def record_round(
        self,
        run_id: str,
        record: RoundRecord,
        *,
        timings: Mapping[tuple[str, str], NodeTiming] | None = None,
    ) -> None:
        """Store a finished round; recording a round again (after a resume) replaces it.

        ``timings`` maps (node, stage) to where that node's time went, when known.
        """
        finished = self._now()
        timings = timings or {}
        with self._write() as s:
            run = _locked_run(s, run_id)
            where = (NodeResultModel.run_id == run_id, NodeResultModel.round == record.round)
            s.execute(delete(NodeResultModel).where(*where))
            s.execute(
                delete(RoundModel).where(
                    RoundModel.run_id == run_id, RoundModel.round == record.round
                )
            )
            s.add(convert.round_row(run_id, record, finished))
            s.flush()  # the round row first: node results reference it
            s.add_all(
                convert.node_result_row(run_id, record.round, n, timings.get((n.node_id, n.stage)))
                for n in record.nodes
            )
            run.current_round = max(run.current_round, record.round)

    def list_rounds(self, run_id: str) -> list[RoundView]:
        query = select(RoundModel).where(RoundModel.run_id == run_id).order_by(RoundModel.round)
        with self._read() as s:
            return [convert.round_view(r) for r in s.scalars(query)]

    def node_results(
        self, run_id: str, *, round: int | None = None, node: str | None = None
    ) -> list[NodeResultView]:
        """Per-node outcome and timing, by round, in the order the server recorded them."""
        query = select(NodeResultModel).where(NodeResultModel.run_id == run_id)
        if round is not None:
            query = query.where(NodeResultModel.round == round)
        if node is not None:
            query = query.where(NodeResultModel.node == node)
        query = query.order_by(NodeResultModel.round, NodeResultModel.id)
        with self._read() as s:
            return [convert.node_result_view(r) for r in s.scalars(query)]

    def run_history(self, run_id: str) -> History:
        """The run's rounds rebuilt as a core :class:`History`."""
        return convert.history(self.list_rounds(run_id), self.node_results(run_id))

    # -- nodes --------------------------------------------------------------------
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

    # -- checkpoints --------------------------------------------------------------
    def record_checkpoint(self, run_id: str, round: int, path: str, digest: str) -> None:
        """Remember the checkpoint written after ``round`` (replacing an earlier one);
        ``digest`` is its :func:`~consortium.server.checkpoint.checkpoint_digest`."""
        if not _DIGEST.fullmatch(digest):
            raise ConfigError(
                f"not a checkpoint digest (crc32:<8 hex> or sha256:<64 hex>): {digest!r}"
            )
        now = self._now()
        with self._write() as s:
            _locked_run(s, run_id)
            s.execute(
                delete(CheckpointModel).where(
                    CheckpointModel.run_id == run_id, CheckpointModel.round == round
                )
            )
            s.add(
                CheckpointModel(
                    run_id=run_id, round=round, path=path, digest=digest, created_at=now
                )
            )

    def latest_checkpoint(self, run_id: str) -> CheckpointView | None:
        """The checkpoint of the run's highest round, if any."""
        found = self.list_checkpoints(run_id, newest_first=True, limit=1)
        return found[0] if found else None

    def list_checkpoints(
        self, run_id: str, *, newest_first: bool = False, limit: int | None = None
    ) -> list[CheckpointView]:
        order: ColumnElement[Any] = (
            CheckpointModel.round.desc() if newest_first else CheckpointModel.round.asc()
        )
        query = select(CheckpointModel).where(CheckpointModel.run_id == run_id).order_by(order)
        with self._read() as s:
            return [convert.checkpoint_view(c) for c in s.scalars(query.limit(limit))]

    # -- internals ----------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[Session]:
        """A session in a write transaction, committed on success."""
        with self._write_lock, self._session.begin() as s:
            yield s

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ConfigError("the state store clock must return aware datetimes")
        return now

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

    def _create_schema(self) -> None:
        Base.metadata.create_all(self._engine)
        with self._write() as s:
            insert_new(s, MetaModel, key="schema_version", value=str(SCHEMA_VERSION))
            row = s.scalars(
                select(MetaModel).where(MetaModel.key == "schema_version").with_for_update()
            ).one()
            version = int(row.value)
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"the state store {self.safe_url} has schema version {row.value}; this "
                    f"Consortium knows up to {SCHEMA_VERSION}: upgrade Consortium"
                )
            if version < SCHEMA_VERSION:
                log.info(
                    "upgrading the state store %s from schema version %d to %d",
                    self.safe_url, version, SCHEMA_VERSION,
                )  # fmt: skip
                migrate.upgrade(s, version, SCHEMA_VERSION)
                row.value = str(SCHEMA_VERSION)


def _locked_run(s: Session, run_id: str) -> RunModel:
    run = s.scalars(select(RunModel).where(RunModel.id == run_id).with_for_update()).one_or_none()
    if run is None:
        raise ConfigError(f"no run with id {run_id!r} in the state store")
    return run


def _event(node: str, at: datetime, kind: NodeEventKind, detail: str = "") -> NodeEventModel:
    return NodeEventModel(node=node, at=at, kind=kind, detail=detail)


def _run_config(config: Mapping[str, Any]) -> Config:
    try:
        checked = check_config(config, what="run config")
        json.dumps(checked, allow_nan=False)
    except WireFormatError as exc:
        raise ConfigError(str(exc)) from exc
    except ValueError as exc:
        raise ConfigError(f"run config holds NaN or infinity: {exc}") from exc
    return checked
