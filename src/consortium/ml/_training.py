"""Training machinery shared by the numpy models: results, minibatch passes, optimizers.

Minibatches follow a PyTorch ``DataLoader(shuffle=True, drop_last=False)``: each
pass over the data draws a fresh permutation from the caller's generator and
walks it in batches of ``batch_size`` (the last one may be smaller). Training
for ``steps`` cycles such passes until that many batches were used (FLamby's
"num_updates"); training for ``epochs`` uses whole passes.

The optimizers work in place on one flat parameter vector (float64, or float32
for a float32 model: their state takes the vector's dtype) and follow
``torch.optim.SGD`` / ``torch.optim.Adam``: ``weight_decay`` is L2 added to the
gradient of every parameter, FedProx's ``prox_mu`` adds ``mu * (w - w0)``, and
SCAFFOLD's ``correction`` (Karimireddy et al., 2020: ``c - c_i``) is a constant
vector added to every minibatch gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from consortium.core.arrays import Arrays

F64 = NDArray[np.float64]
#: a float32 or float64 array (a model that computes in its parameters' precision)
Float = NDArray[np.floating[Any]]
OptimizerName = Literal["sgd", "adam"]


@dataclass(frozen=True, slots=True)
class TrainResult:
    """What one call to a model's ``train`` produced.

    ``loss`` is the mean training loss over every example of every minibatch
    used, each measured before that minibatch's update; ``num_examples`` is
    the size of the local data set (the weight FedAvg gives this node).
    """

    params: Arrays
    loss: float
    num_examples: int
    steps: int


def _check_int(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def count_steps(
    num_examples: int, batch_size: int, *, steps: int | None, epochs: int | None
) -> int:
    """The number of minibatch updates asked for by exactly one of steps/epochs."""
    if num_examples < 1:
        raise ValueError("training needs at least one example")
    batch_size = _check_int("batch_size", batch_size, minimum=1)
    if (steps is None) == (epochs is None):
        raise ValueError("give exactly one of steps and epochs")
    if steps is not None:
        return _check_int("steps", steps, minimum=0)
    per_pass = -(-num_examples // batch_size)
    return _check_int("epochs", epochs, minimum=0) * per_pass


def batch_bounds(num_examples: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of each minibatch within one pass."""
    return [
        (start, min(start + batch_size, num_examples))
        for start in range(0, num_examples, batch_size)
    ]


