"""Hosting one run of a ServerApp: build its context, call it, report the end, return the result.

The simulation engine and the deployment server's run manager both run apps
through :func:`run_server_app`, so a main behaves the same in both; they
differ only in the grid they pass and in whether the run keeps checkpoints.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from consortium.core.arrays import Arrays
from consortium.core.grid import Grid
from consortium.core.history import History
from consortium.core.records import Config, Metrics
from consortium.server.app import ServerApp
from consortium.server.checkpoint import Checkpoint
from consortium.server.config import ServerConfig
from consortium.server.context import CheckpointSettings, ServerContext
from consortium.tracking.base import Observers, RunObserver


@dataclass(slots=True)
class RunResult:
    """What a finished run leaves behind."""

    run_id: str
    arrays: Arrays
    history: History
    initial_metrics: Metrics = field(default_factory=dict)
    run_dir: Path | None = None
    model_files: list[Path] = field(default_factory=list)


def run_server_app(
    app: ServerApp,
    grid: Grid,
    *,
    run_config: Config | None = None,
    seed: int = 0,
    run_id: str | None = None,
    run_dir: Path | None = None,
    params: Config | None = None,
    observers: Sequence[RunObserver] = (),
    stop: threading.Event | None = None,
    checkpoints: CheckpointSettings | None = None,
    resume: Checkpoint | None = None,
) -> RunResult:
    """Run ``app`` once over ``grid`` and return its result.

    ``params`` are recorded with the run besides what the workflow records;
    ``checkpoints`` says where the run keeps them (None: it keeps none);
    ``resume`` is the checkpoint to continue from after a crash (the main is
    re-entered with ``context.restored`` set and the history restored).
    """
    ctx = ServerContext(
        run_config=dict(run_config or {}),
        seed=seed,
        run_id=run_id or uuid.uuid4().hex[:12],
        run_dir=run_dir,
        params=dict(params or {}),
        observers=Observers(observers),
        restored=resume,
        checkpoints=checkpoints,
        stop_event=stop or threading.Event(),
    )
    if resume is not None:
        ctx.history = resume.history
    try:
        app(grid, ctx)
        ctx.wait_checkpoints()
    except BaseException:
        ctx.settle_checkpoints()
        ctx.end_run(failed=True)
        raise
    ctx.end_run(failed=False)
    return RunResult(
        ctx.run_id,
        ctx.final_arrays if ctx.final_arrays is not None else Arrays(),
        ctx.history,
        ctx.initial_metrics,
        run_dir,
        ctx.model_files,
    )


def prepare_program(app: ServerApp, run_config: Config, seed: int) -> tuple[ServerApp, int]:
    """The program to run and its number of rounds (0 when a main decides).

    An app with a ``server_fn`` is configured now, so that a bad config fails
    the start request instead of the run; the run then uses that config.
    """
    if app.server_fn is None:
        return app, 0
    config = app.config(ServerContext(run_config=run_config, seed=seed))
    rounds = config.num_rounds if isinstance(config, ServerConfig) else config.num_steps
    return ServerApp(lambda _: config), rounds
