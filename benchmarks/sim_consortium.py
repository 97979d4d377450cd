"""Consortium side of the simulation benchmark (run in its own process by simulation.py).

Workload "logreg-20", identical to benchmarks/peers/flower_sim.py: node i holds
100 rows of 20 features drawn from default_rng([seed, i]); labels from a
shared true weight vector plus noise; each round every node runs one epoch of
minibatch SGD (batch 32, lr 0.1) on a logistic regression; FedAvg over all
nodes; 5 rounds; no tracking (Flower has none).
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


@client_app.train()
def train(msg: Message, ctx: Context) -> Message:
    assert msg.content is not None and msg.content.model is not None
    x, y = node_data(ctx.seed, int(ctx.node_config["partition-id"]))  # built lazily, then dropped
    result = logistic.train(
        msg.content.model, x, y, rng=ctx.rng(msg.metadata.round), lr=LR, batch_size=BATCH, epochs=1
    )
    return msg.reply(arrays=result.params, metrics={"num_examples": ROWS, "loss": result.loss})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    initial = Arrays({"weight": np.zeros((1, FEATURES)), "bias": np.zeros(1)})
    server_app = ServerApp(
        lambda ctx: ServerConfig(
            FedAvg(initial_arrays=initial, fraction_evaluate=0.0, min_available_nodes=args.nodes),
            num_rounds=args.rounds,
            min_reply_fraction=1.0,
        )
    )
    started = time.perf_counter()
    result = run_simulation(
        server_app, client_app, num_nodes=args.nodes, seed=args.seed, workers=args.workers
    )
    finished = time.perf_counter()
    accuracy = None
    if args.nodes <= 1000:
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
                "run_s": finished - started,
                "seconds_per_round": [r.seconds for r in result.history.rounds],
                "final_accuracy": accuracy,
                "self_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
