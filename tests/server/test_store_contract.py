"""The StateStore contract, run against a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import IntegrityError

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError, RoundFailed, StateStoreError
from consortium.core.history import NodeResult, Outcome, RoundRecord
from consortium.core.message import Message
from consortium.server import ServerApp, ServerConfig
from consortium.server.store import (
    NodeEventKind,
    NodeStatus,
    NodeTiming,
    RunStatus,
    StateStore,
    default_url,
)
from consortium.server.store.engine import parse_url
from consortium.server.store.models import SCHEMA_VERSION
from consortium.simulation import run_simulation
from consortium.strategy import FedAvg

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


class FakeClock:
    """A clock the test moves by hand (thread-safe enough: reads and advances only)."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return default_url(tmp_path / "state")
    return str(request.getfixturevalue("postgres_db_url"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(url: str, clock: FakeClock) -> Iterator[StateStore]:
    with StateStore(url, clock=clock) as s:
        yield s


def round_record(rnd: int) -> RoundRecord:
    return RoundRecord(
        round=rnd,
        train_metrics={"loss": 0.5 / rnd, "num_updates": 2},
        evaluate_metrics={"accuracy": 0.75, "weird": math.nan},
        central_metrics={"auc": math.inf, "floor": -math.inf},
        nodes=[
            NodeResult("hôpital-b", "train", Outcome.OK, {"loss": 0.4}, 120, seconds=1.25),
            NodeResult("a", "train", Outcome.FAILED, reason="CUDA OOM", traceback="Traceback…\n"),
            NodeResult("c", "train", Outcome.TIMEOUT, reason="no reply before the deadline"),
            NodeResult("a", "evaluate", Outcome.REJECTED, {"accuracy": 2.0}, reason="bad"),
        ],
        seconds=3.5,
    )


class TestStateStoreContract:
    """One behaviour, two backends: every test runs on SQLite and on PostgreSQL."""

    # -- runs -------------------------------------------------------------------------
    def test_run_lifecycle(self, store: StateStore, clock: FakeClock) -> None:
        run_id = store.create_run(
            app_name="heart", app_version="1.2.0", config={"lr": 0.1, "tags": ["a", "b"]}, seed=7
        )
        run = store.get_run(run_id)
        assert run is not None and run.status is RunStatus.PENDING
        assert (run.app_name, run.app_version, run.seed) == ("heart", "1.2.0", 7)
        assert run.config == {"lr": 0.1, "tags": ["a", "b"]}
        assert run.created_at == T0 and run.created_at.tzinfo is not None
        assert run.started_at is None and run.current_round == 0

        clock.advance(5)
        store.set_run_status(run_id, "running", num_rounds=10)
        clock.advance(60)
        store.set_run_status(run_id, RunStatus.FAILED, error="round 3: 0 of 4 replied")
        run = store.get_run(run_id)
        assert run is not None and run.status is RunStatus.FAILED
        assert run.started_at == T0 + timedelta(seconds=5)
        assert run.finished_at == T0 + timedelta(seconds=65)
        assert (run.error, run.num_rounds) == ("round 3: 0 of 4 replied", 10)

        store.set_run_status(run_id, RunStatus.RUNNING)  # resumed: error and end cleared
        run = store.get_run(run_id)
        assert run is not None and run.error is None and run.finished_at is None
        store.set_run_status(run_id, RunStatus.FINISHED)
        run = store.get_run(run_id)
        assert run is not None and run.started_at == T0 + timedelta(seconds=5)
        with pytest.raises(ConfigError, match="finished"):
            store.set_run_status(run_id, RunStatus.RUNNING)

    def test_list_runs_newest_first_and_by_status(
        self, store: StateStore, clock: FakeClock
    ) -> None:
        for name in ("r1", "r2", "r3"):
            store.create_run(run_id=name)
            clock.advance(1)
        store.set_run_status("r2", RunStatus.RUNNING)
        assert [r.id for r in store.list_runs()] == ["r3", "r2", "r1"]
        assert [r.id for r in store.list_runs(limit=2)] == ["r3", "r2"]
        assert [r.id for r in store.list_runs(status="running")] == ["r2"]

    def test_bad_runs_are_refused(self, store: StateStore) -> None:
        store.create_run(run_id="dup")
        with pytest.raises(ConfigError, match="already exists"):
            store.create_run(run_id="dup")
        assert store.get_run("nope") is None
        with pytest.raises(ConfigError, match="no run"):
            store.set_run_status("nope", RunStatus.RUNNING)
        with pytest.raises(ConfigError, match="no run"):
            store.record_round("nope", round_record(1))
        with pytest.raises(ConfigError, match="NaN"):
            store.create_run(config={"lr": math.nan})
        with pytest.raises(ConfigError, match="must be a str"):
            store.create_run(config={"nested": {"a": 1}})
        with pytest.raises(ConfigError, match="64 bits"):
            store.create_run(seed=2**64)
        with pytest.raises(ValueError):
            store.set_run_status("dup", "exploded")

    # -- rounds -----------------------------------------------------------------------
    def test_rounds_and_node_results_round_trip(self, store: StateStore, clock: FakeClock) -> None:
        store.create_run(run_id="r")
        timing = NodeTiming(train_seconds=0.75, upload_seconds=0.25, wait_seconds=0.125)
        store.record_round("r", round_record(1), timings={("hôpital-b", "train"): timing})
        clock.advance(10)
        store.record_round("r", round_record(2))

        rounds = store.list_rounds("r")
        assert [r.round for r in rounds] == [1, 2]
        assert rounds[0].finished_at == T0 and rounds[0].started_at == T0 - timedelta(seconds=3.5)
        assert rounds[0].train_metrics == {"loss": 0.5, "num_updates": 2}
        assert isinstance(rounds[0].train_metrics["num_updates"], int)
        assert math.isnan(rounds[0].evaluate_metrics["weird"])
        assert rounds[0].central_metrics == {"auc": math.inf, "floor": -math.inf}

        results = store.node_results("r", round=1)
        assert [(n.node, n.stage, n.outcome) for n in results] == [
            ("hôpital-b", "train", Outcome.OK),
            ("a", "train", Outcome.FAILED),
            ("c", "train", Outcome.TIMEOUT),
            ("a", "evaluate", Outcome.REJECTED),
        ]
        assert results[0].timing == timing and results[0].num_examples == 120
        assert results[1].traceback == "Traceback…\n" and results[1].timing == NodeTiming()
        assert [n.round for n in store.node_results("r", node="a")] == [1, 1, 2, 2]
        run = store.get_run("r")
        assert run is not None and run.current_round == 2

    def test_history_round_trips(self, store: StateStore) -> None:
        store.create_run(run_id="r")
        records = [round_record(1), round_record(2)]
        records[1].nodes[0].timing = {"train": 0.75, "wait": 0.125, "upload": 0.25}
        records[1].nodes[1].timing = {"wait": 0.5}  # failed before training: no "train"
        for rec in records:
            store.record_round("r", rec)
        assert repr(store.run_history("r").rounds) == repr(records)  # repr: NaN equals NaN

    def test_history_after_a_round_reads_only_the_later_rounds(self, store: StateStore) -> None:
        store.create_run(run_id="r")
        store.create_run(run_id="other")
        records = [round_record(n) for n in (1, 2, 3)]
        for rec in records:
            store.record_round("r", rec)
        store.record_round("other", round_record(3))
        assert repr(store.run_history("r", after=1).rounds) == repr(records[1:])
        assert [n.round for n in store.node_results("r", after=2)] == [3] * 4
        assert store.run_history("r", after=3).rounds == []
        assert repr(store.run_history("r", after=0).rounds) == repr(records)

    def test_a_node_may_appear_twice_in_one_stage(self, store: StateStore) -> None:
        store.create_run(run_id="r")
        step = RoundRecord(  # a FedBuff step that folded two updates of fast node "a"
            round=1,
            nodes=[
                NodeResult("a", "train", Outcome.OK, {"task": 1}, 10, timing={"train": 0.1}),
                NodeResult("b", "train", Outcome.OK, {"task": 2}, 10, timing={"train": 0.9}),
                NodeResult("a", "train", Outcome.OK, {"task": 3}, 10, timing={"train": 0.2}),
            ],
        )
        store.record_round("r", step)
        store.record_round("r", step)  # and recording it again still replaces it
        assert repr(store.run_history("r").rounds) == repr([step])

    def test_runs_count_their_recorded_rounds(self, store: StateStore, clock: FakeClock) -> None:
        store.create_run(run_id="old")
        clock.advance(1)
        store.create_run(run_id="new")
        for rnd in (1, 2, 3, 3):  # a round recorded again (a resume) counts once
            store.record_round("new", round_record(rnd))
        assert [(r.id, r.rounds_done) for r in store.list_runs()] == [("new", 3), ("old", 0)]
        new = store.get_run("new")
        assert new is not None and new.rounds_done == 3

    def test_recording_a_round_again_replaces_it(self, store: StateStore) -> None:
        store.create_run(run_id="r")
        for rnd in (1, 2, 3):
            store.record_round("r", round_record(rnd))
        again = RoundRecord(round=3, train_metrics={"loss": 0.01}, nodes=[round_record(3).nodes[0]])
        store.record_round("r", again)  # a resumed run re-runs round 3
        assert store.list_rounds("r")[-1].train_metrics == {"loss": 0.01}
        assert len(store.node_results("r", round=3)) == 1
        run = store.get_run("r")
        assert run is not None and run.current_round == 3

    # -- nodes ------------------------------------------------------------------------
    def test_node_liveness(self, store: StateStore, clock: FakeClock) -> None:
        node = store.upsert_node("h1", allow_listed=True, cert_serial="0a:1b")
        assert node.status is NodeStatus.OFFLINE and node.allowed and node.last_seen is None
        assert store.heartbeat("h1") is True  # came online
        clock.advance(5)
        assert store.heartbeat("h1") is False
        assert store.heartbeat("h2") is True  # unknown nodes are registered, not allowed
        h2 = store.get_node("h2")
        assert h2 is not None and not h2.allowed and h2.first_seen == T0 + timedelta(seconds=5)

        clock.advance(20)
        store.heartbeat("h2")
        clock.advance(20)
        assert store.mark_offline(timeout=30) == ["h1"]
        assert store.mark_offline(timeout=30) == []  # only once
        assert [n.name for n in store.list_nodes(status="online")] == ["h2"]
        h1 = store.get_node("h1")
        assert h1 is not None and h1.last_seen == T0 + timedelta(seconds=5)
        assert h1.cert_serial == "0a:1b" and h1.first_seen == T0

        assert store.heartbeat("h1") is True  # back
        store.disconnect("h2", "node shut down")
        assert [(n.name, n.status) for n in store.list_nodes()] == [
            ("h1", NodeStatus.ONLINE),
            ("h2", NodeStatus.OFFLINE),
        ]
        kinds = [e.kind for e in reversed(store.list_node_events("h1"))]
        assert kinds == [
            NodeEventKind.ALLOW_LISTED,
            NodeEventKind.CONNECTED,
            NodeEventKind.HEARTBEAT_MISSED,
            NodeEventKind.CONNECTED,
        ]
        missed = store.list_node_events("h1")[1]
        assert missed.detail == "no heartbeat for 40.0s (timeout 30s)"
        assert store.list_node_events("h2")[0].detail == "node shut down"

    def test_access_changes_are_logged(self, store: StateStore) -> None:
        store.upsert_node("h1", allow_listed=True)
        store.upsert_node("h1", allow_listed=True)  # no change, no event
        view = store.upsert_node("h1", revoked=True)
        assert view.allow_listed and view.revoked and not view.allowed
        store.upsert_node("h1", allow_listed=False, revoked=False)
        events = [(e.kind, e.detail) for e in reversed(store.list_node_events("h1"))]
        assert events == [
            (NodeEventKind.ALLOW_LISTED, "added"),
            (NodeEventKind.REVOKED, "revoked"),
            (NodeEventKind.ALLOW_LISTED, "removed"),
            (NodeEventKind.REVOKED, "reinstated"),
        ]

    def test_refusing_a_stranger_logs_without_registering_it(
        self, store: StateStore, clock: FakeClock
    ) -> None:
        store.record_node_event("mallory", "refused", "certificate not issued by our CA")
        clock.advance(1)
        store.record_node_event("mallory", NodeEventKind.REFUSED, "again")
        assert store.get_node("mallory") is None
        events = store.list_node_events()
        assert [(e.node, e.detail) for e in events] == [
            ("mallory", "again"),
            ("mallory", events[1].detail),
        ]
        assert events[1].at == T0 and events[0].at == T0 + timedelta(seconds=1)
        assert store.list_node_events(limit=1)[0].detail == "again"

    # -- checkpoints ------------------------------------------------------------------
    def test_checkpoints(self, store: StateStore, clock: FakeClock) -> None:
        store.create_run(run_id="r")
        assert store.latest_checkpoint("r") is None
        for rnd in (1, 2):
            store.record_checkpoint("r", rnd, f"/ckpt/round-{rnd}.ckpt", f"crc32:{rnd:08x}")
            clock.advance(1)
        # rewritten on resume; a version-1 checkpoint carries a SHA-256
        store.record_checkpoint("r", 2, "/ckpt/round-2b.ckpt", "sha256:" + "f" * 64)
        latest = store.latest_checkpoint("r")
        assert latest is not None and (latest.round, latest.path) == (2, "/ckpt/round-2b.ckpt")
        assert latest.digest == "sha256:" + "f" * 64
        assert latest.created_at == T0 + timedelta(seconds=2)
        assert [c.digest for c in store.list_checkpoints("r")] == ["crc32:00000001", latest.digest]
        for bad in ("not-a-digest", "f" * 64, "crc32:123", "crc32:ABCDEF01"):
            with pytest.raises(ConfigError, match="not a checkpoint digest"):
                store.record_checkpoint("r", 3, "/x", bad)
        with pytest.raises(ConfigError, match="no run"):
            store.record_checkpoint("other", 1, "/x", "crc32:00000000")

    # -- concurrency, reopening, observing a real run ---------------------------------
    def test_threads_share_one_store(self, url: str) -> None:
        with StateStore(url) as store:
            store.create_run(run_id="r")

            def work(i: int) -> bool:
                name = f"n{i % 4}"
                came_online = store.heartbeat(name)
                store.record_node_event(name, NodeEventKind.REFUSED, f"probe {i}")
                store.record_round("r", RoundRecord(round=i % 5 + 1))
                return came_online

            with ThreadPoolExecutor(max_workers=8) as pool:
                came_online = list(pool.map(work, range(32)))
            assert sum(came_online) == 4  # exactly one thread saw each node come online
            assert len(store.list_node_events(limit=1000)) == 32 + 4
            assert [r.round for r in store.list_rounds("r")] == [1, 2, 3, 4, 5]

    def test_concurrent_creates_of_one_run_let_exactly_one_win(self, url: str) -> None:
        with StateStore(url) as store:
            barrier = threading.Barrier(4)

            def create(_: int) -> bool:
                barrier.wait()
                try:
                    store.create_run(run_id="same")
                except ConfigError:
                    return False
                return True

            with ThreadPoolExecutor(max_workers=4) as pool:
                assert sorted(pool.map(create, range(4))) == [False, False, False, True]

    def test_state_survives_reopening(self, url: str) -> None:
        with StateStore(url) as store:
            store.create_run(run_id="r", seed=3)
            store.upsert_node("h1", allow_listed=True)
        with StateStore(url) as store:
            run = store.get_run("r")
            assert run is not None and run.seed == 3
            assert [n.name for n in store.list_nodes()] == ["h1"]

    def test_a_newer_schema_is_refused(self, url: str) -> None:
        StateStore(url).close()
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE consortium_meta SET value = '999' WHERE key = 'schema_version'")
            )
        engine.dispose()
        with pytest.raises(ConfigError, match="schema version 999"):
            StateStore(url)

    def test_a_version_1_database_is_upgraded_in_place(self, url: str) -> None:
        with StateStore(url) as store:
            store.create_run(run_id="old")
        engine = create_engine(url)
        with engine.begin() as conn:  # back to version 1's schema, with one checkpoint row
            conn.execute(text("ALTER TABLE checkpoints RENAME COLUMN digest TO sha256"))
            if engine.dialect.name == "postgresql":
                conn.execute(text("ALTER TABLE checkpoints ALTER COLUMN sha256 TYPE VARCHAR(64)"))
            conn.execute(
                text(
                    "INSERT INTO checkpoints (run_id, round, path, sha256, created_at) "
                    "VALUES ('old', 1, '/c/round-000001.ckpt', :sha, :at)"
                ),
                {"sha": "ab" * 32, "at": T0},
            )
            conn.execute(
                text("UPDATE consortium_meta SET value = '1' WHERE key = 'schema_version'")
            )
        with StateStore(url) as store:
            old = store.latest_checkpoint("old")
            assert old is not None and old.digest == "sha256:" + "ab" * 32
            store.record_checkpoint("old", 2, "/c/round-000002.ckpt", "crc32:0badcafe")
            assert [c.digest for c in store.list_checkpoints("old")][-1] == "crc32:0badcafe"
        with engine.connect() as conn:
            version = conn.execute(
                text("SELECT value FROM consortium_meta WHERE key = 'schema_version'")
            ).scalar_one()
        engine.dispose()
        assert version == str(SCHEMA_VERSION)

    def test_a_version_2_database_is_upgraded_in_place(self, url: str) -> None:
        with StateStore(url) as store:
            store.create_run(run_id="old")
            store.record_round("old", round_record(1))
        engine = create_engine(url)
        with engine.begin() as conn:  # back to version 2: one result per (run, round, node, stage)
            _restore_version_2_node_results(conn)
            conn.execute(
                text("UPDATE consortium_meta SET value = '2' WHERE key = 'schema_version'")
            )
        columns = "run_id, round, node, stage, outcome, metrics, num_examples, reason, traceback"
        again = (
            f"INSERT INTO node_results ({columns}, seconds) SELECT {columns}, 0 FROM node_results"
        )
        with engine.connect() as conn, pytest.raises(IntegrityError):  # v2 refused a node twice
            conn.execute(text(again))
        with StateStore(url) as store:
            assert repr(store.run_history("old").rounds) == repr([round_record(1)])
            twice = round_record(2)
            twice.nodes.append(twice.nodes[0])
            store.record_round("old", twice)
            assert len(store.node_results("old", round=2)) == 5
        with engine.connect() as conn:
            version = conn.execute(
                text("SELECT value FROM consortium_meta WHERE key = 'schema_version'")
            ).scalar_one()
        engine.dispose()
        assert version == str(SCHEMA_VERSION)

    def test_observes_a_real_run(self, store: StateStore) -> None:
        store.create_run(run_id="sim", app_name="toy", seed=4)  # as a deployment server would
        result = run_simulation(
            toy_server(rounds=3),
            toy_client(),
            num_nodes=3,
            seed=4,
            run_id="sim",
            observers=[store.observer(strict=True)],
        )
        run = store.get_run("sim")
        assert run is not None and run.status is RunStatus.FINISHED
        assert (run.app_name, run.num_rounds, run.current_round) == ("toy", 3, 3)
        assert repr(store.run_history("sim").rounds) == repr(result.history.rounds)
        failed = [n for n in store.node_results("sim") if n.outcome is not Outcome.OK]
        assert {(n.round, n.node, n.stage) for n in failed} == {
            (r, "2", "train") for r in (1, 2, 3)
        }

    def test_observer_can_leave_the_end_to_its_caller(self, store: StateStore) -> None:
        store.create_run(run_id="sim")
        observer = store.observer(strict=True, record_end=False)
        run_simulation(
            toy_server(rounds=2), toy_client(), num_nodes=2, run_id="sim", observers=[observer]
        )
        run = store.get_run("sim")
        assert run is not None and run.status is RunStatus.RUNNING and run.rounds_done == 2

    def test_observer_marks_a_failed_run(self, store: StateStore) -> None:
        with pytest.raises(RoundFailed):
            run_simulation(
                toy_server(rounds=2),
                toy_client(),
                node_ids=["2"],  # the node that always fails
                run_id="bad",
                observers=[store.observer(strict=True)],
            )
        run = store.get_run("bad")
        assert run is not None and run.status is RunStatus.FAILED and run.error
        assert run.finished_at is not None and store.list_rounds("bad") == []

    # -- interrupted runs, locks ---------------------------------------------------------
    def test_an_interrupted_run_can_run_again(self, store: StateStore, clock: FakeClock) -> None:
        store.create_run(run_id="r")
        store.set_run_status("r", RunStatus.RUNNING)
        clock.advance(5)
        store.set_run_status("r", RunStatus.INTERRUPTED, error="server shut down")
        run = store.get_run("r")
        assert run is not None and run.status is RunStatus.INTERRUPTED
        assert (run.error, run.finished_at) == ("server shut down", T0 + timedelta(seconds=5))
        assert [v.id for v in store.list_runs(status="interrupted")] == ["r"]
        store.set_run_status("r", RunStatus.RUNNING)  # resumed
        run = store.get_run("r")
        assert run is not None and (run.status, run.error, run.finished_at) == (
            RunStatus.RUNNING,
            None,
            None,
        )

    def test_a_version_3_database_learns_the_interrupted_status(self, url: str) -> None:
        with StateStore(url) as store:
            store.create_run(run_id="old")
            store.record_round("old", round_record(1))
        engine = create_engine(url)
        with engine.begin() as conn:  # back to version 3's CHECK on runs.status
            _restore_version_3_run_status(conn)
            conn.execute(
                text("UPDATE consortium_meta SET value = '3' WHERE key = 'schema_version'")
            )
        with engine.connect() as conn, pytest.raises(IntegrityError):
            conn.execute(text("UPDATE runs SET status = 'interrupted'"))
        with StateStore(url) as store:
            store.set_run_status("old", RunStatus.INTERRUPTED)
            assert repr(store.run_history("old").rounds) == repr([round_record(1)])
        with engine.connect() as conn:
            version = conn.execute(
                text("SELECT value FROM consortium_meta WHERE key = 'schema_version'")
            ).scalar_one()
            with pytest.raises(IntegrityError):  # the constraint is still there, widened
                conn.execute(text("UPDATE runs SET status = 'bogus'"))
        engine.dispose()
        assert version == str(SCHEMA_VERSION)

    @pytest.mark.parametrize("held", [0.4, 4.0])
    def test_a_locked_database_is_waited_for_within_the_bound(self, url: str, held: float) -> None:
        with StateStore(url, write_timeout=1.5) as store:
            store.create_run(run_id="r")
            locked, release = threading.Event(), threading.Event()

            def hold_lock() -> None:
                engine = create_engine(url)
                with engine.connect() as conn:
                    if engine.dialect.name == "sqlite":
                        conn.exec_driver_sql("BEGIN EXCLUSIVE")
                    else:
                        conn.execute(text("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE"))
                    locked.set()
                    release.wait(held)
                    conn.rollback()
                engine.dispose()

            holder = threading.Thread(target=hold_lock)
            holder.start()
            assert locked.wait(10)
            record = lambda: store.record_round("r", round_record(1))  # noqa: E731
            try:
                if held < store.write_timeout:
                    store.persist("round 1", record)
                    assert store.list_rounds("r")
                else:
                    with pytest.raises(StateStoreError, match="could not record round 1") as err:
                        store.persist("round 1", record)
                    assert store.safe_url in str(err.value)
                    assert "lock" in str(err.value)  # "database is locked", "lock timeout"
            finally:
                release.set()
                holder.join()


def _restore_version_2_node_results(conn: Connection) -> None:
    """Put back version 2's unique (run_id, round, node, stage) on node_results."""
    conn.execute(text("DROP INDEX ix_node_results_run_round"))
    if conn.dialect.name == "postgresql":
        conn.execute(
            text(
                "ALTER TABLE node_results ADD CONSTRAINT node_results_run_id_round_node_stage_key "
                "UNIQUE (run_id, round, node, stage)"
            )
        )
        return
    ddl = conn.execute(
        text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'node_results'")
    ).scalar_one()
    cascade = "ON DELETE CASCADE, "
    assert cascade in ddl
    conn.execute(text("ALTER TABLE node_results RENAME TO node_results_v3"))
    conn.execute(text("DROP INDEX ix_node_results_node"))
    conn.execute(text(ddl.replace(cascade, cascade + "UNIQUE (run_id, round, node, stage), ")))
    conn.execute(text("INSERT INTO node_results SELECT * FROM node_results_v3"))
    conn.execute(text("DROP TABLE node_results_v3"))
    conn.execute(text("CREATE INDEX ix_node_results_node ON node_results (node, run_id)"))


def _restore_version_3_run_status(conn: Connection) -> None:
    """Version 3's runs.status CHECK, without 'interrupted'."""
    old = "'pending', 'running', 'finished', 'failed', 'stopped'"
    if conn.dialect.name == "postgresql":
        conn.execute(text("ALTER TABLE runs DROP CONSTRAINT run_status"))
        conn.execute(text(f"ALTER TABLE runs ADD CONSTRAINT run_status CHECK (status IN ({old}))"))
        return
    ddl = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'runs'")).scalar_one()
    version = conn.execute(text("PRAGMA schema_version")).scalar_one()
    conn.execute(text("PRAGMA writable_schema = ON"))
    conn.execute(
        text("UPDATE sqlite_master SET sql = :sql WHERE name = 'runs'"),
        {"sql": ddl.replace(", 'interrupted'", "")},
    )
    conn.execute(text(f"PRAGMA schema_version = {version + 1}"))
    conn.execute(text("PRAGMA writable_schema = OFF"))


def toy_server(rounds: int) -> ServerApp:
    init = Arrays({"w": np.zeros(3)})
    return ServerApp(lambda ctx: ServerConfig(FedAvg(initial_arrays=init), num_rounds=rounds))


def toy_client() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        assert msg.content is not None and msg.content.model is not None
        if ctx.node_id == "2":
            raise RuntimeError("disk full")
        update = Arrays((k, v + 1.0) for k, v in msg.content.model.items())
        return msg.reply(arrays=update, metrics={"num_examples": 10, "loss": 0.5})

    @app.evaluate()
    def evaluate(msg: Message, ctx: Context) -> Message:
        return msg.reply(metrics={"num_examples": 5, "accuracy": 0.5})

    return app


# -- outside the contract: URLs and observer robustness -------------------------------
@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("sqlite://", "needs a file"),
        ("sqlite:///:memory:", "needs a file"),
        ("mysql://u@h/db", "unsupported"),
        ("not a url", "invalid state store URL"),
    ],
)
def test_bad_urls_are_refused(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        StateStore(url)


def test_an_unreachable_server_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="cannot open the state store postgresql") as err:
        StateStore("postgresql://u:secret@127.0.0.1:1/db?connect_timeout=2")
    assert "secret" not in str(err.value) and "u:***@127.0.0.1:1/db" in str(err.value)


