"""Split learning over a real simulation grid, rows aligned directly (no PSI).

The three-party heart split of examples/vertical_heart: the split model ends
where the same layers trained on the joined columns end (same seed, same
batches), and nothing the server receives carries the labels or the rows.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from consortium.client.app import ClientApp
from consortium.core.errors import ConfigError
from consortium.core.rng import derive_rng
from consortium.simulation.grid import SimulationGrid
from consortium.vertical.logistic_party import local_view
from consortium.vertical.split import SplitParams, register_split_learning, run_split_learning
from consortium.vertical.split_protocol import NOISE_STREAM

from .recording import Recording
from .test_vertical_lr import RunLog

pytest.importorskip("torch")

APP = Path(__file__).resolve().parents[2] / "examples" / "vertical_heart"
sys.path.insert(0, str(APP))
import vertical_heart as vh  # noqa: E402

NODES = list(vh.PARTIES)
SEED = 5
RUN_CONFIG: dict[str, Any] = {
    "split-epochs": 8,
    "split-batch-size": 32,
    "split-lr": 0.1,
    "split-reveal-model": True,
    "drop-fraction": 0.2,
    "drop-seed": 7,
}


def shared() -> list[str]:
    parties = [vh.party_data(p, 0.2, 7) for p in NODES]
    return sorted(set.intersection(*(set(p.ids) for p in parties)))


def client(rows: list[str]) -> ClientApp:
    app = ClientApp()
    register_split_learning(app, vh.node_party, lambda context: rows)
    return app


def grid(
    app: ClientApp, parties: dict[str, str], seed: int = SEED, **config: Any
) -> SimulationGrid:
    """A simulation grid of nodes ``parties`` (node id -> the party it is)."""
    return SimulationGrid(app, list(parties), node_config=lambda i, n: {"party": parties[n]},
                          run_config={**RUN_CONFIG, **config}, seed=seed)  # fmt: skip


def central(parties: dict[str, str], seed: int = SEED, **config: Any) -> Any:
    """The same layers on the joined columns: label holder first, then by node id."""
    from consortium.vertical.split_central import train_central

    params = SplitParams.from_config({**RUN_CONFIG, **config})
    rows = shared()
    views = {node: local_view(vh.party_data(p, 0.2, 7), rows, params.split_view)
             for node, p in parties.items()}  # fmt: skip
    order = sorted(views, key=lambda node: (parties[node] != vh.LABEL_HOLDER, node))
    return train_central([(node, views[node]) for node in order], params, seed)


def simulate(
    parties: dict[str, str], seed: int = SEED, **config: Any
) -> tuple[Any, RunLog, Recording]:
    log = RunLog()
    recording = Recording(grid(client(shared()), parties, seed, **config))
    params = SplitParams.from_config({**RUN_CONFIG, **config})
    result = run_split_learning(recording, log, params, list(parties))
    return result, log, recording


SAME = {n: n for n in NODES}


@pytest.fixture(scope="module")
def trained() -> tuple[Any, RunLog, Recording]:
    return simulate(SAME)


def test_matches_the_model_trained_on_the_joined_columns(trained: Any) -> None:
    result, log, _ = trained
    joined = central(SAME)
    # the bar: within one point of accuracy; in fact the same model
    assert abs(result.metrics["test_accuracy"] - joined.metrics["test_accuracy"]) <= 0.01
    assert result.metrics["test_accuracy"] > 0.7
    for name, value in joined.metrics.items():
        assert result.metrics[name] == pytest.approx(value, abs=1e-5), name
    for node in NODES:
        assert set(result.weights[node]) == set(joined.weights[node])
        for layer, value in joined.weights[node].items():
            np.testing.assert_array_equal(result.weights[node][layer], value)
    # one record per epoch: every party's bytes, the loss falls
    assert [r.round for r in log.rounds] == list(range(1, 9))
    assert [r.evaluate_metrics["accuracy"] for r in log.rounds] == pytest.approx(
        [m["test_accuracy"] for m in joined.epochs], abs=1e-6)  # fmt: skip
    assert log.rounds[-1].train_metrics["loss"] < log.rounds[0].train_metrics["loss"]
    assert {n.node_id for n in log.rounds[0].nodes} == set(NODES)
    assert result.bytes_exchanged >= sum(r.train_metrics["bytes"] for r in log.rounds) > 0
    # two round trips per mini-batch and per evaluation, plus setup and finish
    steps = -(-result_train_rows(result) // 32)
    assert result.round_trips == 8 * 2 * (steps + 1) + 2


def result_train_rows(result: Any) -> int:
    params = SplitParams.from_config(RUN_CONFIG)
    return local_view(vh.party_data("hospital", 0.2, 7), shared(), params.split_view).train_rows


def _views() -> list[Any]:
    params = SplitParams.from_config(RUN_CONFIG)
    return [local_view(vh.party_data(p, 0.2, 7), shared(), params.split_view) for p in NODES]


def test_the_server_receives_no_labels_and_no_rows(trained: Any) -> None:
    _, _, recording = trained
    views = _views()
    label = views[0]
    assert label.y_train is not None and label.y_test is not None
    secrets = [label.y_train, label.y_test]
    for p in NODES:  # each party's raw and standardised columns
        data = vh.party_data(p, 0.2, 7)
        secrets += list(data.x.T)
    for view in views:
        secrets += list(view.x_train.T) + list(view.x_test.T)
    checked = 0
    for reply in recording.received:
        assert reply.content is not None
        raw = bytes(reply.to_bytes())
        for secret in secrets:
            for dtype in (np.int64, np.int32, np.uint8, np.float64, np.float32):
                assert secret.astype(dtype).tobytes() not in raw
        for record in reply.content.arrays.values():
            for array in record.values():
                checked += array.size
                assert array.dtype == np.float32  # cut-layer values only
                for y in secrets[:2]:  # no column of what travels is the labels
                    flat = array.reshape(-1, array.shape[-1])
                    if flat.shape[0] == y.shape[0]:
                        for column in flat.T:
                            assert not np.array_equal(column > 0, y == 1)
    assert checked > 0
    kinds = {r.metadata.kind for r in recording.received}
    assert kinds == {"split.setup", "split.forward", "split.top", "split.finish"}


def test_the_same_seed_gives_the_same_model_and_node_ids_seed_the_layers() -> None:
    a, _, _ = simulate(SAME, **{"split-epochs": 1})
    b, _, _ = simulate(SAME, **{"split-epochs": 1})
    c, _, _ = simulate(SAME, seed=SEED + 1, **{"split-epochs": 1})
    for layer, value in a.weights["cardiology"].items():
        assert np.array_equal(value, b.weights["cardiology"][layer])
    assert not np.array_equal(a.weights["cardiology"]["bottom.0.weight"],
                              c.weights["cardiology"]["bottom.0.weight"])  # fmt: skip


def test_cut_layer_noise_changes_what_is_sent_and_still_trains() -> None:
    config = {"split-epochs": 4}
    clean, _, sent_clean = simulate(SAME, **config)
    noisy, _, sent_noisy = simulate(SAME, **config, **{"split-noise-std": 0.5})
    first = [_activations(r, "cardiology") for r in (sent_clean, sent_noisy)]
    difference = first[1] - first[0]  # the same layers and rows at tick 1: only the noise
    drawn = derive_rng(SEED, 1, "cardiology", stream=NOISE_STREAM).normal(0, 0.5, first[0].shape)
    np.testing.assert_allclose(difference, drawn, atol=1e-5)  # the node's context.rng(tick)
    assert drawn.std() > 0.4
    assert noisy.metrics["test_accuracy"] > 0.7
    assert noisy.metrics != clean.metrics


def _activations(recording: Recording, node: str) -> np.ndarray:
    for reply in recording.received:
        if reply.metadata.kind == "split.forward" and reply.metadata.src == node:
            assert reply.content is not None
            value: np.ndarray = reply.content.arrays["split"]["activations"]
            return value.astype(np.float64)
    raise AssertionError(f"no activations from {node}")


def test_two_parties_train_too() -> None:
    parties = {"hospital": "hospital", "cardiology": "cardiology"}
    result, log, _ = simulate(parties, **{"split-epochs": 2})
    assert [r.round for r in log.rounds] == [1, 2]
    assert set(result.weights) == set(parties)
    assert 0.5 < result.metrics["test_accuracy"] <= 1.0


def test_layers_stay_home_unless_the_run_reveals_them() -> None:
    result, _, _ = simulate(SAME, **{"split-epochs": 1, "split-reveal-model": False})
    assert result.weights == {}


@pytest.mark.parametrize(
    ("key", "value"),
    [("split-epochs", 0), ("split-epochs", 1.5), ("split-lr", "fast"), ("split-noise-std", -1.0),
     ("split-reveal-model", "yes"), ("split-batch-size", 0), ("split-cut", True)],
)  # fmt: skip
def test_run_config_is_checked_by_name(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key):
        SplitParams.from_config({key: value})
