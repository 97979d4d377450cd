"""Roles on the coordinator's API over real gRPC and mutual TLS: who may do what, bans, audit.

Certificates: alice (admin, from conftest), bob (researcher of St Mary) and carol
(observer). Most tests run real ``consortium server`` and ``consortium node``
processes; the audit test serves the Control API in this process, wired as
``consortium server`` wires it, so that a recording sink can see every event.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from consortium.apps.bundle import make_bundle
from consortium.core import audit
from consortium.core.audit import AuditEvent
from consortium.core.errors import NodeRefused, SecurityError, TransportError
from consortium.server import load_model
from consortium.simulation import run_simulation
from consortium.transport.ca import CertificateAuthority
from consortium.transport.grpc_client import ControlClient

from .conftest import EXE, SLOW_APP, Deployment, Federation, import_app, wait_for
from .inprocess import InProcess, serve_in_process

#: one node, two short rounds: enough to finish a run and have a model
ONE_NODE = {"num-rounds": 2, "min-nodes": 1, "min-replies": 1}


@pytest.fixture(scope="module")
def coordinators(federation: Federation) -> Federation:
    """bob, a researcher of St Mary, and carol, an observer, beside the admin alice."""
    ca = CertificateAuthority.load(federation.ca_dir)
    ca.issue("researcher", "bob", federation.creds("bob"), organisation="St Mary", force=True)
    ca.issue("observer", "carol", federation.creds("carol"), force=True)
    return federation


def _client(fed: Federation, port: int, name: str) -> ControlClient:
    return ControlClient(f"127.0.0.1:{port}", tls=fed.tls(name))


def _cli(dep: Deployment, *args: str, who: str) -> subprocess.CompletedProcess[str]:
    """``consortium ARGS --server ... --credentials WHO's folder``."""
    address = ["--server", f"127.0.0.1:{dep.port}", "--credentials", str(dep.fed.creds(who))]
    return subprocess.run(
        [EXE, *args, *address], capture_output=True, text=True, timeout=60, check=False
    )


def _connected(dep: Deployment, node: str) -> None:
    wait_for(lambda: "connected to" in dep.log(node), 30, f"{node} to connect")


# --------------------------------------------------------------------------- bans


def test_a_researcher_cannot_ban_a_node_an_admin_can_and_the_node_is_refused(
    deployment: Deployment, coordinators: Federation
) -> None:
    port = deployment.start_server()
    deployment.start_node("va")
    _connected(deployment, "va")
    bob = _client(coordinators, port, "bob")
    with pytest.raises(NodeRefused) as denied:
        bob.ban_node("va", "I do not like it")
    assert "PERMISSION_DENIED" in str(denied.value)
    assert "researcher 'bob' of 'St Mary' may not ban-node" in str(denied.value)
    time.sleep(1.0)  # several heartbeats: the node is still welcome
    assert deployment.procs["va"].poll() is None

    alice = coordinators.admin(port)
    assert alice.ban_node("va", "sent poisoned updates") is True
    wait_for(lambda: deployment.procs["va"].poll() is not None, 30, "the banned node to stop")
    assert "banned from this server: sent poisoned updates" in deployment.log("va")
    assert alice.ban_node("va", "again") is False
    saved = json.loads((deployment.workdir / "server" / "banned-nodes.json").read_text())
    assert saved["banned"]["va"]["by"] == "admin 'alice'"

    # the ban outlives the server; lifting it lets the node back in
    deployment.kill("server")
    deployment.procs.pop("va")
    port = deployment.start_server()
    deployment.start_node("va")
    wait_for(lambda: deployment.procs["va"].poll() is not None, 30, "the node to be refused")
    alice = coordinators.admin(port)
    assert alice.unban_node("va") is True
    deployment.procs.pop("va")
    deployment.start_node("va")
    wait_for(lambda: deployment.log("va").count("connected to") >= 2, 30, "va to rejoin")
    assert deployment.procs["va"].poll() is None
    bob.close()
    alice.close()


# --------------------------------------------------------------------------- runs


