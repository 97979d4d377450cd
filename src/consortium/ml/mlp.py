"""A small numpy multilayer perceptron for multiclass data (e.g. scikit-learn's digits).

Layers are torch-style dense layers ``y = x @ W.T + b`` with ReLU between them
and a softmax cross-entropy loss on the last one. Parameters travel as
``Arrays`` named ``dense0.weight`` (out, in), ``dense0.bias`` (out,),
``dense1.weight``, ... (:func:`init_params` makes them float64). Training shares
its minibatch and optimizer semantics with :mod:`consortium.ml.logistic`.

The arithmetic runs in the parameters' precision: float32 parameters (what a
model usually travels as) train and predict in float32, which halves the
memory traffic and doubles the BLAS throughput of float64, and come back as
float32; any other parameters compute in float64, as they always did.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from consortium.core.arrays import Arrays
from consortium.core.protocol import LOSS, NUM_EXAMPLES
from consortium.core.records import Metrics
from consortium.ml._training import (
    FlatOptimizer,
    Float,
    OptimizerName,
    TrainResult,
    batch_bounds,
    count_steps,
    passes,
)

__all__ = ["TrainResult", "evaluate", "init_params", "predict_logits", "train"]


def init_params(layer_sizes: Sequence[int], rng: np.random.Generator) -> Arrays:
    """Fresh parameters for layers of the given widths, input first, classes last.

    Weights are He-uniform, U(±sqrt(6 / fan_in)), suited to ReLU; biases follow
    ``torch.nn.Linear``, U(±1 / sqrt(fan_in)).
    """
    sizes = [int(s) for s in layer_sizes]
    if len(sizes) < 2 or any(s < 1 for s in sizes) or list(layer_sizes) != sizes:
        raise ValueError(
            f"layer_sizes must be at least two positive integers, got {list(layer_sizes)!r}"
        )
    out = Arrays()
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w_bound = math.sqrt(6.0 / fan_in)
        b_bound = 1.0 / math.sqrt(fan_in)
        out[f"dense{i}.weight"] = rng.uniform(-w_bound, w_bound, size=(fan_out, fan_in))
        out[f"dense{i}.bias"] = rng.uniform(-b_bound, b_bound, size=(fan_out,))
    return out


def _layer_shapes(params: Mapping[str, Any], num_features: int) -> list[tuple[int, int]]:
    """(out, in) of each layer, checking names, order and that the shapes chain."""
    names = list(params)
    if len(names) < 2 or len(names) % 2:
        raise ValueError(f"mlp params must be dense<i>.weight/bias pairs, got {names}")
    shapes = []
    fan_in = num_features
    for i in range(len(names) // 2):
        expected = [f"dense{i}.weight", f"dense{i}.bias"]
        if names[2 * i : 2 * i + 2] != expected:
            raise ValueError(f"mlp params must be named {expected} in order, got {names}")
        w, b = np.shape(params[expected[0]]), np.shape(params[expected[1]])
        if len(w) != 2 or w[1] != fan_in:
            raise ValueError(
                f"array {expected[0]!r} has shape {w}, expected (n, {fan_in}) to match its input"
            )
        if b != (w[0],):
            raise ValueError(f"array {expected[1]!r} has shape {b}, expected {(w[0],)}")
        shapes.append((int(w[0]), int(w[1])))
        fan_in = int(w[0])
    return shapes


def _precision(params: Mapping[str, Any]) -> np.dtype[np.floating[Any]]:
    """float32 if every parameter is float32, else float64 (see the module docstring)."""
    if all(np.asarray(v).dtype == np.float32 for v in params.values()):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _flatten(
    params: Mapping[str, Any], shapes: list[tuple[int, int]], dtype: np.dtype[np.floating[Any]]
) -> Float:
    size = sum(o * i + o for o, i in shapes)
    theta = np.empty(size, dtype=dtype)
    pos = 0
    for value in params.values():
        arr = np.asarray(value).reshape(-1)
        theta[pos : pos + arr.size] = arr
        pos += arr.size
    return theta


def _views(flat: Float, shapes: list[tuple[int, int]]) -> tuple[list[Float], list[Float]]:
    """Weight and bias views into one flat vector, in layer order."""
    weights, biases = [], []
    pos = 0
    for o, i in shapes:
        weights.append(flat[pos : pos + o * i].reshape(o, i))
        pos += o * i
        biases.append(flat[pos : pos + o])
        pos += o
    return weights, biases


def _features(x: ArrayLike, dtype: np.dtype[np.floating[Any]]) -> Float:
    xa = np.asarray(x, dtype=dtype)
    if xa.ndim != 2:
        raise ValueError(f"x must be a 2-D array (examples, features), got shape {xa.shape}")
    return xa


def _labels(y: ArrayLike, n: int, num_classes: int) -> NDArray[np.intp]:
    ya = np.asarray(y)
    if ya.shape != (n,):
        raise ValueError(f"y must have shape ({n},) to match x, got {ya.shape}")
    if ya.dtype.kind not in "iu" and not (ya.dtype.kind == "f" and np.all(ya == np.round(ya))):
        raise ValueError("y must hold integer class labels")
    yi = ya.astype(np.intp)
    if n and (yi.min() < 0 or yi.max() >= num_classes):
        raise ValueError(f"class labels must lie in [0, {num_classes}), got {yi.min()}..{yi.max()}")
    return yi


def _forward(weights: list[Float], biases: list[Float], x: Float) -> list[Float]:
    """Activations of every layer: the input, each hidden ReLU output, then the logits."""
    acts = [x]
    h = x
    last = len(weights) - 1
    for k, (w, b) in enumerate(zip(weights, biases, strict=True)):
        a = h @ w.T
        a += b
        if k < last:
            np.maximum(a, 0.0, out=a)
        acts.append(a)
        h = a
    return acts


def _softmax_ce(logits: Float, y: NDArray[np.intp]) -> tuple[float, Float]:
    """Summed cross-entropy and the softmax probabilities (``logits`` is overwritten)."""
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    norm = probs.sum(axis=1, keepdims=True)
    rows = np.arange(y.shape[0])
    loss = float(np.log(norm).sum() - logits[rows, y].sum())
    probs /= norm
    return loss, probs


def train(
    params: Mapping[str, Any],
    x: ArrayLike,
    y_int: ArrayLike,
    *,
    rng: np.random.Generator,
    lr: float,
    batch_size: int,
    epochs: int | None = None,
    steps: int | None = None,
    optimizer: OptimizerName = "sgd",
    weight_decay: float = 0.0,
    prox_mu: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    momentum: float = 0.0,
    correction: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Minimise mean softmax cross-entropy from ``params`` on local data.

    Same semantics as :func:`consortium.ml.logistic.train`: exactly one of
    ``steps``/``epochs``, shuffled torch-like minibatches from ``rng``,
    FedProx pull towards ``params`` with ``prox_mu``, SCAFFOLD's gradient
    ``correction`` (named and shaped like ``params``), fresh optimizer state
    per call, ``params`` never modified.
    """
    dtype = _precision(params)
    xf = _features(x, dtype)
    n = xf.shape[0]
    shapes = _layer_shapes(params, xf.shape[1])
    yi = _labels(y_int, n, shapes[-1][0])
    theta = _flatten(params, shapes, dtype)
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
        correction=None if correction is None else _correction(correction, params, shapes),
    )
    weights, biases = _views(theta, shapes)
    grad = np.empty_like(theta)
    gweights, gbiases = _views(grad, shapes)
    bounds = batch_bounds(n, int(batch_size))
    xs, ys = np.empty_like(xf), np.empty(n, dtype=np.intp)

    loss_sum = 0.0
    seen = 0
    for perm, count in passes(n, int(batch_size), total, rng):
        np.take(xf, perm, axis=0, out=xs, mode="clip")
        np.take(yi, perm, out=ys, mode="clip")
        for start, stop in bounds[:count]:
            yb = ys[start:stop]
            acts = _forward(weights, biases, xs[start:stop])
            batch_loss, delta = _softmax_ce(acts[-1], yb)
            loss_sum += batch_loss
            delta[np.arange(stop - start), yb] -= 1.0  # d(sum CE)/d(logits)
            for k in range(len(weights) - 1, -1, -1):
                np.dot(delta.T, acts[k], out=gweights[k])
                np.sum(delta, axis=0, out=gbiases[k])
                if k:
                    delta = delta @ weights[k]
                    delta *= acts[k] > 0.0  # ReLU passes gradient where its output is positive
            opt.step(theta, grad, 1.0 / (stop - start))
            seen += stop - start

    loss = loss_sum / seen if seen else float("nan")
    out = Arrays()
    for name, view in zip(params, _interleave(*_views(theta, shapes)), strict=True):
        out[name] = view
    return TrainResult(params=out, loss=loss, num_examples=n, steps=total)


