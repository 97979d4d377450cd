"""Who is calling: the peer's identity from its TLS certificate (or, with --insecure, a header)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import grpc

log = logging.getLogger("consortium.transport")

#: Metadata key naming the node in --insecure mode (never trusted with TLS on).
INSECURE_NODE_HEADER = "consortium-insecure-node-id"


class Unauthenticated(Exception):
    """The caller may not use this API; the message says why.

    ``node`` is set when the caller is a node of this federation that is refused
    now (revoked, expired, taken off the allow-list): the server stops waiting
    for it at once instead of at its heartbeat timeout.
    """

    def __init__(self, reason: str, *, node: str | None = None) -> None:
        super().__init__(reason)
        self.node = node


class Authenticator(Protocol):
    def __call__(self, context: grpc.ServicerContext) -> str:
        """The caller's name, or raise :class:`Unauthenticated`."""
        ...


def peer_certificate_pem(context: grpc.ServicerContext) -> bytes | None:
    values = context.auth_context().get("x509_pem_cert")
    return values[0] if values else None


class CertificateAuthenticator:
    """Names callers by their (already chain-verified) client certificate.

    ``verify`` checks what TLS cannot: the certificate's role, revocation and
    expiry, returning the identity's name; ``allowed`` (if given) is the
    allow-list of names, consulted on every call so revocations and
    allow-list changes apply at the next connection.
    """

    def __init__(
        self,
        verify: Callable[[bytes], str],
        allowed: Callable[[str], bool] | None = None,
    ) -> None:
        self._verify = verify
        self._allowed = allowed

    def __call__(self, context: grpc.ServicerContext) -> str:
        pem = peer_certificate_pem(context)
        if pem is None:
            raise Unauthenticated("no client certificate")
        try:
            name = self._verify(pem)
        except Exception as exc:  # a SecurityError from the identity checks
            raise Unauthenticated(str(exc), node=getattr(exc, "node", None)) from exc
        if self._allowed is not None and not self._allowed(name):
            raise Unauthenticated(f"{name!r} is not on this server's allow-list", node=name)
        return name


class InsecureAuthenticator:
    """--insecure only: trusts the name a caller claims. Never use across a network."""

    def __init__(self, allowed: Callable[[str], bool] | None = None) -> None:
        self._allowed = allowed

    def __call__(self, context: grpc.ServicerContext) -> str:
        metadata: dict[str, Any] = dict(context.invocation_metadata())
        name = metadata.get(INSECURE_NODE_HEADER)
        if not name:
            raise Unauthenticated(f"insecure mode: send the {INSECURE_NODE_HEADER} header")
        if self._allowed is not None and not self._allowed(str(name)):
            raise Unauthenticated(f"{name!r} is not on this server's allow-list")
        return str(name)


def authenticate_call(
    context: grpc.ServicerContext,
    auth: Authenticator,
    on_refused: Callable[[str | None, str, str], None] | None = None,
) -> str:
    """The caller's name, or the call ended with UNAUTHENTICATED (``on_refused`` told
    who was refused, when the certificate names a node of ours)."""
    try:
        return auth(context)
    except Unauthenticated as exc:
        log.warning("refused %s: %s", context.peer(), exc)
        if on_refused is not None:
            on_refused(exc.node, context.peer(), str(exc))
        context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        raise  # abort raises; this line satisfies type checkers