def test_an_observer_cannot_start_a_run_but_can_list_runs(
    deployment: Deployment, coordinators: Federation
) -> None:
    port = deployment.start_server("--admin", "zed")  # alice may not act as an admin here
    alice = coordinators.admin(port)
    with pytest.raises(NodeRefused, match=r"admin 'alice' may not read-runs: .* --admin list"):
        alice.list_runs()
    alice.close()
    carol = _client(coordinators, port, "carol")
    with pytest.raises(NodeRefused, match="observer 'carol' may not start-run"):
        carol.start_run(make_bundle(SLOW_APP), ONE_NODE, 1)
    assert carol.list_runs() == []  # ... and nothing was started
    with pytest.raises(NodeRefused, match="observer 'carol' may not ban-node"):
        carol.ban_node("va", "curious")
    carol.close()
    # the coordinator's CLI takes any coordinator certificate; the server decides
    listed = _cli(deployment, "run", "list", who="carol")
    assert listed.returncode == 0, listed.stderr
    started = _cli(deployment, "run", "start", str(SLOW_APP), who="carol")
    assert started.returncode == SecurityError.exit_code
    assert "observer 'carol' may not start-run" in started.stderr


def test_a_researcher_starts_a_run_and_downloads_the_model_it_finished_with(
    deployment: Deployment, coordinators: Federation, tmp_path: Path
) -> None:
    port = deployment.start_server()
    deployment.start_node("va")
    bob = _client(coordinators, port, "bob")
    run_id = bob.start_run(make_bundle(SLOW_APP), ONE_NODE, 5)
    info = deployment.wait_run(run_id)
    assert info["status"] == "finished", info
    out = tmp_path / "model.npz"
    done = _cli(deployment, "run", "download", run_id, "-o", str(out), who="bob")
    assert done.returncode == 0, done.stderr
    slow_toy = import_app(SLOW_APP, "slow_toy")
    config = {**ONE_NODE, "delay": 0.0, "round-timeout": 60.0}
    expected = run_simulation(
        slow_toy.server_app, slow_toy.client_app, node_ids=["va"], run_config=config, seed=5
    ).arrays
    assert load_model(out).equals(expected)
    carol = _client(coordinators, port, "carol")
    with pytest.raises(NodeRefused, match="observer 'carol' may not download-model"):
        carol.download_model(run_id)
    with pytest.raises(TransportError, match="NOT_FOUND"):
        bob.download_model("no-such-run")
    bob.close()
    carol.close()


# --------------------------------------------------------------------------- the policy file


