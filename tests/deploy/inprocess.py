"""A TLS server in the test's own process, wired as ``consortium server`` wires it.

For tests that must reach inside the server: a recording audit sink, a smaller
bundle limit. Clients are real gRPC clients with the federation's certificates.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from consortium.apps.bundle import DEFAULT_LIMITS
from consortium.core.audit import AuditEvent
from consortium.server.bans import NodeBans
from consortium.server.fleet import Fleet
from consortium.server.runs import RunManager
from consortium.server.store import StateStore, default_url
from consortium.transport.auth import CertificateAuthenticator, IdentityAuthenticator
from consortium.transport.authz import Caller
from consortium.transport.credentials import load_server_credentials
from consortium.transport.grpc_client import ControlClient, FleetClient
from consortium.transport.grpc_control import ControlServicer
from consortium.transport.grpc_listen import TlsFiles, start_server
from consortium.transport.grpc_server import FleetServicer
from consortium.transport.names import CLIENT_ROLES
from consortium.transport.peer_verifier import PeerVerifier

from .conftest import NODES, Federation


@dataclass
class InProcess:
    """The served objects, and every audit event the Control API reported."""

    fed: Federation
    port: int
    events: list[AuditEvent]
    runs: RunManager
    server: grpc.Server
    fleet: Fleet
    control: ControlServicer

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, name: str) -> ControlClient:
        return ControlClient(self.address, tls=self.fed.tls(name))

    def node(self, name: str, max_bundle_bytes: int | None = None) -> FleetClient:
        return FleetClient(
            self.address, tls=self.fed.tls(name), max_bundle_bytes=max_bundle_bytes, timeout=30
        )

    def find(self, action: str, actor: str) -> list[AuditEvent]:
        return [e for e in self.events if e.action == action and e.actor == actor]


@contextmanager
def serve_in_process(
    fed: Federation, workdir: Path, *, max_bundle_bytes: int = DEFAULT_LIMITS.max_bundle_bytes
) -> Iterator[InProcess]:
    events: list[AuditEvent] = []
    verifier = PeerVerifier.from_ca_directory(fed.ca_dir)
    creds = load_server_credentials(fed.creds("localhost"), "localhost")
    fleet = Fleet(heartbeat_interval=1.0, offline_after=60.0, max_message_bytes=2**30)
    runs = RunManager(fleet, workdir, store=StateStore(default_url(workdir)))
    fleet.set_bundles(runs.run_bundle)
    bans = NodeBans.in_state_dir(workdir)

    def caller(pem: bytes) -> Caller:
        peer = verifier.verify(pem, roles=CLIENT_ROLES)
        return Caller(peer.name, peer.role, peer.organisation)

    node_auth = CertificateAuthenticator(
        lambda pem: verifier.verify(pem, roles=("node",)).name,
        allowed=lambda n: n in NODES,
        denied=bans.reason,
    )
    control = ControlServicer(
        runs,
        IdentityAuthenticator(caller),
        audit=events.append,
        bans=bans,
        max_bundle_bytes=max_bundle_bytes,
    )
    tls = TlsFiles(creds.private_key, creds.certificate_chain, creds.root_certificates)
    server, port = start_server(
        "127.0.0.1:0", fleet=FleetServicer(fleet, node_auth), control=control, tls=tls, workers=8
    )
    try:
        yield InProcess(fed, port, events, runs, server, fleet, control)
    finally:
        runs.interrupt(2)
        server.stop(grace=None).wait()
        fleet.close()
