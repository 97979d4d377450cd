"""``consortium audit show|verify|export`` on the state database a server writes."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from consortium.cli.main import main
from consortium.core.audit import NODE_REFUSED, RUN_START, RUN_STOP, SERVER_ACTOR, AuditEvent
from consortium.server.store import StateStore, default_url
from consortium.server.store.append_only import trigger_names
from consortium.server.store.audit import AuditLog
from consortium.server.store.audit_chain import AuditHead
from consortium.transport.ca import CertificateAuthority
from deploy.conftest import EXE, SLOW_APP, Deployment, deployment, federation, wait_for

__all__ = ["deployment", "federation"]  # the fixtures, re-exported for pytest

EVENTS = [
    AuditEvent(actor="alice", role="admin", organisation="St Mary", action=RUN_START,
               run_id="r1", detail={"app_sha256": "ab" * 32}),
    AuditEvent(actor="bob", role="researcher", action=RUN_START, run_id="r2"),
    AuditEvent(actor=SERVER_ACTOR, action=NODE_REFUSED, outcome="denied", target="stranger",
               detail={"reason": "not on this server's allow-list"}),
    AuditEvent(actor="alice", role="admin", action=RUN_STOP, run_id="r2"),
    AuditEvent(actor="carol", role="observer", action=RUN_START, outcome="denied", run_id="r3"),
]  # fmt: skip


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return default_url(tmp_path / "server-data")
    return str(request.getfixturevalue("postgres_db_url"))


@pytest.fixture
def head(url: str) -> AuditHead:
    """The log of EVENTS, as a server would have written it; its head."""
    with StateStore(url) as store:
        log = AuditLog(store)
        for event in EVENTS:
            log.append(event)
        return log.head()


def audit(url: str, *args: str) -> list[str]:
    return ["audit", *args, "--state", url]


def shown(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> list[tuple[int, str]]:
    """(seq, actor) of each entry `audit show --json` prints."""
    assert main(audit(url, "show", "--json", *args)) == 0
    return [(e["seq"], e["actor"]) for e in map(json.loads, capsys.readouterr().out.splitlines())]


def tamper(url: str, statement: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        for trigger in trigger_names("audit_log"):
            on = " ON audit_log" if engine.dialect.name == "postgresql" else ""
            conn.execute(text(f"DROP TRIGGER IF EXISTS {trigger}{on}"))
        conn.execute(text(statement))
    engine.dispose()


def test_show_filters_by_run_actor_and_action(
    url: str, head: AuditHead, capsys: pytest.CaptureFixture[str]
) -> None:
    assert shown(capsys, url) == [(1, "alice"), (2, "bob"), (3, "server"), (4, "alice"),
                                  (5, "carol")]  # fmt: skip
    assert shown(capsys, url, "--run", "r2") == [(2, "bob"), (4, "alice")]
    assert shown(capsys, url, "--actor", "alice") == [(1, "alice"), (4, "alice")]
    assert shown(capsys, url, "--action", RUN_START) == [(1, "alice"), (2, "bob"), (5, "carol")]
    assert shown(capsys, url, "--action", RUN_START, "--actor", "bob") == [(2, "bob")]
    assert main(audit(url, "show", "--json", "--limit", "2")) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [4, 5]
    assert "(the newest 2 shown; --limit 0 shows all)" in err
    assert len(shown(capsys, url, "--limit", "5")) == len(shown(capsys, url, "--limit", "0")) == 5
    assert shown(capsys, url, "--since", "2000-01-01") == shown(capsys, url)
    assert shown(capsys, url, "--since", "2999-01-01T00:00Z") == []


def test_show_prints_a_table(url: str, head: AuditHead, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(audit(url, "show", "--actor", "alice")) == 0
    out = capsys.readouterr().out
    assert "Audit log" in out and "run.start" in out and "run.stop" in out and "St Mary" in out
    assert "bob" not in out and "carol" not in out


def test_verify_exits_0_with_the_head_then_11_naming_the_edited_entry(
    url: str, head: AuditHead, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(audit(url, "verify")) == 0
    assert capsys.readouterr().out.strip() == f"audit log ok: 5 entries, head {head}"
    assert main(audit(url, "verify", "--expect-head", str(head))) == 0
    assert main(audit(url, "verify", "--expect-head", head.hash)) == 0
    capsys.readouterr()
    tamper(url, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 4")
    assert main(audit(url, "verify")) == 11
    err = capsys.readouterr().err
    assert "audit log broken at entry 4" in err and "edited" in err


def test_verify_with_the_head_catches_a_cut_tail(
    url: str, head: AuditHead, capsys: pytest.CaptureFixture[str]
) -> None:
    tamper(url, "DELETE FROM audit_log WHERE seq = 5")
    assert main(audit(url, "verify")) == 0  # without the head: a shorter, sound chain
    assert main(audit(url, "verify", "--expect-head", str(head))) == 11
    assert "broken at entry 5" in capsys.readouterr().err


def test_export_then_verify_the_file_and_one_edited_line_fails(
    url: str, head: AuditHead, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "audit.jsonl"
    assert main(audit(url, "export", "-o", str(out))) == 0
    assert f"exported 5 entries to {out}; head {head}" in capsys.readouterr().out
    assert main(["audit", "verify", "--file", str(out), "--expect-head", str(head)]) == 0
    assert capsys.readouterr().out.strip() == f"audit log ok: 5 entries, head {head}"

    lines = out.read_text(encoding="utf-8").splitlines()
    entry = json.loads(lines[1])
    entry["run_id"] = "r9"
    lines[1] = json.dumps(entry)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["audit", "verify", "--file", str(out)]) == 11
    err = capsys.readouterr().err
    assert "audit log broken at entry 2" in err and "line 2" in err and str(out) in err


def test_a_missing_database_exits_12_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "typo"
    for args in (["show"], ["verify"], ["export", "-o", str(tmp_path / "x.jsonl")]):
        assert main(["audit", *args, "--workdir", str(workdir)]) == 12, args
        assert "no state database at" in capsys.readouterr().err
    assert not workdir.exists()


def test_the_workdir_option_finds_the_servers_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with StateStore(default_url(tmp_path / "srv")) as store:
        AuditLog(store).append(EVENTS[0])
    assert main(["audit", "verify", "--workdir", str(tmp_path / "srv")]) == 0
    assert "audit log ok: 1 entries" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["verify", "--expect-head", "5:nothex"], "is not SEQ:HASH or HASH"),
        (["show", "--since", "yesterday"], "--since 'yesterday' is not an ISO date"),
        (["verify", "--file", "/nonexistent/a.jsonl"], "no audit export at"),
    ],
)
def test_bad_options_exit_2(
    url: str, head: AuditHead, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(audit(url, *args)) == 2
    assert message in capsys.readouterr().err


def test_a_real_server_logs_its_start_joins_refusals_calls_and_stop(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    """`consortium server` wires the log: its own start and stop, a node's join (once,
    whatever its heartbeats), a stranger's refusal, and an admin's call."""
    port = deployment.start_server()
    deployment.start_node("cleveland")
    stranger = f"stranger-{uuid.uuid4().hex[:8]}"
    CertificateAuthority.load(deployment.fed.ca_dir).issue(
        "node", stranger, deployment.workdir / stranger
    )
    refused = subprocess.run(
        [EXE, "node", "--server", f"127.0.0.1:{port}",
         "--credentials", str(deployment.workdir / stranger), "--app", str(SLOW_APP),
         "--work-dir", str(deployment.workdir / "stranger-node")],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 11, refused.stderr
    admin = deployment.fed.admin(port)
    try:
        assert admin.list_runs() == []
    finally:
        admin.close()
    state = ["--workdir", str(deployment.workdir / "server")]

    def actions() -> list[tuple[str, str, str]]:
        assert main(["audit", "show", "--json", *state]) == 0
        lines = capsys.readouterr().out.splitlines()
        return [(e["action"], e["actor"], e["target"]) for e in map(json.loads, lines)]

    wait_for(lambda: ("node.joined", "cleveland", "cleveland") in actions(), 60, "the join")
    time.sleep(1.0)  # heartbeats every 0.3 s: none of them is logged
    server = deployment.procs.pop("server")
    server.send_signal(signal.SIGTERM)
    assert server.wait(60) == 0
    seen = actions()
    assert seen[0] == ("server.start", SERVER_ACTOR, f"127.0.0.1:{port}")
    assert seen[-1] == ("server.stop", SERVER_ACTOR, f"127.0.0.1:{port}")
    assert seen.count(("node.joined", "cleveland", "cleveland")) == 1
    assert ("node.refused", SERVER_ACTOR, stranger) in seen
    assert ("run.list", "alice", "") in seen
    assert main(["audit", "verify", *state]) == 0
