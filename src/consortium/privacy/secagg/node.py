"""The node's side of SecAgg+ key setup and unmasking (the masked input, which trains,
is :mod:`~consortium.privacy.secagg.masking`; the mod in
:mod:`~consortium.privacy.secagg.mod` routes tasks here).

A node keeps its key epoch in its :class:`NodeState` (Config record
:data:`~consortium.privacy.secagg.protocol.RECORD`), which stays in the silo:
its two private keys until it has checked its neighbours' public keys, then
the per-neighbour keys derived from them (share encryption, model MACs,
pairwise-seed bases), the last mask counter it used, and between the masked
input and the unmask of a round its own share of that round's self-mask seed
and the hash of the model it trained. A new key setup replaces it all.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from consortium.core.errors import ConfigError, SecurityError
from consortium.core.message import Message
from consortium.core.records import Config, ConfigValue
from consortium.privacy.secagg import protocol as p
from consortium.privacy.secagg.crypto import (
    KeyPair,
    Sign,
    Verify,
    agree,
    decrypt_share,
    public_of,
)
from consortium.privacy.secagg.params import (
    SecAggParams,
    neighbour_count,
    neighbour_graph,
    threshold,
)

__all__ = [
    "EpochView",
    "advertise",
    "check_round",
    "model_mac",
    "pair_seed",
    "strs",
    "take_peers",
    "unmask",
]

#: Where a node is within its key epoch, kept in its state.
KEYED, MASKED, REVEALED = 1, 3, 4
SHARE_PURPOSE = b"share-encryption"
MAC_PURPOSE = b"model-mac"
MASK_PURPOSE = b"pairwise-mask"
#: per-neighbour keys derived once per epoch (aligned with PEERS), kept in the node's state
SHARE_KEYS, MAC_KEYS, MASK_BASES = "peer-share-keys", "peer-mac-keys", "peer-mask-bases"


@dataclass(frozen=True, slots=True)
class EpochView:
    """What a node was told about its key epoch at key setup."""

    run_id: str
    epoch: int
    node_id: str
    participants: list[str]
    graph_seed: int
    params: SecAggParams

    @property
    def neighbours(self) -> list[str]:
        k = neighbour_count(self.params, len(self.participants))
        return neighbour_graph(self.participants, k, self.graph_seed)[self.node_id]

    @property
    def threshold(self) -> int:
        """Shares that rebuild a secret (the graph is k-regular: the same for every node)."""
        return threshold(self.params, neighbour_count(self.params, len(self.participants)) + 1)

    def point(self, node: str) -> int:
        """``node``'s Shamir point: its place among the sorted participants, from 1."""
        return sorted(self.participants).index(node) + 1

    def params_config(self) -> Config:
        return self.params.to_config()

    def signed(self, node: str, enc_key: bytes, mask_key: bytes) -> bytes:
        return p.advertisement(
            run_id=self.run_id,
            epoch=self.epoch,
            node_id=node,
            enc_key=enc_key,
            mask_key=mask_key,
            participants=self.participants,
            graph_seed=self.graph_seed,
            params=self.params_config(),
        )

    def to_state(self) -> Config:
        return {
            "run": self.run_id,
            p.EPOCH: self.epoch,
            p.PARTICIPANTS: p.texts(self.participants),
            p.GRAPH_SEED: self.graph_seed,
            **{p.PARAMS_PREFIX + k: v for k, v in self.params_config().items()},
        }

    @classmethod
    def from_record(cls, run_id: str, node_id: str, record: Config) -> EpochView:
        params = SecAggParams.from_config(
            {
                k[len(p.PARAMS_PREFIX) :]: v
                for k, v in record.items()
                if k.startswith(p.PARAMS_PREFIX)
            }
        )
        participants = strs(record, p.PARTICIPANTS)
        if node_id not in participants:
            raise SecurityError(f"node {node_id!r} is not among the epoch's participants")
        return cls(
            run_id,
            integer(record, p.EPOCH),
            node_id,
            participants,
            integer(record, p.GRAPH_SEED),
            params,
        )


def strs(record: Config, key: str) -> list[str]:
    """The list of strings ``record[key]`` (ConfigError naming ``key`` otherwise)."""
    value: ConfigValue | None = record.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"secagg field {key!r} must be a list of strings, got {value!r}")
    return [str(v) for v in value]


def hexes(record: Config, key: str) -> list[bytes]:
    try:
        return [bytes.fromhex(v) for v in strs(record, key)]
    except ValueError as exc:
        raise ConfigError(f"secagg field {key!r} must hold hex strings: {exc}") from exc


def integer(record: Config, key: str) -> int:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"secagg field {key!r} must be an int, got {value!r}")
    return value


