"""Both ends of a NodeConnection for the contract tests, and a node runner to drive one.

``link`` is a fresh :class:`Fleet` reached by node ``NODE`` through either
implementation: ``memory`` (:class:`InMemoryConnection`, an outage is every
connection going down) or ``grpc`` (:class:`FleetClient` against a real gRPC
server on loopback with mutual TLS from a throwaway CA; an outage is the
server stopped, and started again on the same port). A refusal is the server
refusing the node for good: in memory as :meth:`InMemoryConnection.refuse`,
over gRPC by taking it off the server's allow-list. ``start_node`` runs a
:class:`NodeRunner` over a :class:`Spy` of such a connection, with a toy app
that trains for ``TRAIN_SECONDS``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import grpc
import pytest

from consortium.apps.bundle import bundle_digest, make_bundle
from consortium.core.errors import NodeRefused, ServerUnavailable, TransportError
from consortium.core.fleet_info import RunBundle, Welcome
from consortium.node.connection import Buffer, NodeConnection
from consortium.node.memory import InMemoryConnection
from consortium.node.runner import NodePolicy, NodeRunner
from consortium.server.fleet import Fleet
from consortium.transport.auth import CertificateAuthenticator
from consortium.transport.ca import CertificateAuthority
from consortium.transport.chunks import Allocate
from consortium.transport.credentials import load_client_credentials, load_server_credentials
from consortium.transport.grpc_client import ClientTls, FleetClient
from consortium.transport.grpc_listen import TlsFiles, start_server
from consortium.transport.grpc_server import FleetServicer
from consortium.transport.peer_verifier import PeerVerifier

T = TypeVar("T")

NODE = "hospital-a"
RUN_ID = "contract0001"
APP_NAME = "contract-toy"
#: the largest message the test server accepts
LIMIT = 64 * 1024**2
#: seconds the toy app trains: the window in which the tests cut the server off
TRAIN_SECONDS = 1.0

CLIENT_CODE = '''
"""Adds 1 to the model after training for run_config["delay"] seconds."""
import time

from consortium.client import ClientApp
from consortium.core.arrays import Arrays

client_app = ClientApp()


@client_app.train()
def train(msg, context):
    time.sleep(float(context.run_config["delay"]))
    return msg.reply(
        arrays=Arrays({"w": msg.content.model["w"] + 1}), metrics={"num_examples": 3}
    )
'''

MANIFEST = f"""
[app]
name = "{APP_NAME}"
version = "1.0.0"
server = "contract_toy:client_app"
client = "contract_toy:client_app"
"""


# -- the server side, whatever carries it ------------------------------------------------
class Link(Protocol):
    """A running Fleet and a way to connect node ``NODE`` to it, and to cut it off."""

    fleet: Fleet

    def connect(self) -> NodeConnection:
        """A new connection of node ``NODE`` (closed by :meth:`close`)."""
        ...

    def outage(self) -> None:
        """The server becomes unreachable (its Fleet keeps its state)."""
        ...

    def restore(self) -> None:
        """The server is reachable again."""
        ...

    def refuse(self, reason: str) -> None:
        """The server refuses node ``NODE`` from now on (as for a revoked certificate)."""
        ...

    def close(self) -> None: ...


@dataclass
class MemoryLink:
    """Connections straight to the Fleet; an outage is every connection going down."""

    fleet: Fleet
    conns: list[InMemoryConnection] = field(default_factory=list)
    is_down: bool = False
    refusal: str | None = None

    def connect(self) -> NodeConnection:
        conn = InMemoryConnection(self.fleet, NODE)
        if self.is_down:
            conn.down()
        if self.refusal is not None:
            conn.refuse(self.refusal)
        self.conns.append(conn)
        return conn

    def refuse(self, reason: str) -> None:
        self.refusal = reason
        for conn in self.conns:
            conn.refuse(reason)

    def outage(self) -> None:
        self.is_down = True
        for conn in self.conns:
            conn.down()

    def restore(self) -> None:
        self.is_down = False
        for conn in self.conns:
            conn.up()

    def close(self) -> None:
        for conn in self.conns:
            conn.close()


@dataclass(frozen=True)
class Pki:
    """A throwaway CA's server and node credentials, and the check the server makes."""

    server: TlsFiles
    node: ClientTls
    verifier: PeerVerifier


@dataclass
class GrpcLink:
    """A gRPC server with mutual TLS on loopback; an outage stops it, then it restarts
    on the same port (as a restarted server process would)."""

    fleet: Fleet
    pki: Pki
    port: int = 0
    server: grpc.Server | None = None
    conns: list[FleetClient] = field(default_factory=list)
    #: whether NODE is on the server's allow-list (consulted on every call)
    allowed: bool = True

    def __post_init__(self) -> None:
        self.restore()

    def connect(self) -> NodeConnection:
        conn = FleetClient(f"127.0.0.1:{self.port}", tls=self.pki.node, timeout=10)
        self.conns.append(conn)
        return conn

    def outage(self) -> None:
        assert self.server is not None
        self.server.stop(grace=None).wait()
        self.server = None

    def restore(self) -> None:
        verifier = self.pki.verifier
        auth = CertificateAuthenticator(
            lambda pem: verifier.verify(pem, roles=("node",)).name,
            allowed=lambda n: n == NODE and self.allowed,
        )
        self.server, port = start_server(
            f"127.0.0.1:{self.port}",
            fleet=FleetServicer(self.fleet, auth),
            tls=self.pki.server,
            workers=8,
        )
        assert self.port in (0, port)
        self.port = port

    def refuse(self, reason: str) -> None:
        self.allowed = False  # the server says why: not on its allow-list

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        if self.server is not None:
            self.server.stop(grace=None).wait()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.init(root / "ca")
    creds = root / "credentials"
    ca.issue("server", "localhost", creds / "localhost", ips=["127.0.0.1"])
    ca.issue("node", NODE, creds / NODE)
    server = load_server_credentials(creds / "localhost", "localhost")
    node = load_client_credentials(creds / NODE, NODE, role="node")
    return Pki(
        server=TlsFiles(server.private_key, server.certificate_chain, server.root_certificates),
        node=ClientTls(node.private_key, node.certificate_chain, node.root_certificates),
        verifier=PeerVerifier.from_ca_directory(root / "ca"),
    )


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    app = tmp_path_factory.mktemp("contract-app")
    (app / "consortium.toml").write_text(MANIFEST)
    (app / "contract_toy.py").write_text(CLIENT_CODE)
    return app


