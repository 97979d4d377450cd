"""``consortium new``: each template gives an app that simulates at once and passes its own test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from consortium.cli.main import main
from consortium.cli.new_cmd import TEMPLATES

BIN = Path(sys.executable).parent
NEEDS = {"numpy": "numpy", "sklearn": "sklearn", "torch": "torch"}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=280)


@pytest.mark.parametrize(
    "template",
    [pytest.param(t, marks=[pytest.mark.torch] if t == "torch" else []) for t in TEMPLATES],
)
def test_template_simulates_and_passes_its_own_test(tmp_path: Path, template: str) -> None:
    pytest.importorskip(NEEDS[template])
    name = f"fresh_{template}_app"
    assert main(["new", name, "--template", template, "--dir", str(tmp_path)]) == 0
    app = tmp_path / name
    expected = {
        "consortium.toml",
        "README.md",
        "test_app.py",
        f"{name}/__init__.py",
        f"{name}/client.py",
        f"{name}/server.py",
        f"{name}/task.py",
    }
    assert {p.relative_to(app).as_posix() for p in app.rglob("*") if p.is_file()} == expected
    assert "{{" not in "".join(p.read_text() for p in app.rglob("*") if p.is_file())

    run_dir = tmp_path / "run"
    sim = _run(
        [
            str(BIN / "consortium"),
            "simulate",
            name,
            "--nodes",
            "2",
            "--run-config",
            "num-rounds=2",
            "--run-dir",
            str(run_dir),
            "--no-tracking",
            "--no-progress",
            "--no-plot",
        ],
        cwd=tmp_path,
    )
    assert sim.returncode == 0, sim.stdout + sim.stderr
    assert (run_dir / "model.npz").is_file()
    assert "round=2/2" in (run_dir / "run.log").read_text()
    assert "central_accuracy" in sim.stdout

    own = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=app)
    assert own.returncode == 0, own.stdout + own.stderr
    assert "1 passed" in own.stdout

    ruff = BIN / "ruff"
    if ruff.exists():  # the generated code is lint-clean as the user will see it
        rules = ["--isolated", "--line-length", "100"]
        lint = _run([str(ruff), "check", *rules, "--select", "E,F,I,B,UP", "."], cwd=app)
        assert lint.returncode == 0, lint.stdout
        style = _run([str(ruff), "format", *rules, "--check", "."], cwd=app)
        assert style.returncode == 0, style.stdout


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("my-app", "not a valid Python identifier"),
        ("1app", "not a valid Python identifier"),
        ("class", "not a valid Python identifier"),
        ("numpy", "already an importable module"),
        ("json", "already an importable module"),
    ],
)
def test_bad_names_are_refused_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, reason: str
) -> None:
    assert main(["new", name, "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"NAME {name!r}" in err and reason in err
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_non_empty_folder_and_accepts_an_empty_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "taken_app"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert main(["new", "taken_app", "--dir", str(tmp_path)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]

    (tmp_path / "a_file").write_text("x")
    assert main(["new", "a_file", "--dir", str(tmp_path)]) == 2

    (tmp_path / "empty_app").mkdir()
    assert main(["new", "empty_app", "--dir", str(tmp_path)]) == 0
    assert (tmp_path / "empty_app" / "consortium.toml").is_file()


def test_help_lists_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "consortium new NAME" in capsys.readouterr().out
    assert main(["new", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(t in out for t in TEMPLATES)
