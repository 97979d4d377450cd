"""Which identity keys a SecAgg+ node signs and verifies with, wherever its app runs.

An app passes ``node_identity(fallback)``'s ``sign`` and ``verify`` to
:func:`~consortium.privacy.secagg.secaggplus_mod`. On a deployed node they go
to the node's certificate key and CA (the node's process answers them, see
:mod:`consortium.node.identity_link`; the app process never holds the key);
anywhere else (simulation) to ``fallback``, e.g. an
:class:`~consortium.privacy.secagg.Ed25519Keyring`. So the same app runs
unchanged in simulation and in deployment, and a deployed node never signs
with a key the app brought.

The host is per process because the process is the node: a deployed node's
app process serves one node, and :func:`host_identity` is called once, by that
process's entry point, before it imports the app. It lives in
:mod:`consortium.core.identity`, shared with the vertical protocols.
"""

from __future__ import annotations

from consortium.core.errors import SecurityError
from consortium.core.identity import NodeIdentity, hosted_identity

__all__ = ["HostedIdentity", "NodeIdentity", "node_identity"]


class HostedIdentity:
    """``sign``/``verify`` with the hosted node identity when there is one (deployment),
    else with ``fallback`` (simulation). Resolved at each call, so an app may build
    its mods at import time."""

    def __init__(self, fallback: NodeIdentity | None = None) -> None:
        self.fallback = fallback

    def current(self) -> NodeIdentity:
        identity = hosted_identity() or self.fallback
        if identity is None:
            raise SecurityError(
                "no node identity to sign SecAgg+ keys with: this process is not a deployed "
                "node's app process; in simulation give node_identity(fallback=keyring)"
            )
        return identity

    def sign(self, node_id: str, message: bytes) -> bytes:
        return self.current().sign(node_id, message)

    def verify(self, node_id: str, message: bytes, signature: bytes) -> bool:
        return self.current().verify(node_id, message, signature)


def node_identity(fallback: NodeIdentity | None = None) -> HostedIdentity:
    """The identity a SecAgg+ app signs and verifies with (see the module docstring)."""
    return HostedIdentity(fallback)
