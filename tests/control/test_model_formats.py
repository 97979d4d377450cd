"""``GET /runs/{id}/model``: the app's own exports (``model.<ext>`` beside ``model.npz``) and
``?round=N``, over a real store and the run folder as a finished run leaves it."""

from __future__ import annotations

import io
import os

import numpy as np

from consortium.core.arrays import Arrays
from consortium.server.model_io import save_model
from consortium.server.store import RunStatus

from .conftest import Api

RUN = "feedfacecafe"


def _finished_run(api: Api) -> np.ndarray:
    store = api.runs.store
    store.create_run(run_id=RUN, app_name="fraud", app_version="1.0", num_rounds=3)
    store.set_run_status(RUN, RunStatus.RUNNING)
    store.set_run_status(RUN, RunStatus.FINISHED)
    folder = api.workdir / "runs" / RUN
    folder.mkdir(parents=True)
    coef = np.arange(6.0).reshape(2, 3)
    save_model(Arrays({"coef": coef}), folder / "model.npz")
    (folder / "model.joblib").write_bytes(b"a scikit-learn estimator, pickled")
    (folder / "elsewhere.bin").write_bytes(b"secret")
    os.symlink(folder / "elsewhere.bin", folder / "model.bin")  # never followed
    return coef


def test_the_apps_own_export_is_served_and_named_in_the_run(api: Api) -> None:
    coef = _finished_run(api)
    admin = api.token["admin"]
    shown = api.call("GET", f"/api/v1/runs/{RUN}", token=admin).json()
    assert shown["model_formats"] == ["npz", "safetensors", "joblib"]
    exported = api.call("GET", f"/api/v1/runs/{RUN}/model?format=joblib", token=admin)
    assert exported.status == 200 and exported.body == b"a scikit-learn estimator, pickled"
    assert f'filename="{RUN}.joblib"' in exported.headers["content-disposition"]
    npz = api.call("GET", f"/api/v1/runs/{RUN}/model", token=admin)
    with np.load(io.BytesIO(npz.body), allow_pickle=False) as model:
        assert np.array_equal(model["coef"], coef)
    for query, field, words in (
        ("format=bin", "format", "formats: npz, safetensors, joblib"),
        ("format=onnx", "format", "has no 'onnx' model"),
        ("format=joblib&round=1", "round", "of the final model"),
        ("round=1", "round", "not kept"),
    ):
        answer = api.call("GET", f"/api/v1/runs/{RUN}/model?{query}", token=admin)
        error = answer.json()["error"]
        assert answer.status == 404 and error["field"] == field, (query, error)
        assert words in error["message"], (query, error)
    # every download, refused or not, is in the audit log with its format
    downloads = api.find("model.download", "alice", "ok")
    assert [e.detail["format"] for e in downloads[-2:]] == ["joblib", "npz"]
    assert api.find("model.download", "alice", "failed")[-1].detail["error"].startswith("round")
