"""The node's side of SecAgg+, one function per stage (the mod in
:mod:`~consortium.privacy.secagg.mod` routes tasks here).

Between stages a node keeps its round's secrets in its :class:`NodeState`
(Config record :data:`~consortium.privacy.secagg.protocol.RECORD`), which
stays in the silo; the masked-input stage drops the private keys and the
self-mask seed once they are shared, and the unmask stage drops the shares
once revealed, leaving a marker that refuses a second reveal for the round.
"""

from __future__ import annotations

import hashlib
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
    encrypt_share,
    new_seed,
    public_of,
)
from consortium.privacy.secagg.params import (
    SecAggParams,
    neighbour_count,
    neighbour_graph,
    threshold,
)
from consortium.privacy.secagg.shamir import split

__all__ = ["RoundView", "advertise", "check_stage", "share_keys", "strs", "unmask"]

#: Stages a node has completed, kept in its state.
ADVERTISED, SHARED, MASKED, REVEALED = 1, 2, 3, 4
SHARE_PURPOSE = b"share-encryption"


@dataclass(frozen=True, slots=True)
class RoundView:
    """What a node was told about its round in the advertise stage."""

    run_id: str
    round: int
    node_id: str
    participants: list[str]
    graph_seed: int
    params: SecAggParams
    model_hash: str

    @property
    def neighbours(self) -> list[str]:
        k = neighbour_count(self.params, len(self.participants))
        return neighbour_graph(self.participants, k, self.graph_seed)[self.node_id]

    @property
    def threshold(self) -> int:
        return threshold(self.params, len(self.neighbours) + 1)

    def point(self, node: str) -> int:
        """``node``'s Shamir point: its place among the sorted participants, from 1."""
        return sorted(self.participants).index(node) + 1

    def params_config(self) -> Config:
        return self.params.to_config()

    def signed(self, node: str, enc_key: bytes, mask_key: bytes, model_hash: str) -> bytes:
        return p.advertisement(
            run_id=self.run_id,
            round=self.round,
            node_id=node,
            enc_key=enc_key,
            mask_key=mask_key,
            model_hash=model_hash,
            participants=self.participants,
            graph_seed=self.graph_seed,
            params=self.params_config(),
        )

    def to_state(self) -> Config:
        return {
            "run": self.run_id,
            "round": self.round,
            p.PARTICIPANTS: p.texts(self.participants),
            p.GRAPH_SEED: self.graph_seed,
            p.MODEL_HASH: self.model_hash,
            **{p.PARAMS_PREFIX + k: v for k, v in self.params_config().items()},
        }

    @classmethod
    def from_record(cls, run_id: str, round: int, node_id: str, record: Config) -> RoundView:
        params = SecAggParams.from_config(
            {
                k[len(p.PARAMS_PREFIX) :]: v
                for k, v in record.items()
                if k.startswith(p.PARAMS_PREFIX)
            }
        )
        participants = strs(record, p.PARTICIPANTS)
        if node_id not in participants:
            raise SecurityError(f"node {node_id!r} is not among the round's participants")
        seed = record.get(p.GRAPH_SEED)
        model_hash = record.get(p.MODEL_HASH)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"secagg {p.GRAPH_SEED!r} must be an int, got {seed!r}")
        if not isinstance(model_hash, str) or len(model_hash) != 64:
            raise ConfigError(f"secagg {p.MODEL_HASH!r} must be a SHA-256 hex digest")
        return cls(run_id, round, node_id, participants, seed, params, model_hash)


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


def check_stage(message: Message, state: Config | None, done: int) -> Config:
    """The node's round state, checked to be this run and round, right after stage ``done``."""
    meta = message.metadata
    if state is None or state.get("run") != meta.run_id or state.get("round") != meta.round:
        raise SecurityError(
            f"SecAgg+ {meta.kind!r} task for round {meta.round} without this node having "
            "advertised keys for it"
        )
    if state.get(p.STAGE) != done:
        raise SecurityError(
            f"SecAgg+ {meta.kind!r} task out of order (this node is past stage "
            f"{state.get(p.STAGE)}, the task needs stage {done}): refused"
        )
    return state


def advertise(message: Message, node_id: str, sign: Sign) -> tuple[Config, Config]:
    """Stage 1: (reply record, new state) — fresh keys, signed with the round's view."""
    assert message.content is not None
    meta = message.metadata
    view = RoundView.from_record(
        meta.run_id, meta.round, node_id, message.content.configs[p.RECORD]
    )
    view.params.check_capacity(len(view.participants), 0)
    enc, msk = KeyPair(), KeyPair()
    signature = sign(node_id, view.signed(node_id, enc.public, msk.public, view.model_hash))
    state: Config = {
        **view.to_state(),
        p.STAGE: ADVERTISED,
        "enc-sk": enc.private.hex(),
        "mask-sk": msk.private.hex(),
    }
    reply: Config = {
        p.STAGE: ADVERTISED,
        p.ENC_KEY: enc.public.hex(),
        p.MASK_KEY: msk.public.hex(),
        p.MODEL_HASH: view.model_hash,
        p.SIGNATURE: signature.hex(),
    }
    return reply, state


