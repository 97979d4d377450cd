"""Identities and peer checks: real certificates, and real mutual-TLS handshakes with gRPC."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from consortium.core.errors import ConfigError, SecurityError
from consortium.transport.ca import CertificateAuthority
from consortium.transport.ca_index import IssuedCertificate
from consortium.transport.credentials import (
    Credentials,
    load_client_credentials,
    load_server_credentials,
)
from consortium.transport.identity import (
    CertificateExpired,
    CertificateRevoked,
    NotAllowed,
    PeerIdentity,
    UntrustedCertificate,
    WrongRole,
    check_certificate_lifetime,
    verify_peer,
)
from consortium.transport.peer_verifier import PeerVerifier, peer_certificate

NOW = datetime.now(UTC)
DAY = timedelta(days=1)


@dataclass
class Federation:
    ca: CertificateAuthority
    server: IssuedCertificate
    node: IssuedCertificate
    admin: IssuedCertificate
    expired: IssuedCertificate
    future: IssuedCertificate
    other_ca: CertificateAuthority
    impostor: IssuedCertificate  # "hospital-a" from another CA with the same CA name

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_path.read_bytes()


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    root = tmp_path_factory.mktemp("fed")
    ca = CertificateAuthority.init(root / "ca")
    other = CertificateAuthority.init(root / "other-ca")  # same default name, other key
    creds = root / "credentials"
    return Federation(
        ca=ca,
        server=ca.issue("server", "localhost", creds / "server", ips=["127.0.0.1"]),
        node=ca.issue("node", "hospital-a", creds / "hospital-a"),
        admin=ca.issue("admin", "alice", creds / "alice"),
        expired=ca.issue(
            "node", "old", creds / "old", not_before=NOW - 30 * DAY, not_after=NOW - DAY
        ),
        future=ca.issue("node", "early", creds / "early", not_before=NOW + DAY),
        other_ca=other,
        impostor=other.issue("node", "hospital-a", root / "impostor"),
    )


def pem(issued: IssuedCertificate) -> bytes:
    return issued.cert_path.read_bytes()


def craft(
    ca: CertificateAuthority,
    cn: str,
    uris: list[str],
    eku: x509.ObjectIdentifier = ExtendedKeyUsageOID.CLIENT_AUTH,
) -> x509.Certificate:
    """A certificate signed by ``ca``'s real key but shaped by hand (to test the checks)."""
    ca_key = serialization.load_pem_private_key(ca.key_path.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    )
    if uris:
        sans = [x509.UniformResourceIdentifier(u) for u in uris]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


# --------------------------------------------------------------------------- PeerIdentity


def test_identity_from_pem_and_der(fed: Federation) -> None:
    der = fed.node.certificate.public_bytes(serialization.Encoding.DER)
    for form in (pem(fed.node), pem(fed.node).decode(), der, fed.node.certificate):
        identity = PeerIdentity.from_certificate(form)
        assert (identity.role, identity.name) == ("node", "hospital-a")
        assert identity.serial == fed.node.entry.serial
        assert identity.not_after == fed.node.certificate.not_valid_after_utc
        assert identity.uri == "consortium://node/hospital-a"
    assert str(PeerIdentity.from_certificate(pem(fed.admin))).startswith("admin 'alice'")


@pytest.mark.parametrize(
    ("cn", "uris", "message"),
    [
        ("hospital-a", [], "not a Consortium identity"),
        ("hospital-a", ["https://example.org/x"], "not a Consortium identity"),
        ("x", ["consortium://node/x", "consortium://admin/x"], "found 2"),
        ("x", ["consortium://root/x"], "unknown role"),
        ("hospital-b", ["consortium://node/hospital-a"], "disagrees with its common name"),
        ("../x", ["consortium://node/../x"], "invalid node name"),
    ],
)
def test_identity_needs_one_consortium_uri_matching_the_cn(
    fed: Federation, cn: str, uris: list[str], message: str
) -> None:
    with pytest.raises(UntrustedCertificate, match=message):
        PeerIdentity.from_certificate(craft(fed.ca, cn, uris))


def test_garbage_is_not_a_certificate() -> None:
    with pytest.raises(UntrustedCertificate, match=r"not a valid X.509"):
        PeerIdentity.from_certificate(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        )
    with pytest.raises(UntrustedCertificate, match=r"not a valid X.509"):
        PeerIdentity.from_certificate(os.urandom(64))


# --------------------------------------------------------------------------- verify_peer


