"""App bundles: an app folder as one deterministic zip, and its safe extraction."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path, PurePosixPath

from consortium.core.errors import ConfigError

_SKIP_DIRS = {"__pycache__", ".git", ".venv", ".mypy_cache", ".pytest_cache", "runs"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}
#: Bundles are small source trees; refuse anything suspiciously large.
MAX_BUNDLE_BYTES = 64 * 1024 * 1024


def make_bundle(app_dir: Path) -> bytes:
    """Zip ``app_dir`` (sorted entries, fixed timestamps): same folder ⇒ same bytes."""
    root = app_dir.resolve()
    if not (root / "consortium.toml").exists():
        raise ConfigError(f"{app_dir} is not an app folder (no consortium.toml)")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if any(part in _SKIP_DIRS for part in rel.parts) or path.suffix in _SKIP_SUFFIXES:
                continue
            if path.is_file():
                info = zipfile.ZipInfo(rel.as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                zf.writestr(info, path.read_bytes(), compress_type=zipfile.ZIP_DEFLATED)
    data = buffer.getvalue()
    if len(data) > MAX_BUNDLE_BYTES:
        raise ConfigError(f"the app bundle is {len(data)} bytes, over {MAX_BUNDLE_BYTES}")
    return data


def bundle_digest(bundle: bytes) -> str:
    return hashlib.sha256(bundle).hexdigest()


def extract_bundle(bundle: bytes, target: Path) -> Path:
    """Unpack into ``target``, refusing absolute paths, ``..`` and oversized content."""
    if len(bundle) > MAX_BUNDLE_BYTES:
        raise ConfigError(f"the app bundle is {len(bundle)} bytes, over {MAX_BUNDLE_BYTES}")
    try:
        zf = zipfile.ZipFile(io.BytesIO(bundle))
    except zipfile.BadZipFile as exc:
        raise ConfigError(f"the app bundle is not a zip file: {exc}") from exc
    with zf:
        total = 0
        for info in zf.infolist():
            name = PurePosixPath(info.filename)
            if name.is_absolute() or ".." in name.parts or info.filename.startswith("/"):
                raise ConfigError(f"the app bundle holds an unsafe path: {info.filename!r}")
            total += info.file_size
            if total > 4 * MAX_BUNDLE_BYTES:
                raise ConfigError("the app bundle expands to more than allowed")
        target.mkdir(parents=True, exist_ok=True)
        zf.extractall(target)
    if not (target / "consortium.toml").exists():
        raise ConfigError("the app bundle has no consortium.toml at its root")
    return target
