"""``consortium run``: the coordinator starts, lists, shows, stops runs and downloads models.

Each command reaches the server through the gRPC Control API (``--server`` with a
coordinator certificate) or through the REST API (``--api URL`` with
``--token-file``, or ``$CONSORTIUM_API`` and ``$CONSORTIUM_TOKEN``): the same
policy decides what each caller may do.

``run start --wait`` reports progress on stderr while the run goes on (a line per
round: round k/N, its loss and AUC, the time elapsed; whom the run waits for; the
status every :data:`~consortium.cli.run_view.PROGRESS_EVERY` seconds) and exits
with the code of how the run ended: 0 finished, 5 failed
(:class:`~consortium.core.errors.RoundFailed`), 1 stopped or interrupted.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from consortium.apps.manifest import MANIFEST, AppSpec, load_app_spec, parse_override
from consortium.cli.control_options import RunTarget, run_target_options
from consortium.cli.report import make_console
from consortium.cli.run_view import print_run, wait_for_run
from consortium.core.errors import ConfigError, ConsortiumError, RoundFailed

__all__ = ["raise_for_outcome", "run", "wait_for_run"]


_common = run_target_options


@click.group()
def run() -> None:
    """Start, list, show and stop runs on a deployed server, and download their models.

    Reach the server with a certificate (--server HOST:PORT --credentials DIR: the gRPC
    Control API) or a token (--api URL --token-file FILE: the REST API). The server's
    policy says what each role may do (by default observers only list and show).
    """


@run.command("start")
@click.argument("app", type=click.Path(exists=True, path_type=Path))
@_common
@click.option("--run-config", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--nodes",
    default=None,
    metavar="A,B,...",
    help="Only these nodes take part (REST API only; default: every online node).",
)
@click.option(
    "--wait",
    is_flag=True,
    help="Wait for the run to end, printing a line per round (round k/N, loss, AUC, time), "
    "then its metrics; exit 0 if it finished, 5 if it failed, 1 if it was stopped or "
    "interrupted.",
)
def start(
    app: Path,
    target: RunTarget,
    overrides: tuple[str, ...],
    seed: int,
    nodes: str | None,
    wait: bool,
) -> None:
    """Upload APP (an app folder, bundled unsigned, or a signed APP.cab, sent as is) and
    start a run of it."""
    bundle, spec = _bundle_of(app)
    config = spec.run_config(dict(parse_override(o) for o in overrides))
    chosen = _node_list(nodes)
    backend = target.backend()
    try:
        identity = (spec.name, spec.manifest.app.version)
        run_id = backend.start(bundle, identity, dict(config), seed, chosen)
        click.echo(run_id)
        if wait:
            info = wait_for_run(lambda: backend.show(run_id), _progress)
            print_run(info)
            raise_for_outcome(info)
    finally:
        backend.close()


def _node_list(nodes: str | None) -> list[str] | None:
    if nodes is None:
        return None
    chosen = [n.strip() for n in nodes.split(",") if n.strip()]
    if not chosen:
        raise ConfigError("--nodes: give node names separated by commas, e.g. --nodes a,b")
    return chosen


def _bundle_of(app: Path) -> tuple[bytes, AppSpec]:
    """The bundle to upload and the app's manifest: a folder is bundled (unsigned), a
    ``.cab`` file is read as is (its ``consortium.toml`` gives the default run config)."""
    from consortium.apps.bundle import make_bundle, scan_bundle

    if app.is_dir():
        return make_bundle(app), load_app_spec(app)
    bundle = app.read_bytes()
    manifest = scan_bundle(bundle, keep=(MANIFEST,)).kept.get(MANIFEST)
    if manifest is None:
        raise ConfigError(f"{app}: no {MANIFEST} at the bundle's root; is it an app bundle?")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / MANIFEST).write_bytes(manifest)
        try:
            return bundle, load_app_spec(tmp)
        except ConfigError as exc:
            raise ConfigError(f"{app}: {str(exc).replace(tmp + '/', '')}") from exc


@run.command("list")
@_common
def list_runs(
    target: RunTarget,
) -> None:
    """List the server's runs, newest first (runs from before a server restart included)."""
    backend = target.backend()
    try:
        runs = backend.list()
    finally:
        backend.close()
    table = Table(title="Runs, newest first")
    for col in ("run", "app", "status", "rounds", "error"):
        table.add_column(col)
    for r in runs:
        of = f"/{r['num_rounds']}" if r.get("num_rounds") else ""
        table.add_row(r["run_id"], r["app"], r["status"], f"{r['rounds_done']}{of}",
                      r.get("error") or "")  # fmt: skip
    make_console().print(table)


@run.command("show")
@click.argument("run_id")
@_common
def show(
    run_id: str,
    target: RunTarget,
) -> None:
    """Status, metrics per round (aggregated and each node's loss and AUC), and per-node
    outcome and timing of one run."""
    backend = target.backend()
    try:
        print_run(backend.show(run_id))
    finally:
        backend.close()


@run.command("download")
@click.argument("run_id")
@_common
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the model (.npz: numpy.load(FILE, allow_pickle=False) reads it).",
)
@click.option(
    "--format",
    "fmt",
    default="npz",
    show_default=True,
    help="npz, safetensors, or an export of the app's own such as joblib (REST API only "
    "for all but npz; `run show` lists them).",
)
@click.option(
    "--round",
    "rnd",
    type=click.IntRange(min=1),
    default=None,
    help="The model after this round (REST API only; only a run's last rounds are kept).",
)
def download(
    run_id: str,
    target: RunTarget,
    out: Path,
    fmt: str,
    rnd: int | None,
) -> None:
    """Download the global model a run finished with (or, while it runs, its newest
    checkpointed one; or a given round's) into a file: .npz of named arrays (no pickle)
    by default."""
    backend = target.backend()
    try:
        what = backend.download(run_id, fmt, rnd, out)
    finally:
        backend.close()
    click.echo(f"wrote {out}: {what}")


@run.command("stop")
@click.argument("run_id")
@_common
def stop(
    run_id: str,
    target: RunTarget,
) -> None:
    """Stop a run before its next round."""
    backend = target.backend()
    try:
        stopped = backend.stop(run_id)
    finally:
        backend.close()
    click.echo("stopping" if stopped else "not running")


def raise_for_outcome(info: dict[str, Any]) -> None:
    """Nothing for a finished run; the error (with its exit code) for any other end."""
    status = info["status"]
    if status == "finished":
        return
    error = info.get("error") or "no error recorded"
    message = f"run {info['run_id']} {status}: {error}"
    if status == "failed":
        raise RoundFailed(message)
    raise ConsortiumError(message)


def _progress(line: str) -> None:
    click.echo(line, err=True)
