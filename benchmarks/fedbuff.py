"""FedBuff vs synchronous FedAvg: simulated wall-clock time to a target accuracy.

    python benchmarks/fedbuff.py                       # seeds 0,1,2
    python benchmarks/fedbuff.py --seeds 0 --json      # JSON on stdout
    python benchmarks/fedbuff.py --json out.json

Workload: scikit-learn's digits (offline), 75/25 stratified split; the
training part is spread over 20 nodes with Dirichlet(alpha = 0.5) label skew
(the digits example's setting: each node sees a few dominant classes, all
classes occur). A 64-64-10 numpy MLP, 2 local epochs of SGD (lr 0.1, batch
16) per task. Node speeds are LogNormal(0, sigma = 1) seeded per node; a task
on node i takes ``speed_i × n_i × epochs × 10 ms`` of simulated time.

* **FedAvg** (synchronous): each round samples ``--fedavg-nodes`` nodes and
  lasts as long as the slowest of them (the round loop over the simulated
  grid).
* **FedBuff** (Nguyen et al., 2022): ``--concurrency`` nodes training at
  once, a server step every ``--buffer`` arrivals, staleness weight
  1/sqrt(1 + tau), server learning rate 1.

Both stop at the first evaluation (central test set, after every round /
step) at or above ``--target`` accuracy (default 0.90: well below both
methods' plateau of about 0.95, so the race measures speed, not whether a
method can get there). The output is the simulated time each needs, the
rounds / steps and node tasks used, and the ratio FedAvg time / FedBuff time.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.history import History, RoundRecord, RunInfo
from consortium.core.message import Message
from consortium.core.records import Metrics
from consortium.datasets.partition import dirichlet
from consortium.ml import mlp
from consortium.server import AsyncServerConfig, ServerApp, ServerConfig, run_server_app
from consortium.simulation.async_grid import AsyncSimulationGrid, lognormal_speeds
from consortium.strategy import FedAvg
from consortium.strategy.fedbuff import FedBuff

NUM_NODES = 20
EPOCHS = 2
SECONDS_PER_EXAMPLE = 0.01  # simulated, at median speed
SIZES = [64, 64, 10]


@functools.cache
def data(seed: int, alpha: float) -> tuple[Any, Any, Any, Any, list[np.ndarray]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x / 16.0, y, test_size=0.25, stratify=y, random_state=seed
    )
    parts = dirichlet(y_tr, NUM_NODES, alpha, np.random.default_rng(seed), min_partition_size=10)
    return x_tr, y_tr, x_te, y_te, parts


def make_client(seed: int, alpha: float, lr: float) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        assert msg.content is not None and msg.content.model is not None
        x_tr, y_tr, _, _, parts = data(seed, alpha)
        idx = parts[int(ctx.node_config["partition-id"])]
        result = mlp.train(
            msg.content.model,
            x_tr[idx],
            y_tr[idx],
            rng=ctx.rng(msg.metadata.round),
            lr=lr,
            batch_size=16,
            epochs=EPOCHS,
        )
        return msg.reply(
            arrays=result.params, metrics={"num_examples": result.num_examples, "loss": result.loss}
        )

    return app


@dataclass
class Outcome:
    method: str
    seed: int
    reached: bool
    sim_seconds: float
    rounds: int
    tasks: int
    accuracy: float
    wall_s: float


def reached(target: float) -> Any:
    def stop(record: RoundRecord) -> bool:
        return record.central_metrics.get("accuracy", 0.0) >= target

    return stop


def grid_for(seed: int, alpha: float, lr: float, sigma: float) -> AsyncSimulationGrid:
    nodes = [str(i) for i in range(NUM_NODES)]
    speeds = lognormal_speeds(nodes, sigma=sigma, seed=seed)
    parts = data(seed, alpha)[4]
    seconds = {
        n: speeds[n] * len(parts[i]) * EPOCHS * SECONDS_PER_EXAMPLE for i, n in enumerate(nodes)
    }
    return AsyncSimulationGrid(make_client(seed, alpha, lr), nodes, durations=seconds, seed=seed)


def central(seed: int, alpha: float) -> Any:
    _, _, x_te, y_te, _ = data(seed, alpha)

    def evaluate(version: int, arrays: Arrays) -> Metrics:
        return {"accuracy": mlp.evaluate(arrays, x_te, y_te)["accuracy"]}

    return evaluate


class ClockLog:
    """Observer noting the grid clock at the end of each round."""

    def __init__(self, grid: AsyncSimulationGrid) -> None:
        self.grid = grid
        self.clock: list[float] = []

    def on_run_start(self, info: RunInfo) -> None: ...

    def on_round_end(self, record: RoundRecord) -> None:
        self.clock.append(self.grid.now())

    def on_run_end(self, history: History, *, failed: bool) -> None: ...


def run_fedavg(args: argparse.Namespace, seed: int) -> Outcome:
    """Runs ``--max-rounds`` rounds, then reads off the first round at the target."""
    grid = grid_for(seed, args.alpha, args.lr, args.sigma)
    strategy = FedAvg(
        fraction_train=args.fedavg_nodes / NUM_NODES,
        fraction_evaluate=0.0,
        init_fn=lambda rng: mlp.init_params(SIZES, rng),
        central_evaluate=central(seed, args.alpha),
    )
    log = ClockLog(grid)
    started = time.perf_counter()
    config = ServerConfig(strategy, num_rounds=args.max_rounds)
    result = run_server_app(ServerApp(lambda _: config), grid, seed=seed, observers=[log])
    grid.close()
    wall = time.perf_counter() - started
    stop = reached(args.target)
    rounds = result.history.rounds
    first = next((i for i, r in enumerate(rounds) if stop(r)), len(rounds) - 1)
    record = rounds[first]
    tasks = sum(1 for r in rounds[: first + 1] for n in r.nodes if n.stage == "train")
    accuracy = float(record.central_metrics["accuracy"])
    return Outcome(
        "FedAvg", seed, stop(record), log.clock[first], record.round, tasks, accuracy, wall
    )


def run_fedbuff(args: argparse.Namespace, seed: int) -> Outcome:
    grid = grid_for(seed, args.alpha, args.lr, args.sigma)
    strategy = FedBuff(
        buffer_size=args.buffer,
        concurrency=args.concurrency,
        server_lr=args.server_lr,
        init_fn=lambda rng: mlp.init_params(SIZES, rng),
        central_evaluate=central(seed, args.alpha),
    )
    config = AsyncServerConfig(strategy, num_steps=args.max_steps, stop_when=reached(args.target))
    started = time.perf_counter()
    result = run_server_app(ServerApp(lambda _: config), grid, seed=seed)
    grid.close()
    last = result.history.rounds[-1]
    tasks = sum(1 for r in result.history.rounds for n in r.nodes)
    accuracy = float(last.central_metrics["accuracy"])
    return Outcome(
        "FedBuff",
        seed,
        accuracy >= args.target,
        float(last.train_metrics["clock"]),
        last.round,
        tasks,
        accuracy,
        time.perf_counter() - started,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--target", type=float, default=0.90)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--sigma", type=float, default=1.0, help="log-normal spread of node speeds")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--fedavg-nodes", type=int, default=10, help="nodes per FedAvg round")
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--buffer", type=int, default=5, help="FedBuff's K")
    ap.add_argument("--server-lr", type=float, default=1.0)
    ap.add_argument("--max-rounds", type=int, default=100)
    ap.add_argument("--max-steps", type=int, default=600)
    ap.add_argument("--json", nargs="?", const="-", help="write JSON to a file (or stdout)")
    args = ap.parse_args()

    rows: list[Outcome] = []
    for seed in (int(s) for s in args.seeds.split(",") if s):
        for run in (run_fedavg, run_fedbuff):
            rows.append(run(args, seed))
            print(rows[-1], file=sys.stderr, flush=True)

    ratios = []
    print(
        f"\n### FedBuff vs FedAvg, digits, {NUM_NODES} nodes, Dirichlet({args.alpha}), "
        f"speeds LogNormal(0, {args.sigma}), target accuracy {args.target}\n"
    )
    print("| seed | FedAvg sim s (rounds, tasks) | FedBuff sim s (steps, tasks) | FedAvg/FedBuff |")
    print("|---:|---:|---:|---:|")
    for seed in sorted({r.seed for r in rows}):
        fa = next(r for r in rows if r.seed == seed and r.method == "FedAvg")
        fb = next(r for r in rows if r.seed == seed and r.method == "FedBuff")
        ratio = fa.sim_seconds / fb.sim_seconds if fa.reached and fb.reached else None
        ratios.append(ratio)
        cells = [
            f"{r.sim_seconds:.1f} ({r.rounds}, {r.tasks})" + ("" if r.reached else " not reached")
            for r in (fa, fb)
        ]
        print(f"| {seed} | {cells[0]} | {cells[1]} | {'—' if ratio is None else f'{ratio:.2f}×'} |")
    valid = [r for r in ratios if r is not None]
    if valid:
        print(
            f"\ngeometric mean of FedAvg time / FedBuff time: {np.exp(np.mean(np.log(valid))):.2f}×"
        )
    if args.json:
        out = json.dumps(
            {"settings": vars(args), "rows": [asdict(r) for r in rows], "ratios": ratios}, indent=2
        )
        if args.json == "-":
            print(out)
        else:
            with open(args.json, "w") as fh:
                fh.write(out)
    return 0 if valid and len(valid) == len(ratios) else 1


if __name__ == "__main__":
    sys.exit(main())
