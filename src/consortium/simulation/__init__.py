"""Simulation: many virtual silos in one machine, same app code as deployment."""

from consortium.simulation.async_grid import (
    AsyncSimulationGrid,
    lognormal_speeds,
    run_async_simulation,
)
from consortium.simulation.engine import run_simulation
from consortium.simulation.grid import SimulationGrid

__all__ = [
    "AsyncSimulationGrid",
    "SimulationGrid",
    "lognormal_speeds",
    "run_async_simulation",
    "run_simulation",
]
