"""Binary logistic regression in numpy: the model of the heart-disease and simulation benchmarks.

The model is PyTorch's ``Linear(d, 1)`` followed by a sigmoid, and its
parameters travel as ``Arrays({"weight": (1, d), "bias": (1,)})`` in float64,
so a torch node and a numpy node can share one global model.

:func:`train` is on the hot path of simulations (thousands of calls on small
silos), so its inner loop runs on preallocated buffers: each pass gathers the
shuffled rows once (with a column of ones for the bias) and every minibatch is
a view into that copy. A small problem's buffers are kept per thread and reused.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from consortium.core.arrays import Arrays
from consortium.core.protocol import LOSS, NUM_EXAMPLES
from consortium.core.records import Metrics
from consortium.ml._training import (
    F64,
    FlatOptimizer,
    OptimizerName,
    TrainResult,
    batch_bounds,
    count_steps,
    passes,
)
from consortium.ml.metrics import roc_auc

__all__ = ["TrainResult", "evaluate", "init_params", "predict_proba", "train"]


def init_params(num_features: int, rng: np.random.Generator) -> Arrays:
    """Fresh parameters drawn like ``torch.nn.Linear``: U(-1/sqrt(d), 1/sqrt(d))."""
    if isinstance(num_features, bool) or int(num_features) != num_features or num_features < 1:
        raise ValueError(f"num_features must be a positive integer, got {num_features!r}")
    bound = 1.0 / math.sqrt(num_features)
    weight = rng.uniform(-bound, bound, size=(1, int(num_features)))
    bias = rng.uniform(-bound, bound, size=(1,))
    return Arrays({"weight": weight, "bias": bias})


def _features(x: ArrayLike) -> F64:
    xa = np.asarray(x, dtype=np.float64)
    if xa.ndim != 2:
        raise ValueError(f"x must be a 2-D array (examples, features), got shape {xa.shape}")
    return xa


def _labels(y: ArrayLike, n: int) -> F64:
    ya = np.asarray(y, dtype=np.float64)
    if ya.ndim == 2 and ya.shape[1] == 1:
        ya = ya[:, 0]
    if ya.shape != (n,):
        raise ValueError(f"y must have shape ({n},) to match x, got {np.shape(y)}")
    return ya


def _theta(params: Mapping[str, Any], num_features: int) -> F64:
    """Weight and bias as one new flat vector [w_1 .. w_d, b]."""
    try:
        weight, bias = np.asarray(params["weight"]), np.asarray(params["bias"])
    except KeyError as exc:
        raise ValueError(f"logistic params need 'weight' and 'bias', missing {exc}") from None
    if weight.shape != (1, num_features):
        raise ValueError(
            f"array 'weight' has shape {weight.shape}, expected {(1, num_features)} for "
            f"x with {num_features} features"
        )
    if bias.shape != (1,):
        raise ValueError(f"array 'bias' has shape {bias.shape}, expected (1,)")
    theta = np.empty(num_features + 1)
    theta[:num_features] = weight[0]
    theta[num_features] = bias[0]
    return theta


def _correction(correction: Mapping[str, Any], num_features: int) -> F64:
    try:
        return _theta(correction, num_features)
    except ValueError as exc:
        raise ValueError(f"correction: {exc}") from None


def _as_params(theta: F64) -> Arrays:
    d = theta.shape[0] - 1
    return Arrays({"weight": theta[:d].reshape(1, d), "bias": theta[d:]})


def _logits(params: Mapping[str, Any], x: F64) -> F64:
    theta = _theta(params, x.shape[1])
    z: F64 = x @ theta[:-1]
    z += theta[-1]
    return z


def train(
    params: Mapping[str, Any],
    x: ArrayLike,
    y: ArrayLike,
    *,
    rng: np.random.Generator,
    lr: float,
    batch_size: int,
    steps: int | None = None,
    epochs: int | None = None,
    optimizer: OptimizerName = "sgd",
    weight_decay: float = 0.0,
    prox_mu: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    momentum: float = 0.0,
    correction: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Minimise mean binary cross-entropy from ``params`` on local data ``(x, y)``.

    Give exactly one of ``steps`` (minibatch updates, cycling shuffled passes)
    or ``epochs``. ``prox_mu`` adds FedProx's ``mu/2 * ||w - w_global||^2``
    with ``params`` as ``w_global``. ``correction`` (named like ``params``) is
    added to every minibatch gradient: SCAFFOLD's ``c - c_i`` (Karimireddy et
    al., 2020), i.e. the loss ``f(w) + <correction, w>``. Optimizer state
    (momentum, Adam moments) starts fresh on every call. ``params`` is never
    modified; the same inputs and generator state give bit-identical results.
    """
    xf = np.asarray(x)
    if xf.dtype != np.float32 and xf.dtype != np.float64:
        xf = _features(xf)  # float32 and float64 are widened (exactly) as they are copied below
    elif xf.ndim != 2:
        raise ValueError(f"x must be a 2-D array (examples, features), got shape {xf.shape}")
    n, d = xf.shape
    yf = _labels(y, n)
    theta = _theta(params, d)
    total = count_steps(n, batch_size, steps=steps, epochs=epochs)
    opt = FlatOptimizer(
        theta,
        optimizer=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        prox_mu=prox_mu,
        momentum=momentum,
        betas=betas,
        eps=eps,
        correction=None if correction is None else _correction(correction, d),
    )
    step = opt.step

    xa, xs, ys, zs, sps, grad, bounds, batches = _buffers(n, d, int(batch_size))
    xa[:, :d] = xf
    xa[:, d] = 1.0

    loss_sum = 0.0
    seen = 0
    for perm, count in passes(n, int(batch_size), total, rng):
        # the methods, not np.take: its Python wrapper doubles the cost of a small gather
        xa.take(perm, axis=0, out=xs, mode="clip")
        yf.take(perm, out=ys, mode="clip")
        for xb, yb, z, sp, p, inv_m in batches[:count]:
            np.dot(xb, theta, out=z)
            # softplus(z) = -log(1 - sigmoid(z)), so per-example BCE = softplus(z) - y * z
            np.logaddexp(0.0, z, out=sp)
            np.subtract(z, sp, out=p)
            np.exp(p, out=p)  # sigmoid(z), computed stably
            np.subtract(p, yb, out=p)
            np.dot(p, xb, out=grad)
            step(theta, grad, inv_m)
        used = bounds[count - 1][1]
        if used == n:
            loss_sum += sps.sum() - ys.dot(zs)
        else:
            loss_sum += sps[:used].sum() - ys[:used].dot(zs[:used])
        seen += used

    loss = float(loss_sum) / seen if seen else float("nan")
    return TrainResult(params=_as_params(theta), loss=loss, num_examples=n, steps=total)


