"""What the built-in workflows run: ``ServerConfig`` (rounds) and ``AsyncServerConfig`` (FedBuff).

``ServerApp(server_fn=...)`` returns one of these from ``server_fn(context)``;
the app then runs the matching workflow (:mod:`consortium.server.workflow`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from consortium.core.errors import ConfigError
from consortium.core.history import RoundRecord
from consortium.core.protocol import STRATEGY_NAME_PARAM, STRATEGY_PARAM_PREFIX, STRATEGY_SETTING
from consortium.core.records import Config
from consortium.server.context import ModelExporter
from consortium.strategy.base import Strategy
from consortium.strategy.fedbuff import AsyncStrategy


@dataclass(slots=True)
class ServerConfig:
    """How the default round loop drives a strategy.

    A round counts when at least ``max(min_replies, ceil(min_reply_fraction *
    sampled))`` nodes returned a valid update; otherwise it fails with
    :class:`~consortium.core.errors.RoundFailed`.
    """

    strategy: Strategy
    num_rounds: int = 3
    round_timeout: float | None = None
    min_replies: int = 1
    min_reply_fraction: float = 0.0
    evaluate_every: int = 1
    exporter: ModelExporter | None = None
    #: deployment: seconds a round waits for the strategy's min_available_nodes to be online
    node_wait: float = 300.0
    #: a round that fails (too few valid replies) is retried this many times, then the run fails
    round_retries: int = 0
    #: deployment: checkpoint after every this many rounds (and after the last); 0: never
    checkpoint_every: int = 1
    #: write checkpoints on a background thread while the next round runs
    checkpoint_in_background: bool = True

    def __post_init__(self) -> None:
        if self.num_rounds < 0:
            raise ConfigError(f"num_rounds must be >= 0, got {self.num_rounds}")
        if self.round_timeout is not None and not (0 < self.round_timeout < math.inf):
            raise ConfigError(
                f"round_timeout must be a finite number > 0 seconds, got {self.round_timeout}"
            )
        if not 0 <= self.node_wait < math.inf:
            raise ConfigError(
                f"node_wait must be a finite number >= 0 seconds, got {self.node_wait}"
            )
        if self.min_replies < 0:
            raise ConfigError(f"min_replies must be >= 0, got {self.min_replies}")
        if not 0.0 <= self.min_reply_fraction <= 1.0:  # NaN fails this too
            raise ConfigError(
                f"min_reply_fraction must be within [0, 1], got {self.min_reply_fraction}"
            )
        if self.round_retries < 0:
            raise ConfigError(f"round_retries must be >= 0, got {self.round_retries}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.evaluate_every < 0:
            raise ConfigError(f"evaluate_every must be >= 0, got {self.evaluate_every}")


@dataclass(slots=True)
class AsyncServerConfig:
    """How the FedBuff workflow drives an asynchronous strategy.

    The run ends after ``num_steps`` server steps, when the grid clock passes
    ``max_clock`` seconds, or when ``stop_when(record)`` is true after a step.
    A task not answered ``task_timeout`` seconds (grid clock) after it was
    submitted counts as a timeout and frees its slot; its late reply is
    ignored. The run fails with :class:`RoundFailed` when
    ``max_failures_per_step`` tasks failed, were rejected or timed out since
    the last step. Central evaluation (``strategy.evaluate``) runs every
    ``evaluate_every`` steps; there is no federated evaluation stage.
    With checkpoints on (deployment), the buffer, the model versions still in
    use and the history are saved after every ``checkpoint_every`` steps.
    """

    strategy: AsyncStrategy
    num_steps: int = 10
    task_timeout: float | None = None
    evaluate_every: int = 1
    max_failures_per_step: int = 100
    max_clock: float | None = None
    stop_when: Callable[[RoundRecord], bool] | None = None
    exporter: ModelExporter | None = None
    #: deployment: seconds to wait for the strategy's min_available_nodes to be online
    node_wait: float = 300.0
    #: deployment: checkpoint after every this many steps (and after the last); 0: never
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.num_steps < 0:
            raise ConfigError(f"num_steps must be >= 0, got {self.num_steps}")
        if self.task_timeout is not None and not (0 < self.task_timeout < math.inf):
            raise ConfigError(
                f"task_timeout must be a finite number > 0 seconds, got {self.task_timeout}"
            )
        if not 0 <= self.node_wait < math.inf:
            raise ConfigError(
                f"node_wait must be a finite number >= 0 seconds, got {self.node_wait}"
            )
        if self.evaluate_every < 0:
            raise ConfigError(f"evaluate_every must be >= 0, got {self.evaluate_every}")
        if self.max_failures_per_step < 1:
            raise ConfigError(
                f"max_failures_per_step must be >= 1, got {self.max_failures_per_step}"
            )
        if self.max_clock is not None and not self.max_clock > 0:  # NaN too
            raise ConfigError(f"max_clock must be > 0 seconds, got {self.max_clock}")


def strategy_params(settings: Config) -> Config:
    """A strategy's settings as run params, namespaced (``strategy.name``,
    ``strategy.fraction_train``, ...) so an app's run config never hides one."""
    return {
        (STRATEGY_NAME_PARAM if key == STRATEGY_SETTING else STRATEGY_PARAM_PREFIX + key): value
        for key, value in settings.items()
    }
