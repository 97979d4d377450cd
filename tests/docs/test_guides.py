"""The guides in docs/ stay true: their code is the shipped code, their commands run."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXE = str(Path(sys.executable).parent / "consortium")


def _blocks(doc: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", doc.read_text(), flags=re.S)


def test_server_apps_guide_shows_the_shipped_fedavg_main_verbatim() -> None:
    shipped = (ROOT / "examples" / "fedavg_by_hand" / "fedavg_main.py").read_text()
    assert shipped in _blocks(ROOT / "docs" / "server-apps.md", "python")


def test_server_apps_guide_command_runs(tmp_path: Path) -> None:
    commands = [
        line
        for block in _blocks(ROOT / "docs" / "server-apps.md", "bash")
        for line in block.splitlines()
        if line.startswith(".venv/bin/consortium simulate")
    ]
    assert commands, "the guide shows how to run the example"
    for command in commands:
        args = [EXE, *shlex.split(command)[1:], "--run-dir", str(tmp_path / "run")]
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert (tmp_path / "run" / "model.npz").exists()
        assert "fedavg-by-hand" in done.stdout


def _run_script_block(doc: str, marker: str, folder: Path) -> str:
    """Run the one python block of ``docs/<doc>`` holding ``marker`` as a script file of its
    own, in ``folder``; its standard output."""
    (example,) = [b for b in _blocks(ROOT / "docs" / doc, "python") if marker in b]
    script = folder / "example.py"
    script.write_text(example)
    done = subprocess.run(
        [sys.executable, str(script)], cwd=folder, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_mods_guide_complete_example_runs(tmp_path: Path) -> None:
    _run_script_block("mods.md", "run_simulation", tmp_path)


def test_simulation_guide_guarded_script_runs_on_the_processes_backend(tmp_path: Path) -> None:
    """docs/simulation.md's script, as a file of its own: its workers import it again, and
    its `if __name__ == "__main__":` keeps them from starting a run of their own."""
    assert _run_script_block("simulation.md", "__main__", tmp_path).strip().endswith("rounds: 2")


def test_apps_guide_walk_through_prints_what_it_shows(tmp_path: Path) -> None:
    """docs/apps.md's commands, run in a fresh folder, print its expected output (``<…>``
    stands for a hash or size that depends on the key)."""
    doc = ROOT / "docs" / "apps.md"
    (commands,) = [b for b in _blocks(doc, "bash") if "consortium app verify" in b]
    (expected,) = [b for b in _blocks(doc, "text") if b.startswith("private key")]
    shutil.copytree(ROOT / "examples" / "heart_disease", tmp_path / "examples" / "heart_disease")
    env = {**os.environ, "PATH": f"{Path(EXE).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("CONSORTIUM_PUBLISHER_PASSPHRASE", None)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", commands],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    shown = expected.strip().splitlines()
    printed = done.stdout.strip().splitlines()
    assert len(printed) == len(shown), done.stdout
    for want, got in zip(shown, printed, strict=True):
        pattern = re.sub(r"<[^>]*>", r"\\S+", re.escape(want))  # re.escape leaves < and >
        assert re.fullmatch(pattern, got), (want, got)
