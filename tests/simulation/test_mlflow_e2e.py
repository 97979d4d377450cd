"""A real 3-round simulation tracked in real MLflow, read back with MLflow's own client."""

from __future__ import annotations

from pathlib import Path

from consortium.datasets import heart_disease as hd
from consortium.examples import heart_disease as app
from consortium.simulation import run_simulation
from consortium.tracking import MLflowObserver


def test_three_round_simulation_is_tracked(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    tracker = MLflowObserver()
    result = run_simulation(
        app.server_app,
        app.client_app,
        node_ids=list(hd.CENTERS),
        node_config=app.node_config,
        run_config={**app.TUNED_RUN_CONFIG, "num-rounds": 3},
        seed=1,
        run_dir=tmp_path,
        observers=[tracker],
    )
    assert tracker.tracking_uri is not None and str(tmp_path) in tracker.tracking_uri
    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    parent = client.get_run(tracker.parent_run_id)
    params = parent.data.params
    # hyperparameters of the run, the strategy and its settings
    assert params["num-rounds"] == "3"
    assert params["lr"] == str(app.TUNED_RUN_CONFIG["lr"])
    assert params["batch-size"] == "4" and params["optimizer"] == "sgd"
    assert params["local-steps"] == str(app.TUNED_RUN_CONFIG["local-steps"])
    assert params["strategy.name"] == "FedAvg" and params["strategy.fraction_train"] == "1.0"
    assert params["strategy"] == "fedavg"  # the app's own run-config key, kept as given
    assert parent.info.status == "FINISHED"
    # three rounds of global metrics, equal to what the history says
    for key in ("train_loss", "eval_loss", "eval_accuracy", "eval_auc"):
        history = client.get_metric_history(parent.info.run_id, key)
        assert sorted(m.step for m in history) == [1, 2, 3], key
    final_acc = {
        m.step: m.value for m in client.get_metric_history(parent.info.run_id, "eval_accuracy")
    }
    assert final_acc[3] == result.history.rounds[-1].evaluate_metrics["accuracy"]
    # one child run per node, with its own per-round metrics
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    assert sorted(c.info.run_name for c in children) == sorted(hd.CENTERS)
    for child in children:
        for key in ("train_loss", "train_num_examples", "eval_auc"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert sorted(steps) == [1, 2, 3], (child.info.run_name, key)
    cleveland = next(c for c in children if c.info.run_name == "cleveland")
    sizes = client.get_metric_history(cleveland.info.run_id, "train_num_examples")
    assert {m.value for m in sizes} == {199.0}
