"""What the SecAgg+ server workflow and node mod say to each other.

A SecAgg+ round is four tasks per node, each a Message whose ``secagg``
Config record carries the stage's fields (bytes as hex):

1. :data:`ADVERTISE` (server → node): the round's participants, graph seed,
   parameters and the hash of the global model. The node answers with two
   fresh X25519 public keys (one to encrypt shares, one to derive masks),
   signed with its identity key over everything it was told.
2. :data:`SHARE_KEYS`: each neighbour's advertisement. The node checks every
   signature and model hash, then answers with the Shamir shares of its
   self-mask seed and mask key, one ciphertext per neighbour.
3. :data:`~consortium.core.message.TRAIN` with the ``secagg`` record: the model
   and the ciphertexts addressed to the node. It trains and answers with
   its masked vector only (record :data:`MASKED`).
4. :data:`UNMASK`: the survivors and the dropouts. The node answers with its
   shares of each survivor's seed and each dropout's mask key, never both
   for one peer.

This module holds the names both sides use and the byte layouts they sign,
encrypt and authenticate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from consortium.core.errors import SecurityError
from consortium.core.records import Config, Scalar
from consortium.privacy.secagg.crypto import canonical
from consortium.privacy.secagg.shamir import SHARE_BYTES

__all__ = [
    "ADVERTISE",
    "MASKED",
    "RECORD",
    "SHARE_KEYS",
    "UNMASK",
    "advertisement",
    "pack_shares",
    "share_context",
    "texts",
    "unpack_shares",
]

PROTOCOL = "consortium-secagg+/1"

#: Message kinds of stages 1, 2 and 4 (stage 3 is a train task).
ADVERTISE = "secagg.advertise"
SHARE_KEYS = "secagg.share-keys"
UNMASK = "secagg.unmask"

#: The Config record of every SecAgg+ task and reply.
RECORD = "secagg"
#: The Arrays record of a node's masked vector (one uint64 array, ``MASKED``).
MASKED = "secagg.masked"

# keys inside the RECORD record
STAGE = "stage"
PARTICIPANTS = "participants"
GRAPH_SEED = "graph-seed"
PARAMS_PREFIX = "param."
MODEL_HASH = "model-hash"
ENC_KEY = "enc-key"
MASK_KEY = "mask-key"
SIGNATURE = "signature"
SEED_HASH = "seed-hash"
PEERS = "peers"
PEER_ENC_KEYS = "peer-enc-keys"
PEER_MASK_KEYS = "peer-mask-keys"
PEER_MODEL_HASHES = "peer-model-hashes"
PEER_SIGNATURES = "peer-signatures"
SOURCES = "sources"
CIPHERTEXTS = "ciphertexts"
DESTINATIONS = "destinations"
SURVIVORS = "survivors"
DROPPED = "dropped"
SEED_SHARES_OF = "seed-shares-of"
SEED_SHARES = "seed-shares"
KEY_SHARES_OF = "key-shares-of"
KEY_SHARES = "key-shares"


def advertisement(
    *,
    run_id: str,
    round: int,
    node_id: str,
    enc_key: bytes,
    mask_key: bytes,
    model_hash: str,
    participants: Sequence[str],
    graph_seed: int,
    params: Config,
) -> bytes:
    """The bytes a node signs when it advertises its keys: its keys and its view of the round.

    Peers rebuild them from their own view, so a signature verifies only if
    the keys are the signer's and both saw the same run, round, participants,
    graph seed, parameters and model.
    """
    return canonical(
        {
            "protocol": PROTOCOL,
            "run": run_id,
            "round": round,
            "node": node_id,
            "enc-key": enc_key.hex(),
            "mask-key": mask_key.hex(),
            "model": model_hash,
            "participants": list(participants),
            "graph-seed": graph_seed,
            "params": params,
        }
    )


def share_context(run_id: str, round: int, src: str, dst: str) -> bytes:
    """Associated data of the shares ``src`` encrypts for ``dst``."""
    return canonical({"protocol": PROTOCOL, "run": run_id, "round": round, "src": src, "dst": dst})


def pack_shares(point: int, seed_share: bytes, key_share: bytes) -> bytes:
    """One holder's shares of one node's two secrets, as a plaintext to encrypt."""
    return point.to_bytes(4, "big") + seed_share + key_share


def unpack_shares(plaintext: bytes) -> tuple[int, bytes, bytes]:
    """(point, seed share, key share) of :func:`pack_shares`."""
    if len(plaintext) != 4 + 2 * SHARE_BYTES:
        raise SecurityError(f"a decrypted share is {len(plaintext)} bytes long")
    point = int.from_bytes(plaintext[:4], "big")
    return point, plaintext[4 : 4 + SHARE_BYTES], plaintext[4 + SHARE_BYTES :]


def texts(values: Iterable[str]) -> list[Scalar]:
    """``values`` as a Config list (node ids, hex strings)."""
    return list(values)
