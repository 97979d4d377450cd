"""ServerApp: the server side of an app, turned into a ServerConfig per run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError
from consortium.strategy.base import Strategy

#: Writes extra model files (e.g. a joblib'd scikit-learn estimator) into a folder.
ModelExporter = Callable[[Arrays, Path], list[Path]]


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
        if self.round_timeout is not None and self.round_timeout <= 0:
            raise ConfigError(f"round_timeout must be > 0 seconds, got {self.round_timeout}")
        if self.min_replies < 0:
            raise ConfigError(f"min_replies must be >= 0, got {self.min_replies}")
        if not 0.0 <= self.min_reply_fraction <= 1.0:
            raise ConfigError(
                f"min_reply_fraction must be within [0, 1], got {self.min_reply_fraction}"
            )
        if self.round_retries < 0:
            raise ConfigError(f"round_retries must be >= 0, got {self.round_retries}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.evaluate_every < 0:
            raise ConfigError(f"evaluate_every must be >= 0, got {self.evaluate_every}")


class ServerApp:
    """Wraps ``server_fn(context) -> ServerConfig``; the context carries the run config."""

    def __init__(self, server_fn: Callable[[Context], ServerConfig]) -> None:
        self.server_fn = server_fn

    def __call__(self, context: Context) -> ServerConfig:
        config = self.server_fn(context)
        if not isinstance(config, ServerConfig):
            raise ConfigError(f"server_fn must return a ServerConfig, got {type(config).__name__}")
        return config
