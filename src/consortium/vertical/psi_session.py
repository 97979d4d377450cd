"""A node's working state during one PSI session, kept in ``context.state`` between tasks.

It holds the node's secret key, its secret shuffle and its ids (all of which
stay on the node), plus what the protocol has received so far: which rows the
server already had it blind, and (on the hub) the digests of its own points as
each peer blinded them and the matches found. Between tasks it lives where the
node's state lives (the simulation engine; the run's app process and its
``state.bin`` in deployment).

Records are replaced, never changed in place: the simulation hands a task a
shallow copy of the node's state, and a task that raises must leave the kept
state as it was (the engine and the app process drop a failed task's state).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from consortium.core.arrays import Arrays
from consortium.core.context import Context, NodeState
from consortium.core.errors import ConfigError, SecurityError
from consortium.core.message import Message
from consortium.core.records import Config
from consortium.vertical import psi_crypto as crypto
from consortium.vertical.psi_protocol import (
    MAX_CHUNK,
    NODE_THREADS,
    PAYLOAD,
    PEER,
    POINTS,
    POSITIONS,
    SESSION,
)
from consortium.vertical.psi_state import config_int, decode_ids, store_result

log = logging.getLogger("consortium.vertical.psi")

#: the key of the working session in ``context.state`` (arrays and configs)
SESSION_KEY = "consortium.psi.session"
#: the key of what the node remembers of its sessions in this run (count, input digest)
HISTORY_KEY = "consortium.psi.history"


class Session:
    """The working state of the node's current session, loaded from and saved to a
    :class:`NodeState`."""

    def __init__(self, arrays: dict[str, NDArray[Any]], config: Config) -> None:
        self.arrays = arrays
        self.config = config

    # -- state ---------------------------------------------------------------------
    @classmethod
    def load(cls, state: NodeState, task: Config) -> Session:
        """The session ``task`` belongs to; raises :class:`SecurityError` if the node has no
        session of that id running (a task from another or an ended session)."""
        config = state.configs.get(SESSION_KEY)
        arrays = state.arrays.get(SESSION_KEY)
        asked = task.get(SESSION)
        if config is None or arrays is None or config.get("session") != asked:
            raise SecurityError(f"PSI task for session {asked!r}, which is not running here")
        return cls(dict(arrays.items()), dict(config))

    def save(self, state: NodeState) -> None:
        state.arrays[SESSION_KEY] = Arrays(self.arrays)
        state.configs[SESSION_KEY] = dict(self.config)

    @staticmethod
    def drop(state: NodeState) -> None:
        """Forget the working session (its key first of all)."""
        state.arrays.pop(SESSION_KEY, None)
        state.configs.pop(SESSION_KEY, None)

    # -- fields ----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.config["session"])

    @property
    def role(self) -> str:
        return str(self.config["role"])

    @property
    def size(self) -> int:
        return config_int(self.config["size"])

    @property
    def key(self) -> bytes:
        if "key" not in self.arrays:
            raise SecurityError(f"PSI session {self.name!r}: this node's key is already gone")
        return bytes(self.arrays["key"])

    def peers(self) -> list[str]:
        value = self.config.get("peers", [])
        return [str(p) for p in value] if isinstance(value, list) else []

    def mark(self, name: str, total: int, offset: int, count: int, what: str) -> bool:
        """Mark rows ``[offset, offset + count)`` of the ``total`` rows of stream ``name`` as
        received; True once every row is. The first call fixes ``total``; a later one with
        another total, or rows already received, is refused: the server may ask each row once.
        """
        seen = self.arrays.get(f"seen.{name}")
        if seen is None:
            seen = np.zeros(total, dtype=np.bool_)
            self.config[f"total.{name}"] = total
        elif config_int(self.config[f"total.{name}"]) != total:
            raise SecurityError(
                f"{what}: the server said {total} rows, earlier {self.config[f'total.{name}']}"
            )
        if offset + count > total:
            raise SecurityError(f"{what}: rows {offset}..{offset + count} run past {total}")
        if seen[offset : offset + count].any():
            raise SecurityError(f"{what}: rows from {offset} were already received: refused")
        seen = seen.copy()
        seen[offset : offset + count] = True
        self.arrays[f"seen.{name}"] = seen
        return bool(seen.all())

    def complete(self, name: str) -> bool:
        """True once every row of stream ``name`` was received (an empty stream: once marked)."""
        seen = self.arrays.get(f"seen.{name}")
        return seen is not None and bool(seen.all())


def int_field(config: Mapping[str, Any], key: str, *, low: int, high: int) -> int:
    """``config[key]`` as an int in ``[low, high]``; raises naming the field otherwise."""
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SecurityError(
            f"PSI task field {key!r} must be an int in [{low}, {high}], got {value!r}"
        )
    return value


def str_field(config: Mapping[str, Any], key: str) -> str:
    """``config[key]`` as a non-empty string of at most 256 characters."""
    value = config.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= 256:
        raise SecurityError(f"PSI task field {key!r} must be a non-empty string, got {value!r}")
    return value


def chunk_rows(count: int) -> None:
    """Refuse a chunk larger than :data:`MAX_CHUNK` rows."""
    if count > MAX_CHUNK:
        raise SecurityError(f"a PSI chunk of {count} rows is over the limit of {MAX_CHUNK}")


def node_int(node_config: Config, key: str, default: int) -> int:
    """A positive int from the node's own config (its silo's setting), or ``default``."""
    value = node_config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"node config {key!r} must be a positive integer, got {value!r}")
    return value


# -- reading a task, ending a session ------------------------------------------------------
def finish_session(
    ctx: Context,
    s: Session,
    positions: NDArray[np.int64],
    *,
    keep_session: bool = False,
    expect_tag: str | None = None,
) -> str:
    """Keep the result: the rows at ``positions`` of this node's sent order, sorted by id.

    With a shared secret, the result's tag (:func:`~consortium.vertical.psi_crypto.result_tag`)
    is returned, and a result whose tag differs from ``expect_tag`` (the hub's) is refused
    before it is kept: the server changed what it relayed. Without one, "" is returned."""
    ids = decode_ids(s.arrays["ids-utf8"], s.arrays["ids-ends"])
    chosen = s.arrays["order"][positions]
    shared = sorted(zip((ids[i] for i in chosen.tolist()), chosen.tolist(), strict=True))
    aligned = [i for i, _ in shared]
    tag = crypto.result_tag(bytes(s.arrays["tkey"]), aligned) if "tkey" in s.arrays else ""
    if tag and expect_tag is not None and not hmac.compare_digest(tag, expect_tag):
        raise SecurityError(
            f"PSI session {s.name!r}: the aligned ids differ from the hub's (their tags do not "
            "match): the relayed result was altered, or the parties' psi-secret differs"
        )
    rows = s.arrays["rows"][np.asarray([i for _, i in shared], dtype=np.int64)]
    store_result(
        ctx.state, s.name, aligned, rows.astype(np.int64),
        config_int(s.config["input-size"]), config_int(s.config["duplicates"]),
    )  # fmt: skip
    if keep_session:
        s.save(ctx.state)
    else:
        s.drop(ctx.state)
    log.info("PSI session %s: %d shared rows", s.name, len(shared))
    return tag


def task_config(msg: Message) -> Config:
    """The task's config record (a copy)."""
    if msg.content is None:
        raise SecurityError("a PSI task without content")
    return dict(msg.content.config)


def load_session(ctx: Context, cfg: Config, role: str) -> Session:
    """The running session the task names, if this node plays ``role`` in it."""
    s = Session.load(ctx.state, cfg)
    if s.role != role:
        raise SecurityError(f"a {role} PSI task sent to the session's {s.role}")
    return s


def task_peer(s: Session, cfg: Config) -> str:
    """The peer the task names, one of the session's."""
    peer = str_field(cfg, PEER)
    if peer not in s.peers():
        raise SecurityError(f"PSI task names {peer!r}, not a party of session {s.name!r}")
    return peer


def task_points(msg: Message) -> NDArray[np.uint8]:
    """The task's points, checked for type, shape and chunk size (not yet for validity)."""
    assert msg.content is not None
    record = msg.content.arrays.get(PAYLOAD)
    if record is None or POINTS not in record:
        raise SecurityError(f"a PSI task without its {PAYLOAD}/{POINTS} array")
    points = record[POINTS]
    crypto.check_points(points, what="PSI task")
    chunk_rows(len(points))
    return points


def task_positions(msg: Message, size: int) -> NDArray[np.int64]:
    """The task's positions, each a row of this node's ``size``."""
    assert msg.content is not None
    record = msg.content.arrays.get(PAYLOAD)
    if record is None or POSITIONS not in record:
        raise SecurityError(f"a PSI task without its {PAYLOAD}/{POSITIONS} array")
    got = record[POSITIONS]
    if got.dtype != np.int64 or got.ndim != 1:
        raise SecurityError("PSI positions must be a 1-d int64 array")
    chunk_rows(len(got))
    if len(got) and (got.min() < 0 or got.max() >= size):
        raise SecurityError(f"PSI positions outside this node's {size} rows: refused")
    return np.asarray(got, dtype=np.int64)


def node_threads(ctx: Context) -> int:
    """Threads this node blinds with (its own ``psi-threads``)."""
    return node_int(ctx.node_config, NODE_THREADS, 1)
