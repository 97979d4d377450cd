"""An app with a chain of two mods: the same model for every backend, and the mods ran."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.history import History, Outcome
from consortium.core.records import Config
from consortium.simulation import run_simulation
from consortium.simulation.grid import Backend

#: the deployable app folder the deployment test runs too (tests/deploy/test_mods_deployed.py)
MOD_APP = Path(__file__).resolve().parents[1] / "deploy" / "modapp"
NODES = ["cleveland", "hungarian", "switzerland", "va"]
CONFIG: Config = {"num-rounds": 3, "min-replies": 4, "min-nodes": 4, "round-timeout": 60.0}


def _app() -> ModuleType:
    if str(MOD_APP) not in sys.path:
        sys.path.insert(0, str(MOD_APP))
    import mod_app

    return mod_app


def _run(
    client_app: ClientApp | str, *, backend: Backend = "threads", workers: int = 1
) -> tuple[Arrays, History]:
    result = run_simulation(
        _app().server_app,
        client_app,
        node_ids=NODES,
        run_config=CONFIG,
        seed=13,
        backend=backend,
        workers=workers,
        app_path=[str(MOD_APP)],
    )
    return result.arrays, result.history


def test_mod_chain_is_bit_identical_across_backends_and_really_runs() -> None:
    app = _app()
    one = _run(app.client_app)
    three = _run(app.client_app, workers=3)
    procs = _run("mod_app:client_app", backend="processes", workers=2)
    assert one[0].equals(three[0])
    assert one[0].equals(procs[0])

    # the mods ran: the update-norm mod (outermost) saw every update clipped to MAX_NORM;
    # the local steps move each node further than that, so the clipping bit
    norms = [_norms(history) for _, history in (one, three, procs)]
    assert norms[0] == norms[1] == norms[2]
    flat = [v for per_round in norms[0] for v in per_round]
    assert len(flat) == 3 * len(NODES)
    assert max(flat) <= app.MAX_NORM * (1 + 1e-12)
    assert min(flat) >= app.MAX_NORM * (1 - 1e-12)
    # without the mods: another model, no norm reported
    plain = _run(app.plain_client_app)
    assert not plain[0].equals(one[0])
    assert all("update_norm" not in n.metrics for r in plain[1].rounds for n in r.nodes)


def _norms(history: History) -> list[list[float]]:
    """Each round's reported update norms, in node order; every train task succeeded."""
    out = []
    for record in history.rounds:
        trains = [n for n in record.nodes if n.stage == "train"]
        assert [n.outcome for n in trains] == [Outcome.OK] * len(NODES)
        out.append([float(n.metrics["update_norm"]) for n in trains])
    return out
