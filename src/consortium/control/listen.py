"""The REST API's listening socket: bound by the server process, whoever serves it.

Bound before anything serves it, so that port 0 works (the bound address is
then written to ``WORKDIR/api/url``, where ``consortium local`` and tests read
it) and a port in use is a clear error at start, not a log line in a thread or
another process. With the API in its own process the server keeps the socket
open, so a restarted API process serves the same port.
"""

from __future__ import annotations

import socket
from pathlib import Path

from consortium.control.tokens import API_DIR
from consortium.core.errors import ConfigError

#: where the server writes the API's URL once it listens
URL_FILE = "url"
#: how long open event streams get to end when the server stops
STOP_GRACE = 3.0
#: connections waiting to be accepted
BACKLOG = 128


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` of ``--http`` (port 0: any free port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--http: expected HOST:PORT (e.g. 127.0.0.1:8080), got {address!r}")
    return host.strip("[]"), int(port)


def bind_listener(address: str) -> socket.socket:
    """A listening TCP socket on ``address`` (:class:`ConfigError` naming ``--http``)."""
    host, port = parse_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--http: cannot listen on {address}: {exc.strerror}") from None
    sock.listen(BACKLOG)
    return sock


def url_of(sock: socket.socket) -> str:
    """The URL the listening ``sock`` answers on."""
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if sock.family == socket.AF_INET6 else bound_host
    return f"http://{shown}:{bound_port}"


def publish_url(sock: socket.socket, workdir: Path) -> str:
    """The URL ``sock`` answers on, also written to ``WORKDIR/api/url`` (once it serves)."""
    url = url_of(sock)
    (workdir / API_DIR).mkdir(parents=True, exist_ok=True)
    (workdir / API_DIR / URL_FILE).write_text(url + "\n")
    return url
