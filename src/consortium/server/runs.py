"""Runs on a deployment server: start from an uploaded app bundle, list, show, stop."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consortium.apps.bundle import bundle_digest, extract_bundle
from consortium.apps.loader import load_object
from consortium.apps.manifest import load_app_spec
from consortium.core.context import Context
from consortium.core.errors import ConfigError, ConsortiumError
from consortium.core.history import RoundRecord
from consortium.core.message import SERVER_ID
from consortium.core.records import Config
from consortium.server.app import ServerApp, ServerConfig
from consortium.server.checkpoint import Checkpoint, load_checkpoint
from consortium.server.fleet import Fleet
from consortium.server.loop import RoundLoop, RunStopped
from consortium.tracking.base import RunObserver
from consortium.tracking.log import LogObserver
from consortium.transport.fleet_api import RunBundle

if TYPE_CHECKING:
    from consortium.server.store import StateStore

log = logging.getLogger("consortium.server")


@dataclass
class Run:
    """One run's record on this server."""

    run_id: str
    bundle: RunBundle
    run_dir: Path
    status: str = "pending"
    error: str = ""
    created: float = field(default_factory=time.time)
    finished: float | None = None
    rounds: list[RoundRecord] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    #: the newest checkpoint written: {"round", "path", "digest"} (what --resume restarts from)
    checkpoint: dict[str, Any] | None = None

    def summary(self, *, detail: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "run_id": self.run_id,
            "app": f"{self.bundle.app_name} {self.bundle.app_version}",
            "status": self.status,
            "rounds_done": len(self.rounds),
            "created": self.created,
            "finished": self.finished,
            "error": self.error,
        }
        if detail:
            out["checkpoint"] = self.checkpoint
            out["run_config"] = json.loads(self.bundle.run_config_json)
            out["rounds"] = [
                {
                    "round": r.round,
                    "seconds": r.seconds,
                    "metrics": r.global_metrics(),
                    "nodes": [
                        {
                            "node": n.node_id,
                            "stage": n.stage,
                            "outcome": n.outcome.value,
                            "seconds": n.seconds,
                            "timing": n.timing,
                            "reason": n.reason,
                        }
                        for n in r.nodes
                    ],
                }
                for r in self.rounds
            ]
        return out


