"""ProgressObserver, PlotObserver and LogObserver fed synthetic runs."""

from __future__ import annotations

import io
import logging
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from consortium.core.history import (
    LOGGED_FAILURES,
    History,
    NodeResult,
    Outcome,
    RoundRecord,
    RunInfo,
)
from consortium.tracking import LogObserver, Observers, PlotObserver, ProgressObserver, RunObserver
from consortium.tracking.log import format_value, node_counts
from consortium.tracking.plot import metric_families

NODES = ["a", "b", "c", "d"]
TRACEBACK = 'Traceback (most recent call last):\n  File "app.py", line 3\nValueError: boom'


def make_round(rnd: int, *, fail: str | None = None, nodes: list[str] = NODES) -> RoundRecord:
    """A round where every node trains and evaluates; ``fail`` raises while training."""
    results: list[NodeResult] = []
    for node in nodes:
        if node == fail:
            results.append(
                NodeResult(
                    node, "train", Outcome.FAILED, reason="ValueError: boom", traceback=TRACEBACK
                )
            )
            results.append(NodeResult(node, "evaluate", Outcome.TIMEOUT, reason="no reply"))
            continue
        results.append(NodeResult(node, "train", Outcome.OK, {"loss": 1.0 / rnd}, 100))
        results.append(NodeResult(node, "evaluate", Outcome.OK, {"auc": 0.7}, 50))
    return RoundRecord(
        round=rnd,
        train_metrics={"loss": 1.0 / rnd, "num_examples": 400},
        evaluate_metrics={"loss": 0.8 / rnd, "accuracy": 0.5 + 0.1 * rnd, "auc": 0.7},
        central_metrics={"accuracy": 0.6 + 0.1 * rnd},
        nodes=results,
        seconds=1.5,
    )


def feed(obs: RunObserver, run_dir: Path | None = None, *, failed: bool = False) -> History:
    info = RunInfo(
        "run-42",
        3,
        list(NODES),
        {"lr": 0.1, "strategy": "fedavg"},
        str(run_dir) if run_dir else None,
    )
    history = History()
    obs.on_run_start(info)
    for rnd in (1, 2, 3):
        record = make_round(rnd, fail="c" if rnd == 2 else None)
        history.rounds.append(record)
        obs.on_round_end(record)
    obs.on_run_end(history, failed=failed)
    return history


def recording_console(*, terminal: bool = False) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=120, color_system=None), out


# -- helpers ----------------------------------------------------------------------
def test_node_counts_count_each_node_once() -> None:
    assert node_counts(make_round(1)) == (4, 0)
    assert node_counts(make_round(2, fail="c")) == (3, 1)


def test_format_value() -> None:
    assert format_value(3) == "3"
    assert format_value(0.812345) == "0.8123"
    assert format_value(400.0) == "400"
    assert format_value(123456.7) == "1.235e+05"
    assert format_value(float("nan")) == "nan"


def test_observers_satisfy_the_protocol(tmp_path: Path) -> None:
    console, _ = recording_console()
    observers: list[RunObserver] = [LogObserver(), ProgressObserver(console), PlotObserver()]
    assert all(isinstance(o, RunObserver) for o in observers)
    feed(Observers(observers), tmp_path)
    assert (tmp_path / "metrics.png").is_file()


# -- progress -----------------------------------------------------------------------
def test_progress_plain_lines_when_not_a_terminal() -> None:
    console, out = recording_console()
    feed(ProgressObserver(console))
    text = out.getvalue()
    lines = text.splitlines()
    assert lines[0] == "run run-42: 3 rounds, 4 nodes"
    assert lines[1].startswith("round 1/3  1.5s  nodes 4 ok  train_loss=1  eval_loss=0.8000")
    assert "eval_accuracy=0.6000" in lines[1] and "central_accuracy=0.7000" in lines[1]
    assert "num_examples" not in text
    assert "eta " in lines[1]
    assert "nodes 3 ok, 1 failed" in lines[2]
    assert lines[-1].startswith("run run-42 finished: 3 rounds in ")
    assert "\x1b" not in text  # no control codes, no live display


def test_progress_bar_on_a_terminal() -> None:
    console, out = recording_console(terminal=True)
    feed(ProgressObserver(console, metrics=["eval_auc"]), failed=True)
    text = out.getvalue()
    assert "round 3/3" in text and "eval_auc=0.7000" in text
    assert "━" in text  # the bar was drawn
    assert "eval_loss" not in text
    assert "failed after 3 of 3 rounds" in text


def test_progress_disabled_prints_nothing() -> None:
    console, out = recording_console()
    feed(ProgressObserver(console, enabled=False))
    assert out.getvalue() == ""


