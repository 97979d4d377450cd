"""A deployed server with the REST API (real processes, mutual TLS): the node list says
who each node is, and a run given ``"nodes"`` uses those nodes and no other."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from consortium import ControlClient
from consortium._version import __version__
from consortium.control.sdk import ApiRequestError
from consortium.control.tokens import TokenAuthority
from consortium.transport.ca import CertificateAuthority
from deploy.conftest import NODES, SLOW_APP, Deployment, Federation, wait_for

#: the organisation each hospital's certificate names (subject O=); va's names none
ORGS = {"cleveland": "Cleveland Clinic", "hungarian": "Hungarian Institute of Cardiology",
        "switzerland": "University Hospital Zurich", "va": None}  # fmt: skip
CHOSEN = ["cleveland", "va"]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    root = tmp_path_factory.mktemp("federation")
    ca = CertificateAuthority.init(root / "ca")
    creds = root / "credentials"
    ca.issue("server", "localhost", creds / "localhost", ips=["127.0.0.1"])
    for name in NODES:
        ca.issue("node", name, creds / name, organisation=ORGS[name])
    ca.issue("admin", "alice", creds / "alice")
    return Federation(root, creds, root / "ca")


@pytest.fixture(scope="module")
def served(
    fed: Federation, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Deployment, ControlClient]]:
    dep = Deployment(fed, tmp_path_factory.mktemp("deployment"))
    try:
        dep.start_server("--http", "127.0.0.1:0", offline_after=5.0)
        for name in NODES:
            dep.start_node(name)
        server = dep.workdir / "server"
        token, _ = TokenAuthority(server).create(name="rita", role="researcher", days=1)
        client = ControlClient((server / "api" / "url").read_text().strip(), token)

        def all_online() -> bool:
            return {n["id"] for n in client.nodes() if n["status"] == "online"} == set(NODES)

        wait_for(all_online, 60, "four nodes online")
        yield dep, client
    finally:
        dep.close()


def test_the_node_list_names_each_nodes_organisation_and_version(
    served: tuple[Deployment, ControlClient],
) -> None:
    _, client = served
    nodes = {n["id"]: n for n in client.nodes()}
    assert {n: nodes[n]["organisation"] for n in NODES} == ORGS
    assert all(nodes[n]["version"] == __version__ for n in NODES)
    assert not any(nodes[n]["banned"] for n in NODES)
    # an online node's last_seen is its last heartbeat (every 0.3 s here), not its hello
    time.sleep(2.0)
    nodes = {n["id"]: n for n in client.nodes()}
    ages = {n: time.time() - nodes[n]["last_seen"] for n in NODES}
    assert all(age < 1.5 for age in ages.values()), ages


def test_a_run_on_two_of_four_nodes_sends_tasks_to_those_two_only(
    served: tuple[Deployment, ControlClient],
) -> None:
    dep, client = served
    client.upload_app(SLOW_APP)
    config = {"num-rounds": 3, "min-nodes": 2, "min-replies": 2}
    run_id = client.start_run("slow-toy", config, seed=4, nodes=["va", "cleveland", "va"])
    assert client.wait(run_id)["status"] == "finished", dep.log("server")
    shown = client.run(run_id)
    assert shown["nodes"] == CHOSEN and shown["rounds_done"] == 3
    table = client.metrics(run_id)
    assert {r["node"] for r in table if r["node"] is not None} == set(CHOSEN)
    assert all(r["outcome"] == "ok" for r in table if r["node"] is not None)
    for name in NODES:  # the nodes' own logs: who ran a task of this run
        ran = f"run {run_id} round 1" in dep.log(name)
        assert ran == (name in CHOSEN), (name, dep.log(name)[-2000:])
    # the model of a round: the last rounds' are kept (round 3 is the final model)
    final = np.load(_npz(client.download_model(run_id)))
    last = np.load(_npz(client.download_model(run_id, round=3)))
    assert np.array_equal(final["w"], last["w"])
    assert np.load(_npz(client.download_model(run_id, round=2)))["w"].shape == final["w"].shape
    with pytest.raises(ApiRequestError) as gone:
        client.download_model(run_id, round=1)
    assert gone.value.status == 404 and "not kept" in str(gone.value), gone.value
    assert shown["kept_rounds"] == [2, 3] and shown["model_formats"] == ["npz", "safetensors"]


def test_unknown_and_banned_nodes_cannot_be_chosen(
    served: tuple[Deployment, ControlClient],
) -> None:
    dep, client = served
    for nodes, why in ((["cleveland", "mallory"], "no node 'mallory'"),
                       ([], "at least 1")):  # fmt: skip
        with pytest.raises(ApiRequestError) as refused:
            client.start_run("slow-toy", {}, nodes=nodes)
        assert refused.value.status == 422 and why in str(refused.value), refused.value
    admin = dep.fed.admin(dep.port)
    try:
        assert admin.ban_node("hungarian", "a test")
    finally:
        admin.close()
    with pytest.raises(ApiRequestError) as banned:
        client.start_run("slow-toy", {}, nodes=["cleveland", "hungarian"])
    assert banned.value.status == 422 and "'hungarian' may not take part" in str(banned.value)
    assert next(n for n in client.nodes() if n["id"] == "hungarian")["banned"]


def _npz(data: bytes) -> object:
    import io

    return io.BytesIO(data)
