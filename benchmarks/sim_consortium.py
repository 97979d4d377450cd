"""Consortium side of the simulation benchmark (run in its own process by simulation.py).

Workload "logreg-20", identical to benchmarks/peers/flower_sim.py: node i holds
100 rows of 20 features drawn from default_rng([seed, i]); labels from a
shared true weight vector plus noise; each round every node runs one epoch of
minibatch SGD (batch 32, lr 0.1) on a logistic regression; FedAvg over all
nodes; 5 rounds; no tracking (Flower has none).

The result splits the run's wall time in two: the nodes' own compute (the
handler's body: building the node's data and training on it, timed inside the
handler) and everything else, the framework's cost (tasks, contexts, RNG
derivation, replies, validation, aggregation, the round loop), also given per
node-task. ``run_cpu_s`` is the process's CPU time over the run: close to
``run_s`` when the machine was quiet for this process.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import time

T0 = time.perf_counter()

import numpy as np  # noqa: E402

from consortium import Arrays, ClientApp, Context, FedAvg, Message, ServerApp, ServerConfig  # noqa: E402
from consortium.ml import logistic  # noqa: E402
from consortium.simulation import run_simulation  # noqa: E402

FEATURES, ROWS, BATCH, LR = 20, 100, 32, 0.1


@functools.cache
def true_weights(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=FEATURES)


def node_data(seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, index])
    x = rng.standard_normal((ROWS, FEATURES), dtype=np.float32)
    noise = rng.standard_normal(ROWS)
    y = (x @ true_weights(seed) + 0.5 * noise > 0).astype(np.float64)
    return x, y


client_app = ClientApp()


class NodeClock:
    """Seconds spent in the nodes' own work, and how many node tasks ran. The default
    backend runs the tasks one after another in this thread, so the sum is the share
    of the run's wall time they took (with parallel workers it is not reported)."""

    seconds = 0.0
    tasks = 0


@client_app.train()
def train(msg: Message, ctx: Context) -> Message:
    assert msg.content is not None and msg.content.model is not None
    rng = ctx.rng(msg.metadata.round)  # the framework's per-task derivation
    started = time.perf_counter()
    x, y = node_data(ctx.seed, int(ctx.node_config["partition-id"]))  # built lazily, then dropped
    result = logistic.train(msg.content.model, x, y, rng=rng, lr=LR, batch_size=BATCH, epochs=1)
    NodeClock.seconds += time.perf_counter() - started
    NodeClock.tasks += 1
    return msg.reply(arrays=result.params, metrics={"num_examples": ROWS, "loss": result.loss})


null_app = ClientApp()


@null_app.train()
def train_nothing(msg: Message, ctx: Context) -> Message:
    """``--null-node``: the node sends back a copy of the model it got, computing nothing,
    so the run is all framework (the same derivation, reply, validation and fold)."""
    assert msg.content is not None and msg.content.model is not None
    ctx.rng(msg.metadata.round)
    NodeClock.tasks += 1
    return msg.reply(arrays=msg.content.model.copy(), metrics={"num_examples": ROWS, "loss": 0.5})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--null-node", action="store_true", help="nodes compute nothing: time the framework alone"
    )
    args = parser.parse_args()
    initial = Arrays({"weight": np.zeros((1, FEATURES)), "bias": np.zeros(1)})
    server_app = ServerApp(
        lambda ctx: ServerConfig(
            FedAvg(initial_arrays=initial, fraction_evaluate=0.0, min_available_nodes=args.nodes),
            num_rounds=args.rounds,
            min_reply_fraction=1.0,
        )
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    result = run_simulation(
        server_app,
        null_app if args.null_node else client_app,
        num_nodes=args.nodes,
        seed=args.seed,
        workers=args.workers,
    )
    finished, cpu_finished = time.perf_counter(), time.process_time()
    run_s, node_s, tasks = finished - started, NodeClock.seconds, NodeClock.tasks
    split = args.workers == 1  # with parallel workers, node time overlaps: no split
    accuracy = None
    if args.nodes <= 1000 and not args.null_node:
        data = [node_data(args.seed, i) for i in range(args.nodes)]
        x = np.concatenate([d[0] for d in data])
        y = np.concatenate([d[1] for d in data])
        accuracy = float(logistic.evaluate(result.arrays, x, y)["accuracy"])
    print(
        json.dumps(
            {
                "nodes": args.nodes,
                "rounds": args.rounds,
                "import_s": started - T0,
                "run_s": run_s,
                "run_cpu_s": cpu_finished - cpu_started,
                "node_tasks": tasks,
                "node_compute_s": node_s if split else None,
                "framework_s": run_s - node_s if split else None,
                "framework_us_per_task": (run_s - node_s) / tasks * 1e6 if split else None,
                "seconds_per_round": [r.seconds for r in result.history.rounds],
                "final_accuracy": accuracy,
                "self_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
