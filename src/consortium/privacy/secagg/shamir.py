"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^521 - 1).

SecAgg+ shares one secret per node and round (its self-mask seed b_u) among
its neighbours, so that any ``threshold`` of them can rebuild it and fewer
learn nothing. The field is the Mersenne prime 2^521 - 1,
larger than any 256-bit secret, so a secret is one field element; the
arithmetic is Python's arbitrary-precision ints, and the random coefficients
come from :mod:`secrets` (the operating system's CSPRNG).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

from consortium.core.errors import ConfigError

__all__ = ["PRIME", "SECRET_BYTES", "SHARE_BYTES", "combine", "split"]

#: The field's modulus: the Mersenne prime 2^521 - 1.
PRIME = 2**521 - 1
#: Length of a shared secret (a self-mask seed).
SECRET_BYTES = 32
#: Length of one share's value (a field element, big-endian).
SHARE_BYTES = 66


def split(secret: bytes, xs: Sequence[int], threshold: int) -> dict[int, bytes]:
    """Shares of ``secret`` at the distinct points ``xs`` (each in [1, 2^31)).

    Any ``threshold`` shares rebuild ``secret`` (:func:`combine`); fewer
    reveal nothing about it.
    """
    if len(secret) != SECRET_BYTES:
        raise ConfigError(f"a shared secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    _check_points(xs)
    if not 1 <= threshold <= len(xs):
        raise ConfigError(f"threshold must be within [1, {len(xs)}], got {threshold}")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in xs:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares[x] = y.to_bytes(SHARE_BYTES, "big")
    return shares


def combine(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret behind ``shares`` (point -> value): Lagrange interpolation at 0.

    Uses the first ``threshold`` shares (by point); fewer raise
    :class:`ValueError`. Shares that were not made together give a wrong
    secret, not an error: callers check what they rebuild where they can.
    """
    if len(shares) < threshold:
        raise ValueError(f"{len(shares)} shares cannot rebuild a secret that needs {threshold}")
    points = sorted(shares)[:threshold]
    _check_points(points)
    ys = {}
    for x in points:
        value = shares[x]
        if len(value) != SHARE_BYTES:
            raise ValueError(f"share at point {x} is {len(value)} bytes, not {SHARE_BYTES}")
        ys[x] = int.from_bytes(value, "big")
        if ys[x] >= PRIME:
            raise ValueError(f"share at point {x} is not a field element")
    secret = 0
    for x in points:
        numerator, denominator = 1, 1
        for other in points:
            if other != x:
                numerator = numerator * (-other) % PRIME
                denominator = denominator * (x - other) % PRIME
        secret = (secret + ys[x] * numerator * pow(denominator, -1, PRIME)) % PRIME
    if secret >= 2 ** (8 * SECRET_BYTES):
        raise ValueError("the shares do not rebuild a 32-byte secret (inconsistent shares)")
    return secret.to_bytes(SECRET_BYTES, "big")


def _check_points(xs: Sequence[int]) -> None:
    if len(set(xs)) != len(xs):
        raise ConfigError(f"share points must be distinct, got {list(xs)}")
    for x in xs:
        if isinstance(x, bool) or not isinstance(x, int) or not 1 <= x < 2**31:
            raise ConfigError(f"a share point must be an int within [1, 2^31), got {x!r}")
