"""A node played by a hostile test on the project's own transport (``FleetClient``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import grpc

from consortium._version import __version__
from consortium.core.message import Message
from consortium.transport.chunks import Chunk, encode_chunk
from consortium.transport.grpc_client import FleetClient, open_channel
from consortium.transport.proto import fleet_pb2 as pb
from deploy.conftest import Deployment

PUSH = "/consortium.v1.Fleet/PushResult"


class PlayedNode:
    """Node ``name`` of the test federation, played by the test: once started it says
    hello, then beats its heart and answers each task it pulls with :meth:`answer`, each
    on a thread of its own, until closed. What either thread raises stops both and is
    kept in :attr:`error`, for the test to report."""

    def __init__(
        self, deployment: Deployment, name: str, instance: str, *, timeout: float = 30
    ) -> None:
        self.name = name
        self.instance = instance
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.tls = deployment.fed.tls(name)
        self.address = f"127.0.0.1:{deployment.port}"
        self.client = FleetClient(self.address, tls=self.tls, timeout=timeout)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self.client.hello(__version__, self.instance)
        self._threads = [
            threading.Thread(target=self._guarded, args=(loop,), daemon=True)
            for loop in (self._serve, self._beat)
        ]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(30)
        self.client.close()

    def answer(self, task: Message) -> None:
        """Answer one task (pushing its reply, or not)."""
        raise NotImplementedError

    def pull(self) -> Message | None:
        """Pull the next task (None: none came); an honest node reads it at once."""
        payload = self.client.pull_task(0.5)
        return Message.from_bytes(bytes(payload)) if payload is not None else None

    def push_stream(
        self, chunks: Iterator[Chunk], *, timeout: float = 60, then: threading.Event | None = None
    ) -> grpc.RpcError | pb.PushReply:
        """Push ``chunks`` as one reply, on a channel of its own: what the server answered
        (its refusal, as the RpcError). ``then`` is set once it answered, before the
        channel closes: a stream that waits for it ends there."""
        channel = open_channel(self.address, self.tls)
        push = channel.stream_unary(
            PUSH, request_serializer=encode_chunk, response_deserializer=pb.PushReply.FromString
        )
        try:
            answer: pb.PushReply = push(chunks, timeout=timeout)
            return answer
        except grpc.RpcError as exc:
            return exc
        finally:
            if then is not None:
                then.set()
            channel.close()

    def _guarded(self, loop: Callable[[], None]) -> None:
        try:
            loop()
        except BaseException as exc:  # reported by the test
            self.error = exc
            self.stop.set()

    def _beat(self) -> None:
        while not self.stop.wait(0.2):
            self.client.heartbeat()

    def _serve(self) -> None:
        while not self.stop.is_set():
            task = self.pull()
            if task is not None:
                self.answer(task)
