"""``consortium run``: the coordinator starts, lists, shows, stops runs and downloads models.

``run start --wait`` reports progress on stderr while the run goes on (each round
done, whom the run waits for, and the status every :data:`PROGRESS_EVERY` seconds)
and exits with the code of how the run ended: 0 finished, 5 failed
(:class:`~consortium.core.errors.RoundFailed`), 1 stopped or interrupted.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from consortium.apps.manifest import MANIFEST, AppSpec, load_app_spec, parse_override
from consortium.cli.control_options import control_client, control_options
from consortium.cli.report import make_console
from consortium.core.errors import ConfigError, ConsortiumError, RoundFailed
from consortium.core.protocol import TIMING_TRAIN, TIMING_UPLOAD, TIMING_WAIT

if TYPE_CHECKING:  # gRPC loads only when a run command runs
    from consortium.transport.grpc_client import ControlClient

#: seconds between two "still running" lines of ``run start --wait``
PROGRESS_EVERY = 10.0
#: seconds between two polls of the run's state by ``run start --wait``
POLL_EVERY = 1.0


def _client(
    address: str,
    credentials: Path | None,
    name: str | None,
    server_name: str | None,
    insecure: bool,
) -> ControlClient:
    return control_client(address, credentials, name, server_name, insecure)


_common = control_options


@click.group()
def run() -> None:
    """Start, list, show and stop runs on a deployed server, and download their models.

    Needs an admin, researcher or observer certificate; the server's policy says what
    each may do (by default observers only list and show).
    """


@run.command("start")
@click.argument("app", type=click.Path(exists=True, path_type=Path))
@_common
@click.option("--run-config", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--wait",
    is_flag=True,
    help="Wait for the run to end, reporting progress, and print its rounds; exit 0 if it "
    "finished, 5 if it failed, 1 if it was stopped or interrupted.",
)
def start(
    app: Path,
    address: str,
    credentials: Path | None,
    name: str | None,
    server_name: str | None,
    insecure: bool,
    overrides: tuple[str, ...],
    seed: int,
    wait: bool,
) -> None:
    """Upload APP (an app folder, bundled unsigned, or a signed APP.cab, sent as is) and
    start a run of it."""
    bundle, spec = _bundle_of(app)
    config = spec.run_config(dict(parse_override(o) for o in overrides))
    client = _client(address, credentials, name, server_name, insecure)
    run_id = client.start_run(bundle, dict(config), seed)
    click.echo(run_id)
    if wait:
        info = wait_for_run(lambda: client.show_run(run_id), _progress)
        _print_run(info)
        raise_for_outcome(info)


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
    address: str,
    credentials: Path | None,
    name: str | None,
    server_name: str | None,
    insecure: bool,
) -> None:
    """List the server's runs, newest first (runs from before a server restart included)."""
    runs = _client(address, credentials, name, server_name, insecure).list_runs()
    table = Table(title="Runs, newest first")
    for col in ("run", "app", "status", "rounds", "error"):
        table.add_column(col)
    for r in runs:
        table.add_row(r["run_id"], r["app"], r["status"], str(r["rounds_done"]), r.get("error", ""))
    make_console().print(table)


@run.command("show")
@click.argument("run_id")
@_common
def show(
    run_id: str,
    address: str,
    credentials: Path | None,
    name: str | None,
    server_name: str | None,
    insecure: bool,
) -> None:
    """Rounds, metrics and per-node status and timing of one run."""
    _print_run(_client(address, credentials, name, server_name, insecure).show_run(run_id))


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
def download(
    run_id: str,
    address: str,
    credentials: Path | None,
    name: str | None,
    server_name: str | None,
    insecure: bool,
    out: Path,
) -> None:
    """Download the global model a run finished with (or, while it runs, its newest
    checkpointed one) into an .npz file of named arrays (no pickle)."""
    from consortium.core.arrays import Arrays
    from consortium.server.model_io import save_model

    client = _client(address, credentials, name, server_name, insecure)
    try:
        payload = client.download_model(run_id)
    finally:
        client.close()
    model = Arrays.from_bytes(payload)
    save_model(model, out)
    click.echo(f"wrote {out}: {len(model)} array(s), {model.nbytes} bytes of parameters")


