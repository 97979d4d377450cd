"""Vertical parties vouch for the keys they own; every receiver checks before use.

The server relays every message between the parties of a vertical run, so a
key a party receives could be the server's own: the label holder's Paillier
key (vertical LR, SecureBoost), a passive party's pairwise-mask key (vertical
LR), or SecureBoost's encrypted gradients. The party that owns each signs a
*key statement* with its node identity, as SecAgg+ signs its advertisements:
the run, its node, a purpose tag, every party of the run as the server named
them at setup, the key (or a digest), and an index (SecureBoost's tree, else
0). A receiver rebuilds the statement from its *own* view (its run, the party
it expects the key from, the parties it was told at setup) and checks the
signature before it uses the key, then pins the key for the run.

Deployed, the identity is the node's mTLS certificate key, held by the node's
process (:mod:`consortium.node.identity_link`): the node signs only statements
of its own node for the run its app process serves, over a domain of their own
(:mod:`consortium.privacy.secagg.certified`), and a receiver accepts only a
certificate of the federation's CA naming the expected node. In simulation
(no hosted identity) the parties use the identity the app gave, or
:data:`SIMULATION_IDENTITY`: Ed25519 keys derived from the node names. It
authenticates nothing (anyone can derive them); it keeps the protocol, and
so the model, the same in simulation and in deployment.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Final

from consortium.core.errors import MissingDependencyError, SecurityError, UpdateRejected
from consortium.core.identity import (
    MASK_KEY,
    VERTICAL_KEYS,
    VERTICAL_PURPOSES,
    VLR_GRADIENTS,
    VLR_KEY,
    VSB_ASSIGNMENTS,
    VSB_GRADIENTS,
    VSB_KEY,
    VSB_PARTITION,
    NodeIdentity,
    hosted_identity,
)
from consortium.core.records import Config

__all__ = [
    "LEVEL_STRIDE",
    "SIMULATION_IDENTITY",
    "SimulationIdentity",
    "check",
    "digest",
    "digests",
    "level_index",
    "party_list",
    "resolve",
    "statement",
    "vouch",
]

#: most parties a vertical run names (a label holder and up to 8 passive parties)
MAX_PARTIES: Final = 9
#: a SecureBoost assignment's index is ``tree * LEVEL_STRIDE + level`` (see level_index)
LEVEL_STRIDE: Final = 64
#: most hex characters of one signature envelope (a certificate and a signature)
_MAX_SIGNATURE_HEX: Final = 2 * 16 * 1024
#: what a purpose is called in refusals
_WHAT = {
    MASK_KEY: "pairwise-mask key",
    VLR_KEY: "Paillier public key",
    VSB_KEY: "Paillier public key",
    VSB_GRADIENTS: "encrypted gradients",
    VLR_GRADIENTS: "masked gradient ciphertexts",
    VSB_ASSIGNMENTS: "row assignment",
    VSB_PARTITION: "partition",
}
assert set(_WHAT) == VERTICAL_PURPOSES, "every purpose the node signs is named here"


def statement(
    *, purpose: str, run_id: str, node_id: str, parties: Sequence[str], key: bytes, index: int = 0
) -> bytes:
    """The bytes a party signs for a key it owns (canonical JSON: one encoding)."""
    if purpose not in VERTICAL_PURPOSES:
        raise SecurityError(f"no vertical key statement has purpose {purpose!r}")
    fields = {
        "protocol": VERTICAL_KEYS,
        "purpose": purpose,
        "run": run_id,
        "node": node_id,
        "parties": list(parties),
        "key": key.hex(),
        "index": index,
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def digest(data: bytes) -> bytes:
    """SHA-256 of what a statement vouches for when it is too large to sign whole."""
    return hashlib.sha256(data).digest()


def digests(*parts: bytes) -> bytes:
    """SHA-256 over each part's SHA-256: one digest of several arrays, whatever their sizes
    (no two different splits of the same bytes give the same digest)."""
    return digest(b"".join(digest(part) for part in parts))


def level_index(tree: int, level: int) -> int:
    """The index of a SecureBoost level's assignment statement: ``tree * 64 + level``.

    A tree has at most 7 levels (0..6), so every (tree, level) pair has its own index
    and :func:`divmod` by :data:`LEVEL_STRIDE` gives the pair back; neither may be
    negative, and the level must fit below the stride.
    """
    if tree < 0 or not 0 <= level < LEVEL_STRIDE:
        raise SecurityError(f"no assignment statement for tree {tree}, level {level}")
    return tree * LEVEL_STRIDE + level


class SimulationIdentity:
    """Ed25519 keys derived from the node names: one process plays every party.

    Never used on a deployed node (whose app process always has the node's
    identity); it authenticates nothing, since anyone can derive the keys.
    """

    def sign(self, node_id: str, message: bytes) -> bytes:
        signing, _ = _nacl()
        return bytes(signing(_seed(node_id)).sign(message).signature)

    def verify(self, node_id: str, message: bytes, signature: bytes) -> bool:
        signing, bad = _nacl()
        try:
            signing(_seed(node_id)).verify_key.verify(message, signature)
        except (bad, ValueError, TypeError):
            return False
        return True


#: the identity of simulated vertical parties that were given none
SIMULATION_IDENTITY: Final = SimulationIdentity()


def resolve(identity: NodeIdentity | None) -> NodeIdentity:
    """The node's own identity on a deployed node, else ``identity``, else the simulation's."""
    return hosted_identity() or identity or SIMULATION_IDENTITY


def vouch(
    identity: NodeIdentity,
    *,
    purpose: str,
    run_id: str,
    node_id: str,
    parties: Sequence[str],
    key: bytes,
    index: int = 0,
) -> str:
    """This party's signature (hex) over its statement for ``key``."""
    message = statement(purpose=purpose, run_id=run_id, node_id=node_id, parties=parties,
                        key=key, index=index)  # fmt: skip
    return identity.sign(node_id, message).hex()


