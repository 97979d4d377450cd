"""``consortium local``: a whole federation on one machine, for the dashboard and the API.

It creates a CA and certificates in ``DIR``, starts ``consortium server`` with
the REST API and the four heart-disease hospitals as ``consortium node``
processes (each with only its own hospital's data, ``center=<name>``), writes an
admin token to ``DIR/admin-token``, uploads the heart-disease app and prints the
dashboard's and the API's URLs. It runs until Ctrl-C or SIGTERM and then stops
every process it started (SIGTERM, then SIGKILL for any that lingers). Each process logs to
``DIR/logs/<name>.log``. Running it again on the same ``DIR`` reuses its CA and
certificates, and the server's state (earlier runs are listed).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import click

from consortium.cli.tls_options import require_deploy
from consortium.core.errors import ConfigError

#: the four hospitals of the heart-disease example, each one node
HOSPITALS = ("cleveland", "hungarian", "switzerland", "va")
SERVER_NAME = "localhost"
#: how long the server has to start listening (its first start creates the database)
START_TIMEOUT = 90.0
#: how long each process has to stop after SIGTERM before it is killed
STOP_GRACE = 15.0
EXAMPLE = Path("examples") / "heart_disease"


@click.command()
@click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the CA, certificates, server state, logs and admin token go.",
)
@click.option("--http-port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="The REST API's port on 127.0.0.1 (0: any free port).")  # fmt: skip
@click.option(
    "--app",
    "app_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help=f"The heart-disease app folder [default: ./{EXAMPLE}, or the source tree's].",
)
@click.option(
    "--tracking/--no-tracking",
    default=True,
    show_default=True,
    help="Record runs in MLflow (WORKDIR/mlflow.db); needs the tracking extra.",
)
def local(directory: Path, http_port: int, app_dir: Path | None, tracking: bool) -> None:
    """A server with the REST API and four hospital nodes on this machine, until Ctrl-C."""
    require_deploy()
    app = app_dir or _find_example()
    directory.mkdir(parents=True, exist_ok=True)
    creds, ca_dir = _certificates(directory)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    fed = _Processes(directory / "logs")
    try:
        url, port = _start_server(fed, directory, creds, ca_dir, http_port, tracking, stop)
        token_file = _admin_token(directory)
        from consortium.control.sdk import ControlClient

        entry = ControlClient(url, token_file.read_text()).upload_app(app)
        for name in HOSPITALS:
            fed.start(name, "node", "--server", f"127.0.0.1:{port}",
                      "--credentials", str(creds / name), "--app", str(app),
                      "--config", f"center={name}", "--work-dir", str(directory / "nodes" / name),
                      *_unconfined())  # fmt: skip
        click.echo(f"dashboard: {url}/ (log in with the admin token)")
        click.echo(f"REST API: {url}/api/v1 (OpenAPI: {url}/openapi.json)")
        click.echo(f"admin token: {token_file}")
        click.echo(f"app {entry['name']} {entry['version']} uploaded; try:")
        click.echo(f'  curl -H "Authorization: Bearer $(cat {token_file})" {url}/api/v1/nodes')
        click.echo("Ctrl-C stops the server and the four nodes.")
        while not stop.wait(0.5):
            dead = fed.exited()
            if dead:
                raise ConfigError(f"{dead} exited; see {directory / 'logs' / dead}.log")
    finally:
        fed.stop_all()
        click.echo("stopped the server and the nodes")


def _find_example() -> Path:
    import consortium

    source_tree = Path(consortium.__file__).resolve().parents[2]
    for candidate in (Path.cwd() / EXAMPLE, source_tree / EXAMPLE):
        if (candidate / "consortium.toml").exists():
            return candidate
    raise ConfigError(f"--app: no {EXAMPLE} here or in the source tree; give --app FOLDER")


def _certificates(directory: Path) -> tuple[Path, Path]:
    """A CA and the server's and hospitals' certificates, made once per ``directory``."""
    from consortium.transport.ca import CertificateAuthority

    ca_dir, creds = directory / "ca", directory / "credentials"
    if (ca_dir / "ca.crt").exists():
        ca = CertificateAuthority.load(ca_dir)
    else:
        ca = CertificateAuthority.init(ca_dir)
    if not (creds / SERVER_NAME).exists():
        ca.issue("server", SERVER_NAME, creds / SERVER_NAME, ips=["127.0.0.1"])
    for name in HOSPITALS:
        if not (creds / name).exists():
            ca.issue("node", name, creds / name)
    return creds, ca_dir


def _start_server(
    fed: _Processes,
    directory: Path,
    creds: Path,
    ca_dir: Path,
    http_port: int,
    tracking: bool,
    stop: threading.Event,
) -> tuple[str, int]:
    """Start the server; its API's URL and its gRPC port once both listen."""
    workdir = directory / "server"
    port_file = directory / "server.port"
    url_file = workdir / "api" / "url"
    port_file.unlink(missing_ok=True)
    url_file.unlink(missing_ok=True)
    fed.start("server", "server", "--address", "127.0.0.1:0",
              "--credentials", str(creds / SERVER_NAME), "--ca-dir", str(ca_dir),
              "--workdir", str(workdir), "--port-file", str(port_file),
              "--http", f"127.0.0.1:{http_port}",
              *[a for name in HOSPITALS for a in ("--allow", name)],
              *([] if tracking else ["--no-tracking"]), *_unconfined())  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT
    while not (port_file.exists() and port_file.read_text().strip()):
        if fed.exited() or stop.is_set() or time.monotonic() > deadline:
            raise ConfigError(f"the server did not start; see {directory / 'logs'}/server.log")
        time.sleep(0.1)
    return url_file.read_text().strip(), int(port_file.read_text())


def _admin_token(directory: Path) -> Path:
    from consortium.cli.token_cmd import DEFAULT_DAYS, record_token_act, write_secret
    from consortium.control.tokens import TokenAuthority
    from consortium.core.audit import TOKEN_CREATE

    workdir = directory / "server"
    token, info = TokenAuthority(workdir).create(name="admin", role="admin", days=DEFAULT_DAYS)
    record_token_act(workdir, None, TOKEN_CREATE, info.name, {"token": info.id, "role": "admin"})
    path = directory / "admin-token"
    write_secret(path, token + "\n")
    return path


def _unconfined() -> list[str]:
    """``--unconfined-apps`` where this kernel cannot confine apps (a local trial only)."""
    from consortium.sandbox.confine import landlock_available

    if landlock_available():
        return []
    click.secho("WARNING: no Landlock on this kernel: apps run unconfined (local trial only)",
                fg="red", err=True)  # fmt: skip
    return ["--unconfined-apps"]


class _Processes:
    """The processes ``consortium local`` started, each in its own session."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        log: IO[bytes] = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child's
        with log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "consortium.cli.main", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us, and we stop them in order
            )

    def exited(self) -> str | None:
        return next((n for n, p in self.procs.items() if p.poll() is not None), None)

    def stop_all(self) -> None:
        """Nodes first, then the server: SIGTERM, and SIGKILL after :data:`STOP_GRACE`."""
        order = [n for n in self.procs if n != "server"] + [n for n in self.procs if n == "server"]
        for name in order:
            if self.procs[name].poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.procs[name].pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for name in order:
            proc = self.procs[name]
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
