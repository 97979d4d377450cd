"""The container image's HEALTHCHECK: is the ``consortium`` process in this container serving?

One image runs both the server and the nodes, so the check reads what PID 1 is
(``/proc/1/cmdline``) rather than being told:

* ``consortium server`` with the REST API on (``--http HOST:PORT``, or
  ``CONSORTIUM_SERVER_HTTP``, or ``http`` in the ``[server]`` table of its
  ``--config-file``: the CLI's own precedence, flag > environment > file):
  ``GET /api/v1/health`` on that port answers 200 (the REST API is up, so the
  server finished starting);
* ``consortium server`` without it: a TCP connection to its ``address`` port
  (found the same way) is accepted (the gRPC port; a TLS handshake would need a client
  certificate, so the check stops at the connection);
* ``consortium node``: it dials out and listens on nothing, so the check reads
  the status file the node keeps in its work folder (``--work-dir``, found the
  same way; ``status.json``, see ``consortium/node/status.py``): healthy while
  its ``healthy_until`` has not passed, which the node extends each time the
  server answers it and sets to 0 once it stopped (refused for good);
* anything else (a one-shot command): healthy while it runs, which Docker
  already knows, so the check passes.

Standard library only, so the slim image needs no curl.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import tomllib
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

#: ``consortium server``'s default ``--address`` (src/consortium/cli/server_cmd.py)
DEFAULT_ADDRESS = "127.0.0.1:9092"
#: ``consortium node``'s default ``--work-dir`` (src/consortium/cli/node_cmd.py)
DEFAULT_NODE_DIR = "node-data"
#: the file a node keeps its health in (STATUS_FILE, src/consortium/node/status.py)
STATUS_FILE = "status.json"
TIMEOUT = 5.0


def _option(args: Sequence[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``args`` (the last one wins)."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1 :]
    return value


def _local(address: str) -> tuple[str, int]:
    """Where to reach HOST:PORT from inside the container (a wildcard host: loopback)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return host, int(port)


def subcommand(cmdline: Sequence[str]) -> tuple[str | None, list[str]]:
    """The ``consortium`` subcommand in a command line and the arguments after it.

    PID 1 is ``python /usr/local/bin/consortium server ...`` (the script's
    interpreter comes first), or ``consortium server ...`` when exec'd directly.
    """
    for i, part in enumerate(cmdline):
        if Path(part).name == "consortium" and i + 1 < len(cmdline):
            return cmdline[i + 1], list(cmdline[i + 2 :])
    return None, []


def _setting(
    args: Sequence[str], environ: Mapping[str, str], cwd: Path, key: str, command: str = "server"
) -> str | None:
    """``consortium COMMAND``'s ``key`` setting as the CLI resolves it: flag, environment
    (``CONSORTIUM_COMMAND_KEY``), config file (its ``[command]`` table)."""
    prefix = f"CONSORTIUM_{command.upper()}_"
    value = _option(args, f"--{key}") or environ.get(prefix + key.upper().replace("-", "_"))
    if value is not None:
        return value
    config_file = _option(args, "--config-file") or environ.get(prefix + "CONFIG_FILE")
    if config_file is None:
        return None
    table = tomllib.loads((cwd / config_file).read_text()).get(command, {})
    found = table.get(key)
    return None if found is None else str(found)


def check(
    cmdline: Sequence[str], environ: Mapping[str, str] | None = None, cwd: Path | None = None
) -> str | None:
    """None when the process started with ``cmdline`` (in ``environ``, from ``cwd``) is
    healthy, else why not."""
    command, args = subcommand(cmdline)
    environ = {} if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    if command == "node":
        return _node(args, environ, cwd)
    if command != "server":
        return None
    try:
        http = _setting(args, environ, cwd, "http")
        if http is not None:
            host, port = _local(http)
            url = f"http://{host}:{port}/api/v1/health"
            with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
                status = response.status
            return None if status == 200 else f"{url} answered {status}"
        host, port = _local(_setting(args, environ, cwd, "address") or DEFAULT_ADDRESS)
        with socket.create_connection((host, port), timeout=TIMEOUT):
            return None
    except tomllib.TOMLDecodeError as exc:
        return f"server config file unreadable: {exc}"
    except (OSError, ValueError) as exc:
        return f"server not reachable: {exc}"


def _node(args: Sequence[str], environ: Mapping[str, str], cwd: Path) -> str | None:
    """None while the node's status file says it is healthy, else why not."""
    try:
        folder = _setting(args, environ, cwd, "work-dir", "node") or DEFAULT_NODE_DIR
        path = cwd / folder / STATUS_FILE
        status = json.loads(path.read_text())
        until = float(status["healthy_until"])
    except tomllib.TOMLDecodeError as exc:
        return f"node config file unreadable: {exc}"
    except FileNotFoundError:
        return f"no {STATUS_FILE} in the node's work folder yet ({folder})"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"node status unreadable: {exc}"
    if time.time() <= until:
        return None
    state, error = status.get("state", "?"), status.get("error", "")
    return f"node {state}" + (f": {error}" if error else "") + f" (see {path})"


def main() -> int:
    raw = Path("/proc/1/cmdline").read_bytes()
    environ = dict(
        part.decode().split("=", 1)
        for part in Path("/proc/1/environ").read_bytes().split(b"\0")
        if b"=" in part
    )
    cwd = Path(os.readlink("/proc/1/cwd"))
    problem = check([part.decode() for part in raw.split(b"\0") if part], environ, cwd)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
