"""MLflowObserver: synthetic runs fed to the observer, read back with MlflowClient."""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from consortium.core.history import History, NodeResult, Outcome, RoundRecord, RunInfo
from consortium.tracking import MLflowObserver
from consortium.tracking.mlflow_tracker import metric_key, summarize

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

NODES = ["hospital-a", "hospital-b", "hospital-c", "hospital-d"]
PARAMS: dict[str, Any] = {
    "num_rounds": 3,
    "local_epochs": 2,
    "learning_rate": 0.05,
    "batch_size": 32,
    "optimizer": "sgd",
    "strategy": "fedavg",
    "layers": [64, 32],
    "use_dp": False,
}


def make_round(rnd: int, *, fail: str | None = None) -> RoundRecord:
    """One synthetic round: every node trains and evaluates; ``fail`` raises in training."""
    nodes: list[NodeResult] = []
    for i, node in enumerate(NODES):
        if node == fail:
            nodes.append(
                NodeResult(
                    node,
                    "train",
                    Outcome.FAILED,
                    reason="ValueError: boom",
                    traceback="Traceback (most recent call last):\nValueError: boom",
                )
            )
            continue
        n = 100 + 10 * i
        nodes.append(
            NodeResult(
                node,
                "train",
                Outcome.OK,
                {"loss": 1.0 / rnd + i, "num_examples": n},
                n,
                seconds=0.1,
            )
        )
        nodes.append(
            NodeResult(
                node,
                "evaluate",
                Outcome.OK,
                {"loss": 0.9 / rnd, "accuracy": 0.5 + 0.1 * rnd, "auc": 0.6 + 0.01 * i},
                50,
                seconds=0.05,
            )
        )
    return RoundRecord(
        round=rnd,
        train_metrics={"loss": 1.0 / rnd},
        evaluate_metrics={"loss": 0.9 / rnd, "accuracy": 0.5 + 0.1 * rnd},
        central_metrics={"accuracy": 0.55 + 0.1 * rnd},
        nodes=nodes,
        seconds=0.25,
    )