@run.command("stop")
@click.argument("run_id")
@_common
def stop(
    run_id: str,
    address: str,
    credentials: Path | None,
    name: str | None,
    server_name: str | None,
    insecure: bool,
) -> None:
    """Stop a run before its next round."""
    stopped = _client(address, credentials, name, server_name, insecure).stop_run(run_id)
    click.echo("stopping" if stopped else "not running")


def wait_for_run(
    show: Callable[[], dict[str, Any]],
    report: Callable[[str], None],
    *,
    poll_every: float = POLL_EVERY,
    progress_every: float = PROGRESS_EVERY,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll ``show()`` (a ``run show``) until the run ends; its last answer.

    ``report`` gets one line per change of status and per round done, a "waiting
    Ns for: ..." line at most every ``progress_every`` s while the run waits for
    nodes (``run show``'s ``waiting``), and a "still <status>" line every
    ``progress_every`` s while nothing changes.
    """
    started = last_line = clock()
    last_waiting: float | None = None
    status, rounds_seen = "", 0
    while True:
        info = show()
        now = clock()
        waiting = info.get("waiting")
        if waiting and (last_waiting is None or now - last_waiting >= progress_every):
            report(_waiting_text(waiting))
            last_waiting = last_line = now
        for r in info.get("rounds", [])[rounds_seen:]:
            report(f"round {r['round']} done in {r['seconds']:.1f} s{_metrics_text(r)}")
            rounds_seen += 1
            last_line = now
        if info["status"] != status:
            status = info["status"]
            report(f"run {info['run_id']}: {status}")
            last_line = now
        if status not in ("pending", "running"):
            return info
        if now - last_line >= progress_every:
            report(
                f"run {info['run_id']}: still {status}, {info['rounds_done']} round(s) done, "
                f"{now - started:.0f} s since start"
            )
            last_line = now
        sleep(poll_every)


def _waiting_text(waiting: dict[str, Any]) -> str:
    """``waiting 12s for nodes: a, b (online: c)`` (or ``for replies from``) from
    ``run show``'s ``waiting`` (the server's ``FleetGrid.waiting().as_dict()``)."""
    missing = ", ".join(str(n) for n in waiting.get("missing", [])) or "nobody"
    online = ", ".join(str(n) for n in waiting.get("online", [])) or "none"
    what = "replies from" if waiting.get("stage") == "replies" else "nodes"
    seconds = float(waiting.get("seconds", 0))
    return f"waiting {seconds:.0f}s for {what}: {missing} (online: {online})"


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


def _metrics_text(round_info: dict[str, Any]) -> str:
    metrics = round_info.get("metrics") or {}
    shown = [f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if isinstance(v, int | float)]
    return f" ({', '.join(shown[:4])})" if shown else ""


def _print_run(info: dict[str, Any]) -> None:
    console = make_console()
    console.print(
        f"run {info['run_id']}: {info['app']} — {info['status']} "
        f"({info['rounds_done']} rounds) {info.get('error', '')}"
    )
    checkpoint = info.get("checkpoint")
    if checkpoint:
        console.print(
            f"latest checkpoint: round {checkpoint['round']}, {checkpoint['path']} "
            f"({checkpoint['digest']})"
        )
    table = Table(title="Per node: outcome and where the time went (seconds)")
    for col in ("round", "node", "stage", "outcome", "total", "training", "upload", "waiting",
                "reason"):  # fmt: skip
        table.add_column(col)
    for r in info.get("rounds", []):
        for n in r["nodes"]:
            timing = n.get("timing") or {}
            cells = [
                f"{timing[k]:.2f}" if k in timing else ""
                for k in (TIMING_TRAIN, TIMING_UPLOAD, TIMING_WAIT)
            ]
            table.add_row(
                str(r["round"]), n["node"], n["stage"], n["outcome"], f"{n['seconds']:.2f}",
                *cells, n["reason"],
            )  # fmt: skip
    console.print(table)
