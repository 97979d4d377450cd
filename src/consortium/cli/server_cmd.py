"""``consortium server``: the aggregation server of a deployed federation."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import click

from consortium._version import __version__
from consortium.cli.config_file import configurable
from consortium.cli.observers import configure_logging
from consortium.cli.server_transit_options import transit_options
from consortium.cli.tls_options import (
    credentials_option,
    insecure_option,
    name_option,
    require_deploy,
)
from consortium.core.audit import SERVER_ACTOR, SERVER_START, SERVER_STOP, AuditEvent
from consortium.core.errors import ConfigError

if TYPE_CHECKING:
    from consortium.server.isolation.host import Isolation

log = logging.getLogger("consortium.server")

#: How often the main thread wakes to run a signal handler another thread received (s).
SIGNAL_POLL = 0.5
#: On SIGTERM/SIGINT, how long the server waits for its runs to reach the end of a round.
SHUTDOWN_GRACE = 60.0
#: Where the server keeps its state (and `consortium audit` looks for it) by default.
DEFAULT_WORKDIR = Path("server-data")


def server_event(
    action: str, address: str, mode: str, allowed: set[str], admins: tuple[str, ...]
) -> AuditEvent:
    """The audit entry of a server starting or stopping: where, how, and who may join."""
    return AuditEvent(
        actor=SERVER_ACTOR,
        action=action,
        target=address,
        detail={
            "transport": mode,
            "allowed_nodes": sorted(allowed),
            "admins": sorted(admins),
            "version": __version__,
        },
    )


def read_allow_list(names: tuple[str, ...], allow_file: Path | None) -> set[str]:
    allowed = set(names)
    if allow_file is not None:
        for line in allow_file.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                allowed.add(line)
    return allowed


def app_isolation(
    memory_mb: int, cpu_seconds: int | None, unconfined: bool, secrets: list[Path]
) -> Isolation:
    """How each run's server app process is confined (``--app-*`` options)."""
    from consortium.sandbox.confine import SandboxLimits
    from consortium.server.isolation.host import Isolation

    if unconfined:
        log.warning(
            "--unconfined-apps: server apps run WITHOUT Landlock and can read every file "
            "this server can, its private key included. Never use it with real data."
        )
    limits = SandboxLimits(memory_bytes=memory_mb * 1024 * 1024, cpu_seconds=cpu_seconds)
    return Isolation(limits=limits, confined=not unconfined, secrets=tuple(secrets))


