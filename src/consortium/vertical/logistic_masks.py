"""Pairwise masks between passive parties: the label holder learns only the sum of their logits.

Each passive party draws an X25519 key at setup; the server relays the public
keys. Every pair of passive parties ``(i, j)`` shares ``X25519(sk_i, pk_j)``,
from which each expands (SHAKE-256 over the secret, the iteration and the
row set) a vector of uniform 64-bit masks: the party listed first adds it,
the other subtracts it. Partial logits travel as 64-bit fixed-point integers
(``round(u * 2**FIXED_BITS)``) plus the masks, modulo ``2**64``: each party's
vector alone is uniform; their sum modulo ``2**64`` is the sum of the
logits, exactly, in fixed point. With one passive party there is no pair and
no mask: the label holder learns that party's logits.

The public keys are authenticated: each passive party signs its own with its
node identity, and a party checks its peers' signatures before it uses their
keys (:mod:`.signed_keys`, :func:`.logistic_passive.forward`), so a server
cannot substitute its own keys to remove a party's masks.
"""

from __future__ import annotations

import hashlib
from typing import Final

import numpy as np
import numpy.typing as npt

from consortium.core.errors import MissingDependencyError, UpdateRejected

#: Fractional bits of a partial logit on the wire (|u| must stay below 2**(63 - FIXED_BITS)).
FIXED_BITS: Final = 32
#: Bytes of an X25519 key.
KEY_BYTES: Final = 32

UInt8Array = npt.NDArray[np.uint8]
UInt64Array = npt.NDArray[np.uint64]
FloatArray = npt.NDArray[np.float64]


def new_key() -> tuple[UInt8Array, UInt8Array]:
    """A fresh X25519 key pair: (secret, public), as uint8 arrays."""
    try:
        from nacl.public import PrivateKey
    except ImportError as exc:
        raise MissingDependencyError.for_extra("pynacl", "vertical") from exc
    key = PrivateKey.generate()
    secret = np.frombuffer(bytes(key), dtype=np.uint8).copy()
    public = np.frombuffer(bytes(key.public_key), dtype=np.uint8).copy()
    return secret, public


def encode(u: FloatArray) -> UInt64Array:
    """Partial logits as 64-bit two's-complement fixed point."""
    limit = 2.0 ** (63 - FIXED_BITS - 1)
    if not np.isfinite(u).all() or bool((np.abs(u) >= limit).any()):
        raise UpdateRejected(f"a partial logit is not finite or not below {limit:g}")
    return np.rint(np.ldexp(u, FIXED_BITS)).astype(np.int64).view(np.uint64)


def decode_sum(rows: UInt64Array) -> FloatArray:
    """The sum of the parties' masked rows (the masks cancel modulo 2**64), as floats."""
    total = rows.sum(axis=0, dtype=np.uint64)  # wraps modulo 2**64
    out: FloatArray = np.ldexp(total.view(np.int64).astype(np.float64), -FIXED_BITS)
    return out


def masks(
    secret: UInt8Array, peers: UInt8Array, me: int, iteration: int, stream: str, length: int
) -> UInt64Array:
    """This party's total mask for one vector: the sum over its pairs, signed by position."""
    try:
        from nacl.bindings import crypto_scalarmult
        from nacl.exceptions import CryptoError
    except ImportError as exc:
        raise MissingDependencyError.for_extra("pynacl", "vertical") from exc
    total = np.zeros(length, dtype=np.uint64)
    for other in range(peers.shape[0]):
        if other == me:
            continue
        try:
            shared = crypto_scalarmult(secret.tobytes(), peers[other].tobytes())
        except CryptoError as exc:  # a low-order point: no shared secret
            raise UpdateRejected(f"peer key {other} is not a usable X25519 key") from exc
        label = f"consortium.vlr/{iteration}/{stream}".encode()
        stream_bytes = hashlib.shake_256(shared + label).digest(8 * length)
        mask = np.frombuffer(stream_bytes, dtype="<u8").astype(np.uint64)
        total = total + mask if me < other else total - mask  # uint64 arithmetic wraps
    return total


def check_peers(value: object, own: UInt8Array) -> tuple[UInt8Array, int]:
    """The passive parties' public keys as the server relayed them, and this party's place."""
    if not isinstance(value, np.ndarray) or value.dtype != np.uint8:
        raise UpdateRejected("the peers' keys must be a uint8 array")
    if value.ndim != 2 or value.shape[1] != KEY_BYTES or not 1 <= value.shape[0] <= 64:
        raise UpdateRejected(f"the peers' keys must have shape (1-64, {KEY_BYTES})")
    places = [i for i in range(value.shape[0]) if np.array_equal(value[i], own)]
    if len(places) != 1 or len({row.tobytes() for row in value}) != value.shape[0]:
        raise UpdateRejected("the peers' keys must list this party's key once, and no key twice")
    return value, places[0]
