"""CI's second job: the suite's numerical core against the LOWEST numpy and scikit-learn
(and the scikit-learn stack's floors) that pyproject.toml allows.

The main job (`make test`) installs the newest versions the floors admit; this one pins
each floor exactly, read from pyproject.toml itself, so the metadata and what CI tests
cannot drift. It builds its own virtualenv (.venv-floors) with the package and the
`sklearn` extra only, and runs the tests that exercise numpy and scikit-learn: the
core records and wire format, strategies, ML adapters, datasets, simulation, node-side
mods and the examples. Deployment, the control plane and tracking are covered by the
main job; their heavier dependencies (gRPC, FastAPI, MLflow) set their own numpy floors.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-floors"
#: the packages whose lowest allowed version this job installs
FLOORED = ("numpy", "scikit-learn", "joblib", "imbalanced-learn")
TESTS = [
    "tests/core",
    "tests/strategy",
    "tests/ml",
    "tests/datasets",
    "tests/simulation",
    "tests/client",
    "tests/examples",
]
#: needs MLflow (the tracking extra), which the main job tests
IGNORED = ["tests/simulation/test_mlflow_e2e.py"]


def floors() -> list[str]:
    """``name==floor`` for each package of FLOORED, from pyproject.toml's requirements."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements.extend(extra)
    pins = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", requirement.strip())
        if match and match.group(1).lower() in FLOORED:
            pins[match.group(1).lower()] = f"{match.group(1)}=={match.group(2)}"
    missing = sorted(set(FLOORED) - set(pins))
    if missing:
        sys.exit(f"pyproject.toml states no '>=' floor for {', '.join(missing)}")
    return sorted(pins.values())


def main() -> None:
    pins = floors()
    print("floors:", " ".join(pins), flush=True)
    if not (VENV / "bin" / "python").exists():
        venv.create(VENV, with_pip=True)
    python = str(VENV / "bin" / "python")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", *pins, "-e", ".[sklearn]",
         "pytest", "pytest-timeout", "pytest-xdist", "hypothesis"],
        cwd=ROOT, check=True,
    )  # fmt: skip
    subprocess.run([python, "-m", "pip", "check"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    ignore = [f"--ignore={path}" for path in IGNORED]
    tests = subprocess.run(
        [python, "-m", "pytest", "-q", "-n", "2", "--dist", "loadscope", *ignore, *TESTS],
        cwd=ROOT, check=False,
    )  # fmt: skip
    sys.exit(tests.returncode)


if __name__ == "__main__":
    main()
