"""The node identity an app signs its protocol keys with, and the statements it may sign.

A deployed node's app process is lent the node's identity (its mTLS
certificate key, which stays in the node's process): :func:`host_identity`
installs it once, before the app is imported, and :func:`hosted_identity`
gives it back to whatever protocol signs keys (SecAgg+ in
:mod:`consortium.privacy.secagg`, the vertical protocols in
:mod:`consortium.vertical`). Outside a deployed node (simulation) there is
none, and each protocol falls back to an identity the app gives it.

It lives here, the lowest layer, because SecAgg+ and the vertical protocols
are siblings that never import each other. For the same reason this is the
one home of the vertical key statements' vocabulary: the vertical protocols
build them, the node's signer (:mod:`consortium.privacy.secagg.certified`)
checks that a request is one of them before it signs.
"""

from __future__ import annotations

from typing import Final, Protocol

from consortium.core.errors import SecurityError

__all__ = [
    "MASK_KEY",
    "VERTICAL_KEYS",
    "VERTICAL_PURPOSES",
    "VERTICAL_STATEMENT_FIELDS",
    "VLR_GRADIENTS",
    "VLR_KEY",
    "VSB_ASSIGNMENTS",
    "VSB_GRADIENTS",
    "VSB_KEY",
    "VSB_PARTITION",
    "NodeIdentity",
    "host_identity",
    "hosted_identity",
]

#: the ``protocol`` of a statement by which a vertical party vouches for a key it owns
VERTICAL_KEYS: Final = "consortium-vertical-keys/1"
#: vertical LR: a passive party's X25519 key for pairwise masks
MASK_KEY: Final = "vlr.mask-key"
#: vertical LR: the label holder's Paillier public key
VLR_KEY: Final = "vlr.paillier-key"
#: SecureBoost: the label holder's Paillier public key
VSB_KEY: Final = "vsb.paillier-key"
#: SecureBoost: a digest of one tree's ``[[g]], [[h]]`` (index: the tree)
VSB_GRADIENTS: Final = "vsb.gradients"
#: vertical LR: a digest of the masked gradient ciphertexts a passive party sends the
#: label holder to decrypt (index: the iteration)
VLR_GRADIENTS: Final = "vlr.gradients"
#: SecureBoost: a digest of one level's row-to-node assignment, training and held-out
#: rows (index: ``tree * 64 + level``, :func:`consortium.vertical.signed_keys.level_index`)
VSB_ASSIGNMENTS: Final = "vsb.assignments"
#: SecureBoost: a digest of the rows a passive party sends left at its splits of one
#: level (index as VSB_ASSIGNMENTS, the partition's level)
VSB_PARTITION: Final = "vsb.partition"
#: what a vertical party may vouch for (a statement's ``purpose``)
VERTICAL_PURPOSES: Final = frozenset(
    {MASK_KEY, VLR_KEY, VSB_KEY, VSB_GRADIENTS, VLR_GRADIENTS, VSB_ASSIGNMENTS, VSB_PARTITION}
)
#: every field of a vertical key statement (no more, no fewer)
VERTICAL_STATEMENT_FIELDS: Final = frozenset(
    {"protocol", "purpose", "run", "node", "parties", "key", "index"}
)


class NodeIdentity(Protocol):
    """Signs for the node(s) whose keys it holds; verifies peers from keys it trusts."""

    def sign(self, node_id: str, message: bytes) -> bytes: ...

    def verify(self, node_id: str, message: bytes, signature: bytes) -> bool: ...


class _Host:
    """The identity this process's node gave it (None outside a deployed node)."""

    identity: NodeIdentity | None = None


def host_identity(identity: NodeIdentity) -> None:
    """Make ``identity`` the one every protocol of this process signs and verifies with.

    Called by a deployed node's app process before it loads the app; a second
    call is refused (nothing may swap a node's identity under its app).
    """
    if _Host.identity is not None:
        raise SecurityError("this process already has its node's identity")
    _Host.identity = identity


def hosted_identity() -> NodeIdentity | None:
    """The identity :func:`host_identity` installed, or None."""
    return _Host.identity
