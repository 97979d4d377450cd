"""Server optimisers as a wrapper around any strategy: FedAvgM, FedAdagrad, FedAdam, FedYogi.

:class:`FedOpt` lets its ``base`` strategy (FedAvg by default, or any other
rule: a robust aggregator, FedNova, ...) pick nodes and aggregate their
replies into ``x̄``, then treats ``Δ = x̄ - x`` as a pseudo-gradient and lets a
:class:`ServerOptimizer` take the step (Reddi et al., 2021, "Adaptive
Federated Optimization", Algorithm 2; Hsu et al., 2019, "Measuring the Effects
of Non-Identical Data Distribution for Federated Visual Classification").

Conventions, all per coordinate and in float64:

* adaptive rules (no bias correction, as in Algorithm 2)::

      m_t = β1 m_{t-1} + (1 - β1) Δ_t
      Adagrad  v_t = v_{t-1} + Δ_t²
      Adam     v_t = β2 v_{t-1} + (1 - β2) Δ_t²
      Yogi     v_t = v_{t-1} - (1 - β2) Δ_t² sign(v_{t-1} - Δ_t²)
      x_{t+1} = x_t + η m_t / (√v_t + τ)

  with ``m_{-1} = 0`` and ``v_{-1} = initial_v`` (default 0, as FLamby and
  Flower do; Reddi et al.'s analysis assumes ``v_{-1} ≥ τ²``: pass
  ``initial_v=tau**2`` for that).
* momentum (FedAvgM): ``u_t = β u_{t-1} + Δ_t``, ``x_{t+1} = x_t + η u_t``
  (``u_{-1} = 0``); ``β = 0, η = 1`` is FedAvg.

Only floating-point parameters are stepped; any other array (a counter, a
mask) takes the base's aggregate unchanged. The optimiser state (m, v, step
count) is part of :meth:`FedOpt.state_dict`, so a resumed server continues
exactly where it stopped.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from consortium.core.arrays import Arrays
from consortium.core.errors import StrategyError
from consortium.core.records import Config, Metrics
from consortium.strategy.base import Strategy, StrategyWrapper, TrainReply
from consortium.strategy.fedavg import FedAvg

F64 = NDArray[np.float64]
Moments = dict[str, F64]

__all__ = [
    "FedAdagrad",
    "FedAdam",
    "FedAvgM",
    "FedOpt",
    "FedYogi",
    "ServerAdagrad",
    "ServerAdam",
    "ServerMomentum",
    "ServerOptimizer",
    "ServerYogi",
]


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise StrategyError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _unit(name: str, value: float) -> float:
    if isinstance(value, bool) or not 0.0 <= value < 1.0:
        raise StrategyError(f"{name} must be within [0, 1), got {value!r}")
    return float(value)


# -- optimisers -------------------------------------------------------------------------
class ServerOptimizer(ABC):
    """Turns the round's pseudo-gradient ``Δ = x̄ - x`` into the step added to ``x``."""

    def __init__(self, lr: float) -> None:
        self.lr = _positive("the server learning rate lr", lr)
        self.steps = 0

    @abstractmethod
    def update(self, delta: Mapping[str, F64]) -> dict[str, F64]:
        """The step ``x_{t+1} - x_t`` for pseudo-gradient ``delta``; advances the state."""

    @abstractmethod
    def state_buffers(self) -> dict[str, Moments]:
        """The named per-parameter state buffers (live, not copies) that state_dict saves."""

    def settings(self) -> Config:
        """Hyperparameters worth recording with the run."""
        return {"server_lr": self.lr}

    def state_dict(self) -> dict[str, Any]:
        """Step count and buffers (copies), enough to continue bit for bit."""
        out: dict[str, Any] = {"steps": self.steps}
        for key, buf in self.state_buffers().items():
            out[key] = {name: value.copy() for name, value in buf.items()}
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (an empty dict resets)."""
        buffers = self.state_buffers()
        unknown = set(state) - {"steps", *buffers}
        if unknown:
            raise StrategyError(
                f"{type(self).__name__} state has unknown keys {sorted(unknown)}; "
                f"expected steps and {sorted(buffers)}"
            )
        loaded: dict[str, Moments] = {}
        for key in buffers:
            loaded[key] = {
                str(n): np.array(v, dtype=np.float64) for n, v in dict(state.get(key, {})).items()
            }
        layouts = {key: {n: v.shape for n, v in buf.items()} for key, buf in loaded.items()}
        if any(layout != next(iter(layouts.values())) for layout in layouts.values()):
            raise StrategyError(
                f"{type(self).__name__} state buffers disagree on parameters: {layouts}"
            )
        steps = state.get("steps", 0)
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
            raise StrategyError(f"optimizer state 'steps' must be an integer >= 0, got {steps!r}")
        for key, buf in buffers.items():
            buf.clear()
            buf.update(loaded[key])
        self.steps = int(steps)

    def _check_layout(self, delta: Mapping[str, F64], buffer: Moments) -> None:
        layout = {n: v.shape for n, v in delta.items()}
        have = {n: v.shape for n, v in buffer.items()}
        if layout != have:
            raise StrategyError(
                f"{type(self).__name__} state is for parameters {have}, but the model now has "
                f"{layout}"
            )


class ServerMomentum(ServerOptimizer):
    """Server SGD with heavy-ball momentum (FedAvgM, Hsu et al., 2019): ``u = βu + Δ; x += ηu``."""

    def __init__(self, lr: float = 1.0, momentum: float = 0.9) -> None:
        super().__init__(lr)
        self.momentum = _unit("momentum", momentum)
        self.velocity: Moments = {}

    def state_buffers(self) -> dict[str, Moments]:
        return {"velocity": self.velocity}

    def update(self, delta: Mapping[str, F64]) -> dict[str, F64]:
        if not self.velocity:
            self.velocity.update({n: np.zeros_like(d) for n, d in delta.items()})
        self._check_layout(delta, self.velocity)
        out: dict[str, F64] = {}
        for name, d in delta.items():
            u = self.velocity[name]
            u *= self.momentum
            u += d
            out[name] = self.lr * u
        self.steps += 1
        return out

    def settings(self) -> Config:
        return {**super().settings(), "server_momentum": self.momentum}


class _AdaptiveOptimizer(ServerOptimizer):
    """The shared frame of Reddi et al.'s Algorithm 2: first moment, a second-moment rule, step."""

    def __init__(self, lr: float, beta1: float, tau: float, initial_v: float) -> None:
        super().__init__(lr)
        self.beta1 = _unit("beta1", beta1)
        self.tau = _positive("tau", tau)
        if isinstance(initial_v, bool) or not math.isfinite(initial_v) or initial_v < 0:
            raise StrategyError(f"initial_v must be a finite number >= 0, got {initial_v!r}")
        self.initial_v = float(initial_v)
        self.m: Moments = {}
        self.v: Moments = {}

    def state_buffers(self) -> dict[str, Moments]:
        return {"m": self.m, "v": self.v}

    @abstractmethod
    def _second_moment(self, v: F64, d2: F64) -> None:
        """Update ``v`` in place from the squared pseudo-gradient ``d2``."""

    def update(self, delta: Mapping[str, F64]) -> dict[str, F64]:
        if not self.m:
            self.m.update({n: np.zeros_like(d) for n, d in delta.items()})
            self.v.update({n: np.full_like(d, self.initial_v) for n, d in delta.items()})
        self._check_layout(delta, self.m)
        out: dict[str, F64] = {}
        for name, d in delta.items():
            m, v = self.m[name], self.v[name]
            m *= self.beta1
            m += (1.0 - self.beta1) * d
            self._second_moment(v, d * d)
            out[name] = self.lr * m / (np.sqrt(v) + self.tau)
        self.steps += 1
        return out

    def settings(self) -> Config:
        return {
            **super().settings(),
            "beta1": self.beta1,
            "tau": self.tau,
            "initial_v": self.initial_v,
        }


