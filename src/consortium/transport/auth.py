"""Who is calling: the peer's identity from its TLS certificate (or, with --insecure, a header).

Node-facing calls need only the caller's name (:class:`Authenticator`); the
coordinator's calls need its role and organisation too, for the authorization
policy (:class:`CallerAuthenticator`, returning a
:class:`~consortium.transport.authz.Caller`). A ``denied`` callback names the
callers this server bans (``consortium fleet ban``): they are refused like a
revoked certificate, at their next call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import grpc

from consortium.transport.authz import Caller
from consortium.transport.refusal_gate import RefusalLog, peer_host

log = logging.getLogger("consortium.transport")
#: refusals logged once per caller and reason a minute (a refused caller retries)
_refusals = RefusalLog(log)

T = TypeVar("T")

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


class CallerAuthenticator(Protocol):
    def __call__(self, context: grpc.ServicerContext) -> Caller:
        """The caller's name, role and organisation, or raise :class:`Unauthenticated`."""
        ...


#: why a name is banned from this server, or None when it is not
Denied = Callable[[str], str | None]


def _check_denied(name: str, denied: Denied | None) -> None:
    reason = denied(name) if denied is not None else None
    if reason is not None:
        raise Unauthenticated(f"{name!r} is banned from this server: {reason}", node=name)


def peer_certificate_pem(context: grpc.ServicerContext) -> bytes | None:
    values = context.auth_context().get("x509_pem_cert")
    return values[0] if values else None


class CertificateAuthenticator:
    """Names callers by their (already chain-verified) client certificate.

    ``verify`` checks what TLS cannot: the certificate's role, revocation and
    expiry, returning the identity's name; ``allowed`` (if given) is the
    allow-list of names, consulted on every call so revocations and
    allow-list changes apply at the next connection; ``denied`` (if given) the
    ban list, consulted the same way.
    """

    def __init__(
        self,
        verify: Callable[[bytes], str],
        allowed: Callable[[str], bool] | None = None,
        denied: Denied | None = None,
    ) -> None:
        self._verify = verify
        self._allowed = allowed
        self._denied = denied

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
        _check_denied(name, self._denied)
        return name


class IdentityAuthenticator:
    """Names coordinators by their (already chain-verified) client certificate, with the
    role and organisation the authorization policy needs.

    ``verify`` checks the certificate (role, revocation, expiry) and returns who holds it.
    """

    def __init__(self, verify: Callable[[bytes], Caller]) -> None:
        self._verify = verify

    def __call__(self, context: grpc.ServicerContext) -> Caller:
        pem = peer_certificate_pem(context)
        if pem is None:
            raise Unauthenticated("no client certificate")
        try:
            return self._verify(pem)
        except Exception as exc:  # a SecurityError from the identity checks
            raise Unauthenticated(str(exc)) from exc


class InsecureAuthenticator:
    """--insecure only: trusts the name a caller claims. Never use across a network."""

    def __init__(
        self, allowed: Callable[[str], bool] | None = None, denied: Denied | None = None
    ) -> None:
        self._allowed = allowed
        self._denied = denied

    def __call__(self, context: grpc.ServicerContext) -> str:
        metadata: dict[str, Any] = dict(context.invocation_metadata())
        name = metadata.get(INSECURE_NODE_HEADER)
        if not name:
            raise Unauthenticated(f"insecure mode: send the {INSECURE_NODE_HEADER} header")
        if self._allowed is not None and not self._allowed(str(name)):
            raise Unauthenticated(f"{name!r} is not on this server's allow-list")
        _check_denied(str(name), self._denied)
        return str(name)


def authenticate_call(
    context: grpc.ServicerContext,
    auth: Callable[[grpc.ServicerContext], T],
    on_refused: Callable[[str | None, str, str], None] | None = None,
) -> T:
    """Who called (as ``auth`` names them), or the call ended with UNAUTHENTICATED
    (``on_refused`` told who was refused, when the certificate names a node of ours)."""
    try:
        return auth(context)
    except Unauthenticated as exc:
        caller = exc.node or peer_host(context.peer())
        _refusals.warning(caller, str(exc), "refused %s: %s", context.peer(), exc)
        if on_refused is not None:
            on_refused(exc.node, context.peer(), str(exc))
        context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        raise  # abort raises; this line satisfies type checkers
