"""The hub's side of PSI: it matches every peer's set against its own and hands out the result.

The hub (in vertical learning, the label holder) receives its own points as
each peer blinded them (kept as 8-byte digests), then each peer's points, which
it blinds and matches; at the end it keeps its shared rows and, for each peer,
the positions of that peer's shared rows in the peer's shuffled order. Its
doubly blinded points never leave it, and its answers carry no counts, so the
server learns no pairwise overlap.
"""

from __future__ import annotations

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import SecurityError
from consortium.core.message import Content, Message
from consortium.vertical import psi_crypto as crypto
from consortium.vertical.psi_protocol import (
    COUNT,
    MAX_CHUNK,
    MAX_IDS,
    OFFSET,
    PAYLOAD,
    POSITIONS,
    ROLE_HUB,
    SIZE,
    TAG,
    TOTAL,
)
from consortium.vertical.psi_session import (
    finish_session,
    int_field,
    load_session,
    node_threads,
    task_config,
    task_peer,
    task_points,
)

__all__ = ["hub_double", "hub_finish", "hub_match", "hub_result"]


def hub_double(msg: Message, ctx: Context) -> Message:
    """Keep a chunk of the hub's own points as a peer blinded them (their digests)."""
    cfg = task_config(msg)
    s = load_session(ctx, cfg, ROLE_HUB)
    peer = task_peer(s, cfg)
    points = task_points(msg)  # compared only, never multiplied: shape checks suffice
    offset = int_field(cfg, OFFSET, low=0, high=s.size)
    done = s.mark(f"double.{peer}", s.size, offset, len(points), "PSI hub double")
    digests = s.arrays.get(f"double.{peer}", np.zeros(s.size, dtype=np.uint64)).copy()
    digests[offset : offset + len(points)] = crypto.digests(points)
    if done and len(np.unique(digests)) != len(digests):
        raise SecurityError(f"PSI hub double: peer {peer!r} gave two rows the same point")
    s.arrays[f"double.{peer}"] = digests
    s.save(ctx.state)
    return msg.reply(config={SIZE: s.size})


def hub_match(msg: Message, ctx: Context) -> Message:
    """Blind a chunk of a peer's points and note which of the hub's rows they match."""
    cfg = task_config(msg)
    s = load_session(ctx, cfg, ROLE_HUB)
    peer = task_peer(s, cfg)
    if not s.complete(f"double.{peer}"):
        raise SecurityError(f"PSI hub match for {peer!r} before its blinding of the hub's set")
    points = task_points(msg)
    total = int_field(cfg, TOTAL, low=0, high=MAX_IDS)
    offset = int_field(cfg, OFFSET, low=0, high=total)
    s.mark(f"match.{peer}", total, offset, len(points), "PSI hub match")
    mine = s.arrays[f"double.{peer}"]
    theirs = crypto.digests(
        crypto.blind(points, s.key, what="PSI hub match", threads=node_threads(ctx))
    )
    by_digest = np.argsort(mine)
    at = np.searchsorted(mine, theirs, sorter=by_digest).clip(0, max(len(mine) - 1, 0))
    hit = mine[by_digest[at]] == theirs if len(mine) else np.zeros(len(theirs), np.bool_)
    hub_pos = np.concatenate(
        [s.arrays.get(f"hub.{peer}", np.zeros(0, np.int64)), by_digest[at[hit]]]
    )
    peer_pos = np.concatenate(
        [s.arrays.get(f"peer.{peer}", np.zeros(0, np.int64)), offset + np.flatnonzero(hit)]
    )
    if len(np.unique(hub_pos)) != len(hub_pos):
        raise SecurityError(f"PSI hub match: two of {peer!r}'s rows hold the same point")
    s.arrays[f"hub.{peer}"] = hub_pos.astype(np.int64)
    s.arrays[f"peer.{peer}"] = peer_pos.astype(np.int64)
    s.save(ctx.state)
    return msg.reply(config={})  # how many matched stays here: the server learns no pairwise size


def hub_finish(msg: Message, ctx: Context) -> Message:
    """Keep the rows every peer matched; prepare each peer's positions; forget the key."""
    cfg = task_config(msg)
    s = load_session(ctx, cfg, ROLE_HUB)
    peers = s.peers()
    for peer in peers:
        if not s.complete(f"match.{peer}"):
            raise SecurityError(f"PSI hub finish before every row of {peer!r} was matched")
    shared = np.arange(s.size, dtype=np.int64)
    for peer in peers:
        shared = np.intersect1d(shared, s.arrays[f"hub.{peer}"], assume_unique=True)
    for peer in peers:  # the positions, in the peer's sent order, of the shared rows
        keep = np.isin(s.arrays[f"hub.{peer}"], shared, assume_unique=True)
        s.arrays[f"result.{peer}"] = np.sort(s.arrays[f"peer.{peer}"][keep])
    s.arrays.pop("key")  # no more blinding in this session
    # with no shared row there is no result to hand out: the session ends here
    tag = finish_session(ctx, s, shared, keep_session=len(shared) > 0)
    return msg.reply(config={SIZE: len(shared), TAG: tag})


def hub_result(msg: Message, ctx: Context) -> Message:
    """A chunk of a peer's shared positions (in the peer's shuffled order, ascending)."""
    cfg = task_config(msg)
    s = load_session(ctx, cfg, ROLE_HUB)
    peer = task_peer(s, cfg)
    result = s.arrays.get(f"result.{peer}")
    if result is None:
        raise SecurityError("PSI hub result asked before the hub finished")
    offset = int_field(cfg, OFFSET, low=0, high=len(result))
    count = int_field(cfg, COUNT, low=0, high=min(MAX_CHUNK, len(result) - offset))
    chunk = result[offset : offset + count].copy()
    if count:
        s.mark(f"result.{peer}", len(result), offset, count, "PSI hub result")
    if all(len(s.arrays[f"result.{p}"]) == 0 or s.complete(f"result.{p}") for p in s.peers()):
        s.drop(ctx.state)  # every peer has its part: nothing of the session is needed any more
    else:
        s.save(ctx.state)
    return msg.reply(
        Content(
            arrays={PAYLOAD: Arrays({POSITIONS: chunk})}, configs={"config": {TOTAL: len(result)}}
        )
    )
