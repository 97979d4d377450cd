"""SecAgg+ identity keys in deployment: the node's mTLS certificate key signs its
advertised keys, and peers check the signature against the federation CA.

A node's signature travels as an *envelope*: its certificate (DER) and the
signature, so the server relays the certificate with the keys. The server
cannot forge one: a peer accepts it only if the certificate chains to the CA
the peer itself trusts, is within its validity window, is not on the peer's
revocation list (when it has one), names a node (role and clientAuth
usage) whose name is the node id the keys are claimed for, and signs the
advertisement the peer rebuilt from its own view of the round.

The node's private key never enters the sandboxed app process that runs the
mod: :class:`CertificateSigner` lives in the node's own process and answers the
app process's requests (:mod:`consortium.node.identity_link`). It signs only
statements of its own node for the run the asking process serves, of two exact
shapes: a SecAgg+ advertisement, always over :data:`DOMAIN` followed by the
advertisement, and a vertical party's key statement
(:data:`~consortium.core.identity.VERTICAL_KEYS`: vertical LR's mask and
Paillier keys, SecureBoost's Paillier key and gradients), always over
:data:`VERTICAL_DOMAIN` followed by the statement. A verifier derives the
domain from the statement it rebuilt, so a signature over one kind never
verifies as the other; and the key that authenticates the node's TLS
connections cannot be made to sign anything a TLS handshake (or any other
protocol) would accept: TLS 1.3 signs 64 spaces first, TLS 1.2 a handshake
transcript that starts with a message type byte, and both differ from the
domains' first byte.
"""

from __future__ import annotations

import json
import logging

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from consortium.core.errors import ConfigError, SecurityError
from consortium.core.identity import VERTICAL_KEYS, VERTICAL_PURPOSES, VERTICAL_STATEMENT_FIELDS
from consortium.privacy.secagg.protocol import PROTOCOL
from consortium.transport.identity import load_certificate
from consortium.transport.peer_verifier import PeerVerifier

__all__ = [
    "DOMAIN",
    "MAX_ADVERTISEMENT",
    "VERTICAL_DOMAIN",
    "CertificateSigner",
    "CertificateVerifier",
    "advertised_run",
    "open_envelope",
    "seal_envelope",
    "signed_statement",
]

log = logging.getLogger("consortium.privacy.secagg")

#: What every certificate-key signature covers first (domain separation, see above).
DOMAIN = b"consortium-secagg-advertisement/1\x00"
#: What every signature over a vertical key statement covers first.
VERTICAL_DOMAIN = b"consortium-vertical-key/1\x00"
#: every field of a SecAgg+ advertisement (``protocol.advertisement``), no more, no fewer
_ADVERTISEMENT_FIELDS = frozenset({"protocol", "statement", "run", "epoch", "node", "enc-key",
                                   "mask-key", "participants", "graph-seed", "params"})  # fmt: skip
#: The largest advertisement signed or checked (a round of some 20,000 participants).
MAX_ADVERTISEMENT = 1 << 20
_CERT_LEN = 2  # bytes of the envelope's certificate-length prefix


def seal_envelope(certificate_der: bytes, signature: bytes) -> bytes:
    """certificate length (2 bytes, big-endian) | certificate (DER) | signature."""
    if not 0 < len(certificate_der) < 1 << (8 * _CERT_LEN):
        raise ConfigError(f"a certificate of {len(certificate_der)} bytes cannot be enveloped")
    return len(certificate_der).to_bytes(_CERT_LEN, "big") + certificate_der + signature


def open_envelope(envelope: bytes) -> tuple[x509.Certificate, bytes]:
    """(certificate, signature) of :func:`seal_envelope`; SecurityError if malformed."""
    size = int.from_bytes(envelope[:_CERT_LEN], "big")
    if len(envelope) <= _CERT_LEN + size or size == 0:
        raise SecurityError("a SecAgg+ key signature is not a certificate envelope")
    return load_certificate(envelope[_CERT_LEN : _CERT_LEN + size]), envelope[_CERT_LEN + size :]


def advertised_run(node_id: str, message: bytes) -> str:
    """The run of a SecAgg+ advertisement of ``node_id`` (SecurityError for anything else)."""
    run, domain = signed_statement(node_id, message)
    if domain != DOMAIN:
        raise SecurityError("not a SecAgg+ advertisement; refused")
    return run


def signed_statement(node_id: str, message: bytes) -> tuple[str, bytes]:
    """(run, domain) of a statement of ``node_id`` the node signs (SecurityError else).

    What the signer checks before it signs, and the verifier before it checks:
    the bytes are, field for field, a SecAgg+ advertisement
    (:func:`~consortium.privacy.secagg.protocol.advertisement`) or a vertical
    key statement with a known purpose, and both name this node; the kind
    decides the domain the signature covers.
    """
    fields, domain = _statement(message)
    if fields.get("node") != node_id:
        raise SecurityError(
            f"a key statement or advertisement for node {fields.get('node')!r} cannot be "
            f"signed by {node_id!r}"
        )
    return str(fields["run"]), domain


