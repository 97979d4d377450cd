"""A model over 2 GB goes through one deployment round (mutual TLS, real gRPC).

Slow and memory-hungry (about 12-15 GB at peak): not in CI. Run it alone::

    .venv/bin/pytest -m slow tests/transport/test_large_model.py -s

600 M float32 parameters (2.4 GB) in one array, plus a small second array
(float64) that lies past the 2**31-byte mark, travel from the server to two nodes and
back: the server, both nodes and the gRPC services run in this process as
threads (Fleet + start_server + the round workflow, NodeRunner + FleetClient), over
TLS on loopback. What is checked is the transport (chunking, reassembly,
decoding at offsets over 2 GiB), so two things keep memory within one
24 GB machine:

* the nodes take turns (one node holds a task from pull to push at a time);
* the server averages the replies in place in the first reply's float32
  buffer, instead of FedAvg's float64 running sum (4.8 GB + 4.8 GB scratch
  at this size).
"""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from consortium.apps.bundle import bundle_digest, make_bundle
from consortium.core.arrays import Arrays
from consortium.core.records import Metrics
from consortium.node.runner import NodePolicy, NodeRunner
from consortium.server import ServerApp, run_server_app
from consortium.server.app import ServerConfig
from consortium.server.fleet import Fleet
from consortium.server.fleet_grid import FleetGrid
from consortium.strategy.base import TrainReply
from consortium.strategy.fedavg import FedAvg
from consortium.transport.auth import CertificateAuthenticator
from consortium.transport.ca import CertificateAuthority
from consortium.transport.credentials import load_client_credentials, load_server_credentials
from consortium.transport.fleet_api import RunBundle
from consortium.transport.grpc_client import ClientTls, FleetClient
from consortium.transport.grpc_listen import TlsFiles, start_server
from consortium.transport.grpc_server import FleetServicer
from consortium.transport.peer_verifier import PeerVerifier

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

BIG = 600_000_000  # float32: 2.4 GB, more than 2**31 bytes in a single array
SMALL = 1000
NEEDED_BYTES = 16 * 1024**3
NODES = ("n1", "n2")
RUN_ID = "bigmodel0001"

CLIENT_CODE = '''
"""Adds 1 to every parameter, in place over the received buffer (no 2.4 GB copy)."""
import numpy as np

from consortium.client import ClientApp
from consortium.core.arrays import Arrays

client_app = ClientApp()


@client_app.train()
def train(msg, context):
    out = Arrays()
    for name, value in msg.content.model.items():
        if value.flags.writeable:
            np.add(value, np.float32(1.0), out=value)
            out[name] = value
        else:
            out[name] = value + np.float32(1.0)
    return msg.reply(arrays=out, metrics={"num_examples": 10})
'''

# The test builds the server side itself; the manifest only has to be valid.
MANIFEST = """
[app]
name = "big-model"
version = "1.0.0"
server = "bigmodel_app:client_app"
client = "bigmodel_app:client_app"
"""


class InPlaceMean(FedAvg):
    """FedAvg's uniform mean, summed in place in the first reply's float32 arrays."""

    def aggregate_train(
        self, round: int, current: Arrays, replies: Iterable[TrainReply]
    ) -> tuple[Arrays, Metrics]:
        total: Arrays | None = None
        count = 0
        for reply in replies:
            if total is None:
                total = reply.arrays  # views over this reply's receive buffer
                assert all(v.flags.writeable for v in total.values())
            else:
                for name, value in reply.arrays.items():
                    np.add(total[name], value, out=total[name])
            count += 1
        assert total is not None
        for value in total.values():
            np.divide(value, count, out=value)
        return total, {}


