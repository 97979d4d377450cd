"""The REST API's run endpoints: start, list, show, stop, metrics, model, events."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from consortium.control import models
from consortium.control.guard import ApiError
from consortium.control.models import FORMAT_PATTERN
from consortium.control.registry import RunEntry
from consortium.control.timeline import Timeline
from consortium.control.views import ModelFormat, export_model, failed_nodes, round_json, sse
from consortium.core import audit
from consortium.core.arrays import Arrays
from consortium.core.errors import ConsortiumError, MissingDependencyError
from consortium.core.history import RoundRecord
from consortium.transport.authz import DOWNLOAD_MODEL, READ_RUNS, START_RUN, STOP_RUN

if TYPE_CHECKING:
    from consortium.control.api import ApiContext
    from consortium.server.store import StateStore

log = logging.getLogger("consortium.control")
#: what an event stream sends when nothing happened for a while (an SSE comment)
KEEPALIVE = b": keep-alive\n\n"

#: run states after which nothing more happens to a run
TERMINAL = ("finished", "failed", "stopped", "interrupted")
ScalarValue = bool | int | float | str


class StartRun(BaseModel):
    """``POST /api/v1/runs``: which uploaded app, and how to run it."""

    model_config = ConfigDict(extra="forbid")

    app: str = Field(min_length=1, description="The app's name (see GET /api/v1/apps).")
    version: str | None = Field(default=None, description="Default: the newest upload.")
    run_config: dict[str, ScalarValue | list[ScalarValue]] = Field(
        default_factory=dict, description="Overrides of the app's [run-config]."
    )
    seed: int | None = Field(default=None, ge=0, lt=2**63, description="Default: random.")
    nodes: list[Annotated[str, Field(min_length=1, max_length=255)]] | None = Field(
        default=None,
        min_length=1,
        max_length=10_000,
        description="The only nodes that take part (ids of GET /api/v1/nodes). "
        "Default: every online node.",
    )


def run_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(tags=["runs"])
    guard, runs = ctx.guard, ctx.runs

    @router.post("/runs", status_code=201)
    def start_run(request: Request, body: StartRun) -> dict[str, Any]:
        """Start a run of an uploaded app; its id."""
        who = guard.require(request, START_RUN, audit.RUN_START)
        facts: dict[str, Any] = {"app": body.app, "token": who.token_id}

        def failed(status: int, code: str, message: str, field: str) -> ApiError:
            guard.record(who.caller, audit.RUN_START, "failed", detail={**facts, "error": message})
            return ApiError(status, code, message, field=field)

        chosen = None
        if body.nodes is not None:
            chosen = sorted(set(body.nodes))
            why = _unchoosable(ctx, chosen)
            if why is not None:
                raise failed(422, "invalid", why, "nodes")
            facts["nodes"] = chosen
        try:
            entry = ctx.registry.find(body.app, body.version)
        except LookupError as exc:
            raise failed(404, "not-found", str(exc), "app") from None
        seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
        facts.update(app_version=entry.version, bundle_sha256=entry.sha256, seed=seed)
        try:
            bundle = ctx.registry.bundle(entry)
            run_id = runs.start_run(bundle, json.dumps(body.run_config), seed, nodes=chosen)
        except ConsortiumError as exc:
            raise failed(422, "invalid", str(exc), "run_config") from None
        except Exception as exc:  # the server's fault, not the request's: still audited
            log.exception("REST API: run of %s %s could not start", entry.name, entry.version)
            raise failed(500, "internal", f"the run could not start: {exc}", "app") from None
        started = RunEntry(run_id, entry.name, entry.version, entry.sha256, who.caller.name,
                           who.caller.role, time.time(), chosen)  # fmt: skip
        ctx.registry.record_run(started)
        guard.record(who.caller, audit.RUN_START, "ok", run_id=run_id, detail=facts)
        return {"run_id": run_id}

    @router.get("/runs")
    def list_runs(request: Request) -> dict[str, Any]:
        """The newest runs, newest first."""
        guard.require(request, READ_RUNS, audit.RUN_LIST)
        return {"runs": runs.list_runs()}

    @router.get("/runs/{run_id}")
    def show_run(request: Request, run_id: str) -> dict[str, Any]:
        """Status, config, app (name, version, sha256), who started it, timings, rounds."""
        guard.require(request, READ_RUNS, audit.RUN_SHOW, run_id=run_id)
        return _detail(ctx, run_id)

    @router.post("/runs/{run_id}/stop")
    def stop_run(request: Request, run_id: str) -> dict[str, Any]:
        """Ask a running run to stop at the end of its round (``stopped``: whether it was
        running here to be stopped)."""
        who = guard.require(request, STOP_RUN, audit.RUN_STOP, run_id=run_id)
        if runs.store.get_run(run_id) is None:
            why = f"run_id: no run {run_id!r}"
            guard.record(who.caller, audit.RUN_STOP, "failed", run_id=run_id,
                         detail={"error": why, "token": who.token_id})  # fmt: skip
            raise ApiError(404, "not-found", why, field="run_id")
        stopped = runs.stop_run(run_id)
        guard.record(who.caller, audit.RUN_STOP, "ok", run_id=run_id,
                     detail={"stopped": stopped, "token": who.token_id})  # fmt: skip
        return {"run_id": run_id, "stopped": stopped}

    @router.get("/runs/{run_id}/metrics")
    def metrics(request: Request, run_id: str) -> dict[str, Any]:
        """Per round: the aggregated metrics and each node's train/evaluate metrics,
        examples and durations."""
        guard.require(request, READ_RUNS, audit.RUN_SHOW, run_id=run_id)
        record = runs.record(run_id)
        if record is None:
            raise ApiError(404, "not-found", f"run_id: no run {run_id!r}", field="run_id")
        return {
            "run_id": run_id,
            "status": record.status.value,
            "rounds": [round_json(r) for r in record.rounds],
        }

    @router.get("/runs/{run_id}/model", response_class=Response)
    def model(
        request: Request,
        run_id: str,
        format: Annotated[
            str,
            Query(
                pattern=FORMAT_PATTERN,
                description="npz, safetensors, or an export of the app's own (e.g. joblib; "
                "GET /runs/{id} lists them as model_formats)",
            ),
        ] = "npz",
        round: Annotated[
            int | None,
            Query(
                ge=1,
                le=2**31,
                description="The model after this round (default: the "
                "final one). Only the last rounds' models are kept.",
            ),
        ] = None,
    ) -> Response:
        """The run's final global model (before it ends, its newest checkpointed one), or
        the model after a given round while that round's checkpoint is kept."""
        who = guard.require(request, DOWNLOAD_MODEL, audit.MODEL_DOWNLOAD, run_id=run_id)
        try:
            data = _model_file(ctx, run_id, format, round)
        except ApiError as exc:
            guard.record(who.caller, audit.MODEL_DOWNLOAD, "failed", run_id=run_id,
                         detail={"error": exc.message, "token": who.token_id})  # fmt: skip
            raise
        facts = {"format": format, "round": round, "bytes": len(data),
                 "sha256": hashlib.sha256(data).hexdigest(), "token": who.token_id}  # fmt: skip
        guard.record(who.caller, audit.MODEL_DOWNLOAD, "ok", run_id=run_id, detail=facts)
        name = f"{run_id}-round{round}" if round is not None else run_id
        headers = {"Content-Disposition": f'attachment; filename="{name}.{format}"'}
        return Response(data, media_type="application/octet-stream", headers=headers)

    @router.get("/runs/{run_id}/events", response_class=StreamingResponse)
    async def events(
        request: Request,
        run_id: str,
        after: Annotated[int, Query(ge=0, description="Skip rounds up to this one.")] = 0,
    ) -> StreamingResponse:
        """Server-Sent Events: ``round_finished``, ``node_failed``, ``run_finished``."""
        await run_in_threadpool(guard.require, request, READ_RUNS, audit.RUN_SHOW, run_id=run_id)
        # shared with the run's open streams: a crowd of dashboards opening at once
        # reads the run once, not once each
        if await ctx.events.timeline(run_id, partial(_timeline, runs.store)) is None:
            raise ApiError(404, "not-found", f"run_id: no run {run_id!r}", field="run_id")
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(
            _stream(ctx, run_id, after), media_type="text/event-stream", headers=headers
        )

    return router


