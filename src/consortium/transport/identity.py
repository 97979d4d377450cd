"""Who is on the other end of a TLS connection, and whether they may be there.

Every certificate the federation CA issues names its holder twice: the subject
common name and exactly one URI subject-alternative name
``consortium://ROLE/NAME``, where ROLE is ``server``, ``node``, or one of the
coordinator roles ``admin``, ``researcher`` and ``observer`` (what each may do is
the server's authorization policy, :mod:`consortium.transport.authz`).
:class:`PeerIdentity` trusts a certificate's identity only when the two agree. A
certificate may also name its holder's organisation (subject ``O=``); one without
(issued before organisations existed) has organisation ``""``.
:func:`verify_peer` checks a peer's certificate (chain to this CA, validity,
revocation, role and extended key usage, allow-list); :class:`PeerVerifier`
does the same for a server and reloads the CRL when its file changes (a
holder's own credentials are loaded by :mod:`consortium.transport.credentials`).
Nothing here imports gRPC.

Refusals raise subclasses of :class:`~consortium.core.errors.SecurityError`
(``UntrustedCertificate``, ``CertificateExpired``, ``CertificateRevoked``,
``WrongRole``, ``NotAllowed``); missing or mismatched files raise
:class:`~consortium.core.errors.ConfigError`.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from consortium.core.errors import ConfigError, SecurityError
from consortium.transport.names import (
    CLIENT_ROLES,
    ROLES,
    URI_PREFIX,
    Role,
    identity_uri,
    validate_name,
)

CA_CERT_FILE = "ca.crt"
CRL_FILE = "crl.pem"
EXPIRY_WARNING = timedelta(days=30)

CertificateLike: TypeAlias = "x509.Certificate | bytes | str"
CrlLike: TypeAlias = "x509.CertificateRevocationList | bytes | str"
_REQUIRED_EKU = {
    "server": (ExtendedKeyUsageOID.SERVER_AUTH, "serverAuth"),
    "node": (ExtendedKeyUsageOID.CLIENT_AUTH, "clientAuth"),
    "admin": (ExtendedKeyUsageOID.CLIENT_AUTH, "clientAuth"),
    "researcher": (ExtendedKeyUsageOID.CLIENT_AUTH, "clientAuth"),
    "observer": (ExtendedKeyUsageOID.CLIENT_AUTH, "clientAuth"),
}

log = logging.getLogger(__name__)


class UntrustedCertificate(SecurityError):
    """Missing, malformed, or not issued by this federation's CA."""


class RefusedMember(SecurityError):
    """A certificate signed by this federation's CA that is not accepted (expired,
    revoked, off the allow-list). When a peer presented it, ``node`` is the node
    it was issued to (None for other roles)."""

    node: str | None = None


class CertificateExpired(RefusedMember):
    """Outside its validity window: expired or not yet valid."""


class CertificateRevoked(RefusedMember):
    """Listed in the federation's certificate revocation list."""


class WrongRole(SecurityError):
    """A valid certificate used for a role it was not issued for."""


class NotAllowed(RefusedMember):
    """A valid certificate whose name is not on the allow-list."""


# --------------------------------------------------------------------------- parsing


def load_certificate(data: CertificateLike) -> x509.Certificate:
    """Parse a PEM or DER certificate (the first one of a PEM bundle)."""
    if isinstance(data, x509.Certificate):
        return data
    raw = data.encode() if isinstance(data, str) else bytes(data)
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except ValueError as exc:
        raise UntrustedCertificate(f"not a valid X.509 certificate: {exc}") from None


def load_crl(data: CrlLike) -> x509.CertificateRevocationList:
    """Parse a PEM or DER certificate revocation list."""
    if isinstance(data, x509.CertificateRevocationList):
        return data
    raw = data.encode() if isinstance(data, str) else bytes(data)
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(raw)
        return x509.load_der_x509_crl(raw)
    except ValueError as exc:
        raise SecurityError(f"not a valid certificate revocation list: {exc}") from None


def _common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = attrs[0].value if len(attrs) == 1 else None
    return value if isinstance(value, str) else ""