class TakeTurns(FleetClient):
    """A FleetClient that holds ``turn`` from receiving a task until its result is sent."""

    def __init__(self, *args: Any, turn: threading.Lock, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.turn = turn
        self.holding = False

    def pull_task(self, wait: float) -> Any:
        self.turn.acquire()
        self.holding = True
        payload = None
        try:
            payload = super().pull_task(wait)
        finally:
            if payload is None:
                self._release()
        return payload

    def push_result(self, parts: Any, message_id: str) -> tuple[bool, str]:
        try:
            return super().push_result(parts, message_id)
        finally:
            self._release()

    def _release(self) -> None:
        if self.holding:
            self.holding = False
            self.turn.release()


def _available_bytes() -> int:
    """MemAvailable from /proc/meminfo (0 where there is none: the test is then skipped)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _app(root: Path) -> Path:
    app = root / "app"
    app.mkdir()
    (app / "consortium.toml").write_text(MANIFEST)
    (app / "bigmodel_app.py").write_text(CLIENT_CODE)
    return app


def _client_tls(creds: Path, name: str) -> ClientTls:
    c = load_client_credentials(creds / name, name, role="node")
    return ClientTls(key=c.private_key, certificate=c.certificate_chain, ca=c.root_certificates)


def test_a_model_over_2gb_completes_a_round(tmp_path: Path) -> None:
    available = _available_bytes()
    if available < NEEDED_BYTES:
        pytest.skip(f"needs {NEEDED_BYTES / 2**30:.0f} GiB free, {available / 2**30:.1f} here")

    ca = CertificateAuthority.init(tmp_path / "ca")
    creds = tmp_path / "credentials"
    ca.issue("server", "localhost", creds / "localhost", ips=["127.0.0.1"])
    for name in NODES:
        ca.issue("node", name, creds / name)
    server_creds = load_server_credentials(creds / "localhost", "localhost")
    verifier = PeerVerifier.from_ca_directory(tmp_path / "ca")

    app_dir = _app(tmp_path)
    bundle = make_bundle(app_dir)
    run = RunBundle(
        run_id=RUN_ID,
        app_name="big-model",
        app_version="1.0.0",
        client_entry="bigmodel_app:client_app",
        bundle=bundle,
        bundle_sha256=bundle_digest(bundle),
        run_config_json="{}",
        seed=0,
    )
    # liveness is not under test: a GIL-heavy moment must not mark a node offline
    fleet = Fleet(offline_after=600.0, bundles=lambda node, run_id: run)
    auth = CertificateAuthenticator(
        lambda pem: verifier.verify(pem, roles=("node",)).name, allowed=lambda n: n in NODES
    )
    tls = TlsFiles(
        server_creds.private_key, server_creds.certificate_chain, server_creds.root_certificates
    )
    server, port = start_server("127.0.0.1:0", fleet=FleetServicer(fleet, auth), tls=tls)

    turn = threading.Lock()
    runners, threads = [], []
    for name in NODES:
        client = TakeTurns(f"127.0.0.1:{port}", tls=_client_tls(creds, name), turn=turn)
        runner = NodeRunner(
            client,
            node_config={},
            work_dir=tmp_path / name,
            policy=NodePolicy(local_apps={"big-model": app_dir}),
            poll_wait=1.0,
        )
        runners.append(runner)
        threads.append(threading.Thread(target=runner.run, name=f"node-{name}", daemon=True))
    try:
        for t in threads:
            t.start()
        big = np.full(BIG, 0.5, dtype=np.float32)
        model = Arrays({"big": big, "small": np.arange(SMALL, dtype=np.float64)})
        assert model.encoded_size() > 2**31 + SMALL * 8
        strategy = InPlaceMean(
            initial_arrays=model,
            fraction_evaluate=0.0,
            min_train_nodes=len(NODES),
            min_available_nodes=len(NODES),
        )
        del model, big
        config = ServerConfig(strategy, num_rounds=1, evaluate_every=0, node_wait=120.0)
        started = time.perf_counter()
        result = run_server_app(ServerApp(lambda _: config), FleetGrid(fleet), run_id=RUN_ID)
        seconds = time.perf_counter() - started
    finally:
        for runner in runners:
            runner.stop.set()
        for t in threads:
            t.join(timeout=30)
        server.stop(grace=1).wait()
        fleet.close()

    record = result.history.rounds[0]
    assert [n.outcome.value for n in record.nodes] == ["ok", "ok"], record.nodes
    big, small = result.arrays["big"], result.arrays["small"]
    assert big.shape == (BIG,) and big.dtype == np.float32
    assert np.all(big == 1.5)  # every node added 1 to 0.5, everywhere in the 2.4 GB
    np.testing.assert_array_equal(small, np.arange(SMALL) + 1.0)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(
        f"\n2.4 GB model, 2 nodes, 1 round over TLS: {seconds:.1f} s "
        f"(round record {record.seconds:.1f} s); peak RSS of the process {peak_gb:.2f} GB"
    )
