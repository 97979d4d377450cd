"""Vertical logistic regression over a real simulation grid, rows aligned directly (no PSI).

The three-party heart split of examples/vertical_heart: the result equals a
centralised scikit-learn model on the joined rows, and nothing the server
receives carries the labels.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from consortium.client.app import ClientApp
from consortium.simulation.grid import SimulationGrid
from consortium.vertical.logistic import (
    PartyData,
    VerticalLRParams,
    register_vertical_lr,
    run_vertical_lr,
)

from . import recording
from .recording import Recording

pytest.importorskip("phe")
pytest.importorskip("sklearn")

APP = Path(__file__).resolve().parents[2] / "examples" / "vertical_heart"
sys.path.insert(0, str(APP))
import vertical_heart as vh  # noqa: E402

NODES = list(vh.PARTIES)
RUN_CONFIG: dict[str, Any] = {
    "vlr-iterations": 30,
    "vlr-key-bits": 512,
    "vlr-reveal-model": True,
    "drop-fraction": 0.2,
    "drop-seed": 7,
}


class RunLog(recording.RunLog):
    run_id = "vlr-test"


def _shared() -> list[str]:
    parties = [vh.party_data(p, 0.2, 7) for p in NODES]
    return sorted(set.intersection(*(set(p.ids) for p in parties)))


def _client(shared: list[str]) -> ClientApp:
    app = ClientApp()
    register_vertical_lr(app, vh.node_party, lambda context: shared)
    return app


def _grid(app: ClientApp, nodes: Sequence[str] = NODES, **config: Any) -> SimulationGrid:
    return SimulationGrid(app, list(nodes), node_config=lambda i, n: {"party": n},
                          run_config={**RUN_CONFIG, **config})  # fmt: skip


@pytest.fixture(scope="module")
def trained() -> tuple[Any, RunLog, Recording]:
    log = RunLog()
    grid = Recording(_grid(_client(_shared())))
    result = run_vertical_lr(grid, log, VerticalLRParams.from_config(RUN_CONFIG), NODES)
    return result, log, grid


def test_matches_the_centralised_model_on_the_three_party_split(trained: Any) -> None:
    result, log, _ = trained
    central = vh.central_baseline(RUN_CONFIG)
    assert abs(result.metrics["test_accuracy"] - central["test_accuracy"]) <= 0.01
    mine = vh.vertical_coefficients(result, NODES)
    assert set(mine) == set(central["coefficients"]) and len(mine) == 13
    for name, value in central["coefficients"].items():
        assert mine[name] == pytest.approx(value, abs=2e-3), name
    bias = float(result.weights["hospital"]["bias"][0])
    assert bias == pytest.approx(central["intercept"], abs=2e-3)
    # one record per iteration: loss falls, bytes and every party's share are counted
    assert [r.round for r in log.rounds] == list(range(1, 31))
    assert log.rounds[-1].train_metrics["loss"] < log.rounds[0].train_metrics["loss"]
    assert all(r.train_metrics["bytes"] > 0 for r in log.rounds)
    assert {n.node_id for n in log.rounds[0].nodes} == set(NODES)
    assert result.bytes_exchanged >= sum(r.train_metrics["bytes"] for r in log.rounds)


def test_the_server_receives_no_labels(trained: Any) -> None:
    _, _, grid = trained
    hospital = vh.party_data("hospital", 0.2, 7)
    view = vh.local_view(hospital, _shared(), VerticalLRParams.from_config(RUN_CONFIG))
    assert view.y_train is not None and view.y_test is not None
    labels = [view.y_train, view.y_test]
    checked = 0
    for reply in grid.received:
        assert reply.content is not None
        raw = bytes(reply.to_bytes())
        for y in labels:
            for dtype in (np.int64, np.int32, np.uint8, np.float64, np.float32, np.bool_):
                assert y.astype(dtype).tobytes() not in raw
        for record in reply.content.arrays.values():
            for array in record.values():
                for y in labels:
                    if array.dtype.kind in "fiu" and array.shape[-1:] == y.shape:
                        checked += 1
                        # residuals sigmoid(u) - y in the clear would give y by their sign
                        signed = array.view(np.int64) if array.dtype == np.uint64 else array
                        for row in signed.reshape(-1, y.shape[0]):
                            assert not np.array_equal(row < 0, y == 1)
                            assert not np.array_equal(row, y.astype(row.dtype))
    assert checked > 0  # the partial logits were looked at


def test_the_label_holder_can_read_only_the_sum_of_the_passive_logits(trained: Any) -> None:
    """Iteration 1 starts from zero weights: each passive party's logits are 0, so what it
    sends is its mask alone, random; the two masks cancel in the sum modulo 2**64."""
    _, _, grid = trained
    first = [r for r in grid.received if r.metadata.kind == "vlr.forward" and r.metadata.round == 1]
    assert sorted(r.metadata.src for r in first) == ["cardiology", "clinical-lab"]
    for name in ("u_train", "u_test"):
        rows = [r.content.arrays["vlr"][name] for r in first if r.content is not None]
        assert all(row.dtype == np.uint64 and np.count_nonzero(row) == row.size for row in rows)
        assert not np.array_equal(rows[0], rows[1])
        assert not (rows[0] + rows[1]).any()  # uint64: the sum wraps to exactly 0


def test_two_parties_train_too() -> None:
    """One passive party: the label holder and the cardiology lab only."""
    shared = _shared()
    log = RunLog()
    grid = _grid(_client(shared), ["hospital", "cardiology"], **{"vlr-iterations": 5})
    params = VerticalLRParams.from_config({**RUN_CONFIG, "vlr-iterations": 5})
    result = run_vertical_lr(grid, log, params, ["hospital", "cardiology"])
    assert [r.round for r in log.rounds] == [1, 2, 3, 4, 5]
    assert 0.6 < result.metrics["test_accuracy"] <= 1.0
    assert set(result.weights) == {"hospital", "cardiology"}


def test_weights_stay_home_unless_the_run_reveals_them() -> None:
    config = {**RUN_CONFIG, "vlr-iterations": 2, "vlr-reveal-model": False}
    grid = _grid(_client(_shared()), **config)
    result = run_vertical_lr(grid, RunLog(), VerticalLRParams.from_config(config), NODES)
    assert result.weights == {}


def test_party_data_is_checked() -> None:
    with pytest.raises(Exception, match="unique"):
        PartyData(ids=["a", "a"], x=np.zeros((2, 1)), feature_names=("f",))
    with pytest.raises(Exception, match="NaN"):
        PartyData(ids=["a"], x=np.full((1, 1), np.nan), feature_names=("f",))
    with pytest.raises(Exception, match="labels"):
        PartyData(ids=["a"], x=np.zeros((1, 1)), feature_names=("f",), y=np.asarray([2]))