def test_postgresql_urls_use_psycopg_3() -> None:
    assert parse_url("postgresql://u@h/db").get_driver_name() == "psycopg"


def test_a_failing_store_does_not_stop_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = StateStore(default_url(tmp_path))
    store.create_run(run_id="sim")
    store.set_run_status("sim", RunStatus.FINISHED)  # so on_run_start's RUNNING is refused
    result = run_simulation(
        toy_server(rounds=1), toy_client(), num_nodes=2, run_id="sim", observers=[store.observer()]
    )
    assert len(result.history.rounds) == 1
    assert "could not record the run start" in caplog.text
    store.close()


def test_a_deleted_or_read_only_database_fails_writes_clearly(tmp_path: Path) -> None:
    """SQLite: a deleted file would take writes into a file nobody reads again (the open
    connection keeps it); a read-only one would refuse the next server. Both are refused."""
    url = default_url(tmp_path / "state")
    store = StateStore(url, write_timeout=0.3)
    store.create_run(run_id="r")
    observer = store.observer(strict=True, record_end=False)
    path = tmp_path / "state" / "state.db"
    path.chmod(0o444)
    with pytest.raises(StateStoreError, match=f"state database {path} is read-only"):
        store.persist("round 1", lambda: store.record_round("r", round_record(1)))
    path.chmod(0o644)
    store.record_round("r", round_record(1))  # writable again: the store goes on
    for leftover in (tmp_path / "state").iterdir():
        leftover.unlink()
    (tmp_path / "state").rmdir()
    with pytest.raises(
        StateStoreError, match=f"could not record round 2 of run r .*{path} is gone"
    ):
        observer.run_id = "r"
        observer.on_round_end(round_record(2))
    store.close()
