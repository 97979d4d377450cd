"""The cryptographic primitives of SecAgg+, all from the ``cryptography`` package.

* key agreement: X25519, its shared secret expanded by HKDF-SHA256 with a
  purpose string (so one exchange never keys two things);
* shares in transit: ChaCha20-Poly1305 with the (run, round, sender,
  receiver) as associated data, so the server cannot replay a share to
  another node, round or run;
* masks: the ChaCha20 keystream under the whole 32-byte seed (a cryptographic
  PRG), read as little-endian uint64 and cut to the modulus' bits; the
  modulus is a power of two, so every value mod M is equally likely;
* identity: Ed25519 signatures over a node's advertised keys; peers check
  them with a :data:`Verify` callable fed by a trusted source (in deployment
  the node certificates), never by keys the server relays.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from numpy.typing import NDArray

from consortium.core.arrays import Arrays
from consortium.core.errors import ConfigError, SecurityError

__all__ = [
    "KEY_BYTES",
    "Ed25519Keyring",
    "KeyPair",
    "Sign",
    "Verify",
    "agree",
    "canonical",
    "decrypt_share",
    "encrypt_share",
    "mask",
    "model_digest",
    "new_seed",
    "public_of",
]

#: ``sign(node_id, message) -> signature``: signs with ``node_id``'s identity key.
Sign = Callable[[str, bytes], bytes]
#: ``verify(node_id, message, signature) -> valid``, from keys the verifier trusts.
Verify = Callable[[str, bytes, bytes], bool]

_NONCE = 12
#: Length of X25519 keys, derived keys and mask seeds.
KEY_BYTES = 32


class KeyPair:
    """An X25519 key pair, as raw bytes (32 each)."""

    __slots__ = ("private", "public")

    def __init__(self, private: bytes | None = None) -> None:
        key = (
            X25519PrivateKey.from_private_bytes(private)
            if private is not None
            else X25519PrivateKey.generate()
        )
        self.private = key.private_bytes_raw()
        self.public = key.public_key().public_bytes_raw()


def public_of(private: bytes) -> bytes:
    """The X25519 public key of ``private``."""
    return KeyPair(private).public


def new_seed() -> bytes:
    """A fresh 32-byte seed from the operating system's CSPRNG."""
    return os.urandom(KEY_BYTES)


def agree(private: bytes, peer_public: bytes, purpose: bytes) -> bytes:
    """A 32-byte key shared with the owner of ``peer_public``, for ``purpose`` only.

    HKDF-SHA256 over the X25519 secret, with both public keys (sorted, so
    both sides agree) and ``purpose`` in its info.
    """
    try:
        secret = X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(peer_public)
        )
    except ValueError as exc:  # a low-order point gives an all-zero secret
        raise SecurityError(f"key agreement failed: {exc}") from exc
    low, high = sorted((public_of(private), peer_public))
    info = b"consortium-secagg/1|" + purpose + b"|" + low + high
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def encrypt_share(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """nonce | ChaCha20-Poly1305(plaintext), authenticated together with ``associated``."""
    nonce = os.urandom(_NONCE)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated)


def decrypt_share(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    """The plaintext of :func:`encrypt_share`; raises SecurityError if anything was changed."""
    try:
        return ChaCha20Poly1305(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], associated)
    except (InvalidTag, ValueError) as exc:
        raise SecurityError(
            "an encrypted share does not authenticate (changed, or sent for another "
            "node, round or run)"
        ) from exc


def mask(seed: bytes, size: int, bits: int) -> NDArray[np.uint64]:
    """``size`` uniform values in [0, 2^bits): the ChaCha20 keystream under ``seed``."""
    if len(seed) != KEY_BYTES:
        raise ConfigError(f"a mask seed must be {KEY_BYTES} bytes, got {len(seed)}")
    if not 1 <= bits <= 64:
        raise ConfigError(f"mask bits must be within [1, 64], got {bits}")
    # a fresh seed per mask, so the all-zero nonce is never reused under one key
    stream = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    values = np.frombuffer(stream.update(bytes(8 * size)), dtype="<u8").astype(np.uint64)
    if bits < 64:
        values &= np.uint64((1 << bits) - 1)
    return values


def canonical(fields: Mapping[str, object]) -> bytes:
    """The one byte string for a record of JSON values (what gets signed)."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def model_digest(arrays: Arrays) -> str:
    """SHA-256 (hex) over a model's names, dtypes, shapes and bytes, in order."""
    digest = hashlib.sha256()
    for name, value in arrays.items():
        head = canonical({"name": name, "dtype": value.dtype.str, "shape": list(value.shape)})
        digest.update(len(head).to_bytes(8, "little") + head)
        data = np.ascontiguousarray(value)
        digest.update(int(data.nbytes).to_bytes(8, "little"))
        digest.update(data.data)  # the array's own memory, not a copy
    return digest.hexdigest()


class Ed25519Keyring:
    """Ed25519 identity keys by node id: signs for the nodes whose private key it
    holds, verifies for those whose public key it holds.

    In simulation one keyring can hold every node's key; on a deployed node it
    holds that node's private key and its peers' public keys (from their
    certificates). Its :meth:`sign` and :meth:`verify` are the mod's
    :data:`Sign` and :data:`Verify`.
    """

    def __init__(
        self,
        private: Mapping[str, Ed25519PrivateKey] | None = None,
        public: Mapping[str, Ed25519PublicKey] | None = None,
    ) -> None:
        self._private = dict(private or {})
        self._public = {n: k.public_key() for n, k in self._private.items()}
        self._public.update(public or {})

    @classmethod
    def generate(cls, node_ids: Iterable[str]) -> Ed25519Keyring:
        """A keyring with a fresh key for each of ``node_ids``."""
        return cls({n: Ed25519PrivateKey.generate() for n in node_ids})

    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        return dict(self._public)

    def sign(self, node_id: str, message: bytes) -> bytes:
        key = self._private.get(node_id)
        if key is None:
            raise SecurityError(f"this keyring holds no signing key for node {node_id!r}")
        return key.sign(message)

    def verify(self, node_id: str, message: bytes, signature: bytes) -> bool:
        key = self._public.get(node_id)
        if key is None:
            return False
        try:
            key.verify(signature, message)
        except InvalidSignature:
            return False
        return True
