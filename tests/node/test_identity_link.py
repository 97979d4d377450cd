"""A node signs SecAgg+ keys for its confined app process, which never holds the key.

A real :class:`NodeRunner` runs a probe app in its sandboxed process; the app
asks through ``node_identity()`` (the channel to the node) to sign and verify,
and reports what it got. The node signs its own advertisement for the app's
run (the envelope verifies against the CA), refuses another run's, another
node's and arbitrary bytes, verifies a peer's envelope, and a node without a
certificate refuses to sign at all.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from consortium.apps.bundle import bundle_digest, make_bundle
from consortium.core.fleet_info import RunBundle
from consortium.core.message import Content, Message
from consortium.node.identity_link import IdentityService
from consortium.node.isolated import AppIsolation
from consortium.node.memory import InMemoryConnection
from consortium.node.runner import NodePolicy, NodeRunner
from consortium.privacy.secagg import protocol as p
from consortium.privacy.secagg.certified import CertificateSigner, CertificateVerifier
from consortium.sandbox.confine import landlock_available
from consortium.server.fleet import Fleet
from consortium.transport.ca import CertificateAuthority
from consortium.transport.peer_verifier import PeerVerifier

pytestmark = pytest.mark.skipif(
    not landlock_available(), reason="needs Linux Landlock (the node refuses to run apps)"
)

NODE, PEER, RUN = "hospital-a", "hospital-b", "signing0001"

CODE = """
from consortium.client import ClientApp
from consortium.privacy.secagg import node_identity

client_app = ClientApp()
identity = node_identity()


@client_app.query()
def query(msg, context):
    out = {}
    for name, (node, hexed) in msg.content.config.items():
        try:
            if name.startswith("verify"):
                message, envelope = (bytes.fromhex(x) for x in hexed.split(":"))
                out[name] = "valid" if identity.verify(node, message, envelope) else "invalid"
            else:
                out[name] = "signed:" + identity.sign(node, bytes.fromhex(hexed)).hex()
        except Exception as exc:
            out[name] = f"{type(exc).__name__}: {exc}"
    return msg.reply(config=out)
"""


def advert(node: str, run: str = RUN) -> bytes:
    return p.advertisement(
        run_id=run, epoch=1, node_id=node, enc_key=bytes(32), mask_key=bytes(32),
        participants=[NODE, PEER], graph_seed=1, params={},
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("federation")
    ca = CertificateAuthority.init(root / "ca")
    for name in (NODE, PEER):
        ca.issue("node", name, root / name)
    return root


@pytest.fixture
def ask(tmp_path: Path, pki: Path) -> Iterator[Callable[..., dict[str, str]]]:
    """``ask(with_identity, **requests)``: a node (with or without its certificate's
    identity service) runs the probe once; the app's answers by request name."""
    stops: list[tuple[NodeRunner, threading.Thread, Fleet]] = []

    def run(with_identity: bool, **requests: list[str]) -> dict[str, str]:
        folder = tmp_path / "app"
        folder.mkdir(exist_ok=True)
        (folder / "consortium.toml").write_text(
            '[app]\nname = "signer"\nversion = "1.0.0"\nserver = "probe:client_app"\n'
            'client = "probe:client_app"\n'
        )
        (folder / "probe.py").write_text(CODE)
        bundle = make_bundle(folder)
        runs = {RUN: RunBundle(run_id=RUN, app_name="signer", app_version="1.0.0",
                               client_entry="probe:client_app", bundle=bundle,
                               bundle_sha256=bundle_digest(bundle), run_config_json="{}",
                               seed=1)}  # fmt: skip
        fleet = Fleet(heartbeat_interval=0.2, offline_after=60.0,
                      bundles=lambda node, run_id: runs.get(run_id))  # fmt: skip
        creds = pki / NODE
        identity = IdentityService.from_credentials(
            (creds / f"{NODE}.key").read_bytes(), (creds / f"{NODE}.crt").read_bytes(),
            (creds / "ca.crt").read_bytes(), NODE, creds,
        )  # fmt: skip
        runner = NodeRunner(
            InMemoryConnection(fleet, NODE), node_config={}, work_dir=tmp_path / "node",
            policy=NodePolicy(trust_server_apps=True), poll_wait=0.2,
            isolation=AppIsolation(secrets=(creds,)),
            identity=identity if with_identity else None,
        )  # fmt: skip
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        stops.append((runner, thread, fleet))
        task = Message.create(run_id=RUN, dst=NODE, round=1, kind="query",
                              content=Content.of(config=requests))  # type: ignore[arg-type]  # fmt: skip
        (reply,) = list(fleet.send_and_receive([task], timeout=120))
        assert reply.error is None and reply.content is not None, reply.error
        return {k: str(v) for k, v in reply.content.config.items()}

    yield run
    for runner, thread, fleet in stops:
        runner.stop.set()
        thread.join(20)
        fleet.close()


def test_the_node_signs_for_its_app_process_only_its_own_advertisements(
    ask: Callable[..., dict[str, str]], pki: Path
) -> None:
    peer = pki / PEER
    peer_envelope = CertificateSigner(
        (peer / f"{PEER}.key").read_bytes(), (peer / f"{PEER}.crt").read_bytes(), PEER
    ).sign(PEER, advert(PEER))
    got = ask(
        True,
        own=[NODE, advert(NODE).hex()],
        other_run=[NODE, advert(NODE, run="another0001").hex()],
        other_node=[PEER, advert(PEER).hex()],
        anything=[NODE, json.dumps({"sign": "me"}).encode().hex()],
        verify_peer=[PEER, f"{advert(PEER).hex()}:{peer_envelope.hex()}"],
        verify_swapped=[NODE, f"{advert(NODE).hex()}:{peer_envelope.hex()}"],
    )
    assert got["own"].startswith("signed:"), got
    envelope = bytes.fromhex(got["own"].removeprefix("signed:"))
    check = CertificateVerifier(PeerVerifier(pki / NODE / "ca.crt"))
    check.check(NODE, advert(NODE), envelope)  # the node certificate's key signed it
    assert "asked to sign for another run" in got["other_run"], got
    assert "cannot sign for 'hospital-b'" in got["other_node"], got
    assert "advertisements only" in got["anything"], got
    assert got["verify_peer"] == "valid" and got["verify_swapped"] == "invalid", got


def test_a_node_without_a_certificate_refuses_to_sign(
    ask: Callable[..., dict[str, str]],
) -> None:
    got = ask(False, own=[NODE, advert(NODE).hex()])
    assert got["own"] == (
        "SecurityError: the node refused to sign: this node has no certificate to sign with"
    ), got
