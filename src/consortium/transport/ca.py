"""The federation's certificate authority: a folder that issues and revokes identities.

A CA folder holds::

    ca.crt      the CA certificate: public, every server, node and admin needs a copy
    ca.key      the CA private key (0600; encrypted when a passphrase is given)
    crl.pem     the signed revocation list, rewritten on every revocation
    index.json  every certificate issued (serial, role, name, validity, revocation)

Issued certificates carry their holder as the common name and as the URI SAN
``consortium://ROLE/NAME`` (see :mod:`consortium.transport.identity`). Keys
are ECDSA P-256 by default (RSA 3072 on request); serials are random 159-bit
numbers; certificates start five minutes in the past to tolerate clock skew.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from consortium.core.errors import ConfigError
from consortium.transport.ca_index import IndexEntry, IssuedCertificate
from consortium.transport.ca_keys import KeyType, PrivateKey, generate_key, key_pem, write_file
from consortium.transport.identity import CA_CERT_FILE, CRL_FILE, load_certificate, utcnow
from consortium.transport.names import (
    Role,
    file_stem,
    identity_uri,
    validate_name,
    validate_organisation,
)

CA_KEY_FILE = "ca.key"
INDEX_FILE = "index.json"
DEFAULT_CA_NAME = "Consortium federation CA"
CA_DAYS = 3650
CERT_DAYS = 365
CRL_DAYS = 90
CLOCK_SKEW = timedelta(minutes=5)
REASONS = ("unspecified", "key-compromise", "superseded", "cessation-of-operation",
           "affiliation-changed")  # fmt: skip


class CertificateAuthority:
    """A CA folder: ``init`` one, ``load`` it, then ``issue``, ``revoke``, ``entries``.

    The private key is read only when something must be signed, so listing
    needs no passphrase.
    """

    def __init__(
        self, directory: Path, certificate: x509.Certificate, passphrase: bytes | None = None
    ) -> None:
        self.directory = directory
        self.certificate = certificate
        self._passphrase = passphrase

    @property
    def cert_path(self) -> Path:
        return self.directory / CA_CERT_FILE

    @property
    def key_path(self) -> Path:
        return self.directory / CA_KEY_FILE

    @property
    def crl_path(self) -> Path:
        return self.directory / CRL_FILE

    @property
    def index_path(self) -> Path:
        return self.directory / INDEX_FILE

    @classmethod
    def init(
        cls,
        directory: Path | str,
        *,
        name: str = DEFAULT_CA_NAME,
        days: int = CA_DAYS,
        key_type: KeyType = "ec",
        passphrase: bytes | None = None,
        force: bool = False,
        now: datetime | None = None,
    ) -> CertificateAuthority:
        """Create a self-signed CA (pathlen 0), an empty index and an empty signed CRL."""
        directory = Path(directory)
        if not force and any((directory / f).exists() for f in (CA_CERT_FILE, CA_KEY_FILE)):
            raise ConfigError(
                f"a CA already exists in {directory}; pass --force to replace it "
                "(nothing it issued will be trusted any more)"
            )
        if not name.strip() or len(name) > 64 or not name.isprintable():
            raise ConfigError(f"invalid CA name {name!r}: 1-64 printable characters")
        if days < 1:
            raise ConfigError(f"--days must be at least 1, not {days}")
        now = now or utcnow()
        key = generate_key(key_type)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_file(directory / CA_KEY_FILE, key_pem(key, passphrase), 0o600)
        write_file(directory / CA_CERT_FILE, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        ca = cls(directory, cert, passphrase)
        ca._save_index({"version": 1, "crl_number": 0, "certificates": []})
        ca.write_crl(now=now, key=key)
        return ca

    @classmethod
    def load(
        cls, directory: Path | str, *, passphrase: bytes | None = None
    ) -> CertificateAuthority:
        """Open an existing CA folder."""
        directory = Path(directory)
        path = directory / CA_CERT_FILE
        if not path.is_file():
            raise ConfigError(f"no CA in {directory}: create one with 'consortium ca init'")
        return cls(directory, load_certificate(path.read_bytes()), passphrase)

    # ------------------------------------------------------------------ issuing

    def issue(
        self,
        role: Role,
        name: str,
        out: Path | str,
        *,
        days: int = CERT_DAYS,
        ips: Iterable[str] = (),
        dns: Iterable[str] = (),
        key_type: KeyType = "ec",
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        force: bool = False,
        now: datetime | None = None,
        organisation: str | None = None,
    ) -> IssuedCertificate:
        """Sign a new key for ``role``/``name``; write ``<name>.crt/.key`` and ``ca.crt`` to out.

        ``not_before``/``not_after`` override the window (tests use them for
        expired certificates); it never extends past the CA's own expiry.
        ``organisation`` becomes the subject's ``O=`` (the holder's hospital or company).
        """
        name = validate_name(role, name)
        org = None if organisation is None else validate_organisation(organisation)
        ips, dns = list(ips), list(dns)
        if role != "server" and (ips or dns):
            raise ConfigError("--ip and --dns apply to server certificates only")
        now = now or utcnow()
        start = not_before or now - CLOCK_SKEW
        end = min(not_after or now + timedelta(days=days), self.certificate.not_valid_after_utc)
        if days < 1 or end <= start:
            raise ConfigError("the certificate's validity window is empty (check --days)")
        if now > self.certificate.not_valid_after_utc:
            raise ConfigError("the CA certificate has expired: create a new CA")
        out = Path(out)
        stem = file_stem(name)
        cert_path, key_path, ca_copy = out / f"{stem}.crt", out / f"{stem}.key", out / CA_CERT_FILE
        ca_pem = self.certificate.public_bytes(serialization.Encoding.PEM)
        self._check_free(cert_path, key_path, ca_copy, ca_pem, force)

        key = generate_key(key_type)
        san = _san(role, name, ips, dns)
        cert = self._sign_leaf(role, name, key, start, end, san, organisation=org)
        entry = IndexEntry(cert.serial_number, role, name, start, end, now)
        index = self._load_index()
        index["certificates"].append(entry.to_json())
        self._save_index(index)
        out.mkdir(parents=True, exist_ok=True)
        write_file(key_path, key_pem(key), 0o600)
        write_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        write_file(ca_copy, ca_pem, 0o644)
        return IssuedCertificate(entry, cert, cert_path, key_path, ca_copy)

    @staticmethod
    def _check_free(cert: Path, key: Path, ca_copy: Path, ca_pem: bytes, force: bool) -> None:
        if force:
            return
        for path in (cert, key):
            if path.exists():
                raise ConfigError(f"{path} already exists; pass --force to replace it")
        if ca_copy.exists() and ca_copy.read_bytes() != ca_pem:
            raise ConfigError(f"{ca_copy} belongs to another CA; pick another --out folder")

    def _sign_leaf(
        self,
        role: Role,
        name: str,
        key: PrivateKey,
        start: datetime,
        end: datetime,
        san: Sequence[x509.GeneralName],
        *,
        organisation: str | None = None,
    ) -> x509.Certificate:
        is_ec = isinstance(key, ec.EllipticCurvePrivateKey)
        usage = _key_usage(digital_signature=True, key_agreement=is_ec, key_encipherment=not is_ec)
        eku = (
            ExtendedKeyUsageOID.SERVER_AUTH if role == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
        )
        ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
        if organisation:
            subject.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation))
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value), False
            )
            .sign(self._key(), hashes.SHA256())
        )

    # ------------------------------------------------------------------ revoking

    def entries(self) -> list[IndexEntry]:
        """Every certificate this CA issued, oldest first."""
        return [IndexEntry.from_json(raw) for raw in self._load_index()["certificates"]]

    def revoke(
        self,
        name: str,
        *,
        role: Role | None = None,
        serial: int | None = None,
        reason: str = "unspecified",
        now: datetime | None = None,
    ) -> list[IndexEntry]:
        """Revoke every unrevoked certificate of ``name`` (narrowed by role/serial); new CRL."""
        if reason not in REASONS:
            raise ConfigError(f"unknown reason {reason!r}: expected one of {', '.join(REASONS)}")
        entries = self.entries()
        matches = [
            e
            for e in entries
            if (e.name == name or (e.role == "server" and e.name == name.lower()))
            and (role is None or e.role == role)
            and (serial is None or e.serial == serial)
        ]
        if not matches:
            raise ConfigError(f"no certificate for {name!r} in this CA (see 'consortium ca list')")
        active = [e for e in matches if e.revoked_at is None]
        if not active:
            raise ConfigError(f"every certificate for {name!r} is already revoked")
        roles = sorted({e.role for e in active})
        if len(roles) > 1:
            raise ConfigError(f"{name!r} holds {' and '.join(roles)} certificates: pass --role")
        now = now or utcnow()
        key = self._key()  # fail before touching the index if we cannot sign the CRL
        revoked = {e.serial: replace(e, revoked_at=now, reason=reason) for e in active}
        index = self._load_index()
        index["certificates"] = [revoked.get(e.serial, e).to_json() for e in entries]
        self._save_index(index)
        self.write_crl(now=now, key=key)
        return list(revoked.values())

    def write_crl(
        self, *, now: datetime | None = None, days: int = CRL_DAYS, key: PrivateKey | None = None
    ) -> Path:
        """Sign and write ``crl.pem`` listing every revoked certificate; bump the CRL number."""
        now = now or utcnow()
        index = self._load_index()
        index["crl_number"] = int(index.get("crl_number", 0)) + 1
        ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now)
            .next_update(now + timedelta(days=days))
            .add_extension(x509.CRLNumber(index["crl_number"]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value), False
            )
        )
        for entry in (IndexEntry.from_json(raw) for raw in index["certificates"]):
            if entry.revoked_at is not None:
                builder = builder.add_revoked_certificate(_revoked(entry))
        crl = builder.sign(key or self._key(), hashes.SHA256())
        write_file(self.crl_path, crl.public_bytes(serialization.Encoding.PEM), 0o644)
        self._save_index(index)
        return self.crl_path

    # ------------------------------------------------------------------ storage

    def _key(self) -> PrivateKey:
        try:
            raw = self.key_path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(
                f"{self.key_path} is missing: this copy of the CA cannot sign"
            ) from None
        try:
            key = serialization.load_pem_private_key(raw, password=self._passphrase)
        except TypeError:
            raise ConfigError(
                f"{self.key_path} is encrypted: set CONSORTIUM_CA_PASSPHRASE"
                if self._passphrase is None
                else f"{self.key_path} is not encrypted, but a passphrase was given"
            ) from None
        except ValueError:
            raise ConfigError(f"cannot decrypt {self.key_path}: wrong passphrase?") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ConfigError(f"{self.key_path} is neither an EC nor an RSA key")
        return key

    def _load_index(self) -> dict[str, Any]:
        try:
            index = json.loads(self.index_path.read_text())
        except FileNotFoundError:
            return {"version": 1, "crl_number": 0, "certificates": []}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {self.index_path}: {exc}") from None
        if not isinstance(index, dict) or not isinstance(index.get("certificates"), list):
            raise ConfigError(f"{self.index_path} is not a Consortium CA index")
        return index

    def _save_index(self, index: dict[str, Any]) -> None:
        write_file(self.index_path, (json.dumps(index, indent=2) + "\n").encode(), 0o600)


def _key_usage(**flags: bool) -> x509.KeyUsage:
    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign")  # fmt: skip
    return x509.KeyUsage(
        **{n: flags.get(n, False) for n in names}, encipher_only=False, decipher_only=False
    )


def _san(role: Role, name: str, ips: list[str], dns: list[str]) -> list[x509.GeneralName]:
    san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity_uri(role, name))]
    if role != "server":
        return san
    hosts = [name, *(validate_name("server", d) for d in dns), *ips]
    for host in dict.fromkeys(hosts):
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if host in ips:
                raise ConfigError(f"--ip {host!r} is not an IP address") from None
            san.append(x509.DNSName(host))
    return san


def _revoked(entry: IndexEntry) -> x509.RevokedCertificate:
    assert entry.revoked_at is not None
    builder = (
        x509.RevokedCertificateBuilder()
        .serial_number(entry.serial)
        .revocation_date(entry.revoked_at)
    )
    if entry.reason and entry.reason != "unspecified":  # RFC 5280: omit rather than unspecified
        flag = x509.ReasonFlags[entry.reason.replace("-", "_")]
        builder = builder.add_extension(x509.CRLReason(flag), critical=False)
    return builder.build()