async def _stream(ctx: ApiContext, run_id: str, after: int) -> AsyncIterator[bytes]:
    """Each round once (and its failed nodes), then the run's end; keep-alives between.
    What a change brings is one write: the bytes the run's streams share (a Timeline)."""
    watcher = ctx.events.subscribe(run_id, asyncio.get_running_loop())
    load = partial(_timeline, ctx.runs.store)
    sent, spoke = after, time.monotonic()
    try:
        while True:
            timeline = await ctx.events.timeline(run_id, load)
            if timeline is None:
                return
            chunk = timeline.since(sent)
            if chunk:
                yield chunk
                sent, spoke = max(sent, timeline.last), time.monotonic()
            if timeline.end:  # it was in that chunk
                return
            if ctx.events.closed:
                return
            # once the app said it ended, its status is written within moments
            woken = await watcher.wait(0.25 if watcher.ending else ctx.keepalive)
            if not woken and time.monotonic() - spoke >= ctx.keepalive:
                yield KEEPALIVE
                spoke = time.monotonic()
    finally:
        watcher.close()


def _unchoosable(ctx: ApiContext, chosen: list[str]) -> str | None:
    """Why ``chosen`` cannot be a run's nodes (None: it can): each must be a node this
    server knows (allow-listed, or seen), not banned, revoked or off the allow-list."""
    known = {n.name: n for n in ctx.runs.store.list_nodes()}
    online, missing = ctx.fleet.presence()
    unknown = [n for n in chosen if n not in known and n not in online and n not in missing]
    if unknown:
        return (f"nodes: no node {', '.join(map(repr, unknown[:10]))} on this server "
                "(GET /api/v1/nodes lists them)")  # fmt: skip
    banned = [n for n in chosen if ctx.bans is not None and ctx.bans.reason(n) is not None]
    refused = [n for n in chosen if n in known and not known[n].allowed]
    if banned or refused:
        names = ", ".join(map(repr, sorted({*banned, *refused})[:10]))
        return f"nodes: {names} may not take part (banned, revoked or not allow-listed)"
    return None


