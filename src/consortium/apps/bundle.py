"""App bundles: an app folder as one reproducible zip, read and extracted within limits.

A bundle is untrusted input until proven otherwise. :func:`scan_bundle` reads one
entirely in memory, checking every entry (names, types, declared and actual sizes)
against :class:`BundleLimits`; :func:`extract_bundle` writes nothing until that scan
has passed. Refusals are :class:`BundleRejected` (a :class:`SecurityError`) with a
short stable ``reason`` code and a one-line message. Signing and verification live in
:mod:`consortium.apps.signing`.
"""

from __future__ import annotations

import hashlib
import io
import stat
import zipfile
import zlib
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from consortium.core.errors import ConfigError, SecurityError

MIB = 1024 * 1024
#: the signed manifest and its detached signature, at the bundle's root
MANIFEST_NAME = "BUNDLE.json"
SIGNATURE_NAME = "BUNDLE.sig"
_APP_MANIFEST = "consortium.toml"
_SKIP_DIRS = {"__pycache__", ".git", ".venv", ".mypy_cache", ".pytest_cache", "runs"}
_SKIP_SUFFIXES = {".pyc", ".pyo", ".cab"}
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_COMPRESSLEVEL = 6
_CHUNK = MIB
_MAX_COMPONENT = 255

RejectReason = Literal[
    "too-large",
    "not-a-zip",
    "unsafe-path",
    "unsafe-entry",
    "duplicate",
    "zip-bomb",
    "corrupt",
    "no-app",
    "unsigned",
    "bad-manifest",
    "untrusted-key",
    "bad-signature",
    "file-mismatch",
    "unlisted-file",
    "missing-file",
    "not-pinned",
]


class BundleRejected(SecurityError):
    """A bundle failed a check; ``reason`` is a stable code, the message says what and why."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(f"app bundle refused ({reason}): {message}")
        self.reason: RejectReason = reason


@dataclass(frozen=True)
class BundleLimits:
    """What a bundle may hold; every limit is checked before a byte reaches the disk."""

    max_bundle_bytes: int = 256 * MIB  # the zip itself
    max_total_bytes: int = 1024 * MIB  # all files, uncompressed
    max_files: int = 10_000  # entries, directories included
    max_file_bytes: int = 256 * MIB  # one file, uncompressed
    max_path_depth: int = 32  # folders + file name
    max_path_length: int = 1024  # bytes of UTF-8 in one entry name


DEFAULT_LIMITS = BundleLimits()
#: kept for callers of the first bundle API
MAX_BUNDLE_BYTES = DEFAULT_LIMITS.max_bundle_bytes


@dataclass(frozen=True)
class FileDigest:
    """One file of a bundle: its path, size and SHA-256, as actually read."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ScannedBundle:
    """A bundle that passed the structural checks: every file's digest, a few kept whole."""

    sha256: str
    files: dict[str, FileDigest]
    kept: dict[str, bytes] = field(default_factory=dict)


class _Digest:
    """A sink that hashes what it is fed and, if asked, keeps it."""

    def __init__(self, *, keep: bool) -> None:
        self.keep = keep
        self.parts: list[bytes] = []
        self._hasher = hashlib.sha256()

    def __call__(self, chunk: bytes) -> None:
        self._hasher.update(chunk)
        if self.keep:
            self.parts.append(chunk)

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()


