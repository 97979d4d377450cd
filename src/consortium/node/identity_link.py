"""The node's identity, lent to its app processes without its private key.

A SecAgg+ app signs its advertised keys, and a vertical-learning app the keys
it owns, with the node's certificate key, and checks its peers' against the
federation CA. The key must stay in the node's
process (an app process runs code the node's operator did not write), so the
app process asks over its channel to the node, between receiving a task and
sending its reply:

* ``sign`` (header ``node``; payload: the statement) → ``signed`` (payload:
  the envelope) or ``refused`` (header ``reason``);
* ``verify`` (header ``node``, ``size``: the statement's length; payload:
  statement then envelope) → ``verified`` (header ``valid``).

:class:`IdentityService` answers in the node's process: it signs only SecAgg+
advertisements and vertical key statements of this node for the run the
asking process serves, each over its own domain
(:class:`~consortium.privacy.secagg.certified.CertificateSigner`).
:class:`ChannelIdentity` asks, in the app process, and is what
:func:`~consortium.privacy.secagg.node_identity` resolves to there.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from consortium.core.errors import SecurityError
from consortium.privacy.secagg.certified import (
    DOMAIN,
    MAX_ADVERTISEMENT,
    CertificateSigner,
    CertificateVerifier,
    signed_statement,
)
from consortium.sandbox.channel import Channel, ChannelError, Frame
from consortium.transport.identity import CRL_FILE
from consortium.transport.peer_verifier import PeerVerifier

__all__ = ["REQUESTS", "ChannelIdentity", "IdentityService"]

log = logging.getLogger("consortium.node")

#: the frame kinds an app process may send while it runs a task
REQUESTS = frozenset({"sign", "verify"})
#: an envelope is a certificate and a signature: a few KiB at most
_MAX_ENVELOPE = 64 * 1024


class IdentityService:
    """Signs and verifies for the app processes of one node (in the node's process)."""

    def __init__(self, signer: CertificateSigner, verifier: CertificateVerifier) -> None:
        self.signer = signer
        self.verifier = verifier
        #: (run, kind) of statements whose first signature was logged
        self._signed_runs: set[tuple[str, str]] = set()

    @classmethod
    def from_credentials(
        cls, private_key: bytes, certificate: bytes, ca: bytes, node_id: str, folder: Path
    ) -> IdentityService:
        """The node's key, certificate and CA (PEM, as its TLS uses them), and the ``crl.pem``
        of its credentials ``folder`` if the operator put one there (re-read when it
        changes; without one, revoked peers are caught by the server only)."""
        crl = folder / CRL_FILE
        peers = PeerVerifier(ca, crl if crl.exists() else None, roles=("node",))
        return cls(CertificateSigner(private_key, certificate, node_id), CertificateVerifier(peers))

    def answer(self, frame: Frame, run_id: str) -> tuple[str, dict[str, Any], bytes]:
        """The answer to an app process's request (kind, header, payload); a request this
        service refuses gets ``refused`` with the reason."""
        node, payload = frame.header.get("node"), bytes(frame.payload)
        try:
            if not isinstance(node, str):
                raise SecurityError(f"a {frame.kind!r} request names no node")
            if frame.kind == "sign":
                run, domain = signed_statement(node, payload)
                if run != run_id:
                    raise SecurityError(
                        f"the app process of run {run_id} asked to sign for another run"
                    )
                envelope = self.signer.sign(node, payload)
                what = "SecAgg+" if domain == DOMAIN else "vertical"
                if (run_id, what) not in self._signed_runs:
                    self._signed_runs.add((run_id, what))
                    log.info("run %s: %s keys signed with this node's certificate", run_id, what)
                return "signed", {}, envelope
            if frame.kind != "verify":
                raise SecurityError(f"an unknown request {frame.kind!r}")
            size = frame.header.get("size")
            if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= len(payload):
                raise SecurityError("a verify request without the advertisement's size")
            message, envelope = payload[:size], payload[size:]
            if len(envelope) > _MAX_ENVELOPE:
                raise SecurityError(f"a signature envelope of {len(envelope)} bytes")
            return "verified", {"valid": self.verifier.verify(node, message, envelope)}, b""
        except SecurityError as exc:
            log.warning("run %s: the app process's %s request refused: %s", run_id, frame.kind,
                        exc)  # fmt: skip
            return "refused", {"reason": str(exc)}, b""


class ChannelIdentity:
    """The node's identity as the app process sees it: each call asks the node.

    The app process's channel has one reader; calls come while the process runs
    a task, when its main loop waits for the task to end, so they read the
    answer themselves (one at a time, should the app use threads).
    """

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._lock = threading.Lock()

    def sign(self, node_id: str, message: bytes) -> bytes:
        frame = self._ask("sign", {"node": node_id}, message, "signed")
        return bytes(frame.payload)

    def verify(self, node_id: str, message: bytes, signature: bytes) -> bool:
        if len(message) > MAX_ADVERTISEMENT or len(signature) > _MAX_ENVELOPE:
            return False
        header = {"node": node_id, "size": len(message)}
        frame = self._ask("verify", header, message + signature, "verified")
        return frame.header.get("valid") is True

    def _ask(self, kind: str, header: dict[str, Any], payload: bytes, expect: str) -> Frame:
        with self._lock:
            try:
                self.channel.send(kind, header, payload)
                frame = self.channel.recv()
            except ChannelError as exc:
                raise SecurityError(f"the node did not answer the {kind} request: {exc}") from exc
        if frame.kind == "refused":
            raise SecurityError(f"the node refused to {kind}: {frame.header.get('reason')}")
        if frame.kind != expect:
            raise SecurityError(f"the node answered a {kind} request with {frame.kind!r}")
        return frame
