"""The gRPC services: Fleet (nodes) and Control (coordinator), over mutual TLS by default.

Each RPC authenticates the caller from its certificate, then delegates to a
:class:`~consortium.transport.fleet_api.FleetBackend` or ``ControlBackend``.
Bad input (a corrupt chunk stream, a message over the limit, bytes that are
not a Message) ends that one call with a clear status; the server goes on
serving everyone else. Requests are parsed leniently
(:mod:`consortium.transport.grpc_requests`) so that bytes which are not even a
protobuf are refused by the handler, after it authenticated the caller, with
INVALID_ARGUMENT and the peer in the log. :mod:`consortium.transport.grpc_listen`
starts a server with these services.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from consortium.core.errors import WireFormatError
from consortium.core.message import Message
from consortium.core.records import UnacceptableRecord
from consortium.transport.auth import Authenticator, authenticate_call
from consortium.transport.chunks import (
    MAX_GRPC_MESSAGE,
    Chunk,
    ChunkSize,
    ChunkTooLarge,
    PayloadTooLarge,
    Reassembler,
    Refused,
    encode_chunk,
    iter_chunks,
)
from consortium.transport.fairness import (
    CALLS_PER_NODE,
    RECEIVES_AT_ONCE,
    CallLimiter,
    ReceiveSlots,
)
from consortium.transport.fleet_api import decode_reply
from consortium.transport.grpc_payloads import run_info_chunks
from consortium.transport.grpc_requests import parsed, peer_organisation, reported_version
from consortium.transport.link_chunks import ReplyChunks, send_chunk_size
from consortium.transport.link_rates import DEFAULT_SLOW_LINK_MBIT, LinkRates
from consortium.transport.proto import fleet_pb2 as pb
from consortium.transport.proto import fleet_pb2_grpc as rpc
from consortium.transport.refusal_gate import RefusalLog
from consortium.transport.reply_checks import CheckedFleetBackend, NotAReply, peek_reply
from consortium.transport.spill import SpillError, SpillStore
from consortium.transport.stage_times import flush, set_role, stage, timed
from consortium.transport.stall import (
    BYTES_PER_MBIT,
    DEFAULT_MIN_RATE_MBIT,
    DEFAULT_STALL_TIMEOUT,
    StallWatch,
    Transfer,
)

log = logging.getLogger("consortium.transport")
#: refusals logged once per node and reason a minute (a refused node retries)
_refusals = RefusalLog(log)


_ENDED_BY_GRPC = (
    "gRPC ended the call (the node cancelled it, or sent one gRPC message over "
    f"the {MAX_GRPC_MESSAGE}-byte limit)"
)


class _Stop(Exception):
    """Raised by the admission check to end a reply's stream early: it is not wanted."""


