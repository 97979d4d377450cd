"""docs/deploy.md stays true: its bash blocks, pasted in order into one shell, deploy the
heart-disease federation with signed bundles and node policies; the signed run finishes
with a model, every hospital refuses the bundle Mallory re-signed, and the audit log
names who started each with which bundle.

The guide is run as written: one ``bash`` script made of every ``bash`` block, in a fresh
folder holding a copy of ``examples/heart_disease`` (what the guide copies from the
repository root), with the virtualenv's ``bin`` first on ``PATH``. Its server and nodes
run in the background; the guide stops them itself, and the test kills whatever is left
(the script runs in its own process group) so a failure never leaves processes behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from consortium.server import load_model

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "deploy.md"
BIN = Path(sys.executable).parent
HOSPITALS = ("cleveland", "hungarian", "switzerland", "va")
#: the whole guide (CA, certificates, signing, 4 nodes, a 3-round run, audit, shutdown)
#: takes about a minute; the margin is for a machine busy with other tests
TIMEOUT = 240


def _bash_blocks(doc: Path) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S)


def _logs(folder: Path) -> str:
    """The server's and nodes' output, to explain a failure."""
    parts = []
    for name in ("server/server.out", *(f"{h}/node.out" for h in HOSPITALS)):
        path = folder / name
        if path.exists():
            parts.append(f"--- {name}\n{path.read_text(errors='replace')[-4000:]}")
    return "\n".join(parts)


def _group_alive(group: int) -> bool:
    """Whether any process of process group ``group`` is still running."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def test_deploy_guide_runs_by_copy_and_paste(tmp_path: Path) -> None:
    blocks = _bash_blocks(GUIDE)
    script = "\n".join(blocks)
    # the guide covers the whole signed-bundle flow, each step a command that exists
    for step in ("consortium ca init", "consortium ca issue", "consortium app keygen",
                 "consortium app build", "consortium app sign", "consortium app verify",
                 "--policy", "consortium server", "consortium node", "consortium run start",
                 "consortium run show", "consortium run download", "consortium audit show",
                 "consortium audit verify", "mallory.cab", "kill "):  # fmt: skip
        assert step in script, f"docs/deploy.md has no bash block with {step!r}"

    shutil.copytree(ROOT / "examples" / "heart_disease", tmp_path / "examples" / "heart_disease")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for variable in ("CONSORTIUM_CA_PASSPHRASE", "CONSORTIUM_PUBLISHER_PASSPHRASE"):
        env.pop(variable, None)
    shell = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its background server and nodes share its process group
    )
    fed = tmp_path / "federation"
    try:
        output, _ = shell.communicate(timeout=TIMEOUT)
        left_running = _group_alive(shell.pid)
    except subprocess.TimeoutExpired:
        os.killpg(shell.pid, signal.SIGKILL)
        output, _ = shell.communicate()
        raise AssertionError(
            f"the guide did not end within {TIMEOUT} s:\n{output}\n{_logs(fed)}"
        ) from None
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever the guide left running
            os.killpg(shell.pid, signal.SIGKILL)
    assert shell.returncode == 0, f"{output}\n{_logs(fed)}"
    assert not left_running, "the guide's last block leaves its server or nodes running"

    # the server's machine never held the CA's private key
    assert sorted(p.name for p in (fed / "server" / "ca").iterdir()) == ["ca.crt", "crl.pem"]
    assert not list((fed / "server").rglob("ca.key"))
    # each hospital verified the signed bundle, and the run finished with a model
    assert len(re.findall(r"^(?:\w+: )?verified$", output, flags=re.M)) == len(HOSPITALS), output
    run_id = (fed / "run.out").read_text().splitlines()[0].strip()
    assert f"run {run_id}: heart-disease 1.0.0 — finished (3/3 rounds)" in output, output
    on_server = fed / "server" / "data" / "runs" / run_id / "work" / "model.npz"
    downloaded = fed / "heart-model.npz"
    assert downloaded.is_file() and on_server.is_file()
    assert load_model(downloaded).equals(load_model(on_server))
    assert "{'weight': (1, 13), 'bias': (1,)}" in output
    # the audit log holds alice's start of the run, with the signed bundle's hash
    assert re.search(r"^audit log ok: \d+ entries, head \d+:[0-9a-f]{64}$", output, re.M), output
    shown = subprocess.run(
        [BIN / "consortium", "audit", "show", "--workdir", fed / "server" / "data",
         "--action", "run.start", "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    started, by_mallory = [json.loads(line) for line in shown.splitlines()]
    who = {key: started[key] for key in ("actor", "role", "organisation", "run_id")}
    assert who == {"actor": "alice", "role": "admin", "organisation": "Heart Consortium",
                   "run_id": run_id}, started  # fmt: skip
    bundle = hashlib.sha256((fed / "heart.cab").read_bytes()).hexdigest()
    assert started["detail"]["bundle_sha256"] == bundle, started
    resigned = hashlib.sha256((fed / "mallory.cab").read_bytes()).hexdigest()
    assert by_mallory["detail"]["bundle_sha256"] == resigned, by_mallory
    # the bundle Mallory re-signed was refused by every hospital, in its own words
    (refused,) = re.findall(
        r"^run (\w+): heart-disease 1\.0\.0 — failed \(0(?:/\d+)? rounds\)", output, re.M
    )
    assert by_mallory["run_id"] == refused
    assert "exit 5: every hospital refused it" in output, output
    # the nodes ran the signed app under their policy, and refused Mallory's
    for hospital in HOSPITALS:
        log = (fed / hospital / "work" / "node.log").read_text()
        assert "node policy" in log and "round 3: train done" in log, log
        refusal = log.split(f"run {refused} round 1: train refused:", 1)[1].splitlines()[0]
        assert refusal.startswith(" app bundle refused (untrusted-key)"), refusal
        assert f"{hospital}: failed (PolicyRefused: app bundle refused (untrusted-key)" in output
        assert log.count("refused:") == 1, log  # the signed run was never refused
