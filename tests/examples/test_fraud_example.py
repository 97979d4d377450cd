"""examples/fraud as its case intends: the saved Pipeline scores raw claims at the
reported AUC, SMOTE touches training rows only, the scaler is the federated one,
and the per-round train config and the central evaluation show in the metrics."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from consortium.apps.loader import load_object
from consortium.apps.manifest import load_app_spec
from consortium.core.context import Context
from consortium.core.errors import ConfigError
from consortium.core.protocol import NUM_PARTITIONS, PARTITION_ID
from consortium.ml import sklearn as sk
from consortium.server import ServerApp
from consortium.server.host import RunResult
from consortium.simulation.engine import run_simulation

joblib = pytest.importorskip("joblib")
pytest.importorskip("imblearn")
metrics = pytest.importorskip("sklearn.metrics")

APP = Path(__file__).resolve().parents[2] / "examples" / "fraud"
NODES, ROUNDS = 3, 3
OVERRIDES = {"num-rounds": ROUNDS, "rows-per-provider": 400}

sys.path.insert(0, str(APP))
from fraud_app import client as fraud_client  # noqa: E402
from fraud_app import data as fraud_data  # noqa: E402
from fraud_app.model import scaler_config  # noqa: E402


def _run_config(**extra: Any) -> dict[str, Any]:
    return load_app_spec(APP).run_config({**OVERRIDES, **extra})


def _simulate(tmp_path: Path, **extra: Any) -> RunResult:
    spec = load_app_spec(APP)
    server = load_object(spec.manifest.app.server, [str(spec.root)])
    assert isinstance(server, ServerApp)
    return run_simulation(
        server,
        spec.manifest.app.client,
        num_nodes=NODES,
        run_config=_run_config(**extra),
        run_dir=tmp_path,
        app_path=[str(spec.root)],
    )


def _node_context(index: int, run_config: dict[str, Any]) -> Context:
    """The context the simulation gives node ``index`` (same ids, config and seed)."""
    return Context(
        node_id=str(index),
        node_config={PARTITION_ID: index, NUM_PARTITIONS: NODES},
        run_config=run_config,
        seed=0,
    )


class SpySMOTE(fraud_client.SMOTE):  # type: ignore[misc]
    """SMOTE that records every table it resamples."""

    seen: ClassVar[list[np.ndarray]] = []

    def fit_resample(self, x: Any, y: Any) -> Any:
        SpySMOTE.seen.append(np.array(x, copy=True))
        return super().fit_resample(x, y)


@pytest.fixture()
def spy_smote(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    SpySMOTE.seen = []
    monkeypatch.setattr(fraud_client, "SMOTE", SpySMOTE)
    return SpySMOTE.seen


def test_saved_pipeline_scores_raw_claims_at_the_reported_auc(
    tmp_path: Path, spy_smote: list[np.ndarray]
) -> None:
    result = _simulate(tmp_path)
    reported = result.history.rounds[-1].central_metrics["auc"]
    assert 0.75 < reported < 1.0

    pipeline = joblib.load(tmp_path / "model.joblib")
    held_out = fraud_data.holdout(_run_config(), NODES)
    raw = held_out.x
    assert raw[:, 2].mean() > 1000  # raw dollars: the pipeline must scale them itself
    auc = metrics.roc_auc_score(held_out.y, pipeline.predict_proba(raw)[:, 1])
    assert auc == pytest.approx(reported, abs=1e-12)
    np.testing.assert_array_equal(pipeline.named_steps["model"].coef_, result.arrays["coef"])

    # the scaler in the file is the federated one: pooled over every silo's training rows
    splits = [fraud_data.load(_node_context(i, _run_config())) for i in range(NODES)]
    rows, mean, var = sk.merge_moments(sk.column_moments(s.x_train) for s in splits)
    scaler = pipeline.named_steps["scaler"]
    assert scaler.n_samples_seen_ == rows == sum(len(s.y_train) for s in splits)
    np.testing.assert_allclose(scaler.mean_, mean, rtol=1e-12)
    np.testing.assert_allclose(scaler.var_, var, rtol=1e-12)

    # SMOTE ran once per silo and round, each time on exactly that silo's scaled training rows
    assert len(spy_smote) == NODES * ROUNDS
    train_tables = [scaler.transform(s.x_train) for s in splits]
    for seen in spy_smote:
        assert any(
            seen.shape == t.shape and np.allclose(seen, t, rtol=0, atol=1e-12) for t in train_tables
        )


def test_train_config_schedule_and_central_evaluation_in_the_metrics(tmp_path: Path) -> None:
    result = _simulate(tmp_path, **{"local-epochs": 3, "local-epochs-step": 2})
    rounds = result.history.rounds
    assert [r.train_metrics["local_epochs"] for r in rounds] == [3.0, 5.0, 7.0]
    for r in rounds:
        assert {"auc", "loss"} <= set(r.central_metrics)
        assert {"auc", "loss", "accuracy"} <= set(r.evaluate_metrics)
    assert result.initial_metrics["auc"] == pytest.approx(0.5)  # round 0: the zero model


def test_smote_never_touches_evaluation_rows(spy_smote: list[np.ndarray]) -> None:
    run_config = _run_config()
    context = _node_context(0, run_config)
    split = fraud_data.load(context)
    provider = fraud_client.client_fn(context)
    scaler = sk.fitted_scaler(split.x_train.mean(axis=0), split.x_train.var(axis=0), 10)
    config = {"local-epochs": 2, "C": 1.0, **scaler_config(scaler)}
    fit = provider.fit(provider.get_parameters({}), config)
    assert len(spy_smote) == 1 and fit.num_examples == len(split.y_train)
    loss, num_examples, _ = provider.evaluate(fit.arrays, config)
    assert len(spy_smote) == 1  # evaluation resampled nothing
    assert num_examples == len(split.y_test)
    assert np.isfinite(loss)


def test_real_provider_table_from_csv(tmp_path: Path) -> None:
    """data-csv: a provider table in the expected columns, dealt to silos by its silo column."""
    providers = fraud_data.federation(_run_config(), NODES).silos
    names = providers[0].feature_names
    path = tmp_path / "providers.csv"
    lines = [",".join(("silo", *names, "fraud"))]
    for s, table in enumerate(providers):
        for x, y in zip(table.x, table.y, strict=True):
            lines.append(",".join((f"state-{s}", *map(repr, x.tolist()), str(int(y)))))
    path.write_text("\n".join(lines) + "\n")
    fed = fraud_data.federation(_run_config(**{"data-csv": str(path)}), NODES)
    assert [len(t.y) for t in fed.silos] == [int(len(t.y) * 0.8) for t in providers]
    assert fed.holdout.feature_names == names
    result = _simulate(tmp_path / "run", **{"data-csv": str(path)})  # a whole run on the table
    assert result.history.rounds[-1].central_metrics["auc"] > 0.75
    with pytest.raises(ConfigError, match="silo"):
        fraud_data.federation(_run_config(**{"data-csv": str(path)}), NODES + 1)
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="'fraud' label column"):
        fraud_data.read_csv(path)
