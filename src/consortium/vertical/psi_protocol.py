"""The PSI protocol's wire vocabulary: message kinds, record names, config keys, limits.

One home for the names both sides use, so the server function
(:mod:`consortium.vertical.psi_server`) and the node handlers
(:mod:`consortium.vertical.psi_node`) cannot drift apart. The protocol itself is
described in ``docs/vertical.md`` and in :mod:`consortium.vertical`.
"""

from __future__ import annotations

from typing import Final

#: Bytes of one encoded group element (an Edwards25519 point of the prime-order subgroup).
POINT_BYTES: Final = 32

# -- message kinds (the handlers :func:`~consortium.vertical.register_psi` adds) ---------
#: every party: read its ids, draw a fresh secret key and a secret shuffle (reply: its size)
KIND_START: Final = "psi.start"
#: every party: a chunk of its own blinded, shuffled set (reply: points)
KIND_SEND: Final = "psi.send"
#: a non-hub party: blind a chunk of the hub's set with its key (reply: points)
KIND_BLIND: Final = "psi.blind"
#: the hub: a chunk of its own set as blinded by a peer (kept as digests; empty reply)
KIND_HUB_DOUBLE: Final = "psi.hub.double"
#: the hub: a chunk of a peer's set; the hub blinds it and matches (empty reply)
KIND_HUB_MATCH: Final = "psi.hub.match"
#: the hub: compute the intersection and keep its own aligned rows (reply: its size)
KIND_HUB_FINISH: Final = "psi.hub.finish"
#: the hub: a chunk of the positions (in a peer's sent order) of the shared rows
KIND_HUB_RESULT: Final = "psi.hub.result"
#: a non-hub party: a chunk of its shared positions; the last one completes its result
KIND_DELIVER: Final = "psi.deliver"

#: every kind a PSI node answers (a node policy's ``kinds`` must allow them)
PSI_KINDS: Final = (
    KIND_START,
    KIND_SEND,
    KIND_BLIND,
    KIND_HUB_DOUBLE,
    KIND_HUB_MATCH,
    KIND_HUB_FINISH,
    KIND_HUB_RESULT,
    KIND_DELIVER,
)

# -- records -----------------------------------------------------------------------------
#: the Arrays record of a task or reply that carries points or positions
PAYLOAD: Final = "psi"
#: its array of points: uint8, shape (n, POINT_BYTES)
POINTS: Final = "points"
#: its array of positions: int64, shape (n,)
POSITIONS: Final = "positions"

# -- config keys of a task -----------------------------------------------------------------
SESSION: Final = "psi-session"
ROLE: Final = "psi-role"
HUB: Final = "psi-hub"
PEERS: Final = "psi-peers"
PEER: Final = "psi-peer"
OFFSET: Final = "psi-offset"
COUNT: Final = "psi-count"
TOTAL: Final = "psi-total"
#: reply config key: how many ids a party holds (after removing duplicates)
SIZE: Final = "psi-size"
#: the hub's keyed digest of the aligned ids (with a ``psi-secret``; "" without), relayed to
#: every peer, which refuses a result whose digest differs: the server cannot alter it unseen
TAG: Final = "psi-tag"

ROLE_HUB: Final = "hub"
ROLE_PARTY: Final = "party"

# -- node config keys (the silo's own settings, never from the server) ---------------------
#: a secret the parties share out of band and the server never sees: it keys the hash of
#: every id, so a hostile server cannot test guessed ids (see docs/vertical.md)
NODE_SECRET: Final = "psi-secret"
#: how many PSI sessions a node takes part in per run (default :data:`MAX_SESSIONS`)
NODE_MAX_SESSIONS: Final = "psi-max-sessions"
#: threads a node blinds with (default 1: the libsodium calls release the GIL)
NODE_THREADS: Final = "psi-threads"

# -- limits ---------------------------------------------------------------------------------
#: points per message by default: 8 MiB, under the server's 16 MiB allowance for the reply
#: to a task that carries no arrays (``ReplyLimits.slack``)
DEFAULT_CHUNK: Final = 1 << 18
#: the most points or positions one task or reply may carry, whatever the server asks: the
#: default, as a larger chunk would not fit a deployed server's reply allowance anyway
MAX_CHUNK: Final = DEFAULT_CHUNK
#: the most ids one party may bring to a session
MAX_IDS: Final = 1 << 27
#: sessions per run a node takes part in unless its node config says otherwise: a few,
#: so that a server re-running the program after a crash can start again
MAX_SESSIONS: Final = 4