class ServerAdagrad(_AdaptiveOptimizer):
    """FedAdagrad's server rule (Reddi et al., 2021): ``v_t = v_{t-1} + Δ²``."""

    def __init__(
        self, lr: float = 1e-2, beta1: float = 0.9, tau: float = 1e-3, initial_v: float = 0.0
    ) -> None:
        super().__init__(lr, beta1, tau, initial_v)

    def _second_moment(self, v: F64, d2: F64) -> None:
        v += d2


class ServerAdam(_AdaptiveOptimizer):
    """FedAdam's server rule (Reddi et al., 2021): ``v_t = β2 v_{t-1} + (1 - β2) Δ²``."""

    def __init__(
        self,
        lr: float = 1e-2,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        initial_v: float = 0.0,
    ) -> None:
        super().__init__(lr, beta1, tau, initial_v)
        self.beta2 = _unit("beta2", beta2)

    def _second_moment(self, v: F64, d2: F64) -> None:
        v *= self.beta2
        v += (1.0 - self.beta2) * d2

    def settings(self) -> Config:
        return {**super().settings(), "beta2": self.beta2}


class ServerYogi(ServerAdam):
    """FedYogi's server rule (Reddi et al., 2021): ``v -= (1 - β2) Δ² sign(v - Δ²)``."""

    def _second_moment(self, v: F64, d2: F64) -> None:
        v -= (1.0 - self.beta2) * d2 * np.sign(v - d2)