def test_progress_survives_a_broken_console(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError("stdout closed")

    with caplog.at_level(logging.WARNING):
        feed(ProgressObserver(Console(file=Broken())))
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_progress_is_cheap_with_many_nodes() -> None:
    console, out = recording_console()
    obs = ProgressObserver(console)
    nodes = [f"n{i}" for i in range(10_000)]
    record = make_round(1, nodes=nodes, fail="n7")
    obs.on_run_start(RunInfo("big", 1, nodes, {}))
    started = time.perf_counter()
    obs.on_round_end(record)
    assert time.perf_counter() - started < 0.5
    assert "nodes 9999 ok, 1 failed" in out.getvalue()


# -- plot ---------------------------------------------------------------------------
def test_plot_writes_a_png(tmp_path: Path) -> None:
    obs = PlotObserver()
    feed(obs, tmp_path)
    png = tmp_path / "metrics.png"
    assert obs.path == png
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp"))


def test_plot_groups_metrics_into_families() -> None:
    history = History([make_round(1), make_round(2)])
    families = metric_families(history)
    assert sorted(families) == ["accuracy", "auc", "loss", "num_examples"]
    assert sorted(families["accuracy"]) == ["central", "eval"]
    assert families["loss"]["train"] == [(1, 1.0), (2, 0.5)]


def test_plot_without_run_dir_or_metrics_writes_nothing(tmp_path: Path) -> None:
    obs = PlotObserver()
    feed(obs, None)
    assert obs.path is None
    obs.on_run_start(RunInfo("empty", 1, [], {}, str(tmp_path)))
    obs.on_run_end(History(), failed=True)
    assert obs.path is None and not list(tmp_path.iterdir())


def test_plot_without_matplotlib_warns_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    obs = PlotObserver()
    with caplog.at_level(logging.WARNING, logger="consortium.tracking.plot"):
        feed(obs, tmp_path)
        feed(obs, tmp_path)
    assert len(caplog.records) == 1
    assert "matplotlib" in caplog.records[0].getMessage()
    assert not (tmp_path / "metrics.png").exists()


def test_plot_on_an_unwritable_dir_does_not_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with caplog.at_level(logging.WARNING, logger="consortium.tracking.plot"):
        feed(PlotObserver(), blocker / "run")
    assert len(caplog.records) == 1


# -- log ----------------------------------------------------------------------------
def test_log_one_line_per_round_and_a_warning_per_failed_node(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="consortium.run"):
        feed(LogObserver())
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    rounds = [m for lvl, m in messages if lvl == logging.INFO and " round=" in m]
    assert len(rounds) == 3
    assert rounds[0].startswith("run=run-42 round=1/3 seconds=1.500 nodes_ok=4 nodes_failed=0 ")
    assert "eval_accuracy=0.6000" in rounds[0]
    assert "nodes_ok=3 nodes_failed=1" in rounds[1]
    warnings = [m for lvl, m in messages if lvl == logging.WARNING]
    assert len(warnings) == 2  # node c: train failed, evaluate timed out
    assert warnings[0].startswith(
        "run=run-42 round=2 node=c stage=train outcome=failed reason=ValueError: boom\n"
    )
    assert TRACEBACK in warnings[0]
    assert "outcome=timeout reason=no reply" in warnings[1]
    record = next(r for r in caplog.records if "round=1/" in r.getMessage())
    assert record.consortium["metrics"]["eval_auc"] == 0.7  # type: ignore[attr-defined]
    assert messages[-1] == (logging.INFO, "run=run-42 finished rounds=3")


def test_log_failed_run_and_warning_cap(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="consortium.run"):
        feed(LogObserver(max_node_warnings=1), failed=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert warnings[1] == "run=run-42 round=2 1 more node failures not shown: c(evaluate:timeout)"
    assert caplog.records[-1].levelno == logging.ERROR
    assert caplog.records[-1].getMessage() == "run=run-42 failed after rounds=3/3"


def test_log_lists_at_most_the_first_failures_of_a_large_round(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """10,000 failed nodes: the one line past the cap names the first LOGGED_FAILURES and
    counts the rest, instead of naming them all."""
    failed = [NodeResult(str(i), "train", Outcome.FAILED, reason="boom") for i in range(10_000)]
    record = RoundRecord(round=1, nodes=failed)
    obs = LogObserver(max_node_warnings=0)
    with caplog.at_level(logging.WARNING, logger="consortium.run"):
        obs.on_round_end(record)
    (line,) = [r.getMessage() for r in caplog.records]
    shown = "; ".join(f"{i}(train:failed)" for i in range(LOGGED_FAILURES))
    assert line == (
        f"run= round=1 10000 more node failures not shown: {shown}; "
        f"and {10_000 - LOGGED_FAILURES} more"
    )
