"""The REST API's app factory: ``create_api(...)``, served under ``/api/v1``.

Every endpoint but ``GET /api/v1/health`` needs a bearer token
(:mod:`consortium.control.tokens`); reads need ``read-runs``, each write the
action the server's policy grants for it (the same
:class:`~consortium.transport.authz.AuthzPolicy` object as the gRPC Control
API, so one policy governs the CLI and REST). Every error is a JSON body
``{"error": {"status", "code", "message", "field"?}}``: 401 and 403 for who,
404 for what is not there, 413 for a bundle over the limit, 422 for a request
naming a bad field; an unexpected failure is a logged 500 with the same shape.
The run endpoints live in :mod:`consortium.control.run_routes`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from consortium._version import __version__
from consortium.apps.bundle import BundleRejected
from consortium.control.backend import BanView, FleetView, RunsBackend
from consortium.control.events import RunEvents
from consortium.control.guard import ApiError, Guard
from consortium.control.openapi import document_errors
from consortium.control.registry import AppRegistry
from consortium.core.audit import APP_LIST, APP_UPLOAD
from consortium.core.errors import ConfigError
from consortium.server.fleet_grid import REPLIES
from consortium.server.store import RunStatus
from consortium.transport.authz import READ_RUNS, UPLOAD_APP

log = logging.getLogger("consortium.control")

PREFIX = "/api/v1"
#: the audit action of reading the node list (only refusals are recorded)
NODE_LIST = "node.list"


@dataclass(frozen=True)
class ApiContext:
    """What the routes reach: the server's runs, fleet and store, the guard, the apps
    (the server's own objects, or their proxies in the API process: :mod:`.backend`)."""

    runs: RunsBackend
    fleet: FleetView
    guard: Guard
    registry: AppRegistry
    events: RunEvents
    #: seconds between keep-alive comments on an idle event stream
    keepalive: float = 15.0
    #: the server's ban list (``consortium fleet ban``): banned nodes cannot be chosen
    bans: BanView | None = None


def create_api(context: ApiContext) -> FastAPI:
    """The FastAPI app of one server (OpenAPI at ``/openapi.json``)."""
    from consortium.control.audit_routes import audit_router
    from consortium.control.dashboard import mount_dashboard
    from consortium.control.run_routes import run_router

    api = FastAPI(
        title="Consortium control API",
        version=__version__,
        description="Runs, apps, nodes, metrics and models of a Consortium server. "
        "Send 'Authorization: Bearer <token>' (consortium token create).",
        docs_url=None,
        redoc_url=None,
    )
    _error_handlers(api)
    guard = context.guard

    @api.get(f"{PREFIX}/health", tags=["server"])
    def health() -> dict[str, Any]:
        """200 while the server is serving (no token needed)."""
        return {"status": "ok", "version": __version__}

    @api.get(f"{PREFIX}/nodes", tags=["nodes"])
    def nodes(request: Request) -> dict[str, Any]:
        """Every node the server knows, online or not."""
        guard.require(request, READ_RUNS, NODE_LIST)
        online, _ = context.fleet.presence()
        known = {n.name: n for n in context.runs.store.list_nodes()}
        tasks = _current_tasks(context.runs)
        # what each node said at its hello since the server started (None: not since)
        identities = context.fleet.identities()
        # the fleet's clock for nodes heard since the server started (the store's
        # last_seen is written at hello, not at every heartbeat)
        heard, now = context.fleet.heard_ago(), time.time()
        out = []
        for name in sorted(set(known) | set(online)):
            view = known.get(name)
            stored = view.last_seen.timestamp() if view is not None and view.last_seen else None
            last_seen = now - heard[name] if name in heard else stored
            version, organisation = identities.get(name, ("", ""))
            out.append(
                {
                    "id": name,
                    "organisation": organisation or None,
                    "version": version or None,
                    "status": "online" if name in online else "offline",
                    "last_seen": last_seen,
                    "allowed": view.allowed if view is not None else None,
                    "banned": context.bans is not None and context.bans.reason(name) is not None,
                    "current_task": tasks.get(name),
                }
            )
        return {"nodes": out}

    @api.get(f"{PREFIX}/apps", tags=["apps"])
    def list_apps(request: Request) -> dict[str, Any]:
        """Every uploaded bundle, newest first."""
        guard.require(request, READ_RUNS, APP_LIST)
        return {"apps": [e.as_dict() for e in context.registry.apps()]}

    @api.post(
        f"{PREFIX}/apps",
        tags=["apps"],
        status_code=201,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/octet-stream": {"schema": {"type": "string"}}},
            }
        },
    )
    async def upload_app(request: Request) -> dict[str, Any]:
        """Upload an app bundle (the raw ``.cab``/zip bytes as the body)."""
        # the token file and the audit log are files: off the event loop
        who = await run_in_threadpool(guard.require, request, UPLOAD_APP, APP_UPLOAD)
        limit = context.registry.limits.max_bundle_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(guard, who.caller, limit)
        parts, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(guard, who.caller, limit)
            parts.append(chunk)
        bundle = b"".join(parts)
        try:
            entry = await run_in_threadpool(context.registry.add, bundle, who.caller.name)
        except (ConfigError, BundleRejected) as exc:
            guard.record(who.caller, APP_UPLOAD, "failed", detail={"error": str(exc)})
            raise ApiError(422, "invalid-bundle", str(exc), field="body") from None
        except Exception as exc:  # the server's fault (a full disk): still audited
            log.exception("REST API: could not keep an uploaded bundle")
            guard.record(who.caller, APP_UPLOAD, "failed", detail={"error": repr(exc)})
            raise ApiError(500, "internal", f"the bundle could not be kept: {exc}") from None
        facts = {"app": entry.name, "app_version": entry.version, "bundle_sha256": entry.sha256,
                 "bundle_bytes": entry.size, "token": who.token_id}  # fmt: skip
        guard.record(who.caller, APP_UPLOAD, "ok", target=entry.name, detail=facts)
        return entry.as_dict()

    api.include_router(run_router(context), prefix=PREFIX)
    api.include_router(audit_router(context), prefix=PREFIX)
    document_errors(api)  # /openapi.json: the bearer token, the JSON errors
    mount_dashboard(api)  # the web dashboard at / (static files; its data comes from here)
    return api


