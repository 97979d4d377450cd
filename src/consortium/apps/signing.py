"""Signed app bundles: a manifest of every file's digest, signed by the publisher's Ed25519 key.

A bundle (``APP.cab``) is a reproducible zip (:mod:`consortium.apps.bundle`) holding

* ``BUNDLE.json``, first: ``{"format": "consortium-bundle/1", "app": {"name", "version"},
  "files": [{"path", "size", "sha256"}, ...]}`` (sorted keys and paths), and
* the app's files, sorted by path, and, once signed,
* ``BUNDLE.sig``, last: ``{"algorithm": "ed25519", "key": "sha256:<fingerprint>",
  "signature": "<base64>"}``, a detached signature over ``BUNDLE.json``'s exact bytes.

:func:`verify_bundle` checks all of it in memory, before anything is extracted. The
fingerprint of a key is the SHA-256 of its 32 raw public-key bytes. Keys are PEM
files (PKCS#8 private key, SubjectPublicKeyInfo public key), readable by OpenSSL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib.util
import json
import os
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consortium.apps.bundle import (
    DEFAULT_LIMITS,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    BundleLimits,
    BundleRejected,
    FileDigest,
    ScannedBundle,
    app_files,
    scan_bundle,
    write_zip,
)
from consortium.apps.manifest import MANIFEST, load_app_spec
from consortium.core.errors import ConfigError, MissingDependencyError, SecurityError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

FORMAT = "consortium-bundle/1"
ALGORITHM = "ed25519"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_RESERVED = {MANIFEST_NAME, SIGNATURE_NAME}


@dataclass(frozen=True)
class PublicKey:
    """A publisher's Ed25519 public key (32 raw bytes) and where it was read from."""

    raw: bytes
    source: str = ""

    @property
    def fingerprint(self) -> str:
        """``sha256:`` and the hex SHA-256 of the raw key: how bundles name their signer."""
        return "sha256:" + hashlib.sha256(self.raw).hexdigest()


