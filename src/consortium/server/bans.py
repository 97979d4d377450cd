"""The nodes a server refuses whatever their certificate: ``consortium fleet ban NAME``.

Revoking a certificate needs the CA (often kept offline); a ban takes effect
on the server at once, at the node's next call, and survives a restart: the
list lives in memory and in ``banned-nodes.json`` in the server's state
folder, rewritten atomically on every change::

    {"version": 1, "banned": {"NAME": {"reason": "...", "by": "admin 'alice'",
                                       "at": "2026-12-04T16:00:00+00:00"}}}
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from consortium.core.errors import ConfigError

#: the ban list's file in the server's state folder
BANS_FILE = "banned-nodes.json"
_VERSION = 1


@dataclass(frozen=True, slots=True)
class Ban:
    """Why a node is banned, by whom, since when."""

    reason: str
    by: str
    at: str


class NodeBans:
    """The ban list (a :class:`~consortium.transport.fleet_api.BanList`), kept in ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._bans = _load(path)

    @classmethod
    def in_state_dir(cls, directory: Path) -> NodeBans:
        return cls(directory / BANS_FILE)

    def ban(self, name: str, reason: str, by: str) -> bool:
        with self._lock:
            if name in self._bans:
                return False
            at = datetime.now(UTC).isoformat(timespec="seconds")
            self._save({**self._bans, name: Ban(reason, by, at)})
            return True

    def unban(self, name: str) -> bool:
        with self._lock:
            if name not in self._bans:
                return False
            self._save({n: b for n, b in self._bans.items() if n != name})
            return True

    def reason(self, name: str) -> str | None:
        ban = self._bans.get(name)  # one dict lookup: no lock needed to read
        return None if ban is None else ban.reason

    def banned(self) -> dict[str, Ban]:
        """Every banned node, by name."""
        return dict(self._bans)

    def _save(self, bans: dict[str, Ban]) -> None:
        """Write ``bans`` to the file, then (only if that worked) make them the list."""
        document = {
            "version": _VERSION,
            "banned": {n: {"reason": b.reason, "by": b.by, "at": b.at} for n, b in bans.items()},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(document, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self._bans = bans


def _load(path: Path) -> dict[str, Ban]:
    """The bans in ``path`` (none if it does not exist); ConfigError naming what is wrong."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the ban list {path}: {exc}") from None
    try:
        document: Any = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("version") != _VERSION:
        raise ConfigError(f"{path}: version: expected {_VERSION}")
    entries = document.get("banned")
    if not isinstance(entries, dict):
        raise ConfigError(f"{path}: banned: expected an object of NAME: {{reason, by, at}}")
    bans: dict[str, Ban] = {}
    for name, entry in entries.items():
        fields = ("reason", "by", "at")
        if not isinstance(entry, dict) or not all(isinstance(entry.get(f), str) for f in fields):
            raise ConfigError(f"{path}: banned.{name}: expected reason, by and at (strings)")
        bans[name] = Ban(entry["reason"], entry["by"], entry["at"])
    return bans
