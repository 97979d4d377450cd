"""docs/privacy.md stays true: its Python snippets run, its examples run from the CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "privacy.md"
EXE = str(Path(sys.executable).parent / "consortium")


def blocks(language: str) -> list[str]:
    """The DP part's blocks (the SecAgg+ section's are tests/privacy/test_secagg_docs.py's)."""
    text = DOC.read_text().split("\n## Secure aggregation (SecAgg+)", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def run_python(code: str, tmp_path: Path) -> str:
    script = tmp_path / "snippet.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, code + done.stdout + done.stderr
    return done.stdout


def test_every_python_snippet_runs_and_prints_what_the_text_says(tmp_path: Path) -> None:
    snippets = blocks("python")
    assert len(snippets) == 5
    outputs = [run_python(code, tmp_path) for code in snippets]
    central, adaptive, calibration, local, share = outputs
    rounds = [line.split() for line in central.splitlines()]
    assert [r[0] for r in rounds] == ["1", "2", "3"]
    assert all(float(pld) < float(rdp) for _, rdp, pld in rounds)
    assert adaptive.strip() == "adaptive"
    assert calibration.split()[0] == "2.471" and float(calibration.split()[1]) <= 8.0
    assert float(local) > 0
    assert share.strip() == "int64 (5,)"


def run_cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    command = [EXE, "simulate", *args, "--run-dir", str(tmp_path / "run")]
    command += ["--no-tracking", "--no-plot", "--no-progress"]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_central_dp_example_stops_before_crossing_max_epsilon(tmp_path: Path) -> None:
    """z = 1 with all 4 silos: ε (RDP) is 4.7, 7.1, 9.0 after rounds 1-3; a budget of 8
    lets two rounds run and stops the run before the third, saying why."""
    done = run_cli(
        "examples/central_dp",
        "--run-config",
        "noise-multiplier=1.0",
        "--run-config",
        "max-epsilon=8.0",
        tmp_path=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr  # finished, not failed
    output = done.stdout + done.stderr
    assert "round 3 would raise ε" in output and "max_epsilon=8" in output
    assert (tmp_path / "run" / "model.npz").exists()  # the model of the 2 released rounds
    log = (tmp_path / "run" / "run.log").read_text()
    epsilons = [float(e) for e in re.findall(r"train_dp_epsilon=([0-9.]+)", log)]
    assert len(epsilons) == 2 and epsilons[0] < epsilons[1] <= 8.0


def test_the_opacus_example_reports_each_silos_growing_epsilon(tmp_path: Path) -> None:
    pytest.importorskip("opacus")
    (command,) = [
        line for block in blocks("bash") for line in block.splitlines() if "dp_sgd_opacus" in line
    ]
    assert command.split()[3:] == ["--run-config", "num-rounds=2"]
    done = run_cli("examples/dp_sgd_opacus", "--run-config", "num-rounds=2", tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    log = (tmp_path / "run" / "run.log").read_text()
    epsilons = [float(e) for e in re.findall(r"train_dp_sgd_epsilon=([0-9.]+)", log)]
    assert len(epsilons) == 2 and 0 < epsilons[0] < epsilons[1]
    assert (tmp_path / "run" / "model.npz").exists()
