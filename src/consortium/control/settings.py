"""What the REST API process is told at start: the first frame the server sends it.

Sent over the channel, not on the command line or in the environment, where
another user could read a database URL with its password (``ps``,
``/proc/PID/environ``). It names no key, certificate or CA: the API process
never needs them.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consortium.control.ipc import ProtocolError, take, take_strings
from consortium.transport.authz import Action, AuthzPolicy

_ACTIONS = frozenset(typing.get_args(Action))


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """Where the server's state is, who may do what, and the limits of uploads."""

    workdir: Path
    state_url: str
    state_timeout: float
    policy: AuthzPolicy
    max_bundle_bytes: int
    #: trees the API process may read, and read and write, besides Python's own
    #: (:func:`consortium.control.process.state_paths`)
    read_paths: tuple[str, ...] = ()
    write_paths: tuple[str, ...] = ()
    #: Landlock the API process to those (False: the kernel has no Landlock)
    confine: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "workdir": str(self.workdir),
            "state_url": self.state_url,
            "state_timeout": float(self.state_timeout),
            "policy": policy_to_json(self.policy),
            "max_bundle_bytes": self.max_bundle_bytes,
            "read_paths": list(self.read_paths),
            "write_paths": list(self.write_paths),
            "confine": self.confine,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ApiSettings:
        return cls(
            workdir=Path(take(data, "workdir", str)),
            state_url=take(data, "state_url", str),
            state_timeout=float(take(data, "state_timeout", float)),
            policy=policy_from_json(take(data, "policy", dict)),
            max_bundle_bytes=take(data, "max_bundle_bytes", int),
            read_paths=tuple(take_strings(data, "read_paths", most=64) or ()),
            write_paths=tuple(take_strings(data, "write_paths", most=64) or ()),
            confine=take(data, "confine", bool),
        )


def policy_to_json(policy: AuthzPolicy) -> dict[str, Any]:
    return {
        "roles": {role: sorted(actions) for role, actions in policy.roles.items()},
        "grants": [[role, name, sorted(acts)] for (role, name), acts in policy.grants.items()],
        "admins": None if policy.admins is None else sorted(policy.admins),
        "source": policy.source,
    }


def policy_from_json(data: Mapping[str, Any]) -> AuthzPolicy:
    roles = take(data, "roles", dict)
    grants = take(data, "grants", list)
    admins = take_strings(data, "admins", most=100_000)
    parsed_grants: dict[tuple[str, str], frozenset[Action]] = {}
    for grant in grants:
        if not (isinstance(grant, list) and len(grant) == 3):
            raise ProtocolError("policy.grants: expected [role, name, actions] entries")
        role, name, actions = grant
        if not isinstance(role, str) or not isinstance(name, str):
            raise ProtocolError("policy.grants: role and name must be strings")
        parsed_grants[(role, name)] = _actions(actions, f"policy.grants[{role}/{name}]")
    return AuthzPolicy(
        roles={str(role): _actions(acts, f"policy.roles.{role}") for role, acts in roles.items()},
        grants=parsed_grants,
        admins=None if admins is None else frozenset(admins),
        source=take(data, "source", str),
    )


def _actions(value: object, where: str) -> frozenset[Action]:
    if not isinstance(value, list) or not all(v in _ACTIONS for v in value):
        raise ProtocolError(f"{where}: expected a list of actions")
    return frozenset(typing.cast(list[Action], value))
