"""A REST API served by real uvicorn on loopback, over a real fleet, run manager and store.

The server objects are wired as ``consortium server --http`` wires them (same
policy object and audit sink for every request); the audit sink records what it
is told so tests can check who was refused what.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from consortium.control.events import RunEvents
from consortium.control.serve import ApiServer, serve_api
from consortium.control.tokens import TokenAuthority
from consortium.core.audit import AuditEvent
from consortium.server.fleet import Fleet
from consortium.server.runs import RunManager
from consortium.server.store import StateStore, default_url
from consortium.transport.authz import DEFAULT_POLICY

ROOT = Path(__file__).resolve().parents[2]
HEART = ROOT / "examples" / "heart_disease"


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Api:
    """A served API, tokens for each role, and every audit event it reported."""

    url: str
    workdir: Path
    tokens: TokenAuthority
    runs: RunManager
    #: the hub the run manager's per-run observers wake
    events: RunEvents
    audit: list[AuditEvent] = field(default_factory=list)
    token: dict[str, str] = field(default_factory=dict)

    def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """One request; an HTTP error is an answer too, not an exception."""
        if body is not None:
            data = json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return Answer(response.status, response.read(), dict(response.headers))
        except urllib.error.HTTPError as exc:
            with exc:
                return Answer(exc.code, exc.read(), dict(exc.headers))

    def find(self, action: str, actor: str, outcome: str) -> list[AuditEvent]:
        return [
            e
            for e in self.audit
            if e.action == action and e.actor == actor and e.outcome == outcome
        ]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    workdir = tmp_path_factory.mktemp("server")
    store = StateStore(default_url(workdir))
    fleet = Fleet(heartbeat_interval=1.0, offline_after=60.0, max_message_bytes=2**30)
    events = RunEvents()
    runs = RunManager(fleet, workdir, store=store, run_observers=events.observers)
    fleet.set_bundles(runs.run_bundle)
    recorded: list[AuditEvent] = []
    server: ApiServer = serve_api(
        "127.0.0.1:0",
        runs=runs,
        fleet=fleet,
        policy=DEFAULT_POLICY,
        audit=recorded.append,
        workdir=workdir,
        events=events,
    )
    tokens = TokenAuthority(workdir)
    handle = Api(server.url, workdir, tokens, runs, events, recorded)
    for role, name in (("admin", "alice"), ("researcher", "rita"), ("observer", "otto")):
        handle.token[role], _ = tokens.create(name=name, role=role, days=1)
    try:
        yield handle
    finally:
        runs.interrupt(10)
        server.stop()
        fleet.close()
        store.close()


def start_local(directory: Path, log: IO[bytes]) -> tuple[subprocess.Popen[bytes], str]:
    """``consortium local --dir directory`` (the heart-disease app, no tracking) in its own
    session, its output to ``log`` (``directory/local.out``); returns once it says it is
    ready: the process and the REST API's URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "consortium.cli.main", "local", "--dir", str(directory),
         "--http-port", "0", "--app", str(HEART), "--no-tracking"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while "Ctrl-C stops" not in (directory / "local.out").read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)  # and whatever it started
            proc.wait(10)
            raise AssertionError("consortium local did not start:\n" + local_logs(directory))
        time.sleep(0.1)
    return proc, (directory / "server" / "api" / "url").read_text().strip()


def local_logs(directory: Path) -> str:
    """What ``consortium local`` in ``directory`` and its processes logged (for a failure)."""
    parts = [(directory / "local.out").read_text(errors="replace")]
    for path in sorted((directory / "logs").glob("*.log")):
        parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
    return "\n".join(parts)
