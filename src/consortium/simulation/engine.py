"""run_simulation: a whole federated run with virtual nodes in one call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from consortium.client.app import ClientApp
from consortium.core.context import Context
from consortium.core.errors import ConfigError
from consortium.core.grid import Grid
from consortium.core.message import SERVER_ID
from consortium.core.records import Config
from consortium.server.app import ServerApp
from consortium.server.loop import RoundLoop, RunResult
from consortium.simulation.grid import Backend, NodeConfigFn, SimulationGrid
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
    backend: Backend = "threads",
    workers: int = 1,
    run_dir: Path | None = None,
    run_id: str | None = None,
    observers: Sequence[RunObserver] = (),
    app_path: Sequence[str] = (),
    grid_wrapper: Callable[[Grid], Grid] | None = None,
) -> RunResult:
    """Run ``server_app`` against virtual nodes running ``client_app``.

    Give either ``num_nodes`` (ids ``"0"`` … ``"N-1"``) or explicit
    ``node_ids``. ``node_config(index, node_id)`` gives each node its own
    config (default: ``partition-id`` and ``num-partitions``). ``client_app``
    may be a ``"module:attribute"`` reference, which the processes backend
    requires. The same ``seed`` gives a bit-identical model for any backend
    and number of ``workers``. ``grid_wrapper`` decorates the grid the round
    loop talks to (e.g. ``AttackedGrid``); the engine still closes its own.
    """
    if node_ids is None:
        if num_nodes is None or num_nodes < 1:
            raise ConfigError(f"num_nodes must be >= 1, got {num_nodes}")
        node_ids = [str(i) for i in range(num_nodes)]
    elif num_nodes is not None and num_nodes != len(node_ids):
        raise ConfigError(f"num_nodes={num_nodes} but {len(node_ids)} node ids were given")
    run_config = dict(run_config or {})
    config = server_app(Context(node_id=SERVER_ID, run_config=run_config, seed=seed))
    grid = SimulationGrid(
        client_app,
        node_ids,
        node_config=node_config,
        run_config=run_config,
        seed=seed,
        backend=backend,
        workers=workers,
        app_path=app_path,
    )
    params: Config = {**run_config, "num_nodes": len(node_ids), "backend": backend}
    try:
        loop = RoundLoop(
            config,
            grid_wrapper(grid) if grid_wrapper is not None else grid,
            seed=seed,
            run_id=run_id,
            run_dir=run_dir,
            params=params,
            observers=observers,
        )
        return loop.run()
    finally:
        grid.close()
