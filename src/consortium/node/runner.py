"""The node process: dial out to the server, pull tasks, run the app, push results.

A node never accepts inbound connections. It reconnects with exponential
backoff and full jitter (capped; logged once per backoff level, then a reminder
a minute while at the cap), sends heartbeats from a background thread, and keeps
every finished result in an outbox until the server acknowledged it, so a
result computed while the server was unreachable is delivered after
reconnecting. A server that refuses the node for who it is (revoked, expired,
not allow-listed, wrong role) stops it: :meth:`NodeRunner.run` raises
:class:`~consortium.core.errors.NodeRefused`. Its data location comes from its
own node config, never from the server; how much of an app's exception leaves
the silo is its own setting too (``send_errors``; the full traceback stays in
its log). What it runs is its :class:`~consortium.node.policy.NodePolicy`'s call: a
refusal (an unsigned or unapproved bundle, a task past its limits) is sent to the server
in full, as the node's own words, and logged. How it runs it: never in this process,
which holds the node's key, but in a confined app process per run
(:mod:`consortium.node.isolated`).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from consortium._version import __version__
from consortium.apps.bundle import bundle_digest
from consortium.client.task import ErrorDetail, failure_reply
from consortium.core.errors import NodeRefused, SecurityError, ServerUnavailable, TransportError
from consortium.core.message import TIMING_RECORD, Error, Message
from consortium.core.protocol import ERROR_APP_PROCESS, ERROR_RESULT_REFUSED, TIMING_TRAIN
from consortium.core.records import Config
from consortium.node.connection import NodeConnection
from consortium.node.identity_link import IdentityService
from consortium.node.isolated import (
    AppIsolation,
    AppProcessFailed,
    RunApp,
    RunProcess,
    RunProcesses,
)
from consortium.node.policy import NodePolicy, PolicyRefused
from consortium.node.status import NodeStatus
from consortium.transport.stage_times import stage

__all__ = ["Backoff", "NodePolicy", "NodeRunner", "RetryLog"]

log = logging.getLogger("consortium.node")

#: failed attempts in a row, none reaching the server since the node started, after
#: which the log says plainly that it may be refusing the certificate (TLS handshake)
UNREACHED_AFTER = 5
#: while the backoff is at its cap, seconds between two log lines about retrying
REMIND_EVERY = 60.0


@dataclass
class Backoff:
    """Exponential backoff with full jitter: sleep U(0, min(cap, base * 2**attempt))."""

    base: float = 0.2
    cap: float = 10.0
    #: the backoff level; it stops growing at the cap (so ``2**attempt`` stays small)
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if not 0 < self.base <= self.cap:
            raise ValueError(f"backoff needs 0 < base <= cap, got {self.base} and {self.cap}")

    @property
    def capped(self) -> bool:
        """True once the delays are drawn from the whole [0, cap] range."""
        return self.base * 2.0**self.attempt >= self.cap

    @property
    def ceiling(self) -> float:
        """The longest the next delay can be."""
        return min(self.cap, self.base * 2.0**self.attempt)

    def next_delay(self) -> float:
        delay = self.rng.uniform(0, self.ceiling)
        if not self.capped:
            self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


class RetryLog:
    """Says why a node is retrying without flooding its log: once per backoff level,
    then once every ``remind_every`` s while the backoff stays at its cap."""

    def __init__(
        self,
        address: str,
        *,
        remind_every: float = REMIND_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self.remind_every = remind_every
        self._clock = clock
        #: failed attempts since the last successful hello
        self.failures = 0
        #: whether a hello ever succeeded (else the server may refuse the TLS handshake)
        self.reached = False
        self._last_capped: float | None = None

    def connected(self) -> None:
        """A hello succeeded: the next failure starts a new count."""
        self.failures = 0
        self.reached = True
        self._last_capped = None

    def failed(self, exc: TransportError, backoff: Backoff) -> float:
        """Note a failed attempt and log it if due; the seconds to wait before the next."""
        capped = backoff.capped
        delay = backoff.next_delay()
        self.failures += 1
        refused = not isinstance(exc, ServerUnavailable)
        if not capped:  # a new level: each uncapped failure raises it
            if refused:
                log.error("server refused the call (%s); retrying in %.1f s", exc, delay)
            else:
                log.warning("server unreachable (%s); retrying in %.1f s", exc, delay)
            return delay
        now = self._clock()
        if self._last_capped is not None and now - self._last_capped < self.remind_every:
            return delay
        self._last_capped = now
        every = f"every {backoff.cap:.0f} s at most (next log line in {self.remind_every:.0f} s)"
        if not self.reached and self.failures >= UNREACHED_AFTER:
            log.error(
                "%d attempts in a row have not reached the server at %s since this node "
                "started: it is down or unreachable, or it refuses this node's certificate "
                "in the TLS handshake (another CA, expired or revoked: the server's log says "
                "which). Last error: %s. Retrying %s",
                self.failures, self.address, exc, every,
            )  # fmt: skip
        else:
            log.warning("%d attempts in a row failed (%s); retrying %s", self.failures, exc, every)
        return delay


class NodeRunner:
    """One silo's node: a loop over tasks until ``stop`` is set."""

    def __init__(
        self,
        connection: NodeConnection,
        *,
        node_config: Config,
        work_dir: Path,
        policy: NodePolicy,
        poll_wait: float = 5.0,
        send_errors: ErrorDetail = "type",
        backoff: Backoff | None = None,
        isolation: AppIsolation | None = None,
        identity: IdentityService | None = None,
    ) -> None:
        #: the link to the server (gRPC in deployment, in memory in tests)
        self.connection = connection
        self.node_config = node_config
        self.work_dir = work_dir
        self.policy = policy
        self.poll_wait = poll_wait
        #: how much of an app's exception the server is told (the traceback stays here)
        self.send_errors: ErrorDetail = send_errors
        self.backoff = backoff or Backoff()
        self.instance_id = uuid.uuid4().hex
        self.name = ""
        self.stop = threading.Event()
        self._outbox: deque[tuple[str, Message]] = deque()
        #: a pulled task whose app could not be fetched yet (server unreachable)
        self._held: Message | None = None
        #: how the app processes are confined (the policy's [sandbox] and the node's options)
        self.isolation = isolation or AppIsolation()
        self._runs: dict[str, RunApp] = {}
        #: signs and verifies SecAgg+ keys for the app processes (the node's certificate)
        self.identity = identity
        self._processes = RunProcesses(self._start_process)
        self._refused_runs: dict[str, PolicyRefused] = {}
        self._rehello = threading.Event()
        #: the refusal the heartbeat thread met (the main loop raises it)
        self._refused: NodeRefused | None = None
        self._heartbeat_interval = 2.0
        self.tasks_done = 0
        #: WORKDIR/status.json, for container probes and operators
        self.status = NodeStatus(work_dir, connection.address)

    # -- main loop ------------------------------------------------------------------
    def run(self) -> None:
        """Serve until ``stop`` is set. Raises NodeRefused (after setting ``stop``) when
        the server refuses this node for who it is: retrying cannot help."""
        backoff = self.backoff
        retries = RetryLog(self.connection.address)
        heart = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
        heart_started = False
        try:
            while not self.stop.is_set():
                try:
                    self._connect()
                    self.status.connected(self.name)
                    backoff.reset()
                    retries.connected()
                    if not heart_started:
                        heart.start()
                        heart_started = True
                    self._serve()
                except TransportError as exc:
                    self.status.retrying(str(exc))
                    self.stop.wait(retries.failed(exc, backoff))
            if self._refused is not None:
                raise self._refused
        except NodeRefused as exc:
            log.error("the server refused this node; stopping: %s", exc)
            self.status.stopped(f"refused by the server: {exc}")
            raise
        finally:
            self.status.stopped()  # (kept as it is if refused above)
            self.stop.set()  # ends the heartbeats too
            self._processes.close()

    def _connect(self) -> None:
        conn = self.connection
        welcome = conn.hello(__version__, self.instance_id)
        self.name = welcome.node_id
        self._heartbeat_interval = welcome.heartbeat_interval or 2.0
        conn.max_message_bytes = welcome.max_message_bytes or conn.max_message_bytes
        self._rehello.clear()
        log.info("connected to %s as %s", conn.address, self.name)

    def _serve(self) -> None:
        while not self.stop.is_set():
            self._flush_outbox()
            if self._rehello.is_set():
                self._connect()
            self._serve_one()
            self._processes.end_idle()

    def _serve_one(self) -> None:
        """Pull, run and answer one task. Its own frame, so that the task's buffers
        (model-sized) are let go before the next task is received, not after."""
        task = self._held
        if task is None:
            # into its run's app process's shared memory, when that process is running
            payload = self.connection.pull_task(self.poll_wait, self._processes.task_buffer)
            self.status.heard(self.tasks_done)
            if payload is None:
                return
            with stage("node.decode", len(payload)):
                task = Message.from_bytes(payload)
        self._held = task
        self._fetch_app(task.metadata.run_id)  # an outage here keeps the task held
        self._held = None
        reply = self._handle(task)
        self._outbox.append((reply.metadata.message_id, reply))
        self._flush_outbox()

    def _flush_outbox(self) -> None:
        while self._outbox:
            message_id, reply = self._outbox[0]
            try:
                with stage("node.encode"):
                    parts = reply.to_parts()
                accepted, detail = self.connection.push_result(parts, message_id)
            except ServerUnavailable:
                raise  # keep it: delivered after reconnecting
            except TransportError as exc:  # (NodeRefused is not one: the node stops)
                # refused for what it is (too large, malformed): retrying cannot help
                self._outbox.popleft()
                log.error("server refused result %s for good: %s", message_id, exc)
                if reply.error is None:
                    # say the task failed instead, so its round need not wait for its deadline
                    failed = Error(
                        ERROR_RESULT_REFUSED, f"the server refused the node's result: {exc}"
                    )
                    self._outbox.appendleft((message_id, Message(reply.metadata, error=failed)))
                continue
            self._outbox.popleft()  # delivered (accepted or judged late by the server)
            meta = reply.metadata
            if accepted:  # after "... done in" (the app's end): the server has it now
                log.info("run %s round %d: %s reply delivered", meta.run_id, meta.round, meta.kind)
            else:
                log.warning("server did not accept result %s: %s", message_id, detail)

    def _heartbeats(self) -> None:
        while not self.stop.wait(self._heartbeat_interval):
            try:
                if not self.connection.heartbeat():
                    self._rehello.set()
                self.status.heard(self.tasks_done)
            except NodeRefused as exc:  # for good: stop the node (run raises it)
                self._refused = exc
                self.stop.set()
                return
            except TransportError:
                pass  # the main loop notices and reconnects

    # -- tasks ----------------------------------------------------------------------
    def _handle(self, task: Message) -> Message:
        meta = task.metadata
        try:
            app = self._app_for(meta.run_id)
            self.policy.check_task(task)
            with stage("node.app"):  # the app process's round trip, its own work included
                result = self._processes.run(app, task, self.stop)
        except PolicyRefused as exc:  # the node's own words, not app output: sent in full
            log.error("run %s round %d: %s refused: %s", meta.run_id, meta.round, meta.kind, exc)
            return failure_reply(task, exc, "message")
        except AppProcessFailed as exc:  # the node's own words too
            log.error("run %s round %d: %s failed: %s", meta.run_id, meta.round, meta.kind, exc)
            return task.error_reply(ERROR_APP_PROCESS, str(exc))
        except Exception as exc:  # no app to run with: report it; keep serving
            log.exception(
                "run %s round %d: %s failed (the server is told %s)",
                meta.run_id,
                meta.round,
                meta.kind,
                _TOLD[self.send_errors],
            )
            return failure_reply(task, exc, self.send_errors)
        reply = result.reply
        if result.raised:  # reported by the app process as detailed as allowed
            log.error(
                "run %s round %d: %s failed (the server is told %s):\n%s",
                meta.run_id,
                meta.round,
                meta.kind,
                _TOLD[self.send_errors],
                result.traceback,
            )
            return reply
        log.info(
            "run %s round %d: %s done in %.2f s", meta.run_id, meta.round, meta.kind, result.seconds
        )
        if reply.content is not None:  # the server splits the task's time with it
            reply.content.metrics[TIMING_RECORD] = {TIMING_TRAIN: result.seconds}
        self.tasks_done += 1
        return reply

    def _start_process(self, app: RunApp) -> RunProcess:
        return RunProcess.start(
            app,
            node_id=self.name,
            node_config=self.node_config,
            send_errors=self.send_errors,
            runs_dir=self.work_dir / "runs",
            isolation=self.isolation,
            max_bytes=self.connection.max_message_bytes,
            identity=self.identity,
        )

    def _fetch_app(self, run_id: str) -> None:
        """Fetch and verify the run's app before running a task. If the server is unreachable the
        error propagates (the task stays held and runs after reconnecting); any other
        failure is left for ``_handle`` to report to the server as the task's error."""
        try:
            self._app_for(run_id)
        except (ServerUnavailable, NodeRefused):
            raise
        except Exception:  # reported by _handle, which tries again
            pass

    def _app_for(self, run_id: str) -> RunApp:
        """The run's verified app folder and settings (fetched, verified and extracted
        once per run; its code is imported only in the run's app process)."""
        cached = self._runs.get(run_id)
        if cached is not None:
            return cached
        refused = self._refused_runs.get(run_id)
        if refused is not None:  # refused once: not fetched nor verified again
            raise refused
        bundle = self.connection.get_run(run_id)
        if bundle_digest(bundle.bundle) != bundle.bundle_sha256:
            raise SecurityError(f"run {run_id}: app bundle does not match its digest")
        apps_root = self.work_dir.resolve() / "apps"
        try:
            app_dir, entry = self.policy.app_dir(bundle, apps_root)
        except PolicyRefused as exc:
            self._refused_runs[run_id] = exc
            raise
        app = RunApp(run_id, app_dir, entry, json.loads(bundle.run_config_json), int(bundle.seed))
        self._runs[run_id] = app
        return app


#: what the server learns of a failed task, per ``send_errors`` setting, for the log
_TOLD: dict[ErrorDetail, str] = {
    "type": "only the exception type",
    "message": "the exception type and message",
    "traceback": "the whole traceback",
}
