"""A publisher's Ed25519 keys: generated, written and read as PEM files, and trusted.

The fingerprint of a key is the SHA-256 of its 32 raw public-key bytes. Keys
are PEM files (PKCS#8 private key, SubjectPublicKeyInfo public key), readable
by OpenSSL; a private key is written with mode 0600, never over an existing
file, and is refused when other users may read it. Signing and checking
bundles with them is :mod:`consortium.apps.signing`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from consortium.core.errors import ConfigError, MissingDependencyError, SecurityError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def require_cryptography() -> None:
    """Fail with the extra to install when ``cryptography`` is missing."""
    if importlib.util.find_spec("cryptography") is None:
        raise MissingDependencyError.for_extra("cryptography", "deploy")


@dataclass(frozen=True)
class PublicKey:
    """A publisher's Ed25519 public key (32 raw bytes) and where it was read from."""

    raw: bytes
    source: str = ""

    @property
    def fingerprint(self) -> str:
        """``sha256:`` and the hex SHA-256 of the raw key: how bundles name their signer."""
        return "sha256:" + hashlib.sha256(self.raw).hexdigest()

    def verifies(self, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` is this key's Ed25519 signature of ``data``."""
        require_cryptography()
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class PrivateKey:
    """A publisher's Ed25519 signing key (its 32-byte seed, never shown in a repr)."""

    seed: bytes = field(repr=False)
    source: str = ""

    @property
    def public(self) -> PublicKey:
        """The matching public key."""
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        raw = self.signing_key().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return PublicKey(raw, self.source)

    def signing_key(self) -> Ed25519PrivateKey:
        """The key as ``cryptography`` signs with it."""
        require_cryptography()
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return Ed25519PrivateKey.from_private_bytes(self.seed)


def generate_key(path: Path | str, passphrase: bytes | None = None) -> PublicKey:
    """Write a new Ed25519 key to ``path`` (mode 0600) and its public key beside it (``.pub``).

    Refuses to overwrite either file. ``passphrase`` encrypts the private key.
    """
    require_cryptography()
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    public_path = public_key_path(path)
    for existing in (path, public_path):
        if existing.exists() or existing.is_symlink():
            raise ConfigError(f"{existing} already exists; refusing to overwrite a key")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # as `ca issue --out` does
    key = Ed25519PrivateKey.generate()
    encryption: ser.KeySerializationEncryption = (
        ser.BestAvailableEncryption(passphrase) if passphrase else ser.NoEncryption()
    )
    pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, encryption)
    public_pem = key.public_key().public_bytes(
        ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(path, pem, 0o600)
    _write_new(public_path, public_pem, 0o644)
    raw = key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return PublicKey(raw, str(public_path))


def public_key_path(private_path: Path) -> Path:
    """Where :func:`generate_key` puts the public key: ``publisher.key`` → ``publisher.pub``."""
    if private_path.suffix == ".pub":
        raise ConfigError(f"{private_path}: a private key file must not end in .pub")
    return private_path.with_suffix(".pub")


def load_private_key(path: Path | str, passphrase: bytes | None = None) -> PrivateKey:
    """Read a publisher's private key; refuses one that other users may read."""
    require_cryptography()
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    data = _read(path)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SecurityError(f"{path} is readable by other users (mode {mode:o}); chmod 600 it")
    try:
        key = ser.load_pem_private_key(data, passphrase)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not a readable private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 private key")
    seed = key.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
    return PrivateKey(seed, str(path))


def load_public_key(path: Path | str) -> PublicKey:
    """Read a publisher's public key (PEM)."""
    require_cryptography()
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    path = Path(path)
    try:
        key = ser.load_pem_public_key(_read(path))
    except ValueError as exc:
        raise ConfigError(f"{path} is not a readable public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key")
    return PublicKey(key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw), str(path))


def load_trusted_keys(path: Path | str) -> list[PublicKey]:
    """The publisher keys a folder trusts (every ``*.pub`` in it), or one ``.pub`` file."""
    path = Path(path)
    if path.is_file():
        return [load_public_key(path)]
    if not path.is_dir():
        raise ConfigError(f"{path}: no such folder of trusted publisher keys")
    keys = [load_public_key(p) for p in sorted(path.glob("*.pub"))]
    if not keys:
        raise ConfigError(f"{path}: no trusted publisher keys (*.pub) in it")
    return keys


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with exactly ``mode``, failing if it exists (no overwrite, no race)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise ConfigError(f"{path} already exists; refusing to overwrite a key") from exc
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), mode)
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
