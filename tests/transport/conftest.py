"""A throwaway federation over real gRPC and mutual TLS on loopback.

``pki`` is one CA with server, node and admin certificates (plus a node not on
the allow-list, an expired node and one the tests revoke), and a second CA
whose certificates must be refused. ``federation`` is a running server wired
exactly like ``consortium server`` wires it: a :class:`Fleet`, a
:class:`RunManager`, a :class:`PeerVerifier` that reloads ``crl.pem``, and an
allow-list. EC keys and module scope keep the file fast.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import pytest

from consortium._version import __version__
from consortium.core.arrays import Arrays
from consortium.core.message import Content, Message
from consortium.server.fleet import Fleet
from consortium.server.runs import RunManager
from consortium.server.store import StateStore, default_url
from consortium.transport.auth import CertificateAuthenticator
from consortium.transport.ca import CertificateAuthority
from consortium.transport.ca_index import IssuedCertificate
from consortium.transport.credentials import load_server_credentials
from consortium.transport.grpc_client import ClientTls, ControlClient, FleetClient, open_channel
from consortium.transport.grpc_control import ControlServicer
from consortium.transport.grpc_listen import TlsFiles, start_server
from consortium.transport.grpc_server import FleetServicer
from consortium.transport.link_rates import DEFAULT_SLOW_LINK_MBIT
from consortium.transport.names import Role
from consortium.transport.peer_verifier import PeerVerifier
from honest import answer, check_answer

NOW = datetime.now(UTC)
DAY = timedelta(days=1)
#: The largest message this test server accepts (small, so "too large" is cheap to send).
MAX_MESSAGE_BYTES = 256 * 1024
#: Nodes the server lets in; "stranger" holds a valid certificate but is not listed.
ALLOWED = frozenset({"hospital-a", "hospital-b", "hospital-r", "old", "brief"})
ADMINS = ("alice",)
SERVER_NAME = "localhost"


@dataclass(frozen=True)
class Pki:
    """Certificates of one federation, and of an impostor CA with the same CA name."""

    ca: CertificateAuthority
    server: IssuedCertificate
    good: IssuedCertificate  # hospital-a: the node that must keep working throughout
    peer: IssuedCertificate  # hospital-b: a second honest node (the spoofing tests)
    stranger: IssuedCertificate  # valid certificate, not on the allow-list
    expired: IssuedCertificate  # on the allow-list, but expired yesterday
    doomed: IssuedCertificate  # hospital-r: revoked while the server runs
    admin: IssuedCertificate
    other_ca: CertificateAuthority
    impostor: IssuedCertificate  # "hospital-a" issued by the other CA

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_path.read_bytes()

    def tls(self, issued: IssuedCertificate, *, ca_pem: bytes | None = None) -> ClientTls:
        """Client TLS material for ``issued`` (trusting our CA unless told otherwise)."""
        return ClientTls(
            key=issued.key_path.read_bytes(),
            certificate=issued.cert_path.read_bytes(),
            ca=ca_pem if ca_pem is not None else self.ca_pem,
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.init(root / "ca")
    other = CertificateAuthority.init(root / "other-ca")  # same default CA name, other key
    out = root / "credentials"
    return Pki(
        ca=ca,
        server=ca.issue("server", SERVER_NAME, out / "server", ips=["127.0.0.1"]),
        good=ca.issue("node", "hospital-a", out / "hospital-a"),
        peer=ca.issue("node", "hospital-b", out / "hospital-b"),
        stranger=ca.issue("node", "stranger", out / "stranger"),
        expired=ca.issue(
            "node", "old", out / "old", not_before=NOW - 30 * DAY, not_after=NOW - DAY
        ),
        doomed=ca.issue("node", "hospital-r", out / "hospital-r"),
        admin=ca.issue("admin", "alice", out / "alice"),
        other_ca=other,
        impostor=other.issue("node", "hospital-a", root / "impostor"),
    )


def make_task(node: str, value: float = 1.0) -> Message:
    """A small train task for ``node``: an 8-float model and a config."""
    model = Arrays({"w": np.arange(8, dtype=np.float32) * value})
    return Message.create(
        run_id="refusals",
        dst=node,
        round=1,
        kind="train",
        content=Content.of(arrays=model, config={"lr": 0.1}),
    )


class Round:
    """One task sent through the Fleet's Grid API (``send_and_receive``) on a thread."""

    def __init__(self, fleet: Fleet, task: Message, timeout: float = 20.0) -> None:
        self.task = task
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._replies = self._pool.submit(
            lambda: list(fleet.send_and_receive([task], timeout=timeout))
        )

    def replies(self) -> list[Message]:
        try:
            return self._replies.result(timeout=30)
        finally:
            self._pool.shutdown(wait=False)


