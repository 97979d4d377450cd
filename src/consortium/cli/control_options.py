"""What every coordinator command shares: the server's address and a coordinator certificate.

``consortium run`` and ``consortium fleet`` call the server's Control API with an
admin, researcher or observer certificate; the server's authorization policy
decides what each may do (a refusal names the role and the action).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from consortium.cli.tls_options import (
    credentials_option,
    insecure_option,
    name_option,
    require_deploy,
    server_name_option,
    warn_insecure,
)
from consortium.core.errors import ConfigError

if TYPE_CHECKING:  # gRPC loads only when a coordinator command runs
    from consortium.transport.grpc_client import ControlClient

#: the name a coordinator claims with --insecure when it gives none
INSECURE_DEFAULT_NAME = "admin"


def control_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--server, --credentials, --name, --server-name and --insecure."""
    for option in reversed(
        [
            click.option("--server", "address", required=True, help="The server's host:port."),
            credentials_option,
            name_option,
            server_name_option,
            insecure_option,
        ]
    ):
        fn = option(fn)
    return fn


def control_client(
    address: str,
    credentials: Path | None,
    name: str | None,
    server_name: str | None,
    insecure: bool,
) -> ControlClient:
    """A Control API client with the coordinator certificate in ``credentials``."""
    require_deploy()
    from consortium.transport.grpc_client import ClientTls, ControlClient
    from consortium.transport.identity import CONTROL_ROLES, load_credentials

    if insecure:
        warn_insecure()
        return ControlClient(address, tls=None, insecure_name=name or INSECURE_DEFAULT_NAME)
    if credentials is None:
        raise ConfigError(
            "give --credentials DIR (a folder with your certificate, key and ca.crt), "
            "or --insecure for a plain-text test setup"
        )
    creds = load_credentials(CONTROL_ROLES, credentials, name)
    tls = ClientTls(
        key=creds.private_key,
        certificate=creds.certificate_chain,
        ca=creds.root_certificates,
        server_name=server_name,
    )
    return ControlClient(address, tls=tls)
