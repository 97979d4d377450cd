"""Credentials for the deployment commands: mutual TLS by default, --insecure only by choice."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import click

from consortium.core.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:  # gRPC loads only when a deployment command runs
    from consortium.transport.grpc_client import ClientTls

Role = Literal["node", "admin"]

log = logging.getLogger("consortium")

INSECURE_WARNING = (
    "WARNING: --insecure: plain text, no authentication. Anyone who can reach this port can "
    "impersonate a node and read every model. Use only on a private test machine."
)


def require_deploy() -> None:
    """Deployment commands need the ``deploy`` extra; say so instead of a traceback."""
    import importlib.util

    for module, package in (("grpc", "grpcio"), ("cryptography", "cryptography"),
                            ("sqlalchemy", "sqlalchemy")):  # fmt: skip
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError.for_extra(package, "deploy")


def warn_insecure() -> None:
    click.secho(INSECURE_WARNING, fg="red", err=True)
    log.warning(INSECURE_WARNING)


def client_tls(
    credentials: Path | None, name: str | None, role: Role, server_name: str | None
) -> ClientTls:
    """Load and check a node's or admin's key, certificate and the federation CA."""
    if credentials is None:
        raise ConfigError(
            "give --credentials DIR (a folder with your certificate, key and ca.crt), "
            "or --insecure for a plain-text test setup"
        )
    from consortium.transport.credentials import load_client_credentials
    from consortium.transport.grpc_client import ClientTls

    creds = load_client_credentials(credentials, name, role=role)
    return ClientTls(
        key=creds.private_key,
        certificate=creds.certificate_chain,
        ca=creds.root_certificates,
        server_name=server_name,
    )


credentials_option = click.option(
    "--credentials",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder with this party's <name>.crt, <name>.key and the federation's ca.crt.",
)
name_option = click.option(
    "--name", help="Which certificate in --credentials to use (or, with --insecure, the name)."
)
insecure_option = click.option(
    "--insecure", is_flag=True, help="Plain text, no authentication (test setups only)."
)
server_name_option = click.option(
    "--server-name", help="Name the server's certificate must carry, if not the host dialled."
)