# -- the wrapper --------------------------------------------------------------------------
class FedOpt(StrategyWrapper):
    """Any strategy's aggregate, taken as a pseudo-gradient by a server optimiser.

    Everything but the server step (node selection, configs, evaluation,
    initial model, ``min_available_nodes``) is delegated to ``base`` through
    its public interface, so ``FedOpt`` composes with any aggregation rule.
    Its state is ``{"base": ..., "optimizer": ...}``; its settings are the
    optimiser's, then the base's under ``base.``.
    """

    def __init__(self, base: Strategy | None = None, *, optimizer: ServerOptimizer) -> None:
        if not isinstance(optimizer, ServerOptimizer):
            raise StrategyError(
                f"optimizer must be a ServerOptimizer, got {type(optimizer).__name__}"
            )
        super().__init__(base if base is not None else FedAvg())
        self.optimizer = optimizer

    # -- the server step ---------------------------------------------------------------
    def aggregate_train(
        self, round: int, current: Arrays, replies: Iterable[TrainReply]
    ) -> tuple[Arrays, Metrics]:
        aggregated, metrics = self.base.aggregate_train(round, current, replies)
        if not aggregated.is_compatible(current):
            raise StrategyError(
                f"{type(self.base).__name__} returned {aggregated!r}, which does not match the "
                f"global model {current!r}"
            )
        floats = [name for name, value in current.items() if value.dtype.kind == "f"]
        delta = {
            name: np.subtract(aggregated[name], current[name], dtype=np.float64) for name in floats
        }
        step = self.optimizer.update(delta)
        out = Arrays()
        for name, value in aggregated.items():
            if name in step:
                moved = np.add(current[name], step[name], dtype=np.float64)
                out[name] = moved.astype(value.dtype, copy=False)
            else:
                out[name] = value
        return out, metrics

    # -- bookkeeping (the base's part is StrategyWrapper's) ------------------------------
    def wrapper_settings(self) -> Config:
        return {"server_optimizer": type(self.optimizer).__name__, **self.optimizer.settings()}

    def wrapper_state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_wrapper_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"optimizer"}:
            raise StrategyError(
                f"{type(self).__name__} state must hold 'base' and 'optimizer', "
                f"got {sorted({'base', *state})}"
            )
        optimizer = state["optimizer"]
        if not isinstance(optimizer, dict):
            raise StrategyError(
                f"{type(self).__name__} state 'optimizer' must be a dict, "
                f"got {type(optimizer).__name__}"
            )
        self.optimizer.load_state_dict(optimizer)


class FedAvgM(FedOpt):
    """FedOpt with server momentum (Hsu et al., 2019): ``u = βu + Δ; x += η u``."""

    def __init__(
        self, base: Strategy | None = None, *, lr: float = 1.0, momentum: float = 0.9
    ) -> None:
        super().__init__(base, optimizer=ServerMomentum(lr, momentum))


class FedAdagrad(FedOpt):
    """FedOpt with the Adagrad server rule (Reddi et al., 2021)."""

    def __init__(
        self,
        base: Strategy | None = None,
        *,
        lr: float = 1e-2,
        beta1: float = 0.9,
        tau: float = 1e-3,
        initial_v: float = 0.0,
    ) -> None:
        super().__init__(base, optimizer=ServerAdagrad(lr, beta1, tau, initial_v))


class FedAdam(FedOpt):
    """FedOpt with the Adam server rule, without bias correction (Reddi et al., 2021)."""

    def __init__(
        self,
        base: Strategy | None = None,
        *,
        lr: float = 1e-2,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        initial_v: float = 0.0,
    ) -> None:
        super().__init__(base, optimizer=ServerAdam(lr, beta1, beta2, tau, initial_v))


class FedYogi(FedOpt):
    """FedOpt with the Yogi server rule (Reddi et al., 2021)."""

    def __init__(
        self,
        base: Strategy | None = None,
        *,
        lr: float = 1e-2,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        initial_v: float = 0.0,
    ) -> None:
        super().__init__(base, optimizer=ServerYogi(lr, beta1, beta2, tau, initial_v))
