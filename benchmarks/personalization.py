"""Personalisation on label-skewed digits: per-node accuracy of global vs personal models.

    python benchmarks/personalization.py                    # seeds 0,1,2
    python benchmarks/personalization.py --seeds 0 --json   # JSON on stdout

Workload: all of scikit-learn's digits (offline) over 20 nodes with
Dirichlet(alpha = 0.1) label skew (at least 20 samples per node; each node is
dominated by a few classes); each node keeps a random 25 % of its own
samples as its held-out test set. A 64-64-10 numpy MLP; every round every
node trains 2 local epochs of SGD (lr 0.1, batch 16); 30 rounds.

Rows (each the unweighted mean over the 20 nodes of the accuracy on the
node's own held-out data after the last round):

* **FedAvg global** — the global model (reported by the Ditto run as
  ``accuracy_global``: Ditto trains its global model exactly as FedAvg);
* **FedPer** — ``LocalLayers(["dense1.*"])``: the output layer stays on the
  node (Arivazhagan et al., 2019);
* **Ditto** — personal models with ``lam`` (default 0.1, from the paper's grid
  {0.01, 0.1, 1, 2}; Li et al., 2021), solved with the MLP trainer's
  ``prox_mu`` plus :func:`~consortium.client.personal.ditto_correction`;
* **Local only** — Ditto with ``lam = 0``: each node trains alone (context).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from consortium.client import ClientApp
from consortium.client.personal import Ditto, LocalLayers, ditto_correction
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.history import History
from consortium.core.message import Message
from consortium.datasets.partition import dirichlet
from consortium.ml import mlp
from consortium.server import ServerApp, ServerConfig
from consortium.simulation import run_simulation
from consortium.strategy import FedAvg

NUM_NODES = 20
SIZES = [64, 64, 10]
LR, BATCH, EPOCHS = 0.1, 16, 2


@functools.cache
def node_data(seed: int, alpha: float) -> list[tuple[Any, Any, Any, Any]]:
    """(x_train, y_train, x_test, y_test) of every node: its own 75/25 split."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    rng = np.random.default_rng(seed)
    parts = dirichlet(y, NUM_NODES, alpha, rng, min_partition_size=20, max_attempts=1000)
    out = []
    for idx in parts:
        shuffled = rng.permutation(idx)
        cut = len(shuffled) * 3 // 4
        tr, te = shuffled[:cut], shuffled[cut:]
        out.append((x[tr], y[tr], x[te], y[te]))
    return out


def make_app(seed: int, alpha: float) -> ClientApp:
    def mine(ctx: Context) -> tuple[Any, Any, Any, Any]:
        return node_data(seed, alpha)[int(ctx.node_config["partition-id"])]

    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        assert msg.content is not None and msg.content.model is not None
        x, y, _, _ = mine(ctx)
        result = mlp.train(
            msg.content.model,
            x,
            y,
            rng=ctx.rng(msg.metadata.round),
            lr=LR,
            batch_size=BATCH,
            epochs=EPOCHS,
        )
        return msg.reply(
            arrays=result.params, metrics={"num_examples": result.num_examples, "loss": result.loss}
        )

    @app.evaluate()
    def evaluate(msg: Message, ctx: Context) -> Message:
        assert msg.content is not None and msg.content.model is not None
        _, _, x, y = mine(ctx)
        m = mlp.evaluate(msg.content.model, x, y)
        return msg.reply(metrics=m)

    return app


def ditto_solver(seed: int, alpha: float) -> Any:
    """Ditto's personal step: min F_k(v) + lam/2 ||v - w||², from v, with the MLP trainer."""

    def personal(v: Arrays, w: Arrays, lam: float, msg: Message, ctx: Context) -> Arrays:
        x, y, _, _ = node_data(seed, alpha)[int(ctx.node_config["partition-id"])]
        result = mlp.train(
            v,
            x,
            y,
            rng=ctx.rng(msg.metadata.round, stream="ditto"),
            lr=LR,
            batch_size=BATCH,
            epochs=EPOCHS,
            prox_mu=lam,
            correction=ditto_correction(v, w, lam) if lam else None,
        )
        return result.params

    return personal


@dataclass
class Row:
    method: str
    seed: int
    mean_node_accuracy: float
    min_node_accuracy: float
    wall_s: float


def per_node(history: History, metric: str) -> list[float]:
    last = history.rounds[-1]
    return [float(n.metrics[metric]) for n in last.nodes if n.stage == "evaluate"]


