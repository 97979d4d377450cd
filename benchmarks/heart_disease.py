"""FLamby's Fed-Heart-Disease table: local, pooled and federated, over seeds.

    python benchmarks/heart_disease.py                   # seeds 42-46, split seed 43
    python benchmarks/heart_disease.py --seeds 42,43 --split-seed 7 --json out.json

Protocol (FLamby): logistic regression over 13 features; Local i and Pooled
train with Adam (lr 1e-3, 50 epochs, batch 4); FedAvg runs 15 rounds of 100
local SGD steps of batch 4. Every model is scored on each center's test set;
the table reports the mean of the four per-center accuracies (and AUCs), its
standard deviation over seeds, and the accuracy on all test rows pooled.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from consortium.cli.demo_cmd import federated_scores
from consortium.datasets import heart_disease as hd
from consortium.examples import heart_disease as app

PUBLISHED = {"FedAvg (FLamby)": 0.685, "Pooled": 0.735}


def methods(split_seed: int):  # type: ignore[no-untyped-def]
    centers = hd.load_all(split_seed=split_seed)
    for c in centers:
        yield f"Local {c.index}", lambda s, c=c: app.score(app.train_local(c, seed=s), centers)
    yield "Pooled", lambda s: app.score(app.train_pooled(seed=s, split_seed=split_seed), centers)
    yield (
        "FedAvg (FLamby)",
        lambda s: federated_scores({**app.FLAMBY_RUN_CONFIG, "split-seed": split_seed}, s),
    )
    yield (
        "FedAvg (tuned)",
        lambda s: federated_scores({**app.TUNED_RUN_CONFIG, "split-seed": split_seed}, s),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="42,43,44,45,46")
    ap.add_argument("--split-seed", type=int, default=hd.DEFAULT_SPLIT_SEED)
    ap.add_argument("--json", type=Path, help="also write the table as JSON")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    started = time.perf_counter()
    rows = []
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
    print(f"\n({time.perf_counter() - started:.1f} s)")
    if args.json:
        args.json.write_text(
            json.dumps({"split_seed": args.split_seed, "seeds": seeds, "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
