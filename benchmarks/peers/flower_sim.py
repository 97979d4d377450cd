"""Flower 1.42 simulation of the "logreg-20" benchmark workload.

Run with the Flower virtualenv's interpreter (see ``flower_env.py``)::

    .bench/flower-venv/bin/python benchmarks/peers/flower_sim.py --nodes 10 --rounds 5 --seed 0

It exists only to measure Flower side by side with Consortium; nothing in the
project imports it.  The last line on stdout is one JSON object::

    {"nodes": N, "rounds": R, "seconds_per_round": [...], "final_accuracy": ...,
     "run_simulation_s": ...}

``seconds_per_round[0]`` includes Ray's start-up: the ServerApp starts round 1
while the simulation runtime is still booting Ray and its actors.
``final_accuracy`` is on the union of all nodes' data (null for N > 1000).

Workload "logreg-20" (must match the Consortium side exactly):

* node ``i`` owns 100 rows of 20 features: ``rng = default_rng([seed, i])``,
  ``x = rng.standard_normal((100, 20), dtype=float32)``, then
  ``noise = rng.standard_normal(100)``; labels
  ``y = 1[x @ w_true + 0.5 * noise > 0]`` with
  ``w_true = default_rng(seed).normal(size=20)`` shared by all nodes;
* model: logistic regression, weight (1, 20) and bias (1,), float64, zeros;
* local training per round: one epoch, batch size 32, rows shuffled by
  ``default_rng([seed, round, i]).permutation(100)``, plain SGD lr 0.1 on
  the mean binary cross-entropy;
* FedAvg weighted by the number of examples, every node every round, no
  federated evaluation.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

ROWS = 100
FEATURES = 20
BATCH = 32
LR = 0.1
ACCURACY_MAX_NODES = 1000


# --------------------------------------------------------------------------
# Workload (pure numpy; shared by ClientApp and ServerApp)
# --------------------------------------------------------------------------
def true_weights(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=FEATURES)


def node_data(seed: int, i: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, i])
    x = rng.standard_normal((ROWS, FEATURES), dtype=np.float32)
    noise = rng.standard_normal(ROWS)
    y = (x.astype(np.float64) @ true_weights(seed) + 0.5 * noise > 0).astype(np.float64)
    return x, y


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def local_train(
    weight: np.ndarray, bias: np.ndarray, seed: int, server_round: int, i: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """One epoch of mini-batch SGD on node ``i``; returns (weight, bias, loss)."""
    x, y = node_data(seed, i)
    w = np.array(weight, dtype=np.float64, copy=True).reshape(1, FEATURES)
    b = np.array(bias, dtype=np.float64, copy=True).reshape(1)
    order = np.random.default_rng([seed, server_round, i]).permutation(ROWS)
    total_loss = 0.0
    for start in range(0, ROWS, BATCH):
        idx = order[start : start + BATCH]
        xb = x[idx].astype(np.float64)
        yb = y[idx]
        p = _sigmoid(xb @ w[0] + b[0])
        eps = 1e-12
        total_loss += float(-np.sum(yb * np.log(p + eps) + (1.0 - yb) * np.log(1.0 - p + eps)))
        g = (p - yb) / len(idx)  # d(mean BCE)/d(logit)
        w -= LR * (g @ xb)[None, :]
        b -= LR * np.array([g.sum()])
    return w, b, total_loss / ROWS


def accuracy(weight: np.ndarray, bias: np.ndarray, seed: int, nodes: int) -> float:
    correct = 0
    total = 0
    w = np.asarray(weight, dtype=np.float64).reshape(FEATURES)
    b = float(np.asarray(bias, dtype=np.float64).reshape(1)[0])
    for i in range(nodes):
        x, y = node_data(seed, i)
        pred = (x.astype(np.float64) @ w + b > 0).astype(np.float64)
        correct += int((pred == y).sum())
        total += len(y)
    return correct / total


# --------------------------------------------------------------------------
# Flower apps
# --------------------------------------------------------------------------
# The ClientApp lives at module level of the *importable* module
# ``flower_sim`` (see the bottom of this file): Flower ships the app to its Ray
# actors with every message, and cloudpickle sends a module-level object of an
# importable module by reference, but anything from ``__main__`` by value
# (here ~4.5 ms instead of ~0.5 ms to pickle, for every message).  The actors can import this
# module because Flower hands its ``sys.path`` to them via PYTHONPATH.
client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    i = int(context.node_config["partition-id"])
    cfg = msg.content["config"]
    weight, bias = msg.content["arrays"].to_numpy_ndarrays()
    w, b, loss = local_train(weight, bias, int(cfg["seed"]), int(cfg["server-round"]), i)
    content = RecordDict(
        {
            "arrays": ArrayRecord([w, b]),
            "metrics": MetricRecord({"train_loss": loss, "num-examples": ROWS}),
        }
    )
    return Message(content=content, reply_to=msg)


def build_server_app(nodes: int, rounds: int, seed: int, result: dict) -> ServerApp:
    """The ServerApp runs in this process (a thread of run_simulation)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=nodes,
            min_available_nodes=nodes,
        )
        stamps: list[float] = []

        # Strategy.start calls evaluate_fn before round 1 and after every
        # round: a free way to time rounds (it evaluates nothing).
        def stamp(server_round: int, arrays: ArrayRecord) -> None:
            stamps.append(time.perf_counter())
            return None

        initial = ArrayRecord(
            [np.zeros((1, FEATURES), dtype=np.float64), np.zeros((1,), dtype=np.float64)]
        )
        res = strategy.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=rounds,
            train_config=ConfigRecord({"seed": seed}),
            evaluate_fn=stamp,
        )
        result["seconds_per_round"] = [round(b - a, 4) for a, b in itertools.pairwise(stamps)]
        weight, bias = res.arrays.to_numpy_ndarrays()
        result["final_accuracy"] = (
            accuracy(weight, bias, seed, nodes) if nodes <= ACCURACY_MAX_NODES else None
        )

    return server_app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from flwr.simulation import run_simulation

    result: dict = {"seconds_per_round": [], "final_accuracy": None}
    server_app = build_server_app(args.nodes, args.rounds, args.seed, result)
    t0 = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=args.nodes,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    sim_s = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "nodes": args.nodes,
                "rounds": args.rounds,
                "seconds_per_round": result["seconds_per_round"],
                "final_accuracy": result["final_accuracy"],
                "run_simulation_s": round(sim_s, 3),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    # Re-import this file as the module ``flower_sim`` so that ``client_app``
    # is pickled by reference (see above); its directory is sys.path[0].
    import flower_sim

    flower_sim.main()
