"""`make docs` stays green and keeps its promise: it fails on a broken reference.

The site is built the way `make docs` builds it (``mkdocs build --strict`` with the
repository's mkdocs.yml), into a temporary folder. The failing cases build a copy of
docs/ with one broken thing added, so the checks are shown to bite, not only to pass.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MKDOCS = Path(sys.executable).parent / "mkdocs"


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MKDOCS), "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _copy_of_the_site_sources(tmp_path: Path) -> Path:
    """A scratch tree for the site: docs/ copied, the rest of what it reads linked."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "docs", tree / "docs")
    for unchanged in ("scripts", "src", "examples"):
        (tree / unchanged).symlink_to(ROOT / unchanged)
    shutil.copy(ROOT / "mkdocs.yml", tree / "mkdocs.yml")
    shutil.copy(ROOT / "README.md", tree / "README.md")
    return tree


def test_the_site_and_api_reference_build_strictly(tmp_path: Path) -> None:
    built = _build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 0, built.stderr
    client = (tmp_path / "site" / "reference" / "client" / "index.html").read_text()
    # the reference is generated from the docstrings: ClientApp's own docstring shows
    assert 'id="consortium.client.ClientApp"' in client
    assert "Routes each incoming message to the handler registered for its kind" in client


@pytest.mark.parametrize(
    ("broken", "named"),
    [
        ("See [the app][consortium.client.NoSuchApp].", "consortium.client.NoSuchApp"),
        ("See [the guide](no-such-guide.md).", "no-such-guide.md"),
        ("See [the code](../examples/no_such_example/app.py).", "no_such_example"),
        ("See [the grid](server-apps.md#no-such-section).", "no-such-section"),
    ],
    ids=["an unknown API name", "a missing guide", "a missing example", "a missing anchor"],
)
def test_a_broken_reference_fails_the_build(tmp_path: Path, broken: str, named: str) -> None:
    tree = _copy_of_the_site_sources(tmp_path)
    index = tree / "docs" / "index.md"
    index.write_text(index.read_text() + f"\n{broken}\n")
    built = _build(tree / "mkdocs.yml", tmp_path / "site")
    assert built.returncode != 0, f"{broken!r} did not fail the build:\n{built.stderr}"
    assert named in built.stderr  # it failed for the broken reference, not something else
