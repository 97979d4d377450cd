"""The masked input on the node: train, then send only a masked vector and what the
server needs to unmask the sum.

The vector (:func:`~consortium.privacy.secagg.quantize.encode`) gets the
node's fresh self mask PRG(b_u) and, for each neighbour v of the key epoch, the
pairwise mask ±PRG(s_uv) of this round (+ when u's Shamir point is below v's,
− above), all mod M. Pairwise masks of two survivors cancel in the sum; the
server removes the rest with what the unmask stage reveals. The same reply
carries b_u's Shamir shares, each encrypted to its holder: they are needed
exactly when this vector arrived, which is when they arrive too.
"""

from __future__ import annotations

import hashlib

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
from consortium.privacy.secagg.crypto import (
    Verify,
    encrypt_share,
    mask,
    model_digest,
    new_seed,
)
from consortium.privacy.secagg.node import (
    MAC_KEYS,
    MASK_BASES,
    MASKED,
    SHARE_KEYS,
    EpochView,
    hexes,
    integer,
    model_mac,
    pair_seed,
    strs,
    take_peers,
)
from consortium.privacy.secagg.quantize import HEADER, encode
from consortium.privacy.secagg.shamir import split

__all__ = ["masked_input", "pairwise_mask", "update_vector"]


def pairwise_mask(
    seed: bytes, own_point: int, peer_point: int, size: int, bits: int
) -> NDArray[np.uint64]:
    """The pairwise mask the node at ``own_point`` adds for its peer: ±PRG(s_uv) mod 2^bits."""
    values = mask(seed, size, bits)
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
    message: Message,
    context: Context,
    state: Config,
    call_next: Handler,
    verify: Verify,
) -> tuple[Message, Config]:
    """One round's masked input: (the masked reply, the new state)."""
    assert message.content is not None
    meta, node_id = message.metadata, context.node_id
    view = EpochView.from_record(meta.run_id, node_id, state)
    record = message.content.configs[p.RECORD]
    counter = integer(record, p.COUNTER)
    last = integer(state, p.COUNTER)
    if counter <= last:
        # one counter, one set of pairwise masks: a second masked input under them would
        # let the difference of two updates out
        raise SecurityError(
            f"secagg masked-input task with counter {counter}: this node already masked "
            f"with counter {last} in this key epoch; refused (masks are never reused)"
        )
    state = take_peers(view, state, record, verify)
    peers = strs(state, p.PEERS)
    received = message.content.model
    if received is None:
        raise ConfigError("secagg masked-input task carries no model")
    model_hash = model_digest(received)
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
    seed = new_seed()  # b_u: fresh every round
    vector += mask(seed, vector.size, bits)
    me = view.point(node_id)
    pair_hashes = []
    seeds_of = p.mask_context(view.run_id, view.epoch, counter)
    for peer, base in zip(peers, hexes(state, MASK_BASES), strict=True):
        s = pair_seed(base, seeds_of)
        vector += pairwise_mask(s, me, view.point(peer), vector.size, bits)
        pair_hashes.append(hashlib.sha256(s).hexdigest())
    if bits < 64:
        vector &= np.uint64((1 << bits) - 1)
    shares = split(seed, [view.point(h) for h in [node_id, *peers]], view.threshold)
    share_keys, mac_keys = hexes(state, SHARE_KEYS), hexes(state, MAC_KEYS)
    statement = p.model_statement(
        run_id=view.run_id, epoch=view.epoch, counter=counter, round=meta.round,
        node_id=node_id, model_hash=model_hash,
    )  # fmt: skip
    boxes, macs = [], []
    for peer, share_key, mac_key in zip(peers, share_keys, mac_keys, strict=True):
        x = view.point(peer)
        sealed = encrypt_share(
            share_key,
            p.pack_share(x, shares[x]),
            p.share_context(view.run_id, view.epoch, counter, node_id, peer),
        )
        boxes.append(sealed.hex())
        macs.append(model_mac(mac_key, statement).hex())
    out_record: Config = {
        p.STAGE: MASKED,
        p.COUNTER: counter,
        p.DESTINATIONS: p.texts(peers),
        p.CIPHERTEXTS: p.texts(boxes),
        # commitments: the server checks what it rebuilds or is given against them, so a
        # wrong share or seed fails the round instead of skewing the sum; the hash of a
        # 256-bit secret hides it
        p.SEED_HASH: hashlib.sha256(seed).hexdigest(),
        p.PAIR_HASHES: p.texts(pair_hashes),
        p.MODEL_MACS: p.texts(macs),
    }
    out = Message(
        reply.metadata,
        content=Content(
            arrays={p.MASKED: Arrays({p.MASKED: vector})}, configs={p.RECORD: out_record}
        ),
    )
    kept: Config = {
        **state,
        p.STAGE: MASKED,
        p.COUNTER: counter,
        "round": meta.round,
        "own-seed-share": shares[me].hex(),
        p.MODEL_HASH: model_hash,
    }
    return out, kept
