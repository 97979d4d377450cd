"""Who may do what on the coordinator's API: certificate roles (and names) → actions.

Every Control call names one or more :data:`Action` s; the server's
:class:`AuthzPolicy` grants actions to certificate roles, and optionally to
single certificates on top of their role. Anything not granted is denied. The
built-in :data:`DEFAULT_POLICY`:

============  ==========================================================================
role          actions
============  ==========================================================================
admin         everything except ``download-node-updates`` (``ban-node``, ``read-audit`` ...)
researcher    ``start-run``, ``stop-run``, ``upload-app``, ``read-runs``, ``download-model``
observer      ``read-runs``
node          nothing (nodes use the Fleet API)
============  ==========================================================================

A policy file (``consortium server --authz FILE``, TOML) replaces the defaults::

    [roles]                      # every role not listed may do nothing
    admin = ["start-run", "stop-run", "upload-app", "read-runs", "download-model", "ban-node"]
    researcher = ["read-runs", "download-model"]
    observer = ["read-runs"]

    [[grant]]                    # one certificate may do more than its role
    role = "researcher"
    name = "bob"
    actions = ["start-run", "upload-app"]

``consortium server --admin NAME`` still restricts who may hold the admin role: an
admin certificate of another name is granted nothing. Pure logic: no gRPC, no server.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from consortium.core.audit import AuditEvent, AuditSink, Outcome
from consortium.core.errors import ConfigError
from consortium.transport.names import CLIENT_ROLES, validate_name

log = logging.getLogger("consortium.transport")

Action = Literal[
    "start-run",
    "stop-run",
    "upload-app",
    "read-runs",
    "download-model",
    "download-node-updates",
    "ban-node",
    "read-audit",
]
START_RUN: Action = "start-run"
STOP_RUN: Action = "stop-run"
UPLOAD_APP: Action = "upload-app"
#: ``run list``, ``run show`` and the metrics it holds
READ_RUNS: Action = "read-runs"
DOWNLOAD_MODEL: Action = "download-model"
#: the individual updates of single nodes (more sensitive than the global model)
DOWNLOAD_NODE_UPDATES: Action = "download-node-updates"
#: ban a node (and lift a ban)
BAN_NODE: Action = "ban-node"
#: read the audit log (who did what; the dashboard's audit page, ``GET /api/v1/audit``)
READ_AUDIT: Action = "read-audit"
ACTIONS: tuple[Action, ...] = (START_RUN, STOP_RUN, UPLOAD_APP, READ_RUNS, DOWNLOAD_MODEL,
                               DOWNLOAD_NODE_UPDATES, BAN_NODE, READ_AUDIT)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a call, as their certificate says: name, role and organisation."""

    name: str
    role: str
    #: the certificate's ``O=`` ("" when it names none)
    organisation: str = ""

    def __str__(self) -> str:
        org = f" of {self.organisation!r}" if self.organisation else ""
        return f"{self.role} {self.name!r}{org}"


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a caller may take an action; ``reason`` says who was refused what, and why."""

    allowed: bool
    reason: str = ""


@dataclass(frozen=True)
class AuthzPolicy:
    """Roles → actions, plus per-certificate grants; deny by default."""

    roles: Mapping[str, frozenset[Action]]
    #: (role, name) → actions granted to that one certificate on top of its role's
    grants: Mapping[tuple[str, str], frozenset[Action]] = field(default_factory=dict)
    #: who may hold the admin role (``--admin``); None: any admin certificate
    admins: frozenset[str] | None = None
    #: where the policy came from, for refusal messages
    source: str = "built-in defaults"

    def restrict_admins(self, names: Collection[str]) -> AuthzPolicy:
        """This policy, where only admin certificates named in ``names`` hold the admin role
        (no names: no restriction)."""
        return replace(self, admins=frozenset(names)) if names else self

    def actions(self, caller: Caller) -> frozenset[Action]:
        """Everything ``caller`` may do."""
        if caller.role == "admin" and self.admins is not None and caller.name not in self.admins:
            return frozenset()
        own = self.grants.get((caller.role, caller.name), frozenset())
        return self.roles.get(caller.role, frozenset()) | own

    def decide(self, caller: Caller, action: Action) -> Decision:
        """Allow ``action`` if granted to ``caller``'s role or to its certificate."""
        granted = self.actions(caller)
        if action in granted:
            return Decision(True)
        if caller.role == "admin" and self.admins is not None and caller.name not in self.admins:
            why = "it is not on this server's --admin list"
        elif granted:
            why = f"it may only {', '.join(a for a in ACTIONS if a in granted)}"
        else:
            why = f"the {caller.role} role may do nothing here"
        return Decision(False, f"{caller} may not {action}: {why} (policy: {self.source})")