def test_verify_peer_accepts_nodes_and_admins(fed: Federation) -> None:
    crl = fed.ca.crl_path.read_bytes()
    node = verify_peer(pem(fed.node), fed.ca_pem, crl)
    assert (node.role, node.name) == ("node", "hospital-a")
    admin = verify_peer(pem(fed.admin), fed.ca_pem, crl, roles=("admin",))
    assert (admin.role, admin.name) == ("admin", "alice")
    server = verify_peer(pem(fed.server), fed.ca_pem, crl, roles=("server",))
    assert (server.role, server.name) == ("server", "localhost")


def test_another_ca_is_refused_even_with_the_same_names(fed: Federation) -> None:
    assert fed.other_ca.certificate.subject == fed.ca.certificate.subject
    with pytest.raises(UntrustedCertificate, match="not signed by this federation's CA"):
        verify_peer(pem(fed.impostor), fed.ca_pem)


def test_expired_and_not_yet_valid_are_refused(fed: Federation) -> None:
    with pytest.raises(CertificateExpired, match="'old' expired on"):
        verify_peer(pem(fed.expired), fed.ca_pem)
    with pytest.raises(CertificateExpired, match="'early' is not valid yet"):
        verify_peer(pem(fed.future), fed.ca_pem)
    assert verify_peer(pem(fed.future), fed.ca_pem, now=NOW + 2 * DAY).name == "early"


def test_an_expired_ca_is_refused(fed: Federation) -> None:
    after_ca = fed.ca.certificate.not_valid_after_utc + DAY
    fresh_node = craft(fed.ca, "n", ["consortium://node/n"])
    with pytest.raises(CertificateExpired):
        verify_peer(fresh_node, fed.ca_pem, now=after_ca)


def test_revoked_is_refused(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca")
    node = ca.issue("node", "leaky", tmp_path / "leaky")
    before = ca.crl_path.read_bytes()
    assert verify_peer(pem(node), ca.cert_path.read_bytes(), before).name == "leaky"
    ca.revoke("leaky", reason="key-compromise")
    with pytest.raises(CertificateRevoked, match=r"'leaky' .* was revoked on") as refused:
        verify_peer(pem(node), ca.cert_path.read_bytes(), ca.crl_path.read_bytes())
    assert refused.value.node == "leaky"  # the server stops waiting for that node at once


def test_a_refusal_names_the_node_only_for_our_own_node_certificates(fed: Federation) -> None:
    with pytest.raises(CertificateExpired) as expired:
        verify_peer(pem(fed.expired), fed.ca_pem)
    assert expired.value.node == "old"
    with pytest.raises(NotAllowed) as not_allowed:
        verify_peer(pem(fed.node), fed.ca_pem, allowed={"hospital-b"})
    assert not_allowed.value.node == "hospital-a"
    with pytest.raises(NotAllowed) as admin:  # an admin is not a node: nothing to take offline
        verify_peer(pem(fed.admin), fed.ca_pem, roles=("admin",), allowed=set())
    assert admin.value.node is None
    with pytest.raises(UntrustedCertificate) as impostor:  # not ours: its name means nothing
        verify_peer(pem(fed.impostor), fed.ca_pem)
    assert getattr(impostor.value, "node", None) is None


def test_a_crl_from_another_ca_is_refused(fed: Federation) -> None:
    foreign_crl = fed.other_ca.crl_path.read_bytes()
    with pytest.raises(SecurityError, match="revocation list is not signed"):
        verify_peer(pem(fed.node), fed.ca_pem, foreign_crl)


def test_wrong_role_is_refused(fed: Federation) -> None:
    with pytest.raises(WrongRole, match="server certificate 'localhost' is not accepted"):
        verify_peer(pem(fed.server), fed.ca_pem)  # a server cert used as a client
    with pytest.raises(WrongRole, match="expected admin"):
        verify_peer(pem(fed.node), fed.ca_pem, roles=("admin",))
    with pytest.raises(WrongRole, match="expected server"):
        verify_peer(pem(fed.admin), fed.ca_pem, roles=("server",))


def test_unknown_roles_are_a_config_error(fed: Federation) -> None:
    with pytest.raises(ConfigError, match="unknown role"):
        verify_peer(pem(fed.node), fed.ca_pem, roles=("nodes",))


def test_servers_named_by_ip_verify(fed: Federation, tmp_path: Path) -> None:
    issued = fed.ca.issue("server", "::1", tmp_path)
    assert issued.cert_path.name == "__1.crt"
    assert verify_peer(pem(issued), fed.ca_pem, roles=("server",)).name == "::1"
    assert load_server_credentials(tmp_path, "::1").identity.name == "::1"


def test_role_and_key_usage_must_agree(fed: Federation) -> None:
    """A node URI on a serverAuth certificate is not a node."""
    odd = craft(fed.ca, "n", ["consortium://node/n"], eku=ExtendedKeyUsageOID.SERVER_AUTH)
    with pytest.raises(WrongRole, match="lacks the clientAuth"):
        verify_peer(odd, fed.ca_pem)


def test_path_validation_rejects_malformed_leaves(fed: Federation) -> None:
    """Signed by the CA and well named, but without AKI/key usage: RFC 5280 says no."""
    bare = craft(fed.ca, "n", ["consortium://node/n"])
    with pytest.raises(UntrustedCertificate, match="failed validation"):
        verify_peer(bare, fed.ca_pem)


def test_allow_list(fed: Federation) -> None:
    assert verify_peer(pem(fed.node), fed.ca_pem, allowed={"hospital-a"}).name == "hospital-a"
    with pytest.raises(NotAllowed, match="'hospital-a' is not on this server's allow-list"):
        verify_peer(pem(fed.node), fed.ca_pem, allowed={"hospital-b"})


def test_security_errors_have_their_exit_code(fed: Federation) -> None:
    with pytest.raises(SecurityError) as info:
        verify_peer(pem(fed.impostor), fed.ca_pem)
    assert info.value.exit_code == SecurityError.exit_code


# --------------------------------------------------------------------------- own certificate


def test_lifetime_warns_within_30_days(fed: Federation, caplog: pytest.LogCaptureFixture) -> None:
    not_after = fed.node.certificate.not_valid_after_utc
    with caplog.at_level(logging.WARNING, logger="consortium.transport.identity"):
        left = check_certificate_lifetime(pem(fed.node), now=not_after - 10 * DAY, what="mine")
    assert left.days == 10
    assert "mine expires in 10 days" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="consortium.transport.identity"):
        check_certificate_lifetime(pem(fed.node), now=not_after - 100 * DAY)
    assert caplog.text == ""