def _current_tasks(runs: RunsBackend) -> dict[str, dict[str, Any]]:
    """The task each node is working on: a running run awaits its reply this round."""
    tasks: dict[str, dict[str, Any]] = {}
    for view in runs.store.list_runs(status=RunStatus.RUNNING, limit=None):
        shown = runs.show_run(view.id)
        waiting = shown.get("waiting") if shown is not None else None
        if waiting is not None and waiting["stage"] == REPLIES:
            for node in waiting["missing"]:
                tasks[node] = {"run_id": view.id, "round": view.current_round + 1}
    return tasks


def _too_large(guard: Guard, caller: Any, limit: int) -> ApiError:
    why = f"the bundle is over this server's limit of {limit} bytes"
    guard.record(caller, APP_UPLOAD, "failed", detail={"error": why})
    return ApiError(413, "too-large", why, field="body")


def _error_handlers(api: FastAPI) -> None:
    """Every error as ``{"error": {...}}``: the API never answers with an HTML page."""

    @api.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        message = f"{where}: {first.get('msg', 'invalid')}"
        error = ApiError(422, "invalid", message, field=where)
        return JSONResponse(error.body(), status_code=422)

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        error = ApiError(exc.status_code, "http-error", str(exc.detail))
        return JSONResponse(error.body(), status_code=exc.status_code)

    @api.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("REST API: %s %s failed", request.method, request.url.path)
        error = ApiError(500, "internal", f"the server failed: {type(exc).__name__}: {exc}")
        return JSONResponse(error.body(), status_code=500)
