"""A run's client app in its own sandboxed process: the node's side.

The coordinator's client app is code the node's operator did not write; it
never runs in the node's process, which holds the node's TLS key. Each run
gets a child process (:mod:`consortium.node.app_process`) confined by
:mod:`consortium.sandbox`: it may read the Python installation, the run's
verified app folder and the trees the node's policy grants (``[sandbox]
read``), write only its own work folder, and reach no network. It imports the
app fresh (so v2 of a module never runs v1's code), holds the run's client
state across rounds (saved in its work folder, so a fresh child resumes it),
and answers each task with a reply the node decodes as strictly as anything
from outside. A child that dies, breaks its limits or sends what the node
refuses is ended; its task gets an error reply saying why (in the node's own
words: never the app's output), and the run's next task starts a fresh one.

The server never says when a run ended, so a child that has been idle for
:data:`IDLE_SECONDS` is ended, as is the least recently used one when more
than :data:`MAX_PROCESSES` are alive; its state is on disk, so nothing is lost.
"""

from __future__ import annotations

import logging
import math
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from consortium.client.task import ErrorDetail
from consortium.core.errors import ConsortiumError, WireFormatError
from consortium.core.message import Message, peek_metadata
from consortium.core.records import Config, RecordLimits, UnacceptableRecord
from consortium.node.identity_link import REQUESTS, IdentityService
from consortium.sandbox.channel import ChannelClosed, ChannelError, Frame
from consortium.sandbox.confine import SandboxLimits, SandboxSpec
from consortium.sandbox.shared_blocks import SHARE_MIN_BYTES
from consortium.sandbox.spawn import Sandboxed, spawn

__all__ = [
    "AppIsolation", "AppProcessFailed", "Outcome", "RunApp", "RunProcess", "RunProcesses",
]  # fmt: skip

log = logging.getLogger("consortium.node")

MODULE = "consortium.node.app_process"
#: a child that ran no task for this long is ended (the run's next task starts a fresh one)
IDLE_SECONDS = 600.0
#: the most app processes a node keeps alive at once
MAX_PROCESSES = 4
#: how often a wait for the app's reply looks whether the node is stopping
POLL_SECONDS = 0.5
#: the longest traceback the node's log takes from an app process
MAX_TRACEBACK = 64 * 1024
#: a run id becomes a folder name: nothing else is accepted
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True, slots=True)
class AppIsolation:
    """How this node confines its app processes (its policy's ``[sandbox]`` and options)."""

    limits: SandboxLimits = field(default_factory=SandboxLimits)
    #: trees the app may read besides its own folder (the data the operator grants)
    read_paths: tuple[Path, ...] = ()
    #: False only with ``--unconfined-apps`` (development): limits, but no Landlock
    confined: bool = True
    #: what no app may read: the node's key and certificate folder
    secrets: tuple[Path, ...] = ()


class AppProcessFailed(ConsortiumError):
    """The run's app process could not start, died, broke a limit or sent what the node
    refuses. The message is the node's own words (no app output): safe to send."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """A task's reply from the app process (as :class:`~consortium.client.task.TaskResult`)."""

    reply: Message
    seconds: float
    raised: bool
    traceback: str = ""


@dataclass(frozen=True, slots=True)
class RunApp:
    """What a run's app process is started from: the verified app and the run's settings."""

    run_id: str
    app_dir: Path
    entry: str
    run_config: Config
    seed: int


