"""What a node's gRPC request carries, read without trusting it.

gRPC's own deserializer answers INTERNAL and logs a traceback naming neither
the peer nor the method when a request's bytes are not the protobuf its method
expects; :func:`lenient` deserializes without failing, so the handler can
authenticate the caller first and then refuse the bytes (:func:`parsed`:
INVALID_ARGUMENT, with the cause and the peer in the log). What a node reports
about itself is bounded before anyone is shown it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from consortium.transport.auth import peer_certificate_pem
from consortium.transport.identity import PeerIdentity

log = logging.getLogger("consortium.transport")

#: what a node's reported version may look like (PEP 440 and local labels, bounded)
VERSION_PATTERN = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+!_-]{0,63}")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Unparsable:
    """A request whose bytes are not the protobuf its method expects."""

    type_name: str
    error: str


def lenient(kind: Any, parse_raw: Callable[[bytes], Any] | None = None) -> Callable[[bytes], Any]:
    """A request deserializer that never fails, so the handler can refuse the bytes.

    When gRPC's own deserializer fails it answers INTERNAL "Exception
    deserializing request!" and logs a traceback that names neither the peer
    nor the method; the handler instead authenticates the caller first, then
    answers INVALID_ARGUMENT naming the cause (see :func:`parsed`).
    """

    decode = parse_raw or kind.FromString

    def parse(raw: bytes) -> Any:
        try:
            return decode(raw)
        except Exception as exc:  # DecodeError; invalid UTF-8 in a string field
            return Unparsable(kind.DESCRIPTOR.full_name, str(exc) or type(exc).__name__)

    return parse


def reported_version(raw: str, node: str) -> str:
    """The version a node reports at hello, if it looks like one (else "", logged): it is
    shown to coordinators (``GET /api/v1/nodes``), so no control characters or essays."""
    if not raw or VERSION_PATTERN.fullmatch(raw):
        return raw
    log.warning("node %s reported a version that is not one (%d chars): ignored", node, len(raw))
    return ""


def peer_organisation(context: grpc.ServicerContext) -> str:
    """The organisation (``O=``) of the caller's certificate, already verified by the
    authenticator ("" without one: --insecure)."""
    pem = peer_certificate_pem(context)
    if pem is None:
        return ""
    try:
        return PeerIdentity.from_certificate(pem).organisation
    except Exception:  # verified a moment ago; a parse failure only loses the label
        return ""


def parsed(context: grpc.ServicerContext, node: str, request: T | Unparsable) -> T:
    """The request, or abort the call if its bytes did not parse."""
    if isinstance(request, Unparsable):
        reason = f"request is not a valid {request.type_name} protobuf: {request.error}"
        log.warning("refused a request from %s: %s", node, reason)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, reason)
        raise AssertionError("unreachable: abort raises")
    return request