def test_lifetime_refuses_expired_and_early(fed: Federation) -> None:
    with pytest.raises(CertificateExpired, match="mine expired"):
        check_certificate_lifetime(pem(fed.expired), what="mine")
    with pytest.raises(CertificateExpired, match="not valid yet"):
        check_certificate_lifetime(pem(fed.future))


# --------------------------------------------------------------------------- credentials


def test_load_server_credentials_from_a_folder(fed: Federation) -> None:
    creds = load_server_credentials(fed.server.cert_path.parent)
    assert creds.identity.role == "server" and creds.identity.name == "localhost"
    assert creds.certificate_chain == pem(fed.server)
    assert creds.private_key == fed.server.key_path.read_bytes()
    assert creds.root_certificates == fed.ca_pem
    assert b"PRIVATE KEY" not in repr(creds).encode()


def test_load_client_credentials_from_paths(fed: Federation) -> None:
    creds = load_client_credentials(
        cert=fed.admin.cert_path, key=fed.admin.key_path, ca=fed.ca.cert_path, role="admin"
    )
    assert creds.identity.name == "alice"


def test_credentials_pick_a_name_when_a_folder_holds_several(
    fed: Federation, tmp_path: Path
) -> None:
    for issued in (fed.node, fed.admin):
        for path in (issued.cert_path, issued.key_path, issued.ca_path):
            (tmp_path / path.name).write_bytes(path.read_bytes())
    with pytest.raises(ConfigError, match=r"expected one certificate .*found: alice, hospital-a"):
        load_client_credentials(tmp_path)
    assert load_client_credentials(tmp_path, "alice").identity.role == "admin"


def test_credentials_refuse_wrong_role(fed: Federation) -> None:
    with pytest.raises(WrongRole):
        load_server_credentials(fed.node.cert_path.parent)
    with pytest.raises(WrongRole):
        load_client_credentials(fed.server.cert_path.parent)
    with pytest.raises(WrongRole):
        load_client_credentials(fed.admin.cert_path.parent, role="node")


