"""Issue 11's acceptance test on a real server: a coordinator uploads a server app
that tries to read the CA's key and the server's TLS key and send them back in its
error; `consortium server` runs it sandboxed, so it reads neither."""

from __future__ import annotations

from pathlib import Path

import pytest

from consortium.sandbox.confine import landlock_available

from .conftest import Deployment

pytestmark = pytest.mark.skipif(not landlock_available(), reason="needs Linux Landlock")

EXFILTRATE = """
import os
from consortium import ClientApp, ServerApp

client = ClientApp()
app = ServerApp()


def grab(path):
    try:
        with open(path) as fh:
            return fh.read()
    except OSError as exc:
        return f"<{type(exc).__name__}>"


@app.main()
def main(grid, context):
    stolen = {key: grab(str(path)) for key, path in context.run_config.items()}
    stolen["environ"] = grab(f"/proc/{os.getppid()}/environ")
    raise RuntimeError(f"STOLEN {stolen}")
"""

MANIFEST = """
[app]
name = "exfiltrate"
version = "1.0.0"
server = "exfil:app"
client = "exfil:client"

[run-config]
ca-key = ""
server-key = ""
state-db = ""
"""


def test_an_uploaded_app_reads_neither_the_ca_key_nor_the_server_key(
    deployment: Deployment, tmp_path: Path
) -> None:
    app = tmp_path / "exfil"
    app.mkdir()
    (app / "consortium.toml").write_text(MANIFEST)
    (app / "exfil.py").write_text(EXFILTRATE)
    deployment.start_server()
    fed = deployment.fed
    targets = {
        "ca-key": fed.ca_dir / "ca.key",
        "server-key": fed.creds("localhost") / "localhost.key",
        "state-db": deployment.workdir / "server" / "state.db",
    }
    assert all(p.exists() for p in targets.values())
    run_id = deployment.start_run(app, {k: str(v) for k, v in targets.items()}, seed=1)
    info = deployment.wait_run(run_id, timeout=60)

    assert info["status"] == "failed"
    error = info["error"]
    assert "STOLEN" in error, error
    for key in (*targets, "environ"):
        assert f"'{key}': '<PermissionError>'" in error, error
    for path in targets.values():
        if path.suffix == ".key":
            assert "PRIVATE KEY" not in error
            assert path.read_text()[40:80] not in error


def test_the_same_app_unconfined_does_read_the_keys(deployment: Deployment, tmp_path: Path) -> None:
    """The positive control: --unconfined-apps (development only) lets it read them,
    so the test above would see a leak."""
    app = tmp_path / "exfil"
    app.mkdir()
    (app / "consortium.toml").write_text(MANIFEST)
    (app / "exfil.py").write_text(EXFILTRATE)
    deployment.start_server("--unconfined-apps")
    key = deployment.fed.creds("localhost") / "localhost.key"
    run_id = deployment.start_run(app, {"server-key": str(key)}, seed=1)
    info = deployment.wait_run(run_id, timeout=60)

    assert "PRIVATE KEY" in info["error"]
    assert "--unconfined-apps" in deployment.log("server")


def test_the_audit_log_names_who_started_the_run_its_app_and_how_it_ended(
    deployment: Deployment, tmp_path: Path
) -> None:
    import json
    import subprocess

    from .conftest import EXE

    app = tmp_path / "exfil"
    app.mkdir()
    (app / "consortium.toml").write_text(MANIFEST)
    (app / "exfil.py").write_text(EXFILTRATE)
    deployment.start_server()
    run_id = deployment.start_run(app, {}, seed=1)
    deployment.wait_run(run_id, timeout=60)
    shown = subprocess.run(
        [EXE, "audit", "show", "--json", "--run", run_id,
         "--workdir", str(deployment.workdir / "server")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    entries = [json.loads(line) for line in shown.stdout.splitlines()]
    by_action = {e["action"]: e for e in entries}
    assert by_action["run.start"]["actor"] == "alice"
    assert by_action["run.start"]["detail"]["app"] == "exfiltrate"
    assert len(by_action["run.start"]["detail"]["bundle_sha256"]) == 64
    assert by_action["run.end"]["actor"] == "server"
    assert by_action["run.end"]["detail"]["status"] == "failed"
    verified = subprocess.run(
        [EXE, "audit", "verify", "--workdir", str(deployment.workdir / "server")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
