"""Nodes with a policy file run only signed bundles it allows, within its limits.

Real ``consortium server`` and ``consortium node --policy`` processes over mutual TLS.
Every refusal must be visible on both sides: in ``run show``'s per-node reason (what
the server was told) and in the refusing node's own log.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from consortium.apps.bundle import write_zip
from consortium.apps.publisher_keys import generate_key, load_private_key
from consortium.apps.signing import build_bundle, sign_bundle
from consortium.server import load_model

from .conftest import EXE, NODES, SLOW_APP, Deployment
from .test_deployment import _simulate_slow_app

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _keys(root: Path) -> tuple[Path, Path, Path]:
    """A trusted publisher key, a stranger's key, and the folder of trusted ``.pub`` files."""
    generate_key(root / "publisher.key")
    generate_key(root / "stranger.key")
    trusted = root / "trusted"
    trusted.mkdir()
    shutil.copy(root / "publisher.pub", trusted / "publisher.pub")
    return root / "publisher.key", root / "stranger.key", trusted


def _signed(app_dir: Path, key: Path, out: Path) -> Path:
    out.write_bytes(sign_bundle(build_bundle(app_dir), load_private_key(key)))
    return out


def _policy(path: Path, allow: list[dict[str, str]], **limits: Any) -> Path:
    """Write a policy file trusting ``trusted/`` (relative to it) with these entries."""
    lines = ['[trust]\npublishers = "trusted"\n']
    for entry in allow:
        lines.append("[[allow]]\n" + "".join(f'{k} = "{v}"\n' for k, v in entry.items()))
    if limits:
        lines.append("[limits]\n")
        lines += [f"{k} = {_toml(v)}\n" for k, v in limits.items()]
    path.write_text("".join(lines))
    return path


