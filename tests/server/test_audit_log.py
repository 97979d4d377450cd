"""The hash-chained audit log, on a real SQLite file and a real PostgreSQL server.

Tampering goes through raw SQL on a second connection, as a database admin
would: the append-only triggers are dropped first, then one row is changed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import DBAPIError

from consortium.core.audit import (
    NODE_JOINED,
    NODE_REFUSED,
    RUN_START,
    RUN_STOP,
    SERVER_ACTOR,
    AuditEvent,
    AuditSink,
)
from consortium.core.errors import ConfigError
from consortium.server.store import StateStore, default_url
from consortium.server.store.append_only import trigger_names
from consortium.server.store.audit import AuditLog
from consortium.server.store.audit_chain import GENESIS, AuditEntry, AuditHead
from consortium.server.store.models import SCHEMA_VERSION
from consortium.transport.refusal_gate import REFUSAL_EVERY

T0 = datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return default_url(tmp_path / "state")
    return str(request.getfixturevalue("postgres_db_url"))


@pytest.fixture
def store(url: str) -> Iterator[StateStore]:
    with StateStore(url, clock=Clock()) as s:
        yield s


@pytest.fixture
def audit(store: StateStore) -> AuditLog:
    return AuditLog(store)


def event(i: int, *, actor: str = "alice", action: str = RUN_START) -> AuditEvent:
    return AuditEvent(
        actor=actor, action=action, role="admin", organisation="St Mary", run_id=f"run-{i}",
        target="heart", detail={"sha256": f"{i:064x}", "rounds": i, "note": "größe"},
    )  # fmt: skip


def five(audit: AuditLog) -> list[AuditEntry]:
    return [audit.append(event(i)) for i in range(1, 6)]


def tamper(url: str, *statements: str) -> None:
    """Run ``statements`` as the database's owner would: triggers dropped first."""
    engine = create_engine(url)
    with engine.begin() as conn:
        for trigger in trigger_names("audit_log"):
            if engine.dialect.name == "postgresql":
                conn.execute(text(f"DROP TRIGGER IF EXISTS {trigger} ON audit_log"))
            else:
                conn.execute(text(f"DROP TRIGGER IF EXISTS {trigger}"))
        for statement in statements:
            conn.execute(text(statement))
    engine.dispose()


