"""How often a refused caller is recorded: it retries, and a record per try would flood.

The fleet (its ``refused`` events), the audit log (its ``node.refused``
entries) and the server's log (:class:`RefusalLog`) record a refusal at most
once per caller and reason per :data:`REFUSAL_EVERY` seconds, and all face
strangers that can vary their name or address at will: the gate remembers at
most :data:`REFUSALS_KEPT` pairs, forgetting expired ones first, and all of
them in a flood.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

#: the same caller refused for the same reason is recorded at most once per this many seconds
REFUSAL_EVERY = 60.0
#: (caller, reason) pairs remembered before expired ones are dropped
REFUSALS_KEPT = 10_000


class RefusalGate:
    """Says whether a refusal is worth recording now. Not thread-safe: its owner locks."""

    def __init__(self, every: float = REFUSAL_EVERY, kept: int = REFUSALS_KEPT) -> None:
        self.every = every
        self.kept = kept
        #: (caller, reason) -> when it was last let through
        self._last: dict[tuple[str, str], float] = {}

    def admit(self, caller: str, reason: str, now: float) -> bool:
        """True (and remembered) unless the same pair was let through under ``every`` s ago."""
        key = (caller, reason)
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            return False
        if key not in self._last and len(self._last) >= self.kept:
            self._last = {k: t for k, t in self._last.items() if now - t < self.every}
            if len(self._last) >= self.kept:  # a flood of strangers: forget, stay bounded
                self._last.clear()
        self._last[key] = now
        return True

    def __len__(self) -> int:
        return len(self._last)


class RefusalLog:
    """A logger of refusals that writes each caller and reason at most once per
    :data:`REFUSAL_EVERY` seconds, saying how many it left out since (thread-safe).
    A refused caller that retries, or a stranger opening connection after
    connection, would otherwise write a log line per call."""

    def __init__(self, logger: logging.Logger, every: float = REFUSAL_EVERY,
                 kept: int = REFUSALS_KEPT) -> None:  # fmt: skip
        self.logger = logger
        self._gate = RefusalGate(every, kept)
        self._left_out: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def warning(self, caller: str, reason: str, message: str, *args: Any) -> None:
        """``logger.warning(message, *args)``, unless ``caller`` was refused for ``reason``
        less than ``every`` seconds ago (then it is only counted)."""
        key = (caller, reason)
        with self._lock:
            if not self._gate.admit(caller, reason, time.monotonic()):
                if key in self._left_out or len(self._left_out) < self._gate.kept:
                    self._left_out[key] = self._left_out.get(key, 0) + 1
                return
            left_out = self._left_out.pop(key, 0)
        if left_out:
            message += f" ({left_out} more refused since, not logged)"
        self.logger.warning(message, *args)


def peer_host(peer: str) -> str:
    """A gRPC peer (``ipv4:127.0.0.1:54321``) without its port: one caller's connections
    all count as that caller, whatever port each comes from."""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer
