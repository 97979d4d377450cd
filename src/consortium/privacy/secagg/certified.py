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
SecAgg+ advertisements of its own node for the run the asking process serves,
and always over :data:`DOMAIN` followed by the advertisement, so the key that
authenticates the node's TLS connections cannot be made to sign anything a TLS
handshake (or any other protocol) would accept: TLS 1.3 signs 64 spaces first,
TLS 1.2 a handshake transcript that starts with a message type byte, and both
differ from ``DOMAIN``'s first byte.
"""

from __future__ import annotations

import json
import logging

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from consortium.core.errors import ConfigError, SecurityError
from consortium.privacy.secagg.protocol import PROTOCOL
from consortium.transport.identity import load_certificate
from consortium.transport.peer_verifier import PeerVerifier

__all__ = [
    "DOMAIN",
    "MAX_ADVERTISEMENT",
    "CertificateSigner",
    "CertificateVerifier",
    "advertised_run",
    "open_envelope",
    "seal_envelope",
]

log = logging.getLogger("consortium.privacy.secagg")

#: What every certificate-key signature covers first (domain separation, see above).
DOMAIN = b"consortium-secagg-advertisement/1\x00"
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
    """The run of a SecAgg+ advertisement of ``node_id`` (SecurityError for anything else).

    What the signer checks before it signs: the bytes are an advertisement
    (:func:`~consortium.privacy.secagg.protocol.advertisement`) of this node.
    """
    if len(message) > MAX_ADVERTISEMENT:
        raise SecurityError(f"a SecAgg+ advertisement of {len(message)} bytes is too large")
    try:
        fields = json.loads(message)
    except (UnicodeDecodeError, ValueError):
        fields = None
    if (
        not isinstance(fields, dict)
        or fields.get("protocol") != PROTOCOL
        or not isinstance(fields.get("run"), str)
    ):
        raise SecurityError("the node signs SecAgg+ advertisements only; refused")
    if fields.get("node") != node_id:
        raise SecurityError(
            f"an advertisement for node {fields.get('node')!r} cannot be signed by {node_id!r}"
        )
    return str(fields["run"])


class CertificateSigner:
    """Signs this node's SecAgg+ advertisements with its certificate's private key.

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
        """An envelope for ``message``, an advertisement of this node (SecurityError else)."""
        if node_id != self.node_id:
            raise SecurityError(f"this node is {self.node_id!r}; it cannot sign for {node_id!r}")
        advertised_run(node_id, message)
        data = DOMAIN + message
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
            log.warning("SecAgg+ keys of node %r refused: %s", node_id, exc)
            return False
        return True

    def check(self, node_id: str, message: bytes, signature: bytes) -> None:
        """Raise SecurityError (naming why) unless ``signature`` is ``node_id``'s over
        ``message``: the CA, validity window (the verifier's clock), revocation list,
        role and name of the enveloped certificate, then the signature itself."""
        if len(message) > MAX_ADVERTISEMENT:
            raise SecurityError(f"an advertisement of {len(message)} bytes is too large")
        cert, raw = open_envelope(signature)
        identity = self.peers.verify(cert, roles=("node",), allowed=None)
        if identity.name != node_id:
            raise SecurityError(
                f"the keys of node {node_id!r} are signed with the certificate of {identity.name!r}"
            )
        public = cert.public_key()
        data = DOMAIN + message
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
