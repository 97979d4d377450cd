"""The group operations of ECDH-PSI: hash ids to points, blind points with a secret scalar.

The group is the prime-order subgroup of Edwards25519 (order ``L``, about
2**252), through libsodium as PyNaCl exposes it:

* ``crypto_core_ed25519_from_uniform`` (Elligator 2, then the cofactor
  cleared) maps a 32-byte hash to a point of the subgroup. Its input is a
  keyed BLAKE2b of the id, keyed by the run, the session and the parties'
  shared ``psi-secret`` (see :func:`hash_key`), so the points of one run say
  nothing about another's and, with a secret, the server cannot hash a guess.
* ``crypto_scalarmult_ed25519_noclamp`` multiplies by a secret scalar ``k``
  (uniform modulo ``L``, never 0). Blinding commutes: ``k1 * (k2 * P) ==
  k2 * (k1 * P)``, which is what lets two parties compare doubly blinded
  points. It refuses, and :func:`blind` reports, any input that is not the
  canonical encoding of a point of the subgroup other than the identity:
  what a hostile server could send to learn something from the answer.

Every point of the subgroup has one canonical encoding, so equal points are
equal bytes. PyNaCl 1.6 has no ristretto255 bindings; this subgroup gives the
same security (see ``docs/vertical.md``). The libsodium calls run in C
without the GIL: ``threads`` > 1 spreads a batch over threads.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from consortium.core.errors import MissingDependencyError, SecurityError
from consortium.vertical.psi_protocol import POINT_BYTES

__all__ = ["blind", "digests", "hash_and_blind", "hash_key", "new_key", "result_tag", "tag_key"]

_DOMAIN = b"consortium/psi/v1"
#: a batch this small runs on the calling thread whatever ``threads`` says
_MIN_PARALLEL = 4096


def _sodium() -> ModuleType:
    try:
        import nacl.bindings
    except ImportError as exc:  # pragma: no cover - the vertical extra is not installed
        raise MissingDependencyError.for_extra("pynacl", "vertical") from exc
    return nacl.bindings


def new_key() -> bytes:
    """A fresh secret scalar: uniform modulo the group order, never zero (from ``secrets``,
    never from the run's seed, which the server knows)."""
    sodium = _sodium()
    while True:
        key: bytes = sodium.crypto_core_ed25519_scalar_reduce(secrets.token_bytes(64))
        if any(key):
            return key


def _framed(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(8, "little") + p for p in parts)


def hash_key(run_id: str, session: str, secret: str) -> bytes:
    """The 32-byte key of the id hash for one session: the domain, the run, the session and
    the parties' shared secret ("" without one), each length-prefixed."""
    material = _framed(_DOMAIN, run_id.encode(), session.encode(), secret.encode())
    return hashlib.sha256(material).digest()


def tag_key(run_id: str, session: str, secret: str) -> bytes:
    """The key of the result tag: like :func:`hash_key`, in its own domain."""
    return hashlib.sha256(_framed(_DOMAIN + b"/tag", run_id.encode(), session.encode(),
                                  secret.encode())).digest()  # fmt: skip


def result_tag(tkey: bytes, ids: Sequence[str]) -> str:
    """HMAC-SHA256 of the aligned ids (each length-prefixed), hex: equal on every party that
    kept the same ids in the same order, and unforgeable without the shared secret."""
    return hmac.new(tkey, _framed(*(i.encode() for i in ids)), hashlib.sha256).hexdigest()


def _map(fn: Callable[[bytes], bytes], items: Sequence[bytes], threads: int) -> list[bytes]:
    if threads <= 1 or len(items) < _MIN_PARALLEL:
        return [fn(x) for x in items]
    step = -(-len(items) // threads)
    parts = [items[i : i + step] for i in range(0, len(items), step)]
    with ThreadPoolExecutor(threads, thread_name_prefix="psi") as pool:
        done = pool.map(lambda part: [fn(x) for x in part], parts)
        return [y for part in done for y in part]


def _as_array(points: list[bytes]) -> NDArray[np.uint8]:
    out = np.frombuffer(b"".join(points), dtype=np.uint8).reshape(len(points), POINT_BYTES)
    return out.copy()  # writable, owned


def hash_and_blind(
    ids: Sequence[str], hkey: bytes, key: bytes, *, threads: int = 1
) -> NDArray[np.uint8]:
    """``key * H(id)`` for each id, as an (n, 32) uint8 array, in the order given."""
    sodium = _sodium()
    mult = sodium.crypto_scalarmult_ed25519_noclamp
    to_point = sodium.crypto_core_ed25519_from_uniform

    def one(raw: bytes) -> bytes:
        uniform = hashlib.blake2b(raw, key=hkey, digest_size=32).digest()
        return mult(key, to_point(uniform))  # type: ignore[no-any-return]

    return _as_array(_map(one, [i.encode() for i in ids], threads))


def blind(points: Any, key: bytes, *, what: str, threads: int = 1) -> NDArray[np.uint8]:
    """``key * P`` for each row of ``points`` (an (n, 32) uint8 array from elsewhere).

    Raises :class:`SecurityError` naming ``what`` and the row when the array has
    the wrong type or shape or a row is not a valid point of the subgroup (an
    identity, a small-order or mixed-order point, a non-canonical encoding).
    """
    check_points(points, what=what)
    sodium = _sodium()
    mult = sodium.crypto_scalarmult_ed25519_noclamp
    import nacl.exceptions

    failed = nacl.exceptions.CryptoError  # libsodium refused the point

    def one(raw: bytes) -> bytes:
        try:
            return mult(key, raw)  # type: ignore[no-any-return]
        except failed:
            return b""

    rows = [bytes(r) for r in np.ascontiguousarray(points)]
    out = _map(one, rows, threads)
    for index, value in enumerate(out):
        if not value:
            raise SecurityError(
                f"{what}: row {index} is not a valid point (an identity, small-order or "
                "non-canonical encoding): refused"
            )
    return _as_array(out)


def check_points(points: Any, *, what: str) -> None:
    """Raise :class:`SecurityError` unless ``points`` is an (n, 32) uint8 array."""
    if not isinstance(points, np.ndarray) or points.dtype != np.uint8:
        raise SecurityError(f"{what}: points must be a uint8 array")
    if points.ndim != 2 or points.shape[1] != POINT_BYTES:
        raise SecurityError(
            f"{what}: points must have shape (n, {POINT_BYTES}), got {points.shape}"
        )


def digests(points: NDArray[np.uint8]) -> NDArray[np.uint64]:
    """The first 8 bytes of each point as one uint64: what a party keeps to match points.

    Points are uniform in a group of about 2**252 elements, so two different
    points share a digest with probability 2**-64 per pair: for 10**6 x 10**6
    pairs, about 5e-8 per session.
    """
    return np.ascontiguousarray(points[:, :8]).view("<u8").reshape(-1).astype(np.uint64)