def feed(obs: MLflowObserver, run_dir: Path | None, *, failed: bool = False) -> History:
    """Three rounds over four nodes; node c fails in round 2."""
    info = RunInfo(
        "run-" + uuid.uuid4().hex[:8],
        3,
        list(NODES),
        dict(PARAMS),
        str(run_dir) if run_dir else None,
    )
    history = History()
    obs.on_run_start(info)
    for rnd in (1, 2, 3):
        record = make_round(rnd, fail="hospital-c" if rnd == 2 else None)
        history.rounds.append(record)
        obs.on_round_end(record)
    obs.on_run_end(history, failed=failed)
    return history


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> tuple[MLflowObserver, Path]:
    """One default (embedded store) run per module: MLflow's store start-up is slow."""
    run_dir = tmp_path_factory.mktemp("run")
    (run_dir / "model.npz").write_bytes(b"PK\x03\x04 not really a model")
    (run_dir / "metrics.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    obs = MLflowObserver()
    feed(obs, run_dir)
    return obs, run_dir


def client_for(obs: MLflowObserver) -> MlflowClient:
    return MlflowClient(tracking_uri=obs.tracking_uri)


def history_of(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_default_store_is_sqlite_in_the_run_dir(embedded: tuple[MLflowObserver, Path]) -> None:
    obs, run_dir = embedded
    assert obs.tracking_uri == f"sqlite:///{run_dir.resolve()}/mlflow.db"
    assert (run_dir / "mlflow.db").is_file()
    assert obs.ui_command() == f"mlflow ui --backend-store-uri {obs.tracking_uri}"
    assert obs.parent_run_id is not None


def test_parent_run_has_name_tags_params_and_status(embedded: tuple[MLflowObserver, Path]) -> None:
    obs, _ = embedded
    assert obs.parent_run_id is not None
    run = client_for(obs).get_run(obs.parent_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.runName"] == run.data.tags["consortium.run_id"]
    assert run.data.tags["consortium.num_nodes"] == "4"
    assert run.data.tags["consortium.version"]
    assert run.data.params == {
        "num_rounds": "3",
        "local_epochs": "2",
        "learning_rate": "0.05",
        "batch_size": "32",
        "optimizer": "sgd",
        "strategy": "fedavg",
        "layers": "64,32",
        "use_dp": "False",
    }


def test_global_metrics_per_round(embedded: tuple[MLflowObserver, Path]) -> None:
    obs, _ = embedded
    assert obs.parent_run_id is not None
    client = client_for(obs)
    pid = obs.parent_run_id
    acc = history_of(client, pid, "eval_accuracy")
    assert [s for s, _ in acc] == [1, 2, 3]
    assert [v for _, v in acc] == pytest.approx([0.6, 0.7, 0.8])
    assert [s for s, _ in history_of(client, pid, "central_accuracy")] == [1, 2, 3]
    assert [s for s, _ in history_of(client, pid, "train_loss")] == [1, 2, 3]
    assert [v for _, v in history_of(client, pid, "nodes_ok")] == [4, 3, 4]
    assert [v for _, v in history_of(client, pid, "nodes_failed")] == [0, 1, 0]
    assert "nodes_train_loss_mean" not in client.get_run(pid).data.metrics  # children mode


def test_a_child_run_per_node(embedded: tuple[MLflowObserver, Path]) -> None:
    obs, _ = embedded
    client = client_for(obs)
    children = client.search_runs(
        [obs.experiment_id or ""], filter_string=f"tags.mlflow.parentRunId = '{obs.parent_run_id}'"
    )
    assert sorted(r.info.run_name for r in children) == NODES
    for child in children:
        assert child.info.status == "FINISHED"
        rid = child.info.run_id
        steps = [1, 3] if child.info.run_name == "hospital-c" else [1, 2, 3]
        assert [s for s, _ in history_of(client, rid, "eval_auc")] == steps
        assert [s for s, _ in history_of(client, rid, "eval_accuracy")] == steps
        assert history_of(client, rid, "train_num_examples")[0][1] >= 100
    c = next(r for r in children if r.info.run_name == "hospital-c")
    assert [s for s, _ in history_of(client, c.info.run_id, "train_loss")] == [1, 3]
    assert history_of(client, c.info.run_id, "train_ok") == [(1, 1.0), (2, 0.0), (3, 1.0)]


def test_run_dir_files_become_artifacts(embedded: tuple[MLflowObserver, Path]) -> None:
    obs, run_dir = embedded
    assert obs.parent_run_id is not None
    names = {a.path for a in client_for(obs).list_artifacts(obs.parent_run_id)}
    assert names == {"model.npz", "metrics.png"}
    assert obs.artifact_location == (run_dir.resolve() / "mlartifacts").as_uri()


def test_summary_mode_when_nodes_exceed_max_child_runs(
    embedded: tuple[MLflowObserver, Path], tmp_path: Path
) -> None:
    obs = MLflowObserver(
        embedded[0].tracking_uri, experiment_name=f"summary-{uuid.uuid4().hex}", max_child_runs=2
    )
    feed(obs, tmp_path, failed=True)
    assert obs.mode == "summary" and obs.parent_run_id is not None
    client = client_for(obs)
    pid = obs.parent_run_id
    assert client.get_run(pid).info.status == "FAILED"
    assert (
        client.search_runs(
            [obs.experiment_id or ""], filter_string=f"tags.mlflow.parentRunId = '{pid}'"
        )
        == []
    )
    for stat in ("mean", "min", "max", "std"):
        assert [s for s, _ in history_of(client, pid, f"nodes_train_loss_{stat}")] == [1, 2, 3]
        assert [s for s, _ in history_of(client, pid, f"nodes_eval_auc_{stat}")] == [1, 2, 3]
    # round 1: train losses 1, 2, 3, 4
    assert history_of(client, pid, "nodes_train_loss_mean")[0][1] == pytest.approx(2.5)
    assert history_of(client, pid, "nodes_train_loss_min")[0][1] == pytest.approx(1.0)
    assert history_of(client, pid, "nodes_train_loss_max")[0][1] == pytest.approx(4.0)
    assert history_of(client, pid, "nodes_train_loss_std")[0][1] == pytest.approx(1.118034)


def test_synchronous_mode_and_per_node_off(
    embedded: tuple[MLflowObserver, Path], tmp_path: Path
) -> None:
    obs = MLflowObserver(
        embedded[0].tracking_uri,
        experiment_name=f"sync-{uuid.uuid4().hex}",
        per_node="off",
        background=False,
    )
    feed(obs, tmp_path)
    assert obs.parent_run_id is not None and obs.child_run_ids == {}
    metrics = client_for(obs).get_run(obs.parent_run_id).data.metrics
    assert "eval_accuracy" in metrics
    assert not any(k.startswith("nodes_train") for k in metrics)


def test_a_bad_store_does_not_propagate(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    obs = MLflowObserver("bogus-scheme://nowhere")
    with caplog.at_level(logging.WARNING, logger="consortium.tracking.mlflow_tracker"):
        feed(obs, tmp_path)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "bogus-scheme://nowhere" in warnings[0].getMessage()
    assert obs.parent_run_id is None


def test_an_error_mid_run_is_warned_once_and_the_run_still_ends(
    embedded: tuple[MLflowObserver, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    obs = MLflowObserver(
        embedded[0].tracking_uri, experiment_name=f"err-{uuid.uuid4().hex}", background=False
    )
    info = RunInfo("flaky", 3, list(NODES), {}, str(tmp_path))
    obs.on_run_start(info)
    assert obs._client is not None

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    obs._client.log_batch = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="consortium.tracking.mlflow_tracker"):
        for rnd in (1, 2, 3):
            obs.on_round_end(make_round(rnd))
        obs.on_run_end(History(), failed=False)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "disk full" in caplog.records[0].getMessage()
    assert obs.parent_run_id is not None
    assert client_for(obs).get_run(obs.parent_run_id).info.status == "FINISHED"


def test_metric_keys_are_made_acceptable() -> None:
    assert metric_key("eval_auc") == "eval_auc"
    assert metric_key("f1@0.5?") == "f1_0.5_"
    assert metric_key("loss/val") == "loss/val"
    assert metric_key("") == "_"
    assert metric_key("../x") == "_.._x"
    assert len(metric_key("k" * 400)) == 250


def test_summarize_skips_failed_nodes_and_non_finite_values() -> None:
    stats = summarize(
        [
            NodeResult("a", "evaluate", Outcome.OK, {"auc": 0.5}, 10),
            NodeResult("b", "evaluate", Outcome.OK, {"auc": float("nan")}, 30),
            NodeResult("c", "evaluate", Outcome.REJECTED, {"auc": 0.9}, 10),
        ]
    )
    assert stats["nodes_eval_auc_mean"] == 0.5
    assert stats["nodes_eval_num_examples_mean"] == 20
    assert stats["nodes_eval_num_examples_std"] == 10


def test_importing_tracking_imports_neither_mlflow_nor_matplotlib() -> None:
    code = (
        "import sys, consortium.tracking\n"
        "heavy = [m for m in ('mlflow', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_mlflow_installed_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in list(sys.modules):
        if name == "mlflow" or name.startswith("mlflow."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # makes `import mlflow` fail
    obs = MLflowObserver(background=False)
    with caplog.at_level(logging.WARNING, logger="consortium.tracking.mlflow_tracker"):
        feed(obs, tmp_path)
    assert len(caplog.records) == 1
    assert "pip install 'consortium[tracking]'" in caplog.records[0].getMessage()
    assert obs.parent_run_id is None
