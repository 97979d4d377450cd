"""The REST API in its own process: started, answered, restarted and stopped by the server.

Why a process: the API's event streams (hundreds of dashboard tabs) and its
reads of the state store then never hold the interpreter lock the fleet's
gRPC threads and round loops need. The server keeps what only it may hold or
do: its private key and the CA (the API process is a fresh interpreter that is
never told where they are, and is Landlocked to the state directory's ``api``
and ``runs`` folders and the database), the live fleet, starting and stopping
runs, and the audit chain. It answers the API process's requests
(:class:`~consortium.control.desk.ApiDesk`) and tells it when a run moved on (:class:`RunNotices`).

Lifecycle: the server binds the listening socket (port 0, a port in use: as
before) and passes it down, so a restarted API process serves the same port;
the API process ends when the server tells it to, or when the channel closes
because the server died however it died (SIGKILL included): no orphan. It
ignores SIGINT and SIGTERM (a Ctrl-C reaches every process of the terminal):
it belongs to the server, which stops it after the runs. If it dies, the
server logs it and starts another, up to :data:`MAX_RESTARTS` times in
:data:`RESTART_WINDOW` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from consortium.apps.bundle import DEFAULT_LIMITS, BundleLimits
from consortium.control.desk import ApiDesk
from consortium.control.events import RunEvents, RunFeed
from consortium.control.ipc import ProtocolError, recv_frame, send_frame, take
from consortium.control.listen import STOP_GRACE, bind_listener, publish_url, url_of
from consortium.control.settings import ApiSettings
from consortium.control.tokens import API_DIR
from consortium.core.audit import AuditSink
from consortium.core.errors import ConfigError, ConsortiumError
from consortium.server.fleet import Fleet
from consortium.server.runs import RunManager
from consortium.tracking.base import RunObserver
from consortium.transport.authz import AuthzPolicy
from consortium.transport.fleet_api import BanList

log = logging.getLogger("consortium.control")

#: how long the API process may take to start (imports, the store) before the server gives up
START_TIMEOUT = 60.0
#: restarts of a dying API process allowed within :data:`RESTART_WINDOW` seconds
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
#: threads answering the API process (a slow start of a run does not hold up the node list)
DESK_THREADS = 4
#: environment variables the API process inherits (no secrets: no database password, no
#: tracking token); what a Python interpreter needs to start
CHILD_ENV = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "HOME")


class RunNotices:
    """The runs' observers' end in the server (``RunManager(run_observers=...)``): each
    round end or run end becomes a ``moved`` notice to the API process, never a wait."""

    def __init__(self) -> None:
        self._link: _Link | None = None

    def observers(self, run_id: str) -> list[RunObserver]:
        return [RunFeed(self, run_id)]

    def notify(self, run_id: str, *, ending: bool = False) -> None:
        link = self._link
        if link is not None:
            link.moved(run_id, ending)

    def attach(self, link: _Link | None) -> None:
        self._link = link


class _Link:
    """The server's end of one API process's channel. Everything the server sends goes
    through one sender thread, so no server thread (a run's round loop least of all)
    waits on the API process; a run's notices not yet sent fold into one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._cond = threading.Condition()
        self._frames: deque[dict[str, Any]] = deque()
        self._moves: dict[str, bool] = {}
        self._closed = False
        threading.Thread(target=self._send_all, name="api-link", daemon=True).start()

    def post(self, frame: dict[str, Any]) -> None:
        with self._cond:
            self._frames.append(frame)
            self._cond.notify()

    def moved(self, run_id: str, ending: bool) -> None:
        with self._cond:
            self._moves[run_id] = self._moves.get(run_id, False) or ending
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        with contextlib.suppress(OSError):  # already closed by the other side
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def _send_all(self) -> None:
        while True:
            with self._cond:
                while not (self._frames or self._moves or self._closed):
                    self._cond.wait()
                if self._closed:
                    return
                frames, self._frames = list(self._frames), deque()
                moves, self._moves = self._moves, {}
            frames += [{"push": "moved", "args": {"run_id": r, "ending": e}}
                       for r, e in moves.items()]  # fmt: skip
            try:
                for frame in frames:
                    send_frame(self.sock, frame)
            except (OSError, ProtocolError) as exc:
                log.warning("REST API process: could not send to it: %s", exc)
                return


class ApiProcess:
    """The REST API process of a server: :meth:`start` it once, :meth:`stop` it once."""

    def __init__(
        self, listener: socket.socket, settings: ApiSettings, desk: ApiDesk, notices: RunNotices
    ) -> None:
        self.listener = listener
        self.settings = settings
        self.desk = desk
        self.notices = notices
        self.url = url_of(listener)
        self._pool = ThreadPoolExecutor(DESK_THREADS, thread_name_prefix="api-desk")
        self._lock = threading.Lock()
        self._stopping = False
        self._ready = threading.Event()
        self._starts: list[float] = []
        self.process: subprocess.Popen[bytes] | None = None
        self._link: _Link | None = None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the API process; returns once it accepts requests (ConfigError if not)."""
        process = self._spawn()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ConfigError(
                    f"--http: the REST API on {self.url} did not start (see the log above)"
                )
        publish_url(self.listener, self.settings.workdir)
        log.info("REST API listening on %s (process %d)", self.url, process.pid)

    def stop(self) -> None:
        """Stop the API process: its event streams end, then it exits (killed if it does
        not within the grace period)."""
        with self._lock:
            self._stopping = True
            process, link = self.process, self._link
        if link is not None:
            link.post({"push": "stop", "args": {}})
        if process is not None:
            try:
                process.wait(STOP_GRACE + 5)
            except subprocess.TimeoutExpired:
                log.warning("the REST API process did not stop in time: killed")
                process.kill()
                process.wait()
        if link is not None:
            link.close()
        self.notices.attach(None)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.listener.close()

    def _spawn(self) -> subprocess.Popen[bytes]:
        ours, theirs = socket.socketpair()
        env = {k: os.environ[k] for k in CHILD_ENV if k in os.environ}
        command = [sys.executable, "-m", "consortium.control.worker",
                   str(theirs.fileno()), str(self.listener.fileno())]  # fmt: skip
        with self._lock:
            if self._stopping:
                ours.close()
                theirs.close()
                raise ConfigError("the server is stopping")
            process = subprocess.Popen(
                command,
                pass_fds=(theirs.fileno(), self.listener.fileno()),
                stdin=subprocess.DEVNULL,
                env=env,
            )
            theirs.close()
            link = _Link(ours)
            link.post({"push": "config", "args": self.settings.to_json()})
            self.process, self._link = process, link
            self._starts.append(time.monotonic())
        self.notices.attach(link)
        threading.Thread(
            target=self._serve, args=(process, link), name="api-supervisor", daemon=True
        ).start()
        return process

    def _serve(self, process: subprocess.Popen[bytes], link: _Link) -> None:
        """Answer one API process until its channel closes; then restart it unless the
        server is stopping."""
        try:
            while (frame := recv_frame(link.sock)) is not None:
                number, op = take(frame, "id", int), take(frame, "op", str)
                args = take(frame, "args", dict)
                if op == "ready":
                    self._ready.set()
                    link.post({"id": number, "ok": {}})
                else:
                    self._pool.submit(self._answer, link, number, op, args)
        except (OSError, ProtocolError) as exc:
            if not self._stopping:
                log.error("REST API process: the channel broke (%s): it is stopped", exc)
        except RuntimeError:  # the pool is shut down: the server is stopping
            return
        if self._stopping:
            return
        link.close()
        if process.poll() is None:
            process.kill()
        code = process.wait()
        recent = [t for t in self._starts if time.monotonic() - t < RESTART_WINDOW]
        if len(recent) > MAX_RESTARTS:
            log.error("the REST API process exited (status %s) %d times in %.0f s: not "
                      "restarted; the federation goes on without it", code, len(recent),
                      RESTART_WINDOW)  # fmt: skip
            self.notices.attach(None)
            return
        log.warning("the REST API process exited (status %s): starting another", code)
        time.sleep(0.5)
        try:
            self._spawn()
        except (ConfigError, OSError) as exc:
            if not self._stopping:
                log.error("the REST API process could not be restarted: %s", exc)

    def _answer(self, link: _Link, number: int, op: str, args: Mapping[str, Any]) -> None:
        try:
            reply: dict[str, Any] = {"id": number, "ok": self.desk.handle(op, args)}
        except ProtocolError as exc:
            log.warning("REST API process: refused a malformed %r request: %s", op, exc)
            reply = {"id": number, "error": {"kind": "invalid", "message": str(exc)}}
        except ConsortiumError as exc:
            reply = {"id": number, "error": {"kind": "invalid", "message": str(exc)}}
        except Exception as exc:
            log.exception("REST API process: its %r request failed", op)
            reply = {"id": number, "error": {"kind": "internal", "message": f"{exc}"}}
        link.post(reply)


def state_paths(workdir: Path, state_url: str, secrets: list[Path]) -> tuple[list[str], list[str]]:
    """(read, write): the trees the API process may read and write besides Python's own:
    ``api`` (tokens, uploaded apps) and the SQLite database's folder read-write, ``runs``
    (models) read. The database's folder only when no secret lies within it; else its
    files only (a database file SQLite has not made yet is then out of reach)."""
    (workdir / "runs").mkdir(parents=True, exist_ok=True)
    (workdir / API_DIR).mkdir(parents=True, exist_ok=True)
    read = [str((workdir / "runs").resolve())]
    write = [str((workdir / API_DIR).resolve())]
    if state_url.startswith("sqlite:///"):
        database = Path(state_url.removeprefix("sqlite:///").split("?", 1)[0]).resolve()
        folder = database.parent
        if any(_within(s.resolve(), folder) for s in secrets):
            write += [str(p) for p in (database, Path(f"{database}-wal"), Path(f"{database}-shm"))
                      if p.exists()]  # fmt: skip
        else:
            write.append(str(folder))
    return read, write


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


class RunningApi(Protocol):
    """A served REST API, in a thread or in its own process."""

    url: str

    def stop(self) -> None: ...


def api_hub(in_process: bool) -> RunEvents | RunNotices:
    """Where the runs' observers say a run moved on: the streams themselves (the API in a
    thread of this process) or the API process's channel."""
    return RunEvents() if in_process else RunNotices()