def share_keys(
    message: Message, node_id: str, state: Config, verify: Verify
) -> tuple[Config, Config]:
    """Stage 2: check the neighbours' signed keys, then share this node's secrets with them."""
    assert message.content is not None
    view = RoundView.from_record(message.metadata.run_id, message.metadata.round, node_id, state)
    record = message.content.configs[p.RECORD]
    peers = strs(record, p.PEERS)
    enc_keys, mask_keys = hexes(record, p.PEER_ENC_KEYS), hexes(record, p.PEER_MASK_KEYS)
    hashes, signatures = strs(record, p.PEER_MODEL_HASHES), hexes(record, p.PEER_SIGNATURES)
    if not len(peers) == len(enc_keys) == len(mask_keys) == len(hashes) == len(signatures):
        raise ConfigError("secagg share-keys task: the peer lists differ in length")
    neighbours = set(view.neighbours)
    if len(set(peers)) != len(peers) or not set(peers) <= neighbours:
        raise SecurityError(
            f"secagg share-keys task lists peers {peers} that are not distinct neighbours of "
            f"{node_id!r} ({sorted(neighbours)})"
        )
    own = {public_of(bytes.fromhex(str(state[k]))) for k in ("enc-sk", "mask-sk")}
    if len({*enc_keys, *mask_keys} - own) != 2 * len(peers):
        raise SecurityError("secagg share-keys task: public keys are repeated (replayed keys)")
    for peer, enc, msk, model, sig in zip(
        peers, enc_keys, mask_keys, hashes, signatures, strict=True
    ):
        if model != view.model_hash:
            raise SecurityError(
                f"model inconsistency: neighbour {peer} received a model with hash "
                f"{model[:16]}..., this node {view.model_hash[:16]}...; refusing the round"
            )
        if not verify(peer, view.signed(peer, enc, msk, model), sig):
            raise SecurityError(
                f"the signature on neighbour {peer}'s keys does not verify: keys "
                "substituted, or the peer saw another round (participants, seed, parameters)"
            )
    holders = [node_id, *peers]
    t = view.threshold
    if len(holders) < t:
        raise SecurityError(
            f"only {len(holders)} of this node's share holders are left, fewer than the "
            f"threshold {t}: refusing to share"
        )
    seed = new_seed()
    mask_sk = bytes.fromhex(str(state["mask-sk"]))
    points = [view.point(h) for h in holders]
    seed_shares, key_shares = split(seed, points, t), split(mask_sk, points, t)
    enc_sk = bytes.fromhex(str(state["enc-sk"]))
    ciphertexts = []
    for peer, enc in zip(peers, enc_keys, strict=True):
        x = view.point(peer)
        sealed = encrypt_share(
            agree(enc_sk, enc, SHARE_PURPOSE),
            p.pack_shares(x, seed_shares[x], key_shares[x]),
            p.share_context(view.run_id, view.round, node_id, peer),
        )
        ciphertexts.append(sealed.hex())
    mine = view.point(node_id)
    state = {
        **state,
        p.STAGE: SHARED,
        "seed": seed.hex(),
        p.PEERS: p.texts(peers),
        p.PEER_ENC_KEYS: p.texts(k.hex() for k in enc_keys),
        p.PEER_MASK_KEYS: p.texts(k.hex() for k in mask_keys),
        "own-seed-share": seed_shares[mine].hex(),
        "own-key-share": key_shares[mine].hex(),
    }
    return {
        p.STAGE: SHARED,
        p.DESTINATIONS: p.texts(peers),
        p.CIPHERTEXTS: p.texts(ciphertexts),
        # a commitment to the seed: the server checks the seed it rebuilds (a wrong share
        # then fails the round instead of skewing the sum); a 256-bit seed's hash hides it
        p.SEED_HASH: hashlib.sha256(seed).hexdigest(),
    }, state


def unmask(message: Message, node_id: str, state: Config) -> tuple[Config, Config]:
    """Stage 4: reveal survivors' seed shares and dropouts' key shares, never both for one."""
    assert message.content is not None
    view = RoundView.from_record(message.metadata.run_id, message.metadata.round, node_id, state)
    record = message.content.configs[p.RECORD]
    survivors, dropped = strs(record, p.SURVIVORS), strs(record, p.DROPPED)
    held = strs(state, p.SOURCES)  # whose shares this node holds (itself first)
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
    unlisted = set(held) - set(survivors) - set(dropped)
    if unlisted:
        raise SecurityError(
            f"secagg unmask task says nothing of {sorted(unlisted)}, whose masks this node added"
        )
    alive = [h for h in held if h in survivors]
    if len(alive) < view.threshold:
        raise SecurityError(
            f"only {len(alive)} of this node's neighbours survived, fewer than the threshold "
            f"{view.threshold}: refusing to reveal"
        )
    seeds, keys = strs(state, p.SEED_SHARES), strs(state, p.KEY_SHARES)
    reply: Config = {
        p.STAGE: REVEALED,
        p.SEED_SHARES_OF: p.texts(h for h in held if h in survivors),
        p.SEED_SHARES: p.texts(s for h, s in zip(held, seeds, strict=True) if h in survivors),
        p.KEY_SHARES_OF: p.texts(h for h in held if h in dropped),
        p.KEY_SHARES: p.texts(s for h, s in zip(held, keys, strict=True) if h in dropped),
    }
    # the shares are spent: keep only the marker that refuses a second reveal
    return reply, {"run": view.run_id, "round": view.round, p.STAGE: REVEALED}
