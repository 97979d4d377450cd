"""Simulation: many virtual silos in one machine, same app code as deployment.

Each name below is imported from its module when first used (PEP 562): a
simulation worker process imports ``consortium.simulation.worker`` without the
engine, the server or Ray's adapter.
"""

import typing

from consortium._lazy import lazy_exports as _lazy_exports

#: each public name and the module it comes from
_HOMES = {
    "AsyncSimulationGrid": "consortium.simulation.async_grid",
    "AttackedGrid": "consortium.simulation.attacks",
    "GaussianNoise": "consortium.simulation.attacks",
    "InnerProductManipulation": "consortium.simulation.attacks",
    "LittleIsEnough": "consortium.simulation.attacks",
    "MALICIOUS": "consortium.simulation.attacks",
    "ModelPoisoning": "consortium.simulation.attacks",
    "RayGrid": "consortium.simulation.ray_backend",
    "RayOptions": "consortium.simulation.ray_backend",
    "ReplayGrid": "consortium.simulation.replay",
    "RoundView": "consortium.simulation.attacks",
    "SignFlip": "consortium.simulation.attacks",
    "SimulationGrid": "consortium.simulation.grid",
    "alie_z": "consortium.simulation.attacks",
    "completion_order": "consortium.simulation.replay",
    "flip_labels": "consortium.simulation.attacks",
    "is_malicious": "consortium.simulation.attacks",
    "lognormal_speeds": "consortium.simulation.async_grid",
    "mark_malicious": "consortium.simulation.attacks",
    "run_async_simulation": "consortium.simulation.async_grid",
    "run_simulation": "consortium.simulation.engine",
}

if typing.TYPE_CHECKING:
    from consortium.simulation.async_grid import (
        AsyncSimulationGrid,
        lognormal_speeds,
        run_async_simulation,
    )
    from consortium.simulation.attacks import (
        MALICIOUS,
        AttackedGrid,
        GaussianNoise,
        InnerProductManipulation,
        LittleIsEnough,
        ModelPoisoning,
        RoundView,
        SignFlip,
        alie_z,
        flip_labels,
        is_malicious,
        mark_malicious,
    )
    from consortium.simulation.engine import run_simulation
    from consortium.simulation.grid import SimulationGrid
    from consortium.simulation.ray_backend import RayGrid, RayOptions
    from consortium.simulation.replay import ReplayGrid, completion_order

__all__ = [
    "MALICIOUS",
    "AsyncSimulationGrid",
    "AttackedGrid",
    "GaussianNoise",
    "InnerProductManipulation",
    "LittleIsEnough",
    "ModelPoisoning",
    "RayGrid",
    "RayOptions",
    "ReplayGrid",
    "RoundView",
    "SignFlip",
    "SimulationGrid",
    "alie_z",
    "completion_order",
    "flip_labels",
    "is_malicious",
    "lognormal_speeds",
    "mark_malicious",
    "run_async_simulation",
    "run_simulation",
]

__getattr__, __dir__ = _lazy_exports(__name__, _HOMES, globals())
