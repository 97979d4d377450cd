"""A deployed run's plot and MLflow tracking run in a child process: the run's events reach
it, the run never waits for it, and a child that hangs or dies is stopped or reported."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
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


def test_the_child_logs_to_mlflow_with_pandas_pyarrow_and_scipy_kept_out(tmp_path: Path) -> None:
    """MLflow imports them when they are installed and never uses them to log a run:
    the child (a process per run, beside the server) keeps them out, ~75 MB."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    child = TrackingProcess(ChildConfig(uri, (tmp_path / "art").as_uri(), False, ()))
    child.on_run_start(_info(tmp_path))
    child.on_round_end(_round(1))
    deadline = time.monotonic() + 60
    while not _runs_recorded(tmp_path / "mlflow.db"):  # MLflow is imported, and in use
        assert time.monotonic() < deadline, "the child never recorded the run"
        time.sleep(0.1)
    assert child.pid is not None
    with open(f"/proc/{child.pid}/maps") as fh:  # MLflow is imported: what it mapped
        mapped = fh.read()
    assert "/pydantic_core/" in mapped  # a C extension MLflow imports: the check sees them
    for name in ("pandas", "pyarrow", "scipy"):
        assert f"/site-packages/{name}/" not in mapped, f"{name} was imported"
    child.on_round_end(_round(2))
    child.on_run_end(History([_round(1), _round(2)]), failed=False)
    assert child.returncode == 0
    client = MlflowClient(tracking_uri=uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "consortium"]
    (parent,) = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if "mlflow.parentRunId" not in r.data.tags
    ]
    assert parent.info.status == "FINISHED"
    history = client.get_metric_history(parent.info.run_id, "train_loss")
    assert [m.value for m in history] == [1.0, 0.5]


def _runs_recorded(db: Path) -> int:
    """Runs in the MLflow store ``db``, read with sqlite3 alone: an MLflow client here
    would set up the store's tables while the child sets them up too, and one fails."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            return int(conn.execute("SELECT count(*) FROM runs").fetchone()[0])
    except sqlite3.Error:  # no file, or no table yet
        return 0
