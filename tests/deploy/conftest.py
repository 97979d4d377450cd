"""Real deployments for tests: a CA, a `consortium server` process, `consortium node` processes."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from consortium.apps.bundle import make_bundle
from consortium.transport.ca import CertificateAuthority
from consortium.transport.grpc_client import ClientTls, ControlClient

EXE = str(Path(sys.executable).parent / "consortium")
HERE = Path(__file__).parent
SLOW_APP = HERE / "slowapp"
NODES = ("cleveland", "hungarian", "switzerland", "va")


@dataclass
class Federation:
    root: Path
    credentials: Path
    ca_dir: Path

    def creds(self, name: str) -> Path:
        return self.credentials / name

    def tls(self, name: str) -> ClientTls:
        """The TLS material of certificate ``name``, for a client of the test's own."""
        folder = self.creds(name)
        return ClientTls(
            key=(folder / f"{name}.key").read_bytes(),
            certificate=(folder / f"{name}.crt").read_bytes(),
            ca=(folder / "ca.crt").read_bytes(),
        )

    def admin(self, port: int) -> ControlClient:
        return ControlClient(f"127.0.0.1:{port}", tls=self.tls("alice"))


def import_app(folder: Path, module: str) -> Any:
    """Import ``module`` from the app folder ``folder`` (as a node loads its app)."""
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(str(folder))


@pytest.fixture(scope="session")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    root = tmp_path_factory.mktemp("federation")
    ca = CertificateAuthority.init(root / "ca")
    creds = root / "credentials"
    ca.issue("server", "localhost", creds / "localhost", ips=["127.0.0.1"])
    for name in NODES:
        ca.issue("node", name, creds / name)
    ca.issue("admin", "alice", creds / "alice")
    return Federation(root, creds, root / "ca")


