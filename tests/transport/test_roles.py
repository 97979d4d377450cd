"""Coordinator roles and organisations in certificates: issued, read back, old ones still work."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.x509.oid import NameOID

from consortium.cli.main import main
from consortium.core.errors import ConfigError
from consortium.transport.ca import CertificateAuthority
from consortium.transport.credentials import load_client_credentials
from consortium.transport.identity import PeerIdentity, WrongRole, verify_peer
from consortium.transport.names import CONTROL_ROLES


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path_factory.mktemp("ca") / "ca")


def test_researcher_and_observer_certificates_carry_their_organisation(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    bob = ca.issue("researcher", "bob", tmp_path / "bob", organisation="St Mary")
    orgs = bob.certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert [a.value for a in orgs] == ["St Mary"]
    peer = verify_peer(bob.certificate, ca.certificate, roles=CONTROL_ROLES)
    assert (peer.role, peer.name, peer.organisation) == ("researcher", "bob", "St Mary")
    carol = ca.issue("observer", "carol", tmp_path / "carol")
    peer = verify_peer(carol.certificate, ca.certificate, roles=CONTROL_ROLES)
    assert (peer.role, peer.name, peer.organisation) == ("observer", "carol", "")
    creds = load_client_credentials(tmp_path / "bob", "bob")  # any client role loads
    assert creds.identity.organisation == "St Mary"


def test_a_certificate_without_organisation_still_works(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """Certificates issued before organisations existed have no O=: organisation ""."""
    old = ca.issue("admin", "alice", tmp_path / "alice")
    assert not old.certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert PeerIdentity.from_certificate(old.certificate).organisation == ""
    assert verify_peer(old.certificate, ca.certificate, roles=("admin",)).name == "alice"


def test_an_observer_is_not_a_node(ca: CertificateAuthority, tmp_path: Path) -> None:
    carol = ca.issue("observer", "watcher", tmp_path / "w")
    with pytest.raises(WrongRole, match="observer certificate 'watcher' is not accepted here"):
        verify_peer(carol.certificate, ca.certificate, roles=("node",))


@pytest.mark.parametrize("org", ["", "   ", "x" * 65, "tab\there"])
def test_a_bad_organisation_is_refused(ca: CertificateAuthority, tmp_path: Path, org: str) -> None:
    with pytest.raises(ConfigError, match="invalid organisation"):
        ca.issue("researcher", "dave", tmp_path / "dave", organisation=org)


def test_ca_issue_researcher_with_org(
    ca: CertificateAuthority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "erin"
    args = ["ca", "issue", "--dir", str(ca.directory), "--researcher", "erin",
            "--org", "St Mary", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert "issued researcher certificate 'erin' of 'St Mary'" in capsys.readouterr().out
    identity = PeerIdentity.from_certificate((out / "erin.crt").read_bytes())
    assert (identity.role, identity.organisation) == ("researcher", "St Mary")
    both = ["ca", "issue", "--dir", str(ca.directory), "--observer", "x", "--admin", "y"]
    assert main(both) == ConfigError.exit_code
    assert "exactly one of" in capsys.readouterr().err