def app_files(app_dir: Path, limits: BundleLimits = DEFAULT_LIMITS) -> list[tuple[str, Path]]:
    """The files of an app folder that go into its bundle, sorted by their POSIX path;
    refuses a folder over ``limits`` (file count and sizes) before anything is read."""
    root = app_dir.resolve()
    if not (root / _APP_MANIFEST).is_file():
        raise ConfigError(f"{app_dir} is not an app folder (no {_APP_MANIFEST})")
    chosen: list[tuple[str, Path]] = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part in _SKIP_DIRS for part in rel.parts) or path.suffix in _SKIP_SUFFIXES:
            continue
        if path.is_symlink():
            raise ConfigError(f"{path} is a symbolic link; copy the file into the app folder")
        if path.suffix == ".key":
            raise ConfigError(f"{path} looks like a private key; keep keys out of the app folder")
        if path.is_file():
            chosen.append((rel.as_posix(), path))
    if len(chosen) + 2 > limits.max_files:  # + the manifest and the signature
        raise ConfigError(f"{app_dir}: {len(chosen)} files, over the limit of {limits.max_files}")
    total = 0
    for _, path in chosen:
        size = path.stat().st_size
        total += size
        if size > limits.max_file_bytes:
            limit = _size(limits.max_file_bytes)
            raise ConfigError(f"{path}: {size} bytes, over the {limit} per-file limit")
    if total > limits.max_total_bytes:
        limit = _size(limits.max_total_bytes)
        raise ConfigError(f"{app_dir}: the files hold {total} bytes, over the {limit} limit")
    return sorted(chosen)


