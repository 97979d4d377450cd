"""SecAgg+ identity keys in deployment: node certificates sign advertisements, peers check
them against their own CA (chain, name, validity, revocation), and the node's process
signs for its app process only its own advertisements for that process's run."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import secagg_harness as h
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from secagg_harness import fixed_keyring
from secagg_harness import run as secagg_run

from consortium.core.errors import ConfigError, SecurityError
from consortium.core.message import TRAIN, Content, Message
from consortium.node.identity_link import IdentityService
from consortium.privacy.secagg import protocol as p
from consortium.privacy.secagg.certified import (
    DOMAIN,
    CertificateSigner,
    CertificateVerifier,
    open_envelope,
    seal_envelope,
)
from consortium.privacy.secagg.hosted import HostedIdentity
from consortium.sandbox.channel import Frame
from consortium.transport.ca import CertificateAuthority
from consortium.transport.peer_verifier import PeerVerifier


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.init(root / "ca")
    for name in ("a", "b", "c", "0", "1", "2", "3"):
        ca.issue("node", name, root / name)
    ca.issue("node", "rsa", root / "rsa", key_type="rsa")
    ca.issue("admin", "alice", root / "alice")
    ca.issue("node", "old", root / "old", not_after=datetime.now(UTC) + timedelta(days=1))
    CertificateAuthority.init(root / "other").issue("node", "a", root / "forged")
    return root


def signer(pki: Path, name: str, folder: str | None = None) -> CertificateSigner:
    where = pki / (folder or name)
    cert = (where / f"{name}.crt").read_bytes()
    return CertificateSigner((where / f"{name}.key").read_bytes(), cert, name)


def verifier(pki: Path, **options: object) -> CertificateVerifier:
    return CertificateVerifier(PeerVerifier(pki / "ca" / "ca.crt", **options))  # type: ignore[arg-type]


def advert(node: str, run: str = "run-1") -> bytes:
    return p.advertisement(
        run_id=run, epoch=1, node_id=node, enc_key=bytes(32), mask_key=bytes(range(32)),
        participants=["a", "b", "c"], graph_seed=5, params={"clip": 1.0},
    )  # fmt: skip


@pytest.mark.parametrize("name", ["a", "rsa"])
def test_a_certificate_signature_verifies_with_the_ca_and_binds_the_message(
    pki: Path, name: str
) -> None:
    envelope = signer(pki, name).sign(name, advert(name))
    check = verifier(pki)
    assert check.verify(name, advert(name), envelope)
    assert not check.verify(name, advert(name, run="run-2"), envelope)  # another view
    cert, raw = open_envelope(envelope)
    assert cert.subject.rfc4514_string().startswith("CN=" + name)
    if name == "a":  # domain separation: the raw key signed DOMAIN + advertisement, not it
        public = cert.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(raw, DOMAIN + advert(name), ec.ECDSA(hashes.SHA256()))
        with pytest.raises(InvalidSignature):
            public.verify(raw, advert(name), ec.ECDSA(hashes.SHA256()))


def test_a_server_cannot_pass_off_another_certificate_or_a_forged_one(pki: Path) -> None:
    check = verifier(pki)
    # b's genuine signature of b's keys, relayed as a's: the certificate names b
    b_envelope = signer(pki, "b").sign("b", advert("b"))
    with pytest.raises(SecurityError, match="signed with the certificate of 'b'"):
        check.check("a", advert("b"), b_envelope)
    # a certificate for "a" from another CA (the server's own, say)
    forged = signer(pki, "a", folder="forged").sign("a", advert("a"))
    with pytest.raises(SecurityError, match="not signed by this federation's CA"):
        check.check("a", advert("a"), forged)
    # a coordinator's certificate is not a node's
    alice = signer(pki, "alice").sign("alice", advert("alice"))
    with pytest.raises(SecurityError, match="not accepted here"):
        check.check("alice", advert("alice"), alice)
    # a's certificate, with b's signature bytes
    _, b_raw = open_envelope(b_envelope)
    a_cert, _ = open_envelope(signer(pki, "a").sign("a", advert("a")))
    spliced = seal_envelope(a_cert.public_bytes(Encoding.DER), b_raw)
    with pytest.raises(SecurityError, match="does not verify"):
        check.check("a", advert("a"), spliced)
    for junk in (b"", b"\x00", b"\x00\x05abc", bytes(100)):
        assert not check.verify("a", advert("a"), junk)


def test_expired_and_revoked_certificates_are_refused(pki: Path, tmp_path: Path) -> None:
    envelope = signer(pki, "old").sign("old", advert("old"))
    assert verifier(pki).verify("old", advert("old"), envelope)
    later = verifier(pki, clock=lambda: datetime.now(UTC) + timedelta(days=3))
    with pytest.raises(SecurityError, match="expired"):
        later.check("old", advert("old"), envelope)
    # revocation: a copy of the CA (the module's CA stays unrevoked), its CRL given to the peer
    ca_dir = tmp_path / "ca"
    shutil.copytree(pki / "ca", ca_dir)
    CertificateAuthority.load(ca_dir).revoke("c")
    check = CertificateVerifier(PeerVerifier(ca_dir / "ca.crt", ca_dir / "crl.pem"))
    c_envelope = signer(pki, "c").sign("c", advert("c"))
    with pytest.raises(SecurityError, match="revoked"):
        check.check("c", advert("c"), c_envelope)
    assert check.verify("a", advert("a"), signer(pki, "a").sign("a", advert("a")))


def test_the_signer_signs_only_its_own_advertisements(pki: Path) -> None:
    a = signer(pki, "a")
    with pytest.raises(SecurityError, match="cannot sign for 'b'"):
        a.sign("b", advert("b"))
    with pytest.raises(SecurityError, match="advertisement for node 'b'"):
        a.sign("a", advert("b"))
    for other in (b"arbitrary bytes", b'{"protocol": "tls"}', b" " * 64 + b"TLS 1.3, client"):
        with pytest.raises(SecurityError, match="advertisements only"):
            a.sign("a", other)
    with pytest.raises(ConfigError, match="does not belong"):
        CertificateSigner(
            (pki / "b" / "b.key").read_bytes(), (pki / "a" / "a.crt").read_bytes(), "a"
        )


def test_the_node_service_signs_for_its_run_only_and_verifies(pki: Path) -> None:
    folder = pki / "a"
    service = IdentityService.from_credentials(
        (folder / "a.key").read_bytes(), (folder / "a.crt").read_bytes(),
        (folder / "ca.crt").read_bytes(), "a", folder,
    )  # fmt: skip
    kind, _, envelope = service.answer(Frame("sign", {"node": "a"}, advert("a")), "run-1")
    assert kind == "signed" and verifier(pki).verify("a", advert("a"), envelope)
    kind, header, _ = service.answer(Frame("sign", {"node": "a"}, advert("a")), "run-2")
    assert kind == "refused" and "another run" in header["reason"]
    kind, header, _ = service.answer(Frame("sign", {}, advert("a")), "run-1")
    assert kind == "refused" and "names no node" in header["reason"]
    b_envelope = signer(pki, "b").sign("b", advert("b"))
    request = {"node": "b", "size": len(advert("b"))}
    assert service.answer(Frame("verify", request, advert("b") + b_envelope), "run-1") == (
        "verified", {"valid": True}, b"",
    )  # fmt: skip
    request = {"node": "c", "size": len(advert("b"))}
    assert service.answer(Frame("verify", request, advert("b") + b_envelope), "run-1") == (
        "verified", {"valid": False}, b"",
    )  # fmt: skip
    kind, _, _ = service.answer(Frame("verify", {"node": "b", "size": -1}, b"x"), "run-1")
    assert kind == "refused"


class Certificates:
    """Every harness node's certificate identity at once (nodes "0".."3")."""

    def __init__(self, pki: Path) -> None:
        self.signers = {n: signer(pki, n) for n in ("0", "1", "2", "3")}
        self.check = verifier(pki)

    def sign(self, node_id: str, message: bytes) -> bytes:
        return self.signers[node_id].sign(node_id, message)

    def verify(self, node_id: str, message: bytes, signature: bytes) -> bool:
        return self.check.verify(node_id, message, signature)