def start_api(
    address: str,
    *,
    hub: RunEvents | RunNotices,
    runs: RunManager,
    fleet: Fleet,
    policy: AuthzPolicy,
    audit: AuditSink,
    bans: BanList | None,
    state_url: str,
    state_timeout: float,
    secrets: list[Path],
    limits: BundleLimits = DEFAULT_LIMITS,
) -> RunningApi:
    """Serve the REST API on ``address``: from its own process (``hub`` a
    :class:`RunNotices`), or from a thread of this one (a :class:`RunEvents`). ``secrets``
    (the server's key, the CA) are kept out of the API process's reach."""
    workdir = runs.root
    if isinstance(hub, RunEvents):
        from consortium.control.serve import serve_api

        return serve_api(address, runs=runs, fleet=fleet, policy=policy, audit=audit,
                         workdir=workdir, events=hub, limits=limits, bans=bans)  # fmt: skip
    from consortium.control.tokens import TokenAuthority
    from consortium.sandbox.confine import landlock_available

    listener = bind_listener(address)
    TokenAuthority(workdir).secret()  # created by the server (0600), not by a request
    read, write = state_paths(workdir, state_url, secrets)
    confined = landlock_available()
    if not confined:
        log.warning("this kernel has no Landlock: the REST API process is not confined")
    settings = ApiSettings(workdir, state_url, state_timeout, policy, limits.max_bundle_bytes,
                           tuple(read), tuple(write), confined)  # fmt: skip
    api = ApiProcess(listener, settings, ApiDesk(runs, fleet, audit, bans), hub)
    api.start()
    return api