def test_a_policy_file_replaces_the_defaults_and_a_malformed_one_names_the_field(
    deployment: Deployment, coordinators: Federation, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[roles]\nobserver = ["read-runs", "reboot"]\n')
    server = deployment.workdir / "server"
    refused = subprocess.run(
        [EXE, "server", "--insecure", "--allow", "va", "--workdir", str(server), "--authz",
         str(bad), "--address", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert "roles.observer[1]: unknown action 'reboot'" in refused.stderr

    policy = tmp_path / "authz.toml"
    policy.write_text(
        '[roles]\nadmin = ["read-runs"]\nobserver = []\n\n'
        '[[grant]]\nrole = "observer"\nname = "carol"\nactions = ["ban-node"]\n'
    )
    port = deployment.start_server("--authz", str(policy))
    carol = _client(coordinators, port, "carol")
    with pytest.raises(NodeRefused, match=r"may not read-runs.*authz\.toml"):
        carol.list_runs()
    assert carol.ban_node("va", "granted to carol by name") is True
    alice = coordinators.admin(port)
    assert alice.list_runs() == []
    with pytest.raises(NodeRefused, match="admin 'alice' may not ban-node"):
        alice.unban_node("va")
    carol.close()
    alice.close()


# --------------------------------------------------------------------------- audit


@pytest.fixture
def in_process(coordinators: Federation, tmp_path: Path) -> Iterator[InProcess]:
    with serve_in_process(coordinators, tmp_path) as served:
        yield served


def test_every_control_call_reaches_the_audit_sink_allowed_or_denied(
    in_process: InProcess, coordinators: Federation
) -> None:
    fed = coordinators
    carol, bob, alice = (in_process.client(n) for n in ("carol", "bob", "alice"))
    assert carol.list_runs() == []
    with pytest.raises(NodeRefused):
        carol.start_run(make_bundle(SLOW_APP), ONE_NODE, 1)
    with pytest.raises(NodeRefused):
        bob.ban_node("va", "no reason")
    assert alice.ban_node("va", "compromised host")
    bundle = make_bundle(SLOW_APP)
    run_id = bob.start_run(bundle, ONE_NODE, 3)
    assert bob.stop_run(run_id)
    with pytest.raises(TransportError, match="NOT_FOUND"):
        bob.show_run("missing")
    node = ControlClient(f"127.0.0.1:{in_process.port}", tls=fed.tls("va"))
    with pytest.raises(NodeRefused, match="the node role may do nothing here"):
        node.list_runs()

    (listed,) = in_process.find(audit.RUN_LIST, "carol")
    assert (listed.outcome, listed.role, listed.organisation) == ("ok", "observer", "")
    (refused_start,) = in_process.find(audit.RUN_START, "carol")
    assert refused_start.outcome == "denied"
    assert "observer 'carol' may not start-run" in refused_start.detail["reason"]
    (refused_ban,) = in_process.find(audit.NODE_BAN, "bob")
    assert (refused_ban.outcome, refused_ban.role, refused_ban.organisation) == (
        "denied",
        "researcher",
        "St Mary",
    )
    assert refused_ban.target == "va"
    (ban,) = in_process.find(audit.NODE_BAN, "alice")
    assert (ban.outcome, ban.role, ban.target) == ("ok", "admin", "va")
    assert ban.detail["reason"] == "compromised host"
    (start,) = in_process.find(audit.RUN_START, "bob")
    assert (start.outcome, start.run_id) == ("ok", run_id)
    assert start.detail["bundle_sha256"] == hashlib.sha256(bundle).hexdigest()
    assert (start.detail["app"], start.detail["app_version"]) == ("slow-toy", "1.0.0")
    (stop,) = in_process.find(audit.RUN_STOP, "bob")
    assert (stop.outcome, stop.run_id) == ("ok", run_id)
    (missing,) = in_process.find(audit.RUN_SHOW, "bob")
    assert (missing.outcome, missing.run_id) == ("failed", "missing")
    (by_node,) = in_process.find(audit.RUN_LIST, "va")
    assert (by_node.outcome, by_node.role) == ("denied", "node")
    assert len(in_process.events) == 8  # one event per call, no more
    for client in (carol, bob, alice, node):
        client.close()


def test_a_failing_audit_sink_does_not_fail_the_call(
    in_process: InProcess, coordinators: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: AuditEvent) -> None:
        raise OSError("disk full")

    in_process.control.audit = broken
    observer = in_process.client("carol")
    assert observer.list_runs() == []
    assert "audit: could not record run.list by observer 'carol' (ok): disk full" in caplog.text
    observer.close()


def test_a_coordinator_polling_a_run_is_audited_once_a_minute_and_every_denial_always(
    in_process: InProcess,
) -> None:
    """``run start --wait`` shows the run every second: one ``run.show`` a minute is
    enough to say who read it; a refused read is recorded every time."""
    bob, stranger = in_process.client("bob"), in_process.client("va")
    run_id = bob.start_run(make_bundle(SLOW_APP), ONE_NODE, 3)
    for _ in range(5):
        bob.show_run(run_id)
        bob.list_runs()
        with pytest.raises(NodeRefused):
            stranger.show_run(run_id)
    bob.stop_run(run_id)

    assert [e.outcome for e in in_process.find(audit.RUN_SHOW, "bob")] == ["ok"]
    assert [e.outcome for e in in_process.find(audit.RUN_LIST, "bob")] == ["ok"]
    assert [e.outcome for e in in_process.find(audit.RUN_SHOW, "va")] == ["denied"] * 5
    bob.close()
    stranger.close()
