"""What the CA remembers of each certificate it issued (its ``index.json``).

Every issued certificate's serial, holder (role and name), validity, and, once
revoked, when and why: ``consortium ca list`` shows it and the CRL is built
from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from consortium.transport.identity import utcnow
from consortium.transport.names import Role


@dataclass(frozen=True)
class IndexEntry:
    """One issued certificate as the CA remembers it."""

    serial: int
    role: Role
    name: str
    not_before: datetime
    not_after: datetime
    issued_at: datetime
    revoked_at: datetime | None = None
    reason: str | None = None

    def status(self, now: datetime | None = None) -> str:
        """``revoked``, ``expired``, ``not yet valid`` or ``valid``."""
        now = now or utcnow()
        if self.revoked_at is not None:
            return "revoked"
        if now > self.not_after:
            return "expired"
        return "not yet valid" if now < self.not_before else "valid"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["serial"] = f"{self.serial:x}"
        for key in ("not_before", "not_after", "issued_at", "revoked_at"):
            out[key] = out[key].isoformat() if out[key] is not None else None
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> IndexEntry:
        def when(key: str) -> datetime | None:
            return datetime.fromisoformat(raw[key]) if raw.get(key) else None

        return cls(
            serial=int(raw["serial"], 16),
            role=raw["role"],
            name=raw["name"],
            not_before=datetime.fromisoformat(raw["not_before"]),
            not_after=datetime.fromisoformat(raw["not_after"]),
            issued_at=datetime.fromisoformat(raw["issued_at"]),
            revoked_at=when("revoked_at"),
            reason=raw.get("reason"),
        )


@dataclass(frozen=True)
class IssuedCertificate:
    """What :meth:`CertificateAuthority.issue` wrote, and the certificate itself."""

    entry: IndexEntry
    certificate: x509.Certificate
    cert_path: Path
    key_path: Path
    ca_path: Path