def run(app: ClientApp, server: ServerApp, seed: int, rounds: int) -> tuple[History, float]:
    started = time.perf_counter()
    result = run_simulation(
        server, app, num_nodes=NUM_NODES, seed=seed, run_config={"num-rounds": rounds}
    )
    return result.history, time.perf_counter() - started


def fedavg_server(init: Any, rounds: int) -> ServerApp:
    return ServerApp(
        lambda ctx: ServerConfig(FedAvg(init_fn=init, fraction_evaluate=1.0), num_rounds=rounds)
    )


def bench(args: argparse.Namespace, seed: int) -> list[Row]:
    base = make_app(seed, args.alpha)
    full_init = lambda rng: mlp.init_params(SIZES, rng)  # noqa: E731
    rows = []

    def row(name: str, accs: list[float], wall: float) -> Row:
        r = Row(name, seed, statistics.fmean(accs), min(accs), wall)
        print(r, file=sys.stderr, flush=True)
        return r

    ditto = Ditto(ditto_solver(seed, args.alpha), lam=args.lam)
    hist, wall = run(ditto.wrap(base), fedavg_server(full_init, args.rounds), seed, args.rounds)
    rows.append(row("FedAvg global", per_node(hist, "accuracy_global"), wall))
    rows.append(row(f"Ditto (lam={args.lam})", per_node(hist, "accuracy_personal"), wall))

    layers = LocalLayers(
        ["dense1.*"], lambda ctx: mlp.init_params(SIZES, ctx.rng(0, stream="fedper-init"))
    )
    shared_init = lambda rng: layers.shared(mlp.init_params(SIZES, rng))  # noqa: E731
    hist, wall = run(layers.wrap(base), fedavg_server(shared_init, args.rounds), seed, args.rounds)
    rows.append(row("FedPer (dense1 local)", per_node(hist, "accuracy_personal"), wall))

    if not args.no_local:
        alone = Ditto(ditto_solver(seed, args.alpha), lam=0.0)
        hist, wall = run(alone.wrap(base), fedavg_server(full_init, args.rounds), seed, args.rounds)
        rows.append(row("Local only (Ditto lam=0)", per_node(hist, "accuracy_personal"), wall))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--lam", type=float, default=0.1, help="Ditto's lambda")
    ap.add_argument("--no-local", action="store_true", help="skip the local-only reference")
    ap.add_argument("--json", nargs="?", const="-", help="write JSON to a file (or stdout)")
    args = ap.parse_args()

    rows: list[Row] = []
    for seed in (int(s) for s in args.seeds.split(",") if s):
        rows.extend(bench(args, seed))

    methods = list(dict.fromkeys(r.method for r in rows))
    seeds = sorted({r.seed for r in rows})
    print(
        f"\n### Personalisation, digits, {NUM_NODES} nodes, Dirichlet({args.alpha}), "
        f"{args.rounds} rounds: mean per-node held-out accuracy\n"
    )
    print("| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |")
    print("|---|" + "---:|" * (len(seeds) + 1))
    means = {}
    for m in methods:
        accs = [next(r for r in rows if r.method == m and r.seed == s) for s in seeds]
        means[m] = statistics.fmean(r.mean_node_accuracy for r in accs)
        cells = " | ".join(f"{r.mean_node_accuracy:.3f}" for r in accs)
        print(f"| {m} | {cells} | {means[m]:.3f} |")
    # acceptance: over the seeds, each personalised method's mean beats the global model's
    personal = [m for m in methods if m.startswith(("FedPer", "Ditto"))]
    ok = all(means[m] > means["FedAvg global"] for m in personal)
    for m in personal:
        wins = sum(
            next(r for r in rows if r.method == m and r.seed == s).mean_node_accuracy
            > next(
                r for r in rows if r.method == "FedAvg global" and r.seed == s
            ).mean_node_accuracy
            for s in seeds
        )
        print(
            f"\n{m}: {means[m] - means['FedAvg global']:+.3f} over the global model "
            f"(better on {wins} of {len(seeds)} seeds)"
        )
    print(f"\npersonalised means beat the global model's: {ok}")
    if args.json:
        out = json.dumps(
            {
                "settings": vars(args),
                "rows": [asdict(r) for r in rows],
                "means": means,
                "personalised_means_beat_global": ok,
            },
            indent=2,
        )
        if args.json == "-":
            print(out)
        else:
            with open(args.json, "w") as fh:
                fh.write(out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
