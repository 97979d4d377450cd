"""Compression on a slow hospital link: time to accuracy and bytes, per codec.

    python benchmarks/wan.py                       # 4 nodes, 20 Mbit/s + 50 ms, 1.1M params
    python benchmarks/wan.py --quick --json wan.json   # < 1 min: a small model, few rounds

A deployed federation in one process: the server's Fleet service over gRPC
with mutual TLS on loopback (certificates from ``CertificateAuthority``), and
N ``NodeRunner``\\ s (each running the app in its own confined app process,
as ``consortium node`` does) dialling it with ``FleetClient``. Each node's
link is throttled in this process by ``wan_link.ThrottledLink``, a
benchmark-only wrapper around the node's connection (production code paths
are untouched): a token bucket per direction per node (``--rate-mbit``, 64 kB
burst) and ``--latency-ms`` added to every task and every reply, one way.
The server's side is not throttled (a data-centre link).

The app (``benchmarks/wan_app``): an MLP 64-H-H-10 (H = 1024: 1.13 M float32
parameters, 4.5 MB) on scikit-learn's bundled digits, each node training one
epoch on its IID share of the training split; FedAvg; the server evaluates
the global model on the held-out quarter after every round. Codecs (see
``docs/compression.md``), uplink / downlink:

* ``none``: float32 / float32;
* ``fp16``: float16 update / float16 model;
* ``int8``: 8-bit stochastic rounding, chunks of 1024 (update / model);
* ``topk``: top-1 % of the update with error feedback / int8 model.

``none`` runs ``--rounds`` rounds; its final accuracy (the mean of its last 5
rounds) less ``--tolerance`` (0.5 points) is the target. Every codec then
runs until it reaches the target (at most ``--max-rounds``); time to accuracy
is the wall time from the start of round 1 to the end of the first round at
or above the target, round 1 counted as a median round (it also starts every
node's app process, the same one-time cost for every codec). Reported:
rounds and seconds to the target, the best accuracy, bytes each node sent and
received a round (what crossed the throttled link), a round's time on the
link (the throttle's waits, as the bucket computed them, latency included)
and in a node's training, and the time to the target on the link alone
(rounds x link seconds): what compression acts on, whatever the nodes'
compute costs on the machine that runs the benchmark.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# one BLAS thread per process: the nodes' app processes share this machine's cores
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from consortium.apps.bundle import bundle_digest, make_bundle
from consortium.core.arrays import Arrays
from consortium.core.errors import StopTraining
from consortium.core.fleet_info import RunBundle
from consortium.core.records import Config, Metrics
from consortium.ml import mlp
from consortium.node.policy import NodePolicy
from consortium.node.runner import NodeRunner
from consortium.server import ServerApp, run_server_app
from consortium.server.app import ServerConfig
from consortium.server.fleet import Fleet
from consortium.server.fleet_grid import FleetGrid
from consortium.strategy.base import Instruction
from consortium.strategy.fedavg import FedAvg
from consortium.transport.auth import CertificateAuthenticator
from consortium.transport.ca import CertificateAuthority
from consortium.transport.credentials import load_client_credentials, load_server_credentials
from consortium.transport.grpc_client import ClientTls, FleetClient
from consortium.transport.grpc_listen import TlsFiles, start_server
from consortium.transport.grpc_server import FleetServicer
from consortium.transport.peer_verifier import PeerVerifier

APP_DIR = Path(__file__).resolve().parent / "wan_app"
sys.path.insert(0, str(APP_DIR))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import wan_app  # noqa: E402
from wan_link import ThrottledLink  # noqa: E402

#: Rounds at the end of the float32 run whose mean accuracy, less ``--tolerance``, is the
#: target.
PLATEAU = 5
#: Rows of the table: (name, uplink run config, downlink codec).
CODECS: dict[str, Config] = {
    "none": {"compression": "none", "compression-downlink": "none"},
    "fp16": {"compression": "float16", "compression-downlink": "float16"},
    "int8": {"compression": "int8", "compression-downlink": "int8"},
    "topk": {"compression": "topk", "compression-downlink": "int8", "compression-topk": 0.01},
}


class UntilTarget(FedAvg):
    """FedAvg that evaluates centrally and stops the run once accuracy reaches ``target``;
    it stamps the wall clock at each round's evaluation."""

    def __init__(self, hidden: int, seed: int, target: float | None, **kwargs: Any) -> None:
        _, self.x_test, _, self.y_test = wan_app.split(seed)
        self.target = target
        self.curve: list[tuple[int, float, float]] = []  # (round, accuracy, wall time)
        super().__init__(
            init_fn=lambda rng: wan_app.init(hidden, rng),
            fraction_evaluate=0.0,
            central_evaluate=self._central,
            **kwargs,
        )

    def _central(self, rnd: int, arrays: Arrays) -> Metrics:
        accuracy = float(mlp.evaluate(arrays, self.x_test, self.y_test)["accuracy"])
        self.curve.append((rnd, accuracy, time.perf_counter()))
        return {"accuracy": accuracy}

    def configure_train(
        self, round: int, arrays: Arrays, nodes: list[str], rng: np.random.Generator
    ) -> list[Instruction]:
        reached = self.target is not None and self.curve and self.curve[-1][1] >= self.target
        if reached and round > 1:
            raise StopTraining(f"accuracy {self.curve[-1][1]:.4f} reached {self.target:.4f}")
        return super().configure_train(round, arrays, nodes, rng)


