"""A server's, node's or coordinator's own TLS credentials, loaded and checked.

``load_*_credentials`` read a certificate, its private key and the federation
CA certificate (a credentials folder as ``consortium ca issue`` writes it, or
explicit paths) and return the PEM bytes gRPC wants, after checking that the
key fits the certificate, that the CA issued it for the expected role, and
that neither is expired (a warning when either expires within 30 days).
Missing or mismatched files raise :class:`~consortium.core.errors.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from consortium.core.errors import ConfigError
from consortium.transport.identity import (
    CA_CERT_FILE,
    PeerIdentity,
    check_certificate_lifetime,
    load_certificate,
    utcnow,
    verify_peer,
)
from consortium.transport.identity import read_credential_file as read
from consortium.transport.names import CLIENT_ROLES, Role, file_stem


@dataclass(frozen=True)
class Credentials:
    """PEM bytes for gRPC, and the identity of the certificate they hold.

    Server: ``grpc.ssl_server_credentials([(c.private_key, c.certificate_chain)],
    root_certificates=c.root_certificates, require_client_auth=True)``.
    Client: ``grpc.ssl_channel_credentials(c.root_certificates, c.private_key,
    c.certificate_chain)``.
    """

    certificate_chain: bytes
    private_key: bytes = field(repr=False)
    root_certificates: bytes
    identity: PeerIdentity
    cert_path: Path | None = None


def load_server_credentials(
    directory: Path | str | None = None,
    name: str | None = None,
    *,
    cert: Path | str | None = None,
    key: Path | str | None = None,
    ca: Path | str | None = None,
    now: datetime | None = None,
) -> Credentials:
    """Load a server's certificate, key and CA certificate (a folder, or explicit paths)."""
    return load_credentials(("server",), directory, name, cert=cert, key=key, ca=ca, now=now)


def load_client_credentials(
    directory: Path | str | None = None,
    name: str | None = None,
    *,
    role: Role | None = None,
    cert: Path | str | None = None,
    key: Path | str | None = None,
    ca: Path | str | None = None,
    now: datetime | None = None,
) -> Credentials:
    """Load a node's or coordinator's credentials; ``role`` pins which role it must hold."""
    return load_credentials(
        (role,) if role else CLIENT_ROLES, directory, name, cert=cert, key=key, ca=ca, now=now
    )


def load_credentials(
    roles: Collection[str],
    directory: Path | str | None = None,
    name: str | None = None,
    *,
    cert: Path | str | None = None,
    key: Path | str | None = None,
    ca: Path | str | None = None,
    now: datetime | None = None,
) -> Credentials:
    """Load, match and check credentials: key fits certificate, CA issued it, role, expiry."""
    cert_path, key_path, ca_path = _resolve_paths(directory, name, cert, key, ca)
    cert_pem, key_pem, ca_pem = read(cert_path), read(key_path), read(ca_path)
    own = load_certificate(cert_pem)
    authority = load_certificate(ca_pem)
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read private key {key_path}: {exc}") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if private.public_key().public_bytes(enc, pub) != own.public_key().public_bytes(enc, pub):
        raise ConfigError(f"private key {key_path} does not belong to certificate {cert_path}")
    now = now or utcnow()
    identity = verify_peer(own, authority, None, now, roles=roles)
    check_certificate_lifetime(authority, now=now, what="the federation CA certificate")
    check_certificate_lifetime(own, now=now, what=f"this {identity.role}'s certificate {cert_path}")
    return Credentials(cert_pem, key_pem, ca_pem, identity, cert_path)


def _resolve_paths(
    directory: Path | str | None,
    name: str | None,
    cert: Path | str | None,
    key: Path | str | None,
    ca: Path | str | None,
) -> tuple[Path, Path, Path]:
    if directory is None:
        if cert is None or key is None or ca is None:
            raise ConfigError("give a credentials folder, or all of cert, key and ca paths")
        return Path(cert), Path(key), Path(ca)
    folder = Path(directory)
    if not folder.is_dir():
        raise ConfigError(f"credentials folder {folder} does not exist")
    if name is not None:
        stem = file_stem(name)
    elif cert is not None:
        stem = Path(cert).stem
    else:
        found = sorted(p.stem for p in folder.glob("*.crt") if p.name != CA_CERT_FILE)
        if len(found) != 1:
            listed = ", ".join(found) or "none"
            raise ConfigError(
                f"expected one certificate besides {CA_CERT_FILE} in {folder} (found: {listed}); "
                "name the one to use"
            )
        stem = found[0]
    return (
        Path(cert) if cert is not None else folder / f"{stem}.crt",
        Path(key) if key is not None else folder / f"{stem}.key",
        Path(ca) if ca is not None else folder / CA_CERT_FILE,
    )
