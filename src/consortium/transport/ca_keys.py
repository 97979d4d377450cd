"""The CA's keys and files: fresh private keys, their PEM form, files written whole.

Keys are ECDSA P-256 by default (fast, small certificates) or RSA 3072 on
request. :func:`write_file` writes a key or certificate to a temporary file
with its exact mode and renames it into place, so no reader ever sees half a
key, and the process umask never widens a private key's mode.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from consortium.core.errors import ConfigError

KeyType = Literal["ec", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def generate_key(key_type: KeyType = "ec") -> PrivateKey:
    """A fresh private key: ECDSA P-256 (fast, the default) or RSA 3072."""
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise ConfigError(f"unknown key type {key_type!r}: expected 'ec' or 'rsa'")


def key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """``key`` as PKCS#8 PEM, encrypted with ``passphrase`` when one is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write-then-rename with an exact mode, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow it
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
