"""SCAFFOLD's node side (Karimireddy et al., 2020, option II), reusable by any ClientApp.

A train handler hands the task to :func:`scaffold_train` together with a
callback that trains with a gradient correction; the helper does the
bookkeeping the paper asks of a node::

    correction = c - c_i                       (c: the server's, c_i: this node's)
    y_i        = K SGD steps of size eta_l on g(y) + correction, from x
    c_i+       = c_i - c + (x - y_i) / (K * eta_l)
    reply        y_i and delta_c_i = c_i+ - c_i

``c_i`` lives in ``context.state.arrays`` under :data:`STATE_KEY`, so it
persists across rounds on the node, in simulation and in deployment alike; it
starts at zeros. Option II assumes plain SGD with one step size ``eta_l``
over the ``K`` local steps (no momentum, no Adam).

Example::

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        def local(x: Arrays, correction: Arrays) -> ScaffoldUpdate:
            r = logistic.train(x, xs, ys, rng=..., lr=lr, batch_size=4, steps=k,
                               correction=correction)
            return ScaffoldUpdate(r.params, r.num_examples, steps=r.steps, lr=lr)
        return scaffold_train(msg, context, local)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import StrategyError
from consortium.core.message import Content, Message
from consortium.core.protocol import (
    METRICS,
    MODEL,
    NUM_EXAMPLES,
    SCAFFOLD_CONTROL_RECORD,
    SCAFFOLD_DELTA_RECORD,
    SCAFFOLD_STATE_KEY,
)
from consortium.core.records import Metrics, check_metrics

# The record names are the protocol's (consortium.core.protocol), shared with the
# server side (consortium.strategy.scaffold).
#: Task record carrying the server control variate ``c``.
CONTROL_RECORD = SCAFFOLD_CONTROL_RECORD
#: Reply record carrying ``c_i+ - c_i``.
DELTA_RECORD = SCAFFOLD_DELTA_RECORD
#: Where a node keeps its control variate ``c_i`` in ``context.state.arrays``.
STATE_KEY = SCAFFOLD_STATE_KEY


@dataclass(frozen=True, slots=True)
class ScaffoldUpdate:
    """What the local training callback did: the model ``y_i``, ``K`` and ``eta_l``."""

    params: Arrays
    num_examples: int
    steps: int
    lr: float
    metrics: Metrics = field(default_factory=dict)


#: (global model x, gradient correction c - c_i) -> the local result
LocalTrainFn = Callable[[Arrays, Arrays], ScaffoldUpdate]


def is_scaffold_task(message: Message) -> bool:
    """True when the task carries the server control variate (SCAFFOLD is running)."""
    return message.content is not None and CONTROL_RECORD in message.content.arrays


def control_variate(context: Context) -> Arrays | None:
    """This node's ``c_i``, or None before its first SCAFFOLD round."""
    return context.state.arrays.get(STATE_KEY)


def scaffold_train(message: Message, context: Context, train: LocalTrainFn) -> Message:
    """Run one SCAFFOLD round on this node and build the reply.

    ``train(x, correction)`` must take ``K >= 1`` SGD steps of size ``lr``
    from ``x`` with ``correction`` added to every gradient. The node's
    ``c_i`` is updated only after ``train`` returns, so a failed round leaves
    it as it was.
    """
    content = message.content
    if content is None or content.model is None:
        raise StrategyError("a SCAFFOLD task must carry the global model")
    x = content.model
    control = content.arrays.get(CONTROL_RECORD)
    if control is None:
        raise StrategyError(
            f"this task carries no {CONTROL_RECORD!r} record: the server is not running SCAFFOLD"
        )
    _check_layout(control, x, what=f"the server's {CONTROL_RECORD!r}")
    own = control_variate(context)
    if own is None:
        own = Arrays((name, np.zeros(value.shape)) for name, value in x.items())
    else:
        _check_layout(own, x, what=f"this node's {STATE_KEY!r}")

    correction = Arrays(
        (name, np.asarray(control[name], dtype=np.float64) - own[name]) for name in x
    )
    result = train(x, correction)
    if not isinstance(result, ScaffoldUpdate):
        raise TypeError(
            f"the SCAFFOLD training callback must return a ScaffoldUpdate, "
            f"got {type(result).__name__}"
        )
    if result.steps < 1 or not (np.isfinite(result.lr) and result.lr > 0.0):
        raise StrategyError(
            "SCAFFOLD's option II needs K >= 1 local steps and a positive learning rate, "
            f"got steps={result.steps}, lr={result.lr}"
        )
    _check_layout(result.params, x, what="the trained model")

    scale = 1.0 / (result.steps * result.lr)
    new_own, delta = Arrays(), Arrays()
    for name, x_value in x.items():
        drift = np.asarray(x_value, dtype=np.float64) - np.asarray(
            result.params[name], dtype=np.float64
        )
        # c_i+ - c_i = -c + (x - y_i) / (K eta_l)
        delta[name] = drift * scale - control[name]
        new_own[name] = own[name] + delta[name]
    context.state.arrays[STATE_KEY] = new_own

    metrics = check_metrics(result.metrics)
    metrics[NUM_EXAMPLES] = int(result.num_examples)
    return message.reply(
        Content(arrays={MODEL: result.params, DELTA_RECORD: delta}, metrics={METRICS: metrics})
    )


def _check_layout(arrays: Arrays, model: Arrays, *, what: str) -> None:
    layout = [(n, v.shape) for n, v in arrays.items()]
    expected = [(n, v.shape) for n, v in model.items()]
    if layout != expected:
        raise StrategyError(f"{what} does not match the global model: {layout} vs {expected}")
