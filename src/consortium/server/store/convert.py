"""Conversions between core records, ORM rows and the store's frozen views."""

from __future__ import annotations

from datetime import datetime, timedelta

from consortium.core.history import History, NodeResult, RoundRecord
from consortium.core.protocol import TIMING_TRAIN, TIMING_UPLOAD, TIMING_WAIT
from consortium.core.records import Metrics
from consortium.server.store.models import (
    CheckpointModel,
    NodeEventModel,
    NodeModel,
    NodeResultModel,
    RoundModel,
    RunModel,
)
from consortium.server.store.views import (
    CheckpointView,
    NodeEventView,
    NodeResultView,
    NodeTiming,
    NodeView,
    RoundView,
    RunView,
)


def round_row(run_id: str, record: RoundRecord, finished: datetime) -> RoundModel:
    return RoundModel(
        run_id=run_id,
        round=record.round,
        started_at=finished - timedelta(seconds=record.seconds),
        finished_at=finished,
        train_metrics=dict(record.train_metrics),
        evaluate_metrics=dict(record.evaluate_metrics),
        central_metrics=dict(record.central_metrics),
        seconds=record.seconds,
    )


def node_result_row(
    run_id: str, round: int, result: NodeResult, timing: NodeTiming | None
) -> NodeResultModel:
    timing = timing or node_timing(result) or NodeTiming()
    return NodeResultModel(
        run_id=run_id,
        round=round,
        node=result.node_id,
        stage=result.stage,
        outcome=result.outcome,
        metrics=dict(result.metrics),
        num_examples=result.num_examples,
        reason=result.reason,
        traceback=result.traceback,
        seconds=result.seconds,
        train_seconds=timing.train_seconds,
        upload_seconds=timing.upload_seconds,
        wait_seconds=timing.wait_seconds,
    )


def run_view(r: RunModel, rounds_done: int = 0) -> RunView:
    return RunView(
        id=r.id,
        app_name=r.app_name,
        app_version=r.app_version,
        config=dict(r.config),
        status=r.status,
        seed=r.seed,
        num_rounds=r.num_rounds,
        current_round=r.current_round,
        created_at=r.created_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
        error=r.error,
        rounds_done=rounds_done,
    )


def round_view(r: RoundModel) -> RoundView:
    return RoundView(
        round=r.round,
        started_at=r.started_at,
        finished_at=r.finished_at,
        train_metrics=r.train_metrics,
        evaluate_metrics=r.evaluate_metrics,
        central_metrics=r.central_metrics,
        seconds=r.seconds,
    )


def node_result_view(r: NodeResultModel) -> NodeResultView:
    return NodeResultView(
        round=r.round,
        node=r.node,
        stage=r.stage,
        outcome=r.outcome,
        metrics=r.metrics,
        num_examples=r.num_examples,
        reason=r.reason,
        traceback=r.traceback,
        seconds=r.seconds,
        timing=NodeTiming(r.train_seconds, r.upload_seconds, r.wait_seconds),
    )


def history(rounds: list[RoundView], results: list[NodeResultView]) -> History:
    """A core History from a run's rounds and node results."""
    by_round: dict[int, list[NodeResult]] = {}
    for r in results:
        by_round.setdefault(r.round, []).append(node_result(r))
    return History(
        [
            RoundRecord(
                round=v.round,
                train_metrics=dict(v.train_metrics),
                evaluate_metrics=dict(v.evaluate_metrics),
                central_metrics=dict(v.central_metrics),
                nodes=by_round.get(v.round, []),
                seconds=v.seconds,
            )
            for v in rounds
        ]
    )


def node_result(v: NodeResultView) -> NodeResult:
    return NodeResult(
        node_id=v.node,
        stage=v.stage,
        outcome=v.outcome,
        metrics=dict(v.metrics),
        num_examples=v.num_examples,
        reason=v.reason,
        traceback=v.traceback,
        seconds=v.seconds,
        timing=timing_metrics(v.timing),
    )


def node_timing(result: NodeResult) -> NodeTiming | None:
    """Where a node's time went, from the timing its reply carried (None if it carried none)."""
    if not result.timing:
        return None
    return NodeTiming(
        train_seconds=result.timing.get(TIMING_TRAIN),
        upload_seconds=result.timing.get(TIMING_UPLOAD),
        wait_seconds=result.timing.get(TIMING_WAIT),
    )


def timing_metrics(timing: NodeTiming) -> Metrics:
    """The inverse of :func:`node_timing`: the keys the transport knew, in seconds (in the
    order the fleet adds them to a reply, so a record reads back as it was made)."""
    known = (
        (TIMING_TRAIN, timing.train_seconds),
        (TIMING_WAIT, timing.wait_seconds),
        (TIMING_UPLOAD, timing.upload_seconds),
    )
    return {key: seconds for key, seconds in known if seconds is not None}


def node_view(n: NodeModel) -> NodeView:
    return NodeView(
        name=n.name,
        status=n.status,
        first_seen=n.first_seen,
        last_seen=n.last_seen,
        allow_listed=n.allow_listed,
        revoked=n.revoked,
        cert_serial=n.cert_serial,
    )


def node_event_view(e: NodeEventModel) -> NodeEventView:
    return NodeEventView(node=e.node, at=e.at, kind=e.kind, detail=e.detail)


def checkpoint_view(c: CheckpointModel) -> CheckpointView:
    return CheckpointView(
        run_id=c.run_id, round=c.round, path=c.path, digest=c.digest, created_at=c.created_at
    )