@dataclass(frozen=True)
class PrivateKey:
    """A publisher's Ed25519 signing key (its 32-byte seed, never shown in a repr)."""

    seed: bytes = field(repr=False)
    source: str = ""

    @property
    def public(self) -> PublicKey:
        """The matching public key."""
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        raw = _private(self.seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return PublicKey(raw, self.source)


@dataclass(frozen=True)
class VerifiedBundle:
    """What :func:`verify_bundle` proved: which app, which exact build, signed by whom."""

    app_name: str
    app_version: str
    sha256: str
    publisher: str
    publisher_source: str
    files: tuple[FileDigest, ...]


def build_bundle(app_dir: Path | str, limits: BundleLimits = DEFAULT_LIMITS) -> bytes:
    """The unsigned bundle of an app folder: the same folder gives the same bytes."""
    app_dir = Path(app_dir)
    spec = load_app_spec(app_dir)
    chosen = app_files(app_dir, limits)
    reserved = sorted(_RESERVED.intersection(name for name, _ in chosen))
    if reserved:
        raise ConfigError(f"{app_dir}: {reserved[0]} is a reserved name in a bundle; rename it")
    entries = [(name, path.read_bytes()) for name, path in chosen]
    manifest = {
        "format": FORMAT,
        "app": {"name": spec.name, "version": spec.manifest.app.version},
        "files": [
            {"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for name, data in entries
        ],
    }
    bundle = write_zip([(MANIFEST_NAME, _dump(manifest)), *entries])
    if len(bundle) > limits.max_bundle_bytes:
        raise ConfigError(
            f"{app_dir}: the bundle is {len(bundle)} bytes, "
            f"over the {limits.max_bundle_bytes} limit"
        )
    return bundle


def generate_key(path: Path | str, passphrase: bytes | None = None) -> PublicKey:
    """Write a new Ed25519 key to ``path`` (mode 0600) and its public key beside it (``.pub``).

    Refuses to overwrite either file. ``passphrase`` encrypts the private key.
    """
    _require()
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
    _require()
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
    _require()
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


def sign_bundle(
    bundle: bytes, private_key: PrivateKey, limits: BundleLimits = DEFAULT_LIMITS
) -> bytes:
    """The bundle with ``BUNDLE.sig`` added (or replaced): Ed25519 over ``BUNDLE.json``.

    The files are checked against the manifest first: only a consistent bundle is signed.
    """
    scanned = scan_bundle(bundle, limits, keep=_names(bundle, limits))
    manifest_bytes = _manifest_bytes(scanned)
    _check_files(_parse_manifest(manifest_bytes), scanned)
    signature = _private(private_key.seed).sign(manifest_bytes)
    envelope = {
        "algorithm": ALGORITHM,
        "key": private_key.public.fingerprint,
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    kept = scanned.kept
    entries = [(name, kept[name]) for name in kept if name != SIGNATURE_NAME]
    return write_zip([*entries, (SIGNATURE_NAME, _dump(envelope))])


def verify_bundle(
    bundle: bytes,
    trusted_keys: Iterable[PublicKey],
    *,
    pinned_sha256: str | None = None,
    limits: BundleLimits = DEFAULT_LIMITS,
) -> VerifiedBundle:
    """Prove ``bundle`` is a complete, unmodified build signed by a trusted publisher.

    Everything happens in memory. Raises :class:`BundleRejected` whose ``reason`` is
    ``not-pinned``, the structural reasons of :func:`scan_bundle`, ``unsigned``,
    ``bad-signature``, ``untrusted-key``, ``bad-manifest``, ``missing-file``,
    ``file-mismatch`` or ``unlisted-file``.
    """
    digest = hashlib.sha256(bundle).hexdigest()
    if pinned_sha256 is not None:
        pinned = pinned_sha256.strip().lower()
        if not _HEX64.match(pinned):
            raise ConfigError(f"pinned sha256 {pinned_sha256!r} is not 64 hex digits")
        if digest != pinned:
            raise BundleRejected("not-pinned", f"its sha256 is {digest}, not the pinned {pinned}")
    scanned = scan_bundle(bundle, limits, keep=(MANIFEST_NAME, SIGNATURE_NAME, MANIFEST))
    manifest_bytes = _manifest_bytes(scanned)
    if SIGNATURE_NAME not in scanned.kept:
        raise BundleRejected("unsigned", f"it has no {SIGNATURE_NAME}; sign it first")
    fingerprint, signature = _parse_envelope(scanned.kept[SIGNATURE_NAME])
    trusted = {key.fingerprint: key for key in trusted_keys}
    signer = trusted.get(fingerprint)
    if signer is None:
        raise BundleRejected(
            "untrusted-key",
            f"it is signed by {fingerprint}, which is not one of the {len(trusted)} trusted keys",
        )
    if not _signature_ok(signer, signature, manifest_bytes):
        raise BundleRejected(
            "bad-signature", f"the signature by {fingerprint} does not match {MANIFEST_NAME}"
        )
    manifest = _parse_manifest(manifest_bytes)
    _check_files(manifest, scanned)
    _check_app_manifest(manifest, scanned)
    files = tuple(scanned.files[entry["path"]] for entry in manifest["files"])
    return VerifiedBundle(
        app_name=manifest["app"]["name"],
        app_version=manifest["app"]["version"],
        sha256=digest,
        publisher=fingerprint,
        publisher_source=signer.source,
        files=files,
    )


def _require() -> None:
    if importlib.util.find_spec("cryptography") is None:
        raise MissingDependencyError.for_extra("cryptography", "deploy")


def _private(seed: bytes) -> Ed25519PrivateKey:
    _require()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(seed)


def _signature_ok(key: PublicKey, signature: bytes, data: bytes) -> bool:
    _require()
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(key.raw).verify(signature, data)
    except InvalidSignature:
        return False
    return True


def _dump(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _names(bundle: bytes, limits: BundleLimits) -> list[str]:
    return list(scan_bundle(bundle, limits).files)


def _manifest_bytes(scanned: ScannedBundle) -> bytes:
    data = scanned.kept.get(MANIFEST_NAME)
    if data is None:
        raise BundleRejected(
            "unsigned", f"it has no {MANIFEST_NAME}; build it with 'consortium app build'"
        )
    return data


def _parse_envelope(data: bytes) -> tuple[str, bytes]:
    try:
        envelope = json.loads(data)
        algorithm, key, text = envelope["algorithm"], envelope["key"], envelope["signature"]
        signature = base64.b64decode(text, validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise BundleRejected("bad-signature", f"{SIGNATURE_NAME} is malformed ({exc})") from exc
    if algorithm != ALGORITHM or not isinstance(key, str) or len(signature) != 64:
        raise BundleRejected(
            "bad-signature", f"{SIGNATURE_NAME} is not an {ALGORITHM} signature ({algorithm!r})"
        )
    return key, signature


def _parse_manifest(data: bytes) -> dict[str, Any]:
    def bad(why: str) -> BundleRejected:
        return BundleRejected("bad-manifest", f"{MANIFEST_NAME} {why}")

    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise bad(f"is not JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise bad(f"has format {found!r}; this version reads {FORMAT!r}")
    app, files = manifest.get("app"), manifest.get("files")
    if not isinstance(app, dict) or not all(
        isinstance(app.get(k), str) and app[k] for k in ("name", "version")
    ):
        raise bad("lacks the app's name and version")
    if not isinstance(files, list):
        raise bad("lacks the file list")
    seen: set[str] = set()
    for entry in files:
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("path"), str)
            and type(entry.get("size")) is int
            and entry["size"] >= 0
            and isinstance(entry.get("sha256"), str)
            and _HEX64.match(entry["sha256"])
        )
        if not ok:
            raise bad(f"has a malformed file entry: {entry!r}")
        if entry["path"] in seen or entry["path"] in _RESERVED:
            raise bad(f"lists {entry['path']!r} twice or as a reserved name")
        seen.add(entry["path"])
    return manifest


def _check_files(manifest: dict[str, Any], scanned: ScannedBundle) -> None:
    listed = set()
    for entry in manifest["files"]:
        path = entry["path"]
        listed.add(path)
        actual = scanned.files.get(path)
        if actual is None:
            raise BundleRejected("missing-file", f"{path!r} is in the manifest but not the bundle")
        if actual.size != entry["size"] or actual.sha256 != entry["sha256"]:
            raise BundleRejected(
                "file-mismatch",
                f"{path!r} has sha256 {actual.sha256} ({actual.size} bytes); the manifest "
                f"says {entry['sha256']} ({entry['size']} bytes)",
            )
    extra = sorted(set(scanned.files) - listed - _RESERVED)
    if extra:
        raise BundleRejected("unlisted-file", f"{extra[0]!r} is in the bundle but not the manifest")


def _check_app_manifest(manifest: dict[str, Any], scanned: ScannedBundle) -> None:
    data = scanned.kept.get(MANIFEST)
    if data is None:
        raise BundleRejected("no-app", f"there is no {MANIFEST} at the bundle's root")
    try:
        app = tomllib.loads(data.decode("utf-8")).get("app", {})
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BundleRejected("bad-manifest", f"{MANIFEST} is not valid TOML ({exc})") from exc
    signed = (manifest["app"]["name"], manifest["app"]["version"])
    if not isinstance(app, dict) or (app.get("name"), app.get("version")) != signed:
        raise BundleRejected(
            "bad-manifest", f"{MANIFEST} does not name the signed app {signed[0]} {signed[1]}"
        )


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
