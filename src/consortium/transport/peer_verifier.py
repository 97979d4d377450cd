"""The server's check of each caller: its certificate, against the CA and the current CRL.

:class:`PeerVerifier` runs :func:`~consortium.transport.identity.verify_peer`
on the certificate gRPC's TLS handshake authenticated (read from the call's
auth context), with the CA certificate loaded once and the CRL reloaded
whenever its file changes (``consortium ca revoke`` on a running federation
takes effect at the next call). Nothing here imports gRPC.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path

from cryptography import x509

from consortium.core.errors import SecurityError
from consortium.transport.identity import (
    CA_CERT_FILE,
    CRL_FILE,
    CertificateLike,
    PeerIdentity,
    UntrustedCertificate,
    check_crl,
    load_certificate,
    load_crl,
    read_credential_file,
    utcnow,
    verify_peer,
)
from consortium.transport.names import CLIENT_ROLES

log = logging.getLogger("consortium.transport.identity")

AUTH_CONTEXT_CERT_KEY = "x509_pem_cert"


def peer_certificate(auth_context: Mapping[str, Sequence[bytes]]) -> bytes:
    """The client's PEM certificate from a gRPC ``context.auth_context()``."""
    values = auth_context.get(AUTH_CONTEXT_CERT_KEY) or []
    if not values:
        raise UntrustedCertificate("the peer presented no client certificate")
    return bytes(values[0])


class PeerVerifier:
    """A server's view of the federation: CA, CRL (reloaded when the file changes), roles.

    ``ca`` is a path (``Path`` or ``str``) or the certificate itself (bytes or object).

    Fails closed: a CRL file that disappears, or is not signed by the CA, refuses
    every peer until fixed.
    """

    def __init__(
        self,
        ca: Path | str | x509.Certificate | bytes,
        crl: Path | str | None = None,
        *,
        roles: Collection[str] = CLIENT_ROLES,
        allowed: Collection[str] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.ca = load_certificate(read_credential_file(ca) if isinstance(ca, Path | str) else ca)
        self.crl_path = Path(crl) if crl is not None else None
        self.roles = tuple(roles)
        self.allowed = allowed
        self._clock = clock
        self._lock = threading.Lock()  # gRPC calls this from many threads
        self._crl: x509.CertificateRevocationList | None = None
        self._crl_stamp: tuple[int, int, int] | None = None
        self._stale_warned: tuple[int, int, int] | None = None
        self.current_crl()

    @classmethod
    def from_ca_directory(
        cls,
        directory: Path | str,
        *,
        roles: Collection[str] = CLIENT_ROLES,
        allowed: Collection[str] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> PeerVerifier:
        """Use ``ca.crt`` and ``crl.pem`` of a CA folder (or of a copy of the two files)."""
        directory = Path(directory)
        return cls(
            directory / CA_CERT_FILE,
            directory / CRL_FILE,
            roles=roles,
            allowed=allowed,
            clock=clock,
        )

    def current_crl(self) -> x509.CertificateRevocationList | None:
        """The CRL to check against, re-read if its file changed; raises if it is unusable."""
        if self.crl_path is None:
            return None
        with self._lock:
            try:
                st = self.crl_path.stat()
            except OSError:
                raise SecurityError(f"revocation list {self.crl_path} is missing") from None
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp != self._crl_stamp or self._crl is None:
                crl = load_crl(read_credential_file(self.crl_path))
                check_crl(crl, self.ca)
                self._crl, self._crl_stamp = crl, stamp
            next_update = self._crl.next_update_utc
            if next_update and next_update < self._clock() and self._stale_warned != stamp:
                self._stale_warned = stamp  # once per file, not once per call
                log.warning("revocation list %s is stale: run 'consortium ca crl'", self.crl_path)
            return self._crl

    def verify(
        self,
        cert: CertificateLike,
        *,
        roles: Collection[str] | None = None,
        allowed: Collection[str] | None = None,
    ) -> PeerIdentity:
        """Check one peer certificate; ``roles``/``allowed`` override the defaults."""
        return verify_peer(
            cert,
            self.ca,
            self.current_crl(),
            self._clock(),
            roles=self.roles if roles is None else roles,
            allowed=self.allowed if allowed is None else allowed,
        )

    def verify_auth_context(
        self,
        auth_context: Mapping[str, Sequence[bytes]],
        *,
        roles: Collection[str] | None = None,
        allowed: Collection[str] | None = None,
    ) -> PeerIdentity:
        """Check the client certificate of a gRPC call (``context.auth_context()``)."""
        return self.verify(peer_certificate(auth_context), roles=roles, allowed=allowed)
