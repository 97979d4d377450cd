"""FLamby's Fed-Heart-Disease table: local, pooled and federated, over seeds.

    python benchmarks/heart_disease.py                   # seeds 42-46, split seed 43
    python benchmarks/heart_disease.py --seeds 42,43 --split-seed 7 --json out.json

Protocol (FLamby): logistic regression over 13 features; Local i and Pooled
train with Adam (lr 1e-3, 50 epochs, batch 4); every federated strategy runs
15 rounds of 100 local SGD steps of batch 4 with FLamby's hyperparameters
(``consortium.examples.heart_disease.FLAMBY_STRATEGY_CONFIGS``); Cyclic's
round is one hospital's local training. Every model is scored on each
center's test set; the table reports the mean of the four per-center
accuracies (and AUCs), its standard deviation over seeds, and the accuracy on
all test rows pooled, then checks each published number against the seed
spread.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from consortium.cli.demo_cmd import federated_scores
from consortium.datasets import heart_disease as hd
from consortium.examples import heart_disease as app

#: FLamby's published mean per-center accuracies (Fed-Heart-Disease).
PUBLISHED = {
    "Pooled": 0.735,
    "FedAvg (FLamby)": 0.685,
    "FedProx (FLamby)": 0.685,
    "FedYogi (FLamby)": 0.731,
    "FedAdagrad (FLamby)": 0.731,
    "FedAdam (FLamby)": 0.726,
    "SCAFFOLD (FLamby)": 0.684,
    "Cyclic (FLamby)": 0.718,
}

#: Table rows for FLamby's federated strategies: (row name, run-config strategy).
FLAMBY_ROWS = [
    ("FedAvg (FLamby)", "fedavg"),
    ("FedProx (FLamby)", "fedprox"),
    ("FedYogi (FLamby)", "fedyogi"),
    ("FedAdagrad (FLamby)", "fedadagrad"),
    ("FedAdam (FLamby)", "fedadam"),
    ("SCAFFOLD (FLamby)", "scaffold"),
    ("Cyclic (FLamby)", "cyclic"),
]

Method = Callable[[int], app.Scores]


def methods(split_seed: int) -> Iterator[tuple[str, Method]]:
    centers = hd.load_all(split_seed=split_seed)
    for c in centers:
        yield f"Local {c.index}", lambda s, c=c: app.score(app.train_local(c, seed=s), centers)
    yield "Pooled", lambda s: app.score(app.train_pooled(seed=s, split_seed=split_seed), centers)
    for row, strategy in FLAMBY_ROWS:
        config = {**app.flamby_run_config(strategy), "split-seed": split_seed}
        yield row, lambda s, config=config: federated_scores(config, s)
    for row, config in (
        ("FedAvg (tuned)", app.TUNED_RUN_CONFIG),
        ("Best federated (tuned)", app.BEST_RUN_CONFIG),
    ):
        config = {**config, "split-seed": split_seed}
        yield row, lambda s, config=config: federated_scores(config, s)


def reproduction(row: dict[str, Any]) -> str:
    """How a row compares with FLamby's published number, in units of the seed spread."""
    published = PUBLISHED[row["method"]]
    diff = row["mean_per_center_acc"] - published
    sd = row["sd_over_seeds"]
    verdict = "within the seed spread" if abs(diff) <= sd else "OUTSIDE the seed spread"
    return (
        f"{row['method']}: {row['mean_per_center_acc']:.3f} vs published {published:.3f} "
        f"(diff {diff:+.3f}, sd {sd:.3f}): {verdict}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="42,43,44,45,46")
    ap.add_argument("--split-seed", type=int, default=hd.DEFAULT_SPLIT_SEED)
    ap.add_argument("--json", type=Path, help="also write the table as JSON")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for name, run in methods(args.split_seed):
        scores = [run(s) for s in seeds]
        means = [s.mean_accuracy for s in scores]
        rows.append(
            {
                "method": name,
                "mean_per_center_acc": float(np.mean(means)),
                "sd_over_seeds": float(np.std(means)),
                "per_center_acc": [float(v) for v in np.mean([s.accuracy for s in scores], axis=0)],
                "pooled_test_acc": float(np.mean([s.pooled_accuracy for s in scores])),
                "mean_per_center_auc": float(np.mean([s.mean_auc for s in scores])),
            }
        )
    print(f"\n### Fed-Heart-Disease, seeds {args.seeds}, split seed {args.split_seed}\n")
    print(
        "| method | mean per-center acc | sd | "
        + " | ".join(hd.CENTERS)
        + " | pooled test acc | mean AUC | published |"
    )
    print("|---|---:|---:|" + "---:|" * len(hd.CENTERS) + "---:|---:|---:|")
    for r in rows:
        pub = PUBLISHED.get(r["method"])
        print(
            f"| {r['method']} | {r['mean_per_center_acc']:.4f} | {r['sd_over_seeds']:.4f} | "
            + " | ".join(f"{a:.3f}" for a in r["per_center_acc"])
            + f" | {r['pooled_test_acc']:.4f} | {r['mean_per_center_auc']:.4f} | "
            + (f"{pub:.3f}" if pub else "")
            + " |"
        )
    print()
    for r in rows:
        if r["method"] in PUBLISHED:
            print("* " + reproduction(r))
    print(f"\n({time.perf_counter() - started:.1f} s)")
    if args.json:
        args.json.write_text(
            json.dumps({"split_seed": args.split_seed, "seeds": seeds, "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
