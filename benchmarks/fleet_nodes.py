"""Lightweight benchmark nodes: ``NodeRunner`` with the app run in the node's own process.

A deployed node runs each run's app in a sandboxed process of its own
(:mod:`consortium.node.isolated`): one Python interpreter per node and run. The
fleet benchmark simulates 200 nodes on a 2-core machine, 50 per worker
process; 200 app interpreters (~60 MB and ~1 s of CPU each to start) would
measure the machine, not the server. :class:`InProcessNode` is the project's
``NodeRunner`` unchanged — its channel, TLS session, heartbeats, long-polls,
outbox and uploads, which is all the server sees — except that a task is
run by :class:`~consortium.node.app_process.ClientRun` (what the app process
runs) in this process. For benchmarks only: it confines nothing.
"""

from __future__ import annotations

import threading
import time

from consortium.core.message import Message
from consortium.node.app_process import ClientRun
from consortium.node.isolated import Outcome, RunApp, RunProcess
from consortium.node.runner import NodeRunner


class InProcessApp(RunProcess):
    """A run's app in the calling process, with ``RunProcess``'s interface."""

    def __init__(self, run: ClientRun, app: RunApp) -> None:  # no child process to hold
        self.client_run = run
        self.app = app
        self.last_used = time.monotonic()
        self._lock = threading.Lock()

    def run(self, task: Message, stop: threading.Event) -> Outcome:
        with self._lock:
            result = self.client_run.run(task)
        self.last_used = time.monotonic()
        return Outcome(result.reply, result.seconds, result.raised, result.traceback)

    def task_buffer(self, nbytes: int) -> memoryview | None:
        return None  # no app process to share memory with

    def close(self) -> None:
        pass

    def kill(self) -> None:
        pass


class InProcessNode(NodeRunner):
    """``NodeRunner`` whose app runs in-process (see the module's docstring)."""

    def _start_process(self, app: RunApp) -> RunProcess:
        workdir = self.work_dir.resolve() / "runs" / app.run_id
        workdir.mkdir(parents=True, exist_ok=True)
        header = {
            "node_id": self.name,
            "node_config": self.node_config,
            "run_config": app.run_config,
            "seed": app.seed,
            "send_errors": self.send_errors,
            "state_path": str(workdir / "state.bin"),
            "entry": app.entry,
            "app_dir": str(app.app_dir),
        }
        return InProcessApp(ClientRun(header), app)
