"""The node side of PSI: the handlers a ClientApp registers with :func:`register_psi`.

A node treats the server as possibly hostile. It checks every field of every
task (session, offsets, sizes, point encodings), blinds each row the server
sends it at most once per session, takes part in at most ``psi-max-sessions``
sessions per run and only ever over the same set of ids, draws its key and
shuffle from ``secrets`` (never from the run seed, which the server knows),
and forgets its key once its part is done. What each check prevents is in
``docs/vertical.md``.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from consortium.client.app import ClientApp, Handler
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError, SecurityError
from consortium.core.message import Content, Message
from consortium.vertical import psi_crypto as crypto
from consortium.vertical.psi_hub import hub_double, hub_finish, hub_match, hub_result
from consortium.vertical.psi_protocol import (
    COUNT,
    HUB,
    KIND_BLIND,
    KIND_DELIVER,
    KIND_HUB_DOUBLE,
    KIND_HUB_FINISH,
    KIND_HUB_MATCH,
    KIND_HUB_RESULT,
    KIND_SEND,
    KIND_START,
    MAX_CHUNK,
    MAX_IDS,
    MAX_SESSIONS,
    NODE_MAX_SESSIONS,
    NODE_SECRET,
    OFFSET,
    PAYLOAD,
    PEERS,
    POINTS,
    ROLE,
    ROLE_HUB,
    ROLE_PARTY,
    SESSION,
    SIZE,
    TAG,
    TOTAL,
)
from consortium.vertical.psi_session import (
    HISTORY_KEY,
    Session,
    finish_session,
    int_field,
    load_session,
    node_int,
    node_threads,
    str_field,
    task_config,
    task_points,
    task_positions,
)
from consortium.vertical.psi_state import (
    PSI_STATE_KEY,
    config_int,
    decode_ids,
    encode_ids,
)

__all__ = ["IdsFn", "psi_handlers", "register_psi"]

log = logging.getLogger("consortium.vertical.psi")

#: Returns a node's identifiers (one per data row, in row order) for a PSI session.
IdsFn = Callable[[Context], Sequence[str]]


def register_psi(app: ClientApp, ids_fn: IdsFn) -> ClientApp:
    """Register the PSI handlers on ``app``; ``ids_fn(context)`` gives this node's ids.

    ``ids_fn`` returns one string per data row, in row order, the same on every
    call within a run (it may read them from the node's data path in
    ``context.node_config``). Ids are compared byte for byte: normalise them
    (case, spaces, leading zeros) in ``ids_fn``. A repeated id counts once: its
    first row is the one aligned. Returns ``app``.
    """
    for kind, handler in psi_handlers(ids_fn).items():
        app.handler(kind)(handler)
    return app


def psi_handlers(ids_fn: IdsFn) -> dict[str, Handler]:
    """The PSI handlers by message kind, for apps that route messages themselves."""

    def start(msg: Message, ctx: Context) -> Message:
        return _start(msg, ctx, ids_fn)

    return {
        KIND_START: start,
        KIND_SEND: _send,
        KIND_BLIND: _blind,
        KIND_HUB_DOUBLE: hub_double,
        KIND_HUB_MATCH: hub_match,
        KIND_HUB_FINISH: hub_finish,
        KIND_HUB_RESULT: hub_result,
        KIND_DELIVER: _deliver,
    }


# -- every party ------------------------------------------------------------------------------
def _start(msg: Message, ctx: Context, ids_fn: IdsFn) -> Message:
    cfg = task_config(msg)
    session = str_field(cfg, SESSION)
    role = str_field(cfg, ROLE)
    if role not in (ROLE_HUB, ROLE_PARTY):
        raise SecurityError(f"PSI task field {ROLE!r} must be {ROLE_HUB!r} or {ROLE_PARTY!r}")
    hub = str_field(cfg, HUB)
    peers: list[str] = []
    if role == ROLE_HUB:
        raw = cfg.get(PEERS)
        if not isinstance(raw, list) or not raw or not all(isinstance(p, str) for p in raw):
            raise SecurityError(f"PSI task field {PEERS!r} must be a non-empty list of node ids")
        peers = [str(p) for p in raw]
        if len(set(peers)) != len(peers) or hub in peers:
            raise SecurityError(f"PSI task field {PEERS!r} repeats a party: {peers!r}")
    ids, rows, duplicates = _read_ids(ids_fn, ctx)
    _admit(ctx, session, ids)
    Session.drop(ctx.state)
    ctx.state.arrays.pop(PSI_STATE_KEY, None)  # an earlier result is not this session's
    ctx.state.configs.pop(PSI_STATE_KEY, None)
    # the order this node sends its points in: a secret shuffle, so positions say nothing
    order = np.random.default_rng(secrets.randbits(128)).permutation(len(ids)).astype(np.int64)
    blob, ends = encode_ids(ids)
    secret = ctx.node_config.get(NODE_SECRET, "")
    if not isinstance(secret, str):
        raise ConfigError(
            f"node config {NODE_SECRET!r} must be a string, got a {type(secret).__name__} "
            f"(one that reads as a number needs TOML quotes: --config '{NODE_SECRET}=\"...\"')"
        )
    hkey = crypto.hash_key(msg.metadata.run_id, session, secret)
    tagging = {}  # with a shared secret: the key of the result tag
    if secret:
        tkey = crypto.tag_key(msg.metadata.run_id, session, secret)
        tagging["tkey"] = np.frombuffer(tkey, dtype=np.uint8).copy()
    arrays = {
        "key": np.frombuffer(crypto.new_key(), dtype=np.uint8).copy(),
        "hkey": np.frombuffer(hkey, dtype=np.uint8).copy(),
        **tagging,
        "order": order,
        "rows": rows,
        "ids-utf8": blob,
        "ids-ends": ends,
    }
    config = {
        "session": session,
        "role": role,
        "hub": hub,
        "peers": list(peers),
        "size": len(ids),
        "duplicates": duplicates,
        "input-size": len(ids) + duplicates,
    }
    Session(arrays, config).save(ctx.state)  # type: ignore[arg-type]
    log.info("PSI session %s: %d ids (%d repeated dropped), role %s", session, len(ids),
             duplicates, role)  # fmt: skip
    return msg.reply(config={SIZE: len(ids)})


def _read_ids(ids_fn: IdsFn, ctx: Context) -> tuple[list[str], NDArray[np.int64], int]:
    """The node's ids without repeats (first row kept), their rows, and the repeats dropped."""
    given = ids_fn(ctx)
    if isinstance(given, str | bytes):
        raise ConfigError("ids_fn must return a sequence of strings, not one string")
    first: dict[str, int] = {}
    for row, value in enumerate(given):
        if not isinstance(value, str):
            raise ConfigError(f"ids_fn returned a {type(value).__name__} at row {row}: ids are str")
        first.setdefault(value, row)
        if len(first) > MAX_IDS:
            raise ConfigError(f"ids_fn returned more than {MAX_IDS} ids")
    total = len(given)
    return list(first), np.fromiter(first.values(), np.int64, len(first)), total - len(first)


