"""Stage 3 on the node: take the neighbours' shares, train, and send only a masked vector.

The vector (:func:`~consortium.privacy.secagg.quantize.encode`) gets the
node's self mask PRG(b_u) and, for each neighbour v that shared keys, the
pairwise mask ±PRG(s_uv) (+ when u's Shamir point is below v's, − above), all
mod M. Pairwise masks of two survivors cancel in the sum; the server removes
the rest with the secrets the unmask stage reveals.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from consortium.client.app import Handler
from consortium.client.mods import check_comparable
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError, SecurityError
from consortium.core.message import Content, Message
from consortium.core.protocol import NUM_EXAMPLES
from consortium.core.records import Config
from consortium.privacy.dp.distributed import noise_share
from consortium.privacy.secagg import protocol as p
from consortium.privacy.secagg.crypto import agree, decrypt_share, mask, model_digest
from consortium.privacy.secagg.node import (
    MASKED,
    SHARE_PURPOSE,
    RoundView,
    hexes,
    strs,
)
from consortium.privacy.secagg.quantize import HEADER, encode

__all__ = ["masked_input", "pairwise_mask", "update_vector"]

MASK_PURPOSE = b"pairwise-mask"


def pairwise_mask(
    own_sk: bytes, peer_pk: bytes, own_point: int, peer_point: int, size: int, bits: int
) -> NDArray[np.uint64]:
    """The pairwise mask the owner of ``own_sk`` adds for its peer: ±PRG(s_uv) mod 2^bits."""
    values = mask(agree(own_sk, peer_pk, MASK_PURPOSE), size, bits)
    if own_point > peer_point:
        values = np.negative(values)  # wraps mod 2^64, hence mod 2^bits
    return values


def update_vector(received: Arrays, trained: Arrays) -> np.ndarray:
    """The update y - x of every array, flattened into one float64 vector."""
    check_comparable(received, trained, "SecAgg+")
    parts = [
        (np.asarray(trained[n], np.float64) - np.asarray(received[n], np.float64)).ravel()
        for n in received
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def masked_input(
    message: Message, context: Context, state: Config, call_next: Handler
) -> tuple[Message, Config]:
    """Stage 3: (the masked reply, the new state)."""
    assert message.content is not None
    meta, node_id = message.metadata, context.node_id
    view = RoundView.from_record(meta.run_id, meta.round, node_id, state)
    record = message.content.configs[p.RECORD]
    sources, sealed = strs(record, p.SOURCES), hexes(record, p.CIPHERTEXTS)
    peers = strs(state, p.PEERS)
    if len(sources) != len(sealed) or len(set(sources)) != len(sources):
        raise ConfigError("secagg masked-input task: sources and ciphertexts do not pair up")
    if not set(sources) <= set(peers):
        raise SecurityError(f"secagg masked-input task: shares from non-neighbours {sources}")
    if len(sources) + 1 < view.threshold:
        raise SecurityError(
            f"only {len(sources) + 1} of this node's share holders (itself included) are "
            f"left, fewer than the threshold {view.threshold}: refusing to send a masked input"
        )
    seed_shares, key_shares = _open_shares(view, state, sources, sealed)

    received = message.content.model
    if received is None:
        raise ConfigError("secagg masked-input task carries no model")
    if model_digest(received) != view.model_hash:
        raise SecurityError(
            "model inconsistency: this task's model is not the one whose hash this node "
            "advertised; refusing to train on it"
        )
    inner = Content(
        arrays=dict(message.content.arrays),
        configs={k: v for k, v in message.content.configs.items() if k != p.RECORD},
        metrics=dict(message.content.metrics),
    )
    reply = call_next(Message(message.metadata, content=inner), context)
    if reply.content is None or reply.content.model is None:
        raise ConfigError("the train handler's reply carries no model to aggregate securely")
    update = update_vector(received, reply.content.model)
    count = reply.content.metric_values.get(NUM_EXAMPLES)
    if isinstance(count, float) and count.is_integer():
        count = int(count)
    if not isinstance(count, int) or isinstance(count, bool):
        raise ConfigError(f"the train reply's {NUM_EXAMPLES!r} must be an int, got {count!r}")
    params, bits = view.params, view.params.modulus_bits
    params.check_capacity(len(view.participants), HEADER + update.size)
    vector = encode(update, count, params, context.rng(meta.round, stream="secagg-rounding"))
    if params.noise_stddev > 0:  # distributed DP: this node's share of the sum's noise
        share = noise_share((update.size,), params.noise_stddev, len(view.participants))
        vector[HEADER:] += share.astype(np.uint64)  # two's complement: adds mod 2^64
    vector += mask(bytes.fromhex(str(state["seed"])), vector.size, bits)
    msk, mask_keys = bytes.fromhex(str(state["mask-sk"])), hexes(state, p.PEER_MASK_KEYS)
    me = view.point(node_id)
    for src in sources:
        peer_pk = mask_keys[peers.index(src)]
        vector += pairwise_mask(msk, peer_pk, me, view.point(src), vector.size, bits)
    if bits < 64:
        vector &= np.uint64((1 << bits) - 1)
    out = Message(
        reply.metadata,
        content=Content(
            arrays={p.MASKED: Arrays({p.MASKED: vector})}, configs={p.RECORD: {p.STAGE: MASKED}}
        ),
    )
    # the private keys and the seed are shared now: they leave the node's state
    kept = {k: v for k, v in state.items() if k not in ("enc-sk", "mask-sk", "seed")}
    kept.update(
        {
            p.STAGE: MASKED,
            p.SOURCES: p.texts([node_id, *sources]),
            p.SEED_SHARES: p.texts(seed_shares),
            p.KEY_SHARES: p.texts(key_shares),
        }
    )
    return out, kept


def _open_shares(
    view: RoundView, state: Config, sources: list[str], sealed: list[bytes]
) -> tuple[list[str], list[str]]:
    """This node's shares of its own and each source's secrets (hex), in that order:
    decrypted, authenticated as sent by that source to this node for this round."""
    peers, enc_keys = strs(state, p.PEERS), hexes(state, p.PEER_ENC_KEYS)
    enc_sk, me = bytes.fromhex(str(state["enc-sk"])), view.point(view.node_id)
    seed_shares, key_shares = [str(state["own-seed-share"])], [str(state["own-key-share"])]
    for src, box in zip(sources, sealed, strict=True):
        key = agree(enc_sk, enc_keys[peers.index(src)], SHARE_PURPOSE)
        context = p.share_context(view.run_id, view.round, src, view.node_id)
        point, seed_share, key_share = p.unpack_shares(decrypt_share(key, box, context))
        if point != me:
            raise SecurityError(f"neighbour {src} sent a share for point {point}, not {me}")
        seed_shares.append(seed_share.hex())
        key_shares.append(key_share.hex())
    return seed_shares, key_shares
