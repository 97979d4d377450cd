"""``consortium node``: the process a silo runs beside its data.

It exits 11 (a one-line message saying why and what to do) when the server refuses
the node for who it is; it retries, with capped backoff, while the server is unreachable.
What it runs: the signed bundles its ``--policy`` file allows; for development, its own
``--app`` folders, or (warned, and refused with a certificate unless ``--insecure-dev``)
whatever the server sends. Where: in a confined process per run, which cannot read the
node's key (the policy's ``[sandbox]`` says what else it may read); without Landlock the
node refuses to start unless ``--unconfined-apps`` (development only) is given.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import click

from consortium.apps.manifest import load_app_spec, parse_override
from consortium.cli.config_file import configurable
from consortium.cli.observers import configure_logging
from consortium.cli.tls_options import (
    client_tls,
    credentials_option,
    insecure_option,
    name_option,
    require_deploy,
    server_name_option,
    warn_insecure,
)
from consortium.client.task import ERROR_DETAILS, ErrorDetail
from consortium.core.errors import ConfigError, NodeRefused

if TYPE_CHECKING:
    from consortium.node.identity_link import IdentityService
    from consortium.node.isolated import AppIsolation
    from consortium.node.policy import NodePolicy

log = logging.getLogger("consortium.node")


@configurable("node")
@click.command()
@click.option("--server", "address", required=True, help="The server's host:port.")
@credentials_option
@name_option
@server_name_option
@click.option(
    "--config",
    "node_config",
    multiple=True,
    metavar="KEY=VALUE",
    help="This node's own config, e.g. data-path=... (repeatable; in a config file, "
    "the [node.config] table).",
)
@click.option(
    "--app",
    "apps",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A local app folder this node runs (repeatable).",
)
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="This node's policy file (TOML): the publishers it trusts, the signed apps it runs "
    "and its limits. Excludes --app and --trust-server-apps.",
)
@click.option(
    "--trust-server-apps",
    is_flag=True,
    help="DEVELOPMENT ONLY: run any app code the server sends, unverified. With a "
    "certificate (not --insecure) it also needs --insecure-dev.",
)
@click.option(
    "--insecure-dev",
    is_flag=True,
    help="Acknowledge that --trust-server-apps lets the server run any code on this machine.",
)
@click.option(
    "--app-read",
    "app_read",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="A file or folder the app process may read, besides its own code and the policy's "
    "[sandbox] read list, e.g. this node's data (repeatable).",
)
@click.option(
    "--unconfined-apps",
    is_flag=True,
    help="DEVELOPMENT ONLY: run apps without Landlock (kernels without it). An app could "
    "then read this node's private key and reach the network.",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("node-data"),
    show_default=True,
    help="This node's folder: extracted apps, each run's app process folder, node.log, "
    "status.json (its health, for probes).",
)
@click.option(
    "--send-errors",
    type=click.Choice(ERROR_DETAILS),
    default="type",
    show_default=True,
    help="How much of an app's exception the server is told: its type and a fixed message, "
    "also its message, or the whole traceback. Exception text can quote private data; "
    "the full traceback is always in this node's own log.",
)
@insecure_option
def node(
    address: str,
    credentials: Path | None,
    name: str | None,
    server_name: str | None,
    node_config: tuple[str, ...],
    apps: tuple[Path, ...],
    policy_file: Path | None,
    trust_server_apps: bool,
    insecure_dev: bool,
    app_read: tuple[Path, ...],
    unconfined_apps: bool,
    work_dir: Path,
    send_errors: ErrorDetail,
    insecure: bool,
) -> None:
    """Join a federation: dial out to the server and run the tasks it sends."""
    require_deploy()
    from consortium.core.buffers import tune_malloc
    from consortium.core.stack_dumps import dump_stacks_on_signal

    tune_malloc()
    dump_stacks_on_signal()  # kill -USR1 PID: every thread's stack on stderr
    from consortium.apps.bundle import DEFAULT_LIMITS
    from consortium.node.runner import NodeRunner
    from consortium.transport.grpc_client import FleetClient

    # a server sending a larger app bundle is refused at its first chunk
    max_bundle = DEFAULT_LIMITS.max_bundle_bytes

    policy = _policy(policy_file, apps, trust_server_apps, insecure_dev, insecure)
    isolation = _isolation(policy, app_read, unconfined_apps, credentials)
    configure_logging(work_dir, verbose=True, filename="node.log")
    config = dict(parse_override(c) for c in node_config)
    identity = None  # without a certificate, a SecAgg+ app has no key to sign with
    if insecure:
        warn_insecure()
        if not name:
            raise ConfigError("--insecure needs --name NODE")
        client = FleetClient(address, tls=None, insecure_name=name, max_bundle_bytes=max_bundle)
    else:
        tls = client_tls(credentials, name, "node", server_name)
        client = FleetClient(address, tls=tls, max_bundle_bytes=max_bundle)
        identity = _identity(tls.key, tls.certificate, tls.ca, credentials)
    runner = NodeRunner(
        client,
        node_config=config,
        work_dir=work_dir,
        policy=policy,
        send_errors=send_errors,
        isolation=isolation,
        identity=identity,
    )
    signal.signal(signal.SIGTERM, lambda *_: runner.stop.set())
    signal.signal(signal.SIGINT, lambda *_: runner.stop.set())
    if policy.approved is not None:
        log.info(
            "node policy %s: %d trusted publisher key(s), %d allowed app(s)",
            policy.approved.source, len(policy.approved.publishers), len(policy.approved.allow),
        )  # fmt: skip
    elif trust_server_apps:
        log.warning(_UNSAFE)
    if unconfined_apps:
        log.warning(_UNCONFINED)
    click.echo(f"consortium node: dialling {address}")
    try:
        runner.run()
    except NodeRefused as exc:
        raise NodeRefused(
            f"the server refused this node, which stopped instead of retrying: {exc}. "
            "Ask the federation's operator to issue it a valid certificate or to allow it "
            "on the server (consortium server --allow NAME), then start it again."
        ) from exc
    finally:
        client.close()


_UNSAFE = (
    "--trust-server-apps: this node runs ANY code the server sends, unverified, next to its "
    "data. Development only: use --policy FILE with signed bundles in production."
)


_UNCONFINED = (
    "--unconfined-apps: apps run WITHOUT Landlock: an app can read every file this node "
    "can, its private key included, and reach the network. Never use it with real data."
)


def _identity(
    key: bytes, certificate: bytes, ca: bytes, credentials: Path | None
) -> IdentityService:
    """Signs and checks SecAgg+ keys for the app processes: this node's certificate key, the
    CA (and ``crl.pem``, if present) of its credentials folder."""
    from consortium.node.identity_link import IdentityService
    from consortium.transport.identity import PeerIdentity

    assert credentials is not None  # client_tls refuses a node without them
    name = PeerIdentity.from_certificate(certificate).name
    return IdentityService.from_credentials(key, certificate, ca, name, credentials)


def _isolation(
    policy: NodePolicy, app_read: tuple[Path, ...], unconfined: bool, credentials: Path | None
) -> AppIsolation:
    """How the app processes are confined: the policy's ``[sandbox]``, ``--app-read`` and
    ``--unconfined-apps``; the node's credentials folder is what no app may read."""
    from consortium.node.isolated import AppIsolation
    from consortium.sandbox.confine import SandboxLimits, landlock_available

    if unconfined:
        click.secho(f"WARNING: {_UNCONFINED}", fg="red", bold=True, err=True)
    elif not landlock_available():
        raise ConfigError(
            "this kernel cannot confine apps (no Landlock: Linux 5.13+ with landlock in the "
            "LSM list), so an app would run beside this node's private key. Use a newer "
            "kernel, or --unconfined-apps on a development machine only"
        )
    approved = policy.approved
    read = (*(approved.sandbox_read if approved else ()), *(p.resolve() for p in app_read))
    secrets = () if credentials is None else (credentials.resolve(),)
    for secret in secrets:
        for tree in read:
            if secret == tree or tree in secret.parents:
                raise ConfigError(
                    f"the app process may read {tree}, which holds this node's credentials "
                    f"({secret}): grant only the data folders, never the key's"
                )
    return AppIsolation(
        limits=approved.sandbox_limits if approved else SandboxLimits(),
        read_paths=read,
        confined=not unconfined,
        secrets=secrets,
    )


def _policy(
    policy_file: Path | None,
    apps: tuple[Path, ...],
    trust_server_apps: bool,
    insecure_dev: bool,
    insecure: bool,
) -> NodePolicy:
    """What the node agrees to run, from its options; refuses unsafe combinations."""
    from consortium.node.policy import NodePolicy, load_policy

    if policy_file is not None:
        if apps or trust_server_apps:
            raise ConfigError(
                "--policy cannot be combined with --app or --trust-server-apps: with a policy "
                "the node runs only signed bundles its policy allows"
            )
        return NodePolicy(approved=load_policy(policy_file))
    if trust_server_apps:
        if not insecure and not insecure_dev:
            raise ConfigError(
                "--trust-server-apps runs any code the server sends; a node with a CA-issued "
                "certificate refuses it unless --insecure-dev is given too (development only). "
                "In production, use --policy FILE with signed bundles"
            )
        click.secho(f"WARNING: {_UNSAFE}", fg="red", bold=True, err=True)
    local = {load_app_spec(a).name: a for a in apps}
    return NodePolicy(local_apps=local, trust_server_apps=trust_server_apps)