@configurable("server")
@click.command()
@click.option(
    "--address", default="127.0.0.1:9092", show_default=True, help="host:port to listen on."
)
@credentials_option
@name_option
@click.option(
    "--ca-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder with the CA's ca.crt and crl.pem (revocations); required with TLS.",
)
@click.option("--allow", "allow", multiple=True, metavar="NODE", help="A node allowed to join.")
@click.option(
    "--allow-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A file naming the nodes allowed to join, one per line (# starts a comment).",
)
@click.option("--admin", "admins", multiple=True, metavar="NAME", help="Restrict admins to these.")
@click.option(
    "--authz",
    "authz_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Authorization policy (TOML): what each certificate role may do on the coordinator's "
    "API, replacing the defaults (see docs/operations.md).",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_WORKDIR,
    show_default=True,
    help="The server's state: server.log, each run's folder, the SQLite state database.",
)
@click.option(
    "--heartbeat",
    type=float,
    default=2.0,
    show_default=True,
    help="Seconds between node heartbeats.",
)
@click.option(
    "--offline-after",
    type=float,
    default=10.0,
    show_default=True,
    help="Silence before a node is offline.",
)
@click.option(
    "--max-message-mb", type=int, default=16384, show_default=True, help="Largest message accepted."
)
@transit_options
@click.option(
    "--port-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the bound port here.",
)
@click.option(
    "--state",
    "state_url",
    metavar="URL",
    help="State database (default sqlite:///WORKDIR/state.db; postgresql+psycopg://...).",
)
@click.option("--resume", "resume", metavar="RUN_ID", help="Continue a run after a crash.")
@click.option(
    "--resume-interrupted",
    is_flag=True,
    help="Resume every run a previous server left interrupted (shut down or crashed). "
    "Without it they stay interrupted and the log says how to resume each.",
)
@click.option(
    "--state-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="How long a run's write to the state database is retried (locked, gone, read-only) "
    "before the run fails.",
)
@click.option(
    "--tracking-uri",
    metavar="URI",
    help="MLflow store for every run [default: $MLFLOW_TRACKING_URI, else "
    "sqlite:///WORKDIR/mlflow.db with artifacts in WORKDIR/mlartifacts].",
)
@click.option(
    "--tracking/--no-tracking",
    default=True,
    show_default=True,
    help="Record runs in MLflow (needs the tracking extra).",
)
@click.option(
    "--app-memory-mb",
    type=click.IntRange(min=64),
    default=16384,
    show_default=True,
    help="Address space each run's server app process may use (it gets MemoryError past it).",
)
@click.option(
    "--app-cpu-seconds",
    type=click.IntRange(min=1),
    default=None,
    help="CPU time each run's server app process may use before it is killed [default: none].",
)
@click.option(
    "--unconfined-apps",
    is_flag=True,
    help="DEVELOPMENT ONLY: run server apps without Landlock (kernels without it). "
    "An app could then read the server's key.",
)
@click.option(
    "--http",
    "http",
    metavar="HOST:PORT",
    help="Also serve the REST API (docs/api.md) here, e.g. 127.0.0.1:8080 (port 0: any; "
    "the URL is written to WORKDIR/api/url). Needs the control extra.",
)
@click.option(
    "--api-in-process",
    is_flag=True,
    help="Serve the REST API from a thread of the server process, not a confined process "
    "of its own: its event streams then compete with the fleet for the server's CPU.",
)
@insecure_option
def server(
    address: str,
    credentials: Path | None,
    name: str | None,
    ca_dir: Path | None,
    allow: tuple[str, ...],
    allow_file: Path | None,
    admins: tuple[str, ...],
    authz_file: Path | None,
    workdir: Path,
    heartbeat: float,
    offline_after: float,
    max_message_mb: int,
    transfer_budget_mb: int,
    unread_mb: int,
    reply_factor: float,
    stall_timeout: float,
    min_rate_mbit: float,
    spill_mb: int,
    spill_after: float,
    slow_link_mbit: float,
    spill_dir: Path | None,
    port_file: Path | None,
    state_url: str | None,
    resume: str | None,
    resume_interrupted: bool,
    state_timeout: float,
    tracking_uri: str | None,
    tracking: bool,
    app_memory_mb: int,
    app_cpu_seconds: int | None,
    unconfined_apps: bool,
    http: str | None,
    api_in_process: bool,
    insecure: bool,
) -> None:
    """Run the aggregation server: nodes dial in, coordinators start runs (mutual TLS)."""
    require_deploy()
    from consortium.core.buffers import tune_malloc
    from consortium.core.stack_dumps import dump_stacks_on_signal

    tune_malloc()
    dump_stacks_on_signal()  # kill -USR1 PID: every thread's stack on stderr
    from consortium.server.fleet import Fleet
    from consortium.server.fleet_state import ReplyLimits
    from consortium.server.heap import HeapTrimmer
    from consortium.server.run_tracking import Tracking
    from consortium.server.runs import RunManager
    from consortium.server.store.lock import StateDirLock
    from consortium.transport.fairness import stream_window, worker_threads
    from consortium.transport.grpc_control import ControlServicer
    from consortium.transport.grpc_listen import start_server
    from consortium.transport.grpc_server import FleetServicer
    from consortium.transport.spill import SpillStore

    # before anything is written there (the log included): one server per state directory
    workdir_lock = StateDirLock(workdir)
    configure_logging(workdir, verbose=True, filename="server.log")
    allowed = read_allow_list(allow, allow_file)
    if not allowed:
        raise ConfigError("no node may join: give --allow NODE (repeatable) or --allow-file FILE")
    workdir.mkdir(parents=True, exist_ok=True)
    from consortium.server.records import fleet_event_sink
    from consortium.server.store import StateStore, default_url
    from consortium.server.store.audit import AuditLog

    store_url = state_url or default_url(workdir)
    store = StateStore(store_url, write_timeout=state_timeout)
    audit = AuditLog(store)
    for node_name in sorted(allowed):
        store.upsert_node(node_name, allow_listed=True)
    fleet = Fleet(
        heartbeat_interval=heartbeat,
        offline_after=offline_after,
        max_message_bytes=max_message_mb * 1024 * 1024,
        transfer_budget=transfer_budget_mb * 1024 * 1024,
        reply_limits=ReplyLimits(factor=reply_factor),
        events=audit.fleet_sink(forward=fleet_event_sink(store)),
        expected=allowed,  # who `run show` names as missing while a run waits
        heap=HeapTrimmer.for_this_process(),
    )
    secrets = [p for p in (credentials, ca_dir, workdir / "state.db") if p is not None]
    from consortium.control.process import api_hub  # no FastAPI: that comes with --http

    api_events = api_hub(in_process=api_in_process) if http else None
    runs = RunManager(
        fleet,
        workdir,
        store=store,
        isolation=app_isolation(app_memory_mb, app_cpu_seconds, unconfined_apps, secrets),
        tracking=Tracking.configure(workdir, tracking_uri, enabled=tracking),
        audit=audit,
        run_observers=api_events.observers if api_events is not None else None,
    )
    fleet.set_bundles(runs.run_bundle)
    from consortium.apps.bundle import DEFAULT_LIMITS
    from consortium.cli.server_auth import authenticators
    from consortium.server.bans import NodeBans
    from consortium.transport.authz import DEFAULT_POLICY, load_policy

    # --admin still says who may hold the admin role, whatever the policy grants it
    policy = (load_policy(authz_file) if authz_file else DEFAULT_POLICY).restrict_admins(admins)
    bans = NodeBans.in_state_dir(workdir)  # consortium fleet ban: refused at their next call
    node_auth, control_auth, tls = authenticators(
        insecure=insecure, credentials=credentials, name=name, ca_dir=ca_dir,
        allowed=allowed, bans=bans,
    )  # fmt: skip
    grpc_server, port = start_server(
        address,
        fleet=FleetServicer(
            fleet,
            node_auth,
            stall_timeout=stall_timeout,
            min_rate_mbit=min_rate_mbit,
            spill=SpillStore(
                spill_dir or workdir / "spill", spill_mb * 1024 * 1024, after=spill_after
            ),
            slow_link_mbit=slow_link_mbit,
        ),
        control=ControlServicer(
            runs,
            control_auth,
            policy=policy,
            audit=audit,
            bans=bans,
            max_bundle_bytes=DEFAULT_LIMITS.max_bundle_bytes,
        ),
        tls=tls,
        # every allow-listed node can hold its share of calls, and the coordinator's
        # calls still find threads (transport/fairness.py)
        workers=worker_threads(len(allowed)),
        # what nodes' unread replies may hold in memory, shared among them
        stream_window=stream_window(len(allowed), unread_mb * 1024**2),
    )
    host = address.rsplit(":", 1)[0]
    mode = "plain text" if tls is None else "mutual TLS"
    audit(server_event(SERVER_START, f"{host}:{port}", mode, allowed, admins))
    click.echo(
        f"consortium server listening on {host}:{port} ({mode}), "
        f"allowing {len(allowed)} node(s); data in {workdir}"
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if resume:
        runs.resume(resume)
        click.echo(f"resuming run {resume}")
    runs.recover_interrupted(resume=resume_interrupted)
    api = None
    if http and api_events is not None:  # the same policy and audit log as the gRPC API
        from consortium.control.process import start_api

        api = start_api(http, hub=api_events, runs=runs, fleet=fleet, policy=policy,
                        audit=audit, bans=bans, state_url=store_url, state_timeout=state_timeout,
                        secrets=[p for p in (credentials, ca_dir) if p is not None])  # fmt: skip
        click.echo(f"REST API on {api.url} (OpenAPI: {api.url}/openapi.json)")
    # written last: once the port file is there, runs to resume are running again
    if port_file is not None:
        port_file.write_text(str(port))
    # with a timeout: Linux may deliver SIGTERM to any of gRPC's threads, and a main thread
    # blocked in an untimed wait would then never run the handler (a server that ignored
    # SIGTERM now and then)
    while not stop.wait(SIGNAL_POLL):
        pass
    click.echo("shutting down: stopping runs at the end of their round")
    for run_id in runs.interrupt(SHUTDOWN_GRACE):
        click.echo(f"run {run_id} interrupted: resume it with --resume {run_id}")
    if api is not None:
        api.stop()
    grpc_server.stop(grace=2).wait()
    fleet.close()
    audit(server_event(SERVER_STOP, f"{host}:{port}", mode, allowed, admins))
    store.close()
    workdir_lock.release()
