"""The coordinator's gRPC service: start, list, show and stop runs (admin certificates only)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TypeVar

import grpc

from consortium.transport.auth import Authenticator, authenticate_call
from consortium.transport.fleet_api import ControlBackend
from consortium.transport.proto import fleet_pb2 as pb
from consortium.transport.proto import fleet_pb2_grpc as rpc

log = logging.getLogger("consortium.transport")

T = TypeVar("T")


class ControlServicer(rpc.ControlServicer):
    """Coordinator RPCs (admin certificates only)."""

    def __init__(self, backend: ControlBackend, auth: Authenticator) -> None:
        self.backend = backend
        self.auth = auth

    def _call(self, context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
        authenticate_call(context, self.auth)
        try:
            return fn()
        except Exception as exc:  # a user error (bad app, bad config): tell the caller
            log.warning("control call failed: %s", exc)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{type(exc).__name__}: {exc}")
            raise

    def StartRun(
        self, request: pb.StartRunRequest, context: grpc.ServicerContext
    ) -> pb.StartRunReply:
        run_id = self._call(
            context,
            lambda: self.backend.start_run(request.bundle, request.run_config_json, request.seed),
        )
        return pb.StartRunReply(run_id=run_id)

    def ListRuns(
        self, request: pb.ListRunsRequest, context: grpc.ServicerContext
    ) -> pb.ListRunsReply:
        runs = self._call(context, self.backend.list_runs)
        return pb.ListRunsReply(runs=[pb.RunSummary(json=json.dumps(r)) for r in runs])

    def ShowRun(self, request: pb.RunRequest, context: grpc.ServicerContext) -> pb.RunSummary:
        run = self._call(context, lambda: self.backend.show_run(request.run_id))
        if run is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no run {request.run_id!r}")
        return pb.RunSummary(json=json.dumps(run))

    def StopRun(self, request: pb.StopRunRequest, context: grpc.ServicerContext) -> pb.StopRunReply:
        stopped = self._call(context, lambda: self.backend.stop_run(request.run_id))
        return pb.StopRunReply(stopped=stopped)
