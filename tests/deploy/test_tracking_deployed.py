"""A deployed run is tracked like a simulated one: MLflow parent and per-hospital
children with the same metric names, the model and plot as artifacts, a run log."""

from __future__ import annotations

from pathlib import Path

from consortium.simulation import run_simulation
from consortium.tracking.mlflow_tracker import MLflowObserver

from .conftest import NODES, Deployment

ROOT = Path(__file__).resolve().parents[2]
HEART = ROOT / "examples" / "heart_disease"
ROUNDS = 3


def _runs(uri: str) -> tuple[object, list[object]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "consortium"]
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], children


def test_mlflow_in_deployment_has_the_structure_and_names_of_simulation(
    deployment: Deployment, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    from consortium.datasets import heart_disease as hd
    from consortium.examples import heart_disease as app

    deployment.start_server(tracking=True)
    for name in NODES:
        deployment.start_node(name, app=HEART)
    run_id = deployment.start_run(HEART, {"num-rounds": ROUNDS}, seed=11)
    assert deployment.wait_run(run_id)["status"] == "finished"
    # MLflow (pandas, pyarrow) and the plot (matplotlib) ran in the run's tracking process:
    # none of their native libraries is mapped into the server's
    maps = Path(f"/proc/{deployment.procs['server'].pid}/maps").read_text()
    assert [lib for lib in ("/pandas/", "/pyarrow/", "/matplotlib/") if lib in maps] == []

    sim_uri = f"sqlite:///{tmp_path / 'sim-mlflow.db'}"
    run_simulation(
        app.server_app, app.client_app, node_ids=list(hd.CENTERS), node_config=app.node_config,
        run_config={**app.TUNED_RUN_CONFIG, "num-rounds": ROUNDS}, seed=11,
        observers=[MLflowObserver(sim_uri, background=False)],
    )  # fmt: skip

    deployed_uri = f"sqlite:///{deployment.workdir / 'server' / 'mlflow.db'}"
    parent, children = _runs(deployed_uri)
    sim_parent, sim_children = _runs(sim_uri)
    assert parent.info.run_name == run_id  # type: ignore[attr-defined]
    assert parent.info.status == "FINISHED"  # type: ignore[attr-defined]
    assert sorted(c.info.run_name for c in children) == sorted(NODES)  # type: ignore[attr-defined]
    assert set(parent.data.metrics) == set(sim_parent.data.metrics)  # type: ignore[attr-defined]
    for child in children:
        (twin,) = [c for c in sim_children if c.info.run_name == child.info.run_name]  # type: ignore[attr-defined]
        assert set(child.data.metrics) == set(twin.data.metrics)  # type: ignore[attr-defined]
    history = MlflowClient(tracking_uri=deployed_uri).get_metric_history(
        parent.info.run_id,  # type: ignore[attr-defined]
        "central_auc" if "central_auc" in parent.data.metrics else sorted(parent.data.metrics)[0],  # type: ignore[attr-defined]
    )
    assert [m.step for m in history] == list(range(1, ROUNDS + 1))
    artifacts = {
        a.path
        for a in MlflowClient(tracking_uri=deployed_uri).list_artifacts(parent.info.run_id)  # type: ignore[attr-defined]
    }
    # the server's plot and log and the final model: nothing else the app left in work/
    assert artifacts == {"model.npz", "metrics.png", "run.log"}, artifacts
    run_dir = deployment.run_dir(run_id)
    assert (run_dir / "metrics.png").stat().st_size > 0
    assert f"run={run_id} finished" in (run_dir / "run.log").read_text()
