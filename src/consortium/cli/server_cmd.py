"""``consortium server``: the aggregation server of a deployed federation."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import click

from consortium.cli.observers import configure_logging
from consortium.cli.tls_options import (
    credentials_option,
    insecure_option,
    name_option,
    require_deploy,
    warn_insecure,
)
from consortium.core.errors import ConfigError
from consortium.transport.stall import DEFAULT_STALL_TIMEOUT

log = logging.getLogger("consortium.server")

#: On SIGTERM/SIGINT, how long the server waits for its runs to reach the end of a round.
SHUTDOWN_GRACE = 60.0


def read_allow_list(names: tuple[str, ...], allow_file: Path | None) -> set[str]:
    allowed = set(names)
    if allow_file is not None:
        for line in allow_file.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                allowed.add(line)
    return allowed


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
@click.option("--allow-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--admin", "admins", multiple=True, metavar="NAME", help="Restrict admins to these.")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("server-data"),
    show_default=True,
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
@click.option(
    "--transfer-budget-mb",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Memory for models in transit: the model being sent, replies being received or "
    "waiting to be folded. Replies beyond it wait (the nodes are held by flow control).",
)
@click.option(
    "--reply-factor",
    type=click.FloatRange(min=1.0),
    default=4.0,
    show_default=True,
    help="Largest reply a node may send: this many times the model its task carries, "
    "plus 16 MiB; a larger reply is refused when it starts.",
)
@click.option(
    "--stall-timeout",
    type=click.FloatRange(min=0.1),
    default=DEFAULT_STALL_TIMEOUT,
    show_default=True,
    help="Seconds a transfer (a task to a node, a node's reply) may make no progress "
    "before it is cut off and only that node's task fails.",
)
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
@insecure_option
def server(
    address: str,
    credentials: Path | None,
    name: str | None,
    ca_dir: Path | None,
    allow: tuple[str, ...],
    allow_file: Path | None,
    admins: tuple[str, ...],
    workdir: Path,
    heartbeat: float,
    offline_after: float,
    max_message_mb: int,
    transfer_budget_mb: int,
    reply_factor: float,
    stall_timeout: float,
    port_file: Path | None,
    state_url: str | None,
    resume: str | None,
    resume_interrupted: bool,
    state_timeout: float,
    insecure: bool,
) -> None:
    """Run the aggregation server: nodes dial in, coordinators start runs (mutual TLS)."""
    require_deploy()
    from consortium.core.buffers import tune_malloc

    tune_malloc()
    from consortium.server.fleet import Fleet
    from consortium.server.fleet_state import ReplyLimits
    from consortium.server.runs import RunManager
    from consortium.server.store.lock import StateDirLock
    from consortium.transport.auth import (
        Authenticator,
        CertificateAuthenticator,
        InsecureAuthenticator,
    )
    from consortium.transport.fairness import worker_threads
    from consortium.transport.grpc_control import ControlServicer
    from consortium.transport.grpc_server import (
        FleetServicer,
        TlsFiles,
        start_server,
    )

    # before anything is written there (the log included): one server per state directory
    workdir_lock = StateDirLock(workdir)
    configure_logging(workdir, verbose=True, filename="server.log")
    allowed = read_allow_list(allow, allow_file)
    if not allowed:
        raise ConfigError("no node may join: give --allow NODE (repeatable) or --allow-file FILE")
    workdir.mkdir(parents=True, exist_ok=True)
    from consortium.server.records import fleet_event_sink
    from consortium.server.store import StateStore, default_url

    store = StateStore(state_url or default_url(workdir), write_timeout=state_timeout)
    for node_name in sorted(allowed):
        store.upsert_node(node_name, allow_listed=True)
    fleet = Fleet(
        heartbeat_interval=heartbeat,
        offline_after=offline_after,
        max_message_bytes=max_message_mb * 1024 * 1024,
        transfer_budget=transfer_budget_mb * 1024 * 1024,
        reply_limits=ReplyLimits(factor=reply_factor),
        events=fleet_event_sink(store),
    )
    runs = RunManager(fleet, workdir, store=store)
    fleet.set_bundles(runs.run_bundle)
    node_auth: Authenticator
    admin_auth: Authenticator
    if insecure:
        warn_insecure()
        node_auth = InsecureAuthenticator(allowed=lambda n: n in allowed)
        admin_auth = InsecureAuthenticator()
        tls = None
    else:
        if credentials is None:
            raise ConfigError(
                "give --credentials DIR with the server's certificate, key and ca.crt"
            )
        if ca_dir is None:
            raise ConfigError(
                "give --ca-dir DIR: the folder with the CA's ca.crt and crl.pem "
                "(revocations are checked on every call)"
            )
        from consortium.transport.identity import PeerVerifier, Role, load_server_credentials

        node_role: tuple[Role, ...] = ("node",)
        admin_role: tuple[Role, ...] = ("admin",)

        creds = load_server_credentials(credentials, name)
        verifier = PeerVerifier.from_ca_directory(ca_dir)
        node_auth = CertificateAuthenticator(
            lambda pem: verifier.verify(pem, roles=node_role).name,
            allowed=lambda n: n in allowed,
        )
        admin_auth = CertificateAuthenticator(
            lambda pem: verifier.verify(pem, roles=admin_role).name,
            allowed=(lambda n: n in admins) if admins else None,
        )
        tls = TlsFiles(creds.private_key, creds.certificate_chain, creds.root_certificates)
    grpc_server, port = start_server(
        address,
        fleet=FleetServicer(fleet, node_auth, stall_timeout=stall_timeout),
        control=ControlServicer(runs, admin_auth),
        tls=tls,
        # every allow-listed node can hold its share of calls, and the coordinator's
        # calls still find threads (transport/fairness.py)
        workers=worker_threads(len(allowed)),
    )
    host = address.rsplit(":", 1)[0]
    mode = "plain text" if tls is None else "mutual TLS"
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
    # written last: once the port file is there, runs to resume are running again
    if port_file is not None:
        port_file.write_text(str(port))
    stop.wait()
    click.echo("shutting down: stopping runs at the end of their round")
    for run_id in runs.interrupt(SHUTDOWN_GRACE):
        click.echo(f"run {run_id} interrupted: resume it with --resume {run_id}")
    grpc_server.stop(grace=2).wait()
    fleet.close()
    store.close()
    workdir_lock.release()