def pair_seed(base: bytes, context: bytes) -> bytes:
    """The pairwise seed s_uv of one round: HMAC-SHA256 (a PRF) keyed by the epoch's
    ``base`` = HKDF(X25519(sk_u, pk_v)) over the round's ``context``
    (:func:`~consortium.privacy.secagg.protocol.mask_context`: run, epoch, counter), so
    every round has its own and one revealed opens no other (nor ``base``)."""
    return hmac.new(base, context, hashlib.sha256).digest()


def check_round(message: Message, state: Config | None, stages: tuple[int, ...]) -> Config:
    """The node's epoch state, checked to be this run and epoch and at one of ``stages``."""
    meta = message.metadata
    assert message.content is not None
    record = message.content.configs[p.RECORD]
    if (
        state is None
        or state.get("run") != meta.run_id
        or state.get(p.EPOCH) != record.get(p.EPOCH)
    ):
        raise SecurityError(
            f"SecAgg+ {meta.kind!r} task for key epoch {record.get(p.EPOCH)!r} without this "
            "node having advertised keys for it"
        )
    if state.get(p.STAGE) not in stages:
        raise SecurityError(
            f"SecAgg+ {meta.kind!r} task out of order (this node is at stage "
            f"{state.get(p.STAGE)}, the task needs one of {list(stages)}): refused"
        )
    return state


def advertise(message: Message, node_id: str, sign: Sign) -> tuple[Config, Config]:
    """Key setup: (reply record, new state) — fresh keys for a new epoch, signed with its view."""
    assert message.content is not None
    view = EpochView.from_record(
        message.metadata.run_id, node_id, message.content.configs[p.RECORD]
    )
    view.params.check_capacity(len(view.participants), 0)
    enc, msk = KeyPair(), KeyPair()
    signature = sign(node_id, view.signed(node_id, enc.public, msk.public))
    state: Config = {
        **view.to_state(),
        p.STAGE: KEYED,
        p.COUNTER: 0,
        "enc-sk": enc.private.hex(),
        "mask-sk": msk.private.hex(),
    }
    reply: Config = {
        p.STAGE: KEYED,
        p.ENC_KEY: enc.public.hex(),
        p.MASK_KEY: msk.public.hex(),
        p.SIGNATURE: signature.hex(),
    }
    return reply, state


def take_peers(view: EpochView, state: Config, record: Config, verify: Verify) -> Config:
    """The state with the neighbours' keys: checked from ``record`` the first time, and
    afterwards required to be absent or the same (keys never change within an epoch)."""
    if p.PEERS not in record:
        if p.PEERS not in state:
            raise SecurityError("the first masked-input task of a key epoch carries no peer keys")
        return state
    peers = strs(record, p.PEERS)
    enc_keys, mask_keys = hexes(record, p.PEER_ENC_KEYS), hexes(record, p.PEER_MASK_KEYS)
    signatures = hexes(record, p.PEER_SIGNATURES)
    if not len(peers) == len(enc_keys) == len(mask_keys) == len(signatures):
        raise ConfigError("secagg masked-input task: the peer lists differ in length")
    if p.PEERS in state:
        same = (
            strs(state, p.PEERS) == peers
            and hexes(state, p.PEER_ENC_KEYS) == enc_keys
            and hexes(state, p.PEER_MASK_KEYS) == mask_keys
        )
        if not same:
            raise SecurityError("secagg task: a neighbour's keys changed within a key epoch")
        return state
    neighbours = set(view.neighbours)
    if len(set(peers)) != len(peers) or not set(peers) <= neighbours:
        raise SecurityError(
            f"secagg task lists peers {peers} that are not distinct neighbours of "
            f"{view.node_id!r} ({sorted(neighbours)})"
        )
    own = {public_of(bytes.fromhex(str(state[k]))) for k in ("enc-sk", "mask-sk")}
    if len({*enc_keys, *mask_keys} - own) != 2 * len(peers):
        raise SecurityError("secagg task: public keys are repeated (replayed keys)")
    for peer, enc, msk, sig in zip(peers, enc_keys, mask_keys, signatures, strict=True):
        if not verify(peer, view.signed(peer, enc, msk), sig):
            raise SecurityError(
                f"the signature on neighbour {peer}'s keys does not verify: keys "
                "substituted, or the peer saw another epoch (participants, seed, parameters)"
            )
    if len(peers) + 1 < view.threshold:
        raise SecurityError(
            f"only {len(peers) + 1} of this node's share holders (itself included) have keys, "
            f"fewer than the threshold {view.threshold}: refusing to take part"
        )
    enc_sk, mask_sk = (bytes.fromhex(str(state[k])) for k in ("enc-sk", "mask-sk"))
    # the private keys are needed for nothing else: derive each neighbour's keys once for
    # the epoch (a round then costs no key agreement) and let the private keys go
    kept = {k: v for k, v in state.items() if k not in ("enc-sk", "mask-sk")}
    return {
        **kept,
        p.PEERS: p.texts(peers),
        p.PEER_ENC_KEYS: p.texts(k.hex() for k in enc_keys),
        p.PEER_MASK_KEYS: p.texts(k.hex() for k in mask_keys),
        SHARE_KEYS: p.texts(agree(enc_sk, k, SHARE_PURPOSE).hex() for k in enc_keys),
        MAC_KEYS: p.texts(agree(enc_sk, k, MAC_PURPOSE).hex() for k in enc_keys),
        MASK_BASES: p.texts(agree(mask_sk, k, MASK_PURPOSE).hex() for k in mask_keys),
    }


