"""Bearer tokens: signed by the server's secret, expiring, revocable, never stored in clear."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from consortium.control.tokens import (
    API_DIR,
    SECRET_FILE,
    TOKENS_FILE,
    InvalidToken,
    TokenAuthority,
)
from consortium.core.errors import ConfigError, SecurityError
from consortium.server.store import StateStore, default_url
from consortium.server.store.audit import AuditLog


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_token_names_its_holder_and_the_secret_is_private(tmp_path: Path) -> None:
    authority = TokenAuthority(tmp_path)
    token, info = authority.create(name="rita", role="researcher", days=2, organisation="CHUV")
    verified = authority.verify(token)
    assert (verified.name, verified.role, verified.organisation) == ("rita", "researcher", "CHUV")
    assert verified.id == info.id
    secret = tmp_path / API_DIR / SECRET_FILE
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(secret.read_bytes()) == 32
    listed = (tmp_path / API_DIR / TOKENS_FILE).read_text()
    assert token not in listed and token.split(".")[2] not in listed  # only claims are kept
    assert stat.S_IMODE((tmp_path / API_DIR / TOKENS_FILE).stat().st_mode) == 0o600


def test_a_token_expires(tmp_path: Path) -> None:
    clock = Clock()
    authority = TokenAuthority(tmp_path, clock=clock)
    token, _ = authority.create(name="otto", role="observer", days=1)
    clock.now += 86400 - 1
    authority.verify(token)
    clock.now += 1
    with pytest.raises(InvalidToken, match="expired"):
        authority.verify(token)


def test_a_revocation_is_persisted_and_seen_by_a_running_server(tmp_path: Path) -> None:
    server = TokenAuthority(tmp_path)  # the server's instance, which caches the list
    token, info = server.create(name="alice", role="admin", days=30)
    other, _ = server.create(name="bob", role="admin", days=30)
    server.verify(token)
    TokenAuthority(tmp_path).revoke(info.id)  # `consortium token revoke`, another process
    with pytest.raises(InvalidToken, match="revoked"):
        server.verify(token)
    with pytest.raises(InvalidToken, match="revoked"):
        TokenAuthority(tmp_path).verify(token)  # after a restart too
    assert server.verify(other).name == "bob"
    listed = {t.id: t for t in TokenAuthority(tmp_path).list()}
    assert listed[info.id].revoked_at is not None and len(listed) == 2
    with pytest.raises(ConfigError, match="no token 'nope'"):
        server.revoke("nope")


def test_forged_and_foreign_tokens_are_refused(tmp_path: Path) -> None:
    authority = TokenAuthority(tmp_path)
    token, _ = authority.create(name="otto", role="observer", days=1)
    prefix, payload, mac = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["role"] = "admin"
    raised = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidToken, match="signature"):
        authority.verify(f"{prefix}.{raised}.{mac}")
    foreign, _ = TokenAuthority(tmp_path / "other").create(name="otto", role="observer", days=1)
    with pytest.raises(InvalidToken, match="signature"):
        authority.verify(foreign)
    for garbage in ("", "abc", "cst1.x.y", "cst1.é.y", "Bearer x", f"{token}.extra"):
        with pytest.raises(InvalidToken):
            authority.verify(garbage)


def test_a_token_whose_record_is_gone_is_refused(tmp_path: Path) -> None:
    authority = TokenAuthority(tmp_path)
    token, _ = authority.create(name="otto", role="observer", days=1)
    (tmp_path / API_DIR / TOKENS_FILE).write_text('{"tokens": []}')
    with pytest.raises(InvalidToken, match="not on this server's token list"):
        authority.verify(token)


def test_bad_requests_name_the_field(tmp_path: Path) -> None:
    authority = TokenAuthority(tmp_path)
    with pytest.raises(ConfigError, match="role: 'node'"):
        authority.create(name="va", role="node", days=1)
    with pytest.raises(ConfigError, match="days"):
        authority.create(name="otto", role="observer", days=0)
    with pytest.raises(ConfigError):
        authority.create(name="../etc", role="observer", days=1)


def test_a_secret_others_can_read_is_refused(tmp_path: Path) -> None:
    TokenAuthority(tmp_path).secret()
    (tmp_path / API_DIR / SECRET_FILE).chmod(0o644)
    with pytest.raises(SecurityError, match="chmod 600"):
        TokenAuthority(tmp_path).secret()


def test_the_token_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from consortium.cli.main import main

    workdir = ["--workdir", str(tmp_path)]
    assert main(["token", "create", "--role", "observer", "--name", "x", *workdir]) == 0
    assert "not in the audit log" in capsys.readouterr().err  # no server has run there yet
    store = StateStore(default_url(tmp_path))  # as the server leaves it
    assert main(["token", "create", "--role", "observer", "--name", "otto", "--days", "2",
                 *workdir]) == 0  # fmt: skip
    out = capsys.readouterr()
    token = out.out.strip()
    info = TokenAuthority(tmp_path).verify(token)
    assert info.name == "otto" and f"token {info.id} for observer 'otto'" in out.err
    assert main(["token", "create", "--role", "admin", "--name", "alice",
                 "--out", str(tmp_path / "alice.token"), *workdir]) == 0  # fmt: skip
    assert stat.S_IMODE((tmp_path / "alice.token").stat().st_mode) == 0o600
    assert main(["token", "list", *workdir]) == 0
    listed = capsys.readouterr().out
    assert info.id in listed and "otto" in listed and "valid" in listed and token not in listed
    assert main(["token", "revoke", info.id, *workdir]) == 0
    with pytest.raises(InvalidToken, match="revoked"):
        TokenAuthority(tmp_path).verify(token)
    assert main(["token", "list", *workdir]) == 0
    assert "revoked" in capsys.readouterr().out
    acts = [(e.action, e.target, e.detail["token"]) for e in AuditLog(store).entries()]
    assert acts == [("token.create", "otto", info.id), ("token.create", "alice", acts[1][2]),
                    ("token.revoke", "otto", info.id)]  # fmt: skip
    assert all(e.actor.startswith("(local user ") for e in AuditLog(store).entries())
    store.close()
    assert main(["token", "create", "--role", "node", "--name", "va", *workdir]) == 2
    assert "role: 'node'" in capsys.readouterr().err
