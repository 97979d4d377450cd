"""Smoke test of ``benchmarks/privacy.py --quick`` with tiny sizes (~30 s): every part runs
and its figures are sane (SecAgg+ matches FedAvg within a quantisation step, the run
reports ε at or below its target, the unprotected attack works and the protected ones
do not)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "privacy.py"

DP_KEYS = {
    "mechanism",
    "sampling_rate",
    "noise_multiplier",
    "rounds",
    "delta",
    "epsilon_rdp",
    "epsilon_pld",
    "accuracy",
}


def test_quick_run_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "privacy.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out),
         "--secagg-nodes", "3", "--model-values", "200", "--dp-epsilons", "8",
         "--dp-rounds", "2", "--attack-nodes", "2", "--attack-iterations", "60",
         "--attack-restarts", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "## Gradient inversion (DLG) by the server" in done.stdout
    report = json.loads(out.read_text())
    assert report.keys() >= {"secagg", "dp", "attack", "settings"}

    rows = report["secagg"]["rows"]
    assert [(r["n"], r["dropout"]) for r in rows] == [
        (3, "none"), (3, "after-share-keys"), (3, "after-masked-input")
    ]  # fmt: skip
    for r in rows:
        assert 0 <= r["max_abs_diff_vs_fedavg"] <= r["quantization_step"]
        assert r["secagg_bytes_per_node"] > r["fedavg_bytes_per_node"] > 0
        assert r["secagg_round_s"] > 0 and r["fedavg_round_s"] > 0
    assert [r["summed"] for r in rows] == [3, 2, 3]
    (uniform,) = report["secagg"]["uniformity"]
    assert 0 <= uniform["chi2_p_value"] <= 1 and 0 <= uniform["ks_p_value"] <= 1

    none, dp = report["dp"]["rows"]
    assert none["mechanism"] == "none" and none["target_epsilon"] is None
    assert none.keys() >= DP_KEYS and none["epsilon_rdp"] is None and none["rounds"] == 2
    assert dp.keys() >= DP_KEYS and dp["target_epsilon"] == 8
    assert dp["rounds"] == 2 and dp["sampling_rate"] == 1.0 and dp["delta"] == 1e-5
    # calibrated for RDP, so the run's RDP ε meets the target and PLD's is tighter
    assert 7.5 < dp["epsilon_rdp"] <= 8.0 and dp["epsilon_pld"] <= dp["epsilon_rdp"]
    assert dp["noise_multiplier"] > 0
    assert 0 <= dp["accuracy"] <= 1 and 0 <= none["accuracy"] <= 1

    attacks = {(r["protection"], r["attacked"]): r for r in report["attack"]["rows"]}
    clear = attacks[("none", "each node's own update, 1 dummy row")]
    summed = attacks[("secagg", "the sum, 1 dummy row")]
    noised = attacks[("local_dp", "the noised update, 1 dummy row")]
    noised_sum = attacks[("secagg+ddp", "the noised sum, 3 dummy rows")]
    assert clear["nodes"] == 2 and summed["nodes"] == 3
    assert clear["rel_error_max"] < 1e-3  # batch size 1 in the clear: the row comes back
    for protected in (summed, noised, noised_sum):
        assert protected["rel_error_min"] > 0.1
    assert math.isfinite(noised["epsilon_one_round"])