class FleetServicer(rpc.FleetServicer):
    """Node-facing RPCs."""

    def __init__(
        self,
        backend: CheckedFleetBackend,
        auth: Authenticator,
        *,
        calls_per_node: int = CALLS_PER_NODE,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
        min_rate_mbit: float = DEFAULT_MIN_RATE_MBIT,
        receives_at_once: int = RECEIVES_AT_ONCE,
        spill: SpillStore | None = None,
        slow_link_mbit: float = DEFAULT_SLOW_LINK_MBIT,
    ) -> None:
        self.backend = backend
        self.auth = auth
        #: bytes in transit (see ReceiveBudget): with many nodes replying together
        #: the server holds what the budget allows, not one model per node
        self.budget = backend.transfer_budget
        #: each node's calls in progress: no node may take the threads others need
        self.calls = CallLimiter(calls_per_node)
        #: replies received to disk once they waited for the budget (slow links upload
        #: at once, not one after the other); None: they wait
        self.spill = spill if spill is not None and spill.capacity else None
        #: each node's link, as its model-sized transfers measured it: a reply from a slow
        #: one spills at once, and a task to one is not held to the few large sends at once
        self.links = LinkRates(slow_link_mbit * BYTES_PER_MBIT)
        #: replies read at once: the others wait, unread, holding no memory of the server's
        self.receiving = ReceiveSlots(receives_at_once, self._reads_at_once)
        #: the chunk size each node was told to reply in: its reply is read as holding
        #: that much, and held to it
        self.reply_chunks = ReplyChunks(self.links)
        #: transfers that stop moving, or crawl while others wait behind them, are cut
        #: off, failing only their node's task
        self.stalls = StallWatch(
            stall_timeout,
            min_rate=min_rate_mbit * BYTES_PER_MBIT,
            others_waiting=self._others_waiting,
        )
        set_role("server")

    def _reads_at_once(self) -> int | None:
        """Replies worth reading at once: as many as the budget admits, and the next; and
        one more for each reply received to disk (None: no bound of the budget's)."""
        bound = self.budget.reads_at_once()
        if bound is None or self.spill is None:
            return bound
        return bound + self.spill.files_open

    def _others_waiting(self) -> bool:
        """Whether a transfer waits behind others: a task for a send slot, a reply for a
        receive slot or for the transfer budget."""
        return self.backend.tasks_waiting() or self.receiving.waiting() or self.budget.waiting()

    def _caller(self, context: grpc.ServicerContext) -> str:
        """The calling node's name; a refusal is also reported to the backend."""
        return authenticate_call(context, self.auth, self.backend.refused)

    @contextmanager
    def _slot(self, node: str, context: grpc.ServicerContext) -> Iterator[None]:
        """Hold one of ``node``'s call slots for the call; refuse it if it has none left."""
        if not self.calls.enter(node):
            self.backend.count_refusal(node, "too-many-calls")
            limit = self.calls.per_node
            why = "refused a call from %s: over %d calls in progress"
            _refusals.warning(node, "too-many-calls", why, node, limit)
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"node {node!r} already has {limit} calls in progress, the most one node may",
            )
        try:
            yield
        finally:
            self.calls.leave(node)

    def Hello(self, request: pb.HelloRequest, context: grpc.ServicerContext) -> pb.HelloReply:
        node = self._caller(context)
        with self._slot(node, context):
            request = parsed(context, node, request)
            version = reported_version(request.version, node)
            self.backend.hello(node, request.instance_id, version=version,
                               organisation=peer_organisation(context))  # fmt: skip
        return pb.HelloReply(
            node_id=node,
            heartbeat_interval=self.backend.heartbeat_interval,
            max_message_bytes=self.backend.max_message_bytes,
        )

    def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.ServicerContext
    ) -> pb.HeartbeatReply:
        node = self._caller(context)
        with self._slot(node, context):
            parsed(context, node, request)
            return pb.HeartbeatReply(known=self.backend.heartbeat(node))

    def PullTask(self, request: pb.PullRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        node = self._caller(context)
        with self._slot(node, context):
            yield from self._pull(node, request, context)

    def _pull(
        self, node: str, request: pb.PullRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        request = parsed(context, node, request)
        wait = min(max(float(request.wait_seconds), 0.0), 60.0)
        slow_link = self.links.slow_download(node)
        task = self.backend.next_task(node, wait, slow_link=slow_link)
        if task is None:
            return
        message_id, parts = task
        del task
        self.reply_chunks.tell(node, context.send_initial_metadata)
        size = ChunkSize(send_chunk_size(slow_link))
        chunks = iter_chunks(parts, message_id, chunk_size=size)
        del parts
        with self.stalls.watching(context, f"sending task {message_id} to {node}") as transfer:
            crawls = False  # found on a slow link while it goes: then in smaller chunks
            try:
                for chunk in chunks:
                    if not self.backend.task_wanted(message_id):
                        context.abort(grpc.StatusCode.CANCELLED, "the task was withdrawn")
                    # encoded here (a copy of 4 MiB): gRPC then holds no view of the model,
                    # which can go the moment the last node has been sent its last chunk
                    encoded = encode_chunk(chunk)
                    del chunk
                    with stage("send.grpc", len(encoded)):
                        yield encoded  # back once gRPC took it: the node is reading
                    transfer.moved(len(encoded))
                    del encoded
                    moved, seconds = transfer.moved_bytes, transfer.moving_seconds()
                    if not crawls and self.links.crawling(moved, seconds):
                        crawls = True
                        if not slow_link:
                            rate = moved / seconds / 1e6
                            log.info("task %s to %s crawls at %.1f MB/s", message_id, node, rate)
                        size.nbytes = send_chunk_size(slow_link=True)
                        self.backend.task_crawls(message_id)
                self.links.downloaded(node, transfer.moved_bytes, transfer.moving_seconds())
                # a node's first download may show its link slow: its reply comes in smaller
                # chunks already (a node's upload is judged by its download until measured)
                self.reply_chunks.tell(node, context.set_trailing_metadata, if_changed=True)
            finally:
                chunks.close()
                del chunks
                flush(force=True)
                self.backend.task_sent(message_id)
                if transfer.cut:
                    why = self.stalls.reason(
                        transfer, "the node stopped reading its task", "the node read its task"
                    )
                    self.backend.transfer_stalled(node, message_id, why)

    def PushResult(
        self, request_iterator: Iterator[Chunk], context: grpc.ServicerContext
    ) -> pb.PushReply:
        node = self._caller(context)
        with self._slot(node, context):
            chunk_size = self.reply_chunks.told(node)
            # before the stall watch: waiting for a turn is not stalling
            if not self.receiving.acquire(node, context.is_active, chunk=chunk_size):
                context.abort(grpc.StatusCode.CANCELLED, "the call ended while its reply waited")
            try:
                return self._push(node, request_iterator, context, chunk_size)
            finally:
                self.receiving.release(node)

    def _push(
        self,
        node: str,
        request_iterator: Iterator[Chunk],
        context: grpc.ServicerContext,
        chunk_size: int,
    ) -> pb.PushReply:
        late: list[str] = []
        answers: list[str] = []  # the task the reply answers, once its header is in
        runs: list[str] = []  # and the run it belongs to

        def admit(head: memoryview, size: int) -> bool:
            """Judge the reply from its header, before the rest of it is received."""
            meta = peek_reply(head, self.backend.record_limits)
            if meta is None:
                return False
            answers.append(meta.reply_to or "")
            runs.append(meta.run_id)
            why = self.backend.admit_reply(node, meta, size)
            if why is not None:
                late.append(why)
                raise _Stop
            return True

        def allocate(head: memoryview, size: int) -> memoryview | None:
            """Into the run's app process's shared memory (after admit: the run is known)."""
            return self.backend.reply_buffer(runs[-1], size) if runs else None

        with self.stalls.watching(context, f"receiving a reply from {node}") as transfer:
            # waiting for the transfer budget is the server's wait, not the node's
            rebuild = Reassembler(
                self.backend.max_message_bytes, self.budget, admit, allocate, transfer.paused,
                self.spill, spill_at_once=self.links.slow_upload(node),
                on_spill=self.receiving.recount,
            )  # fmt: skip
            accepted = False
            try:
                try:
                    reply = self._receive(
                        node, rebuild, request_iterator, context, transfer, chunk_size
                    )
                except BaseException:  # gRPC ended the call, or a stream cut short
                    if transfer.cut:  # before its header: every task of the node
                        why = self.stalls.reason(
                            transfer, "its reply stopped arriving", "its reply arrived"
                        )
                        self.backend.transfer_stalled(node, answers[0] if answers else "", why)
                    raise
                if reply is None:
                    detail = late[0]
                else:
                    self.links.uploaded(node, transfer.moved_bytes, transfer.moving_seconds())
                    # the budget stays taken until the round loop has folded the reply, so
                    # replies waiting to be folded count too: with many nodes replying at
                    # once the server holds what the budget allows, not one per node
                    with transfer.paused():
                        accepted, detail = self._deliver(node, reply, rebuild, context)
            finally:
                if not accepted:
                    rebuild.close()
        if not accepted:
            log.warning("reply from %s not accepted: %s", node, detail)
        flush(force=True)
        return pb.PushReply(message_id=rebuild.message_id, accepted=accepted, detail=detail)

    def _deliver(
        self, node: str, reply: Message, rebuild: Reassembler, context: grpc.ServicerContext
    ) -> tuple[bool, str]:
        try:
            with stage("deliver"):
                return self.backend.deliver(node, reply, rebuild.consumed)
        except Refused as exc:  # counted by the backend
            self._refuse(context, node, grpc.StatusCode[exc.status], exc, None)
            raise

    def _refuse(
        self,
        context: grpc.ServicerContext,
        node: str,
        code: grpc.StatusCode,
        error: Exception,
        reason: str | None,
    ) -> None:
        """End the call with ``code`` and ``error``'s message; log it, and count it under
        ``reason`` (None: the backend counted it already)."""
        log.warning("refused a reply from %s: %s", node, error)
        if reason is not None:
            self.backend.count_refusal(node, reason)
        context.abort(code, str(error))

    def _receive(
        self,
        node: str,
        rebuild: Reassembler,
        request_iterator: Iterator[Chunk],
        context: grpc.ServicerContext,
        transfer: Transfer,
        chunk_size: int,
    ) -> Message | None:
        """The reply, or None if it was found unwanted (late) before it all arrived;
        sent in chunks of at most ``chunk_size`` bytes (what the node was told)."""
        try:
            for received in timed(request_iterator, "recv.grpc"):
                chunk = parsed(context, node, received)
                transfer.moved(len(chunk.data))
                if len(chunk.data) > chunk_size:
                    raise ChunkTooLarge(
                        f"a chunk of {len(chunk.data)} bytes, over the {chunk_size} "
                        "this node was told to send its reply in"
                    )
                rebuild.feed(chunk)
            payload = rebuild.result()
        except _Stop:
            return None
        except grpc.RpcError:
            # gRPC ended the call under us and has already told the node why
            log.warning("reply from %s broke off: %s", node, _ENDED_BY_GRPC)
            raise
        except Refused as exc:  # judged by the backend from the header, which counted it
            self._refuse(context, node, grpc.StatusCode[exc.status], exc, None)
            raise
        except PayloadTooLarge as exc:
            self._refuse(context, node, grpc.StatusCode.RESOURCE_EXHAUSTED, exc, "too-large")
            raise
        except ChunkTooLarge as exc:
            self._refuse(context, node, grpc.StatusCode.RESOURCE_EXHAUSTED, exc, "chunk-size")
            raise
        except SpillError as exc:  # the server's disk, not the node: logged, not counted
            log.error("reply from %s lost: %s", node, exc)
            context.abort(grpc.StatusCode.INTERNAL, f"the server could not keep the reply: {exc}")
            raise
        except UnacceptableRecord as exc:  # over the record limits, seen in the header
            self._refuse(context, node, grpc.StatusCode.INVALID_ARGUMENT, exc, "records")
            raise
        except NotAReply as exc:
            self._refuse(context, node, grpc.StatusCode.INVALID_ARGUMENT, exc, "malformed")
            raise
        except WireFormatError as exc:
            if not context.is_active():  # the stream "ended" because gRPC ended the call
                log.warning("reply from %s broke off: %s", node, _ENDED_BY_GRPC)
                # abort, not raise: raising here would make gRPC log a traceback
                context.abort(grpc.StatusCode.CANCELLED, _ENDED_BY_GRPC)
            self._refuse(context, node, grpc.StatusCode.DATA_LOSS, exc, "bad-stream")
            raise
        try:
            with stage("decode", len(payload)):
                return decode_reply(payload, self.backend.max_message_bytes)
        except WireFormatError as exc:
            self._refuse(context, node, grpc.StatusCode.INVALID_ARGUMENT, exc, "malformed")
            raise

    def GetRun(self, request: pb.RunRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        """Streams the run's ``RunInfo`` as chunks (grpc_payloads.py): bundles above 4 MiB."""
        node = self._caller(context)
        with self._slot(node, context):
            request = parsed(context, node, request)
            bundle = self.backend.run_bundle(node, request.run_id)
            if bundle is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no run {request.run_id!r} for {node!r}")
            assert bundle is not None
            what = f"sending run {bundle.run_id}'s app to {node}"
            # nobody waits behind an app's download: only the stall timeout applies
            with self.stalls.watching(context, what, held_to_rate=False) as transfer:
                for chunk in run_info_chunks(bundle):
                    encoded = encode_chunk(chunk)
                    yield encoded
                    transfer.moved(len(encoded))