class RunProcess:
    """One run's app process; its tasks go through :meth:`run`, one at a time."""

    def __init__(
        self,
        child: Sandboxed,
        app: RunApp,
        isolation: AppIsolation,
        max_bytes: int,
        identity: IdentityService | None = None,
    ):
        self.child = child
        self.app = app
        self.isolation = isolation
        self.max_bytes = max_bytes
        #: answers the process's sign/verify requests (None: a node without a certificate)
        self.identity = identity
        self.last_used = time.monotonic()

    @classmethod
    def start(
        cls,
        app: RunApp,
        *,
        node_id: str,
        node_config: Config,
        send_errors: ErrorDetail,
        runs_dir: Path,
        isolation: AppIsolation,
        max_bytes: int,
        identity: IdentityService | None = None,
    ) -> RunProcess:
        """Spawn ``app``'s process, confined; it loads the app before its first task."""
        if not _RUN_ID.match(app.run_id):
            raise AppProcessFailed(f"run id {app.run_id!r} is not a safe folder name")
        run_dir = runs_dir.resolve() / app.run_id
        workdir = run_dir / "work"
        workdir.mkdir(parents=True, exist_ok=True)
        spec = SandboxSpec(
            workdir=str(workdir),
            read_paths=(str(app.app_dir), *(str(p) for p in isolation.read_paths)),
            limits=isolation.limits,
            confined=isolation.confined,
        )
        try:
            child = spawn(MODULE, spec, log_path=run_dir / "app.log", max_payload=max_bytes,
                          secrets=isolation.secrets, shared=True)  # fmt: skip
        except ConsortiumError as exc:
            raise AppProcessFailed(f"the node could not start the app process: {exc}") from exc
        try:
            child.channel.send("start", {
                "run_id": app.run_id, "app_dir": str(app.app_dir), "entry": app.entry,
                "node_id": node_id, "node_config": node_config, "run_config": app.run_config,
                "seed": app.seed, "send_errors": send_errors,
                "state_path": str(workdir / "state.bin"),
            })  # fmt: skip
        except (ChannelError, ValueError) as exc:  # ValueError: a setting JSON cannot carry
            child.kill()
            raise AppProcessFailed(f"the node could not start the app process: {exc}") from exc
        log.info("run %s: app process %d started (log: %s)", app.run_id, child.process.pid,
                 child.log_path)  # fmt: skip
        return cls(child, app, isolation, max_bytes, identity)

    def run(self, task: Message, stop: threading.Event) -> Outcome:
        """Have the app process run ``task``. Raises :class:`AppProcessFailed` (after
        ending the process) if it dies, breaks a limit, misbehaves or the node stops."""
        self.last_used = time.monotonic()
        try:
            self._send(task)
            frame = self._receive(stop)
            while frame.kind in REQUESTS:  # the app asks for the node's signature on the way
                self._answer(frame)
                frame = self._receive(stop)
            outcome = self._outcome(task, frame)
        except AppProcessFailed:
            self.kill()
            raise
        finally:
            self.last_used = time.monotonic()
        if outcome.reply.error is not None and outcome.reply.error.code == "MemoryError":
            limit = self.isolation.limits.memory_bytes
            if limit is not None:  # say which limit, in the node's words
                reason = (f"the app ran out of memory: its process may use {_size(limit)} "
                          "(the node's [sandbox] memory)")  # fmt: skip
                outcome = Outcome(task.error_reply("MemoryError", reason), outcome.seconds,
                                  outcome.raised, outcome.traceback)  # fmt: skip
        return outcome

    def task_buffer(self, nbytes: int) -> memoryview | None:
        """A buffer in this process's shared memory to receive its next task into
        (None: a small task, or its blocks are in use)."""
        lender = self.child.channel.lender
        return lender.allocate(nbytes) if lender is not None else None

    def _send(self, task: Message) -> None:
        try:
            self.child.channel.send("task", {}, task.to_parts())
        except ChannelError as exc:  # it ended since its last task
            self.child.settle()
            log.error("run %s: %s", self.app.run_id, self.child.exit_description())
            raise AppProcessFailed(
                f"the run's app process {self._how_it_ended()} before it got the task"
            ) from exc

    def _answer(self, frame: Frame) -> None:
        """Answer a sign/verify request of the app process (see
        :mod:`~consortium.node.identity_link`)."""
        if self.identity is None:
            answer: tuple[str, dict[str, object], bytes] = (
                "refused", {"reason": "this node has no certificate to sign with"}, b"",
            )  # fmt: skip
        else:
            answer = self.identity.answer(frame, self.app.run_id)
        try:
            self.child.channel.send(*answer)
        except ChannelError as exc:
            raise AppProcessFailed(
                f"the run's app process {self._how_it_ended()} while asking for the node's "
                "signature"
            ) from exc

    def _receive(self, stop: threading.Event) -> Frame:
        while True:
            try:
                return self.child.channel.recv(timeout=POLL_SECONDS)
            except TimeoutError:
                if stop.is_set():
                    raise AppProcessFailed("the node stopped while the app ran the task") from None
            except ChannelClosed as exc:
                self.child.settle()
                log.error("run %s: %s", self.app.run_id, self.child.exit_description())
                raise AppProcessFailed(
                    f"the run's app process {self._how_it_ended()} while running the task"
                ) from exc
            except ChannelError as exc:
                raise AppProcessFailed(
                    f"the app process sent what the node refuses: {exc}"
                ) from exc

    def _outcome(self, task: Message, frame: Frame) -> Outcome:
        def refuse(what: str) -> AppProcessFailed:
            return AppProcessFailed(f"the app process sent what the node refuses: {what}")

        h = frame.header
        if frame.kind != "reply":
            raise refuse(f"a {frame.kind!r} frame instead of a reply")
        seconds, raised, trace = h.get("seconds"), h.get("raised"), h.get("traceback", "")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) \
                or not math.isfinite(seconds) or seconds < 0:  # fmt: skip
            raise refuse(f"task time {seconds!r}")
        if not isinstance(raised, bool) or not isinstance(trace, str):
            raise refuse("a reply header without 'raised' and 'traceback'")
        try:
            reply = Message.from_bytes(frame.payload, max_bytes=self.max_bytes,
                                       limits=RecordLimits())  # fmt: skip
        except WireFormatError as exc:
            raise refuse(f"a malformed reply ({exc})") from exc
        got, want = reply.metadata, task.metadata
        expected = (want.run_id, want.message_id, want.dst, want.src, want.round, want.kind)
        if (got.run_id, got.reply_to, got.src, got.dst, got.round, got.kind) != expected:
            raise refuse(f"a reply that does not answer task {want.message_id}")
        return Outcome(reply, float(seconds), raised, trace[:MAX_TRACEBACK])

    def _how_it_ended(self) -> str:
        code = self.child.process.poll()
        if code is None:
            return "closed its channel"
        if code >= 0:
            return f"exited with status {code}"
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        limits = self.isolation.limits
        if name == "SIGXCPU" and limits.cpu_seconds is not None:
            return f"was killed by {name}: over its {limits.cpu_seconds} CPU seconds"
        return f"was killed by {name}"

    def close(self) -> None:
        """Ask the process to exit (killed if it does not)."""
        self.child.close()

    def kill(self) -> None:
        if self.child.process.poll() is None:
            self.child.kill()
        else:
            self.child.channel.close()


