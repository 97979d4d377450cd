"""How ``consortium server`` tells who calls: nodes by certificate and allow-list,
coordinators by any client certificate (the policy then decides what each may do)."""

from __future__ import annotations

from pathlib import Path

from consortium.cli.tls_options import warn_insecure
from consortium.core.errors import ConfigError
from consortium.server.bans import NodeBans
from consortium.transport.auth import (
    Authenticator,
    CallerAuthenticator,
    CertificateAuthenticator,
    IdentityAuthenticator,
    InsecureAuthenticator,
)
from consortium.transport.authz import Caller
from consortium.transport.grpc_listen import TlsFiles


def authenticators(
    *,
    insecure: bool,
    credentials: Path | None,
    name: str | None,
    ca_dir: Path | None,
    allowed: set[str],
    bans: NodeBans,
) -> tuple[Authenticator, Authenticator | CallerAuthenticator, TlsFiles | None]:
    """(the Fleet API's authenticator, the Control API's, the server's TLS files).

    With ``insecure`` there are no certificates: nodes are named by a header and every
    coordinator is an admin (a laptop demo on loopback only, and warned).
    """
    node_auth: Authenticator
    control_auth: Authenticator | CallerAuthenticator
    if insecure:
        warn_insecure()
        node_auth = InsecureAuthenticator(allowed=lambda n: n in allowed, denied=bans.reason)
        control_auth = InsecureAuthenticator()  # no certificates: every caller is an admin
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
        from consortium.transport.credentials import load_server_credentials
        from consortium.transport.names import CLIENT_ROLES, Role
        from consortium.transport.peer_verifier import PeerVerifier

        node_role: tuple[Role, ...] = ("node",)

        creds = load_server_credentials(credentials, name)
        verifier = PeerVerifier.from_ca_directory(ca_dir)
        node_auth = CertificateAuthenticator(
            lambda pem: verifier.verify(pem, roles=node_role).name,
            allowed=lambda n: n in allowed,
            denied=bans.reason,
        )

        def control_caller(pem: bytes) -> Caller:
            """Any client role may call; the policy decides what each may do."""
            peer = verifier.verify(pem, roles=CLIENT_ROLES)
            return Caller(peer.name, peer.role, peer.organisation)

        control_auth = IdentityAuthenticator(control_caller)
        tls = TlsFiles(creds.private_key, creds.certificate_chain, creds.root_certificates)
    return node_auth, control_auth, tls
