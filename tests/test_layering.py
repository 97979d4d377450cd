"""Architecture rules: layers (import-linter) and lazily imported heavy dependencies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = (
    "sklearn", "mlflow", "torch", "ray", "matplotlib", "joblib", "imblearn", "grpc", "pandas",
    "sqlalchemy", "psycopg", "cryptography",
)  # fmt: skip


def test_import_linter_contracts_hold() -> None:
    exe = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_modules_do_not_import_heavy_packages() -> None:
    """`import consortium` and every base module stay light: heavy extras load lazily."""
    code = (
        "import sys\n"
        "import consortium, consortium.core, consortium.strategy, consortium.client\n"
        "import consortium.server, consortium.simulation, consortium.apps, consortium.tracking\n"
        "import consortium.datasets, consortium.ml, consortium.cli.main\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported eagerly: {out.stdout.strip()}"


def test_an_app_process_and_a_simulation_worker_load_only_what_they_use() -> None:
    """The package's names import on first use: the client side and a simulation worker
    do not load the server, the strategies, the control plane or pydantic (~17 MB and
    0.1 s less per process)."""
    code = (
        "import sys\n"
        "import consortium.client, consortium.simulation.worker, consortium.apps.loader\n"
        "from consortium import ClientApp, Message\n"
        "print(','.join(m for m in ('consortium.server', 'consortium.strategy',\n"
        "    'consortium.control', 'consortium.simulation.engine', 'pydantic',\n"
        "    'consortium.apps.signing') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported eagerly: {out.stdout.strip()}"
    # ...and every public name still resolves, to the object its home module defines
    import consortium
    import consortium.simulation
    from consortium.strategy import FedAvg

    assert consortium.FedAvg is FedAvg
    assert "run_simulation" in dir(consortium.simulation)
    import consortium.apps
    import consortium.core

    for package in (consortium, consortium.apps, consortium.core, consortium.simulation):
        for name in package.__all__:
            assert hasattr(package, name), f"{package.__name__}.{name}"
        # the lazy table and __all__ name the same things (one cannot drift from the other)
        lazy = set(vars(package)["_HOMES"])
        assert set(package.__all__) - {"__version__"} == lazy, package.__name__


def test_public_api_is_exactly_all() -> None:
    import consortium

    for name in consortium.__all__:
        assert hasattr(consortium, name), name
    public = {n for n in vars(consortium) if not n.startswith("_")}
    # submodules appear as attributes once imported; everything else must be in __all__
    import types

    extra = {
        n
        for n in public - set(consortium.__all__)
        if not isinstance(getattr(consortium, n), types.ModuleType)
    }
    assert extra == set()
