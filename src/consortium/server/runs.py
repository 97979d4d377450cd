"""Runs on a deployment server: start from an uploaded app bundle, list, show, stop.

The state store is the one record of every run (status, error, rounds,
per-node results and timings, checkpoints): ``run list`` and ``run show``
read it, so a run's history outlives the server process. What stays in
memory is what is not state: a running run's thread, its app process and the
bundle its nodes fetch.

A run the server stops under way is ``interrupted``: on SIGTERM it stops its
runs between rounds (:meth:`RunManager.interrupt`), and at start it finds the
runs a crashed or stopped server left under way and resumes them or says how
(:meth:`RunManager.recover_interrupted`). A run whose record cannot be written
(the state database gone, read-only, or locked past the store's bound) fails
with a :class:`~consortium.core.errors.StateStoreError` instead of going on.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consortium.apps.bundle import bundle_digest, extract_bundle
from consortium.apps.manifest import load_app_spec
from consortium.core.audit import RUN_END, SERVER_ACTOR, AuditEvent, AuditSink, discard
from consortium.core.errors import ConfigError, ConsortiumError
from consortium.core.records import RecordLimits
from consortium.server.checkpoint import Checkpoint
from consortium.server.fleet import Fleet
from consortium.server.fleet_grid import FleetGrid
from consortium.server.isolation.host import AppProcess, Isolation
from consortium.server.rounds_cache import RoundsCache
from consortium.server.run_files import (
    checkpoint_recorder,
    final_model_bytes,
    load_app_checkpoint,
    publish_model_files,
    restore_rounds,
)
from consortium.server.run_record import RunRecord, summary
from consortium.server.run_tracking import Tracking
from consortium.server.store import RunStatus, RunView, StateStore
from consortium.tracking.base import Observers, RunObserver
from consortium.tracking.log import LogObserver
from consortium.transport.fleet_api import RunBundle

log = logging.getLogger("consortium.server")

#: room in a frame from an app process besides the largest message it may carry
FRAME_OVERHEAD = 64 * 1024 * 1024
#: ``run list`` shows this many runs, newest first.
LIST_LIMIT = 1000
_ACTIVE = (RunStatus.PENDING, RunStatus.RUNNING)
#: what a run left under way by a crashed server (not shut down cleanly) is told
CRASHED = "the server stopped while the run was under way (crash, kill or outage)"
#: what a run stopped by a server shutdown (SIGTERM/SIGINT) is told
SHUT_DOWN = "the server was shut down while the run was under way"


@dataclass
class Run:
    """What this server holds in memory while it executes a run (its state is in the store)."""

    #: what nodes fetch to run it (``run_bundle``)
    bundle: RunBundle
    run_dir: Path
    #: the sandboxed process that runs the coordinator's server app
    process: AppProcess
    #: the checkpoint a resumed run continues from
    checkpoint: Checkpoint | None = None
    thread: threading.Thread | None = None
    #: set when the server shuts down: the run ends ``interrupted``, not stopped
    interrupted: bool = False
    #: the only nodes the run may use (None: every node; see FleetGrid)
    nodes: tuple[str, ...] | None = None

    @property
    def run_id(self) -> str:
        return self.bundle.run_id


class RunManager:
    """Starts runs in background threads against the fleet; the Control API's backend.

    ``store`` is where every run's state lives: a new RunManager on the same
    store (a restarted server) lists and shows the runs of the previous one.
    """

    def __init__(
        self,
        fleet: Fleet,
        root: Path,
        *,
        store: StateStore,
        observers: list[RunObserver] | None = None,
        isolation: Isolation | None = None,
        tracking: Tracking | None = None,
        audit: AuditSink = discard,
        run_observers: Callable[[str], list[RunObserver]] | None = None,
    ) -> None:
        self.fleet = fleet
        #: observers of one run, by its id, besides ``observers`` (shared by every run, so
        #: they cannot tell concurrent runs' rounds apart): the REST API's event streams
        self.run_observers = run_observers or (lambda run_id: [])
        self.isolation = isolation or Isolation()
        #: the run log, plot and MLflow tracking of each run (None: only the server log)
        self.tracking = tracking
        #: where each run's end is recorded (who started and stopped it: the Control API's)
        self.audit = audit
        self.store = store
        #: absolute: the app process works in a run's folder, where a relative path breaks
        self.root = root.resolve()
        self.observers = observers or []
        self._runs: dict[str, Run] = {}
        #: each running run's grid (``run show`` reports whom it waits for)
        self._grids: dict[str, FleetGrid] = {}
        self._lock = threading.Lock()
        #: the rounds of recently shown runs (``run show`` during a 200-node run)
        self._rounds = RoundsCache(store)

    # -- ControlBackend -------------------------------------------------------------
    def start_run(
        self,
        bundle: bytes,
        run_config_json: str,
        seed: int,
        nodes: Sequence[str] | None = None,
    ) -> str:
        """Start a run; ``nodes`` (when given) are the only nodes it may use."""
        run_id = uuid.uuid4().hex[:12]
        chosen = tuple(sorted(set(nodes))) if nodes is not None else None
        return self._launch(run_id, bundle, run_config_json, seed, resume=False, nodes=chosen)

    def resume(self, run_id: str) -> str:
        """Continue a run after a server crash, from its newest valid checkpoint."""
        run_dir = self.root / "runs" / run_id
        record = run_dir / "run.json"
        if not record.exists():
            raise ConfigError(f"no run {run_id!r} under {self.root / 'runs'}")
        meta = json.loads(record.read_text())
        bundle = (run_dir / "bundle.zip").read_bytes()
        chosen = meta.get("nodes")
        nodes = tuple(str(n) for n in chosen) if isinstance(chosen, list) else None
        return self._launch(run_id, bundle, meta["run_config_json"], int(meta["seed"]),
                            resume=True, nodes=nodes)  # fmt: skip

    def _launch(
        self,
        run_id: str,
        bundle: bytes,
        run_config_json: str,
        seed: int,
        *,
        resume: bool,
        nodes: tuple[str, ...] | None = None,
    ) -> str:
        run_dir = self.root / "runs" / run_id
        app_dir = run_dir / "app"
        if not (resume and (app_dir / "consortium.toml").exists()):
            extract_bundle(bundle, app_dir)
        spec = load_app_spec(app_dir)
        try:
            overrides = json.loads(run_config_json or "{}")
        except ValueError as exc:
            raise ConfigError(f"run config is not JSON: {exc}") from exc
        run_config = spec.run_config(overrides)
        process = AppProcess.start(
            run_id=run_id,
            app_dir=app_dir,
            server_ref=spec.manifest.app.server,
            run_config=run_config,
            seed=seed,
            run_dir=run_dir,
            resume=resume,
            isolation=self.isolation,
            max_frame=self.fleet.max_message_bytes + FRAME_OVERHEAD,
        )
        num_rounds = process.num_rounds
        run = Run(
            RunBundle(
                run_id=run_id,
                app_name=spec.name,
                app_version=spec.manifest.app.version,
                client_entry=spec.manifest.app.client,
                bundle=bundle,
                bundle_sha256=bundle_digest(bundle),
                run_config_json=json.dumps(run_config),
                seed=seed,
            ),
            run_dir,
            process,
            nodes=nodes,
        )
        checkpoint = (
            load_app_checkpoint(run_dir / "checkpoints", run_id, RecordLimits()) if resume else None
        )
        run.checkpoint = checkpoint
        if resume and checkpoint is None:
            log.warning("run %s has no valid checkpoint: starting it from round 1", run_id)
        if resume and self.store.get_run(run_id) is not None:
            self.store.set_run_status(run_id, RunStatus.RUNNING)  # refused if it had finished
            restore_rounds(self.store, run_id, checkpoint)
        else:  # a new run, or one resumed onto a database that never saw it
            self.store.create_run(
                run_id=run_id,
                app_name=spec.name,
                app_version=spec.manifest.app.version,
                config=run_config,
                seed=seed,
                num_rounds=num_rounds,
            )
            restore_rounds(self.store, run_id, checkpoint)
        if not resume:
            (run_dir / "bundle.zip").write_bytes(bundle)
            record = {"run_id": run_id, "seed": seed, "run_config_json": run_config_json,
                      "nodes": None if nodes is None else list(nodes)}  # fmt: skip
            (run_dir / "run.json").write_text(json.dumps(record))
        with self._lock:
            self._runs[run_id] = run
        run.thread = threading.Thread(
            target=self._execute,
            args=(run,),
            name=f"run-{run_id}",
            daemon=True,
        )
        run.thread.start()
        log.info("run %s started: %s %s", run_id, spec.name, spec.manifest.app.version)
        return run_id

    def list_runs(self) -> list[dict[str, Any]]:
        """The newest :data:`LIST_LIMIT` runs in the store, newest first."""
        views = self.store.list_runs(limit=LIST_LIMIT)
        return [summary(v, rounds_done=v.rounds_done) for v in views]

    def show_run(self, run_id: str) -> dict[str, Any] | None:
        """The run's record; while it waits for nodes or replies, ``waiting`` says for whom."""
        record = self.record(run_id)
        if record is None:
            return None
        detail = record.detail()
        grid = self._grids.get(run_id)
        waiting = grid.waiting() if grid is not None else None
        if waiting is not None:
            detail["waiting"] = waiting.as_dict()
        return detail

    def stop_run(self, run_id: str) -> bool:
        """Ask a run this server executes to stop; False if it is not pending or running."""
        run = self._runs.get(run_id)
        view = self.store.get_run(run_id)
        if run is None or view is None or view.status not in _ACTIVE:
            return False
        run.process.request_stop()
        return True

    def run_bundle(self, node: str, run_id: str) -> RunBundle | None:
        run = self._runs.get(run_id)
        return run.bundle if run is not None else None

    def record(self, run_id: str) -> RunRecord | None:
        """The run as the store holds it (None for a run it has never seen)."""
        view = self.store.get_run(run_id)
        if view is None:
            return None
        rounds = self._rounds.get(run_id, view.rounds_done)
        return RunRecord(view, rounds, self.store.latest_checkpoint(run_id))

    def wait(self, run_id: str, timeout: float | None = None) -> RunRecord:
        """Wait for the run's thread to end (at most ``timeout`` seconds), then read it."""
        run = self._runs.get(run_id)
        if run is not None and run.thread is not None:
            run.thread.join(timeout)
        record = self.record(run_id)
        if record is None:
            raise ConfigError(f"no run {run_id!r} in the state store")
        return record

    # -- execution ------------------------------------------------------------------
    def _execute(self, run: Run) -> None:
        grid = FleetGrid(self.fleet, run.nodes)
        self._grids[run.run_id] = grid
        tracked, close_tracking = (
            self.tracking.observers(run.run_id, run.run_dir)
            if self.tracking is not None
            else ([LogObserver(max_node_warnings=0)], lambda: None)
        )
        try:
            ended = run.process.serve(
                grid,
                Observers([*tracked, *self._observers(), *self.run_observers(run.run_id)]),
                checkpoint_recorder(self.store, run.run_id),
                RecordLimits(),
                run.checkpoint.history if run.checkpoint is not None else None,
            )
        finally:
            grid.close()
            close_tracking()
            self._grids.pop(run.run_id, None)
        error: str | None = None
        if ended.kind == "finished":
            status = RunStatus.FINISHED
            publish_model_files(ended.model_files, run.run_dir)
        elif ended.kind == "stopped":
            status = RunStatus.INTERRUPTED if run.interrupted else RunStatus.STOPPED
            error = SHUT_DOWN if run.interrupted else None
        else:
            status, error = RunStatus.FAILED, ended.error
            log.error("run %s failed: %s", run.run_id, error)
        self._record_end(run.run_id, status, error)

    def _record_end(
        self, run_id: str, status: RunStatus, error: str | None, *, retry: bool = True
    ) -> None:
        """Record how a run ended (retried like a round), or log why that failed."""
        try:
            if retry:
                self.store.persist(
                    f"the end of run {run_id}",
                    lambda: self.store.set_run_status(run_id, status, error=error),
                )
            else:
                self.store.set_run_status(run_id, status, error=error)
        except Exception as exc:
            log.error("state store: could not record run %s as %s: %s", run_id, status, exc)
        try:
            end = {"status": status.value, "error": error or ""}
            self.audit(AuditEvent(SERVER_ACTOR, RUN_END, run_id=run_id, detail=end))
        except Exception as exc:  # the run's end is in the store; the log says what failed
            log.error("audit log: could not record the end of run %s: %s", run_id, exc)

    def _observers(self) -> list[RunObserver]:
        # the run's end is recorded by _execute, which knows the error and a stop from a
        # failure; strict: a round that cannot be recorded fails the run (StateStoreError)
        return [*self.observers, self.store.observer(strict=True, record_end=False)]

    # -- shutdown and restart ---------------------------------------------------------
    def interrupt(self, timeout: float) -> list[str]:
        """Stop every run this server executes between rounds and record it ``interrupted``
        (a server shutdown); waits up to ``timeout`` seconds in all. Returns their ids."""
        with self._lock:
            runs = [r for r in self._runs.values() if r.thread is not None and r.thread.is_alive()]
        for run in runs:
            run.interrupted = True
            run.process.request_stop()
        deadline = time.monotonic() + timeout
        for run in runs:
            assert run.thread is not None
            run.thread.join(max(0.0, deadline - time.monotonic()))
            if run.thread.is_alive():  # still inside a round: the process goes anyway
                log.warning("run %s did not reach the end of its round in %g s", run.run_id,
                            timeout)  # fmt: skip
                self._record_end(run.run_id, RunStatus.INTERRUPTED, SHUT_DOWN, retry=False)
        return [r.run_id for r in runs]

    def recover_interrupted(self, *, resume: bool) -> list[str]:
        """Runs a previous server left under way: ``running`` or ``pending`` (it crashed)
        or ``interrupted`` (it was shut down). With ``resume`` each is resumed from its
        checkpoint; otherwise a crashed one is marked ``interrupted`` and, for each, one
        line of the log says how to resume it. Runs this server executes are left alone.
        Returns the ids found."""
        found: list[RunView] = []
        for status in (*_ACTIVE, RunStatus.INTERRUPTED):
            found += self.store.list_runs(status=status, limit=None)
        found = [v for v in found if v.id not in self._runs]
        for view in sorted(found, key=lambda v: v.created_at):
            if view.status is not RunStatus.INTERRUPTED:
                self.store.set_run_status(view.id, RunStatus.INTERRUPTED, error=CRASHED)
            if not resume:
                log.warning(
                    "run %s was interrupted after %d round(s) (%s); resume it with "
                    "`consortium server <the same options> --resume %s`, or start the server "
                    "with --resume-interrupted to resume every interrupted run",
                    view.id, view.rounds_done, view.error or CRASHED, view.id,
                )  # fmt: skip
                continue
            try:
                self.resume(view.id)
            except ConsortiumError as exc:
                log.error("run %s could not be resumed and stays interrupted: %s", view.id, exc)
            else:
                log.info("run %s was interrupted: resumed (--resume-interrupted)", view.id)
        return [v.id for v in found]

    # -- the Control API's model download ---------------------------------------------
    def global_model(self, run_id: str) -> bytes | None:
        """The run's final global model, else its newest verified checkpoint's, in the
        Arrays wire format (read without pickle); None for a run the store does not know,
        or one with no model yet."""
        if self.store.get_run(run_id) is None:  # and so run_id names no other folder
            return None
        return final_model_bytes(self.root / "runs" / run_id)