def _statement(message: bytes) -> tuple[dict[str, object], bytes]:
    """The fields of a statement of one of the two kinds, and its domain (SecurityError else)."""
    if len(message) > MAX_ADVERTISEMENT:
        raise SecurityError(f"a statement of {len(message)} bytes is too large to sign")
    try:
        fields = json.loads(message)
    except (UnicodeDecodeError, ValueError):
        fields = None
    if not isinstance(fields, dict) or not isinstance(fields.get("run"), str):
        raise SecurityError(
            "the node signs vertical key statements and SecAgg+ advertisements only; refused"
        )
    protocol, names = fields.get("protocol"), set(fields)
    if protocol == PROTOCOL and names == _ADVERTISEMENT_FIELDS and fields["statement"] == "keys":
        domain = DOMAIN
    elif (
        protocol == VERTICAL_KEYS
        and names == VERTICAL_STATEMENT_FIELDS
        and fields["purpose"] in VERTICAL_PURPOSES
    ):
        domain = VERTICAL_DOMAIN
    else:
        raise SecurityError(
            f"{protocol!r} with fields {sorted(names)} is not one: the node signs vertical key "
            "statements and SecAgg+ advertisements only; refused"
        )
    return fields, domain


class CertificateSigner:
    """Signs this node's SecAgg+ advertisements and vertical key statements with its
    certificate's private key.

    ``private_key`` and ``certificate`` are PEM (as the node's credentials
    folder holds them); the key must belong to the certificate and be EC or
    RSA (what ``consortium ca`` issues).
    """

    def __init__(self, private_key: bytes, certificate: bytes, node_id: str) -> None:
        try:
            key = serialization.load_pem_private_key(private_key, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"cannot read the node's private key: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ConfigError(
                f"the node's key is {type(key).__name__}: SecAgg+ signs with EC or RSA keys"
            )
        cert = load_certificate(certificate)
        der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
            raise ConfigError("the node's private key does not belong to its certificate")
        self._key = key
        self._der = cert.public_bytes(der)
        self.node_id = node_id

    def sign(self, node_id: str, message: bytes) -> bytes:
        """An envelope for ``message``, a statement of this node (SecurityError else)."""
        if node_id != self.node_id:
            raise SecurityError(f"this node is {self.node_id!r}; it cannot sign for {node_id!r}")
        _, domain = signed_statement(node_id, message)
        data = domain + message
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            signature = self._key.sign(data, ec.ECDSA(hashes.SHA256()))
        else:
            signature = self._key.sign(data, _pss(), hashes.SHA256())
        return seal_envelope(self._der, signature)


class CertificateVerifier:
    """Checks a peer's envelope: certificate from the CA this node trusts, for that node,
    valid now and not revoked, over the advertisement the verifier rebuilt."""

    def __init__(self, verifier: PeerVerifier) -> None:
        self.peers = verifier

    def verify(self, node_id: str, message: bytes, signature: bytes) -> bool:
        """True only if everything checks (each refusal is logged with its reason)."""
        try:
            self.check(node_id, message, signature)
        except SecurityError as exc:
            log.warning("the keys of node %r refused: %s", node_id, exc)
            return False
        return True

    def check(self, node_id: str, message: bytes, signature: bytes) -> None:
        """Raise SecurityError (naming why) unless ``signature`` is ``node_id``'s over
        ``message``: the CA, validity window (the verifier's clock), revocation list,
        role and name of the enveloped certificate, then the signature itself."""
        _, domain = _statement(message)  # the kind of statement the verifier rebuilt
        cert, raw = open_envelope(signature)
        identity = self.peers.verify(cert, roles=("node",), allowed=None)
        if identity.name != node_id:
            raise SecurityError(
                f"the keys of node {node_id!r} are signed with the certificate of {identity.name!r}"
            )
        public = cert.public_key()
        data = domain + message
        try:
            if isinstance(public, ec.EllipticCurvePublicKey):
                public.verify(raw, data, ec.ECDSA(hashes.SHA256()))
            elif isinstance(public, rsa.RSAPublicKey):
                public.verify(raw, data, _pss(), hashes.SHA256())
            else:
                raise SecurityError(f"node {node_id!r}'s certificate holds an unsupported key")
        except InvalidSignature:
            raise SecurityError(
                f"the signature on node {node_id!r}'s keys does not verify"
            ) from None


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
