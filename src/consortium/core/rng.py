"""Seeded randomness: every generator derives from (run seed, round, node).

Nothing in Consortium touches global random state. A server or node that
needs randomness asks :func:`derive_rng` for a ``numpy.random.Generator``
keyed by what it is doing, so the same seed gives the same model whatever
the scheduling, the number of workers, or the deployment.

The key is hashed with BLAKE2b into the PCG64 seed words directly (a
:class:`numpy.random.bit_generator.ISeedSequence`), which is six times cheaper
than building a ``SeedSequence``: simulations derive one generator per node
per round, tens of thousands of times.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from typing import Any

import numpy as np
from numpy.random.bit_generator import ISeedSequence

#: The key the server uses for its own randomness (sampling, initialisation).
SERVER_KEY = "__server__"

_MASK = 0xFFFFFFFFFFFFFFFF
_KEY = struct.Struct("<QqQ")


def stable_key(name: str | int) -> int:
    """A platform-independent 64-bit integer for a node name (never ``hash()``)."""
    if isinstance(name, int) and not isinstance(name, bool) and 0 <= name <= _MASK:
        return name
    return _name_key(str(name))


@functools.lru_cache(maxsize=1 << 16)
def _name_key(name: str) -> int:
    """The BLAKE2b key of a name, remembered: a simulation derives a generator for every
    node in every round (the cache holds ~200 bytes a name, 65,536 names at most)."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


#: dtype asked for -> (its little-endian form, itself, whether the two differ):
#: ``generate_state`` is called once per generator, and normalising a dtype costs
#: more than hashing the key.
_WORD_TYPES: dict[Any, tuple[np.dtype[Any], np.dtype[Any], bool]] = {}
_U64_LITTLE = np.dtype("<u8")
#: True on a little-endian machine: 64-bit seed words are then read from the digest as
#: they are (the request of PCG64, the bit generator :func:`derive_rng` builds)
_U64_IS_LITTLE = np.dtype(np.uint64) == _U64_LITTLE


class _HashedSeed(ISeedSequence):
    """Seed words taken from a digest (extended with SHAKE-256 when more are asked)."""

    __slots__ = ("_digest",)

    def __init__(self, digest: bytes) -> None:
        self._digest = digest

    def generate_state(self, n_words: int, dtype: Any = np.uint32) -> np.ndarray:
        if n_words == 4 and dtype is np.uint64 and _U64_IS_LITTLE:
            # what PCG64 asks for, once per generator: the digest's 32 bytes as they lie
            return np.frombuffer(self._digest, _U64_LITTLE)
        types = _WORD_TYPES.get(dtype)
        if types is None:
            dt = np.dtype(dtype)
            little = dt.newbyteorder("<")
            types = _WORD_TYPES[dtype] = (little, dt, little != dt)
        little, native, swap = types
        need = int(n_words) * native.itemsize
        data = self._digest
        if need > len(data):
            data = hashlib.shake_256(data).digest(need)
        words = np.frombuffer(data, dtype=little, count=int(n_words))
        # on a little-endian machine the words are already native: no copy to swap them
        # (the bit generator only reads them; a view of the digest is read-only)
        return words.astype(native) if swap else words


def derive_rng(
    seed: int, round_: int, node: str | int, *, stream: str | None = None
) -> np.random.Generator:
    """The generator for ``node`` in ``round_`` of a run seeded with ``seed``.

    ``stream`` separates independent uses by the same party in the same round
    (for example "train" and "init" on the server).
    """
    h = hashlib.blake2b(_KEY.pack(int(seed) & _MASK, int(round_), stable_key(node)), digest_size=32)
    if stream is not None:
        h.update(stream.encode())
    # numpy accepts any ISeedSequence here; its stubs only list SeedSequence
    return np.random.Generator(np.random.PCG64(_HashedSeed(h.digest())))  # type: ignore[arg-type]