@pytest.fixture(scope="module")
def run_bundle(app_dir: Path) -> RunBundle:
    bundle = make_bundle(app_dir)
    return RunBundle(
        run_id=RUN_ID,
        app_name=APP_NAME,
        app_version="1.0.0",
        client_entry="contract_toy:client_app",
        bundle=bundle,
        bundle_sha256=bundle_digest(bundle),
        run_config_json=f'{{"delay": {TRAIN_SECONDS}}}',
        seed=7,
    )


@pytest.fixture(params=["memory", "grpc"])
def link(request: pytest.FixtureRequest, pki: Pki, run_bundle: RunBundle) -> Iterator[Link]:
    # liveness is not under test: an outage must not take the node offline
    fleet = Fleet(
        heartbeat_interval=0.2,
        offline_after=60.0,
        max_message_bytes=LIMIT,
        bundles=lambda node, run_id: run_bundle if run_id == RUN_ID else None,
    )
    made: Link = MemoryLink(fleet) if request.param == "memory" else GrpcLink(fleet, pki)
    try:
        yield made
    finally:
        made.close()
        fleet.close()


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def once_up(call: Callable[[], T], timeout: float = 30.0) -> T:
    """``call()``, retried while the server is still unavailable (a channel reconnecting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except ServerUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Spy:
    """A NodeConnection passing every call on, recording how each ended."""

    def __init__(self, inner: NodeConnection) -> None:
        self.inner = inner
        self.address = inner.address
        #: (method, outcome): outcome is "ok", "not accepted", "unavailable", "refused"
        #: (this call) or "refused for good" (this node)
        self.events: list[tuple[str, str]] = []

    @property
    def max_message_bytes(self) -> int:
        return self.inner.max_message_bytes

    @max_message_bytes.setter
    def max_message_bytes(self, value: int) -> None:
        self.inner.max_message_bytes = value

    def saw(self, method: str, outcome: str) -> bool:
        return (method, outcome) in self.events

    def _record(self, method: str, call: Callable[[], T]) -> T:
        try:
            result = call()
        except ServerUnavailable:
            self.events.append((method, "unavailable"))
            raise
        except NodeRefused:
            self.events.append((method, "refused for good"))
            raise
        except TransportError:
            self.events.append((method, "refused"))
            raise
        self.events.append((method, "ok"))
        return result

    def hello(self, version: str, instance_id: str) -> Welcome:
        return self._record("hello", lambda: self.inner.hello(version, instance_id))

    def heartbeat(self) -> bool:
        return self._record("heartbeat", self.inner.heartbeat)

    def pull_task(self, wait: float, allocate: Allocate | None = None) -> Buffer | None:
        return self._record("pull_task", lambda: self.inner.pull_task(wait, allocate))

    def push_result(self, parts: Sequence[Buffer], message_id: str) -> tuple[bool, str]:
        accepted, detail = self._record(
            "push_result", lambda: self.inner.push_result(parts, message_id)
        )
        if not accepted:
            self.events[-1] = ("push_result", "not accepted")
        return accepted, detail

    def get_run(self, run_id: str) -> RunBundle:
        return self._record("get_run", lambda: self.inner.get_run(run_id))

    def close(self) -> None:
        self.inner.close()


@dataclass
class RunningNode:
    """A NodeRunner serving on a thread over a spied connection."""

    runner: NodeRunner
    spy: Spy
    thread: threading.Thread = field(init=False)
    #: what ``runner.run`` raised (a refusal), if it did
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name="node", daemon=True)

    def _run(self) -> None:
        try:
            self.runner.run()
        except BaseException as exc:  # kept for the test to look at
            self.error = exc

    def stop(self) -> None:
        self.runner.stop.set()
        self.thread.join(15)
        assert not self.thread.is_alive(), "the node did not stop"


@pytest.fixture
def start_node(link: Link, app_dir: Path, tmp_path: Path) -> Iterator[Callable[[], RunningNode]]:
    started: list[RunningNode] = []

    def start() -> RunningNode:
        spy = Spy(link.connect())
        runner = NodeRunner(
            spy,
            node_config={},
            work_dir=tmp_path / "node",
            policy=NodePolicy(local_apps={APP_NAME: app_dir}),
            poll_wait=0.3,
        )
        node = RunningNode(runner, spy)
        started.append(node)
        node.thread.start()
        wait_for(lambda: NODE in link.fleet.node_ids(), "the node to connect")
        return node

    yield start
    for node in started:
        node.stop()