def model_mac(key: bytes, statement: bytes) -> bytes:
    """HMAC-SHA256 of a model statement under a key two neighbours share."""
    return hmac.new(key, statement, hashlib.sha256).digest()


def unmask(message: Message, node_id: str, state: Config) -> tuple[Config, Config]:
    """Reveal, for this round only, survivors' b-shares and the pairwise seeds shared with
    dropped neighbours, never both for one neighbour; nothing if a neighbour trained on
    another model."""
    assert message.content is not None
    meta = message.metadata
    view = EpochView.from_record(meta.run_id, node_id, state)
    record = message.content.configs[p.RECORD]
    counter = integer(record, p.COUNTER)
    if counter != state.get(p.COUNTER) or meta.round != state.get("round"):
        raise SecurityError(
            f"secagg unmask task for counter {counter} of round {meta.round}: this node's "
            f"masked input was for counter {state.get(p.COUNTER)} of round {state.get('round')}"
        )
    survivors, dropped = strs(record, p.SURVIVORS), strs(record, p.DROPPED)
    peers = strs(state, p.PEERS)
    if len(set(survivors)) != len(survivors) or len(set(dropped)) != len(dropped):
        raise SecurityError("secagg unmask task: the survivor or dropout list repeats a node")
    both = set(survivors) & set(dropped)
    if both:
        raise SecurityError(
            f"secagg unmask task asks for both shares of {sorted(both)}: a node is either a "
            "survivor or a dropout, never both; refusing to reveal"
        )
    if node_id not in survivors:
        raise SecurityError(f"secagg unmask task does not count this node {node_id!r} a survivor")
    unlisted = set(peers) - set(survivors) - set(dropped)
    if unlisted:
        raise SecurityError(
            f"secagg unmask task says nothing of {sorted(unlisted)}, whose masks this node added"
        )
    alive = [v for v in peers if v in survivors]
    if len(alive) + 1 < view.threshold:
        raise SecurityError(
            f"only {len(alive) + 1} of this node's share holders survived, fewer than the "
            f"threshold {view.threshold}: refusing to reveal"
        )
    sources, boxes = strs(record, p.SOURCES), hexes(record, p.CIPHERTEXTS)
    macs = hexes(record, p.PEER_MODEL_MACS)
    if sources != alive or not len(sources) == len(boxes) == len(macs):
        raise SecurityError(
            f"secagg unmask task: the b-shares it relays are from {sources}, the surviving "
            f"neighbours are {alive}"
        )
    me = view.point(node_id)
    share_keys, mac_keys = hexes(state, SHARE_KEYS), hexes(state, MAC_KEYS)
    for src, tag in zip(sources, macs, strict=True):
        # the MAC over the statement rebuilt with this node's own model: it verifies only
        # if the neighbour trained the same model in this round
        statement = p.model_statement(
            run_id=view.run_id, epoch=view.epoch, counter=counter, round=meta.round,
            node_id=src, model_hash=str(state[p.MODEL_HASH]),
        )  # fmt: skip
        if not hmac.compare_digest(model_mac(mac_keys[peers.index(src)], statement), tag):
            raise SecurityError(
                f"model inconsistency: neighbour {src} did not vouch for the model this node "
                "trained (another model, or a forged MAC); refusing to reveal"
            )
    seed_shares = [str(state["own-seed-share"])]
    for src, box in zip(sources, boxes, strict=True):
        context = p.share_context(view.run_id, view.epoch, counter, src, node_id)
        point, share = p.unpack_share(decrypt_share(share_keys[peers.index(src)], box, context))
        if point != me:
            raise SecurityError(f"neighbour {src} sent a share for point {point}, not {me}")
        seed_shares.append(share.hex())
    bases = hexes(state, MASK_BASES)
    gone = [v for v in peers if v in dropped]
    context = p.mask_context(view.run_id, view.epoch, counter)
    seeds = [pair_seed(bases[peers.index(v)], context).hex() for v in gone]
    reply: Config = {
        p.STAGE: REVEALED,
        p.SEED_SHARES_OF: p.texts([node_id, *sources]),
        p.SEED_SHARES: p.texts(seed_shares),
        p.PAIR_SEEDS_OF: p.texts(gone),
        p.PAIR_SEEDS: p.texts(seeds),
    }
    # this round's share is spent: the stage refuses a second reveal for the counter
    kept = {k: v for k, v in state.items() if k not in ("own-seed-share", p.MODEL_HASH)}
    return reply, {**kept, p.STAGE: REVEALED}
