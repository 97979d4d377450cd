"""Serving the REST API from the server process: uvicorn in a thread, stopped with the rest.

``consortium server --http HOST:PORT`` calls :func:`serve_api`. The socket is
bound here, before uvicorn starts, so that port 0 works (the bound address is
then written to ``WORKDIR/api/url``, where ``consortium local`` and tests read
it) and a port in use is a clear error at start, not a log line in a thread.
uvicorn's own access log is off: it would print request lines, and a client
that puts a token in a URL would see it logged.
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from consortium.core.errors import MissingDependencyError

try:
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError.for_extra(exc.name or "fastapi", "control") from exc

from consortium.apps.bundle import DEFAULT_LIMITS, BundleLimits
from consortium.control.api import ApiContext, create_api
from consortium.control.events import RunEvents
from consortium.control.guard import Guard
from consortium.control.registry import AppRegistry
from consortium.control.tokens import API_DIR, TokenAuthority
from consortium.core.audit import AuditSink
from consortium.core.errors import ConfigError
from consortium.server.fleet import Fleet
from consortium.server.runs import RunManager
from consortium.transport.authz import AuthzPolicy
from consortium.transport.fleet_api import BanList

log = logging.getLogger("consortium.control")

#: where the server writes the API's URL once it listens
URL_FILE = "url"
#: how long open event streams get to end when the server stops
STOP_GRACE = 3.0


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


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` of ``--http`` (port 0: any free port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--http: expected HOST:PORT (e.g. 127.0.0.1:8080), got {address!r}")
    return host.strip("[]"), int(port)


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
    import uvicorn

    host, port = parse_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--http: cannot listen on {address}: {exc.strerror}") from None
    sock.listen(128)
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
    config = uvicorn.Config(
        create_api(context),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=int(STOP_GRACE),
        lifespan="off",
    )
    # run outside the main thread, uvicorn leaves the signals to the server process
    # (SIGTERM stops the runs first, then this)
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="rest-api", daemon=True
    )
    thread.start()
    while not server.started and thread.is_alive():
        threading.Event().wait(0.02)
    if not thread.is_alive():
        raise ConfigError(f"--http: the REST API on {address} did not start (see the log)")
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if family == socket.AF_INET6 else bound_host
    url = f"http://{shown}:{bound_port}"
    (workdir / API_DIR).mkdir(parents=True, exist_ok=True)
    (workdir / API_DIR / URL_FILE).write_text(url + "\n")
    log.info("REST API listening on %s (OpenAPI at %s/openapi.json)", url, url)
    return ApiServer(url, events, server, thread)
