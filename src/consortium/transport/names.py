"""Who may hold a federation certificate, and how holders are named.

Roles (``server``, ``node`` and the coordinator roles), the rules for a node's
or coordinator's name and a server's host name (also file names: no path
separators, never ``ca``), organisations (a certificate's ``O=``), and the URI
subject-alternative name ``consortium://ROLE/NAME`` that names a holder in its
certificate (:mod:`consortium.transport.identity` reads it back).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from consortium.core.errors import ConfigError

Role = Literal["server", "node", "admin", "researcher", "observer"]
ROLES: tuple[Role, ...] = ("server", "node", "admin", "researcher", "observer")
#: the roles of the coordinator's API (the Control service)
CONTROL_ROLES: tuple[Role, ...] = ("admin", "researcher", "observer")
CLIENT_ROLES: tuple[Role, ...] = ("node", *CONTROL_ROLES)
#: the most characters of an organisation name (the X.509 upper bound for O=)
MAX_ORGANISATION = 64
URI_PREFIX = "consortium://"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_RESERVED = frozenset({"ca"})  # would collide with ca.crt / ca.key


def validate_name(role: Role, name: str) -> str:
    """Check a node/admin name or a server host name; return its canonical form."""
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")
    canonical = _validate_host(name) if role == "server" else _validate_plain_name(role, name)
    if canonical.lower() in _RESERVED:
        raise ConfigError(f"{name!r} is reserved (it would overwrite the CA's files); pick another")
    return canonical


def _validate_plain_name(role: Role, name: str) -> str:
    if not _NAME.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"invalid {role} name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no spaces or path separators)"
        )
    return name


def _validate_host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if len(host) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in host.split(".")):
        raise ConfigError(
            f"invalid server host {host!r}: give a DNS name (letters, digits, '-', dot-separated) "
            "or an IP address"
        )
    return host.lower()


def validate_organisation(organisation: str) -> str:
    """Check an organisation name for a certificate's ``O=``; return it stripped."""
    value = organisation.strip()
    if not value or len(value) > MAX_ORGANISATION or not value.isprintable():
        raise ConfigError(
            f"invalid organisation {organisation!r}: give 1-{MAX_ORGANISATION} printable "
            'characters, e.g. --org "St Mary"'
        )
    return value


def file_stem(name: str) -> str:
    """The file name (without suffix) for a certificate holder; IPv6 colons become '_'."""
    return name.replace(":", "_")


def identity_uri(role: Role, name: str) -> str:
    """The URI SAN that names a certificate's holder, e.g. ``consortium://node/hospital-a``."""
    return f"{URI_PREFIX}{role}/{name}"