def _organisation(cert: x509.Certificate) -> str:
    """The subject's organisation (``O=``), or "" when it names none (older certificates)."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    value = attrs[0].value if len(attrs) == 1 else None
    return value if isinstance(value, str) else ""


def _ext_value(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> object | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


@dataclass(frozen=True)
class PeerIdentity:
    """The holder of a federation certificate: role, name, organisation, serial, validity."""

    role: Role
    name: str
    serial: int
    not_before: datetime
    not_after: datetime
    #: the subject's ``O=`` ("" for a certificate that names no organisation)
    organisation: str = ""

    @property
    def uri(self) -> str:
        return identity_uri(self.role, self.name)

    def __str__(self) -> str:
        return f"{self.role} {self.name!r} (serial {self.serial:x})"

    @classmethod
    def from_certificate(cls, data: CertificateLike) -> PeerIdentity:
        """Read the identity from the URI SAN, which must agree with the common name.

        This does not verify the certificate: use :func:`verify_peer` for that.
        """
        cert = load_certificate(data)
        san = _ext_value(cert, x509.SubjectAlternativeName)
        uris = (
            [u for u in san.get_values_for_type(x509.UniformResourceIdentifier)]
            if isinstance(san, x509.SubjectAlternativeName)
            else []
        )
        ours = [u for u in uris if u.startswith(URI_PREFIX)]
        cn = _common_name(cert)
        if len(ours) != 1:
            raise UntrustedCertificate(
                f"certificate {cn or '(no common name)'!r} is not a Consortium identity: "
                f"expected one {URI_PREFIX}ROLE/NAME subject-alternative name, found {len(ours)}"
            )
        role, _, name = ours[0].removeprefix(URI_PREFIX).partition("/")
        if role not in ROLES:
            raise UntrustedCertificate(f"certificate {cn!r} names an unknown role {role!r}")
        try:
            canonical = validate_name(role, name)
        except ConfigError as exc:
            raise UntrustedCertificate(f"certificate {cn!r}: {exc}") from None
        if canonical != name or cn != name:
            raise UntrustedCertificate(
                f"certificate identity {ours[0]!r} disagrees with its common name {cn!r}"
            )
        return cls(
            role=role,
            name=name,
            serial=cert.serial_number,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            organisation=_organisation(cert),
        )


# --------------------------------------------------------------------------- checks


def utcnow() -> datetime:
    return datetime.now(UTC)


def check_validity(cert: x509.Certificate, now: datetime, what: str) -> None:
    """Raise :class:`CertificateExpired` unless ``now`` lies in the validity window."""
    if now < cert.not_valid_before_utc:
        raise CertificateExpired(
            f"{what} is not valid yet (valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
            "UTC); check the clocks"
        )
    if now > cert.not_valid_after_utc:
        raise CertificateExpired(
            f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
            "issue a new one with 'consortium ca issue'"
        )


def check_certificate_lifetime(
    data: CertificateLike,
    *,
    now: datetime | None = None,
    warn_within: timedelta = EXPIRY_WARNING,
    what: str = "certificate",
) -> timedelta:
    """Refuse an expired (or not yet valid) certificate of one's own; warn when it ends soon.

    Returns the time left. A server or node calls this for its own certificate
    at startup (the ``load_*_credentials`` functions do).
    """
    cert = load_certificate(data)
    now = now or utcnow()
    check_validity(cert, now, what)
    left = cert.not_valid_after_utc - now
    if left < warn_within:
        log.warning(
            "%s expires in %d days (%s UTC); renew it with 'consortium ca issue --force'",
            what,
            left.days,
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M}",
        )
    return left


def check_crl(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> None:
    """Raise :class:`SecurityError` unless this CA issued and signed the CRL."""
    if crl.issuer != ca.subject or not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
        raise SecurityError("the revocation list is not signed by this federation's CA")


def verify_peer(
    cert: CertificateLike,
    ca: CertificateLike,
    crl: CrlLike | None = None,
    now: datetime | None = None,
    *,
    roles: Collection[str] = CLIENT_ROLES,
    allowed: Collection[str] | None = None,
) -> PeerIdentity:
    """Check a peer certificate against the federation CA and return who it is.

    Checks, in order: signed by ``ca``; inside its validity window (and the CA
    too); not on ``crl`` (which must be signed by ``ca``); a well-formed
    identity whose role is in ``roles`` with the matching extended key usage;
    full RFC 5280 path validation; name in ``allowed`` when given.
    """
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ConfigError(f"unknown role(s) {sorted(unknown)}: expected {', '.join(ROLES)}")
    peer = load_certificate(cert)
    authority = load_certificate(ca)
    now = now or utcnow()
    cn = _common_name(peer) or "(no common name)"
    try:
        peer.verify_directly_issued_by(authority)
    except (ValueError, TypeError, InvalidSignature):
        raise UntrustedCertificate(
            f"certificate {cn!r} is not signed by this federation's CA "
            f"(issuer {peer.issuer.rfc4514_string()!r})"
        ) from None
    try:
        check_validity(peer, now, f"certificate {cn!r}")
        check_validity(authority, now, "the federation CA certificate")
        if crl is not None:
            _check_not_revoked(peer, authority, load_crl(crl), cn)
        identity = PeerIdentity.from_certificate(peer)
        _check_role(peer, identity, roles)
        _path_validate(peer, authority, identity, now)
        if allowed is not None and identity.name not in allowed:
            raise NotAllowed(
                f"{identity.role} {identity.name!r} is not on this server's allow-list"
            )
    except RefusedMember as exc:
        exc.node = _node_named_by(peer)  # signed by our CA: the name is the CA's
        raise
    return identity


def _node_named_by(peer: x509.Certificate) -> str | None:
    """The node a CA-signed certificate names, or None (another role, a malformed one)."""
    try:
        identity = PeerIdentity.from_certificate(peer)
    except SecurityError:
        return None
    return identity.name if identity.role == "node" else None


def _check_not_revoked(
    peer: x509.Certificate,
    ca: x509.Certificate,
    crl: x509.CertificateRevocationList,
    cn: str,
) -> None:
    check_crl(crl, ca)
    entry = crl.get_revoked_certificate_by_serial_number(peer.serial_number)
    if entry is not None:
        raise CertificateRevoked(
            f"certificate {cn!r} (serial {peer.serial_number:x}) was revoked on "
            f"{entry.revocation_date_utc:%Y-%m-%d %H:%M} UTC"
        )


def _check_role(peer: x509.Certificate, identity: PeerIdentity, roles: Collection[str]) -> None:
    if identity.role not in roles:
        raise WrongRole(
            f"{identity.role} certificate {identity.name!r} is not accepted here "
            f"(expected {' or '.join(roles)})"
        )
    eku = _ext_value(peer, x509.ExtendedKeyUsage)
    needed, label = _REQUIRED_EKU[identity.role]
    if not isinstance(eku, x509.ExtendedKeyUsage) or needed not in eku:
        raise WrongRole(
            f"{identity.role} certificate {identity.name!r} lacks the {label} extended key usage"
        )


def _path_validate(
    peer: x509.Certificate, ca: x509.Certificate, identity: PeerIdentity, now: datetime
) -> None:
    """RFC 5280 path validation by the cryptography library (constraints, key usage...)."""
    builder = verification.PolicyBuilder().store(verification.Store([ca])).time(now)
    try:
        if identity.role == "server":
            try:
                subject: x509.DNSName | x509.IPAddress = x509.IPAddress(
                    ipaddress.ip_address(identity.name)
                )
            except ValueError:
                subject = x509.DNSName(identity.name)
            builder.build_server_verifier(subject).verify(peer, [])
        else:
            builder.build_client_verifier().verify(peer, [])
    except verification.VerificationError as exc:
        raise UntrustedCertificate(
            f"certificate {identity.name!r} failed validation: {exc}"
        ) from None


def read_credential_file(path: Path | str) -> bytes:
    """A certificate, key or CRL file's bytes; ConfigError naming it if it cannot be read."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"no such file: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
