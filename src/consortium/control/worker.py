"""The REST API process: ``python -m consortium.control.worker CHANNEL_FD LISTEN_FD``.

Started by the server (:class:`consortium.control.process.ApiProcess`), never
by hand: it inherits one end of the server's channel and the listening socket.
Its first frame says where the state is and what the policy is; it then
Landlocks itself to that (no key, no CA, no network but what it inherited),
serves the API with uvicorn, and ends when the server says so or the channel
closes (the server died). It ignores SIGINT and SIGTERM: its life is the
server's to end.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import resource
import signal
import socket
import sys
import threading
from dataclasses import replace
from typing import Any

from consortium.control.ipc import Caller, recv_frame, take
from consortium.control.settings import ApiSettings
from consortium.core.stack_dumps import dump_stacks_on_signal

log = logging.getLogger("consortium.control")

#: how much lower than the server this process runs: on a busy machine the fleet's
#: rounds come first, and a dashboard's update waits the few milliseconds they take
NICENESS = 10


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    dump_stacks_on_signal()  # kill -USR1 PID: every thread's stack in the server's output
    os.nice(NICENESS)
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s rest-api[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    if len(argv) != 2 or not all(a.isdigit() for a in argv):
        usage = "usage: python -m consortium.control.worker CHANNEL_FD LISTEN_FD"
        print(f"{usage} (consortium server --http starts it)", file=sys.stderr)
        return 2
    channel = socket.socket(fileno=int(argv[0]))
    listener = socket.socket(fileno=int(argv[1]))
    first = recv_frame(channel)
    if first is None or first.get("push") != "config":
        log.error("the server sent no settings: exiting")
        return 2
    settings = ApiSettings.from_json(take(first, "args", dict))
    # what is read from outside the granted trees is read before confining (the
    # imports could come later: Python's trees stay readable)
    import consortium.control.serve  # noqa: F401

    mimetypes.init()
    confine(settings)
    return serve_here(settings, channel, listener)


def serve_here(settings: ApiSettings, channel: socket.socket, listener: socket.socket) -> int:
    """Serve the API until the server says stop or is gone; the exit status."""
    from consortium.apps.bundle import DEFAULT_LIMITS
    from consortium.control.api import ApiContext
    from consortium.control.events import RunEvents
    from consortium.control.guard import Guard
    from consortium.control.listen import STOP_GRACE
    from consortium.control.registry import AppRegistry
    from consortium.control.remote import RemoteAudit, RemoteBans, RemoteFleet, RemoteRuns
    from consortium.control.serve import run_uvicorn
    from consortium.control.tokens import API_DIR, TokenAuthority
    from consortium.server.store import StateStore

    events = RunEvents()
    stop = threading.Event()

    def on_push(name: str, args: dict[str, Any]) -> None:
        if name == "moved":
            events.notify(take(args, "run_id", str), ending=take(args, "ending", bool))
        elif name == "stop":
            stop.set()

    server = Caller(channel, on_push)
    server.start()
    logging.getLogger().handlers[:] = [ServerLog(server, logging.getLogger().handlers)]
    store = StateStore(settings.state_url, write_timeout=settings.state_timeout)
    limits = replace(DEFAULT_LIMITS, max_bundle_bytes=settings.max_bundle_bytes)
    context = ApiContext(
        runs=RemoteRuns(store, settings.workdir, server),
        fleet=RemoteFleet(server),
        guard=Guard(TokenAuthority(settings.workdir), settings.policy, RemoteAudit(server)),
        registry=AppRegistry(settings.workdir / API_DIR, limits),
        events=events,
        bans=RemoteBans(server),
    )
    uvicorn_server, thread = run_uvicorn(context, listener, on_exit=stop.set)
    if thread.is_alive():
        server.call("ready", pid=os.getpid())
    # until the server says stop, or is gone (whatever ended it), or uvicorn ended
    while not (stop.wait(0.25) or server.closed.is_set()):
        pass
    events.close()  # event streams end, so uvicorn need not wait for them
    uvicorn_server.should_exit = True
    thread.join(STOP_GRACE + 2)
    store.close()
    return 0


class ServerLog(logging.Handler):
    """Each record into the server's log (its file, its console): one place to read.
    Where the server cannot be asked (the channel's own thread, a closed channel), the
    record goes to ``fallback`` (this process's stderr, which is the server's)."""

    def __init__(self, server: Caller, fallback: list[logging.Handler]) -> None:
        super().__init__()
        self.server = server
        self.fallback = list(fallback)

    def emit(self, record: logging.LogRecord) -> None:
        if self.server.can_call():
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            try:
                self.server.call("log", level=record.levelno, name=record.name, message=text)
                return
            except Exception:  # the server is gone, or refused it: this process's stderr
                pass
        for handler in self.fallback:
            handler.handle(record)


def confine(settings: ApiSettings) -> None:
    """No core file (it would hold tokens in flight); then, with Landlock, only Python's
    own trees, ``/etc``, and the state trees the server granted; no TCP of its own with
    SQLite (the listening socket was inherited; accepting on it is not restricted)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if not settings.confine:
        return
    from landlockpy import AccessFS, AccessNet, Ruleset

    from consortium.sandbox.confine import (
        DEVICES_READ,
        DEVICES_READ_WRITE,
        SYSTEM_READ_PATHS,
        python_read_paths,
    )

    read = AccessFS.READ_FILE | AccessFS.READ_DIR | AccessFS.EXECUTE
    write = (
        AccessFS.WRITE_FILE | AccessFS.REMOVE_DIR | AccessFS.REMOVE_FILE | AccessFS.MAKE_DIR
        | AccessFS.MAKE_REG | AccessFS.REFER | AccessFS.TRUNCATE
    )  # fmt: skip
    file_rights = AccessFS.READ_FILE | AccessFS.WRITE_FILE | AccessFS.TRUNCATE
    sqlite = settings.state_url.startswith("sqlite")
    with Ruleset(handled_net=None if sqlite else AccessNet(0)) as ruleset:
        readable = (*SYSTEM_READ_PATHS, "/etc", *DEVICES_READ, *python_read_paths())
        for path in (*readable, *settings.read_paths):
            if os.path.exists(path):
                is_dir = os.path.isdir(path)
                ruleset.allow_path(path, read if is_dir else AccessFS.READ_FILE)
        for path in DEVICES_READ_WRITE:
            if os.path.exists(path):
                ruleset.allow_path(path, AccessFS.READ_FILE | AccessFS.WRITE_FILE)
        for path in settings.write_paths:
            if os.path.isdir(path):
                ruleset.allow_path(path, read | write)
            elif os.path.exists(path):
                ruleset.allow_path(path, file_rights)
        ruleset.restrict()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