def passes(
    num_examples: int, batch_size: int, total_steps: int, rng: np.random.Generator
) -> Iterator[tuple[NDArray[np.intp], int]]:
    """Yield (permutation, batches to use from it) until ``total_steps`` are used."""
    per_pass = -(-num_examples // batch_size)
    left = total_steps
    while left > 0:
        take = min(per_pass, left)
        yield rng.permutation(num_examples), take
        left -= take


def _check_correction(correction: Float | None, size: int, dtype: np.dtype[Any]) -> Float | None:
    if correction is None:
        return None
    flat = np.asarray(correction, dtype=dtype)
    if flat.shape != (size,):
        raise ValueError(f"correction must have shape ({size},), got {flat.shape}")
    if not np.isfinite(flat).all():
        raise ValueError("correction must be finite")
    return flat


def check_lr(lr: float) -> float:
    lr = float(lr)
    if not math.isfinite(lr) or lr <= 0.0:
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    return lr


class FlatOptimizer:
    """SGD (with optional momentum) or Adam over one flat float64 (or float32) vector.

    ``step(theta, grad, scale)`` takes the gradient ``scale * grad`` (plus the
    regularisation terms and ``correction``, if any), updates ``theta`` in
    place and may overwrite ``grad``. State (momentum buffer,
    Adam moments) lives only as long as this object: each call to a model's
    ``train`` starts with fresh state.
    """

    step: Callable[[Float, Float, float], None]

    def __init__(
        self,
        theta0: Float,
        *,
        optimizer: str,
        lr: float,
        weight_decay: float = 0.0,
        prox_mu: float = 0.0,
        momentum: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        correction: Float | None = None,
    ) -> None:
        self.lr = check_lr(lr)
        for name, value in (("weight_decay", weight_decay), ("prox_mu", prox_mu)):
            if not math.isfinite(value) or value < 0.0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        size = theta0.shape[0]
        dtype = theta0.dtype  # the state keeps the vector's precision
        self._tmp = np.empty(size, dtype=dtype)
        # weight decay and the proximal term add (wd + mu) * w - mu * w0 to the gradient
        self._coef = float(weight_decay) + float(prox_mu)
        self._mu_w0: Float | None = theta0 * float(prox_mu) if prox_mu else None
        self._correction = _check_correction(correction, size, dtype)
        if optimizer == "sgd":
            if not 0.0 <= momentum < math.inf:
                raise ValueError(f"momentum must be non-negative, got {momentum!r}")
            self._momentum = float(momentum)
            self._buf: Float | None = None
            if momentum:
                self.step = self._sgd_momentum
            elif self._coef or self._correction is not None:
                self.step = self._sgd_regularized
            else:
                self.step = self._sgd
        elif optimizer == "adam":
            if momentum:
                raise ValueError("momentum applies to 'sgd'; Adam's momentum is set by betas")
            beta1, beta2 = (float(b) for b in betas)
            if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
                raise ValueError(f"betas must lie in [0, 1), got {betas!r}")
            if not eps > 0.0:
                raise ValueError(f"eps must be positive, got {eps!r}")
            self._beta1, self._beta2, self._eps = beta1, beta2, float(eps)
            self._m = np.zeros(size, dtype=dtype)
            self._v = np.zeros(size, dtype=dtype)
            self._t = 0
            self.step = self._adam
        else:
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")

    def _regularize(self, theta: Float, grad: Float, scale: float) -> None:
        np.multiply(grad, scale, out=grad)
        if self._coef:
            np.multiply(theta, self._coef, out=self._tmp)
            np.add(grad, self._tmp, out=grad)
            if self._mu_w0 is not None:
                np.subtract(grad, self._mu_w0, out=grad)
        if self._correction is not None:
            np.add(grad, self._correction, out=grad)

    def _sgd(self, theta: Float, grad: Float, scale: float) -> None:
        np.multiply(grad, self.lr * scale, out=grad)
        np.subtract(theta, grad, out=theta)

    def _sgd_regularized(self, theta: Float, grad: Float, scale: float) -> None:
        self._regularize(theta, grad, scale)
        np.multiply(grad, self.lr, out=grad)
        np.subtract(theta, grad, out=theta)

    def _sgd_momentum(self, theta: Float, grad: Float, scale: float) -> None:
        self._regularize(theta, grad, scale)
        if self._buf is None:
            self._buf = grad.copy()
        else:
            np.multiply(self._buf, self._momentum, out=self._buf)
            np.add(self._buf, grad, out=self._buf)
        np.multiply(self._buf, self.lr, out=grad)
        np.subtract(theta, grad, out=theta)

    def _adam(self, theta: Float, grad: Float, scale: float) -> None:
        self._regularize(theta, grad, scale)
        self._t += 1
        b1, b2, m, v, tmp = self._beta1, self._beta2, self._m, self._v, self._tmp
        # m += (1 - b1) * (g - m);  v = b2 * v + (1 - b2) * g * g
        np.subtract(grad, m, out=tmp)
        tmp *= 1.0 - b1
        m += tmp
        v *= b2
        np.multiply(grad, grad, out=tmp)
        tmp *= 1.0 - b2
        v += tmp
        step_size = self.lr / (1.0 - b1**self._t)
        bias_sqrt = math.sqrt(1.0 - b2**self._t)
        np.sqrt(v, out=tmp)
        tmp /= bias_sqrt
        tmp += self._eps
        np.divide(m, tmp, out=tmp)
        tmp *= step_size
        theta -= tmp