def check(
    identity: NodeIdentity,
    signature: object,
    *,
    purpose: str,
    run_id: str,
    node_id: str,
    parties: Sequence[str],
    key: bytes,
    index: int = 0,
) -> None:
    """Refuse (SecurityError naming the party and what failed) unless ``signature`` is
    ``node_id``'s over the statement this party rebuilt for ``key``."""
    what = f"party {node_id!r}'s {_WHAT[purpose]}"
    if not isinstance(signature, str) or not 0 < len(signature) <= _MAX_SIGNATURE_HEX:
        raise SecurityError(f"{what} comes unsigned: refused")
    try:
        raw = bytes.fromhex(signature)
    except ValueError:
        raise SecurityError(f"{what} comes with a signature that is not hex: refused") from None
    message = statement(purpose=purpose, run_id=run_id, node_id=node_id, parties=parties,
                        key=key, index=index)  # fmt: skip
    if not identity.verify(node_id, message, raw):
        raise SecurityError(
            f"{what}{_where(purpose, index)}: not signed by "
            f"{node_id!r} for run {run_id!r} and parties {list(parties)} (substituted on the "
            "way, or signed by another node): refused"
        )


def _where(purpose: str, index: int) -> str:
    """Which step a statement of ``purpose`` is about, for a refusal."""
    if purpose == VSB_GRADIENTS:
        return f" (tree {index})"
    if purpose == VLR_GRADIENTS:
        return f" (iteration {index})"
    if purpose in (VSB_ASSIGNMENTS, VSB_PARTITION):
        tree, level = divmod(index, LEVEL_STRIDE)
        return f" (tree {tree}, level {level})"
    return ""


def party_list(config: Config, key: str, node_id: str) -> list[str]:
    """The run's parties as the setup task names them: 2-9 distinct names, this node's among."""
    value = config.get(key)
    if (
        not isinstance(value, list)
        or not 2 <= len(value) <= MAX_PARTIES
        or not all(isinstance(v, str) and v for v in value)
        or len(set(value)) != len(value)
    ):
        raise UpdateRejected(f"{key!r} must list 2-{MAX_PARTIES} distinct parties")
    if node_id not in value:
        raise UpdateRejected(f"{key!r} does not name this party ({node_id!r})")
    return [str(v) for v in value]


def _seed(node_id: str) -> bytes:
    return hashlib.sha256(b"consortium-vertical-simulation/" + node_id.encode()).digest()


def _nacl() -> tuple[type, type[Exception]]:
    try:
        from nacl.exceptions import BadSignatureError
        from nacl.signing import SigningKey
    except ImportError as exc:
        raise MissingDependencyError.for_extra("pynacl", "vertical") from exc
    return SigningKey, BadSignatureError
