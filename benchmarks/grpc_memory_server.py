"""The server side of ``grpc_memory.py``: bare gRPC, synchronous or asyncio, measuring itself.

Both servers serve the same methods with the same limits (see
``grpc_memory.py``); what differs is only how a call waits: a pool thread each
(``grpc.server``) or a coroutine on one event loop (``grpc.aio.server``). The
phases and the figures (:class:`Probe`, :func:`control`) are shared, so the
two differ in nothing else.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from consortium.core.buffers import tune_malloc
from consortium.server.heap import Glibc, HeapTrimmer
from consortium.transport.chunks import CHUNK_SIZE
from consortium.transport.grpc_options import GRPC_OPTIONS

SERVICE = "memory.Memory"
SAMPLE_S = 0.2
MB = 2**20
#: what ends a node's last poll: the run is over
END = b"end"
PHASES = ("connecting", "idle", "rounds", "after", "disconnected")


@dataclass(frozen=True, slots=True)
class Plan:
    nodes: int
    rounds: int
    down: int  # bytes each node pulls per round (the model)
    up: int  # bytes each node pushes per round
    sends: int
    uploads: int
    window: int
    poll_s: float
    settle_s: float
    train_s: float  # each node waits a random 0..train_s s between its pull and its push
    #: a node asks for an upload slot (Grant) before it opens its push: no push waits
    grant: bool
    #: no TLS (to tell TLS's share); every node still has a connection of its own
    plaintext: bool
    malloc: str  # "production" (tune_malloc + HeapTrimmer) or "default"
    #: more gRPC server options (name, integer value), after Consortium's
    extra: tuple[tuple[str, int], ...] = ()

    @classmethod
    def from_json(cls, text: str) -> Plan:
        fields = json.loads(text)
        return cls(**{**fields, "extra": tuple((k, v) for k, v in fields["extra"])})


def chunks_of(total: int) -> list[bytes]:
    """``total`` random bytes in messages of ``CHUNK_SIZE``; one empty message for 0."""
    data = os.urandom(total)
    return [data[i : i + CHUNK_SIZE] for i in range(0, total, CHUNK_SIZE)] or [b""]


def parse_tag(tag: bytes) -> tuple[str, int]:
    name, rnd = tag.decode().split(":")
    return name, int(rnd)


def read_file(path: Path) -> bytes:
    return path.read_bytes()


# -- the server's view of itself ---------------------------------------------------------------
class Probe:
    """Samples this process every ``SAMPLE_S`` s, each sample tagged with the phase."""

    def __init__(self, trim: bool) -> None:
        libc = Glibc.load()
        if libc is None:
            raise SystemExit("this benchmark reads glibc's mallinfo2 (Linux, glibc >= 2.33)")
        self._libc = libc
        self._trimmer = HeapTrimmer.for_this_process() if trim else None
        self.phase = PHASES[0]
        self.samples: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def enter(self, phase: str) -> None:
        """Close the phase with a sample and open ``phase`` with one (a phase may be short)."""
        self.sample()
        self.phase = phase
        self.sample()

    def sample(self) -> None:
        with self._lock:
            self._sample()

    def _sample(self) -> None:
        status = dict(
            line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
        )
        self.samples.append({
            "phase": self.phase,
            "rss": int(status["VmRSS"].split()[0]) * 1024,
            "in_use": self._libc.in_use_bytes() + self._libc.mapped_bytes(),
            "free": self._libc.free_bytes(),
            "threads": int(status["Threads"]),
        })  # fmt: skip
        if self._trimmer is not None:
            self._trimmer.maybe_trim()

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.sample()

    def summary(self) -> dict[str, dict[str, float]]:
        """Per phase: the peak, mean and last sample of each figure (MB; threads as counted)."""
        self._stop.set()
        self._thread.join()
        self.sample()
        out: dict[str, dict[str, float]] = {}
        for phase in PHASES:
            rows = [s for s in self.samples if s["phase"] == phase]
            if not rows:
                continue
            figures: dict[str, float] = {"samples": len(rows)}
            for key in ("rss", "in_use", "free", "threads"):
                scale = 1 if key == "threads" else MB
                figures[f"{key}_max"] = round(max(r[key] for r in rows) / scale, 1)
                figures[f"{key}_last"] = round(rows[-1][key] / scale, 1)
                figures[f"{key}_mean"] = round(statistics.fmean(r[key] for r in rows) / scale, 1)
            out[phase] = figures
        return out


class Tally:
    """What the server has seen, from handler threads or the event loop alike."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._lock = threading.Lock()
        self.polling: set[str] = set()
        self.peers: set[str] = set()
        self.pulls = [0] * plan.rounds
        self.pushes = [0] * plan.rounds
        self.connected = threading.Event()
        self.round_done = [threading.Event() for _ in range(plan.rounds)]

    def polled(self, name: str, rnd: int, peer: str) -> None:
        with self._lock:
            if rnd == 0:
                self.polling.add(name)
                self.peers.add(peer)
                if len(self.polling) == self.plan.nodes:
                    self.connected.set()

    def pulled(self, rnd: int) -> None:
        with self._lock:
            self.pulls[rnd] += 1

    def pushed(self, rnd: int, size: int) -> None:
        with self._lock:
            if size == self.plan.up:
                self.pushes[rnd] += 1
            if self.pushes[rnd] == self.plan.nodes:
                self.round_done[rnd].set()


