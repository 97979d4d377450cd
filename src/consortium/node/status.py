"""The node's health, as a small file in its work folder that probes and operators read.

A node listens on nothing (it dials out), so a container probe cannot ask it
anything; and "the process runs" says nothing of a node that has been
retrying a server it cannot reach for an hour. The node therefore keeps
``WORKDIR/status.json`` up to date:

* ``state``: ``starting``, ``connected``, ``retrying`` (the server is
  unreachable or refused a call; it retries with backoff), or ``stopped``
  (refused for good, or shut down);
* ``server``, ``node``, ``since`` (when the state began), ``last_contact`` (the
  last call the server answered), ``error`` (why it is retrying or stopped),
  ``tasks_done``;
* ``healthy_until``: the Unix time until which the node counts as healthy.
  The node decides it, so a probe only compares one number with its clock:
  :data:`START_GRACE` after starting, :data:`CONTACT_GRACE` after each
  answered call, 0 once stopped. A node that loses its server stays healthy
  for that long (a server restart is not an outage), then turns unhealthy.

The file is replaced whole (write, then rename), and rewritten at most every
:data:`WRITE_EVERY` seconds while nothing but ``last_contact`` changes.
``deploy/docker/healthcheck.py`` reads it for ``consortium node`` containers.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("consortium.node")

#: the file in the node's work folder
STATUS_FILE = "status.json"
#: seconds a node counts as healthy after it starts, before it first reached the server
START_GRACE = 120.0
#: seconds a node counts as healthy after the server last answered it
CONTACT_GRACE = 60.0
#: least seconds between two writes that change only ``last_contact``
WRITE_EVERY = 5.0

State = Literal["starting", "connected", "retrying", "stopped"]


class NodeStatus:
    """Keeps ``status.json`` in ``work_dir`` (thread-safe: the main loop and the
    heartbeat thread both report). A file that cannot be written is logged, once,
    and never stops the node."""

    def __init__(
        self, work_dir: Path, server: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = work_dir / STATUS_FILE
        self._clock = clock
        self._lock = threading.Lock()
        now = clock()
        self._fields: dict[str, Any] = {
            "state": "starting",
            "server": server,
            "node": "",
            "since": now,
            "last_contact": None,
            "error": "",
            "tasks_done": 0,
            "healthy_until": now + START_GRACE,
        }
        self._written = 0.0
        self._warned = False
        self._write(force=True)

    def connected(self, node: str) -> None:
        """A hello succeeded."""
        self._update("connected", node=node, error="", contact=True)

    def heard(self, tasks_done: int) -> None:
        """The server answered a call (a heartbeat, a pull, a push)."""
        self._update(None, tasks_done=tasks_done, contact=True)

    def retrying(self, error: str) -> None:
        """A call failed; the node retries (its health runs out CONTACT_GRACE after the
        last answered call)."""
        self._update("retrying", error=error)

    def stopped(self, error: str = "") -> None:
        """The node stopped: refused for good (``error`` says why) or shut down. Once
        stopped, it stays as first reported (a shutdown after a refusal keeps the why)."""
        with self._lock:
            if self._fields["state"] == "stopped":
                return
        self._update("stopped", error=error, healthy_until=0.0)

    def read(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._fields)

    def _update(
        self,
        state: State | None,
        *,
        contact: bool = False,
        healthy_until: float | None = None,
        **fields: Any,
    ) -> None:
        with self._lock:
            now = self._clock()
            changed = any(self._fields.get(k) != v for k, v in fields.items())
            if state is not None and state != self._fields["state"]:
                self._fields["state"], self._fields["since"] = state, now
                changed = True
            self._fields.update(fields)
            if contact:
                self._fields["last_contact"] = now
                self._fields["healthy_until"] = now + CONTACT_GRACE
            if healthy_until is not None:
                self._fields["healthy_until"] = healthy_until
            self._write(force=changed)

    def _write(self, *, force: bool) -> None:
        """(Lock held.) Replace the file, if something changed or it is due."""
        now = self._clock()
        if not force and now - self._written < WRITE_EVERY:
            return
        tmp = self.path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self._fields, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
            self._written = now
        except OSError as exc:
            if not self._warned:
                log.warning("cannot write the node's status file %s: %s", self.path, exc)
                self._warned = True
