"""The CLI does not write a private key where a ``git commit`` would publish it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")

EXE = str(Path(sys.executable).parent / "consortium")


def _consortium(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    folder = tmp_path / "repo"
    folder.mkdir()
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    return folder


@pytest.mark.parametrize(
    "command",
    [
        ["ca", "init", "--dir", "ca"],
        ["app", "keygen", "--out", "keys/publisher.key"],
    ],
    ids=["ca-init", "app-keygen"],
)
def test_a_key_inside_a_work_tree_that_does_not_ignore_it_is_refused(
    repo: Path, command: list[str]
) -> None:
    done = _consortium(*command, cwd=repo)

    assert done.returncode == 2, done.stdout + done.stderr
    assert "refusing to write a private key there" in done.stderr
    assert "--allow-git-tree" in done.stderr
    assert not [p for p in repo.rglob("*") if p.suffix == ".key"]  # nothing written


def test_an_issued_certificate_key_is_refused_in_the_tree_then_written_once_ignored(
    repo: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "offline-ca"
    assert _consortium("ca", "init", "--dir", str(outside), cwd=tmp_path).returncode == 0

    refused = _consortium("ca", "issue", "--dir", str(outside), "--node", "va", cwd=repo)
    assert refused.returncode == 2 and "--out: refusing" in refused.stderr, refused.stderr

    (repo / ".gitignore").write_text("credentials/\n")
    issued = _consortium("ca", "issue", "--dir", str(outside), "--node", "va", cwd=repo)
    assert issued.returncode == 0, issued.stderr
    assert (repo / "credentials" / "va" / "va.key").exists()


def test_the_operator_may_insist(repo: Path) -> None:
    done = _consortium("app", "keygen", "--out", "publisher.key", "--allow-git-tree", cwd=repo)

    assert done.returncode == 0, done.stderr
    assert (repo / "publisher.key").exists()


def test_outside_any_work_tree_nothing_changes(tmp_path: Path) -> None:
    done = _consortium("ca", "init", "--dir", "ca", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
