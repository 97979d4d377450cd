"""run_simulation: a whole federated run with virtual nodes in one call."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from consortium.client.app import ClientApp
from consortium.core.errors import ConfigError
from consortium.core.grid import Grid
from consortium.core.protocol import PARAM_BACKEND, PARAM_NUM_NODES
from consortium.core.records import Config
from consortium.server.app import ServerApp
from consortium.server.checkpoint import load_checkpoint
from consortium.server.context import CheckpointSettings
from consortium.server.host import RunResult, run_server_app
from consortium.simulation.grid import (
    BackendChoice,
    NodeConfigFn,
    SimulationGrid,
    resolve_backend,
)
from consortium.simulation.ray_backend import RayGrid, RayOptions
from consortium.tracking.base import RunObserver


def run_simulation(
    server_app: ServerApp,
    client_app: ClientApp | str,
    *,
    num_nodes: int | None = None,
    node_ids: Sequence[str] | None = None,
    node_config: NodeConfigFn | None = None,
    run_config: Config | None = None,
    seed: int = 0,
    backend: BackendChoice = "auto",
    workers: int | None = None,
    nodes_per_batch: int | None = None,
    run_dir: Path | None = None,
    run_id: str | None = None,
    observers: Sequence[RunObserver] = (),
    app_path: Sequence[str] = (),
    grid_wrapper: Callable[[Grid], Grid] | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    ray_address: str | None = None,
) -> RunResult:
    """Run ``server_app`` against virtual nodes running ``client_app``.

    Give either ``num_nodes`` (ids ``"0"`` … ``"N-1"``) or explicit
    ``node_ids``. ``node_config(index, node_id)`` gives each node its own
    config (default: ``partition-id`` and ``num-partitions``). ``client_app``
    may be a ``"module:attribute"`` reference, which the processes backend
    requires. ``backend="auto"`` (the default) picks the processes backend for a
    reference and at least :data:`~consortium.simulation.grid.AUTO_PROCESSES_MIN_NODES`
    nodes on a machine with 2 CPUs or more, else threads
    (:func:`~consortium.simulation.grid.resolve_backend`; the run's params record the
    backend that ran). The same ``seed`` gives a bit-identical model for any backend
    and number of ``workers`` (threads: default 1; processes: default one per
    CPU, running ``nodes_per_batch`` node tasks per call, by default a few
    batches per worker per round). ``grid_wrapper`` decorates the grid the round
    loop talks to (e.g. ``AttackedGrid``); the engine still closes its own.
    With ``checkpoint_dir`` the run keeps checkpoints there, as a deployed
    server does; ``resume=True`` continues from the newest valid one (the
    app's main is re-entered with ``context.restored`` set).
    ``backend="ray"`` runs each node task as a Ray task (see
    :mod:`consortium.simulation.ray_backend`): on a local Ray started for
    the run, or on the cluster at ``ray_address``; per-node resources come
    from the run config (``ray-num-cpus`` …, :class:`RayOptions`).
    """
    if node_ids is None:
        if num_nodes is None or num_nodes < 1:
            raise ConfigError(f"num_nodes must be >= 1, got {num_nodes}")
        node_ids = [str(i) for i in range(num_nodes)]
    elif num_nodes is not None and num_nodes != len(node_ids):
        raise ConfigError(f"num_nodes={num_nodes} but {len(node_ids)} node ids were given")
    run_config = dict(run_config or {})
    restored = None
    if resume:
        if checkpoint_dir is None:
            raise ConfigError("resume=True needs the checkpoint_dir to resume from")
        restored = load_checkpoint(checkpoint_dir)
    checkpoints = CheckpointSettings(checkpoint_dir) if checkpoint_dir is not None else None
    chosen = resolve_backend(backend, client_app, len(node_ids))
    if nodes_per_batch is not None and chosen != "processes":
        raise ConfigError(f"nodes_per_batch is for the processes backend, not {chosen!r}")
    grid: SimulationGrid | RayGrid
    if chosen == "ray":
        grid = RayGrid(
            client_app,
            node_ids,
            node_config=node_config,
            run_config=run_config,
            seed=seed,
            app_path=app_path,
            options=RayOptions.from_run_config(run_config, address=ray_address),
        )
    else:
        grid = SimulationGrid(
            client_app,
            node_ids,
            node_config=node_config,
            run_config=run_config,
            seed=seed,
            backend=chosen,
            workers=workers,
            app_path=app_path,
            nodes_per_batch=nodes_per_batch,
        )
    params: Config = {**run_config, PARAM_NUM_NODES: len(node_ids), PARAM_BACKEND: chosen}
    try:
        with _heap_frozen():
            return run_server_app(
                server_app,
                grid_wrapper(grid) if grid_wrapper is not None else grid,
                run_config=run_config,
                seed=seed,
                run_id=run_id,
                run_dir=run_dir,
                params=params,
                observers=observers,
                checkpoints=checkpoints,
                resume=restored,
            )
    finally:
        grid.close()


#: The collector's young-generation threshold during a run (Python's default is 700).
#: A large round allocates tens of thousands of task objects that live until the round
#: ends, so the default starts a young pass every 700 of them, each promoting what it
#: found alive: 10,000 nodes x 5 rounds spent ~0.3 s of the driver's CPU in such passes
#: (processes backend; ~1.3 us of the threads backend's ~30 us per node-task). Raised,
#: passes are fourteen times fewer; cyclic garbage waits at most that many allocations.
RUN_YOUNG_THRESHOLD = 10_000


@contextlib.contextmanager
def _heap_frozen() -> Iterator[None]:
    """Keep the garbage collector's passes out of the run's way.

    A 10,000-node round keeps every task alive while it runs, so the collector runs
    full passes during the run, and each one walked every object of the process,
    the imported modules included: about a third of the framework's cost per task.
    ``gc.freeze`` leaves those objects out until the run ends (``gc.unfreeze``); a
    cycle among them that becomes garbage meanwhile is collected after the run.
    The young generation's threshold is raised to :data:`RUN_YOUNG_THRESHOLD` for the
    run (never lowered) and put back after it. Both are left alone when something else
    froze objects first: the caller, or a run already going on in another thread,
    which puts them back when it ends.
    """
    if gc.get_freeze_count():
        yield
        return
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], RUN_YOUNG_THRESHOLD), *thresholds[1:])
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
