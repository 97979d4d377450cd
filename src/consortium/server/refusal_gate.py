"""How often a refused caller is recorded: it retries, and a record per try would flood.

The fleet (its ``refused`` events) and the audit log (its ``node.refused``
entries) both record a refusal at most once per caller and reason per
:data:`REFUSAL_EVERY` seconds, and both face strangers that can vary their
name or address at will: the gate remembers at most :data:`REFUSALS_KEPT`
pairs, forgetting expired ones first, and all of them in a flood.
"""

from __future__ import annotations

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
