"""The federation CA: real certificates and CRLs, checked field by field."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from consortium.core.errors import ConfigError
from consortium.transport.ca import CertificateAuthority
from consortium.transport.ca_index import IssuedCertificate

NOW = datetime.now(UTC)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def ext(
    cert: x509.Certificate, kind: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


def read_crl(ca: CertificateAuthority) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(ca.crl_path.read_bytes())


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    """One CA for the tests that only issue (issuing never changes what others see)."""
    return CertificateAuthority.init(tmp_path_factory.mktemp("shared") / "ca", name="Test CA")


@pytest.fixture
def fresh(tmp_path: Path) -> CertificateAuthority:
    """A CA of its own, for tests that revoke or replace."""
    return CertificateAuthority.init(tmp_path / "ca")


@pytest.fixture(scope="module")
def node(
    shared: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> IssuedCertificate:
    return shared.issue("node", "hospital-a", tmp_path_factory.mktemp("node"))


# --------------------------------------------------------------------------- init


def test_init_writes_a_proper_ca(shared: CertificateAuthority) -> None:
    folder = shared.directory
    assert sorted(p.name for p in folder.iterdir()) == ["ca.crt", "ca.key", "crl.pem", "index.json"]
    assert mode(shared.key_path) == 0o600
    assert mode(folder) == 0o700
    cert = x509.load_pem_x509_certificate(shared.cert_path.read_bytes())
    cert.verify_directly_issued_by(cert)  # self-signed
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Test CA"
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value == x509.BasicConstraints(ca=True, path_length=0)
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical
    assert isinstance(ku.value, x509.KeyUsage)
    assert ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    ski = ext(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.not_valid_after_utc - NOW > timedelta(days=3640)


def test_init_writes_an_empty_signed_crl_and_index(fresh: CertificateAuthority) -> None:
    crl = read_crl(fresh)
    assert crl.is_signature_valid(fresh.certificate.public_key())  # type: ignore[arg-type]
    assert len(crl) == 0
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
    index = json.loads(fresh.index_path.read_text())
    assert index == {"version": 1, "crl_number": 1, "certificates": []}
    assert fresh.entries() == []


def test_init_refuses_to_overwrite_unless_forced(fresh: CertificateAuthority) -> None:
    before = fresh.cert_path.read_bytes()
    with pytest.raises(ConfigError, match=r"already exists.*--force"):
        CertificateAuthority.init(fresh.directory)
    assert fresh.cert_path.read_bytes() == before
    replaced = CertificateAuthority.init(fresh.directory, force=True)
    assert replaced.cert_path.read_bytes() != before


@pytest.mark.parametrize(("kwargs", "message"), [({"days": 0}, "days"), ({"name": ""}, "CA name")])
def test_init_validates_its_options(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        CertificateAuthority.init(tmp_path / "ca", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "ca").exists()


def test_load_needs_an_existing_ca(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="consortium ca init"):
        CertificateAuthority.load(tmp_path)


# --------------------------------------------------------------------------- issue


def test_node_certificate_fields(shared: CertificateAuthority, node: IssuedCertificate) -> None:
    cert = x509.load_pem_x509_certificate(node.cert_path.read_bytes())
    cert.verify_directly_issued_by(shared.certificate)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hospital-a"
    assert cert.issuer == shared.certificate.subject
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca  # type: ignore[attr-defined]
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical
    assert isinstance(ku.value, x509.KeyUsage)
    assert ku.value.digital_signature and ku.value.key_agreement
    assert not ku.value.key_encipherment and not ku.value.key_cert_sign
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # type: ignore[call-overload]
    san = ext(cert, x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier("consortium://node/hospital-a")]  # type: ignore[call-overload]
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    ca_ski = ext(shared.certificate, x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest  # type: ignore[attr-defined]
    assert ext(cert, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(
        cert.public_key()
    )
    assert cert.serial_number.bit_length() > 64  # random, not a guessable counter


def test_issue_writes_key_0600_cert_and_ca_copy(
    shared: CertificateAuthority, node: IssuedCertificate
) -> None:
    folder = node.cert_path.parent
    assert sorted(p.name for p in folder.iterdir()) == [
        "ca.crt",
        "hospital-a.crt",
        "hospital-a.key",
    ]
    assert mode(node.key_path) == 0o600
    assert mode(node.cert_path) == 0o644
    assert node.ca_path.read_bytes() == shared.cert_path.read_bytes()
    key = serialization.load_pem_private_key(node.key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == node.certificate.public_key()


def test_key_is_0600_whatever_the_umask(fresh: CertificateAuthority, tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        issued = fresh.issue("node", "open-umask", tmp_path / "out")
    finally:
        os.umask(old)
    assert mode(issued.key_path) == 0o600
    assert mode(issued.cert_path) == 0o644


def test_issue_records_the_certificate_in_the_index(shared: CertificateAuthority) -> None:
    node = next(e for e in shared.entries() if e.name == "hospital-a")
    assert node.role == "node"
    assert node.status() == "valid"
    assert node.revoked_at is None


def test_admin_certificate_is_a_client_certificate(
    shared: CertificateAuthority, tmp_path: Path
) -> None:
    cert = shared.issue("admin", "alice", tmp_path).certificate
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # type: ignore[call-overload]
    san = ext(cert, x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier("consortium://admin/alice")]  # type: ignore[call-overload]


def test_server_certificate_names_its_hosts(shared: CertificateAuthority, tmp_path: Path) -> None:
    issued = shared.issue(
        "server", "Agg.Example.org", tmp_path, ips=["127.0.0.1", "::1"], dns=["localhost"]
    )
    assert issued.cert_path.name == "agg.example.org.crt"
    cert = issued.certificate
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]  # type: ignore[call-overload]
    san = ext(cert, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["agg.example.org", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "consortium://server/agg.example.org"
    ]


def test_server_named_by_ip(shared: CertificateAuthority, tmp_path: Path) -> None:
    issued = shared.issue("server", "10.0.0.5", tmp_path)
    san = ext(issued.certificate, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert san.get_values_for_type(x509.DNSName) == []


def test_rsa_keys_get_key_encipherment(shared: CertificateAuthority, tmp_path: Path) -> None:
    issued = shared.issue("node", "rsa-node", tmp_path, key_type="rsa")
    assert isinstance(issued.certificate.public_key(), rsa.RSAPublicKey)
    ku = ext(issued.certificate, x509.KeyUsage).value
    assert isinstance(ku, x509.KeyUsage)
    assert ku.digital_signature and ku.key_encipherment and not ku.key_agreement


@pytest.mark.parametrize(
    ("role", "name"),
    [
        ("node", "../evil"),
        ("node", "a/b"),
        ("node", "a\\b"),
        ("node", ""),
        ("node", "-dash"),
        ("node", "has space"),
        ("node", "x" * 65),
        ("node", "a..b"),
        ("node", "ca"),
        ("admin", "CA"),
        ("node", "naïve"),
        ("server", "bad_host"),
        ("server", "-x.example.org"),
        ("server", "ca"),
    ],
)
def test_names_are_validated(
    shared: CertificateAuthority, tmp_path: Path, role: str, name: str
) -> None:
    with pytest.raises(ConfigError, match=r"invalid|reserved"):
        shared.issue(role, name, tmp_path / "out")  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def test_ip_and_dns_only_for_servers(shared: CertificateAuthority, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="server certificates only"):
        shared.issue("node", "n1", tmp_path, ips=["127.0.0.1"])
    with pytest.raises(ConfigError, match="not an IP address"):
        shared.issue("server", "localhost", tmp_path, ips=["localhost"])


def test_validity_window_overrides(shared: CertificateAuthority, tmp_path: Path) -> None:
    start, end = NOW - timedelta(days=10), NOW - timedelta(days=1)
    issued = shared.issue("node", "expired", tmp_path, not_before=start, not_after=end)
    cert = issued.certificate
    assert cert.not_valid_before_utc == start.replace(microsecond=0)
    assert cert.not_valid_after_utc == end.replace(microsecond=0)
    assert next(e for e in shared.entries() if e.name == "expired").status() == "expired"


def test_default_window_starts_just_before_now_and_lasts_days(
    shared: CertificateAuthority, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    cert = shared.issue("node", "short", tmp_path, days=7).certificate
    assert timedelta(0) < now - cert.not_valid_before_utc < timedelta(minutes=6)
    assert abs(cert.not_valid_after_utc - now - timedelta(days=7)) < timedelta(minutes=1)


def test_certificates_never_outlive_the_ca(fresh: CertificateAuthority, tmp_path: Path) -> None:
    short = CertificateAuthority.init(tmp_path / "short", days=10)
    cert = short.issue("node", "n", tmp_path / "n", days=365).certificate
    assert cert.not_valid_after_utc == short.certificate.not_valid_after_utc


def test_empty_window_is_refused(shared: CertificateAuthority, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="validity window is empty"):
        shared.issue("node", "n", tmp_path, not_before=NOW, not_after=NOW - timedelta(days=1))


def test_issue_refuses_to_overwrite_unless_forced(
    fresh: CertificateAuthority, tmp_path: Path
) -> None:
    first = fresh.issue("node", "hospital-b", tmp_path)
    with pytest.raises(ConfigError, match=r"already exists.*--force"):
        fresh.issue("node", "hospital-b", tmp_path)
    second = fresh.issue("node", "hospital-b", tmp_path, force=True)
    assert second.entry.serial != first.entry.serial
    assert [e.name for e in fresh.entries()] == ["hospital-b", "hospital-b"]


def test_issue_will_not_mix_cas_in_one_folder(fresh: CertificateAuthority, tmp_path: Path) -> None:
    other = CertificateAuthority.init(tmp_path / "other")
    other.issue("node", "x", tmp_path / "out")
    with pytest.raises(ConfigError, match="belongs to another CA"):
        fresh.issue("node", "y", tmp_path / "out")


# --------------------------------------------------------------------------- revoke


def test_revoke_writes_a_signed_crl_listing_the_serial(
    fresh: CertificateAuthority, tmp_path: Path
) -> None:
    bad = fresh.issue("node", "hospital-c", tmp_path / "c")
    good = fresh.issue("node", "hospital-d", tmp_path / "d")
    revoked = fresh.revoke("hospital-c", reason="key-compromise")
    assert [e.serial for e in revoked] == [bad.entry.serial]
    crl = read_crl(fresh)
    assert crl.is_signature_valid(fresh.certificate.public_key())  # type: ignore[arg-type]
    assert crl.issuer == fresh.certificate.subject
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(fresh.certificate, x509.SubjectKeyIdentifier).value.digest  # type: ignore[attr-defined]
    entry = crl.get_revoked_certificate_by_serial_number(bad.entry.serial)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.key_compromise
    assert crl.get_revoked_certificate_by_serial_number(good.entry.serial) is None
    statuses = {e.name: e.status() for e in fresh.entries()}
    assert statuses == {"hospital-c": "revoked", "hospital-d": "valid"}


def test_each_revocation_regenerates_the_crl(fresh: CertificateAuthority, tmp_path: Path) -> None:
    serials = [fresh.issue("node", f"n{i}", tmp_path / str(i)).entry.serial for i in range(3)]
    fresh.revoke("n0")
    fresh.revoke("n2")
    crl = read_crl(fresh)
    assert sorted(r.serial_number for r in crl) == sorted([serials[0], serials[2]])
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 3
    unspecified = crl.get_revoked_certificate_by_serial_number(serials[0])
    assert unspecified is not None and len(unspecified.extensions) == 0  # RFC 5280: no reason


def test_revoke_refusals(fresh: CertificateAuthority, tmp_path: Path) -> None:
    fresh.issue("node", "dual", tmp_path / "n")
    fresh.issue("admin", "dual", tmp_path / "a")
    with pytest.raises(ConfigError, match="no certificate for 'ghost'"):
        fresh.revoke("ghost")
    with pytest.raises(ConfigError, match=r"admin and node.*--role"):
        fresh.revoke("dual")
    with pytest.raises(ConfigError, match="unknown reason"):
        fresh.revoke("dual", role="node", reason="bored")
    assert [e.role for e in fresh.revoke("dual", role="node")] == ["node"]
    with pytest.raises(ConfigError, match="already revoked"):
        fresh.revoke("dual", role="node")


def test_revoke_covers_renewed_certificates_or_one_serial(
    fresh: CertificateAuthority, tmp_path: Path
) -> None:
    first = fresh.issue("node", "renewed", tmp_path)
    second = fresh.issue("node", "renewed", tmp_path, force=True)
    third = fresh.issue("node", "renewed", tmp_path, force=True)
    assert [e.serial for e in fresh.revoke("renewed", serial=first.entry.serial)] == [
        first.entry.serial
    ]
    assert {e.serial for e in fresh.revoke("renewed")} == {second.entry.serial, third.entry.serial}


def test_revoke_finds_servers_case_insensitively(
    fresh: CertificateAuthority, tmp_path: Path
) -> None:
    fresh.issue("server", "agg.example.org", tmp_path)
    assert [e.name for e in fresh.revoke("AGG.example.org")] == ["agg.example.org"]


def test_write_crl_refreshes_next_update(fresh: CertificateAuthority) -> None:
    later = NOW + timedelta(days=60)
    fresh.write_crl(now=later, days=30)
    crl = read_crl(fresh)
    assert crl.next_update_utc == (later + timedelta(days=30)).replace(microsecond=0)


def test_openssl_agrees(fresh: CertificateAuthority, tmp_path: Path) -> None:
    """An independent implementation accepts the chain and honours the CRL."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl binary")
    good = fresh.issue("node", "good", tmp_path / "g")
    bad = fresh.issue("node", "bad", tmp_path / "b")
    fresh.revoke("bad")
    base = ["openssl", "verify", "-CAfile", str(fresh.cert_path), "-crl_check"]
    base += ["-CRLfile", str(fresh.crl_path), "-purpose", "sslclient"]
    ok = subprocess.run([*base, str(good.cert_path)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    refused = subprocess.run([*base, str(bad.cert_path)], capture_output=True, text=True)
    assert refused.returncode != 0
    assert "revoked" in refused.stdout + refused.stderr


# --------------------------------------------------------------------------- passphrase


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[CertificateAuthority]:
    yield CertificateAuthority.init(tmp_path / "locked", passphrase=b"correct horse")


def test_passphrase_encrypts_the_ca_key(locked: CertificateAuthority, tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(locked.key_path.read_bytes(), password=None)
    unlocked = CertificateAuthority.load(locked.directory, passphrase=b"correct horse")
    assert unlocked.issue("node", "n", tmp_path / "n").entry.name == "n"


def test_signing_needs_the_right_passphrase(locked: CertificateAuthority, tmp_path: Path) -> None:
    nopass = CertificateAuthority.load(locked.directory)
    assert nopass.entries() == []  # reading needs no key
    with pytest.raises(ConfigError, match="CONSORTIUM_CA_PASSPHRASE"):
        nopass.issue("node", "n", tmp_path / "n")
    with pytest.raises(ConfigError, match="wrong passphrase"):
        CertificateAuthority.load(locked.directory, passphrase=b"nope").write_crl()


def test_a_copy_without_the_key_cannot_sign(fresh: CertificateAuthority, tmp_path: Path) -> None:
    fresh.key_path.unlink()
    with pytest.raises(ConfigError, match="cannot sign"):
        fresh.issue("node", "n", tmp_path)