@dataclass
class Row:
    codec: str
    uplink: str
    downlink: str
    rounds: int
    rounds_to_target: int | None
    seconds_to_target: float | None
    best_accuracy: float
    seconds_per_round: float  # median of rounds 2..n
    first_round_seconds: float  # round 1, app processes starting included
    link_seconds_per_round: float  # per node, both directions, latency included
    train_seconds_per_round: float  # a node's handler (median over nodes and rounds 2..n)
    bytes_up_per_round: float  # per node
    bytes_down_per_round: float  # per node
    curve: list[tuple[int, float, float]] = field(default_factory=list)


@dataclass
class Federation:
    root: Path
    port: int
    fleet: Fleet
    server: Any
    creds: Path


def _tls(creds: Path, name: str) -> ClientTls:
    c = load_client_credentials(creds / name, name, role="node")
    return ClientTls(key=c.private_key, certificate=c.certificate_chain, ca=c.root_certificates)


def run_codec(
    name: str, args: argparse.Namespace, root: Path, target: float | None, max_rounds: int
) -> Row:
    nodes = [f"hospital-{i}" for i in range(args.nodes)]
    ca = CertificateAuthority.init(root / "ca")
    creds = root / "credentials"
    ca.issue("server", "localhost", creds / "localhost", ips=["127.0.0.1"])
    for node in nodes:
        ca.issue("node", node, creds / node)
    server_creds = load_server_credentials(creds / "localhost", "localhost")
    verifier = PeerVerifier.from_ca_directory(root / "ca")
    config: Config = {
        "hidden": args.hidden,
        "local-epochs": 1,
        "batch-size": 32,
        "lr": args.lr,
        "data-seed": 0,
        "compression-chunk": 1024,
        "compression-topk": 0.01,
        **CODECS[name],
    }
    bundle = make_bundle(APP_DIR)
    run_id = f"wan{name}"
    run = RunBundle(
        run_id=run_id,
        app_name="wan-digits",
        app_version="1.0.0",
        client_entry="wan_app:client_app",
        bundle=bundle,
        bundle_sha256=bundle_digest(bundle),
        run_config_json=json.dumps(config),
        seed=args.seed,
    )
    fleet = Fleet(offline_after=120.0, bundles=lambda node, rid: run)
    auth = CertificateAuthenticator(
        lambda pem: verifier.verify(pem, roles=("node",)).name, allowed=lambda n: n in nodes
    )
    tls = TlsFiles(
        server_creds.private_key, server_creds.certificate_chain, server_creds.root_certificates
    )
    server, port = start_server("127.0.0.1:0", fleet=FleetServicer(fleet, auth), tls=tls)
    links, runners, threads = [], [], []
    for i, node in enumerate(nodes):
        client = FleetClient(f"127.0.0.1:{port}", tls=_tls(creds, node))
        link = ThrottledLink(client, args.rate_mbit * 1e6 / 8, args.latency_ms / 1000)
        runner = NodeRunner(
            link,  # type: ignore[arg-type]
            node_config={"partition-id": i, "num-partitions": len(nodes)},
            work_dir=root / node,
            policy=NodePolicy(local_apps={"wan-digits": APP_DIR}),
            poll_wait=1.0,
        )
        links.append(link)
        runners.append(runner)
        threads.append(threading.Thread(target=runner.run, name=node, daemon=True))
    strategy = UntilTarget(
        args.hidden,
        0,
        target,
        min_train_nodes=len(nodes),
        min_available_nodes=len(nodes),
    )
    server_config = ServerConfig(
        strategy, num_rounds=max_rounds, evaluate_every=0, node_wait=120.0, round_timeout=600.0
    )
    try:
        for t in threads:
            t.start()
        result = run_server_app(
            ServerApp(lambda _: server_config),
            FleetGrid(fleet),
            run_config=config,
            run_id=run_id,
            seed=args.seed,
        )
    finally:
        for runner in runners:
            runner.stop.set()
        for t in threads:
            t.join(timeout=30)
        server.stop(grace=1).wait()
        fleet.close()
    records = result.history.rounds
    for record in records:
        bad = [n for n in record.nodes if n.outcome.value != "ok"]
        if bad:
            raise RuntimeError(f"{name}: round {record.round}: {bad}")
    curve = [(r, a, t) for r, a, t in strategy.curve if r >= 1]
    # each round's wall time, end of evaluation to end of evaluation; round 1 (the round
    # loop's record) also starts every node's app process, a one-time cost the same for
    # every codec, so on the clock it counts as a median round of the run
    seconds = [records[0].seconds] + [b[2] - a[2] for a, b in itertools.pairwise(curve)]
    steady = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    clock = list(itertools.accumulate([steady, *seconds[1:]]))
    reached = [i for i, (_, a, _) in enumerate(curve) if target is not None and a >= target]
    n = len(records)
    per_node = len(nodes) * n
    train = [node.timing.get("train", 0.0) for record in records[1:] for node in record.nodes]
    return Row(
        codec=name,
        uplink=str(CODECS[name]["compression"]),
        downlink=str(CODECS[name]["compression-downlink"]),
        rounds=n,
        rounds_to_target=curve[reached[0]][0] if reached else None,
        seconds_to_target=clock[reached[0]] if reached else None,
        best_accuracy=max(a for _, a, _ in curve),
        seconds_per_round=steady,
        first_round_seconds=seconds[0],
        link_seconds_per_round=sum(lk.stats.seconds for lk in links) / per_node,
        train_seconds_per_round=statistics.median(train) if train else 0.0,
        bytes_up_per_round=sum(lk.stats.bytes_up for lk in links) / per_node,
        bytes_down_per_round=sum(lk.stats.bytes_down for lk in links) / per_node,
        curve=[(r, round(a, 4), round(c, 3)) for (r, a, _), c in zip(curve, clock, strict=True)],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="small model, few rounds (< 1 min)")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=1024, help="MLP width (1024: 1.13M params)")
    parser.add_argument("--rate-mbit", type=float, default=20.0, help="each node's link, Mbit/s")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="added one-way latency")
    parser.add_argument("--rounds", type=int, default=20, help="rounds of the float32 baseline")
    parser.add_argument("--max-rounds", type=int, default=40, help="most rounds of a codec")
    parser.add_argument("--tolerance", type=float, default=0.005, help="target: best - this")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--codecs", default=",".join(CODECS), help="comma-separated rows")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden, args.nodes, args.rounds, args.max_rounds = 128, 2, 4, 8
    codecs = args.codecs.split(",")
    if codecs[0] != "none" or any(c not in CODECS for c in codecs):
        parser.error(f"--codecs must start with none and name rows of {list(CODECS)}")
    params = sum(v.size for v in wan_app.init(args.hidden, np.random.default_rng(0)).values())
    print(
        f"# WAN: {args.nodes} nodes, {args.rate_mbit:g} Mbit/s + {args.latency_ms:g} ms per "
        f"node, MLP 64-{args.hidden}-{args.hidden}-10 ({params:,} float32 params, "
        f"{params * 4 / 1e6:.2f} MB)\n",
        flush=True,
    )
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="wan-") as tmp:
        target = None
        for name in codecs:
            rounds = args.rounds if name == "none" else args.max_rounds
            row = run_codec(name, args, Path(tmp) / name, target, rounds)
            if name == "none":  # the target, and the baseline's own time to it
                target = plateau(row) - args.tolerance
                row = _baseline(row, target)
            rows.append(row)
            print(f"{name}: {row.rounds} rounds, best {row.best_accuracy:.4f}", flush=True)
    _table(rows)
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        args.json.write_text(
            json.dumps({"settings": {**settings, "params": params},
                        "rows": [asdict(r) for r in rows]}, indent=2, default=str)
        )  # fmt: skip
    return 0