@dataclass
class Deployment:
    """Processes of one test; everything is killed at teardown."""

    fed: Federation
    workdir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    port: int = 0

    def start_server(self, *extra: str, offline_after: float = 2.0, tracking: bool = False) -> int:
        """The server, on the port of the one before (a restart); MLflow tracking only
        when a test asks (its store costs seconds to create)."""
        port_file = self.workdir / "port"
        port_file.unlink(missing_ok=True)
        address = f"127.0.0.1:{self.port}"  # reuse the port after a restart
        args = [
            EXE, "server", "--address", address,
            "--credentials", str(self.fed.creds("localhost")), "--ca-dir", str(self.fed.ca_dir),
            "--workdir", str(self.workdir / "server"), "--port-file", str(port_file),
            "--heartbeat", "0.3", "--offline-after", str(offline_after),
            *[a for n in NODES for a in ("--allow", n)], *extra,
            *([] if tracking else ["--no-tracking"]),
        ]  # fmt: skip
        self.procs["server"] = self._spawn("server", args)
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text():
            if self.procs["server"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start:\n" + self.log("server"))
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        return self.port

    def start_node(
        self, name: str, app: Path = SLOW_APP, *, policy: Path | None = None, **config: object
    ) -> None:
        """A node process for ``name``, running the local app folder ``app``, or, given
        ``policy``, the signed bundles that policy file allows; ``config`` adds node-config
        entries (KEY=VALUE)."""
        extra = [a for key, value in config.items() for a in ("--config", f"{key}={value}")]
        runs = ["--policy", str(policy)] if policy is not None else ["--app", str(app)]
        args = [
            EXE, "node", "--server", f"127.0.0.1:{self.port}",
            "--credentials", str(self.fed.creds(name)), *runs,
            "--config", f"center={name}", *extra,
            "--work-dir", str(self.workdir / "nodes" / name),
        ]  # fmt: skip
        self.procs[name] = self._spawn(name, args)

    def start_run(self, app: Path, config: dict[str, Any], seed: int) -> str:
        """Start a run of ``app`` as the admin ``alice``; its run id. ``app`` is an app
        folder (bundled unsigned) or a bundle file (``.cab``, sent as is)."""
        bundle = app.read_bytes() if app.is_file() else make_bundle(app)
        admin = self.fed.admin(self.port)
        try:
            return admin.start_run(bundle, config, seed)
        finally:
            admin.close()

    def wait_run(self, run_id: str, timeout: float = 180) -> dict[str, Any]:
        """``run show`` of ``run_id`` once it is no longer pending or running."""
        admin = self.fed.admin(self.port)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                info = admin.show_run(run_id)
                if info["status"] not in ("pending", "running"):
                    return info
                time.sleep(0.2)
        finally:
            admin.close()
        raise AssertionError(f"run {run_id} did not finish:\n{self.log('server')}")

    def wait_rounds(self, run_id: str, count: int, timeout: float = 120) -> None:
        """Wait until ``run show`` of ``run_id`` lists ``count`` rounds."""
        admin = self.fed.admin(self.port)
        try:
            deadline = time.monotonic() + timeout
            while len(admin.show_run(run_id)["rounds"]) < count:
                assert time.monotonic() < deadline, self.log("server")
                time.sleep(0.1)
        finally:
            admin.close()

    def app_process(self, name: str, module: str) -> int:
        """The pid of the process running ``module`` under process ``name`` (the
        server's or a node's app process)."""
        for child in psutil.Process(self.procs[name].pid).children(recursive=True):
            if module in " ".join(child.cmdline()):
                return child.pid
        raise AssertionError(f"no {module} under {name}")

    def run_dir(self, run_id: str) -> Path:
        return self.workdir / "server" / "runs" / run_id

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.out", "ab")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        for name in list(self.procs):
            proc = self.procs.pop(name)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
def deployment(federation: Federation, tmp_path: Path) -> Iterator[Deployment]:
    dep = Deployment(federation, tmp_path)
    try:
        yield dep
    finally:
        dep.close()


#: an app whose node adds one to the 20 MB model it gets (a test adds its server app's main)
PLUS_ONE_APP = """
import os
import time

import numpy as np

from consortium import ClientApp, ServerApp
from consortium.core.arrays import Arrays
from consortium.core.history import RoundRecord
from consortium.core.message import Content, Message

client = ClientApp()
app = ServerApp()
SIZE = 5_000_000  # float32: 20 MB, over the size that crosses as shared memory


@client.query()
def query(msg, context):
    w = msg.content.arrays["model"]["w"]
    return msg.reply(arrays=Arrays({"w": w + 1}))


def wait_for_go():  # up to 60 s: the test looks at the processes meanwhile
    deadline = time.monotonic() + 60
    while not os.path.exists("go") and time.monotonic() < deadline:
        time.sleep(0.05)
"""

#: PLUS_ONE_APP's server side, run config ``nodes`` (1), ``size`` (SIZE), ``rounds`` (1) and
#: ``timeout`` (60 s): each round sends every node the model plus the round's number and
#: reports ``central_<node>``: 1.0 when its reply is that plus one, 0.0 when it is not,
#: -1.0 when its task failed; then waits for the test's "go"
PLUS_ONE_MAIN = """

@app.main()
def main(grid, context):
    config = context.run_config
    nodes = sorted(grid.wait_for_nodes(int(config.get("nodes", 1)), 60))
    model = np.arange(int(config.get("size", SIZE)), dtype=np.float32)
    for rnd in range(1, int(config.get("rounds", 1)) + 1):
        tasks = [
            Message.create(run_id=context.run_id, dst=node, round=rnd, kind="query",
                           content=Content.of(arrays=Arrays({"w": model + rnd})))
            for node in nodes
        ]
        metrics = {}
        replies = grid.send_and_receive(tasks, timeout=float(config.get("timeout", 60)))
        for node, reply in zip(nodes, replies):
            if reply.error is not None:
                metrics[node] = -1.0
                print(f"round {rnd}: {node} failed: {reply.error.reason}")
                continue
            w = reply.content.arrays["model"]["w"]
            metrics[node] = float(np.array_equal(w, model + rnd + 1))
            del w, reply  # nothing of a reply outlives its round: its block is free again
        context.report(RoundRecord(round=rnd, central_metrics=metrics))
    wait_for_go()
"""


def write_app(folder: Path, manifest: str, modules: dict[str, str]) -> Path:
    """An app folder: ``consortium.toml`` and each ``NAME.py`` of ``modules``."""
    folder.mkdir()
    (folder / "consortium.toml").write_text(manifest)
    for name, text in modules.items():
        (folder / f"{name}.py").write_text(text)
    return folder


def writable_blocks(pid: int) -> int:
    """Shared blocks (``sandbox/shared_blocks.py``) process ``pid`` made: it maps them
    writable, and others' blocks read-only."""
    with open(f"/proc/{pid}/maps") as fh:
        return sum("memfd:consortium-" in line and line.split()[1] == "rw-s" for line in fh)


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
