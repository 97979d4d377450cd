"""examples/vertical_heart with ``model = "boost"`` from the command line: PSI, then
vertical boosting, then the comparison with LightGBM."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from consortium.cli.main import main

pytest.importorskip("phe")
pytest.importorskip("nacl")
pytest.importorskip("lightgbm")

APP = Path(__file__).resolve().parents[2] / "examples" / "vertical_heart"


def test_simulate_runs_psi_then_vertical_boosting_and_compares(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["simulate", str(APP), "--run-dir", str(tmp_path), "--no-tracking", "--no-progress",
            "--no-plot", "--run-config", "model=boost", "--run-config", "vsb-key-bits=512",
            "--run-config", "vsb-trees=3"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    shared = re.search(r"shared patients: (\d+)", out)
    accuracy = re.search(r"test accuracy\s+([\d.]+)\s+([\d.]+)", out)
    owners = re.search(r"first tree's splits \(level order\): (.*)", out)
    assert shared is not None and accuracy is not None and owners is not None, out
    assert int(shared.group(1)) == 377  # the PSI's result, as in the LR run
    assert float(accuracy.group(1)) > 0.7 and float(accuracy.group(2)) > 0.7
    assert set(owners.group(1).split(", ")) <= {"hospital", "cardiology", "clinical-lab", "-"}
    log = (tmp_path / "run.log").read_text()
    assert "round=3/3" in log and "train_bytes=" in log and "eval_accuracy=" in log
    assert "vertical boosting" in log  # the boosting run, not vertical LR