class TestAuditLog:
    def test_appended_entries_chain_and_verify(self, audit: AuditLog) -> None:
        entries = five(audit)
        assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
        assert entries[0].prev_hash == GENESIS
        for before, after in itertools.pairwise(entries):
            assert after.prev_hash == before.hash
        assert entries[0].time == "2026-03-01T12:00:01.250000Z"
        assert audit.entries() == entries  # what was stored is what was handed back
        report = audit.verify()
        assert report.ok and report.entries == 5 and report.bad_seq is None
        assert report.head == audit.head() == AuditHead(5, entries[-1].hash)
        assert str(report) == f"audit log ok: 5 entries, head 5:{entries[-1].hash}"

    def test_the_hash_is_the_documented_encoding(self, audit: AuditLog) -> None:
        entry = audit.append(event(1))
        fields = {
            "seq": 1, "time": entry.time, "actor": "alice", "role": "admin",
            "organisation": "St Mary", "action": RUN_START, "outcome": "ok", "run_id": "run-1",
            "target": "heart", "detail": {"sha256": f"{1:064x}", "rounds": 1, "note": "größe"},
            "prev_hash": GENESIS,
        }  # fmt: skip
        encoded = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert entry.hash == hashlib.sha256(encoded.encode()).hexdigest()

    def test_an_empty_log_verifies(self, audit: AuditLog) -> None:
        assert audit.head() == AuditHead(0, GENESIS)
        report = audit.verify(expect_head=AuditHead(0, GENESIS))
        assert report.ok and report.entries == 0

    def test_is_an_audit_sink(self, audit: AuditLog) -> None:
        sink: AuditSink = audit
        sink(event(1))
        assert [e.run_id for e in audit.entries()] == ["run-1"]

    def test_entries_filter_by_run_actor_action_and_time(self, audit: AuditLog) -> None:
        audit.append(event(1))
        audit.append(event(2, actor="bob"))
        audit.append(event(1, action=RUN_STOP))
        audit.append(event(3, actor="bob", action=RUN_STOP))
        assert [e.seq for e in audit.entries(run_id="run-1")] == [1, 3]
        assert [e.seq for e in audit.entries(actor="bob")] == [2, 4]
        assert [e.seq for e in audit.entries(action=RUN_STOP)] == [3, 4]
        assert [e.seq for e in audit.entries(actor="bob", action=RUN_STOP)] == [4]
        assert [e.seq for e in audit.entries(since=T0 + timedelta(seconds=3))] == [3, 4]
        assert [e.seq for e in audit.entries(limit=2)] == [3, 4]
        assert audit.entries(actor="nobody") == []

    @pytest.mark.parametrize(
        ("column", "value"),
        [
            ("time", "'2026-03-01T11:00:00.000000Z'"),
            ("actor", "'mallory'"),
            ("role", "'observer'"),
            ("organisation", "'Elsewhere'"),
            ("action", "'run.list'"),
            ("outcome", "'denied'"),
            ("run_id", "'run-9'"),
            ("target", "'other'"),
            ("detail", "'{\"rounds\": 3}'"),
            ("detail", "'not json'"),
            ("prev_hash", f"'{'1' * 64}'"),
            ("hash", f"'{'2' * 64}'"),
        ],
    )
    def test_one_edited_field_is_caught_at_its_entry(
        self, audit: AuditLog, url: str, column: str, value: str
    ) -> None:
        five(audit)
        tamper(url, f"UPDATE audit_log SET {column} = {value} WHERE seq = 3")
        report = audit.verify()
        assert not report.ok and report.bad_seq == 3, report
        assert "entry 3" in str(report) and "edited" in report.reason
        assert report.entries == 2 and report.head.seq == 2

    def test_a_removed_entry_is_caught(self, audit: AuditLog, url: str) -> None:
        five(audit)
        tamper(url, "DELETE FROM audit_log WHERE seq = 3")
        report = audit.verify()
        assert not report.ok and report.bad_seq == 3
        assert report.reason == "the log goes from entry 2 to entry 4: entry 3 missing"

    def test_a_removed_entry_renumbered_is_caught(self, audit: AuditLog, url: str) -> None:
        five(audit)
        tamper(
            url,
            "DELETE FROM audit_log WHERE seq = 3",
            "UPDATE audit_log SET seq = seq + 100 WHERE seq > 3",
            "UPDATE audit_log SET seq = seq - 101 WHERE seq > 100",
        )
        report = audit.verify()
        assert not report.ok and report.bad_seq == 3 and "edited" in report.reason

    def test_swapped_entries_are_caught(self, audit: AuditLog, url: str) -> None:
        five(audit)
        tamper(
            url,
            "UPDATE audit_log SET seq = 100 WHERE seq = 2",
            "UPDATE audit_log SET seq = 2 WHERE seq = 3",
            "UPDATE audit_log SET seq = 3 WHERE seq = 100",
        )
        report = audit.verify()
        assert not report.ok and report.bad_seq == 2 and "moved" in report.reason

    def test_a_cut_tail_is_caught_only_against_a_recorded_head(
        self, audit: AuditLog, url: str
    ) -> None:
        five(audit)
        head = audit.head()
        assert audit.verify(expect_head=head).ok
        assert audit.verify(expect_head=head.hash).ok
        audit.append(event(6))  # the log grew after the head was noted: still fine
        assert audit.verify(expect_head=head).ok
        later = audit.head()
        tamper(url, "DELETE FROM audit_log WHERE seq >= 5")
        assert audit.verify().ok  # a shorter chain is still a chain
        report = audit.verify(expect_head=head)
        assert not report.ok and report.bad_seq == 5
        assert report.reason == (
            "the log ends at entry 4 but the recorded head is entry 5: entry 5 removed"
        )
        assert audit.verify(expect_head=later).reason.endswith("entries 5–6 removed")
        report = audit.verify(expect_head=head.hash)
        assert not report.ok and report.bad_seq == 5 and "not in the log" in report.reason

    def test_a_rewritten_chain_is_caught_only_against_a_recorded_head(
        self, audit: AuditLog, url: str
    ) -> None:
        """A database admin who edits an entry and re-hashes every later one leaves a
        chain that holds: only a head noted outside the database shows it."""
        entries = five(audit)
        head = audit.head()
        forged = [AuditEntry.chained(1, entries[0].time, event(1, actor="mallory"), GENESIS)]
        for old in entries[1:]:
            forged.append(AuditEntry.chained(old.seq, old.time, event(old.seq), forged[-1].hash))
        tamper(
            url,
            "DELETE FROM audit_log",
            *(
                "INSERT INTO audit_log (seq, time, actor, role, organisation, action, outcome, "
                f"run_id, target, detail, prev_hash, hash) VALUES ({f.seq}, '{f.time}', "
                f"'{f.actor}', '{f.role}', '{f.organisation}', '{f.action}', '{f.outcome}', "
                f"'{f.run_id}', '{f.target}', '{json.dumps(f.detail, sort_keys=True)}', "
                f"'{f.prev_hash}', '{f.hash}')"
                for f in forged
            ),
        )
        assert audit.verify().ok
        report = audit.verify(expect_head=head)
        assert not report.ok and report.bad_seq == 5 and "rewritten" in report.reason

    def test_the_database_refuses_updates_and_deletes(self, audit: AuditLog, url: str) -> None:
        five(audit)
        engine = create_engine(url)
        for statement in ("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2",
                          "DELETE FROM audit_log WHERE seq = 5"):  # fmt: skip
            with engine.connect() as conn, pytest.raises(DBAPIError, match="append-only"):
                conn.execute(text(statement))
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn, pytest.raises(DBAPIError, match="append-only"):
                conn.execute(text("TRUNCATE audit_log"))
        engine.dispose()
        assert audit.verify(expect_head=AuditHead(5, audit.head().hash)).ok

    def test_eight_threads_append_one_unbroken_chain(self, audit: AuditLog) -> None:
        barrier = threading.Barrier(8)

        def append(worker: int) -> list[int]:
            barrier.wait()
            return [audit.append(event(worker * 100 + i, actor=f"t{worker}")).seq
                    for i in range(12)]  # fmt: skip

        with ThreadPoolExecutor(max_workers=8) as pool:
            seqs = [s for got in pool.map(append, range(8)) for s in got]
        assert sorted(seqs) == list(range(1, 97))
        report = audit.verify()
        assert report.ok and report.entries == 96, report
        for worker in range(8):  # each thread's entries in the order it appended them
            mine = [e.run_id for e in audit.entries(actor=f"t{worker}")]
            assert mine == [f"run-{worker * 100 + i}" for i in range(12)]

    def test_two_processes_append_one_unbroken_chain(self, audit: AuditLog, url: str) -> None:
        script = (
            "import sys\n"
            "from consortium.core.audit import AuditEvent\n"
            "from consortium.server.store import StateStore\n"
            "from consortium.server.store.audit import AuditLog\n"
            "with StateStore(sys.argv[1]) as store:\n"
            "    log = AuditLog(store)\n"
            "    for i in range(40):\n"
            "        log.append(AuditEvent(actor=sys.argv[2], action='run.start'))\n"
        )
        procs = [subprocess.Popen([sys.executable, "-c", script, url, f"p{n}"]) for n in range(2)]
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
        report = audit.verify()
        assert report.ok and report.entries == 80, report
        assert len(audit.entries(actor="p0")) == len(audit.entries(actor="p1")) == 40

    @pytest.mark.parametrize(
        ("bad", "field"),
        [
            (AuditEvent(actor="", action=RUN_START), "'actor' is empty"),
            (AuditEvent(actor="a", action=""), "'action' is empty"),
            (AuditEvent(actor="a", action=RUN_START, outcome="maybe"), "'outcome'"),  # type: ignore[arg-type]
            (AuditEvent(actor="a" * 256, action=RUN_START), "'actor' is longer than 255"),
            (AuditEvent(actor="a", action=RUN_START, target="x\x00"), "'target' contains a NUL"),
            (AuditEvent(actor="a", action=RUN_START, detail={"f": float("nan")}), "'detail'"),
            (AuditEvent(actor="a", action=RUN_START, detail={"f": object()}), "'detail'"),
            (AuditEvent(actor="a", action=RUN_START, detail={1: 2}), "'detail' must have"),  # type: ignore[dict-item]
        ],
    )
    def test_a_bad_event_is_refused_naming_the_field(
        self, audit: AuditLog, bad: AuditEvent, field: str
    ) -> None:
        with pytest.raises(ConfigError, match=field):
            audit.append(bad)
        assert audit.head().seq == 0

    # -- export ---------------------------------------------------------------------
    def test_export_verifies_and_one_edited_line_fails(
        self, audit: AuditLog, tmp_path: Path
    ) -> None:
        entries = five(audit)
        out = tmp_path / "audit.jsonl"
        assert audit.export_jsonl(out) == (5, audit.head())
        lines = out.read_text(encoding="utf-8").splitlines()
        assert [AuditEntry.from_json(line) for line in lines] == entries
        assert AuditLog.verify_jsonl(out).ok
        assert AuditLog.verify_jsonl(out, expect_head=audit.head()).ok

        edited = json.loads(lines[3])
        edited["actor"] = "mallory"
        (tmp_path / "edited.jsonl").write_text(
            "\n".join([*lines[:3], json.dumps(edited), *lines[4:]]) + "\n"
        )
        report = AuditLog.verify_jsonl(tmp_path / "edited.jsonl")
        assert not report.ok and report.bad_seq == 4 and "line 4" in report.reason

        (tmp_path / "cut.jsonl").write_text("\n".join([*lines[:2], *lines[3:]]) + "\n")
        report = AuditLog.verify_jsonl(tmp_path / "cut.jsonl")
        assert not report.ok and report.bad_seq == 3 and "missing" in report.reason

        (tmp_path / "garbled.jsonl").write_text("\n".join([*lines[:2], "{oops", *lines[3:]]))
        report = AuditLog.verify_jsonl(tmp_path / "garbled.jsonl")
        assert (
            not report.ok and report.bad_seq == 3 and "line 3 is not an audit entry" in str(report)
        )
        report = AuditLog.verify_jsonl(tmp_path / "edited.jsonl", expect_head=audit.head())
        assert not report.ok and report.bad_seq == 4

    def test_a_tampered_row_is_exported_and_fails_in_the_file(
        self, audit: AuditLog, url: str, tmp_path: Path
    ) -> None:
        five(audit)
        tamper(url, "UPDATE audit_log SET detail = 'garbage' WHERE seq = 2")
        assert audit.export_jsonl(tmp_path / "a.jsonl")[0] == 5
        report = AuditLog.verify_jsonl(tmp_path / "a.jsonl")
        assert not report.ok and report.bad_seq == 2


