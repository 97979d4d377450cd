"""What the SecAgg+ server workflow and node mod say to each other.

Keys live for a *key epoch*, not a round: one key-setup task per epoch, then
two tasks per round. Every task and reply carries a ``secagg`` Config record
(bytes as hex):

* :data:`ADVERTISE` (key setup, server → node, the epoch's first round): the
  epoch's participants, graph seed and parameters. The node answers with two
  fresh X25519 public keys (one to encrypt shares, one to derive pairwise
  masks), signed with its identity key over everything it was told.
* :data:`~consortium.core.message.TRAIN` with the record (every round): the
  model, the round's mask counter (strictly increasing within the epoch) and,
  until the node has them, its neighbours' signed advertisements. It checks
  them, trains, and answers with its masked vector only (Arrays record
  :data:`MASKED`), Shamir shares of the round's fresh self-mask seed b_u
  encrypted to each neighbour, commitments (SHA-256) to b_u and to each
  pairwise seed, and for each neighbour a MAC over the hash of the model it
  trained (keyed by their X25519 agreement: no identity signature per round).
* :data:`UNMASK` (every round): the survivors and the dropouts, the b-share
  ciphertexts addressed to the node and its surviving neighbours' MACs for
  it. The node answers with its shares of each survivor's b and,
  for each neighbour that dropped, the one pairwise seed it shares with it
  for this round, never both for one neighbour.

Pairwise seeds are HMAC-SHA256(HKDF(X25519(sk_u, pk_v)), run | epoch |
counter): a new one every round, so revealing a dropout's seed for one round reveals nothing of
any other round, and no long-term secret is ever revealed (see
``docs/privacy.md``, "Keys across rounds").

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
    "UNMASK",
    "advertisement",
    "mask_context",
    "model_statement",
    "pack_share",
    "share_context",
    "texts",
    "unpack_share",
]

PROTOCOL = "consortium-secagg+/2"

#: Message kinds of the key setup and the unmask stage (the masked input is a train task).
ADVERTISE = "secagg.advertise"
UNMASK = "secagg.unmask"

#: The Config record of every SecAgg+ task and reply.
RECORD = "secagg"
#: The Arrays record of a node's masked vector (one uint64 array, ``MASKED``).
MASKED = "secagg.masked"

# keys inside the RECORD record
STAGE = "stage"
EPOCH = "epoch"
COUNTER = "counter"
PARTICIPANTS = "participants"
GRAPH_SEED = "graph-seed"
PARAMS_PREFIX = "param."
MODEL_HASH = "model-hash"
ENC_KEY = "enc-key"
MASK_KEY = "mask-key"
SIGNATURE = "signature"
SEED_HASH = "seed-hash"
PAIR_HASHES = "pair-hashes"
PEERS = "peers"
PEER_ENC_KEYS = "peer-enc-keys"
PEER_MASK_KEYS = "peer-mask-keys"
PEER_SIGNATURES = "peer-signatures"
MODEL_MACS = "model-macs"
PEER_MODEL_MACS = "peer-model-macs"
SOURCES = "sources"
CIPHERTEXTS = "ciphertexts"
DESTINATIONS = "destinations"
SURVIVORS = "survivors"
DROPPED = "dropped"
SEED_SHARES_OF = "seed-shares-of"
SEED_SHARES = "seed-shares"
PAIR_SEEDS_OF = "pair-seeds-of"
PAIR_SEEDS = "pair-seeds"


def advertisement(
    *,
    run_id: str,
    epoch: int,
    node_id: str,
    enc_key: bytes,
    mask_key: bytes,
    participants: Sequence[str],
    graph_seed: int,
    params: Config,
) -> bytes:
    """The bytes a node signs when it advertises its keys: its keys and its view of the epoch.

    Peers rebuild them from their own view, so a signature verifies only if
    the keys are the signer's and both saw the same run, epoch, participants,
    graph seed and parameters.
    """
    return canonical(
        {
            "protocol": PROTOCOL,
            "statement": "keys",
            "run": run_id,
            "epoch": epoch,
            "node": node_id,
            "enc-key": enc_key.hex(),
            "mask-key": mask_key.hex(),
            "participants": list(participants),
            "graph-seed": graph_seed,
            "params": params,
        }
    )


def model_statement(
    *, run_id: str, epoch: int, counter: int, round: int, node_id: str, model_hash: str
) -> bytes:
    """What a node vouches for to each neighbour (a MAC) with its masked input: the model
    it trained, in which round.

    A neighbour checks the MAC over the statement it rebuilds with its *own*
    model's hash before it reveals anything, so a different model sent to one
    node (Pasquini et al., CCS 2022) stops the unmasking.
    """
    return canonical(
        {
            "protocol": PROTOCOL,
            "statement": "model",
            "run": run_id,
            "epoch": epoch,
            "counter": counter,
            "round": round,
            "node": node_id,
            "model": model_hash,
        }
    )


def share_context(run_id: str, epoch: int, counter: int, src: str, dst: str) -> bytes:
    """Associated data of the b-share ``src`` encrypts for ``dst`` in one round: it opens
    for that pair, run, epoch and counter only (never in another round)."""
    return canonical({"run": run_id, "epoch": epoch, "counter": counter, "src": src, "dst": dst})


def mask_context(run_id: str, epoch: int, counter: int) -> bytes:
    """What one round's pairwise seeds are derived over (a new seed per pair and round)."""
    return b"pairwise-mask|" + canonical({"run": run_id, "epoch": epoch, "counter": counter})


def pack_share(point: int, seed_share: bytes) -> bytes:
    """One holder's share of one node's self-mask seed, as a plaintext to encrypt."""
    return point.to_bytes(4, "big") + seed_share


def unpack_share(plaintext: bytes) -> tuple[int, bytes]:
    """(point, seed share) of :func:`pack_share`."""
    if len(plaintext) != 4 + SHARE_BYTES:
        raise SecurityError(f"a decrypted share is {len(plaintext)} bytes long")
    return int.from_bytes(plaintext[:4], "big"), plaintext[4:]


def texts(values: Iterable[str]) -> list[Scalar]:
    """``values`` as a Config list (node ids, hex strings)."""
    return list(values)
