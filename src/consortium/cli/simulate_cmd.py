"""``consortium simulate``: run an app folder with virtual nodes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

import click

from consortium.apps.loader import load_object
from consortium.apps.manifest import load_app_spec, parse_override
from consortium.cli.observers import build_observers, configure_logging
from consortium.cli.report import make_console, print_history, tracking_hint
from consortium.core.errors import ConfigError
from consortium.server.app import ServerApp
from consortium.simulation.engine import run_simulation
from consortium.simulation.grid import BackendChoice, resolve_backend


def default_run_dir(name: str) -> Path:
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


@click.command()
@click.argument("app_dir", type=click.Path(exists=True, file_okay=True, path_type=Path))
@click.option("--nodes", "num_nodes", type=click.IntRange(min=1), help="Number of virtual nodes.")
@click.option(
    "--backend",
    type=click.Choice(["auto", "threads", "processes", "ray"]),
    help="Run nodes in threads of this process, in worker processes, or as Ray tasks "
    "(default: consortium.toml's backend, else auto: worker processes from 1000 nodes "
    "on a machine with 2 CPUs or more, else threads).",
)
@click.option(
    "--ray-address",
    metavar="ADDR",
    help="With --backend ray: join this Ray cluster (host:port, auto) instead of starting "
    "a local Ray. Per-node resources: --run-config ray-num-cpus=…, ray-num-gpus=….",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Threads or processes running nodes (default: consortium.toml's workers; without "
    "one, 1 thread, or one process per CPU).",
)
@click.option(
    "--nodes-per-batch",
    type=click.IntRange(min=1),
    help="With --backend processes: node tasks per call to a worker (default: a few "
    "batches per worker per round).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Run seed.")
@click.option(
    "--run-config",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a run-config value of the app (repeatable).",
)
@click.option("--run-dir", type=click.Path(path_type=Path), help="Where to write the run.")
@click.option("--tracking/--no-tracking", default=True, show_default=True, help="MLflow tracking.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--plot/--no-plot", default=True, show_default=True, help="Write metrics.png.")
@click.option("-v", "--verbose", is_flag=True, help="Log every round to the terminal too.")
def simulate(
    app_dir: Path,
    num_nodes: int | None,
    backend: str | None,
    workers: int | None,
    nodes_per_batch: int | None,
    ray_address: str | None,
    seed: int,
    overrides: tuple[str, ...],
    run_dir: Path | None,
    tracking: bool,
    progress: bool,
    plot: bool,
    verbose: bool,
) -> None:
    """Run the app in APP_DIR (a folder with consortium.toml) with virtual nodes."""
    spec = load_app_spec(app_dir)
    run_config = spec.run_config(dict(parse_override(o) for o in overrides))
    sim = spec.manifest.simulation
    node_ids = sim.node_ids
    if num_nodes is not None and node_ids is not None and num_nodes != len(node_ids):
        raise ConfigError(
            f"--nodes {num_nodes} disagrees with the {len(node_ids)} node-ids in consortium.toml"
        )
    if node_ids is None:
        node_ids = [str(i) for i in range(num_nodes or sim.num_nodes)]
    asked = cast(BackendChoice, backend or sim.backend)
    chosen = resolve_backend(asked, spec.manifest.app.client, len(node_ids))
    if ray_address is not None and chosen != "ray":
        raise ConfigError("--ray-address needs --backend ray")
    if nodes_per_batch is not None and chosen != "processes":
        raise ConfigError(f"--nodes-per-batch needs the processes backend, not {chosen}")
    server_app = load_object(spec.manifest.app.server, [str(spec.root)])
    if not isinstance(server_app, ServerApp):
        raise ConfigError(f"{spec.manifest.app.server!r} is not a ServerApp")
    run_dir = run_dir or default_run_dir(spec.name)
    configure_logging(run_dir, verbose=verbose)
    console = make_console()
    observers = build_observers(
        run_dir, tracking=tracking, progress=progress, plot=plot, console=console
    )
    console.print(
        f"[bold]{spec.name}[/] {spec.manifest.app.version}: {len(node_ids)} nodes, "
        f"backend {chosen}{' (auto)' if asked == 'auto' else ''}, run dir {run_dir}"
    )
    result = run_simulation(
        server_app,
        spec.manifest.app.client,
        node_ids=node_ids,
        run_config=run_config,
        seed=seed,
        backend=chosen,
        # the manifest's workers when it sets them; else the backend's own default
        workers=workers or (sim.workers if "workers" in sim.model_fields_set else None),
        nodes_per_batch=nodes_per_batch,
        run_dir=run_dir,
        observers=observers,
        app_path=[str(spec.root)],
        ray_address=ray_address,
    )
    print_history(console, result.history)
    console.print(f"final model: {', '.join(str(p) for p in result.model_files)}")
    hint = tracking_hint(observers)
    if hint:
        console.print(hint)
