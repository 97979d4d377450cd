"""The audit log's hash chain: entries, their canonical encoding, and the check of a chain.

An entry's ``hash`` is the SHA-256 (hex) of the UTF-8 bytes of its canonical
JSON: an object with every field except ``hash`` (``seq`` and ``prev_hash``
included; ``detail`` as a JSON object), keys sorted, no spaces, non-ASCII
kept as it is (``json.dumps(fields, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)``). The first entry's ``prev_hash`` is 64 zeros; each
next one's is the hash of the one before. Any edited field, removed entry or
moved entry breaks the chain at that entry. Only stdlib here: a JSON-lines
export can be checked where no database is at hand.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

from consortium.core.audit import AuditEvent, Outcome
from consortium.core.errors import ConfigError

#: the ``prev_hash`` of entry 1
GENESIS = "0" * 64
#: how an entry's time is written (UTC, microseconds): text order is time order
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
OUTCOMES: tuple[str, ...] = get_args(Outcome)
#: longest value of each bounded field (the columns' sizes)
FIELD_LIMITS = {"actor": 255, "role": 64, "organisation": 255, "action": 64, "run_id": 64}
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FIELDS = (
    "seq", "time", "actor", "role", "organisation", "action", "outcome",
    "run_id", "target", "detail", "prev_hash", "hash",
)  # fmt: skip


def format_time(when: datetime) -> str:
    """``when`` (aware) as an entry's time: ``2026-12-04T16:14:28.123456Z``."""
    if when.tzinfo is None:
        raise ConfigError(f"naive datetime {when!r}: audit times must be aware")
    return when.astimezone(UTC).strftime(TIME_FORMAT)


def canonical_detail(detail: Mapping[str, Any]) -> str:
    """``detail`` as canonical JSON; a clear error if it is not JSON."""
    if not all(isinstance(k, str) for k in detail):
        raise ConfigError("audit event field 'detail' must have string keys")
    try:
        return json.dumps(
            dict(detail), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
            allow_nan=False,
        )  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"audit event field 'detail' is not JSON: {exc}") from exc


def check_event(event: AuditEvent) -> None:
    """Refuse an event the log cannot hold, naming the field."""
    if not event.actor:
        raise ConfigError("audit event field 'actor' is empty")
    if not event.action:
        raise ConfigError("audit event field 'action' is empty")
    if event.outcome not in OUTCOMES:
        raise ConfigError(
            f"audit event field 'outcome' is {event.outcome!r}, not one of {', '.join(OUTCOMES)}"
        )
    texts = {
        "actor": event.actor, "role": event.role, "organisation": event.organisation,
        "action": event.action, "run_id": event.run_id, "target": event.target,
    }  # fmt: skip
    for name, value in texts.items():
        if len(value) > FIELD_LIMITS.get(name, len(value)):
            raise ConfigError(
                f"audit event field {name!r} is longer than {FIELD_LIMITS[name]} characters"
            )
        if "\x00" in value:  # PostgreSQL's text cannot hold NUL
            raise ConfigError(f"audit event field {name!r} contains a NUL character")


@dataclass(frozen=True, slots=True)
class AuditHead:
    """The last entry's place and hash: note it somewhere the database's admin cannot
    write, and ``verify(expect_head=…)`` shows a log cut short or rewritten."""

    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> AuditHead | str:
        """``SEQ:HASH`` as a head; a bare ``HASH`` is returned as the string."""
        seq, sep, digest = text.strip().rpartition(":")
        if not _HEX64.fullmatch(digest) or (sep and not seq.isdigit()):
            raise ConfigError(
                f"expected head {text!r} is not SEQ:HASH or HASH (64 lower-case hex digits)"
            )
        return cls(int(seq), digest) if sep else digest


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry of the log, as stored and as exported (one JSON line each)."""

    seq: int
    time: str
    actor: str
    role: str
    organisation: str
    action: str
    outcome: str
    run_id: str
    target: str
    detail: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = GENESIS
    hash: str = ""

    def fields(self) -> dict[str, Any]:
        """Every field but ``hash``: what the hash covers."""
        out = asdict(self)
        del out["hash"]
        return out

    def compute_hash(self) -> str:
        encoded = json.dumps(
            self.fields(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")
        return hashlib.sha256(encoded).hexdigest()

    def to_json(self) -> str:
        """One line of the JSON-lines export."""
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)

    @classmethod
    def chained(cls, seq: int, time: str, event: AuditEvent, prev_hash: str) -> AuditEntry:
        """The entry ``event`` becomes at ``seq`` after the entry whose hash is ``prev_hash``."""
        entry = cls(
            seq=seq, time=time, actor=event.actor, role=event.role,
            organisation=event.organisation, action=event.action, outcome=event.outcome,
            run_id=event.run_id, target=event.target,
            detail=json.loads(canonical_detail(event.detail)), prev_hash=prev_hash,
        )  # fmt: skip
        return cls(**{**asdict(entry), "hash": entry.compute_hash()})

    @classmethod
    def from_json(cls, line: str) -> AuditEntry:
        """An exported line back; :class:`ValueError` saying what is wrong with it."""
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        missing = [f for f in _FIELDS if f not in data]
        extra = sorted(set(data) - set(_FIELDS))
        if missing or extra:
            raise ValueError(f"missing fields {missing}, unknown fields {extra}")
        if not isinstance(data["seq"], int) or not isinstance(data["detail"], dict):
            raise ValueError("'seq' must be an integer and 'detail' an object")
        texts = [f for f in _FIELDS if f not in ("seq", "detail") and not isinstance(data[f], str)]
        if texts:
            raise ValueError(f"fields {texts} must be strings")
        return cls(**data)


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What :class:`ChainCheck` found: ``ok``, or the first bad entry and why."""

    ok: bool
    #: entries checked
    entries: int
    #: the last entry checked (``seq`` 0 and 64 zeros for an empty log)
    head: AuditHead
    #: the first entry that is wrong (or missing), None when ok
    bad_seq: int | None = None
    reason: str = ""

    def __str__(self) -> str:
        if self.ok:
            return f"audit log ok: {self.entries} entries, head {self.head}"
        return f"audit log broken at entry {self.bad_seq}: {self.reason}"


