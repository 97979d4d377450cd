"""Simulation: many virtual silos in one machine, same app code as deployment."""

from consortium.simulation.engine import run_simulation
from consortium.simulation.grid import SimulationGrid

__all__ = ["SimulationGrid", "run_simulation"]