def _toml(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    return str(value)


def _variant(root: Path, name: str, *, app_name: str = "slow-toy", note: str = "") -> Path:
    """A copy of the slow-toy app, renamed or with one more comment line (another build)."""
    folder = root / name
    shutil.copytree(SLOW_APP, folder, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = folder / "consortium.toml"
    manifest.write_text(manifest.read_text().replace('"slow-toy"', f'"{app_name}"'))
    if note:
        code = folder / "slow_toy.py"
        code.write_text(code.read_text() + f"# {note}\n")
    return folder


def _tampered(signed: Path, out: Path) -> Path:
    """``signed`` with one byte of its code changed, re-zipped, manifest and signature kept."""
    with zipfile.ZipFile(io.BytesIO(signed.read_bytes())) as zf:
        entries = [(i.filename, zf.read(i)) for i in zf.infolist()]
    changed = []
    for name, data in entries:
        if name == "slow_toy.py":
            at = data.index(b"0.1 *")
            data = data[:at] + b"0.2 *" + data[at + 5 :]
        changed.append((name, data))
    out.write_bytes(write_zip(changed))
    return out


def _reasons(info: dict[str, Any]) -> dict[str, str]:
    """node -> its reason (or "ok") in the run's first round."""
    assert info["rounds"], info
    return {
        n["node"]: (n["reason"] if n["outcome"] != "ok" else "ok")
        for n in info["rounds"][0]["nodes"]
    }


def _node_log(dep: Deployment, name: str) -> str:
    path = dep.workdir / "nodes" / name / "node.log"
    return path.read_text(errors="replace") if path.exists() else ""


ONE_ROUND = {"num-rounds": 1, "delay": 0.0, "min-replies": 1, "min-nodes": 4,
             "round-timeout": 30.0}  # fmt: skip


def test_a_node_refuses_what_its_policy_does_not_allow(
    deployment: Deployment, tmp_path: Path
) -> None:
    """Unsigned, untrusted, tampered, unpinned, unlisted bundles and a disallowed task kind:
    each refused by the node itself, the reason in ``run show`` and in the node's log."""
    key, stranger, _ = _keys(tmp_path)
    good = _signed(SLOW_APP, key, tmp_path / "slow-toy.cab")
    pinned = hashlib.sha256(good.read_bytes()).hexdigest()
    by_name = _policy(tmp_path / "by-name.toml", [{"name": "slow-toy", "version": "1.0.0"}])
    by_hash = _policy(tmp_path / "by-hash.toml", [{"sha256": pinned}])
    no_train = _policy(
        tmp_path / "no-train.toml", [{"name": "slow-toy", "version": "1.0.0"}], kinds=["evaluate"]
    )
    deployment.start_server()
    deployment.start_node("cleveland", app=SLOW_APP)  # a local copy (development): runs it
    deployment.start_node("hungarian", policy=by_name)
    deployment.start_node("switzerland", policy=by_hash)
    deployment.start_node("va", policy=no_train)

    unsigned = tmp_path / "unsigned.cab"
    unsigned.write_bytes(build_bundle(SLOW_APP))
    cases: list[tuple[Path, dict[str, str]]] = [
        (good, {"hungarian": "ok", "switzerland": "ok", "va": "kind-not-allowed"}),
        (unsigned, dict.fromkeys(("hungarian", "switzerland", "va"), "unsigned")),
        (
            _signed(SLOW_APP, stranger, tmp_path / "stranger.cab"),
            dict.fromkeys(("hungarian", "switzerland", "va"), "untrusted-key"),
        ),
        (
            _tampered(good, tmp_path / "tampered.cab"),
            dict.fromkeys(("hungarian", "switzerland", "va"), "file-mismatch"),
        ),
        (
            _signed(_variant(tmp_path, "rebuilt", note="rebuilt"), key, tmp_path / "rebuilt.cab"),
            {"hungarian": "ok", "switzerland": "not-pinned", "va": "kind-not-allowed"},
        ),
    ]
    for bundle, expected in cases:
        run_id = deployment.start_run(bundle, ONE_ROUND, seed=3)
        info = deployment.wait_run(run_id)
        assert info["status"] == "finished", info
        reasons = _reasons(info)
        assert reasons["cleveland"] == "ok", reasons
        for node, reason in expected.items():
            if reason == "ok":
                assert reasons[node] == "ok", (bundle.name, reasons)
                continue
            assert f"({reason})" in reasons[node], (bundle.name, node, reasons)
            assert "PolicyRefused" in reasons[node]  # the node's own words, in full
            logged = _node_log(deployment, node)
            assert f"run {run_id} round 1: train refused:" in logged, logged
            assert f"({reason})" in logged.split(f"run {run_id} round 1: train refused:")[1]

    # an app outside every allow list: no node runs it, each says why
    other = _signed(_variant(tmp_path, "other", app_name="other-toy"), key, tmp_path / "o.cab")
    run_id = deployment.start_run(other, ONE_ROUND, seed=3)
    info = deployment.wait_run(run_id)
    assert info["status"] == "failed", info
    error = info["error"]  # a failed round: the run's error lists each node's reason
    assert "hungarian: failed (PolicyRefused: refused by the node's policy (not-allowed)" in error
    assert "other-toy 1.0.0" in error
    assert "va: failed (PolicyRefused: refused by the node's policy (not-allowed)" in error
    assert "switzerland: failed (PolicyRefused: refused by the node's policy (not-pinned)" in error
    assert "cleveland: failed (PolicyRefused: refused by the node's policy (no-policy)" in error
    assert "(not-allowed)" in _node_log(deployment, "hungarian").split(f"run {run_id}")[1]


def test_signed_app_under_policy_equals_simulation(deployment: Deployment, tmp_path: Path) -> None:
    """4 nodes with a policy run the signed slow-toy app: the model simulation computes."""
    key, _, _ = _keys(tmp_path)
    bundle = _signed(SLOW_APP, key, tmp_path / "slow-toy.cab")
    policy = _policy(
        tmp_path / "policy.toml",
        [{"name": "slow-toy", "version": "1.0.0"}],
        **{"max-rounds": 3, "max-model-mb": 1, "kinds": ["train", "evaluate", "query"]},
    )
    deployment.start_server()
    for name in NODES:
        deployment.start_node(name, policy=policy)
    # the coordinator's command line sends the signed file as is (its defaults: delay 0,
    # 4 replies of 4 nodes, what _simulate_slow_app uses)
    started = subprocess.run(
        [EXE, "run", "start", str(bundle), "--server", f"127.0.0.1:{deployment.port}",
         "--credentials", str(deployment.fed.creds("alice")), "--run-config", "num-rounds=3",
         "--seed", "13"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip()
    info = deployment.wait_run(run_id)
    assert info["status"] == "finished", info
    model = load_model(deployment.run_dir(run_id) / "model.npz")
    assert model.equals(_simulate_slow_app(3, 13))
    # the code ran from the verified bundle, extracted under its own SHA-256
    sha = hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert (deployment.workdir / "nodes" / "va" / "apps" / sha / "slow_toy.py").exists()


TINY_APP = """
import numpy as np
from consortium import Arrays, ClientApp, FedAvg, ServerApp, ServerConfig

client_app = ClientApp()


@client_app.train()
def train(msg, ctx):
    w = np.array(msg.content.model["w"], copy=True)
    return msg.reply(arrays=Arrays({{"w": w}}), metrics={{"num_examples": 1, "version": {v}}})


server_app = ServerApp(
    lambda ctx: ServerConfig(
        FedAvg(init_fn=lambda rng: Arrays({{"w": np.zeros(2)}}), fraction_evaluate=0.0,
               min_available_nodes=2),
        num_rounds=1, min_replies=2, round_timeout=30.0, node_wait=30.0,
    )
)
"""


def _tiny(root: Path, version: int) -> Path:
    folder = root / f"tiny-v{version}"
    folder.mkdir()
    (folder / "consortium.toml").write_text(
        f'[app]\nname = "tiny"\nversion = "{version}.0.0"\n'
        'server = "tiny_app:server_app"\nclient = "tiny_app:client_app"\n'
    )
    (folder / "tiny_app.py").write_text(TINY_APP.format(v=version))
    return folder


def test_v2_of_an_app_runs_v2s_code(deployment: Deployment, tmp_path: Path) -> None:
    """v1, then v2 under the same module name, then v1 again: each run runs its own code."""
    key, _, _ = _keys(tmp_path)
    v1 = _signed(_tiny(tmp_path, 1), key, tmp_path / "tiny-1.cab")
    v2 = _signed(_tiny(tmp_path, 2), key, tmp_path / "tiny-2.cab")
    policy = _policy(
        tmp_path / "policy.toml",
        [{"name": "tiny", "version": "1.0.0"}, {"name": "tiny", "version": "2.0.0"}],
    )
    deployment.start_server()
    for name in NODES[:2]:
        deployment.start_node(name, policy=policy)
    for bundle, version in ((v1, 1), (v2, 2), (v1, 1)):
        run_id = deployment.start_run(bundle, {}, seed=1)
        info = deployment.wait_run(run_id, timeout=60)
        assert info["status"] == "finished", info
        assert info["rounds"][0]["metrics"]["train_version"] == version, info["rounds"][0]
