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
* anything else (a node dials out and listens on nothing; a one-shot command):
  healthy while it runs, which Docker already knows, so the check passes.

Standard library only, so the slim image needs no curl.
"""

from __future__ import annotations

import os
import socket
import sys
import tomllib
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

#: ``consortium server``'s default ``--address`` (src/consortium/cli/server_cmd.py)
DEFAULT_ADDRESS = "127.0.0.1:9092"
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


def _setting(args: Sequence[str], environ: Mapping[str, str], cwd: Path, key: str) -> str | None:
    """The server's ``key`` setting as the CLI resolves it: flag, environment, config file."""
    value = _option(args, f"--{key}") or environ.get(f"CONSORTIUM_SERVER_{key.upper()}")
    if value is not None:
        return value
    config_file = _option(args, "--config-file") or environ.get("CONSORTIUM_SERVER_CONFIG_FILE")
    if config_file is None:
        return None
    table = tomllib.loads((cwd / config_file).read_text()).get("server", {})
    found = table.get(key)
    return None if found is None else str(found)


def check(
    cmdline: Sequence[str], environ: Mapping[str, str] | None = None, cwd: Path | None = None
) -> str | None:
    """None when the process started with ``cmdline`` (in ``environ``, from ``cwd``) is
    healthy, else why not."""
    command, args = subcommand(cmdline)
    if command != "server":
        return None
    environ = {} if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
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
