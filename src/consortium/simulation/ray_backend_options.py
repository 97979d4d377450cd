"""RayOptions: where the Ray backend runs and what each virtual node's task asks of Ray.

Resources are per node task: Ray places a node's task on a raylet with that
many CPUs, GPUs and bytes of memory free, so ``ray-num-gpus = 1`` runs as many
nodes at once as the cluster has GPUs. They come from the app's run config
(``[run-config]`` in consortium.toml, or ``consortium simulate --run-config
ray-num-gpus=1``) or from keyword arguments; the address from
``--ray-address``. This module never imports Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from consortium.core.errors import ConfigError
from consortium.core.records import Config

#: Run-config keys the Ray backend reads (one home for their names).
RAY_NUM_CPUS = "ray-num-cpus"
RAY_NUM_GPUS = "ray-num-gpus"
RAY_MEMORY = "ray-memory"
RAY_MAX_RETRIES = "ray-max-retries"
RAY_MAX_IN_FLIGHT = "ray-max-in-flight"
RAY_NODES_PER_TASK = "ray-nodes-per-task"

#: Ray's own default for tasks: a node task whose worker process died runs again this many times
DEFAULT_MAX_RETRIES = 3


@dataclass(frozen=True, slots=True)
class RayOptions:
    """How the Ray backend connects and what one node's task requests.

    ``address`` None starts a local Ray on loopback for the run (and stops it
    after); otherwise the run joins that cluster (``"auto"``, ``host:port``,
    ``ray://host:port``) and leaves it running. A node task whose worker
    process dies is run again up to ``max_retries`` times (same inputs, same
    seed: the same reply), then answers with an error reply, which the
    server's round policy (``min_replies``, ``min_reply_fraction``) counts as
    a failed node. ``max_in_flight`` bounds the tasks submitted ahead of the
    reply being consumed (None: four batches per CPU of the cluster).
    ``nodes_per_task`` node tasks run in turn in one Ray task (with one
    node's resources): Ray's own cost per task (about a millisecond) is then
    shared, for runs of many light nodes.
    """

    address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: int | None = None
    max_retries: int = DEFAULT_MAX_RETRIES
    max_in_flight: int | None = None
    nodes_per_task: int = 1

    def __post_init__(self) -> None:
        _check_amount(RAY_NUM_CPUS, self.num_cpus)
        _check_amount(RAY_NUM_GPUS, self.num_gpus)
        if self.memory is not None and self.memory < 1:
            raise ConfigError(f"{RAY_MEMORY} must be a number of bytes >= 1, got {self.memory}")
        if self.max_retries < 0:
            raise ConfigError(f"{RAY_MAX_RETRIES} must be >= 0, got {self.max_retries}")
        if self.nodes_per_task < 1:
            raise ConfigError(f"{RAY_NODES_PER_TASK} must be >= 1, got {self.nodes_per_task}")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ConfigError(f"{RAY_MAX_IN_FLIGHT} must be >= 1, got {self.max_in_flight}")

    @classmethod
    def from_run_config(cls, run_config: Config, *, address: str | None = None) -> RayOptions:
        """The options a run config sets (``ray-num-cpus`` …), defaults for the rest."""
        memory = _number(run_config, RAY_MEMORY)
        retries = _number(run_config, RAY_MAX_RETRIES)
        in_flight = _number(run_config, RAY_MAX_IN_FLIGHT)
        cpus = _number(run_config, RAY_NUM_CPUS)
        gpus = _number(run_config, RAY_NUM_GPUS)
        per_task = _number(run_config, RAY_NODES_PER_TASK)
        return cls(
            address=address,
            num_cpus=1.0 if cpus is None else float(cpus),
            num_gpus=0.0 if gpus is None else float(gpus),
            memory=None if memory is None else _whole(RAY_MEMORY, memory),
            max_retries=DEFAULT_MAX_RETRIES
            if retries is None
            else _whole(RAY_MAX_RETRIES, retries),
            max_in_flight=None if in_flight is None else _whole(RAY_MAX_IN_FLIGHT, in_flight),
            nodes_per_task=1 if per_task is None else _whole(RAY_NODES_PER_TASK, per_task),
        )

    def task_options(self) -> dict[str, Any]:
        """Keyword arguments for ``ray.remote(...).options`` of one node task."""
        options: dict[str, Any] = {
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "max_retries": self.max_retries,
            # an app's exception is an error reply already; only a lost worker is retried
            "retry_exceptions": False,
        }
        if self.memory is not None:
            options["memory"] = self.memory
        return options


def _check_amount(key: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{key} must be a finite number >= 0, got {value}")


def _number(run_config: Config, key: str) -> float | None:
    value = run_config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"run config {key} must be a number, got {value!r}")
    return float(value)


def _whole(key: str, value: float) -> int:
    if not value.is_integer():
        raise ConfigError(f"run config {key} must be a whole number, got {value}")
    return int(value)