def control(plan: Plan, tally: Tally, probe: Probe, open_round: Callable[[int], None]) -> Any:
    """Run the phases; ``open_round(plan.rounds)`` ends every node's last poll."""
    tally.connected.wait()
    probe.enter("idle")
    time.sleep(plan.settle_s)
    seconds = []
    probe.enter("rounds")
    for rnd in range(plan.rounds):
        start = time.monotonic()
        open_round(rnd)
        tally.round_done[rnd].wait()
        seconds.append(time.monotonic() - start)
    probe.enter("after")
    time.sleep(plan.settle_s)
    open_round(plan.rounds)
    sys.stdin.readline()  # the parent: every client process has exited
    probe.enter("disconnected")
    time.sleep(plan.settle_s)
    return {
        "round_seconds": [round(s, 3) for s in seconds],
        "connections": len(tally.peers),
        "pulls": tally.pulls,
        "pushes": tally.pushes,
        "phases": probe.summary(),
    }


def _server_options(plan: Plan) -> list[tuple[str, int | str]]:
    """Consortium's options as ``start_server`` sets them, then ``plan.extra``."""
    return [
        *(o for o in GRPC_OPTIONS if o[0] != "grpc.http2.lookahead_bytes"),
        ("grpc.http2.lookahead_bytes", plan.window),
        ("grpc.so_reuseport", 0),
        *plan.extra,
    ]


def _credentials(pki: Path) -> grpc.ServerCredentials:
    creds = pki / "credentials" / "localhost"
    return grpc.ssl_server_credentials(
        [(read_file(creds / "localhost.key"), read_file(creds / "localhost.crt"))],
        root_certificates=read_file(creds / "ca.crt"),
        require_client_auth=True,
    )


def _listen(server: grpc.Server | grpc.aio.Server, plan: Plan, pki: Path) -> int:
    if plan.plaintext:
        return int(server.add_insecure_port("127.0.0.1:0"))
    return int(server.add_secure_port("127.0.0.1:0", _credentials(pki)))


def _handlers(pull: Any, grant: Any, push: Any) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Pull": grpc.unary_stream_rpc_method_handler(pull),
            "Grant": grpc.unary_unary_rpc_method_handler(grant),
            "Push": grpc.stream_unary_rpc_method_handler(push),
        },
    )


def serve_sync(plan: Plan, pki: Path, port_file: Path, tally: Tally, probe: Probe) -> Any:
    chunks = chunks_of(plan.down)
    opened = [threading.Event() for _ in range(plan.rounds + 1)]
    sends, uploads = threading.Semaphore(plan.sends), threading.Semaphore(plan.uploads)

    def pull(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        name, rnd = parse_tag(request)
        tally.polled(name, rnd, context.peer())
        if not opened[rnd].wait(plan.poll_s):
            return
        if rnd == plan.rounds:
            yield END
            return
        with sends:
            yield from chunks
        tally.pulled(rnd)

    def grant(request: bytes, context: grpc.ServicerContext) -> bytes:
        uploads.acquire()  # released by the push that follows
        return b"go"

    def push(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        if not plan.grant:
            uploads.acquire()
        try:
            _, rnd = parse_tag(next(requests))
            size = sum(len(r) for r in requests)
        finally:
            uploads.release()
        tally.pushed(rnd, size)
        return b"ok"

    pool = futures.ThreadPoolExecutor(max_workers=plan.nodes + 16)
    server = grpc.server(pool, options=_server_options(plan))
    server.add_generic_rpc_handlers((_handlers(pull, grant, push),))
    port = _listen(server, plan, pki)
    server.start()
    port_file.write_text(str(port))
    try:
        return control(plan, tally, probe, lambda rnd: opened[rnd].set())
    finally:
        server.stop(None)


async def serve_aio(plan: Plan, pki: Path, port_file: Path, tally: Tally, probe: Probe) -> Any:
    chunks = chunks_of(plan.down)
    loop = asyncio.get_running_loop()
    opened = [asyncio.Event() for _ in range(plan.rounds + 1)]
    sends, uploads = asyncio.Semaphore(plan.sends), asyncio.Semaphore(plan.uploads)

    async def pull(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        name, rnd = parse_tag(request)
        tally.polled(name, rnd, context.peer())
        try:
            await asyncio.wait_for(opened[rnd].wait(), plan.poll_s)
        except TimeoutError:
            return
        if rnd == plan.rounds:
            yield END
            return
        async with sends:
            for chunk in chunks:
                yield chunk
        tally.pulled(rnd)

    async def grant(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await uploads.acquire()  # released by the push that follows
        return b"go"

    async def push(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        if not plan.grant:
            await uploads.acquire()
        try:
            it = aiter(requests)
            _, rnd = parse_tag(await anext(it))
            size = 0
            async for raw in it:
                size += len(raw)
        finally:
            uploads.release()
        tally.pushed(rnd, size)
        return b"ok"

    server = grpc.aio.server(options=_server_options(plan))
    server.add_generic_rpc_handlers((_handlers(pull, grant, push),))
    port = _listen(server, plan, pki)
    await server.start()
    port_file.write_text(str(port))

    def open_round(rnd: int) -> None:
        loop.call_soon_threadsafe(opened[rnd].set)

    try:
        return await asyncio.to_thread(control, plan, tally, probe, open_round)
    finally:
        await server.stop(None)


def serve(impl: str, plan: Plan, pki: Path, port_file: Path, result: Path) -> None:
    if plan.malloc == "production":
        tune_malloc()
    probe = Probe(trim=plan.malloc == "production")
    tally = Tally(plan)
    if impl == "sync":
        figures = serve_sync(plan, pki, port_file, tally, probe)
    else:
        figures = asyncio.run(serve_aio(plan, pki, port_file, tally, probe))
    result.write_text(json.dumps(figures))