class RunProcesses:
    """The node's live app processes, one per run, started on a run's first task."""

    def __init__(
        self,
        start: Callable[[RunApp], RunProcess],
        *,
        idle_seconds: float = IDLE_SECONDS,
        max_processes: int = MAX_PROCESSES,
    ) -> None:
        self._start = start
        self.idle_seconds = idle_seconds
        self.max_processes = max_processes
        self._live: dict[str, RunProcess] = {}

    def run(self, app: RunApp, task: Message, stop: threading.Event) -> Outcome:
        """Run ``task`` in ``app``'s process (started if it is not running)."""
        process = self._live.get(app.run_id)
        if process is None:
            self._make_room()
            process = self._start(app)
            self._live[app.run_id] = process
        try:
            return process.run(task, stop)
        except AppProcessFailed:
            self._live.pop(app.run_id, None)  # ended: the next task starts a fresh one
            raise

    def task_buffer(self, head: memoryview, nbytes: int) -> memoryview | None:
        """Where to receive the task whose first bytes are ``head``: straight into the
        shared memory of its run's live app process (``sandbox/shared_blocks.py``); None
        (an ordinary buffer) if there is none, the task is small or the blocks are in use.
        """
        if nbytes < SHARE_MIN_BYTES:  # most tasks: no header to parse on their way in
            return None
        try:
            meta = peek_metadata(head, RecordLimits())
        except (WireFormatError, UnacceptableRecord):  # the decoder will say what is wrong
            return None
        process = self._live.get(meta.run_id) if meta is not None else None
        return process.task_buffer(nbytes) if process is not None else None

    def end(self, run_id: str) -> None:
        process = self._live.pop(run_id, None)
        if process is not None:
            process.close()
            log.info("run %s: app process ended", run_id)

    def end_idle(self) -> None:
        """End the processes that ran no task for ``idle_seconds``."""
        now = time.monotonic()
        for run_id, process in list(self._live.items()):
            if now - process.last_used > self.idle_seconds:
                self.end(run_id)

    def close(self) -> None:
        for run_id in list(self._live):
            self.end(run_id)

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._live

    def _make_room(self) -> None:
        while len(self._live) >= self.max_processes:
            oldest = min(self._live, key=lambda r: self._live[r].last_used)
            self.end(oldest)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} bytes"