def _admit(ctx: Context, session: str, ids: list[str]) -> None:
    """Refuse a session past the node's limit per run, or over another set of ids than an
    earlier session of this run (two sessions over different sets let the server difference
    them)."""
    history = dict(ctx.state.configs.get(HISTORY_KEY, {}))
    digest = hashlib.sha256(b"\0".join(s.encode() for s in sorted(ids))).hexdigest()
    limit = node_int(ctx.node_config, NODE_MAX_SESSIONS, MAX_SESSIONS)
    count = config_int(history.get("sessions", 0))
    if count >= limit:
        raise SecurityError(
            f"this node already took part in {count} PSI sessions in this run, its limit "
            f"({NODE_MAX_SESSIONS} = {limit}): session {session!r} refused"
        )
    if history.get("input-sha256", digest) != digest:
        raise SecurityError(
            f"PSI session {session!r} refused: an earlier session of this run used another set "
            "of ids, and two sessions over different sets would tell the server their difference"
        )
    ctx.state.configs[HISTORY_KEY] = {"sessions": count + 1, "input-sha256": digest}


def _send(msg: Message, ctx: Context) -> Message:
    cfg = task_config(msg)
    s = Session.load(ctx.state, cfg)
    offset = int_field(cfg, OFFSET, low=0, high=s.size)
    count = int_field(cfg, COUNT, low=0, high=min(MAX_CHUNK, s.size - offset))
    ids = decode_ids(s.arrays["ids-utf8"], s.arrays["ids-ends"])
    chosen = [ids[i] for i in s.arrays["order"][offset : offset + count].tolist()]
    points = crypto.hash_and_blind(
        chosen, bytes(s.arrays["hkey"]), s.key, threads=node_threads(ctx)
    )
    return msg.reply(Content(arrays={PAYLOAD: Arrays({POINTS: points})}))


# -- a party that is not the hub ----------------------------------------------------------------
def _blind(msg: Message, ctx: Context) -> Message:
    cfg = task_config(msg)
    s = load_session(ctx, cfg, ROLE_PARTY)
    points = task_points(msg)
    total = int_field(cfg, TOTAL, low=0, high=MAX_IDS)
    offset = int_field(cfg, OFFSET, low=0, high=total)
    s.mark("blind", total, offset, len(points), "PSI blind")
    blinded = crypto.blind(points, s.key, what="PSI blind", threads=node_threads(ctx))
    s.save(ctx.state)
    return msg.reply(Content(arrays={PAYLOAD: Arrays({POINTS: blinded})}))


def _deliver(msg: Message, ctx: Context) -> Message:
    cfg = task_config(msg)
    s = load_session(ctx, cfg, ROLE_PARTY)
    total = int_field(cfg, TOTAL, low=0, high=s.size)
    offset = int_field(cfg, OFFSET, low=0, high=total)
    positions = task_positions(msg, s.size)
    done = s.mark("deliver", total, offset, len(positions), "PSI deliver")
    got = s.arrays.get("deliver", np.full(total, -1, dtype=np.int64)).copy()
    got[offset : offset + len(positions)] = positions
    s.arrays["deliver"] = got
    if not done:
        s.save(ctx.state)
        return msg.reply(config={SIZE: -1})
    if len(np.unique(got)) != len(got):
        raise SecurityError("PSI deliver: a position is repeated: refused")
    tag = cfg.get(TAG, "")
    finish_session(ctx, s, got, expect_tag=tag if isinstance(tag, str) else "")
    return msg.reply(config={SIZE: int(total)})