def test_credentials_refuse_mismatched_files(fed: Federation, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not belong to certificate"):
        load_client_credentials(
            cert=fed.node.cert_path, key=fed.admin.key_path, ca=fed.ca.cert_path
        )
    with pytest.raises(UntrustedCertificate, match="not signed by this federation's CA"):
        load_client_credentials(
            cert=fed.impostor.cert_path, key=fed.impostor.key_path, ca=fed.ca.cert_path
        )
    with pytest.raises(ConfigError, match="no such file"):
        load_client_credentials(tmp_path, "nobody")
    with pytest.raises(ConfigError, match="does not exist"):
        load_client_credentials(tmp_path / "missing")
    with pytest.raises(ConfigError, match="give a credentials folder"):
        load_client_credentials(cert=fed.node.cert_path)


def test_credentials_refuse_an_expired_own_certificate(fed: Federation) -> None:
    with pytest.raises(CertificateExpired, match="'old' expired"):
        load_client_credentials(fed.expired.cert_path.parent)


def test_credentials_warn_when_their_certificate_ends_soon(
    fed: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    soon = fed.node.certificate.not_valid_after_utc - 5 * DAY
    with caplog.at_level(logging.WARNING, logger="consortium.transport.identity"):
        load_client_credentials(fed.node.cert_path.parent, now=soon)
    assert "this node's certificate" in caplog.text and "expires in 5 days" in caplog.text


# --------------------------------------------------------------------------- PeerVerifier


def test_verifier_picks_up_revocations_without_restart(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca")
    node = ca.issue("node", "hospital-x", tmp_path / "x")
    verifier = PeerVerifier.from_ca_directory(ca.directory)
    assert verifier.verify(pem(node)).name == "hospital-x"
    ca.revoke("hospital-x")
    with pytest.raises(CertificateRevoked):
        verifier.verify(pem(node))


def test_verifier_fails_closed_without_a_good_crl(fed: Federation, tmp_path: Path) -> None:
    crl = tmp_path / "crl.pem"
    crl.write_bytes(fed.ca.crl_path.read_bytes())
    verifier = PeerVerifier(fed.ca.cert_path, crl)
    assert verifier.verify(pem(fed.node)).name == "hospital-a"
    crl.unlink()
    with pytest.raises(SecurityError, match="missing"):
        verifier.verify(pem(fed.node))
    crl.write_bytes(fed.other_ca.crl_path.read_bytes())
    with pytest.raises(SecurityError, match="not signed by this federation's CA"):
        verifier.verify(pem(fed.node))
    with pytest.raises(SecurityError, match="not signed"):
        PeerVerifier(str(fed.ca.cert_path), crl)


def test_verifier_warns_about_a_stale_crl(
    fed: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    # the certificate was issued when the fixture ran, minutes after NOW (set when the
    # module was collected, which outgrows CLOCK_SKEW in a long suite): start from then
    start = datetime.now(UTC)
    clock = [start]
    verifier = PeerVerifier(fed.ca.cert_path, fed.ca.crl_path, clock=lambda: clock[0])
    with caplog.at_level(logging.WARNING, logger="consortium.transport.identity"):
        verifier.verify(pem(fed.node))
        assert "stale" not in caplog.text
        clock[0] = start + timedelta(days=200)  # past the CRL's next update, in the CA's life
        for _ in range(3):
            assert verifier.verify(pem(fed.node)).name == "hospital-a"  # still applied
    assert caplog.text.count("is stale") == 1


def test_verifier_roles_and_allow_list(fed: Federation) -> None:
    nodes_only = PeerVerifier(fed.ca_pem, roles=("node",), allowed={"hospital-a"})
    assert nodes_only.verify(pem(fed.node)).name == "hospital-a"
    with pytest.raises(WrongRole):
        nodes_only.verify(pem(fed.admin))
    assert nodes_only.verify(pem(fed.admin), roles=("admin",), allowed={"alice"}).name == "alice"


def test_auth_context_without_a_certificate() -> None:
    with pytest.raises(UntrustedCertificate, match="no client certificate"):
        peer_certificate({"transport_security_type": [b"ssl"]})


# --------------------------------------------------------------------------- real mTLS


SERVICE, METHOD = "consortium.test.Whoami", "Ask"


@dataclass
class TlsServer:
    port: int
    seen: list[dict[str, Any]]


@pytest.fixture(scope="module")
def tls_server(fed: Federation) -> Iterator[TlsServer]:
    """A tiny generic-handler gRPC server requiring client certificates from the CA."""
    verifier = PeerVerifier.from_ca_directory(fed.ca.directory)
    seen: list[dict[str, Any]] = []

    def ask(request: bytes, context: grpc.ServicerContext) -> bytes:
        auth = context.auth_context()
        seen.append(dict(auth))
        try:
            identity = verifier.verify_auth_context(auth)
        except SecurityError as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        return f"{identity.role}/{identity.name}".encode()

    creds = load_server_credentials(fed.server.cert_path.parent)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(ask)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port(
        "127.0.0.1:0",
        grpc.ssl_server_credentials(
            [(creds.private_key, creds.certificate_chain)],
            root_certificates=creds.root_certificates,
            require_client_auth=True,
        ),
    )
    server.start()
    yield TlsServer(port, seen)
    server.stop(grace=None)


def channel_credentials(creds: Credentials) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=creds.root_certificates,
        private_key=creds.private_key,
        certificate_chain=creds.certificate_chain,
    )


def call(channel: grpc.Channel) -> bytes:
    with channel:
        stub = channel.unary_unary(f"/{SERVICE}/{METHOD}")
        reply: bytes = stub(b"", timeout=10)
        return reply


def raw_files(issued: IssuedCertificate, ca_pem: bytes) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca_pem,
        private_key=issued.key_path.read_bytes(),
        certificate_chain=issued.cert_path.read_bytes(),
    )


def test_mtls_node_is_seen_with_its_identity(fed: Federation, tls_server: TlsServer) -> None:
    creds = load_client_credentials(fed.node.cert_path.parent)
    reply = call(grpc.secure_channel(f"127.0.0.1:{tls_server.port}", channel_credentials(creds)))
    assert reply == b"node/hospital-a"
    auth = tls_server.seen[-1]
    assert auth["transport_security_type"] == [b"ssl"]
    assert auth["x509_common_name"] == [b"hospital-a"]
    assert PeerIdentity.from_certificate(auth["x509_pem_cert"][0]).name == "hospital-a"


def test_mtls_admin_by_host_name(fed: Federation, tls_server: TlsServer) -> None:
    creds = load_client_credentials(fed.admin.cert_path.parent, role="admin")
    target = f"localhost:{tls_server.port}"
    assert call(grpc.secure_channel(target, channel_credentials(creds))) == b"admin/alice"


def assert_refused(channel: grpc.Channel, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call(channel)
    assert info.value.code() == code, info.value
    return str(info.value.details())


def assert_handshake_refused(server: TlsServer, channel: grpc.Channel) -> None:
    """The TLS handshake fails: the call never reaches the handler."""
    before = len(server.seen)
    assert_refused(channel, grpc.StatusCode.UNAVAILABLE)
    assert len(server.seen) == before


def test_mtls_refuses_a_client_from_another_ca(fed: Federation, tls_server: TlsServer) -> None:
    impostor = raw_files(fed.impostor, fed.ca_pem)  # trusts our server, but its cert is foreign
    assert_handshake_refused(
        tls_server, grpc.secure_channel(f"127.0.0.1:{tls_server.port}", impostor)
    )


def test_mtls_refuses_a_client_without_a_certificate(
    fed: Federation, tls_server: TlsServer
) -> None:
    no_cert = grpc.ssl_channel_credentials(root_certificates=fed.ca_pem)
    assert_handshake_refused(
        tls_server, grpc.secure_channel(f"127.0.0.1:{tls_server.port}", no_cert)
    )


def test_mtls_refuses_plain_text(tls_server: TlsServer) -> None:
    assert_handshake_refused(tls_server, grpc.insecure_channel(f"127.0.0.1:{tls_server.port}"))


def test_mtls_refuses_an_expired_client_certificate(fed: Federation, tls_server: TlsServer) -> None:
    expired = raw_files(fed.expired, fed.ca_pem)
    assert_handshake_refused(
        tls_server, grpc.secure_channel(f"127.0.0.1:{tls_server.port}", expired)
    )


def test_client_refuses_a_server_from_another_ca(fed: Federation, tls_server: TlsServer) -> None:
    trusting_other = raw_files(fed.node, fed.other_ca.cert_path.read_bytes())
    assert_handshake_refused(
        tls_server, grpc.secure_channel(f"127.0.0.1:{tls_server.port}", trusting_other)
    )


def test_client_refuses_a_server_certificate_for_another_host(
    fed: Federation, tls_server: TlsServer
) -> None:
    creds = channel_credentials(load_client_credentials(fed.node.cert_path.parent))
    options = [("grpc.ssl_target_name_override", "agg.example.org")]
    assert_handshake_refused(
        tls_server, grpc.secure_channel(f"127.0.0.1:{tls_server.port}", creds, options=options)
    )


def test_mtls_revoked_node_is_refused_at_its_next_connection(
    fed: Federation, tls_server: TlsServer
) -> None:
    node = fed.ca.issue("node", "hospital-r", fed.node.cert_path.parent.parent / "hospital-r")
    target = f"127.0.0.1:{tls_server.port}"
    creds = raw_files(node, fed.ca_pem)
    assert call(grpc.secure_channel(target, creds)) == b"node/hospital-r"
    fed.ca.revoke("hospital-r")
    details = assert_refused(grpc.secure_channel(target, creds), grpc.StatusCode.UNAUTHENTICATED)
    assert "revoked" in details