def _model_file(ctx: ApiContext, run_id: str, fmt: str, rnd: int | None) -> bytes:
    """The bytes ``GET /runs/{id}/model`` answers with, or the ApiError saying why not."""
    view = ctx.runs.store.get_run(run_id)
    if view is None:
        raise ApiError(404, "not-found", f"run_id: no run {run_id!r}", field="run_id")
    folder = models.run_dir(Path(ctx.runs.root), run_id)
    finished = view.status.value == "finished"
    last = view.rounds_done
    if fmt not in models.BUILT_IN:
        found = models.exports(folder)
        if fmt not in found:
            known = ", ".join(models.formats(folder) if finished else models.BUILT_IN)
            why = (f"format: run {run_id!r} has no {fmt!r} model (the app exports none, or "
                   f"the run has not finished); formats: {known}")  # fmt: skip
            raise ApiError(404, "not-found", why, field="format")
        if rnd is not None and rnd != last:
            why = f"round: the app's {fmt!r} export is of the final model (round {last}) only"
            raise ApiError(404, "not-found", why, field="round")
        return found[fmt].read_bytes()
    if rnd is None or (finished and rnd == last):
        wire = ctx.runs.global_model(run_id)
    else:
        wire = models.round_model(folder, rnd)
    if wire is None and rnd is not None:
        kept = ", ".join(map(str, models.kept_rounds(folder))) or "none"
        why = (f"round: the model of round {rnd} of run {run_id!r} is not kept: a run keeps "
               f"its final model and its last rounds' checkpoints (kept: {kept})")  # fmt: skip
        raise ApiError(404, "not-found", why, field="round")
    if wire is None:
        why = f"run {run_id!r} has no global model (none saved yet)"
        raise ApiError(404, "not-found", why, field="run_id")
    try:
        return export_model(Arrays.from_bytes(wire), cast(ModelFormat, fmt))
    except MissingDependencyError as exc:
        raise ApiError(501, "unavailable", str(exc), field="format") from None


def _timeline(store: StateStore, run_id: str, known: Timeline | None) -> Timeline | None:
    """The run's events now (None: no such run): ``known``'s (those of its last change)
    and those of the rounds recorded since, read alone (not the whole run again)."""
    view = store.get_run(run_id)
    if view is None:
        return None
    if known is None or view.rounds_done < len(known.rounds):  # rounds were replaced
        known = Timeline()
    new = []
    if view.rounds_done > len(known.rounds):
        for r in store.run_history(run_id, after=known.last).rounds:
            new.append((r.round, _round_events(run_id, r).encode()))
    end = b""
    status = view.status.value
    if status in TERMINAL:  # written after the run's last round
        facts = {"run_id": run_id, "status": status, "error": view.error or "",
                 "rounds_done": len(known.rounds) + len(new)}  # fmt: skip
        end = sse("run_finished", json.dumps(facts)).encode()
    return known.extended(new, end)


def _round_events(run_id: str, r: RoundRecord) -> str:
    """A finished round's ``round_finished`` event and its ``node_failed`` ones."""
    events = [sse("round_finished", json.dumps({"run_id": run_id, **round_json(r)}),
                  event_id=str(r.round))]  # fmt: skip
    events += [sse("node_failed", json.dumps(failure)) for failure in failed_nodes(run_id, r)]
    return "".join(events)


def _detail(ctx: ApiContext, run_id: str) -> dict[str, Any]:
    shown = ctx.runs.show_run(run_id)
    view = ctx.runs.store.get_run(run_id)
    if shown is None or view is None:
        raise ApiError(404, "not-found", f"run_id: no run {run_id!r}", field="run_id")
    started = ctx.registry.run(run_id)
    record = ctx.runs.record(run_id)
    folder = models.run_dir(Path(ctx.runs.root), run_id)
    finished = view.status.value == "finished"
    return {
        **shown,
        # NaN and infinite metrics as null (JSON has neither), node metrics included
        "rounds": [round_json(r) for r in record.rounds] if record is not None else [],
        "nodes": None if started is None else started.nodes,
        "model_formats": models.formats(folder) if finished else list(models.BUILT_IN),
        "kept_rounds": models.kept_rounds(folder),
        "app_name": view.app_name,
        "app_version": view.app_version,
        "app_sha256": _bundle_sha256(ctx, run_id),
        "seed": view.seed,
        "num_rounds": view.num_rounds,
        "started": None if view.started_at is None else view.started_at.timestamp(),
        # runs started over gRPC (`consortium run start`) are in the audit log instead
        "started_by": None if started is None else started.started_by,
        "started_by_role": None if started is None else started.role,
    }


def _bundle_sha256(ctx: ApiContext, run_id: str) -> str | None:
    """The digest of the bundle the run was started from (kept in its run folder)."""
    path = Path(ctx.runs.root) / "runs" / run_id / "bundle.zip"
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