#: Problems up to this many numbers (rows x (features + 1)) reuse their buffers.
_KEEP_BUFFERS = 1 << 16
_Buffers = tuple[F64, F64, F64, F64, F64, F64, list[tuple[int, int]], list[Any]]


class _Kept(threading.local):
    """Each thread's buffers, by (rows, features, batch size)."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[int, int, int], _Buffers] = {}


_kept = _Kept()


def _buffers(n: int, d: int, batch_size: int) -> _Buffers:
    """Scratch for :func:`train`: the rows with a column of ones, per pass the shuffled
    rows and labels, logits and softplus(logits), the gradient; the batches' bounds and
    views. Every value is written before it is read, so a small problem's buffers are
    kept per thread and reused (a simulation trains thousands of small silos of one
    shape; allocating and slicing them was a fifth of the call)."""
    key = (n, d, batch_size)
    kept = _kept.buffers
    if key in kept:
        return kept[key]
    xa = np.empty((n, d + 1))
    xs, ys = np.empty_like(xa), np.empty(n)
    zs, sps, ps = np.empty(n), np.empty(n), np.empty(n)
    grad = np.empty(d + 1)
    bounds = batch_bounds(n, batch_size)
    batches = [(xs[a:b], ys[a:b], zs[a:b], sps[a:b], ps[a:b], 1.0 / (b - a)) for a, b in bounds]
    made: _Buffers = (xa, xs, ys, zs, sps, grad, bounds, batches)
    if n * (d + 1) <= _KEEP_BUFFERS:
        if len(kept) >= 8:  # a few shapes per thread, never a large one
            kept.clear()
        kept[key] = made
    return made


def predict_proba(params: Mapping[str, Any], x: ArrayLike) -> F64:
    """Probability of the positive class for each row of ``x``, shape ``(n,)``."""
    z = _logits(params, _features(x))
    out: F64 = np.exp(z - np.logaddexp(0.0, z))
    return out


def evaluate(params: Mapping[str, Any], x: ArrayLike, y: ArrayLike) -> Metrics:
    """Mean BCE (from the logits), accuracy at 0.5, ROC AUC and the example count."""
    xf = _features(x)
    n = xf.shape[0]
    yf = _labels(y, n)
    if not np.all((yf == 0.0) | (yf == 1.0)):
        raise ValueError("y must hold binary labels 0 and 1")
    z = _logits(params, xf)
    if n == 0:
        nan = float("nan")
        return {LOSS: nan, "accuracy": nan, "auc": nan, NUM_EXAMPLES: 0}
    loss = float(np.mean(np.logaddexp(0.0, z) - yf * z))
    acc = float(np.mean((z > 0.0) == (yf == 1.0)))
    return {LOSS: loss, "accuracy": acc, "auc": roc_auc(yf, z), NUM_EXAMPLES: n}