def write_zip(entries: Iterable[tuple[str, bytes]]) -> bytes:
    """A zip of ``entries`` with nothing host-specific: fixed time, mode 0644, Unix origin."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=_COMPRESSLEVEL) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.create_system = 3
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data, compresslevel=_COMPRESSLEVEL)
    return buffer.getvalue()


def make_bundle(app_dir: Path) -> bytes:
    """The unsigned bundle of ``app_dir`` (with its manifest): same folder ⇒ same bytes."""
    from consortium.apps.signing import build_bundle

    return build_bundle(app_dir)


def bundle_digest(bundle: bytes) -> str:
    """The SHA-256 (hex) of a whole bundle: what a node pins to run exactly one build."""
    return hashlib.sha256(bundle).hexdigest()


def scan_bundle(
    bundle: bytes, limits: BundleLimits = DEFAULT_LIMITS, keep: Collection[str] = ()
) -> ScannedBundle:
    """Check and read every entry of ``bundle`` in memory; keep the files named in ``keep``.

    Refuses an oversized or malformed zip, unsafe names (absolute, ``..``, backslashes),
    links and device entries, duplicates, encrypted or oddly compressed entries, sizes
    over ``limits``, and any member whose data does not match its declared size and CRC.
    """
    with _open_zip(bundle, limits) as zf:
        infos = [info for info in zf.infolist() if not info.is_dir()]
        files: dict[str, FileDigest] = {}
        kept: dict[str, bytes] = {}
        for info in infos:
            sink = _Digest(keep=info.filename in keep)
            _stream(zf, info, sink)
            files[info.filename] = FileDigest(info.filename, info.file_size, sink.hexdigest())
            if sink.keep:
                kept[info.filename] = b"".join(sink.parts)
    return ScannedBundle(bundle_digest(bundle), files, kept)


def extract_bundle(bundle: bytes, target: Path, limits: BundleLimits = DEFAULT_LIMITS) -> Path:
    """Unpack ``bundle`` into ``target`` after :func:`scan_bundle` passed: a refused bundle
    writes nothing, not even ``target``. Files are written as plain 0644 files."""
    scanned = scan_bundle(bundle, limits)
    if _APP_MANIFEST not in scanned.files:
        raise BundleRejected("no-app", f"there is no {_APP_MANIFEST} at the bundle's root")
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    with _open_zip(bundle, limits) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            dest = root.joinpath(*info.filename.split("/"))
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_symlink():
                raise BundleRejected("unsafe-path", f"{dest} exists and is a symbolic link")
            with dest.open("wb") as out:
                _stream(zf, info, out.write)
            dest.chmod(0o644)
    return target


def _open_zip(bundle: bytes, limits: BundleLimits) -> zipfile.ZipFile:
    if len(bundle) > limits.max_bundle_bytes:
        raise BundleRejected(
            "too-large",
            f"the bundle is {len(bundle)} bytes, over the {_size(limits.max_bundle_bytes)} limit",
        )
    try:
        zf = zipfile.ZipFile(io.BytesIO(bundle))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise BundleRejected("not-a-zip", f"not a valid zip archive ({exc})") from exc
    try:
        _check_entries(zf.infolist(), limits)
    except BaseException:
        zf.close()
        raise
    return zf


def _check_entries(infos: list[zipfile.ZipInfo], limits: BundleLimits) -> None:
    if len(infos) > limits.max_files:
        raise BundleRejected(
            "too-large",
            f"the bundle has {len(infos)} entries, over the limit of {limits.max_files}",
        )
    seen: dict[str, str] = {}
    folders: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        _check_name(name, limits)
        _check_kind(info)
        key = name.rstrip("/").casefold()
        if key in seen:
            raise BundleRejected("duplicate", f"{name!r} appears twice (as {seen[key]!r})")
        seen[key] = name
        if info.is_dir():
            continue
        parts = key.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if info.file_size > limits.max_file_bytes:
            raise BundleRejected(
                "too-large",
                f"{name!r} expands to {info.file_size} bytes, "
                f"over the {_size(limits.max_file_bytes)} per-file limit",
            )
        total += info.file_size
        if total > limits.max_total_bytes:
            raise BundleRejected(
                "too-large",
                f"the files expand to more than the {_size(limits.max_total_bytes)} limit "
                f"(at {name!r}: {total} bytes declared)",
            )
    clash = sorted(folders.intersection(k for k, n in seen.items() if not n.endswith("/")))
    if clash:
        raise BundleRejected("duplicate", f"{seen[clash[0]]!r} is both a file and a folder")


def _check_name(name: str, limits: BundleLimits) -> None:
    def unsafe(why: str) -> BundleRejected:
        return BundleRejected("unsafe-path", f"entry {name!r} {why}")

    if not name or "\x00" in name or "\\" in name:
        raise unsafe("has an empty name, a NUL byte or a backslash")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise unsafe("is an absolute path")
    parts = name.rstrip("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise unsafe("has an empty, '.' or '..' component")
    if len(parts) > limits.max_path_depth:
        raise unsafe(f"is {len(parts)} levels deep, over the limit of {limits.max_path_depth}")
    encoded = len(name.encode("utf-8"))
    if encoded > limits.max_path_length:
        raise unsafe(f"is {encoded} bytes long, over the limit of {limits.max_path_length}")
    if any(len(part.encode("utf-8")) > _MAX_COMPONENT for part in parts):
        raise unsafe(f"has a component over {_MAX_COMPONENT} bytes")


def _check_kind(info: zipfile.ZipInfo) -> None:
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise BundleRejected("unsafe-entry", f"entry {info.filename!r} is a symbolic link")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise BundleRejected(
            "unsafe-entry", f"entry {info.filename!r} is not a regular file (mode {kind:o})"
        )
    if info.flag_bits & 0x1:
        raise BundleRejected("unsafe-entry", f"entry {info.filename!r} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise BundleRejected(
            "unsafe-entry",
            f"entry {info.filename!r} uses compression method {info.compress_type} "
            "(only stored and deflated are accepted)",
        )


def _stream(zf: zipfile.ZipFile, info: zipfile.ZipInfo, sink: Callable[[bytes], object]) -> None:
    """Feed a member's bytes to ``sink``, stopping at once past its declared size."""
    declared = info.file_size
    got = 0
    try:
        with zf.open(info) as member:
            while chunk := member.read(min(_CHUNK, declared - got + 1)):
                got += len(chunk)
                if got > declared:
                    raise BundleRejected(
                        "zip-bomb", f"{info.filename!r} expands past its declared {declared} bytes"
                    )
                sink(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as exc:
        raise BundleRejected(
            "corrupt", f"{info.filename!r} does not match its declared size or CRC ({exc})"
        ) from exc
    if got != declared:
        raise BundleRejected(
            "zip-bomb", f"{info.filename!r} holds {got} bytes, not its declared {declared}"
        )


def _size(n: int) -> str:
    return f"{n // MIB} MiB" if n >= MIB and n % MIB == 0 else f"{n} bytes"
