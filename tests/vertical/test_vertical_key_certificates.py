"""Vertical key statements in deployment: the node's certificate key signs them, peers
check them against the federation CA, and the node signs for its app process only well
formed vertical statements of its own node for that process's run, over a domain that
no SecAgg+ advertisement (or TLS handshake) shares."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from consortium.core.errors import SecurityError
from consortium.core.identity import MASK_KEY, VLR_KEY, VSB_KEY
from consortium.node.identity_link import IdentityService
from consortium.privacy.secagg import protocol as secagg
from consortium.privacy.secagg.certified import (
    DOMAIN,
    VERTICAL_DOMAIN,
    CertificateSigner,
    CertificateVerifier,
    open_envelope,
)
from consortium.sandbox.channel import Frame
from consortium.transport.ca import CertificateAuthority
from consortium.transport.peer_verifier import PeerVerifier
from consortium.vertical.signed_keys import check, statement

PARTIES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.init(root / "ca")
    for name in PARTIES:
        ca.issue("node", name, root / name)
    CertificateAuthority.init(root / "other").issue("node", "a", root / "forged")
    return root


def signer(pki: Path, name: str, folder: str | None = None) -> CertificateSigner:
    where = pki / (folder or name)
    key, cert = (where / f"{name}.key").read_bytes(), (where / f"{name}.crt").read_bytes()
    return CertificateSigner(key, cert, name)


def service(pki: Path, name: str) -> IdentityService:
    folder = pki / name
    return IdentityService.from_credentials(
        (folder / f"{name}.key").read_bytes(), (folder / f"{name}.crt").read_bytes(),
        (folder / "ca.crt").read_bytes(), name, folder,
    )  # fmt: skip


class Peers:
    """A party's view in deployment: verify only (its own signer is not needed here)."""

    def __init__(self, pki: Path) -> None:
        self.verifier = CertificateVerifier(PeerVerifier(pki / "ca" / "ca.crt"))

    def sign(self, node_id: str, message: bytes) -> bytes:
        raise AssertionError("a receiving party only verifies")

    def verify(self, node_id: str, message: bytes, signature: bytes) -> bool:
        return self.verifier.verify(node_id, message, signature)


def mask_statement(node: str, run: str = "run-1", purpose: str = MASK_KEY) -> bytes:
    return statement(purpose=purpose, run_id=run, node_id=node, parties=PARTIES,
                     key=bytes(range(32)))  # fmt: skip


def advert(node: str, run: str = "run-1") -> bytes:
    return secagg.advertisement(
        run_id=run, epoch=1, node_id=node, enc_key=bytes(32), mask_key=bytes(range(32)),
        participants=PARTIES, graph_seed=5, params={"clip": 1.0},
    )  # fmt: skip


def test_a_key_signed_with_the_certificate_is_accepted_and_others_are_refused(pki: Path) -> None:
    peers = Peers(pki)
    kind, _, envelope = service(pki, "b").answer(Frame("sign", {"node": "b"},
                                                       mask_statement("b")), "run-1")  # fmt: skip
    assert kind == "signed"
    key = bytes(range(32))
    check(peers, envelope.hex(), purpose=MASK_KEY, run_id="run-1", node_id="b", parties=PARTIES,
          key=key)  # fmt: skip
    refusals = {
        # b's genuine signature, relayed as c's key
        "c": dict(node_id="c", parties=PARTIES, key=key, run_id="run-1", purpose=MASK_KEY),
        # the same key under another party list (a server that left a party out)
        "fewer": dict(node_id="b", parties=PARTIES[:2], key=key, run_id="run-1", purpose=MASK_KEY),
        # another run, another key, another purpose
        "run": dict(node_id="b", parties=PARTIES, key=key, run_id="run-2", purpose=MASK_KEY),
        "key": dict(node_id="b", parties=PARTIES, key=bytes(32), run_id="run-1", purpose=MASK_KEY),
        "purpose": dict(node_id="b", parties=PARTIES, key=key, run_id="run-1", purpose=VLR_KEY),
    }
    for view in refusals.values():
        with pytest.raises(SecurityError, match=f"not signed by '{view['node_id']}'"):
            check(peers, envelope.hex(), **view)  # type: ignore[arg-type]
    # a certificate of another CA (the server's own, say) for "a"
    forged = signer(pki, "a", folder="forged").sign("a", mask_statement("a"))
    with pytest.raises(SecurityError, match="not signed by this federation's CA"):
        peers.verifier.check("a", mask_statement("a"), forged)
    with pytest.raises(SecurityError, match="not signed by 'a'"):
        check(peers, forged.hex(), purpose=MASK_KEY, run_id="run-1", node_id="a",
              parties=PARTIES, key=key)  # fmt: skip
    # another node's certificate over a statement in a's name
    with pytest.raises(SecurityError, match="signed with the certificate of 'b'"):
        peers.verifier.check("b", mask_statement("b"), envelope)  # fine for b ...
        peers.verifier.check("a", mask_statement("a"), envelope)  # ... refused for a


