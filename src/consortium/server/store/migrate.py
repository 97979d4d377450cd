"""Bring a database written by an older Consortium up to :data:`SCHEMA_VERSION`.

Each step is a few statements run in the caller's write transaction (both
SQLite and PostgreSQL have transactional DDL), so an interrupted upgrade
leaves the old schema intact.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.orm import Session


def _checkpoint_digest_column(s: Session) -> None:
    """2: checkpoints carry a CRC-32, not a SHA-256; the column says which."""
    s.execute(text("ALTER TABLE checkpoints RENAME COLUMN sha256 TO digest"))
    if s.get_bind().dialect.name == "postgresql":  # SQLite does not enforce VARCHAR lengths
        s.execute(text("ALTER TABLE checkpoints ALTER COLUMN digest TYPE VARCHAR(80)"))
    s.execute(text("UPDATE checkpoints SET digest = 'sha256:' || digest"))


#: the step that brings version N - 1 to version N
STEPS: dict[int, Callable[[Session], None]] = {2: _checkpoint_digest_column}


def upgrade(s: Session, version: int, target: int) -> None:
    """Run the steps from ``version`` to ``target`` in ``s``."""
    for step in range(version + 1, target + 1):
        STEPS[step](s)