def plateau(row: Row) -> float:
    """The float32 run's accuracy at the end: the mean of its last :data:`PLATEAU` rounds
    (one test set of 450 digits moves 0.22 points a digit: its best round is a lucky one)."""
    return statistics.fmean(a for _, a, _ in row.curve[-PLATEAU:])


def _baseline(row: Row, target: float) -> Row:
    """The float32 run's own time to the target, read off its curve."""
    first = next((r, t) for r, a, t in row.curve if a >= target)
    row.rounds_to_target, row.seconds_to_target = first[0], first[1]
    return row


def _table(rows: list[Row]) -> None:
    base = rows[0].seconds_to_target
    first = rows[0]
    base_link = (first.rounds_to_target or 0) * first.link_seconds_per_round
    print(
        "\n| codec (up / down) | rounds to target | s to target | speed-up | best acc "
        "| s / round | link s / round | train s / round | up kB / round | down kB / round "
        "| link s to target | link speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")  # per node: link s, train s, kB
    for r in rows:
        secs = r.seconds_to_target
        speedup = f"{base / secs:.2f}x" if secs and base else "-"
        print(
            f"| {r.codec} ({r.uplink} / {r.downlink}) | {r.rounds_to_target or '-'} "
            f"| {f'{secs:.1f}' if secs else 'not reached'} | {speedup} "
            f"| {r.best_accuracy:.4f} | {r.seconds_per_round:.2f} "
            f"| {r.link_seconds_per_round:.2f} | {r.train_seconds_per_round:.2f} "
            f"| {r.bytes_up_per_round / 1e3:.1f} "
            f"| {r.bytes_down_per_round / 1e3:.1f} | {_link(r, base_link)} |"
        )


def _link(row: Row, base: float) -> str:
    """Time to the target on the link alone (rounds x a node's link seconds a round): what
    compression acts on, whatever the nodes' compute costs on this machine."""
    if row.rounds_to_target is None:
        return "- | -"
    seconds = row.rounds_to_target * row.link_seconds_per_round
    return f"{seconds:.1f} | {base / seconds:.2f}x"


if __name__ == "__main__":
    sys.exit(main())