def _actions(*names: Action) -> frozenset[Action]:
    return frozenset(names)


#: what each role may do when the server has no ``--authz`` file
DEFAULT_POLICY = AuthzPolicy(
    roles={
        "admin": frozenset(a for a in ACTIONS if a != DOWNLOAD_NODE_UPDATES),
        "researcher": _actions(START_RUN, STOP_RUN, UPLOAD_APP, READ_RUNS, DOWNLOAD_MODEL),
        "observer": _actions(READ_RUNS),
        "node": frozenset(),
    }
)

_TOP_KEYS = ("roles", "grant")
#: makes the error for a field: bad(where, why)
_Bad = Callable[[str, str], ConfigError]
_GRANT_KEYS = ("role", "name", "actions")


def load_policy(path: Path | str) -> AuthzPolicy:
    """Read a policy file (TOML, see the module docstring); :class:`ConfigError` naming the
    field for anything malformed."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the authorization policy {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid TOML file: {exc}") from None
    return parse_policy(data, str(path))


def parse_policy(data: Mapping[str, Any], source: str) -> AuthzPolicy:
    """The policy a parsed TOML document describes; ``source`` names it in errors."""

    def bad(where: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: {where}: {why}")

    for key in data:
        if key not in _TOP_KEYS:
            raise bad(key, f"unknown key (expected {' or '.join(_TOP_KEYS)})")
    roles_table = data.get("roles")
    if roles_table is None:
        raise bad("roles", 'missing: list what each role may do, e.g. observer = ["read-runs"]')
    if not isinstance(roles_table, dict):
        raise bad("roles", f"expected a table of role = [actions], got {_kind(roles_table)}")
    roles: dict[str, frozenset[Action]] = {}
    for role, listed in roles_table.items():
        where = f"roles.{role}"
        _check_role(role, where, bad)
        roles[role] = _parse_actions(listed, where, bad)
    grants: dict[tuple[str, str], frozenset[Action]] = {}
    entries = data.get("grant", [])
    if not isinstance(entries, list):
        raise bad("grant", f"expected [[grant]] tables, got {_kind(entries)}")
    for i, entry in enumerate(entries):
        where = f"grant[{i}]"
        if not isinstance(entry, dict):
            raise bad(where, f"expected a table with {', '.join(_GRANT_KEYS)}, got {_kind(entry)}")
        for key in entry:
            if key not in _GRANT_KEYS:
                raise bad(f"{where}.{key}", f"unknown key (expected {', '.join(_GRANT_KEYS)})")
        for key in _GRANT_KEYS:
            if key not in entry:
                raise bad(f"{where}.{key}", "missing")
        role, name = entry["role"], entry["name"]
        _check_role(role, f"{where}.role", bad)
        if not isinstance(name, str):
            raise bad(f"{where}.name", f"expected a certificate name, got {_kind(name)}")
        try:
            validate_name(role, name)
        except ConfigError as exc:
            raise bad(f"{where}.name", str(exc)) from None
        actions = _parse_actions(entry["actions"], f"{where}.actions", bad)
        grants[(role, name)] = grants.get((role, name), frozenset()) | actions
    return AuthzPolicy(roles=roles, grants=grants, source=source)


def _check_role(role: object, where: str, bad: _Bad) -> None:
    if role not in CLIENT_ROLES:
        raise bad(where, f"unknown role {role!r} (expected one of {', '.join(CLIENT_ROLES)})")


def _parse_actions(listed: object, where: str, bad: _Bad) -> frozenset[Action]:
    if not isinstance(listed, list):
        raise bad(where, f"expected a list of actions, got {_kind(listed)}")
    out: set[Action] = set()
    for i, name in enumerate(listed):
        match = next((a for a in ACTIONS if a == name), None)
        if match is None:
            raise bad(f"{where}[{i}]", f"unknown action {name!r} (known: {', '.join(ACTIONS)})")
        out.add(match)
    return frozenset(out)


def _kind(value: object) -> str:
    kinds: dict[type, str] = {dict: "a table", list: "a list", str: "a string"}
    return kinds.get(type(value), type(value).__name__)


def report(
    audit: AuditSink,
    caller: Caller,
    action: str,
    outcome: Outcome,
    *,
    run_id: str = "",
    target: str = "",
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Report what ``caller`` did or was refused to the audit log, for both the gRPC and
    the REST API; a sink that fails is logged, never the caller's problem."""
    event = AuditEvent(
        actor=caller.name,
        action=action,
        outcome=outcome,
        role=caller.role,
        organisation=caller.organisation,
        run_id=run_id,
        target=target,
        detail=dict(detail or {}),
    )
    try:
        audit(event)
    except Exception as exc:
        log.error("audit: could not record %s by %s (%s): %s", action, caller, outcome, exc)
