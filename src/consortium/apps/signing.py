"""Signed app bundles: a manifest of every file's digest, signed by the publisher's Ed25519 key.

A bundle (``APP.cab``) is a reproducible zip (:mod:`consortium.apps.bundle`) holding

* ``BUNDLE.json``, first: ``{"format": "consortium-bundle/1", "app": {"name", "version"},
  "files": [{"path", "size", "sha256"}, ...]}`` (sorted keys and paths), and
* the app's files, sorted by path, and, once signed,
* ``BUNDLE.sig``, last: ``{"algorithm": "ed25519", "key": "sha256:<fingerprint>",
  "signature": "<base64>"}``, a detached signature over ``BUNDLE.json``'s exact bytes.

:func:`verify_bundle` checks all of it in memory, before anything is extracted. The
publisher's keys (generated, read, trusted) are :mod:`consortium.apps.publisher_keys`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
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
from consortium.apps.publisher_keys import PrivateKey, PublicKey
from consortium.core.errors import ConfigError

if TYPE_CHECKING:
    pass

FORMAT = "consortium-bundle/1"
ALGORITHM = "ed25519"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_RESERVED = {MANIFEST_NAME, SIGNATURE_NAME}


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


def sign_bundle(
    bundle: bytes, private_key: PrivateKey, limits: BundleLimits = DEFAULT_LIMITS
) -> bytes:
    """The bundle with ``BUNDLE.sig`` added (or replaced): Ed25519 over ``BUNDLE.json``.

    The files are checked against the manifest first: only a consistent bundle is signed.
    """
    scanned = scan_bundle(bundle, limits, keep=_names(bundle, limits))
    manifest_bytes = _manifest_bytes(scanned)
    _check_files(_parse_manifest(manifest_bytes), scanned)
    signature = private_key.signing_key().sign(manifest_bytes)
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
    if not signer.verifies(signature, manifest_bytes):
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