@dataclass
class Federation:
    """A running TLS server and the objects behind it."""

    pki: Pki
    fleet: Fleet
    runs: RunManager
    server: grpc.Server
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def node(self, issued: IssuedCertificate) -> FleetClient:
        return FleetClient(self.address, tls=self.pki.tls(issued), timeout=10)

    def control(self, issued: IssuedCertificate) -> ControlClient:
        return ControlClient(self.address, tls=self.pki.tls(issued))

    # the helpers below, as methods: test modules cannot import this conftest by name
    make_task = staticmethod(make_task)
    answer = staticmethod(answer)
    check_answer = staticmethod(check_answer)

    def round(self, task: Message) -> Round:
        """Send ``task`` through the Grid API on a thread; ``.replies()`` waits for the result."""
        return Round(self.fleet, task)

    def channel(self, issued: IssuedCertificate) -> grpc.Channel:
        """A raw channel with ``issued``'s certificate, for calls a FleetClient won't make."""
        return open_channel(self.address, self.pki.tls(issued))


def build_server(
    pki: Pki,
    workdir: Path,
    *,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    slow_link_mbit: float = DEFAULT_SLOW_LINK_MBIT,
) -> Federation:
    """What ``consortium server --credentials S --ca-dir CA --allow ... --admin alice`` does
    (with ``--max-message-mb`` and ``--slow-link-mbit`` as given)."""
    fleet = Fleet(heartbeat_interval=1.0, offline_after=60.0, max_message_bytes=max_message_bytes)
    runs = RunManager(fleet, workdir, store=StateStore(default_url(workdir)))
    fleet.set_bundles(runs.run_bundle)
    node_role: tuple[Role, ...] = ("node",)
    admin_role: tuple[Role, ...] = ("admin",)
    creds = load_server_credentials(pki.server.cert_path.parent, SERVER_NAME)
    verifier = PeerVerifier.from_ca_directory(pki.ca.directory)
    node_auth = CertificateAuthenticator(
        lambda pem: verifier.verify(pem, roles=node_role).name,
        allowed=lambda n: n in ALLOWED,
    )
    admin_auth = CertificateAuthenticator(
        lambda pem: verifier.verify(pem, roles=admin_role).name,
        allowed=lambda n: n in ADMINS,
    )
    tls = TlsFiles(creds.private_key, creds.certificate_chain, creds.root_certificates)
    server, port = start_server(
        "127.0.0.1:0",
        fleet=FleetServicer(fleet, node_auth, slow_link_mbit=slow_link_mbit),
        control=ControlServicer(runs, admin_auth),
        tls=tls,
        workers=8,
    )
    return Federation(pki, fleet, runs, server, port)


@pytest.fixture(scope="module")
def federation(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with served(build_server(pki, tmp_path_factory.mktemp("server"))) as fed:
        yield fed


@contextmanager
def served(fed: Federation) -> Iterator[Federation]:
    """``fed``, stopped when the block ends."""
    try:
        yield fed
    finally:
        fed.server.stop(grace=None).wait()
        fed.fleet.close()


@pytest.fixture
def server_builder(pki: Pki, tmp_path: Path) -> Callable[..., AbstractContextManager[Federation]]:
    """A server of ``build_server``'s options (keywords), running for a ``with`` block."""
    return lambda **options: served(build_server(pki, tmp_path / "server", **options))


@dataclass
class GoodNode:
    """hospital-a: connected for the whole module; it must never notice the bad attempts."""

    fed: Federation
    client: FleetClient
    instance_id: str

    def hello(self) -> str:
        return self.client.hello(__version__, self.instance_id).node_id

    def pull(self, task: Message) -> Message:
        payload = self.client.pull_task(10)
        assert payload is not None, "the queued task never reached the good node"
        pulled = Message.from_bytes(payload)
        assert pulled.metadata.message_id == task.metadata.message_id
        return pulled

    def push(self, reply: Message) -> tuple[bool, str]:
        return self.client.push_result(reply.to_parts(), reply.metadata.message_id)

    def round_trip(self, value: float = 1.0) -> None:
        """Queue a task, pull it, push the honest reply, and see the round receive it."""
        task = make_task("hospital-a", value)
        round_ = Round(self.fed.fleet, task)
        assert self.push(answer(self.pull(task))) == (True, "ok")
        check_answer(task, round_.replies())

    @contextmanager
    def keeps_serving(self) -> Iterator[Message]:
        """Wrap a bad attempt: it must leave the federation exactly as it was.

        Before the body, a task is in flight on the good node (queued and pulled);
        after it, the good node says hello (same process, so nothing is reset) and
        heartbeats, its in-flight reply is accepted and received, and one more full
        round trip completes. Yields the in-flight task.
        """
        assert self.hello() == "hospital-a"
        task = make_task("hospital-a", 2.0)
        round_ = Round(self.fed.fleet, task)
        pulled = self.pull(task)
        yield task
        assert self.hello() == "hospital-a"
        assert self.client.heartbeat() is True
        assert "hospital-a" in self.fed.fleet.node_ids()
        assert self.push(answer(pulled)) == (True, "ok")
        check_answer(task, round_.replies())
        self.round_trip(3.0)


@pytest.fixture(scope="module")
def good_node(federation: Federation) -> Iterator[GoodNode]:
    node = GoodNode(federation, federation.node(federation.pki.good), uuid.uuid4().hex)
    assert node.hello() == "hospital-a"
    try:
        yield node
    finally:
        node.client.close()
