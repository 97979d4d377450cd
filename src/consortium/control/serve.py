"""Serving the REST API: uvicorn in a thread, stopped with the rest.

``consortium server --http HOST:PORT`` serves it from its own process
(:mod:`consortium.control.process`, which runs :func:`run_uvicorn` there);
:func:`serve_api` serves it from a thread of the calling process, over the
server's own objects (``--api-in-process``, and tests). The socket is bound
before uvicorn starts (:mod:`consortium.control.listen`). uvicorn's own access
log is off: it would print request lines, and a client that puts a token in a
URL would see it logged.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from consortium.core.errors import MissingDependencyError

try:
    import fastapi  # noqa: F401
    import uvicorn
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError.for_extra(exc.name or "fastapi", "control") from exc

from consortium.apps.bundle import DEFAULT_LIMITS, BundleLimits
from consortium.control.api import ApiContext, create_api
from consortium.control.events import RunEvents
from consortium.control.guard import Guard
from consortium.control.listen import STOP_GRACE, bind_listener, publish_url
from consortium.control.registry import AppRegistry
from consortium.control.tokens import API_DIR, TokenAuthority
from consortium.core.audit import AuditSink
from consortium.core.errors import ConfigError
from consortium.server.fleet import Fleet
from consortium.server.runs import RunManager
from consortium.transport.authz import AuthzPolicy
from consortium.transport.fleet_api import BanList

log = logging.getLogger("consortium.control")


@dataclass
class ApiServer:
    """A running REST API; :meth:`stop` ends it (open event streams included)."""

    url: str
    events: RunEvents
    _server: object
    _thread: threading.Thread

    def stop(self) -> None:
        import uvicorn

        server = self._server
        assert isinstance(server, uvicorn.Server)
        self.events.close()  # event streams end, so uvicorn need not wait for them
        server.should_exit = True
        self._thread.join(STOP_GRACE + 5)
        if self._thread.is_alive():
            log.warning("the REST API did not stop in time")


def serve_api(
    address: str,
    *,
    runs: RunManager,
    fleet: Fleet,
    policy: AuthzPolicy,
    audit: AuditSink,
    workdir: Path,
    events: RunEvents,
    limits: BundleLimits = DEFAULT_LIMITS,
    bans: BanList | None = None,
) -> ApiServer:
    """Start the API on ``address`` in a daemon thread; returns once it accepts requests.
    ``limits`` bound the app bundles it accepts (the gRPC API's, by default); ``bans``
    is the server's ban list (a banned node cannot be chosen for a run)."""
    sock = bind_listener(address)
    tokens = TokenAuthority(workdir)
    tokens.secret()  # created now (0600), not by the first request
    context = ApiContext(
        runs=runs,
        fleet=fleet,
        guard=Guard(tokens, policy, audit),
        registry=AppRegistry(workdir / API_DIR, limits),
        events=events,
        bans=bans,
    )
    server, thread = run_uvicorn(context, sock)
    if not thread.is_alive():
        raise ConfigError(f"--http: the REST API on {address} did not start (see the log)")
    url = publish_url(sock, workdir)
    log.info("REST API listening on %s (OpenAPI at %s/openapi.json)", url, url)
    return ApiServer(url, events, server, thread)


def run_uvicorn(
    context: ApiContext, sock: socket.socket, *, on_exit: Callable[[], None] | None = None
) -> tuple[uvicorn.Server, threading.Thread]:
    """Serve the API of ``context`` on the listening ``sock`` from a daemon thread; returns
    (the ``uvicorn.Server``, its thread) once it accepts requests or its thread ended.
    ``on_exit`` is called when the thread ends."""
    config = uvicorn.Config(
        create_api(context),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=int(STOP_GRACE),
        lifespan="off",
    )
    # run outside the main thread, uvicorn leaves the signals to the process
    # (SIGTERM stops the runs first, then this)
    server = uvicorn.Server(config)

    def serve() -> None:
        try:
            server.run(sockets=[sock])
        finally:
            if on_exit is not None:
                on_exit()

    thread = threading.Thread(target=serve, name="rest-api", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        threading.Event().wait(0.02)
    return server, thread
