"""Privacy evaluation: SecAgg+ correctness and cost, DP's ε and accuracy, gradient inversion.

    python benchmarks/privacy.py --json privacy.json        # the full report (~3-5 minutes)
    python benchmarks/privacy.py --quick --json quick.json  # a smaller subset (< 2 minutes)
    python benchmarks/privacy.py --parts attack --attack-secagg-nodes 3

Three parts, each a key of the JSON report:

* ``secagg`` (``privacy_secagg.py``): for n nodes and no dropouts, 30% dropping
  after key sharing and 30% after their masked input, one FedAvg round through
  SecAgg+ (default parameters: clip 8, 32-bit quantisation, modulus 2^62) and
  one in the clear over the same fixed updates: the largest difference of the
  two aggregates (against the quantisation step), round time, and bytes each
  node sends and receives (every task and reply encoded as on the wire), and a
  chi-square and a KS test that the masked vectors the server receives are
  uniform mod M.
* ``dp``: the heart-disease app with central DP (``examples/central_dp``, 4
  hospitals, simulation) with the noise multiplier ``noise_multiplier_for``
  calibrates to each target ε over the run's rounds, and the plain app
  (``examples/heart_disease``) as the no-DP row. ε (RDP and PLD), sampling
  rate, noise multiplier, δ and rounds are read from what the run reported
  (its parameters and its last round's train metrics), not recomputed.
  Accuracy is the federated evaluation after the last round (all test rows
  pooled, and the mean over hospitals), averaged over ``--dp-repeats`` runs
  (seeds 42, 43, ...; the DP noise itself is never seeded).
* ``attack`` (``privacy_attack.py``): DLG gradient inversion by the server of a
  batch-1 SGD step of a small MLP on heart-disease rows, against each node's
  update in the clear, the SecAgg+ aggregate of n nodes (with and without
  distributed-DP noise), and updates through ``local_dp_mod``.

The expected dropouts' warnings and tracebacks are silenced (the ``consortium``
logger is set to CRITICAL while the benchmark runs).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import privacy_attack
import privacy_secagg
from consortium.apps.loader import load_object
from consortium.apps.manifest import load_app_spec
from consortium.core.history import History, RunInfo
from consortium.privacy import noise_multiplier_for
from consortium.server.app import ServerApp
from consortium.simulation.engine import run_simulation

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PARTS = ("secagg", "dp", "attack")
MECHANISM = "central DP (DP-FedAvg, Gaussian, fixed clipping)"


class ParamsSeen:
    """A run observer that keeps the run's parameters (where CentralDP records z and δ)."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}

    def on_run_start(self, info: RunInfo) -> None:
        self.params = dict(info.params)

    def on_round_end(self, record: Any) -> None:
        pass

    def on_run_end(self, history: History, *, failed: bool) -> None:
        pass


def run_app(app: str, overrides: dict[str, Any], seed: int) -> tuple[dict[str, Any], History]:
    """One simulated run of ``examples/<app>``: its parameters and its history."""
    spec = load_app_spec(EXAMPLES / app)
    server = load_object(spec.manifest.app.server, [str(spec.root)])
    assert isinstance(server, ServerApp)
    seen = ParamsSeen()
    result = run_simulation(
        server,
        spec.manifest.app.client,
        node_ids=spec.manifest.simulation.node_ids,
        run_config=spec.run_config(overrides),
        seed=seed,
        app_path=[str(spec.root)],
        observers=[seen],
    )
    return seen.params, result.history


def dp_rows(epsilons: Sequence[float], rounds: int, repeats: int) -> dict[str, Any]:
    """The no-DP row and one central-DP row per target ε, with accuracy over repeats."""
    delta = load_app_spec(EXAMPLES / "central_dp").run_config()["delta"]
    assert isinstance(delta, float), f"the app's delta is {delta!r}, not a number"
    rows: list[dict[str, Any]] = []
    for target in [None, *epsilons]:
        app = "heart_disease" if target is None else "central_dp"
        overrides: dict[str, Any] = {"num-rounds": rounds}
        if target is not None:
            overrides["noise-multiplier"] = noise_multiplier_for(target, delta, rounds, 1.0)
        scores: list[dict[str, float]] = []
        reported: list[dict[str, Any]] = []
        for r in range(repeats):
            params, history = run_app(app, overrides, 42 + r)
            last = history.rounds[-1]
            scores.append({k: float(last.evaluate_metrics[k]) for k in
                           ("accuracy", "auc", "mean_center_accuracy")})  # fmt: skip
            reported.append(_reported(params, history) if target is not None else {})
        row: dict[str, Any] = {"target_epsilon": target, **reported[0]}
        if target is None:
            none = dict.fromkeys(("sampling_rate", "noise_multiplier", "clip_norm", "delta",
                                  "epsilon_rdp", "epsilon_pld"))  # fmt: skip
            row.update(mechanism="none", rounds=len(history.rounds), **none)
        elif any(r != reported[0] for r in reported):
            raise AssertionError(f"runs at ε = {target} reported different accounting")
        for key in ("accuracy", "auc", "mean_center_accuracy"):
            values = [s[key] for s in scores]
            row[key] = float(np.mean(values))
            row[f"{key}_sd"] = float(np.std(values))
        row["runs"] = repeats
        rows.append(row)
    return {
        "app": "examples/central_dp (4 heart-disease hospitals), no DP: examples/heart_disease",
        "calibration": "noise_multiplier_for(target, delta, rounds, sampling_rate=1.0), RDP",
        "rows": rows,
    }


