"""On ``--resume`` the server reads checkpoints its run's app process wrote: they are
as untrusted as that process's live reports, so their rounds pass the same checks
before any reaches the state store."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from consortium.core.arrays import Arrays
from consortium.core.history import History, RoundRecord
from consortium.core.records import RecordLimits
from consortium.server.checkpoint import save_checkpoint
from consortium.server.run_files import load_app_checkpoint

MODEL = Arrays({"w": np.zeros(3, dtype=np.float32)})


def _save(folder: Path, rnd: int, rounds: list[RoundRecord], run_id: str = "run-1") -> None:
    save_checkpoint(folder, rnd, MODEL, {}, History(rounds), run_id=run_id)


def test_a_checkpoint_with_a_good_history_is_resumed(tmp_path: Path) -> None:
    _save(tmp_path, 1, [RoundRecord(round=1, central_metrics={"loss": float("nan")})])

    checkpoint = load_app_checkpoint(tmp_path, "run-1", RecordLimits())

    assert checkpoint is not None and checkpoint.round == 1


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (RoundRecord(round=2, train_metrics={str(i): 1.0 for i in range(5000)}), "train metrics"),
        (RoundRecord(round=2, central_metrics={"loss": "0.1"}), "must be a number"),  # type: ignore[dict-item]
        (RoundRecord(round=2, central_metrics={"k" * 10_000: 1.0}), "central metrics"),
    ],
)
def test_a_checkpoint_whose_history_a_live_app_could_not_report_is_skipped(
    tmp_path: Path, bad: RoundRecord, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    _save(tmp_path, 1, [RoundRecord(round=1)])
    _save(tmp_path, 2, [RoundRecord(round=1), bad])

    with caplog.at_level(logging.WARNING, logger="consortium.server"):
        checkpoint = load_app_checkpoint(tmp_path, "run-1", RecordLimits())

    assert checkpoint is not None and checkpoint.round == 1  # the older, good one
    assert "round-00000002" in caplog.text or "skipping checkpoint" in caplog.text
    assert why in caplog.text


def test_a_checkpoint_of_another_run_is_skipped(tmp_path: Path) -> None:
    _save(tmp_path, 1, [RoundRecord(round=1)], run_id="someone-else")

    assert load_app_checkpoint(tmp_path, "run-1", RecordLimits()) is None
