"""Seeded randomness: every generator derives from (run seed, round, node).

Nothing in Consortium touches global random state. A server or node that
needs randomness asks :func:`derive_rng` for a ``numpy.random.Generator``
keyed by what it is doing, so the same seed gives the same model whatever
the scheduling, the number of workers, or the deployment.
"""

from __future__ import annotations

import hashlib

import numpy as np

#: The key the server uses for its own randomness (sampling, initialisation).
SERVER_KEY = "__server__"


def stable_key(name: str | int) -> int:
    """A platform-independent 64-bit integer for a node name (never ``hash()``)."""
    if isinstance(name, int) and not isinstance(name, bool) and name >= 0:
        return name
    digest = hashlib.blake2b(str(name).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def derive_rng(
    seed: int, round_: int, node: str | int, *, stream: str | None = None
) -> np.random.Generator:
    """The generator for ``node`` in ``round_`` of a run seeded with ``seed``.

    ``stream`` separates independent uses by the same party in the same round
    (for example "sample" and "init" on the server).
    """
    entropy = [int(seed) & 0xFFFFFFFFFFFFFFFF, int(round_), stable_key(node)]
    if stream is not None:
        entropy.append(stable_key(stream))
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))