def test_the_node_signs_vertical_statements_of_its_own_node_and_run_only(pki: Path) -> None:
    a = service(pki, "a")

    def sign(message: bytes, run: str = "run-1", node: str = "a") -> tuple[str, str]:
        kind, header, _ = a.answer(Frame("sign", {"node": node}, message), run)
        return kind, str(header.get("reason", ""))

    for purpose in (MASK_KEY, VLR_KEY, VSB_KEY):
        assert sign(mask_statement("a", purpose=purpose))[0] == "signed"
    kind, reason = sign(mask_statement("a"), run="run-2")
    assert kind == "refused" and "another run" in reason
    kind, reason = sign(mask_statement("b"))
    assert kind == "refused" and "cannot be signed by 'a'" in reason
    kind, reason = sign(mask_statement("b"), node="b")
    assert kind == "refused" and "cannot sign for 'b'" in reason
    fields = json.loads(mask_statement("a"))
    shapes = {
        "an unknown purpose": {**fields, "purpose": "vlr.anything"},
        "a vertical statement with a field more": {**fields, "statement": "keys"},
        "a vertical statement with a field less": {k: v for k, v in fields.items() if k != "index"},
        "a SecAgg+-shaped message with the vertical purpose": {
            **json.loads(advert("a")), "purpose": MASK_KEY},
        "a vertical statement under the SecAgg+ protocol": {**fields, "protocol": secagg.PROTOCOL},
        "a SecAgg+ advertisement under the vertical protocol": {
            **json.loads(advert("a")), "protocol": fields["protocol"]},
    }  # fmt: skip
    for case, shape in shapes.items():
        kind, reason = sign(json.dumps(shape).encode())
        assert kind == "refused" and "signs vertical key statements and SecAgg+" in reason, case
    assert sign(advert("a"))[0] == "signed"  # SecAgg+ is as before


def test_a_vertical_signature_is_never_a_secagg_one_nor_a_bare_one(pki: Path) -> None:
    a, peers = signer(pki, "a"), Peers(pki)
    vertical, advertisement = a.sign("a", mask_statement("a")), a.sign("a", advert("a"))
    assert peers.verify("a", mask_statement("a"), vertical)
    assert peers.verify("a", advert("a"), advertisement)
    assert not peers.verify("a", advert("a"), vertical)
    assert not peers.verify("a", mask_statement("a"), advertisement)
    cert, raw = open_envelope(vertical)
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(raw, VERTICAL_DOMAIN + mask_statement("a"), ec.ECDSA(hashes.SHA256()))
    for other in (DOMAIN + mask_statement("a"), mask_statement("a")):
        with pytest.raises(InvalidSignature):
            public.verify(raw, other, ec.ECDSA(hashes.SHA256()))
    assert VERTICAL_DOMAIN[:1] not in (b" ", b"\x01", b"\x0f")  # nor TLS 1.3 / 1.2 inputs
