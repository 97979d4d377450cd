"""Paillier arithmetic for vertical logistic regression: fixed-point, CRT, wire form.

Vertical LR needs three things from an additively homomorphic scheme: the
label holder encrypts its residuals, a passive party computes
``[[sum_i x_ij d_i + r_j]]`` from them without learning them, and the label
holder decrypts that masked sum. ``phe`` (python-paillier) supplies the key
generation and the CRT decryption; the rest is raw modular arithmetic here
(through ``phe.util``, which uses gmpy2 when it is installed) because phe's
``EncryptedNumber`` re-encodes floats and aligns exponents on every
operation, which costs more than the arithmetic itself.

Numbers are fixed-point integers: a residual ``d`` travels as
``round(d * 2**RESIDUAL_BITS)`` and a feature ``x`` as
``round(x * 2**FEATURE_BITS)``, so their products all share one scale and
sums need no alignment. A signed integer ``m`` is encrypted as ``m mod n``.

Encryption is the cost that matters (one per training row and iteration): the
key's owner computes the random factor ``r**n mod n**2`` modulo ``p**2`` and
``q**2`` and joins them (CRT), which is about 1.8x faster than phe's
``encrypt`` with the same randomness source (``secrets``).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt

from consortium.core.errors import MissingDependencyError, UpdateRejected

if TYPE_CHECKING:
    from phe.paillier import PaillierPrivateKey

#: Fractional bits of a residual ``sigmoid(u) - y`` (|d| <= 1) in fixed point.
RESIDUAL_BITS: Final = 32
#: Fractional bits of a (standardised) feature value in fixed point.
FEATURE_BITS: Final = 20
#: Statistical hiding of a masked sum: the mask is this many bits wider than the sum.
MASK_SECURITY_BITS: Final = 80
#: Smallest modulus accepted (512 bits is for tests only; the default is 2048).
MIN_KEY_BITS: Final = 512
MAX_KEY_BITS: Final = 8192

UInt8Array = npt.NDArray[np.uint8]


def _phe() -> tuple[object, object]:
    try:
        from phe import paillier, util
    except ImportError as exc:
        raise MissingDependencyError.for_extra("phe", "vertical") from exc
    return paillier, util


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A Paillier public key ``n`` (generator ``n + 1``), with the modulus squared."""

    n: int

    @property
    def nsquare(self) -> int:
        return self.n * self.n

    @property
    def bits(self) -> int:
        return self.n.bit_length()

    @property
    def ciphertext_bytes(self) -> int:
        """Bytes of one ciphertext (an integer below ``n**2``) on the wire."""
        return (2 * self.bits + 7) // 8

    @property
    def plaintext_bytes(self) -> int:
        return (self.bits + 7) // 8

    @classmethod
    def from_wire(cls, data: npt.NDArray[np.generic]) -> PublicKey:
        """A public key received from a peer: checked to be an odd modulus of a sane size."""
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 1:
            raise UpdateRejected("the Paillier public key must be a 1-D uint8 array")
        n = int.from_bytes(data.tobytes(), "big")
        if not MIN_KEY_BITS <= n.bit_length() <= MAX_KEY_BITS or n % 2 == 0:
            raise UpdateRejected(
                f"the Paillier modulus must be odd and {MIN_KEY_BITS}-{MAX_KEY_BITS} bits, "
                f"got {n.bit_length()} bits"
            )
        return cls(n)

    def to_wire(self) -> UInt8Array:
        return np.frombuffer(self.n.to_bytes(self.plaintext_bytes, "big"), dtype=np.uint8).copy()

    def add(self, a: int, b: int) -> int:
        """``[[x]], [[y]] -> [[x + y]]``."""
        return a * b % self.nsquare

    def add_fresh(self, c: int, m: int) -> int:
        """``[[x]], m -> [[x + m]]``, re-randomised with a fresh ``s**n``.

        Without the fresh factor, the key's owner could read the product of its
        own random factors raised to the features out of the decrypted ciphertext.
        """
        _, util = _phe()
        n, nsq = self.n, self.nsquare
        s = secrets.randbelow(n - 1) + 1
        fresh = int(util.powmod(s, n, nsq))  # type: ignore[attr-defined]
        return c * ((1 + n * (m % n)) % nsq) % nsq * fresh % nsq

    def dot(self, ciphertexts: Sequence[int], scalars: Sequence[int]) -> int:
        """``[[sum_i k_i x_i]]`` from ``[[x_i]]`` and small signed integers ``k_i``."""
        _, util = _phe()
        nsq = self.nsquare
        powmod, invert = util.powmod, util.invert  # type: ignore[attr-defined]
        acc = 1
        for c, k in zip(ciphertexts, scalars, strict=True):
            if k > 0:
                acc = acc * powmod(c, k, nsq) % nsq
            elif k < 0:
                acc = acc * powmod(invert(c, nsq), -k, nsq) % nsq
        return int(acc)


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A Paillier key pair, held only by the label holder."""

    public: PublicKey
    p: int
    q: int

    @classmethod
    def generate(cls, bits: int) -> KeyPair:
        if not MIN_KEY_BITS <= bits <= MAX_KEY_BITS:
            raise UpdateRejected(f"Paillier key size must be {MIN_KEY_BITS}-{MAX_KEY_BITS} bits")
        paillier, _ = _phe()
        pub, priv = paillier.generate_paillier_keypair(n_length=bits)  # type: ignore[attr-defined]
        return cls(PublicKey(int(pub.n)), int(priv.p), int(priv.q))

    def _private(self) -> PaillierPrivateKey:
        paillier, _ = _phe()
        pub = paillier.PaillierPublicKey(self.public.n)  # type: ignore[attr-defined]
        return paillier.PaillierPrivateKey(pub, self.p, self.q)  # type: ignore[attr-defined]

    def encrypt(self, values: Sequence[int]) -> list[int]:
        """Fresh encryptions of signed integers, the random factor computed by CRT."""
        _, util = _phe()
        powmod, invert = util.powmod, util.invert  # type: ignore[attr-defined]
        n, nsq = self.public.n, self.public.nsquare
        p2, q2 = self.p * self.p, self.q * self.q
        ep, eq = n % (self.p * (self.p - 1)), n % (self.q * (self.q - 1))
        q2_inv = int(invert(q2, p2))
        out = []
        for m in values:
            r = secrets.randbelow(n - 1) + 1
            rp, rq = int(powmod(r, ep, p2)), int(powmod(r, eq, q2))
            rn = rq + q2 * ((rp - rq) * q2_inv % p2)  # r**n mod n**2, by CRT
            out.append((1 + n * (m % n)) % nsq * rn % nsq)
        return out

    def decrypt(self, ciphertexts: Sequence[int]) -> list[int]:
        """The signed integers (in ``(-n/2, n/2]``) of ciphertexts a peer sent back."""
        key = self._private()
        n = self.public.n
        out = []
        for c in ciphertexts:
            m = int(key.raw_decrypt(c))
            out.append(m - n if m > n // 2 else m)
        return out

    def to_state(self) -> dict[str, UInt8Array]:
        """The key as arrays for the node's own state (it never leaves the node)."""
        size = (self.public.bits + 7) // 8
        return {"key_p": _int_bytes(self.p, size), "key_q": _int_bytes(self.q, size)}

    @classmethod
    def from_state(cls, key_p: UInt8Array, key_q: UInt8Array) -> KeyPair:
        p, q = int.from_bytes(key_p.tobytes(), "big"), int.from_bytes(key_q.tobytes(), "big")
        return cls(PublicKey(p * q), p, q)


