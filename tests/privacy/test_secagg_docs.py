"""docs/privacy.md's SecAgg+ section stays true: its example runs and prints what it says,
and every test its claims table names exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "privacy.md"
HEADING = "## Secure aggregation (SecAgg+)"


def _section() -> str:
    text = DOC.read_text()
    start = text.index(HEADING)
    end = text.find("\n## ", start + len(HEADING))
    return text[start : end if end >= 0 else None]


def test_the_example_runs_and_prints_the_mean_it_promises(tmp_path: Path) -> None:
    (example,) = re.findall(r"```py\n(.*?)```", _section(), flags=re.S)
    script = tmp_path / "secagg_example.py"
    script.write_text(example)
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "[0.5 0.5 0.5]"


def test_the_deployment_snippet_runs_as_written(tmp_path: Path) -> None:
    (snippet,) = re.findall(r"```python\n(.*?)```", _section(), flags=re.S)
    script = tmp_path / "secagg_identity.py"
    script.write_text(snippet)
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_test_the_claims_name_exists() -> None:
    named = set(re.findall(r"`(?:test_secagg_\w+\.py::)?(test_\w+)`", _section()))
    assert len(named) >= 15
    defined = set()
    for path in (ROOT / "tests" / "privacy").glob("test_secagg_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(), flags=re.M))
    assert named <= defined, named - defined
