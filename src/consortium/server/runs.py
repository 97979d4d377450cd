"""Runs on a deployment server: start from an uploaded app bundle, list, show, stop.

The state store is the one record of every run (status, error, rounds,
per-node results and timings, checkpoints): ``run list`` and ``run show``
read it, so a run's history outlives the server process. What stays in
memory is what is not state: a running run's thread, its stop event and the
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consortium.apps.bundle import bundle_digest, extract_bundle
from consortium.apps.loader import load_object
from consortium.apps.manifest import load_app_spec
from consortium.core.errors import ConfigError, ConsortiumError
from consortium.core.records import Config
from consortium.server.app import ServerApp
from consortium.server.checkpoint import Checkpoint, checkpoint_digest, load_checkpoint
from consortium.server.config import ServerConfig
from consortium.server.context import CheckpointSettings, RunStopped, ServerContext
from consortium.server.fleet import Fleet
from consortium.server.fleet_grid import FleetGrid
from consortium.server.host import run_server_app
from consortium.server.run_record import RunRecord, summary
from consortium.server.store import RunStatus, RunView, StateStore
from consortium.tracking.base import RunObserver
from consortium.tracking.log import LogObserver
from consortium.transport.fleet_api import RunBundle

log = logging.getLogger("consortium.server")

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
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    #: set with ``stop`` when the server shuts down: the run ends ``interrupted``, not stopped
    interrupted: bool = False

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
    ) -> None:
        self.fleet = fleet
        self.store = store
        self.root = root
        self.observers = observers or []
        self._runs: dict[str, Run] = {}
        self._lock = threading.Lock()

    # -- ControlBackend -------------------------------------------------------------
    def start_run(self, bundle: bytes, run_config_json: str, seed: int) -> str:
        run_id = uuid.uuid4().hex[:12]
        return self._launch(run_id, bundle, run_config_json, seed, resume=False)

    def resume(self, run_id: str) -> str:
        """Continue a run after a server crash, from its newest valid checkpoint."""
        run_dir = self.root / "runs" / run_id
        record = run_dir / "run.json"
        if not record.exists():
            raise ConfigError(f"no run {run_id!r} under {self.root / 'runs'}")
        meta = json.loads(record.read_text())
        bundle = (run_dir / "bundle.zip").read_bytes()
        return self._launch(run_id, bundle, meta["run_config_json"], int(meta["seed"]), resume=True)

    def _launch(
        self, run_id: str, bundle: bytes, run_config_json: str, seed: int, *, resume: bool
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
        server_app = load_object(spec.manifest.app.server, [str(app_dir)])
        if not isinstance(server_app, ServerApp):
            raise ConfigError(f"{spec.manifest.app.server!r} is not a ServerApp")
        program, num_rounds = _prepare(server_app, run_config, seed)
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
        )
        checkpoint = load_checkpoint(run_dir / "checkpoints") if resume else None
        if resume and checkpoint is None:
            log.warning("run %s has no valid checkpoint: starting it from round 1", run_id)
        if resume and self.store.get_run(run_id) is not None:
            self.store.set_run_status(run_id, RunStatus.RUNNING)  # refused if it had finished
            self._restore_rounds(run_id, checkpoint)
        else:  # a new run, or one resumed onto a database that never saw it
            self.store.create_run(
                run_id=run_id,
                app_name=spec.name,
                app_version=spec.manifest.app.version,
                config=run_config,
                seed=seed,
                num_rounds=num_rounds,
            )
            self._restore_rounds(run_id, checkpoint)
        if not resume:
            (run_dir / "bundle.zip").write_bytes(bundle)
            record = {"run_id": run_id, "seed": seed, "run_config_json": run_config_json}
            (run_dir / "run.json").write_text(json.dumps(record))
        with self._lock:
            self._runs[run_id] = run
        run.thread = threading.Thread(
            target=self._execute,
            args=(run, program, run_config, seed, checkpoint),
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
        record = self.record(run_id)
        return None if record is None else record.detail()

    def stop_run(self, run_id: str) -> bool:
        """Ask a run this server executes to stop; False if it is not pending or running."""
        run = self._runs.get(run_id)
        view = self.store.get_run(run_id)
        if run is None or view is None or view.status not in _ACTIVE:
            return False
        run.stop.set()
        return True

    def run_bundle(self, node: str, run_id: str) -> RunBundle | None:
        run = self._runs.get(run_id)
        return run.bundle if run is not None else None

    def record(self, run_id: str) -> RunRecord | None:
        """The run as the store holds it (None for a run it has never seen)."""
        view = self.store.get_run(run_id)
        if view is None:
            return None
        history = self.store.run_history(run_id)
        return RunRecord(view, history.rounds, self.store.latest_checkpoint(run_id))

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
    def _execute(
        self,
        run: Run,
        program: ServerApp,
        run_config: Config,
        seed: int,
        checkpoint: Checkpoint | None,
    ) -> None:
        error: str | None = None
        grid = FleetGrid(self.fleet)
        try:
            run_server_app(
                program,
                grid,
                run_config=run_config,
                seed=seed,
                run_id=run.run_id,
                run_dir=run.run_dir,
                observers=[LogObserver(max_node_warnings=0), *self._observers()],
                stop=run.stop,
                checkpoints=CheckpointSettings(
                    run.run_dir / "checkpoints",
                    on_written=self._checkpointed(run),
                    budget=self.fleet.transfer_budget,
                ),
                resume=checkpoint,
            )
            status = RunStatus.FINISHED
        except RunStopped:
            status = RunStatus.INTERRUPTED if run.interrupted else RunStatus.STOPPED
            error = SHUT_DOWN if run.interrupted else None
        except ConsortiumError as exc:
            status, error = RunStatus.FAILED, str(exc)
            log.error("run %s failed: %s", run.run_id, exc)
        except Exception as exc:  # a bug in the app's server code: report, keep serving
            status, error = RunStatus.FAILED, f"{type(exc).__name__}: {exc}"
            log.exception("run %s crashed", run.run_id)
        finally:
            grid.close()
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

    def _observers(self) -> list[RunObserver]:
        # the run's end is recorded by _execute, which knows the error and a stop from a
        # failure; strict: a round that cannot be recorded fails the run (StateStoreError)
        return [*self.observers, self.store.observer(strict=True, record_end=False)]

    def _checkpointed(self, run: Run) -> Callable[[int, Path], None]:
        """Called once each checkpoint is on disk: kept in the store, shown by ``run show``."""
        store = self.store

        def record(rnd: int, path: Path) -> None:
            try:
                digest = checkpoint_digest(path)
            except Exception as exc:  # just written: only a file removed meanwhile fails
                log.warning("run %s: could not read checkpoint %s: %s", run.run_id, path, exc)
                return
            try:
                store.record_checkpoint(run.run_id, rnd, str(path), digest)
            except Exception as exc:
                log.warning("state store: could not record checkpoint %s: %s", path, exc)

        return record

    def _restore_rounds(self, run_id: str, checkpoint: Checkpoint | None) -> None:
        """Record the rounds a resumed run's checkpoint holds that the store lacks (a
        write that failed before the crash, or a database that never saw the run)."""
        if checkpoint is None:
            return
        recorded = {r.round for r in self.store.list_rounds(run_id)}
        for rnd in checkpoint.history.rounds:
            if rnd.round in recorded:
                continue
            try:
                self.store.record_round(run_id, rnd)
            except Exception as exc:  # the checkpoint, not this record, is what resumes
                log.warning("state store: could not restore round %d of run %s: %s",
                            rnd.round, run_id, exc)  # fmt: skip

    # -- shutdown and restart ---------------------------------------------------------
    def interrupt(self, timeout: float) -> list[str]:
        """Stop every run this server executes between rounds and record it ``interrupted``
        (a server shutdown); waits up to ``timeout`` seconds in all. Returns their ids."""
        with self._lock:
            runs = [r for r in self._runs.values() if r.thread is not None and r.thread.is_alive()]
        for run in runs:
            run.interrupted = True
            run.stop.set()
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


def _prepare(app: ServerApp, run_config: Config, seed: int) -> tuple[ServerApp, int]:
    """The program to run and its number of rounds (0 when a main decides).

    An app with a ``server_fn`` is configured now, so that a bad config fails
    the start request instead of the run; the run then uses that config.
    """
    if app.server_fn is None:
        return app, 0
    config = app.config(ServerContext(run_config=run_config, seed=seed))
    rounds = config.num_rounds if isinstance(config, ServerConfig) else config.num_steps
    return ServerApp(lambda _: config), rounds