# -- the fleet's node events ----------------------------------------------------------
class TestFleetAuditor:
    def test_joins_are_logged_once_per_instance(self, audit: AuditLog) -> None:
        forwarded: list[tuple[str, str, str]] = []
        sink = audit.fleet_sink(forward=lambda *e: forwarded.append(e))
        for _ in range(3):  # reconnects of one process
            sink("cleveland", "connected", "inst-1")
        sink("cleveland", "restarted", "inst-2")
        sink("hungarian", "connected", "inst-1")
        sink("cleveland", "offline", "heartbeat timeout")
        assert len(forwarded) == 6  # the store's own records see every event
        joined = audit.entries(action=NODE_JOINED)
        assert [(e.actor, e.detail) for e in joined] == [
            ("cleveland", {"instance": "inst-1", "restarted": False}),
            ("cleveland", {"instance": "inst-2", "restarted": True}),
            ("hungarian", {"instance": "inst-1", "restarted": False}),
        ]
        assert all(e.role == "node" and e.target == e.actor for e in joined)
        assert audit.head().seq == 3

    def test_refusals_are_logged_once_per_node_and_reason_a_minute(self, audit: AuditLog) -> None:
        now = [1000.0]
        sink = audit.fleet_sink(clock=lambda: now[0])
        for _ in range(5):
            sink("stranger", "refused", "not on this server's allow-list")
        sink("stranger", "refused", "certificate revoked")
        sink("other", "refused", "not on this server's allow-list")
        now[0] += REFUSAL_EVERY - 1
        sink("stranger", "refused", "not on this server's allow-list")
        now[0] += 1
        sink("stranger", "refused", "not on this server's allow-list")
        refused = audit.entries(action=NODE_REFUSED)
        assert [(e.target, e.detail["reason"]) for e in refused] == [
            ("stranger", "not on this server's allow-list"),
            ("stranger", "certificate revoked"),
            ("other", "not on this server's allow-list"),
            ("stranger", "not on this server's allow-list"),
        ]
        assert all(e.actor == SERVER_ACTOR and e.outcome == "denied" for e in refused)

    def test_a_failing_database_does_not_stop_the_fleet(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        store = StateStore(default_url(tmp_path / "s"))  # retries writes for 30 s
        sink = AuditLog(store).fleet_sink()
        (tmp_path / "s" / "state.db").unlink()
        started = time.monotonic()
        sink("cleveland", "connected", "inst-1")  # no exception, and no retrying
        assert time.monotonic() - started < 5
        assert "could not record node.joined for cleveland" in caplog.text
        store.close()


# -- schema migration -------------------------------------------------------------------
def test_a_version_4_database_gains_the_audit_log(url: str) -> None:
    with StateStore(url) as store:
        store.create_run(run_id="old", seed=5)
        store.upsert_node("h1", allow_listed=True)
    engine = create_engine(url)
    with engine.begin() as conn:  # back to version 4: no audit_log (nor its triggers)
        conn.execute(text("DROP TABLE audit_log"))
        conn.execute(text("DELETE FROM consortium_meta WHERE key = 'audit_log_append'"))
        conn.execute(text("UPDATE consortium_meta SET value = '4' WHERE key = 'schema_version'"))
    assert not inspect(engine).has_table("audit_log")
    with StateStore(url) as store:
        run = store.get_run("old")
        assert run is not None and run.seed == 5
        assert [n.name for n in store.list_nodes()] == ["h1"]
        audit = AuditLog(store)
        five(audit)
        assert audit.verify().ok
    with engine.connect() as conn:
        version = conn.execute(
            text("SELECT value FROM consortium_meta WHERE key = 'schema_version'")
        ).scalar_one()
        with pytest.raises(DBAPIError, match="append-only"):  # the triggers came with it
            conn.execute(text("DELETE FROM audit_log"))
    indexes = {i["name"] for i in inspect(engine).get_indexes("audit_log")}
    engine.dispose()
    assert version == str(SCHEMA_VERSION) == "5"
    assert {"ix_audit_log_run", "ix_audit_log_actor", "ix_audit_log_action"} <= indexes


def test_a_failed_migration_leaves_version_4_intact(url: str) -> None:
    """The step runs in the upgrade's one transaction: if it fails, nothing changed."""
    with StateStore(url) as store:
        store.create_run(run_id="old")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE audit_log"))
        conn.execute(text("UPDATE consortium_meta SET value = '4' WHERE key = 'schema_version'"))
        # an object in the way of the step's index makes it fail half-way
        conn.execute(text("CREATE TABLE blocker (x INTEGER)"))
        conn.execute(text("CREATE INDEX ix_audit_log_actor ON blocker (x)"))
    with pytest.raises((ConfigError, DBAPIError), match="ix_audit_log_actor"):
        StateStore(url)
    assert not inspect(engine).has_table("audit_log")
    with engine.connect() as conn:
        version = conn.execute(
            text("SELECT value FROM consortium_meta WHERE key = 'schema_version'")
        ).scalar_one()
    engine.dispose()
    assert version == "4"
