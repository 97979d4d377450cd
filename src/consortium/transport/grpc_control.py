"""The coordinator's gRPC service: runs, models and bans, each call authorized and audited.

Every call authenticates its caller (certificate name, role, organisation),
checks the action it asks for against the server's
:class:`~consortium.transport.authz.AuthzPolicy` (a refusal is
PERMISSION_DENIED naming who, in which role, was refused what), and reports an
:class:`~consortium.core.audit.AuditEvent` to the injected
:class:`~consortium.core.audit.AuditSink` whatever the outcome: ``ok``,
``denied`` (by the policy, or an unknown certificate) or ``failed`` (the
request itself was bad). An event is reported once the outcome is known; if the
sink cannot write it the call's result stands and the server's log says so.

App bundles arrive, and models leave, as chunk streams
(:mod:`consortium.transport.grpc_payloads`): a bundle over the server's limit is
refused at its first chunk with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import grpc

from consortium.core import audit
from consortium.core.audit import AuditSink, Outcome, discard
from consortium.core.errors import ConfigError, WireFormatError
from consortium.transport.auth import Authenticator, CallerAuthenticator, Unauthenticated
from consortium.transport.authz import (
    BAN_NODE,
    DEFAULT_POLICY,
    DOWNLOAD_MODEL,
    READ_RUNS,
    START_RUN,
    STOP_RUN,
    UPLOAD_APP,
    Action,
    AuthzPolicy,
    Caller,
    report,
)
from consortium.transport.chunks import PayloadTooLarge, iter_chunks
from consortium.transport.fleet_api import BanList, ControlBackend
from consortium.transport.grpc_payloads import (
    from_pb,
    parse_start_run,
    receive,
    stream_limit,
    to_pb,
)
from consortium.transport.names import validate_name
from consortium.transport.proto import fleet_pb2 as pb
from consortium.transport.proto import fleet_pb2_grpc as rpc
from consortium.transport.refusal_gate import RefusalLog, peer_host

log = logging.getLogger("consortium.transport")
#: refusals logged once per caller and reason a minute (a refused caller retries)
_refusals = RefusalLog(log)

T = TypeVar("T")
#: one caller's successful reads of one run (or of the list) are audited once per this
READ_AUDIT_EVERY = 60.0
#: past this many remembered (caller, read) pairs the memory starts afresh
MAX_READ_KEYS = 10_000

#: the role of a caller named by a plain :class:`Authenticator` (the admin-only Control
#: API of before roles, and ``--insecure`` test setups, which have no certificates)
NAME_ONLY_ROLE = "admin"


class ControlServicer(rpc.ControlServicer):
    """Coordinator RPCs, for the certificate roles ``policy`` grants them to.

    ``auth`` names the caller: a :class:`CallerAuthenticator` with role and
    organisation, or a plain :class:`Authenticator` whose callers all count as
    admins. ``bans`` is the server's ban list (None: BanNode is unavailable);
    ``max_bundle_bytes`` the largest app bundle StartRun takes (None: no limit
    but protobuf's own).
    """

    def __init__(
        self,
        backend: ControlBackend,
        auth: Authenticator | CallerAuthenticator,
        *,
        policy: AuthzPolicy = DEFAULT_POLICY,
        audit: AuditSink = discard,
        bans: BanList | None = None,
        max_bundle_bytes: int | None = None,
    ) -> None:
        self.backend = backend
        self.auth = auth
        self.policy = policy
        self.audit = audit
        self.bans = bans
        self.max_bundle_bytes = max_bundle_bytes
        self._last_read: dict[tuple[str, str, str, str], float] = {}
        self._reads_lock = threading.Lock()

    # -- who, and may they ------------------------------------------------------------
    def _record(
        self,
        who: Caller | str,
        action: str,
        outcome: Outcome,
        *,
        run_id: str = "",
        target: str = "",
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Report one audit event; a failing sink is only logged."""
        caller = who if isinstance(who, Caller) else Caller(who, "")
        report(self.audit, caller, action, outcome, run_id=run_id, target=target, detail=detail)

    def _authorize(
        self,
        context: grpc.ServicerContext,
        event: str,
        *actions: Action,
        run_id: str = "",
        target: str = "",
    ) -> Caller:
        """The caller, if the policy grants it every one of ``actions``; otherwise the call
        ends (UNAUTHENTICATED, PERMISSION_DENIED) and the refusal is audited as ``event``."""
        try:
            who = self.auth(context)
        except Unauthenticated as exc:
            _refusals.warning(exc.node or peer_host(context.peer()), str(exc),
                              "refused %s: %s", context.peer(), exc)  # fmt: skip
            # no certificate name to give: the peer's address, in brackets no name can hold
            peer = f"({context.peer()})"
            reason = {"reason": str(exc)}
            self._record(peer, event, "denied", run_id=run_id, target=target, detail=reason)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            raise  # abort raises; this line satisfies type checkers
        caller = who if isinstance(who, Caller) else Caller(who, NAME_ONLY_ROLE)
        for action in actions:
            decision = self.policy.decide(caller, action)
            if not decision.allowed:
                _refusals.warning(caller.name, decision.reason, "refused %s: %s", context.peer(),
                                  decision.reason)  # fmt: skip
                detail = {"reason": decision.reason, "needs": action}
                self._record(caller, event, "denied", run_id=run_id, target=target, detail=detail)
                context.abort(grpc.StatusCode.PERMISSION_DENIED, decision.reason)
        return caller

    def _do(
        self,
        context: grpc.ServicerContext,
        caller: Caller,
        event: str,
        fn: Callable[[], T],
        *,
        run_id: str = "",
        target: str = "",
        detail: Mapping[str, Any] | None = None,
    ) -> T:
        """``fn()``; if it raises (a bad app, a bad config), the caller is told why and the
        failure audited."""
        try:
            return fn()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.warning("control call failed: %s", exc)
            facts = {**(detail or {}), "error": error}
            self._record(caller, event, "failed", run_id=run_id, target=target, detail=facts)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, error)
        raise AssertionError("unreachable: abort raises")

    def _first_read_in_a_while(self, caller: Caller, action: str, run_id: str) -> bool:
        """True at most once per :data:`READ_AUDIT_EVERY` seconds for one caller reading one
        thing: ``run start --wait`` polls every second, and the log should say who read
        what, not how often. Denied and failed reads are always recorded."""
        key = (caller.name, caller.role, action, run_id)
        now = time.monotonic()
        with self._reads_lock:
            last = self._last_read.get(key)
            if last is not None and now - last < READ_AUDIT_EVERY:
                return False
            if len(self._last_read) > MAX_READ_KEYS:
                self._last_read.clear()
            self._last_read[key] = now
            return True

    # -- runs ---------------------------------------------------------------------------
    def StartRun(
        self, request_iterator: Iterator[pb.Chunk], context: grpc.ServicerContext
    ) -> pb.StartRunReply:
        # authorized before a byte of the bundle is read
        caller = self._authorize(context, audit.RUN_START, START_RUN, UPLOAD_APP)
        chunks = (from_pb(c) for c in request_iterator)
        try:
            payload = receive(chunks, stream_limit(self.max_bundle_bytes), "StartRun")
            request = parse_start_run(payload, self.max_bundle_bytes)
        except PayloadTooLarge as exc:
            self._refuse_upload(context, caller, grpc.StatusCode.RESOURCE_EXHAUSTED, exc)
            raise
        except WireFormatError as exc:
            self._refuse_upload(context, caller, grpc.StatusCode.INVALID_ARGUMENT, exc)
            raise
        del payload
        bundle = request.bundle
        facts: dict[str, Any] = {
            "bundle_sha256": hashlib.sha256(bundle).hexdigest(),
            "bundle_bytes": len(bundle),
        }
        run_id = self._do(
            context,
            caller,
            audit.RUN_START,
            lambda: self.backend.start_run(bundle, request.run_config_json, request.seed),
            detail=facts,
        )
        app = self.backend.run_bundle("", run_id)
        if app is not None:
            facts.update(app=app.app_name, app_version=app.app_version)
        self._record(caller, audit.RUN_START, "ok", run_id=run_id, detail=facts)
        return pb.StartRunReply(run_id=run_id)

    def _refuse_upload(
        self,
        context: grpc.ServicerContext,
        caller: Caller,
        code: grpc.StatusCode,
        error: Exception,
    ) -> None:
        if not context.is_active():  # the coordinator went away mid-upload
            code = grpc.StatusCode.CANCELLED
        log.warning("refused an app upload from %s: %s", caller, error)
        self._record(caller, audit.RUN_START, "failed", detail={"error": str(error)})
        context.abort(code, str(error))

    def ListRuns(
        self, request: pb.ListRunsRequest, context: grpc.ServicerContext
    ) -> pb.ListRunsReply:
        caller = self._authorize(context, audit.RUN_LIST, READ_RUNS)
        runs = self._do(context, caller, audit.RUN_LIST, self.backend.list_runs)
        if self._first_read_in_a_while(caller, audit.RUN_LIST, ""):
            self._record(caller, audit.RUN_LIST, "ok", detail={"runs": len(runs)})
        return pb.ListRunsReply(runs=[pb.RunSummary(json=json.dumps(r)) for r in runs])

    def ShowRun(self, request: pb.RunRequest, context: grpc.ServicerContext) -> pb.RunSummary:
        run_id = request.run_id
        caller = self._authorize(context, audit.RUN_SHOW, READ_RUNS, run_id=run_id)
        run = self._do(
            context, caller, audit.RUN_SHOW, lambda: self.backend.show_run(run_id), run_id=run_id
        )
        if run is None:
            self._not_found(context, caller, audit.RUN_SHOW, run_id, f"no run {run_id!r}")
        if self._first_read_in_a_while(caller, audit.RUN_SHOW, run_id):
            self._record(caller, audit.RUN_SHOW, "ok", run_id=run_id)
        return pb.RunSummary(json=json.dumps(run))

    def StopRun(self, request: pb.StopRunRequest, context: grpc.ServicerContext) -> pb.StopRunReply:
        run_id = request.run_id
        caller = self._authorize(context, audit.RUN_STOP, STOP_RUN, run_id=run_id)
        stopped = self._do(
            context, caller, audit.RUN_STOP, lambda: self.backend.stop_run(run_id), run_id=run_id
        )
        self._record(caller, audit.RUN_STOP, "ok", run_id=run_id, detail={"stopped": stopped})
        return pb.StopRunReply(stopped=stopped)

    def _not_found(
        self, context: grpc.ServicerContext, caller: Caller, event: str, run_id: str, why: str
    ) -> None:
        self._record(caller, event, "failed", run_id=run_id, detail={"error": why})
        context.abort(grpc.StatusCode.NOT_FOUND, why)

    # -- models -------------------------------------------------------------------------
    def DownloadModel(
        self, request: pb.RunRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Chunk]:
        run_id = request.run_id
        caller = self._authorize(context, audit.MODEL_DOWNLOAD, DOWNLOAD_MODEL, run_id=run_id)
        model = self._do(
            context,
            caller,
            audit.MODEL_DOWNLOAD,
            lambda: self.backend.global_model(run_id),
            run_id=run_id,
        )
        if model is None:
            why = f"run {run_id!r} has no global model (unknown run, or none saved yet)"
            self._not_found(context, caller, audit.MODEL_DOWNLOAD, run_id, why)
            return
        facts = {"bytes": len(model), "sha256": hashlib.sha256(model).hexdigest()}
        self._record(caller, audit.MODEL_DOWNLOAD, "ok", run_id=run_id, detail=facts)
        for chunk in iter_chunks(model, run_id):
            yield to_pb(chunk)

    # -- nodes --------------------------------------------------------------------------
    def BanNode(self, request: pb.BanNodeRequest, context: grpc.ServicerContext) -> pb.BanNodeReply:
        name, reason = request.name, request.reason.strip()
        caller = self._authorize(context, audit.NODE_BAN, BAN_NODE, target=name)
        bans = self._ban_list(context, caller, audit.NODE_BAN, name)

        def ban() -> bool:
            validate_name("node", name)
            if not reason:
                raise ConfigError("give a reason for the ban (it is recorded and logged)")
            return bans.ban(name, reason, str(caller))

        changed = self._do(context, caller, audit.NODE_BAN, ban, target=name)
        facts = {"reason": reason, "changed": changed}
        self._record(caller, audit.NODE_BAN, "ok", target=name, detail=facts)
        log.warning("node %r banned by %s: %s", name, caller, reason)
        return pb.BanNodeReply(changed=changed)

    def UnbanNode(
        self, request: pb.BanNodeRequest, context: grpc.ServicerContext
    ) -> pb.BanNodeReply:
        name = request.name
        caller = self._authorize(context, audit.NODE_UNBAN, BAN_NODE, target=name)
        bans = self._ban_list(context, caller, audit.NODE_UNBAN, name)
        changed = self._do(context, caller, audit.NODE_UNBAN, lambda: bans.unban(name), target=name)
        self._record(caller, audit.NODE_UNBAN, "ok", target=name, detail={"changed": changed})
        log.warning("node %r let back in by %s", name, caller)
        return pb.BanNodeReply(changed=changed)

    def _ban_list(
        self, context: grpc.ServicerContext, caller: Caller, event: str, name: str
    ) -> BanList:
        if self.bans is None:
            why = "this server keeps no ban list"
            self._record(caller, event, "failed", target=name, detail={"error": why})
            context.abort(grpc.StatusCode.UNIMPLEMENTED, why)
        assert self.bans is not None
        return self.bans
