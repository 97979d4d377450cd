"""examples/vertical_heart from the command line: PSI, then vertical LR, then the comparison."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from consortium.cli.main import main
from consortium.server import load_model

pytest.importorskip("phe")
pytest.importorskip("nacl")
pytest.importorskip("sklearn")

APP = Path(__file__).resolve().parents[2] / "examples" / "vertical_heart"


def test_simulate_runs_psi_then_vertical_lr_and_compares(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["simulate", str(APP), "--run-dir", str(tmp_path), "--no-tracking", "--no-progress",
            "--no-plot", "--run-config", "vlr-key-bits=512",
            "--run-config", "vlr-iterations=20"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    shared = re.search(r"shared patients: (\d+)", out)
    accuracy = re.search(r"test accuracy\s+([\d.]+)\s+([\d.]+)", out)
    assert shared is not None and accuracy is not None, out
    assert 300 < int(shared.group(1)) < 450  # 740 patients, each party lost 20%
    vertical, central = float(accuracy.group(1)), float(accuracy.group(2))
    assert abs(vertical - central) <= 0.01 and central > 0.7
    for name in ("hospital.age", "cardiology.thalach", "clinical-lab.chol"):
        row = re.search(rf"{re.escape(name)}\s+(-?[\d.]+)\s+(-?[\d.]+)", out)
        assert row is not None and abs(float(row.group(1)) - float(row.group(2))) < 0.01, name
    model = load_model(tmp_path / "model.npz")
    assert model["hospital.weights"].shape == (5,) and model["hospital.bias"].shape == (1,)
    assert model["cardiology.weights"].shape == (5,)
    assert model["clinical-lab.weights"].shape == (3,)
    log = (tmp_path / "run.log").read_text()
    assert "round=20/20" in log and "train_bytes=" in log and "eval_accuracy=" in log
