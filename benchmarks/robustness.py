"""Robust aggregation under attack: final test accuracy of each rule against each attack.

    python benchmarks/robustness.py                          # the full table (2-3 minutes)
    python benchmarks/robustness.py --rounds 20 --seed 1 --json out.json
    python benchmarks/robustness.py --attacks clean,sign_flip --rules fedavg,multi_krum

Workload: scikit-learn's bundled digits (8x8 pixels, 10 classes; 75 % train,
25 % held-out test, stratified) split over 20 nodes with Dirichlet(0.5) label
skew; 4 nodes, drawn from the seed, are attackers. Every node trains every
round (2 local epochs of SGD, batch 16, lr 0.1) a numpy MLP 64-32-10
(``consortium.ml.mlp``); the score is the central test accuracy of the final
global model. Robust rules are told f = 4 (trimmed mean trims 4 per side).

Why this model: multinomial logistic regression (no hidden layer) was tried
first (5 local epochs, seed 0); after 60 clean rounds coordinate-wise median
and Bulyan trailed FedAvg by 1.6 and 2.5 points (they converge more slowly
under label skew), which blurs the attack rows. With the small MLP every rule
reaches 95 % clean in 60 rounds with seed 0 (Bulyan trails by 4-5 points with
seeds 1 and 2), at about 2 s per run on an idle core.

Attacks (consortium.simulation.attacks): sign flip (each attacker sends -k x
its update, k = 10 by default: with seed 0 the attackers hold 14 % of the
examples, so FedAvg's step reverses once k > ~6); Gaussian (pure N(0, sigma^2)
updates, sigma = 10); label flipping (attackers train on l -> 9 - l); "a little is
enough" (mu - z sigma of the attackers' own updates, z from n = 20 and f = 4);
inner-product manipulation (-epsilon x the benign mean, epsilon = 0.1).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.grid import Grid
from consortium.core.message import Message
from consortium.core.records import Config, Metrics
from consortium.core.rng import derive_rng
from consortium.datasets.partition import dirichlet
from consortium.ml import mlp
from consortium.server import ServerApp, ServerConfig
from consortium.simulation import run_simulation
from consortium.simulation.attacks import (
    AttackedGrid,
    GaussianNoise,
    InnerProductManipulation,
    LittleIsEnough,
    ModelPoisoning,
    SignFlip,
    flip_labels,
    is_malicious,
    mark_malicious,
)
from consortium.strategy import FedAvg, Strategy
from consortium.strategy.robust import (
    Bulyan,
    CoordinateMedian,
    MultiKrum,
    RobustFedAvg,
    TrimmedMean,
)

NUM_NODES = 20
NUM_ATTACKERS = 4
NUM_CLASSES = 10
ALPHA = 0.5

ATTACKS = ["clean", "sign_flip", "gaussian", "label_flip", "alie", "ipm"]
RULES = ["fedavg", "median", "trimmed_mean", "multi_krum", "bulyan"]


# -- data and app ----------------------------------------------------------------------
@functools.cache
def _split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    parts = train_test_split(x / 16.0, y, test_size=0.25, stratify=y, random_state=seed)
    return parts[0], parts[1], parts[2], parts[3]


@functools.cache
def _partitions(seed: int) -> list[np.ndarray]:
    _, _, y_train, _ = _split(seed)
    return dirichlet(y_train, NUM_NODES, ALPHA, derive_rng(seed, 0, "data"), min_partition_size=5)


def attackers_for(seed: int) -> list[str]:
    chosen = derive_rng(seed, 0, "attackers").choice(NUM_NODES, NUM_ATTACKERS, replace=False)
    return [str(i) for i in sorted(chosen.tolist())]


def _number(config: Config, key: str) -> float:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"config {key!r} must be a number, got {value!r}")
    return value


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    assert msg.content is not None and msg.content.model is not None
    run = context.run_config
    seed = int(_number(run, "data-seed"))
    x_train, _, y_train, _ = _split(seed)
    idx = _partitions(seed)[int(_number(context.node_config, "partition-id"))]
    x, y = x_train[idx], y_train[idx]
    if run["attack"] == "label_flip" and is_malicious(context):
        y = flip_labels(y, NUM_CLASSES)
    result = mlp.train(
        msg.content.model,
        x,
        y,
        rng=context.rng(msg.metadata.round),
        lr=_number(run, "lr"),
        batch_size=int(_number(run, "batch-size")),
        epochs=int(_number(run, "local-epochs")),
    )
    return msg.reply(
        arrays=result.params, metrics={"num_examples": result.num_examples, "loss": result.loss}
    )


def make_strategy(rule: str, seed: int, hidden: int) -> Strategy:
    _, x_test, _, y_test = _split(seed)
    sizes = [64, hidden, NUM_CLASSES] if hidden else [64, NUM_CLASSES]

    def central(rnd: int, arrays: Arrays) -> Metrics:
        m = mlp.evaluate(arrays, x_test, y_test)
        return {"loss": m["loss"], "accuracy": m["accuracy"]}

    common: dict[str, Any] = {
        "init_fn": lambda rng: mlp.init_params(sizes, rng),
        "fraction_evaluate": 0.0,
        "central_evaluate": central,
    }
    f = NUM_ATTACKERS
    if rule == "fedavg":
        return FedAvg(**common)
    robust = {
        "median": CoordinateMedian(),
        "trimmed_mean": TrimmedMean(trim=f),
        "multi_krum": MultiKrum(f),
        "bulyan": Bulyan(f),
    }[rule]
    return RobustFedAvg(robust, **common)


def make_attack(name: str, args: argparse.Namespace) -> ModelPoisoning | None:
    return {
        "sign_flip": SignFlip(args.flip_scale),
        "gaussian": GaussianNoise(args.sigma),
        "alie": LittleIsEnough(),
        "ipm": InnerProductManipulation(args.epsilon),
    }.get(name)


# -- one run -----------------------------------------------------------------------------
def run_one(attack: str, rule: str, args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    seed = args.seed
    node_ids = [str(i) for i in range(NUM_NODES)]
    attackers = attackers_for(seed) if attack != "clean" else []
    poison = make_attack(attack, args)
    wrapper: Callable[[Grid], Grid] | None = None
    if poison is not None:
        wrapper = functools.partial(AttackedGrid, attackers=attackers, attack=poison, seed=seed)
    server_app = ServerApp(
        lambda ctx: ServerConfig(make_strategy(rule, seed, args.hidden), num_rounds=args.rounds)
    )
    result = run_simulation(
        server_app,
        client_app,
        node_ids=node_ids,
        node_config=mark_malicious(attackers, node_ids),
        run_config={
            "attack": attack,
            "data-seed": seed,
            "lr": args.lr,
            "batch-size": args.batch_size,
            "local-epochs": args.local_epochs,
        },
        seed=seed,
        grid_wrapper=wrapper,
    )
    curve = [float(r.central_metrics["accuracy"]) for r in result.history.rounds]
    return {
        "attack": attack,
        "rule": rule,
        "final_accuracy": curve[-1] if curve else None,
        "accuracy_per_round": curve,
        "seconds": time.perf_counter() - started,
    }


# -- report -------------------------------------------------------------------------------
def table(results: list[dict[str, Any]], attacks: list[str], rules: list[str]) -> str:
    acc = {(r["attack"], r["rule"]): r["final_accuracy"] for r in results}
    lines = [
        "| attack | " + " | ".join(rules) + " |",
        "|---|" + "---:|" * len(rules),
    ]
    for attack in attacks:
        cells = [
            "—" if acc.get((attack, rule)) is None else f"{100 * acc[(attack, rule)]:.1f}"
            for rule in rules
        ]
        lines.append(f"| {attack} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def acceptance(results: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, each with its measured numbers."""
    acc = {(r["attack"], r["rule"]): r["final_accuracy"] for r in results}
    clean = acc.get(("clean", "fedavg"))
    if clean is None:
        return ["(no clean FedAvg run: targets not checked)"]
    out = []
    flipped = acc.get(("sign_flip", "fedavg"))
    if flipped is not None:
        drop = 100 * (clean - flipped)
        ok = "PASS" if drop >= 30 else "FAIL"
        out.append(f"{ok}: FedAvg under sign flip loses {drop:.1f} points (target >= 30)")
    for attack in ("sign_flip", "gaussian", "label_flip"):
        robust = [(acc[(attack, r)], r) for r in RULES[1:] if acc.get((attack, r)) is not None]
        if not robust:
            continue
        best, rule = max(robust)
        gap = 100 * (clean - best)
        ok = "PASS" if gap <= 5 else "FAIL"
        where = f"{gap:.1f} points below" if gap >= 0 else f"{-gap:.1f} points above"
        out.append(
            f"{ok}: best robust rule under {attack} is {rule} at {100 * best:.1f}, "
            f"{where} clean FedAvg (target: at most 5 below)"
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write every result (with curves) here")
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--hidden", type=int, default=32, help="hidden width (0: logistic regression)")
    ap.add_argument("--flip-scale", type=float, default=10.0, help="sign flip sends -k x update")
    ap.add_argument("--sigma", type=float, default=10.0, help="std of the Gaussian updates")
    ap.add_argument("--epsilon", type=float, default=0.1, help="IPM sends -eps x benign mean")
    args = ap.parse_args()
    attacks = [a for a in args.attacks.split(",") if a]
    rules = [r for r in args.rules.split(",") if r]
    for name, given, known in (("attack", attacks, ATTACKS), ("rule", rules, RULES)):
        unknown = sorted(set(given) - set(known))
        if unknown:
            ap.error(f"unknown {name}(s) {unknown}; choose from {known}")

    started = time.perf_counter()
    results = [run_one(a, r, args) for a in attacks for r in rules]
    wall = time.perf_counter() - started

    print(
        f"digits, {NUM_NODES} nodes, Dirichlet({ALPHA}), {NUM_ATTACKERS} attackers "
        f"{attackers_for(args.seed)}, {args.rounds} rounds, seed {args.seed}; "
        f"final test accuracy (%)\n"
    )
    print(table(results, attacks, rules))
    print()
    for line in acceptance(results):
        print(line)
    print(f"\n{len(results)} runs in {wall:.0f} s")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        payload = {
            "settings": {**settings, "nodes": NUM_NODES, "attackers": attackers_for(args.seed)},
            "wall_seconds": wall,
            "cpus": os.cpu_count(),
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
