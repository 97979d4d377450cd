"""The consortium command: real runs of the shipped examples, and clear errors."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest

from consortium.cli.main import COMMANDS, cli, main
from consortium.server import load_model

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def test_help_reads_well(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for word in ("simulate", "demo", "consortium demo"):
        assert word in out
    # every subcommand is listed with its one-line help, though each is imported lazily
    listed = out.split("Commands:", 1)[1]
    for name in COMMANDS:
        assert re.search(rf"^  {name} +\S", listed, re.M), f"{name} missing from:\n{listed}"


def test_each_subcommand_loads_only_what_it_needs() -> None:
    """Subcommands are imported when asked for: the CA's and the CLI's own commands load
    neither numpy nor the server (each took 0.5-0.8 s to start when every subcommand was
    imported up front), and every name of the lazy table is the command it runs."""
    code = (
        "import sys\n"
        "from consortium.cli.main import cli, main\n"
        "assert main(['--version']) == 0\n"
        "import click\n"
        "cli.get_command(click.Context(cli), 'ca')\n"
        "heavy = ('numpy', 'consortium.server', 'consortium.simulation', 'grpc', 'pydantic')\n"
        "print('loaded:', ','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = out.stdout.rsplit("loaded:", 1)[1].strip()
    assert loaded == "", f"imported eagerly: {loaded}"
    context = click.Context(cli)
    assert cli.list_commands(context) == sorted(COMMANDS)
    for name in COMMANDS:
        command = cli.get_command(context, name)
        assert isinstance(command, click.Command) and command.name == name


def test_simulate_heart_disease_example(tmp_path: Path) -> None:
    code = main(
        [
            "simulate",
            str(EXAMPLES / "heart_disease"),
            "--run-dir",
            str(tmp_path),
            "--no-tracking",
            "--no-progress",
            "--no-plot",
            "--run-config",
            "num-rounds=3",
        ]
    )
    assert code == 0
    model = load_model(tmp_path / "model.npz")
    assert model["weight"].shape == (1, 13)
    log = (tmp_path / "run.log").read_text()
    assert "round=3/3" in log


def test_simulate_is_reproducible_from_the_command_line(tmp_path: Path) -> None:
    args = ["--no-tracking", "--no-progress", "--no-plot", "--run-config", "num-rounds=2"]
    for name in ("a", "b"):
        assert (
            main(
                [
                    "simulate",
                    str(EXAMPLES / "heart_disease"),
                    "--seed",
                    "5",
                    "--run-dir",
                    str(tmp_path / name),
                    *args,
                ]
            )
            == 0
        )
    a, b = load_model(tmp_path / "a" / "model.npz"), load_model(tmp_path / "b" / "model.npz")
    assert a.equals(b)


def test_simulate_digits_processes_backend(tmp_path: Path) -> None:
    code = main(
        [
            "simulate",
            str(EXAMPLES / "digits"),
            "--run-dir",
            str(tmp_path),
            "--backend",
            "processes",
            "--workers",
            "2",
            "--no-tracking",
            "--no-progress",
            "--no-plot",
            "--run-config",
            "num-rounds=2",
        ]
    )
    assert code == 0
    assert load_model(tmp_path / "model.npz")["dense0.weight"].shape[0] in (64, 32)


def test_simulate_fraud_writes_joblib(tmp_path: Path) -> None:
    import joblib

    code = main(
        [
            "simulate",
            str(EXAMPLES / "fraud"),
            "--run-dir",
            str(tmp_path),
            "--nodes",
            "4",
            "--no-tracking",
            "--no-progress",
            "--no-plot",
            "--run-config",
            "num-rounds=2",
        ]
    )
    assert code == 0
    pipeline = joblib.load(tmp_path / "model.joblib")  # the federated scaler, then the model
    assert [name for name, _ in pipeline.steps] == ["scaler", "model"]
    npz = load_model(tmp_path / "model.npz")
    np.testing.assert_array_equal(pipeline.named_steps["model"].coef_, npz["coef"])
    log = (tmp_path / "run.log").read_text()  # the per-round config and the central AUC
    assert "train_local_epochs=3" in log and "central_auc=" in log


def test_malformed_manifest_names_field_and_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = tmp_path / "app"
    shutil.copytree(EXAMPLES / "heart_disease", app)
    manifest = app / "consortium.toml"
    manifest.write_text(manifest.read_text().replace('version = "1.0.0"', "version = 1"))
    code = main(["simulate", str(app), "--no-tracking"])
    err = capsys.readouterr().err
    assert code == 2
    assert "app.version" in err and str(manifest) in err


def test_unknown_run_config_key(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["simulate", str(EXAMPLES / "heart_disease"), "--run-config", "lrr=0.1"])
    assert code == 2
    assert "unknown run-config key 'lrr'" in capsys.readouterr().err


def test_console_script_entry_point() -> None:
    exe = Path(sys.executable).parent / "consortium"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert "consortium" in out.stdout


def test_deployment_commands_name_the_missing_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "grpc", None)  # as if the deploy extra were absent
    code = main(["node", "--server", "127.0.0.1:1", "--insecure", "--name", "n"])
    assert code == 9
    assert "consortium[deploy]" in capsys.readouterr().err
