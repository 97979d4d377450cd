"""StateStore: runs, nodes, rounds, node results, node events and checkpoints in a database.

One store is shared by every thread of a server (a gRPC thread pool): each
method opens its own short session and transaction, and returns frozen views,
never live ORM objects. Times come from an injected clock (aware UTC). The
plumbing is in :mod:`~consortium.server.store.base`, the nodes' half in
:mod:`~consortium.server.store.nodes`, the audit log's rows in
:mod:`~consortium.server.store.audit_records`; runs, rounds and checkpoints are here.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from consortium.core.errors import ConfigError, WireFormatError
from consortium.core.history import History, RoundRecord
from consortium.core.records import Config, check_config
from consortium.server.store import convert
from consortium.server.store.audit_records import AuditRecords
from consortium.server.store.models import (
    CheckpointModel,
    NodeResultModel,
    RoundModel,
    RunModel,
    RunStatus,
)
from consortium.server.store.nodes import NodeRecords
from consortium.server.store.observer import StoreObserver
from consortium.server.store.views import (
    CheckpointView,
    NodeResultView,
    NodeTiming,
    RoundView,
    RunView,
)

_TERMINAL = (RunStatus.FINISHED, RunStatus.FAILED, RunStatus.STOPPED, RunStatus.INTERRUPTED)
_DIGEST = re.compile(r"crc32:[0-9a-f]{8}|sha256:[0-9a-f]{64}")
_INT64 = 2**63
#: How many rounds a run has recorded, next to each run row read.
_ROUNDS_DONE = (
    select(func.count())
    .select_from(RoundModel)
    .where(RoundModel.run_id == RunModel.id)
    .correlate(RunModel)
    .scalar_subquery()
)


class StateStore(NodeRecords, AuditRecords):
    """The server's state in SQLite (``sqlite:///path/state.db``) or PostgreSQL (by URL).

    The schema is created on first use (``metadata.create_all``) and an older
    one is upgraded in place (:mod:`~consortium.server.store.migrate`); a
    database whose schema is newer than this store's is refused.
    """

    def observer(self, *, strict: bool = False, record_end: bool = True) -> StoreObserver:
        """A RunObserver that records one run's rounds here (errors logged unless ``strict``;
        ``record_end=False`` leaves the run's final status to the caller)."""
        return StoreObserver(self, strict=strict, record_end=record_end)

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
        query = select(RunModel, _ROUNDS_DONE).where(RunModel.id == run_id)
        with self._read() as s:
            found = s.execute(query).one_or_none()
            return None if found is None else convert.run_view(*found)

    def list_runs(
        self, *, status: RunStatus | str | None = None, limit: int | None = 100
    ) -> list[RunView]:
        """Runs, newest first (``limit=None``: all of them)."""
        query = select(RunModel, _ROUNDS_DONE).order_by(
            RunModel.created_at.desc(), RunModel.id.desc()
        )
        if status is not None:
            query = query.where(RunModel.status == RunStatus(status))
        with self._read() as s:
            return [convert.run_view(r, n) for r, n in s.execute(query.limit(limit))]

    # -- rounds -------------------------------------------------------------------
    def record_round(
        self,
        run_id: str,
        record: RoundRecord,
        *,
        timings: Mapping[tuple[str, str], NodeTiming] | None = None,
    ) -> None:
        """Store a finished round; recording a round again (after a resume) replaces it.

        Each node's timing comes from its result's ``timing``, unless ``timings``
        maps its (node, stage) to where that node's time went.
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

    def list_rounds(self, run_id: str, *, after: int = 0) -> list[RoundView]:
        """The run's rounds in order; ``after``: only those numbered above it."""
        query = select(RoundModel).where(RoundModel.run_id == run_id, RoundModel.round > after)
        query = query.order_by(RoundModel.round)
        with self._read() as s:
            return [convert.round_view(r) for r in s.scalars(query)]

    def node_results(
        self, run_id: str, *, round: int | None = None, node: str | None = None, after: int = 0
    ) -> list[NodeResultView]:
        """Per-node outcome and timing, by round, in the order the server recorded them
        (``after``: of the rounds numbered above it only)."""
        query = select(NodeResultModel).where(NodeResultModel.run_id == run_id)
        if after:
            query = query.where(NodeResultModel.round > after)
        if round is not None:
            query = query.where(NodeResultModel.round == round)
        if node is not None:
            query = query.where(NodeResultModel.node == node)
        query = query.order_by(NodeResultModel.round, NodeResultModel.id)
        with self._read() as s:
            return [convert.node_result_view(r) for r in s.scalars(query)]

    def run_history(self, run_id: str, *, after: int = 0) -> History:
        """The run's rounds rebuilt as a core :class:`History`; ``after``: only the rounds
        numbered above it (what a reader that has rounds up to ``after`` lacks: an event
        stream reads each round once, not the whole run on every change)."""
        rounds = self.list_rounds(run_id, after=after)
        return convert.history(rounds, self.node_results(run_id, after=after))

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


def _locked_run(s: Session, run_id: str) -> RunModel:
    run = s.scalars(select(RunModel).where(RunModel.id == run_id).with_for_update()).one_or_none()
    if run is None:
        raise ConfigError(f"no run with id {run_id!r} in the state store")
    return run


def _run_config(config: Mapping[str, Any]) -> Config:
    try:
        checked = check_config(config, what="run config")
        json.dumps(checked, allow_nan=False)
    except WireFormatError as exc:
        raise ConfigError(str(exc)) from exc
    except ValueError as exc:
        raise ConfigError(f"run config holds NaN or infinity: {exc}") from exc
    return checked
