"""ServerContext: what a server program knows about its run, and how it reports and saves.

A ``ServerApp`` main receives ``(grid, context)``. The context carries the
run's identity and config (``run_id``, ``run_config``, ``seed``), a
generator per step (:meth:`ServerContext.rng`), and the run's services:

* **reporting** — :meth:`ServerContext.start_run` once, then
  :meth:`ServerContext.report` per finished round (or step): the record goes
  to the run's history and to every observer (terminal, MLflow, run log, the
  state store in deployment);
* **checkpoints** — :meth:`ServerContext.save_checkpoint` saves a step's
  progress (a model and any state dict of numbers, strings, lists and
  arrays); after a server crash the main is called again from the top with
  :attr:`ServerContext.restored` set to the newest valid checkpoint, and the
  history restored, so it can continue where it left off;
* **stopping** — :meth:`ServerContext.check_stop` raises :class:`RunStopped`
  once the coordinator asked the run to stop;
* **the result** — :meth:`ServerContext.finish` writes the final model.

Everything a main needs is here or on the grid; it never sees the transport,
the state database or the server's keys.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConsortiumError
from consortium.core.history import History, RoundRecord, RunInfo
from consortium.core.message import SERVER_ID
from consortium.core.protocol import PARAM_SEED
from consortium.core.records import Config, Metrics
from consortium.core.rng import SERVER_KEY, derive_rng
from consortium.server.checkpoint import Checkpoint, checkpoint_path, prepare_checkpoint
from consortium.server.checkpoint_writer import CheckpointWriter, OnCheckpoint, TransferBudget
from consortium.server.model_io import save_model
from consortium.tracking.base import Observers

log = logging.getLogger("consortium.server")

#: Writes extra model files (e.g. a joblib'd scikit-learn estimator) into a folder.
ModelExporter = Callable[[Arrays, Path], list[Path]]

#: how many checkpoint files a run keeps (the newest and the one before it)
KEEP_CHECKPOINTS = 2


class RunStopped(ConsortiumError):
    """The coordinator stopped the run between rounds."""


@dataclass(slots=True)
class CheckpointSettings:
    """Where and how a run keeps checkpoints (None on the context: it keeps none)."""

    directory: Path
    #: called with (step, path) once a checkpoint file is in place
    on_written: OnCheckpoint | None = None
    #: the transport's budget of bytes in transit; a model being written counts against it
    budget: TransferBudget | None = None


@dataclass(slots=True)
class ServerContext(Context):
    """The server side's :class:`~consortium.core.context.Context` (see the module docstring)."""

    node_id: str = SERVER_ID
    run_id: str = ""
    run_dir: Path | None = None
    #: recorded with the run besides the run config (e.g. num_nodes, backend)
    params: Config = field(default_factory=dict)
    history: History = field(default_factory=History)
    observers: Observers = field(default_factory=Observers)
    #: the newest valid checkpoint of this run when the main is re-entered after a crash
    restored: Checkpoint | None = None
    checkpoints: CheckpointSettings | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    #: what the run leaves behind, set by :meth:`finish`
    final_arrays: Arrays | None = None
    model_files: list[Path] = field(default_factory=list)
    #: central metrics of the initial model (round 0)
    initial_metrics: Metrics = field(default_factory=dict)
    _started: bool = field(default=False, init=False, repr=False)
    _writer: CheckpointWriter | None = field(default=None, init=False, repr=False)

    # -- randomness -----------------------------------------------------------------
    def rng(self, round_: int, *, stream: str | None = None) -> np.random.Generator:
        """The server's generator for step ``round_`` (from the run seed; same on resume)."""
        return derive_rng(self.seed, round_, SERVER_KEY, stream=stream)

    # -- reporting ------------------------------------------------------------------
    def start_run(self, node_ids: list[str], num_rounds: int, params: Config) -> None:
        """Tell the observers the run started (once; later calls do nothing).

        ``params`` are the run's hyperparameters worth recording; the context's
        own ``params`` and the run config are added.
        """
        if self._started:
            return
        self._started = True
        info = RunInfo(
            run_id=self.run_id,
            num_rounds=num_rounds,
            node_ids=node_ids,
            params={**params, **self.params},
            run_dir=str(self.run_dir) if self.run_dir else None,
        )
        self.observers.on_run_start(info)

    def report(self, record: RoundRecord) -> None:
        """A round (or step) is over: keep it in the history and tell the observers."""
        self._start_unannounced()
        self.history.rounds.append(record)
        self.observers.on_round_end(record)

    def end_run(self, *, failed: bool) -> None:
        """Tell the observers the run ended (the host calls this after the main)."""
        self._start_unannounced()
        self.observers.on_run_end(self.history, failed=failed)

    def _start_unannounced(self) -> None:
        """A main that never called :meth:`start_run`: start the run with what is known."""
        if not self._started:
            self.start_run([], 0, {PARAM_SEED: self.seed, **self.run_config})

    # -- stopping -------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        """True once the coordinator asked the run to stop."""
        return self.stop_event.is_set()

    def check_stop(self, step: int) -> None:
        """Raise :class:`RunStopped` if the run was asked to stop before ``step``."""
        if self.stopping:
            raise RunStopped(f"run {self.run_id} stopped before round {step}")

    # -- checkpoints ------------------------------------------------------------------
    @property
    def keeps_checkpoints(self) -> bool:
        return self.checkpoints is not None

    def save_checkpoint(
        self, step: int, arrays: Arrays, state: dict[str, Any], *, background: bool = True
    ) -> Path | None:
        """Save the run's progress after ``step``: a model and a state dict.

        ``state`` may hold numbers, strings, booleans, None, lists, nested
        dicts with string keys, and numpy arrays; it must be a snapshot (the
        write may run in the background while the program goes on: do not
        change arrays in it in place afterwards). The history so far is saved
        too. Returns the checkpoint's path, or None when this run keeps no
        checkpoints. A write that failed is raised at the next save, at
        :meth:`wait_checkpoints`, or when the run ends.
        """
        settings = self.checkpoints
        if settings is None:
            return None
        if self._writer is None:
            self._writer = CheckpointWriter(settings.on_written, budget=settings.budget)
        self._writer.background = background
        prepared = prepare_checkpoint(
            settings.directory,
            step,
            arrays,
            state,
            self.history,
            seed=self.seed,
            run_id=self.run_id,
            keep=KEEP_CHECKPOINTS,
        )
        self._writer.submit(prepared)
        return checkpoint_path(settings.directory, step)

    def wait_checkpoints(self) -> None:
        """Block until the checkpoint being written is on disk; raise if writing it failed."""
        if self._writer is not None:
            self._writer.wait()

    def settle_checkpoints(self) -> None:
        """The run is ending in failure: let a write in flight land, and log its error."""
        try:
            self.wait_checkpoints()
        except Exception as exc:
            log.error("run %s: checkpoint write failed: %s", self.run_id, exc)

    # -- the result -------------------------------------------------------------------
    def finish(self, arrays: Arrays, exporter: ModelExporter | None = None) -> list[Path]:
        """The run's final model: written to ``model.npz`` in the run folder (if any),
        with any files ``exporter`` adds; returned by the simulation as the result."""
        self.wait_checkpoints()
        self.final_arrays = arrays
        if self.run_dir is None:
            return []
        files = [save_model(arrays, self.run_dir / "model.npz")]
        if exporter is not None:
            files += exporter(arrays, self.run_dir)
        self.model_files = files
        return files
