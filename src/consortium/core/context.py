"""Context: what a node handler knows about where it runs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.records import Config, Metrics
from consortium.core.rng import derive_rng


@dataclass(slots=True)
class NodeState:
    """State a node keeps across rounds (for example SCAFFOLD's control variate).

    It stays on the node: in simulation it lives in the engine, in deployment
    beside the node process. It is typed records, never arbitrary objects, so
    it can be persisted and restored.
    """

    arrays: dict[str, Arrays] = field(default_factory=dict)
    configs: dict[str, Config] = field(default_factory=dict)
    metrics: dict[str, Metrics] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not (self.arrays or self.configs or self.metrics)


@dataclass(slots=True)
class Context:
    """Per-node context passed to every handler call.

    ``node_config`` is the node's own configuration (its data path, its
    partition id in simulation); it comes from the silo, never from the server.
    ``run_config`` is the run's configuration as the coordinator set it.
    """

    node_id: str
    node_config: Config = field(default_factory=dict)
    run_config: Config = field(default_factory=dict)
    state: NodeState = field(default_factory=NodeState)
    seed: int = 0

    def rng(self, round_: int, *, stream: str | None = None) -> np.random.Generator:
        """This node's generator for ``round_`` (derived from run seed, round, node id)."""
        return derive_rng(self.seed, round_, self.node_id, stream=stream)
