"""`consortium demo` prints the per-round table and the local/pooled/federated comparison."""

from __future__ import annotations

from pathlib import Path

import pytest

from consortium.cli.main import main


def test_demo_prints_the_comparison(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--run-dir", str(tmp_path), "--no-tracking", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    for needle in (
        "Federated rounds",
        "Local 0",
        "Local 3",
        "Pooled",
        "FedAvg, FLamby setting",
        "FedAvg, Consortium default",
        "Mean per-hospital test accuracy",
    ):
        assert needle in out, needle
    assert (tmp_path / "model.npz").exists()
    assert (tmp_path / "run.log").exists()
