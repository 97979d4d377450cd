"""A deployed run's plot and MLflow tracking run in a child process: the run's events reach
it, the run never waits for it, and a child that hangs or dies is stopped or reported."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytest

from consortium.core.history import History, NodeResult, Outcome, RoundRecord, RunInfo
from consortium.server.tracking_process import ChildConfig, TrackingProcess

PLOT_ONLY = ChildConfig(tracking_uri=None, artifact_location=None, plot=True, artifacts=())


def _info(run_dir: Path, nodes: int = 2) -> RunInfo:
    return RunInfo("r1", 3, [f"n{i}" for i in range(nodes)], {"lr": 0.1}, str(run_dir))


def _round(number: int, nodes: int = 2) -> RoundRecord:
    results = [
        NodeResult(f"n{i}", "train", Outcome.OK, {"loss": 1.0 / number}, 10, seconds=0.1)
        for i in range(nodes)
    ]
    return RoundRecord(number, train_metrics={"loss": 1.0 / number}, nodes=results)


def test_the_child_records_the_run_the_server_reports(tmp_path: Path) -> None:
    child = TrackingProcess(PLOT_ONLY)
    rounds = [_round(1), _round(2)]
    child.on_run_start(_info(tmp_path))
    for record in rounds:
        child.on_round_end(record)
    child.on_run_end(History(rounds), failed=False)
    # on_run_end returned: the child has drawn the plot and exited
    assert child.returncode == 0
    assert child.dropped == 0
    assert (tmp_path / "metrics.png").stat().st_size > 0


def test_a_server_gone_before_the_end_still_gets_the_run_recorded(tmp_path: Path) -> None:
    child = TrackingProcess(PLOT_ONLY)
    child.on_run_start(_info(tmp_path))
    child.on_round_end(_round(1))
    child.close()  # the run's thread ended without an end event
    assert child.returncode == 0
    assert (tmp_path / "metrics.png").stat().st_size > 0


def test_a_child_that_reads_nothing_never_holds_up_a_round(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hung = (sys.executable, "-c", "import time; time.sleep(60)")
    child = TrackingProcess(PLOT_ONLY, command=hung, queue_size=4, flush_timeout=1.0)
    child.on_run_start(_info(tmp_path, nodes=200))
    began = time.monotonic()
    for number in range(1, 41):  # ~40 KB each: the pipe and the queue fill up
        child.on_round_end(_round(number, nodes=200))
    assert time.monotonic() - began < 1.0
    assert child.dropped > 0
    with caplog.at_level(logging.WARNING, "consortium.server"):
        began = time.monotonic()
        child.on_run_end(History([]), failed=False)
        waited = time.monotonic() - began
    assert waited < 8.0  # flush_timeout, then the child is killed
    assert child.returncode is not None and child.returncode < 0  # killed by a signal
    assert "fallen behind" in caplog.text
    assert "still busy" in caplog.text


def test_a_child_that_dies_is_reported_and_the_run_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dies = (sys.executable, "-c", "import sys; print('no store here', file=sys.stderr); "
            "sys.exit(3)")  # fmt: skip
    child = TrackingProcess(PLOT_ONLY, command=dies, flush_timeout=10.0)
    with caplog.at_level(logging.WARNING, "consortium.server"):
        child.on_run_start(_info(tmp_path))
        for number in range(1, 4):
            child.on_round_end(_round(number))
        child.on_run_end(History([]), failed=True)
    assert child.returncode == 3
    assert "tracking of run r1: no store here" in caplog.text
    assert "ended with status 3" in caplog.text


def test_a_child_that_cannot_start_leaves_the_run_untracked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    child = TrackingProcess(PLOT_ONLY, command=(str(tmp_path / "no-such-program"),))
    with caplog.at_level(logging.WARNING, "consortium.server"):
        child.on_run_start(_info(tmp_path))
        child.on_round_end(_round(1))
        child.on_run_end(History([_round(1)]), failed=False)
    assert "could not start its process" in caplog.text
    assert child.returncode is None