def _int_bytes(value: int, size: int) -> UInt8Array:
    return np.frombuffer(value.to_bytes(size, "big"), dtype=np.uint8).copy()


def pack(values: Sequence[int], width: int) -> UInt8Array:
    """Non-negative integers as a ``(len, width)`` uint8 array (big-endian rows)."""
    blob = b"".join(v.to_bytes(width, "big") for v in values)
    return np.frombuffer(blob, dtype=np.uint8).reshape(len(values), width).copy()


def unpack(
    data: npt.NDArray[np.generic], *, count: int, width: int, below: int, what: str
) -> list[int]:
    """Integers from a peer's ``(count, width)`` uint8 array, each in ``[0, below)``."""
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise UpdateRejected(f"{what} must be a uint8 array")
    if data.shape != (count, width):
        raise UpdateRejected(f"{what} must have shape {(count, width)}, got {data.shape}")
    raw = data.tobytes()
    values = [int.from_bytes(raw[i * width : (i + 1) * width], "big") for i in range(count)]
    if any(not 0 <= v < below for v in values):
        raise UpdateRejected(f"{what} holds a value out of range")
    return values


def to_fixed(values: npt.NDArray[np.float64], bits: int) -> list[int]:
    """Finite floats as signed fixed-point integers with ``bits`` fractional bits."""
    if not np.isfinite(values).all():
        raise UpdateRejected("cannot encode a non-finite value")
    return [int(v) for v in np.rint(np.ldexp(values, bits)).astype(np.int64)]


def mask_bits(rows: int, max_feature: int) -> int:
    """Bits of the uniform mask that hides ``sum_i x_ij d_i`` statistically.

    ``|sum| <= rows * max|x| * 2**RESIDUAL_BITS``; the mask is
    :data:`MASK_SECURITY_BITS` wider, and the masked value must stay below
    ``n / 2`` to decrypt to itself.
    """
    bound = rows * max(max_feature, 1) << RESIDUAL_BITS
    return bound.bit_length() + MASK_SECURITY_BITS


def random_masks(count: int, bits: int) -> list[int]:
    return [secrets.randbits(bits) for _ in range(count)]
