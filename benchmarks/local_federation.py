"""``consortium local`` for the benchmarks: start it with an app, wait for its nodes, stop it.

A benchmark-only helper (benchmarks do not import the test suite): the same
federation a user gets from ``consortium local --app FOLDER`` -- a CA, a server
with the REST API, the four heart-disease hospitals as ``consortium node``
processes, mutual TLS on loopback -- with its output in ``DIR/local.out``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from consortium import ControlClient

#: the hospitals `consortium local` starts
NODES = 4


@dataclass
class LocalFederation:
    """A running ``consortium local``: its process group, API URL and admin token."""

    process: subprocess.Popen[bytes]
    directory: Path
    url: str
    token: str

    def client(self) -> ControlClient:
        return ControlClient(self.url, self.token)

    def wait_online(self, timeout: float = 60) -> None:
        """Until all four hospitals are online (SystemExit after ``timeout`` seconds)."""
        client, deadline = self.client(), time.monotonic() + timeout
        while sum(n["status"] == "online" for n in client.nodes()) < NODES:
            if time.monotonic() > deadline:
                raise SystemExit("the four hospitals did not come online")
            time.sleep(0.2)

    def server(self) -> psutil.Process:
        """The ``consortium server`` process."""
        processes = psutil.Process(self.process.pid).children(recursive=True)
        return next(p for p in processes if "server" in p.cmdline()[3:5])

    def api(self) -> psutil.Process:
        """The server's REST API process."""
        processes = psutil.Process(self.process.pid).children(recursive=True)
        return next(p for p in processes if "consortium.control.worker" in p.cmdline())

    def state_url(self) -> str:
        """The server's state database (the default of ``consortium server``)."""
        return f"sqlite:///{self.directory / 'server' / 'state.db'}"

    def stop(self) -> None:
        """SIGTERM to the whole group (as Ctrl-C would), SIGKILL if it lingers."""
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


def start_local(directory: Path, app: Path, *, timeout: float = 120) -> LocalFederation:
    """``consortium local --dir directory --app app`` (no tracking, any free port)."""
    log = directory / "local.out"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "consortium.cli.main", "local", "--dir", str(directory),
             "--http-port", "0", "--app", str(app), "--no-tracking"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while "Ctrl-C stops" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"consortium local did not start: see {log}")
        time.sleep(0.1)
    url = (directory / "server" / "api" / "url").read_text().strip()
    return LocalFederation(process, directory, url, (directory / "admin-token").read_text().strip())
