"""The Control API's authorization policy: defaults, policy files, --admin, refusal messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from consortium.core.errors import ConfigError
from consortium.transport.authz import (
    ACTIONS,
    BAN_NODE,
    DEFAULT_POLICY,
    DOWNLOAD_MODEL,
    DOWNLOAD_NODE_UPDATES,
    READ_RUNS,
    START_RUN,
    STOP_RUN,
    UPLOAD_APP,
    AuthzPolicy,
    Caller,
    load_policy,
)

ADMIN = Caller("alice", "admin")
RESEARCHER = Caller("bob", "researcher", "St Mary")
OBSERVER = Caller("carol", "observer")
NODE = Caller("cleveland", "node")


def allowed(caller: Caller, policy: AuthzPolicy = DEFAULT_POLICY) -> set[str]:
    return {a for a in ACTIONS if policy.decide(caller, a).allowed}


def test_the_default_policy() -> None:
    assert allowed(ADMIN) == set(ACTIONS) - {DOWNLOAD_NODE_UPDATES}
    assert allowed(RESEARCHER) == {START_RUN, STOP_RUN, UPLOAD_APP, READ_RUNS, DOWNLOAD_MODEL}
    assert allowed(OBSERVER) == {READ_RUNS}
    assert allowed(NODE) == set()
    assert allowed(Caller("x", "server")) == set()  # a role the policy does not know


def test_a_refusal_names_who_in_which_role_was_refused_what() -> None:
    decision = DEFAULT_POLICY.decide(RESEARCHER, BAN_NODE)
    assert not decision.allowed
    assert decision.reason.startswith("researcher 'bob' of 'St Mary' may not ban-node")
    assert "it may only start-run, stop-run, upload-app, read-runs, download-model" in (
        decision.reason
    )
    assert "policy: built-in defaults" in decision.reason
    node = DEFAULT_POLICY.decide(NODE, READ_RUNS)
    assert "the node role may do nothing here" in node.reason


def test_admin_list_restricts_who_holds_the_admin_role() -> None:
    policy = DEFAULT_POLICY.restrict_admins(["alice"])
    assert allowed(ADMIN, policy) == allowed(ADMIN)
    mallory = policy.decide(Caller("mallory", "admin"), READ_RUNS)
    assert not mallory.allowed
    assert "admin 'mallory' may not read-runs: it is not on this server's --admin list" in (
        mallory.reason
    )
    assert allowed(RESEARCHER, policy) == allowed(RESEARCHER)  # other roles are unaffected
    assert DEFAULT_POLICY.restrict_admins([]) is DEFAULT_POLICY


def test_a_policy_file_replaces_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "authz.toml"
    path.write_text(
        "[roles]\n"
        'admin = ["ban-node", "read-runs"]\n'
        'researcher = ["read-runs"]\n'
        "\n"
        "[[grant]]\n"
        'role = "researcher"\n'
        'name = "bob"\n'
        'actions = ["start-run", "upload-app"]\n'
    )
    policy = load_policy(path)
    assert allowed(ADMIN, policy) == {BAN_NODE, READ_RUNS}
    assert allowed(RESEARCHER, policy) == {READ_RUNS, START_RUN, UPLOAD_APP}
    assert allowed(Caller("dave", "researcher"), policy) == {READ_RUNS}  # the grant is bob's
    assert allowed(Caller("bob", "observer"), policy) == set()  # ... as a researcher only
    assert allowed(OBSERVER, policy) == set()  # not listed: nothing
    assert str(path) in policy.decide(OBSERVER, READ_RUNS).reason


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('[roles]\nobserver = ["read-run"]\n', "roles.observer[0]: unknown action 'read-run'"),
        ('[roles]\nsuperuser = ["read-runs"]\n', "roles.superuser: unknown role 'superuser'"),
        ("[roles]\nserver = []\n", "roles.server: unknown role 'server'"),
        ('[roles]\nobserver = "read-runs"\n', "roles.observer: expected a list of actions"),
        ("roles = 3\n", "roles: expected a table"),
        ('[role]\nobserver = ["read-runs"]\n', "role: unknown key"),
        ('[[grant]]\nrole = "observer"\nname = "c"\nactions = []\n', "roles: missing"),
        (
            '[roles]\n[[grant]]\nrole = "observer"\nactions = []\n',
            "grant[0].name: missing",
        ),
        (
            '[roles]\n[[grant]]\nrole = "observer"\nname = "a/b"\nactions = []\n',
            "grant[0].name: invalid observer name",
        ),
        (
            '[roles]\n[[grant]]\nrole = "observer"\nname = "c"\nactions = ["x"]\ncolour = 1\n',
            "grant[0].colour: unknown key",
        ),
        (
            '[roles]\n[[grant]]\nrole = "observer"\nname = "c"\nactions = ["nope"]\n',
            "grant[0].actions[0]: unknown action 'nope'",
        ),
        ("[roles\n", "not a valid TOML file"),
    ],
)
def test_a_malformed_policy_file_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "authz.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_policy(path)
    assert str(err.value).startswith(f"{path}: ")
    assert field in str(err.value)


def test_a_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the authorization policy"):
        load_policy(tmp_path / "nope.toml")