def test_a_secagg_round_with_certificate_identities_sums_right(pki: Path) -> None:
    """Each node signs with its certificate key and checks the others against the CA; a
    server relaying node 1's keys with node 2's certificate and signature is caught."""
    ids = Certificates(pki)
    run = secagg_run(4, 30, keyring=ids, verify=ids)  # type: ignore[arg-type]
    start = h.model(30)
    mean = np.concatenate([(run.arrays[k] - start[k]).ravel() for k in start])
    assert np.abs(mean - h.expected_mean(["0", "1", "2", "3"], 30)).max() <= h.bound()

    def swap(message: Message) -> Message:
        meta, content = message.metadata, message.content
        if meta.kind != TRAIN or meta.dst != "0" or content is None:
            return message
        record = dict(content.configs[p.RECORD])
        peers, sigs = list(record[p.PEERS]), list(record[p.PEER_SIGNATURES])
        sigs[peers.index("1")] = sigs[peers.index("2")]
        record[p.PEER_SIGNATURES] = sigs
        return Message(meta, content=Content(content.arrays, {**content.configs, p.RECORD: record}))

    seen: list[h.RecordingGrid] = []
    run = secagg_run(4, 30, keyring=ids, verify=ids, tamper=swap, seen=seen)  # type: ignore[arg-type]
    errors = {m.metadata.src: m.error.reason for m in seen[0].received if m.error is not None}
    assert "the signature on neighbour 1's keys does not verify" in errors["0"]
    mean = np.concatenate([(run.arrays[k] - start[k]).ravel() for k in start])
    assert np.abs(mean - h.expected_mean(["1", "2", "3"], 30)).max() <= h.bound()


def test_hosted_identity_falls_back_outside_a_deployed_node() -> None:
    keys = fixed_keyring(["0"])
    identity = HostedIdentity(keys)
    signature = identity.sign("0", b"m")
    assert identity.verify("0", b"m", signature)
    with pytest.raises(SecurityError, match="no node identity"):
        HostedIdentity().sign("0", b"m")