class _Recorder:
    """Keeps each finished round on the Run for `consortium run show`."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def on_run_start(self, info: Any) -> None:
        self.run.status = "running"

    def on_round_end(self, record: RoundRecord) -> None:
        self.run.rounds.append(record)

    def on_run_end(self, history: Any, *, failed: bool) -> None:
        self.run.finished = time.time()


class RunManager:
    """Starts runs in background threads against the fleet; the Control API's backend."""

    def __init__(
        self,
        fleet: Fleet,
        root: Path,
        *,
        observers: list[RunObserver] | None = None,
        node_wait: float = 300.0,
        store: StateStore | None = None,
    ) -> None:
        self.fleet = fleet
        self.store = store
        self.root = root
        self.observers = observers or []
        self.node_wait = node_wait
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
        config = server_app(Context(node_id=SERVER_ID, run_config=run_config, seed=seed))
        run = Run(
            run_id,
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
        if self.store is not None:
            if resume:
                self.store.set_run_status(run_id, "running")
            else:
                self.store.create_run(
                    run_id=run_id,
                    app_name=spec.name,
                    app_version=spec.manifest.app.version,
                    config=run_config,
                    seed=seed,
                    num_rounds=config.num_rounds,
                )
        if not resume:
            (run_dir / "bundle.zip").write_bytes(bundle)
            record = {"run_id": run_id, "seed": seed, "run_config_json": run_config_json}
            (run_dir / "run.json").write_text(json.dumps(record))
        checkpoint = load_checkpoint(run_dir / "checkpoints") if resume else None
        if resume and checkpoint is None:
            log.warning("run %s has no valid checkpoint: starting it from round 1", run_id)
        with self._lock:
            self._runs[run_id] = run
        run.thread = threading.Thread(
            target=self._execute,
            args=(run, config, run_config, seed, checkpoint),
            name=f"run-{run_id}",
            daemon=True,
        )
        run.thread.start()
        log.info("run %s started: %s %s", run_id, spec.name, spec.manifest.app.version)
        return run_id

    def list_runs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.summary() for r in self._runs.values()]

    def show_run(self, run_id: str) -> dict[str, Any] | None:
        run = self._runs.get(run_id)
        return run.summary(detail=True) if run is not None else None

    def stop_run(self, run_id: str) -> bool:
        run = self._runs.get(run_id)
        if run is None or run.status not in ("pending", "running"):
            return False
        run.stop.set()
        return True

    def run_bundle(self, node: str, run_id: str) -> RunBundle | None:
        run = self._runs.get(run_id)
        return run.bundle if run is not None else None

    def wait(self, run_id: str, timeout: float | None = None) -> Run:
        run = self._runs[run_id]
        if run.thread is not None:
            run.thread.join(timeout)
        return run

    # -- execution ------------------------------------------------------------------
    def _execute(
        self,
        run: Run,
        config: ServerConfig,
        run_config: Config,
        seed: int,
        checkpoint: Checkpoint | None,
    ) -> None:
        need = int(getattr(config.strategy, "min_available_nodes", 1) or 1)
        online = self.fleet.wait_for_nodes(need, self.node_wait)
        if len(online) < need:
            run.status, run.error = "failed", f"only {len(online)} of {need} nodes connected"
            log.error("run %s: %s", run.run_id, run.error)
            return
        loop = RoundLoop(
            config,
            self.fleet,
            seed=seed,
            run_id=run.run_id,
            run_dir=run.run_dir,
            params=run_config,
            observers=[LogObserver(max_node_warnings=0), _Recorder(run), *self._observers()],
            stop=run.stop,
            checkpoint_dir=run.run_dir / "checkpoints",
            resume=checkpoint,
            on_checkpoint=self._checkpointed(run),
        )
        if checkpoint is not None:
            run.rounds = list(checkpoint.history.rounds)
        try:
            loop.run()
            run.status = "finished"
        except RunStopped:
            run.status = "stopped"
        except ConsortiumError as exc:
            run.status, run.error = "failed", str(exc)
            log.error("run %s failed: %s", run.run_id, exc)
        except Exception as exc:  # a bug in the app's server code: report, keep serving
            run.status, run.error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("run %s crashed", run.run_id)
        run.finished = time.time()
        if self.store is not None:
            try:
                self.store.set_run_status(run.run_id, run.status, error=run.error or None)
            except Exception as exc:
                log.warning("state store: could not record the end of run %s: %s", run.run_id, exc)

    def _observers(self) -> list[RunObserver]:
        extra: list[RunObserver] = list(self.observers)
        if self.store is not None:
            extra.append(self.store.observer())
        return extra

    def _checkpointed(self, run: Run) -> Callable[[int, Path], None]:
        """Called once each checkpoint is on disk: shown by ``run show``, kept in the store."""
        store = self.store

        def record(rnd: int, path: Path) -> None:
            from consortium.server.checkpoint import checkpoint_digest

            try:
                digest = checkpoint_digest(path)
            except Exception as exc:  # just written: only a file removed meanwhile fails
                log.warning("run %s: could not read checkpoint %s: %s", run.run_id, path, exc)
                return
            run.checkpoint = {"round": rnd, "path": str(path), "digest": digest}
            if store is None:
                return
            try:
                store.record_checkpoint(run.run_id, rnd, str(path), digest)
            except Exception as exc:
                log.warning("state store: could not record checkpoint %s: %s", path, exc)

        return record

    def fail_interrupted(self) -> None:
        """Runs a crashed server left 'running' are failed, unless resumed."""
        if self.store is None:
            return
        for view in self.store.list_runs(status="running"):
            if view.id not in self._runs:
                self.store.set_run_status(view.id, "failed", error="server restarted")
