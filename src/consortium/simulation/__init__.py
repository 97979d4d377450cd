"""Simulation: many virtual silos in one machine, same app code as deployment."""

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
