"""On real `consortium node` processes over mutual TLS, a passive party refuses a mask key
the server program put in place of another party's: the node's certificate signed every
key, and the swapped one carries no signature of the node it is claimed for."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.conftest import Deployment, deployment, federation  # noqa: F401 - fixtures

pytest.importorskip("nacl")
pytest.importorskip("phe")

APP = Path(__file__).resolve().parent / "vlrkeysapp"


def test_a_deployed_passive_party_refuses_a_swapped_mask_key(deployment: Deployment) -> None:  # noqa: F811
    deployment.start_server()
    for name in ("cleveland", "hungarian", "switzerland"):
        deployment.start_node(name, app=APP)
    run_id = deployment.start_run(APP, {}, seed=1)
    info = deployment.wait_run(run_id, timeout=120)
    assert info["status"] == "failed", info
    assert "party hungarian failed" in str(info), info
    log = deployment.log("hungarian")
    assert "party 'switzerland''s pairwise-mask key: not signed by 'switzerland'" in log, log[
        -3000:
    ]
    for name in ("cleveland", "hungarian", "switzerland"):  # signed with their certificates
        assert f"run {run_id}: vertical keys signed with this node's certificate" in deployment.log(
            name
        )