def _reported(params: dict[str, Any], history: History) -> dict[str, Any]:
    """What the run itself reported: its settings and its last round's ε."""
    metrics = history.rounds[-1].train_metrics
    primary = str(params["strategy.accountant"])
    eps = {primary: metrics["dp_epsilon"]}
    for name in ("rdp", "pld"):
        eps.setdefault(name, metrics.get(f"dp_epsilon_{name}", float("nan")))
    return {
        "mechanism": MECHANISM,
        "sampling_rate": float(metrics["dp_sampling_rate"]),
        "noise_multiplier": float(params["strategy.noise_multiplier"]),
        "clip_norm": float(metrics["dp_clip_norm"]),
        "rounds": len(history.rounds),
        "delta": float(params["strategy.delta"]),
        "epsilon_rdp": float(eps["rdp"]),
        "epsilon_pld": float(eps["pld"]),
    }


# -- tables --------------------------------------------------------------------------------
def markdown(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _kb(value: float) -> str:
    return f"{value / 1024:.1f}"


def secagg_tables(report: dict[str, Any]) -> str:
    rows = [
        [r["n"], r["dropout"], f"{r['dropped']}", r["summed"],
         f"{r['max_abs_diff_vs_fedavg']:.2e}", f"{r['quantization_step']:.2e}",
         f"{r['secagg_round_s']:.3f}", f"{r['fedavg_round_s']:.3f}",
         f"{1000 * r['secagg_node_s']:.1f}", f"{1000 * r['fedavg_node_s']:.2f}",
         _kb(r["secagg_bytes_per_node"]), _kb(r["fedavg_bytes_per_node"]),
         f"{r['bytes_ratio']:.2f}"]
        for r in report["rows"]
    ]  # fmt: skip
    head = ["n", "dropout", "dropped", "summed", "max abs diff vs FedAvg", "step Δ",
            "SecAgg+ round s", "FedAvg round s", "SecAgg+ ms/node", "FedAvg ms/node",
            "SecAgg+ KiB/node", "FedAvg KiB/node",
            "bytes ×"]  # fmt: skip
    tests = [
        [t["n"], t["values"], f"{t['chi2_statistic']:.1f} ({t['chi2_buckets']} buckets)",
         f"{t['chi2_p_value']:.3f}", f"{t['ks_statistic']:.4f}", f"{t['ks_p_value']:.3f}"]
        for t in report["uniformity"]
    ]  # fmt: skip
    return (
        markdown(head, rows)
        + "\n\nmasked vectors uniform mod M?\n\n"
        + markdown(["n", "values", "χ²", "χ² p", "KS D", "KS p"], tests)
    )


def dp_table(report: dict[str, Any]) -> str:
    def f(value: Any, spec: str) -> str:
        return "—" if value is None else format(value, spec)

    rows = [
        [f(r["target_epsilon"], "g"), r["mechanism"], f(r.get("sampling_rate"), "g"),
         f(r.get("noise_multiplier"), ".3f"), r["rounds"], f(r.get("delta"), "g"),
         f(r.get("epsilon_rdp"), ".3f"), f(r.get("epsilon_pld"), ".3f"),
         f"{r['accuracy']:.3f} ± {r['accuracy_sd']:.3f}", f"{r['mean_center_accuracy']:.3f}",
         f"{r['auc']:.3f}"]
        for r in report["rows"]
    ]  # fmt: skip
    head = ["target ε", "mechanism", "q", "z", "rounds", "δ", "ε RDP", "ε PLD",
            "accuracy", "mean per-center acc.", "AUC"]  # fmt: skip
    return markdown(head, rows)


def attack_table(report: dict[str, Any]) -> str:
    rows = []
    for r in report["rows"]:
        detail = ""
        if r["protection"] == "secagg+ddp":
            detail = f"σ = {r['sum_noise_stddev']:g} on the sum"
        if r["protection"] == "local_dp":
            detail = f"z = {r['noise_multiplier']:g}, C = {r['clip_norm']:g}, " \
                     f"ε₁ = {r['epsilon_one_round']:.3g}"  # fmt: skip
        rows.append([r["protection"], r["nodes"], r["attacked"], detail,
                     f"{r['rel_error_min']:.2e}", f"{r['rel_error_median']:.2e}",
                     f"{r['rel_error_max']:.2e}"])  # fmt: skip
    head = ["protection", "nodes", "attacked", "setting", "rel. error min", "median", "max"]
    return markdown(head, rows)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the report here")
    ap.add_argument("--quick", action="store_true", help="smaller defaults (< 2 minutes)")
    ap.add_argument("--parts", default=",".join(PARTS), help="which parts to run")
    ap.add_argument("--secagg-nodes", type=_ints, help="n for the SecAgg+ rows (3,10,50)")
    ap.add_argument("--model-values", type=int, help="model size of the SecAgg+ rows (10000)")
    ap.add_argument("--dp-epsilons", type=_floats, help="target ε of the DP rows (1,3,8)")
    ap.add_argument("--dp-rounds", type=int, help="rounds of each DP run (15, the app's)")
    ap.add_argument("--dp-repeats", type=int, help="runs per DP row (10)")
    ap.add_argument("--attack-nodes", type=int, default=3, help="nodes attacked in the clear")
    ap.add_argument("--attack-secagg-nodes", type=_ints, help="n of the SecAgg+ attacks (3,10)")
    ap.add_argument("--attack-noise", type=_floats, help="local DP z attacked (0.001,0.01,0.1,1)")
    ap.add_argument(
        "--attack-secagg-noise", type=_floats, help="σ of SecAgg+ DP noise on the sum (0.001,0.01)"
    )
    ap.add_argument("--attack-clip", type=float, default=0.5, help="local DP clip norm")
    ap.add_argument("--attack-iterations", type=int, help="L-BFGS iterations per start (300)")
    ap.add_argument("--attack-restarts", type=int, default=4, help="random starts per attack")
    args = ap.parse_args()
    quick = args.quick
    defaults = {
        "secagg_nodes": [3, 10] if quick else [3, 10, 50],
        "model_values": 1000 if quick else 10_000,
        "dp_epsilons": [1.0, 3.0, 8.0],
        "dp_rounds": 5 if quick else 15,
        "dp_repeats": 1 if quick else 10,
        "attack_secagg_nodes": [3] if quick else [3, 10],
        "attack_noise": [0.1] if quick else [0.001, 0.01, 0.1, 1.0],
        "attack_secagg_noise": [0.01] if quick else [0.001, 0.01],
        "attack_iterations": 100 if quick else 300,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        ap.error(f"unknown part(s) {unknown}; choose from {list(PARTS)}")

    # the dropouts are planned: their tracebacks and warnings would bury the tables
    logging.getLogger("consortium").setLevel(logging.CRITICAL)
    report: dict[str, Any] = {}
    started = time.perf_counter()
    if "secagg" in parts:
        began = time.perf_counter()
        report["secagg"] = privacy_secagg.secagg_rows(args.secagg_nodes, args.model_values)
        report["secagg"]["seconds"] = time.perf_counter() - began
        print(f"## SecAgg+ vs FedAvg, one round, {args.model_values} float64 values\n")
        print(secagg_tables(report["secagg"]) + "\n")
    if "dp" in parts:
        began = time.perf_counter()
        report["dp"] = dp_rows(args.dp_epsilons, args.dp_rounds, args.dp_repeats)
        report["dp"]["seconds"] = time.perf_counter() - began
        print(f"## Central DP on heart disease ({args.dp_repeats} run(s) per row)\n")
        print(dp_table(report["dp"]) + "\n")
    if "attack" in parts:
        began = time.perf_counter()
        setup = privacy_attack.Setup(
            iterations=args.attack_iterations, restarts=args.attack_restarts
        )
        report["attack"] = privacy_attack.attack_rows(
            setup, args.attack_nodes, args.attack_secagg_nodes, args.attack_noise,
            args.attack_clip, args.attack_secagg_noise,
        )  # fmt: skip
        report["attack"]["seconds"] = time.perf_counter() - began
        print("## Gradient inversion (DLG) by the server\n")
        print(attack_table(report["attack"]) + "\n")
    wall = time.perf_counter() - started
    print(f"{wall:.0f} s")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        report["settings"] = {**settings, "json": str(args.json)}
        report["wall_seconds"] = wall
        report["cpus"] = os.cpu_count()
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
