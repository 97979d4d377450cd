"""``consortium run`` over the REST API (``--api``/``--token-file``) and over gRPC
(``--server``/``--credentials``) against one real deployed server: the same progress
lines, the same metrics table, the exit codes of docs/operations.md."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from consortium import ControlClient
from consortium.cli.main import main
from consortium.cli.run_view import metrics_table, round_line
from consortium.control.tokens import TokenAuthority
from consortium.transport.ca import CertificateAuthority
from deploy.conftest import SLOW_APP, Deployment, Federation, wait_for

TWO = ("cleveland", "va")
CONFIG = ("--run-config", "num-rounds=2", "--run-config", "min-nodes=2",
          "--run-config", "min-replies=2")  # fmt: skip


@dataclass
class Served:
    dep: Deployment
    rest: tuple[str, ...]
    grpc: tuple[str, ...]
    observer: tuple[str, ...]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("federation")
    ca = CertificateAuthority.init(root / "ca")
    for role, name in (("node", "cleveland"), ("node", "va"), ("admin", "alice")):
        ca.issue(role, name, root / "credentials" / name)
    ca.issue("server", "localhost", root / "credentials" / "localhost", ips=["127.0.0.1"])
    dep = Deployment(Federation(root, root / "credentials", root / "ca"), root / "deployment")
    dep.workdir.mkdir()
    try:
        port = dep.start_server("--http", "127.0.0.1:0", offline_after=5.0)
        for name in TWO:
            dep.start_node(name)
        server = dep.workdir / "server"
        url = (server / "api" / "url").read_text().strip()
        files = {}
        for role in ("researcher", "observer"):
            token, _ = TokenAuthority(server).create(name=role[:4], role=role, days=1)
            files[role] = dep.workdir / f"{role}.token"
            files[role].write_text(token + "\n")
        client = ControlClient(url, files["observer"].read_text())
        wait_for(lambda: sum(n["status"] == "online" for n in client.nodes()) == 2, 60, "nodes")
        yield Served(
            dep,
            ("--api", url, "--token-file", str(files["researcher"])),
            ("--server", f"127.0.0.1:{port}", "--credentials", str(dep.fed.creds("alice"))),
            ("--api", url, "--token-file", str(files["observer"])),
        )
    finally:
        dep.close()


def consortium(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("path", ["rest", "grpc"])
def test_start_wait_prints_a_line_per_round_then_the_metrics(
    served: Served, capsys: pytest.CaptureFixture[str], path: str
) -> None:
    target = served.rest if path == "rest" else served.grpc
    code, out, err = consortium(capsys, "run", "start", str(SLOW_APP), *target, *CONFIG,
                                "--wait")  # fmt: skip
    assert code == 0, err
    run_id = out.splitlines()[0]
    lines = [line for line in err.splitlines() if line.startswith("round ")]
    assert len(lines) == 2, err
    for k, line in enumerate(lines, 1):
        assert re.fullmatch(rf"round {k}/2: loss [0-9.e+-]+ \([0-9.]+ s; \d+ s elapsed\)", line)
    assert "Metrics per round" in out and all(n in out for n in TWO), out
    code, shown, err = consortium(capsys, "run", "show", run_id, *target)
    assert code == 0 and "finished (2/2 rounds)" in shown, err
    # each node's loss in the table: the same numbers over both APIs
    assert re.search(r"cleveland.*\n", shown) and " / –" in shown, shown
    code, listed, _ = consortium(capsys, "run", "list", *target)
    assert code == 0 and run_id in listed


def test_download_over_rest_takes_a_round_and_grpc_refuses_one(
    served: Served, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = consortium(capsys, "run", "start", str(SLOW_APP), *served.rest, *CONFIG,
                                "--nodes", "va,cleveland", "--wait")  # fmt: skip
    assert code == 0, err
    run_id = out.splitlines()[0]
    code, shown, _ = consortium(capsys, "run", "show", run_id, *served.rest)
    assert "nodes chosen for this run: cleveland, va" in shown
    code, out, err = consortium(capsys, "run", "download", run_id, *served.rest, "--round", "1",
                                "-o", str(tmp_path / "r1.npz"))  # fmt: skip
    assert code == 0 and "1 array(s)" in out, err
    code, out, err = consortium(capsys, "run", "download", run_id, *served.grpc,
                                "-o", str(tmp_path / "final.npz"))  # fmt: skip
    assert code == 0, err
    with np.load(tmp_path / "r1.npz") as r1, np.load(tmp_path / "final.npz") as final:
        assert r1["w"].shape == final["w"].shape and not np.array_equal(r1["w"], final["w"])
    code, _, err = consortium(capsys, "run", "download", run_id, *served.grpc, "--round", "1",
                              "-o", str(tmp_path / "x.npz"))  # fmt: skip
    assert code == 2 and "--round" in err and "REST" in err
    code, _, err = consortium(capsys, "run", "start", str(SLOW_APP), *served.grpc,
                              "--nodes", "va")  # fmt: skip
    assert code == 2 and "--nodes" in err


def test_exit_codes_over_rest(
    served: Served, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # refused by the policy: 11, naming role and action
    code, _, err = consortium(capsys, "run", "start", str(SLOW_APP), *served.observer)
    assert code == 11 and "observer" in err and "403" in err, err
    # refused token: 11
    bad = tmp_path / "bad.token"
    bad.write_text("not-a-token")
    code, _, err = consortium(capsys, "run", "list", *served.rest[:2], "--token-file", str(bad))
    assert code == 11 and "401" in err, err
    # no such run: 10; an unreachable API: 10
    assert consortium(capsys, "run", "show", "nope", *served.rest)[0] == 10
    down = ("--api", "http://127.0.0.1:1", "--token-file", str(bad))
    code, _, err = consortium(capsys, "run", "list", *down)
    assert code == 10 and "cannot reach" in err
    # bad options: 2
    for args in (("run", "list", *served.rest, *served.grpc[:2]),  # --server and --api
                 ("run", "list", "--api", "ftp://x", "--token-file", str(bad)),
                 ("run", "list", "--api", "http://x", "--token-file", str(tmp_path / "none")),
                 ("run", "list")):  # fmt: skip
        code, _, err = consortium(capsys, *args)
        assert code == 2, (args, err)


def test_the_progress_line_and_table_read_loss_and_auc_and_tolerate_nan() -> None:
    info = {
        "rounds": [
            {
                "round": 3,
                "seconds": 0.42,
                "metrics": {"train_loss": 0.9, "eval_loss": 0.45, "eval_auc": 0.831},
                "nodes": [
                    {"node": "va", "stage": "train", "metrics": {"loss": 0.8}},
                    {"node": "va", "stage": "evaluate", "metrics": {"loss": 0.5, "auc": None}},
                    {"node": "cleveland", "stage": "evaluate",
                     "metrics": {"loss": math.nan, "auc": 0.9}},
                ],
            }
        ]
    }  # fmt: skip
    line = round_line(info["rounds"][0], 15, 12.3)
    assert line == "round 3/15: loss 0.45, AUC 0.831 (0.4 s; 12 s elapsed)"
    console = Console(width=200, record=True)
    console.print(metrics_table(info))
    text = console.export_text()
    assert "0.45" in text and "0.831" in text
    assert "– / 0.9" in text and "0.5 / –" in text  # NaN and null shown as –
