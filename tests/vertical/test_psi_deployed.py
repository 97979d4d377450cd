"""PSI on real `consortium node` processes over mutual TLS: three hospitals find the patients
they share; each keeps its aligned rows in its app process's state and reads them back in a
later task of the run."""

from __future__ import annotations

from pathlib import Path

from consortium.server import load_model
from consortium.vertical.psi_state import decode_ids
from deploy.conftest import Deployment, deployment, federation  # noqa: F401 - fixtures

from .test_psi import PSIAPP

PARTIES = ("cleveland", "hungarian", "switzerland")


def test_psi_between_three_deployed_nodes(deployment: Deployment) -> None:  # noqa: F811
    import sys

    sys.path.insert(0, str(PSIAPP))
    try:
        import psi_toy  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(PSIAPP))
    deployment.start_server()
    for name in PARTIES:
        # the parties' shared secret, from each node's own config: the result is tagged
        deployment.start_node(name, app=PSIAPP, **{"psi-secret": "agreed-out-of-band"})
    run_id = deployment.start_run(PSIAPP, {"chunk-size": 64}, seed=5)
    info = deployment.wait_run(run_id, timeout=120)
    assert info["status"] == "finished", (info, deployment.log("server"))
    kept = load_model(Path(deployment.run_dir(run_id)) / "model.npz")
    expected = sorted(set.intersection(*(set(psi_toy.party_ids(p)) for p in PARTIES)))
    assert len(expected) > 10
    for name in PARTIES:
        own = psi_toy.party_ids(name)
        ids = decode_ids(kept[f"{name}.ids"], kept[f"{name}.ends"])
        assert ids == expected, name
        assert [own[r] for r in kept[f"{name}.rows"]] == expected, name
    (record,) = info["rounds"]
    assert record["metrics"]["train_psi.intersection"] == len(expected)
    assert record["metrics"]["train_psi.tagged"] == 1  # every node read its psi-secret