def _correction(
    correction: Mapping[str, Any], params: Mapping[str, Any], shapes: list[tuple[int, int]]
) -> Float:
    """``correction`` as one flat vector laid out like the flattened ``params``."""
    names, expected = list(correction), list(params)
    if names != expected:
        raise ValueError(f"correction must be named like the params {expected}, got {names}")
    for name in names:
        if np.shape(correction[name]) != np.shape(params[name]):
            raise ValueError(
                f"correction {name!r} has shape {np.shape(correction[name])}, "
                f"expected {np.shape(params[name])}"
            )
    return _flatten(correction, shapes, _precision(params))


def _interleave(weights: list[Float], biases: list[Float]) -> list[Float]:
    return [a for pair in zip(weights, biases, strict=True) for a in pair]


def predict_logits(params: Mapping[str, Any], x: ArrayLike) -> Float:
    """Class scores before the softmax, shape ``(n, classes)``, in the parameters' precision."""
    dtype = _precision(params)
    xf = _features(x, dtype)
    shapes = _layer_shapes(params, xf.shape[1])
    weights, biases = _views(_flatten(params, shapes, dtype), shapes)
    return _forward(weights, biases, xf)[-1]


def evaluate(params: Mapping[str, Any], x: ArrayLike, y: ArrayLike) -> Metrics:
    """Mean cross-entropy, accuracy and the example count on ``(x, y)``."""
    xf = _features(x, _precision(params))
    n = xf.shape[0]
    shapes = _layer_shapes(params, xf.shape[1])
    yi = _labels(y, n, shapes[-1][0])
    if n == 0:
        return {LOSS: float("nan"), "accuracy": float("nan"), NUM_EXAMPLES: 0}
    logits = predict_logits(params, xf)
    acc = float(np.mean(np.argmax(logits, axis=1) == yi))
    loss, _ = _softmax_ce(logits, yi)
    return {LOSS: loss / n, "accuracy": acc, NUM_EXAMPLES: n}
