"""The apps this server can start, and who started which run through the REST API.

Uploaded bundles are kept content-addressed (``WORKDIR/api/apps/<sha256>.cab``):
uploading the same bytes twice keeps one file. Each upload appends a line to
``api/apps.jsonl`` (name, version, sha256, size, who uploaded it, when); each
run started through the API a line to ``api/runs.jsonl`` (the app it ran and who
started it). Append-only JSON lines: a crash mid-write loses at most the last
line, which is skipped when read back.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from consortium.apps.bundle import DEFAULT_LIMITS, BundleLimits, BundleRejected, scan_bundle
from consortium.apps.manifest import MANIFEST, Manifest
from consortium.core.errors import ConfigError

log = logging.getLogger("consortium.control")

APPS_DIR = "apps"
APPS_INDEX = "apps.jsonl"
RUNS_INDEX = "runs.jsonl"


@dataclass(frozen=True, slots=True)
class AppEntry:
    """One uploaded bundle: which app, which exact build, from whom."""

    name: str
    version: str
    sha256: str
    size: int
    uploaded_by: str
    uploaded_at: float
    description: str = ""
    #: the app's own ``[run-config]`` defaults, what a run changes by key (the dashboard's
    #: start form; entries listed before it was kept have none)
    run_config: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class RunEntry:
    """A run started through the API: the build it ran and who asked."""

    run_id: str
    app: str
    version: str
    sha256: str
    started_by: str
    role: str
    started_at: float
    #: the only nodes it may use (None: every node)
    nodes: list[str] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_app_manifest(bundle: bytes, limits: BundleLimits = DEFAULT_LIMITS) -> Manifest:
    """The ``consortium.toml`` of a bundle, checked like every bundle (limits, names,
    sizes) before it is parsed; :class:`ConfigError` or :class:`BundleRejected` if bad."""
    scanned = scan_bundle(bundle, limits, keep=(MANIFEST,))
    raw = scanned.kept.get(MANIFEST)
    if raw is None:
        raise BundleRejected("no-app", f"the bundle has no {MANIFEST} at its root")
    try:
        return Manifest.model_validate(tomllib.loads(raw.decode("utf-8")))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ConfigError(f"the bundle's {MANIFEST} is not valid: {exc}") from exc


class AppRegistry:
    """Uploaded app bundles and the API's run records, under ``WORKDIR/api``."""

    def __init__(self, api_dir: Path, limits: BundleLimits = DEFAULT_LIMITS) -> None:
        self.dir = api_dir
        self.limits = limits
        self._lock = threading.Lock()

    # -- apps ---------------------------------------------------------------------------
    def add(self, bundle: bytes, uploaded_by: str) -> AppEntry:
        """Keep ``bundle`` (checked first) and list it; the same bytes are stored once."""
        manifest = read_app_manifest(bundle, self.limits)
        digest = hashlib.sha256(bundle).hexdigest()
        entry = AppEntry(
            name=manifest.app.name,
            version=manifest.app.version,
            sha256=digest,
            size=len(bundle),
            uploaded_by=uploaded_by,
            uploaded_at=time.time(),
            description=manifest.app.description,
            run_config=dict(manifest.run_config),
        )
        folder = self.dir / APPS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{digest}.cab"
        if not path.exists():
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(bundle)
            os.replace(tmp, path)
        self._append(APPS_INDEX, entry.as_dict())
        return entry

    def apps(self) -> list[AppEntry]:
        """Every upload, newest first (one entry per upload of a build, kept for the record)."""
        rows = [AppEntry(**r) for r in self._read(APPS_INDEX)]
        return sorted(rows, key=lambda e: e.uploaded_at, reverse=True)

    def find(self, name: str, version: str | None = None) -> AppEntry:
        """The newest upload of app ``name`` (of ``version`` when given)."""
        for entry in self.apps():
            if entry.name == name and (version is None or entry.version == version):
                return entry
        known = sorted({f"{e.name} {e.version}" for e in self.apps()})
        what = f"{name!r}" + (f" version {version!r}" if version is not None else "")
        raise LookupError(
            f"app: no app {what} on this server (uploaded: {', '.join(known) or 'none'}); "
            "upload its bundle with POST /api/v1/apps"
        )

    def bundle(self, entry: AppEntry) -> bytes:
        return (self.dir / APPS_DIR / f"{entry.sha256}.cab").read_bytes()

    # -- runs ---------------------------------------------------------------------------
    def record_run(self, entry: RunEntry) -> None:
        self._append(RUNS_INDEX, entry.as_dict())

    def run(self, run_id: str) -> RunEntry | None:
        """Who started ``run_id`` through the API (None: started another way)."""
        found = None
        for row in self._read(RUNS_INDEX):
            if row.get("run_id") == run_id:
                found = RunEntry(**row)
        return found

    # -- files --------------------------------------------------------------------------
    def _append(self, name: str, row: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps(row, sort_keys=True) + "\n"
        with self._lock, open(self.dir / name, "a", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(line)

    def _read(self, name: str) -> list[dict[str, Any]]:
        path = self.dir / name
        if not path.exists():
            return []
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                row = json.loads(line)
            except ValueError:
                log.warning("%s line %d is not JSON (an interrupted write?): skipped", path, number)
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows
