"""What every coordinator command shares: the server's address and a coordinator certificate.

``consortium run`` and ``consortium fleet`` call the server's Control API with an
admin, researcher or observer certificate; the server's authorization policy
decides what each may do (a refusal names the role and the action). The ``run``
commands can use the REST API with a bearer token instead (``--api``,
``--token-file``), under the same policy.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
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
    from consortium.cli.run_backends import RunsBackend
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
    from consortium.transport.credentials import load_credentials
    from consortium.transport.grpc_client import ClientTls, ControlClient
    from consortium.transport.names import CONTROL_ROLES

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


#: the variable naming the REST API's URL when neither --server nor --api is given
API_ENV = "CONSORTIUM_API"


@dataclass(frozen=True, slots=True)
class RunTarget:
    """Where a ``run`` command reaches the server: the gRPC Control API (``address`` and a
    certificate) or the REST API (``api`` and a token)."""

    address: str | None
    credentials: Path | None
    name: str | None
    server_name: str | None
    insecure: bool
    api: str | None
    token_file: Path | None

    def backend(self) -> RunsBackend:
        """A backend for it (:func:`run_backend`)."""
        return run_backend(self)


def run_target_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--server and its certificate options (the gRPC Control API), or --api and
    --token-file (the REST API); the command receives them as one ``target``
    (:class:`RunTarget`)."""

    @functools.wraps(fn)
    def command(
        *args: Any,
        address: str | None,
        credentials: Path | None,
        name: str | None,
        server_name: str | None,
        insecure: bool,
        api: str | None,
        token_file: Path | None,
        **kwargs: Any,
    ) -> Any:
        target = RunTarget(address, credentials, name, server_name, insecure, api, token_file)
        return fn(*args, target=target, **kwargs)

    wrapped: Callable[..., Any] = command
    for option in reversed(
        [
            click.option(
                "--server",
                "address",
                default=None,
                help="The server's host:port (the gRPC Control API, with --credentials).",
            ),
            credentials_option,
            name_option,
            server_name_option,
            insecure_option,
            click.option(
                "--api",
                default=None,
                metavar="URL",
                help=f"The server's REST API instead of --server, e.g. http://host:8080 "
                f"(default: ${API_ENV} when --server is not given).",
            ),
            click.option(
                "--token-file",
                type=click.Path(dir_okay=False, path_type=Path),
                default=None,
                help="A file holding the REST API token (consortium token create); "
                "default: $CONSORTIUM_TOKEN.",
            ),
        ]
    ):
        wrapped = option(wrapped)
    return wrapped


def run_backend(target: RunTarget) -> RunsBackend:
    """The gRPC Control API (``--server``) or the REST API (``--api``, or ``$CONSORTIUM_API``
    when neither is given); a :class:`ConfigError` naming the options otherwise."""
    from consortium.cli.run_backends import GrpcRuns, RestRuns

    address, api, token_file = target.address, target.api, target.token_file

    if address is not None and api is not None:
        raise ConfigError("--server and --api: give one (gRPC with a certificate, or REST)")
    if address is not None:
        return GrpcRuns(control_client(address, target.credentials, target.name,
                                       target.server_name, target.insecure))  # fmt: skip
    url = api or os.environ.get(API_ENV, "").strip()
    if not url:
        raise ConfigError(
            f"give --server HOST:PORT (with --credentials) or --api URL (with --token-file), "
            f"or set {API_ENV}"
        )
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--api: expected an http:// or https:// URL, got {url!r}")
    from consortium.control.sdk import TOKEN_ENV, ControlClient

    token = os.environ.get(TOKEN_ENV, "")
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--token-file: cannot read {token_file}: {exc}") from None
    if not token.strip():
        raise ConfigError(f"--api needs a token: give --token-file FILE or set {TOKEN_ENV}")
    return RestRuns(ControlClient(url, token.strip()))
