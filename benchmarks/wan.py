"""Compression on a slow hospital link: time to accuracy and bytes, per codec.

    python benchmarks/wan.py --seeds 7 --json s7.json   # 4 nodes, 20 Mbit/s + 50 ms, 1.1M
    python benchmarks/wan.py --summary s7.json s8.json  # over seeds, from the reports
    python benchmarks/wan.py --quick --json wan.json    # ~15 s: a small model, few rounds

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
parameters, 4.5 MB, trained in float32) on scikit-learn's bundled digits, each
node training one epoch on its IID share of the training split; FedAvg; the
server evaluates the global model on the held-out quarter after every round.
Each node's app process gets ``--blas-threads`` BLAS threads (by default this
machine's cores shared among the nodes: see :func:`blas_threads_for_apps`).
Codecs (see
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
and in a node's app process, the time to the target on the link alone
(rounds x link seconds): what compression acts on, whatever the nodes'
compute costs on the machine that runs the benchmark; and where a median
round's time went, part by part along its critical path
(:func:`wan_report.round_split`).

With several ``--seeds`` (each seed: the nodes' batches, the initial model,
the stochastic rounding), every seed gets its own float32 run and target, and
a summary compares the mean times to target, each seed's speed-up, and each
codec's accuracy once float32's time to target / 3 has passed: one test digit
of 450 is 0.22 points, so a single seed's rounds to target is partly luck.
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
from dataclasses import asdict
from pathlib import Path
from typing import Any

# one BLAS thread for the server's central evaluation; the nodes' app processes get
# --blas-threads (see blas_threads_for_apps)
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
from consortium.transport.stall import BYTES_PER_MBIT

APP_DIR = Path(__file__).resolve().parent / "wan_app"
sys.path.insert(0, str(APP_DIR))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import wan_app  # noqa: E402
from wan_link import ThrottledLink  # noqa: E402
from wan_report import (  # noqa: E402
    Row,
    baseline,
    plateau,
    print_summary,
    print_table,
    round_split,
    row_from,
)

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
        self.evals: list[tuple[float, float]] = []  # each central evaluation's (start, end)
        super().__init__(
            init_fn=lambda rng: wan_app.init(hidden, rng),
            fraction_evaluate=0.0,
            central_evaluate=self._central,
            **kwargs,
        )

    def _central(self, rnd: int, arrays: Arrays) -> Metrics:
        started = time.perf_counter()
        accuracy = float(mlp.evaluate(arrays, self.x_test, self.y_test)["accuracy"])
        done = time.perf_counter()
        if rnd >= 1:
            self.curve.append((rnd, accuracy, done))
            self.evals.append((started, done))
        return {"accuracy": accuracy}

    def configure_train(
        self, round: int, arrays: Arrays, nodes: list[str], rng: np.random.Generator
    ) -> list[Instruction]:
        reached = self.target is not None and self.curve and self.curve[-1][1] >= self.target
        if reached and round > 1:
            raise StopTraining(f"accuracy {self.curve[-1][1]:.4f} reached {self.target:.4f}")
        return super().configure_train(round, arrays, nodes, rng)


def _tls(creds: Path, name: str) -> ClientTls:
    c = load_client_credentials(creds / name, name, role="node")
    return ClientTls(key=c.private_key, certificate=c.certificate_chain, ca=c.root_certificates)


def run_codec(
    name: str,
    args: argparse.Namespace,
    seed: int,
    root: Path,
    target: float | None,
    max_rounds: int,
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
        seed=seed,
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
        link = ThrottledLink(client, args.rate_mbit * BYTES_PER_MBIT, args.latency_ms / 1000)
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
            seed=seed,
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
        threads = {n.metrics.get(wan_app.BLAS_THREADS) for n in record.nodes}
        if threads != {args.blas_threads}:
            raise RuntimeError(
                f"{name}: round {record.round}: the app processes ran with {threads} BLAS "
                f"threads, not --blas-threads {args.blas_threads}"
            )
    curve = strategy.curve
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
    metrics = [{n.node_id: n.metrics for n in record.nodes} for record in records]
    app = [
        [(float(m[node][wan_app.COMPUTE_S]), float(m[node][wan_app.APP_S])) for m in metrics]
        for node in nodes
    ]
    starts = [0.0] + [end for _, end in strategy.evals[:-1]]
    split = round_split(
        starts,
        strategy.evals,
        [lk.stats.tasks for lk in links],
        [lk.stats.replies for lk in links],
        app,
    )
    return Row(
        codec=name,
        seed=seed,
        uplink=str(CODECS[name]["compression"]),
        downlink=str(CODECS[name]["compression-downlink"]),
        rounds=n,
        target=target,
        rounds_to_target=curve[reached[0]][0] if reached else None,
        seconds_to_target=clock[reached[0]] if reached else None,
        best_accuracy=max(a for _, a, _ in curve),
        seconds_per_round=steady,
        first_round_seconds=seconds[0],
        link_seconds_per_round=sum(lk.stats.seconds for lk in links) / per_node,
        train_seconds_per_round=statistics.median(train) if train else 0.0,
        bytes_up_per_round=sum(lk.stats.bytes_up for lk in links) / per_node,
        bytes_down_per_round=sum(lk.stats.bytes_down for lk in links) / per_node,
        split=split,
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
    parser.add_argument("--tolerance", type=float, default=0.005, help="target: plateau - this")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seeds", default="7", help="comma-separated run seeds")
    parser.add_argument(
        "--blas-threads",
        type=int,
        help="BLAS threads of each node's app process (default: this machine's cores / nodes, "
        "at least 1; 0: the BLAS library's default, one per core)",
    )
    parser.add_argument("--codecs", default=",".join(CODECS), help="comma-separated rows")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--summary", type=Path, nargs="+", metavar="JSON", help="only summarise these reports"
    )
    args = parser.parse_args(argv)
    if args.summary:
        print_summary(
            [row_from(r) for p in args.summary for r in json.loads(p.read_text())["rows"]]
        )
        return 0
    if args.quick:
        args.hidden, args.nodes, args.rounds, args.max_rounds = 128, 2, 4, 8
    codecs = args.codecs.split(",")
    if codecs[0] != "none" or any(c not in CODECS for c in codecs):
        parser.error(f"--codecs must start with none and name rows of {list(CODECS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.blas_threads is None:
        args.blas_threads = max(1, (os.cpu_count() or 1) // args.nodes)
    blas_threads_for_apps(args.blas_threads)
    params = sum(v.size for v in wan_app.init(args.hidden, np.random.default_rng(0)).values())
    print(
        f"# WAN: {args.nodes} nodes, {args.rate_mbit:g} Mbit/s + {args.latency_ms:g} ms per "
        f"node, MLP 64-{args.hidden}-{args.hidden}-10 ({params:,} float32 params, "
        f"{params * 4 / 1e6:.2f} MB), {args.blas_threads} BLAS thread(s) a node\n",
        flush=True,
    )
    rows: list[Row] = []
    for seed in seeds:
        rows += run_seed(args, seed, codecs)
    if len(seeds) > 1:
        print_summary(rows)
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "summary")}
        args.json.write_text(
            json.dumps({"settings": {**settings, "params": params},
                        "rows": [asdict(r) for r in rows]}, indent=2, default=str)
        )  # fmt: skip
    return 0


#: the variables that set a BLAS library's thread count when it loads
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def blas_threads_for_apps(threads: int) -> None:
    """Give each node's app process ``threads`` BLAS threads (0: the library's default, one
    per core).

    The four nodes share this machine's cores; left at its default, each app process's
    OpenBLAS starts a thread per core and the threads of four processes spin against each
    other (measured: one epoch 1.0-1.4 s instead of 0.10-0.18 s with four processes at once
    on 2 cores). A node passes these variables on to its app process
    (``consortium.sandbox.spawn.INHERITED_ENV``), as an operator would set them.
    """
    for name in BLAS_ENV:
        if threads:
            os.environ[name] = str(threads)
        else:
            os.environ.pop(name, None)


def run_seed(args: argparse.Namespace, seed: int, codecs: list[str]) -> list[Row]:
    """Every codec's row at one seed: float32 first, whose plateau sets the target."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="wan-") as tmp:
        target = None
        for name in codecs:
            rounds = args.rounds if name == "none" else args.max_rounds
            row = run_codec(name, args, seed, Path(tmp) / name, target, rounds)
            if name == "none":  # the target, and the baseline's own time to it
                target = plateau(row) - args.tolerance
                row = baseline(row, target)
            rows.append(row)
            print(
                f"seed {seed} {name}: {row.rounds} rounds, best {row.best_accuracy:.4f}",
                flush=True,
            )
    print(f"\n## seed {seed}")
    print_table(rows)
    return rows


if __name__ == "__main__":
    sys.exit(main())