class ChainCheck:
    """Feed entries in the order they claim (by ``seq``); the first break is kept."""

    def __init__(self, expect_head: AuditHead | str | None = None) -> None:
        self._expect = expect_head
        # the head of an empty log is in every log
        self._seen_expected = expect_head in (AuditHead(0, GENESIS), GENESIS)
        self._count = 0
        self._head = AuditHead(0, GENESIS)
        self._bad: tuple[int, str] | None = None

    @property
    def broken(self) -> bool:
        return self._bad is not None

    @property
    def head(self) -> AuditHead:
        """The last good entry so far."""
        return self._head

    def feed(self, entry: AuditEntry, where: str = "") -> bool:
        """Check ``entry`` against the one before; False once the chain is broken.

        ``where`` (a file's line) is added to the reason."""
        if self._bad is not None:
            return False
        expected = self._head.seq + 1
        at = f" ({where})" if where else ""
        if entry.seq != expected:
            if entry.seq > expected:
                return self._fail(
                    expected,
                    f"the log goes from entry {self._head.seq} to entry {entry.seq}{at}: "
                    f"{_entries(expected, entry.seq - 1)} missing",
                )
            return self._fail(expected, f"entry {entry.seq} comes after entry {self._head.seq}{at}")
        if entry.compute_hash() != entry.hash:
            return self._fail(
                entry.seq,
                f"its fields do not match its hash{at}: the entry was edited, moved, or its "
                "hash changed",
            )
        if entry.prev_hash != self._head.hash:
            return self._fail(
                entry.seq,
                f"its prev_hash is not entry {self._head.seq}'s hash{at}: an entry before it "
                "was removed, replaced or reordered",
            )
        if isinstance(self._expect, AuditHead) and entry.seq == self._expect.seq:
            if entry.hash != self._expect.hash:
                return self._fail(
                    entry.seq,
                    f"its hash is not the recorded head {self._expect}: the log was rewritten",
                )
            self._seen_expected = True
        elif isinstance(self._expect, str) and entry.hash == self._expect:
            self._seen_expected = True
        self._count += 1
        self._head = AuditHead(entry.seq, entry.hash)
        return True

    def fail_at(self, seq: int, reason: str) -> None:
        """Record a break found outside the chain (a line that is not an entry)."""
        if self._bad is None:
            self._fail(seq, reason)

    def report(self) -> VerifyReport:
        if self._bad is None and self._expect is not None and not self._seen_expected:
            after = self._head.seq + 1
            if isinstance(self._expect, AuditHead):
                self._fail(
                    after,
                    f"the log ends at entry {self._head.seq} but the recorded head is entry "
                    f"{self._expect.seq}: {_entries(after, self._expect.seq)} removed",
                )
            else:
                self._fail(
                    after,
                    f"the recorded head {self._expect[:16]}… is not in the log (it ends at "
                    f"entry {self._head.seq}): its tail was removed or the log was rewritten",
                )
        if self._bad is not None:
            seq, reason = self._bad
            return VerifyReport(False, self._count, self._head, seq, reason)
        return VerifyReport(True, self._count, self._head)

    def _fail(self, seq: int, reason: str) -> bool:
        self._bad = (seq, reason)
        return False


def _entries(first: int, last: int) -> str:
    return f"entry {first}" if first == last else f"entries {first}–{last}"


def write_jsonl(entries: Iterable[AuditEntry], path: Path) -> int:
    """Write ``entries`` one JSON object a line; returns how many."""
    count = 0
    with path.open("w", encoding="utf-8") as fh:
        for entry in entries:
            fh.write(entry.to_json() + "\n")
            count += 1
    return count


def read_jsonl(path: Path) -> Iterator[tuple[int, AuditEntry | str]]:
    """(line number, entry) for each non-empty line; a line that is not an entry gives
    the reason instead."""
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield number, AuditEntry.from_json(line)
            except (ValueError, TypeError) as exc:
                yield number, f"line {number} is not an audit entry: {exc}"


def verify_jsonl(path: Path, *, expect_head: AuditHead | str | None = None) -> VerifyReport:
    """Check an exported log without a database (the same checks as ``AuditLog.verify``)."""
    if not path.is_file():
        raise ConfigError(f"no audit export at {path}")
    check = ChainCheck(expect_head)
    for number, item in read_jsonl(path):
        if isinstance(item, str):
            check.fail_at(check.head.seq + 1, item)
        else:
            check.feed(item, where=f"line {number}")
        if check.broken:
            break
    return check.report()
