"""The one exception tree of Consortium.

Every error a user can meet derives from :class:`ConsortiumError`, carries a
message written for that user, and an ``exit_code`` the CLI returns::

    ConsortiumError                 1  anything else that went wrong
    ├── ConfigError                 2  a config, app file or option is invalid
    ├── WireFormatError             3  bytes that are not a valid message/arrays
    ├── UpdateRejected              4  a node's update failed validation (NaN, shape)
    ├── RoundFailed                 5  too few nodes replied for a round to count
    ├── NodeError                   6  a node's handler raised; carries the traceback
    ├── StrategyError               7  a strategy was configured outside its guarantees
    ├── DatasetError                8  a data set is missing or malformed
    ├── MissingDependencyError      9  an optional extra is not installed
    ├── TransportError             10  the server or a node could not be reached or refused
    │   └── ServerUnavailable      10  the server could not be reached; worth retrying
    ├── SecurityError              11  a certificate, key or identity check failed
    │   └── NodeRefused            11  the server refused this caller for who it is
    │                                  (revoked, expired, not allow-listed, wrong role):
    │                                  a node stops instead of retrying
    └── StateStoreError            12  the state database or directory cannot be used

A TLS handshake the server refused (another CA, an expired certificate) cannot
be told apart from a server that is down: it is a :class:`ServerUnavailable`,
retried with backoff.
"""

from __future__ import annotations


class ConsortiumError(Exception):
    """Base of every error Consortium raises on purpose."""

    exit_code: int = 1


class ConfigError(ConsortiumError):
    """A configuration value, app manifest or command-line option is invalid."""

    exit_code = 2


class WireFormatError(ConsortiumError):
    """Bytes that claim to be an encoded message or arrays are corrupt or too large."""

    exit_code = 3


class UpdateRejected(ConsortiumError):
    """A node's reply failed validation and was kept out of the aggregate."""

    exit_code = 4


class RoundFailed(ConsortiumError):
    """A round could not complete: fewer nodes replied than the minimum."""

    exit_code = 5


class NodeError(ConsortiumError):
    """A node's handler raised; ``node_id`` and ``remote_traceback`` say where and why."""

    exit_code = 6

    def __init__(self, message: str, *, node_id: str = "", remote_traceback: str = "") -> None:
        super().__init__(message)
        self.node_id = node_id
        self.remote_traceback = remote_traceback


class StrategyError(ConsortiumError):
    """A strategy was asked for something outside its guarantees."""

    exit_code = 7


class StopTraining(ConsortiumError):
    """A strategy's decision, before a round, that no further round may run (a privacy
    budget spent, a stopping rule met): the run *finishes* with the model of the last
    completed round, and the message says why it ended early. Not a failure."""

    exit_code = 0


class DatasetError(ConsortiumError):
    """A data set could not be loaded or is not what it claims to be."""

    exit_code = 8


class MissingDependencyError(ConsortiumError):
    """An optional dependency is needed; the message names the extra to install."""

    exit_code = 9

    @classmethod
    def for_extra(cls, package: str, extra: str) -> MissingDependencyError:
        return cls(f"this feature needs the '{package}' package: pip install 'consortium[{extra}]'")


class TransportError(ConsortiumError):
    """A remote party could not be reached, or refused the call (the message says why)."""

    exit_code = 10


class ServerUnavailable(TransportError):
    """The server could not be reached (down, unreachable, too slow); worth retrying.

    Any other :class:`TransportError` is the server refusing the call for what it
    is: retrying the same call cannot help.
    """


class SecurityError(ConsortiumError):
    """A certificate, key or identity failed a check (wrong CA, expired, revoked, role)."""

    exit_code = 11


class StateStoreError(ConsortiumError):
    """The server's state database could not be written (deleted, read-only, locked past
    the bound) or its state directory is in use by another server; the message names which."""

    exit_code = 12


class NodeRefused(SecurityError):
    """The server refused this caller's identity (gRPC UNAUTHENTICATED or PERMISSION_DENIED).

    Its certificate was revoked or has expired, it is not on the server's
    allow-list, or it has the wrong role. Retrying cannot help: a node stops.
    """
