"""Personalisation on the node: wrappers around a ClientApp that keep models on the node.

Both wrappers take any :class:`ClientApp` (message handlers or a
:class:`NumPyClient` via ``ClientApp(client_fn=...)``) and return a new one;
the server side stays plain FedAvg (or any strategy). What a node keeps
lives in its :class:`~consortium.core.context.NodeState`, so it survives
across rounds in simulation and deployment alike.

* :class:`LocalLayers` — FedPer (Arivazhagan et al., 2019, "Federated
  Learning with Personalization Layers") and FedBN (Li et al., 2021,
  "FedBN: Federated Learning on Non-IID Features via Local Batch
  Normalization"): parameters whose names match the given patterns never
  leave the node. The server's global model holds only the *shared*
  parameters; initialise it with :meth:`LocalLayers.shared`, e.g.
  ``FedAvg(init_fn=lambda rng: layers.shared(mlp.init_params(sizes, rng)))``.
  Each node starts its local parameters from ``init_fn(context)`` (the full
  model, which also fixes the parameter order) and keeps them afterwards.
* :class:`Ditto` — Ditto (Li et al., 2021, "Ditto: Fair and Robust Federated
  Learning Through Personalization", Algorithm 1): the global model is
  trained exactly as the wrapped app trains it (FedAvg); beside it each node
  keeps a personal model ``v`` (initially the first global model it receives)
  and, every round, trains it on ``F_k(v) + λ/2 ||v - w||²`` towards the
  received global ``w``. :func:`ditto_correction` turns a trainer whose
  proximal term anchors at its starting point (the ``prox_mu`` of
  :mod:`consortium.ml`) into an exact Ditto solver.

Evaluation: wrapped ``evaluate`` handlers report the personalised model's
metrics with the suffix ``_personal`` (``accuracy_personal``); Ditto also
reports the global model's with ``_global`` (``accuracy_global``). The
unsuffixed metrics are the global model's for Ditto and the node's own
(merged) model's for LocalLayers, which has no node-independent model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase

import numpy as np

from consortium.client.app import ClientApp, Handler
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError
from consortium.core.message import Content, Message
from consortium.core.protocol import (
    DITTO_STATE,
    EVALUATE,
    GLOBAL_SUFFIX,
    LOCAL_LAYERS_STATE,
    MODEL,
    NUM_EXAMPLES,
    PERSONAL_SUFFIX,
    QUERY,
    TRAIN,
)
from consortium.core.records import Metrics

#: (personal start v, global anchor w, λ, task message, context) -> trained personal model
PersonalTrainFn = Callable[[Arrays, Arrays, float, Message, Context], Arrays]


def with_model(message: Message, model: Arrays) -> Message:
    """``message`` with its ``model`` record replaced (other records kept)."""
    assert message.content is not None
    content = Content(
        arrays={**message.content.arrays, MODEL: model},
        configs=dict(message.content.configs),
        metrics=dict(message.content.metrics),
    )
    return Message(message.metadata, content=content)


def _model(message: Message, what: str) -> Arrays:
    if message.content is None or message.content.model is None:
        raise ConfigError(f"{what}: the message carries no model")
    return message.content.model


def suffixed(metrics: Metrics, suffix: str) -> Metrics:
    """Every metric but ``num_examples`` renamed ``<name><suffix>``."""
    return {f"{k}{suffix}": v for k, v in metrics.items() if k != NUM_EXAMPLES}


def _metrics(reply: Message) -> Metrics:
    return dict(reply.content.metric_values) if reply.content is not None else {}


def _wrap(app: ClientApp, handlers: dict[str, Handler]) -> ClientApp:
    """A ClientApp with ``handlers`` for their kinds and ``app`` for every other kind."""
    out = ClientApp()
    for kind in app.kinds:
        out.handler(kind)(handlers.get(kind, app))
    return out


class LocalLayers:
    """FedPer/FedBN: keep the parameters matching ``patterns`` on the node.

    ``patterns`` are shell-style (``fnmatch``) patterns over parameter names,
    e.g. ``["dense1.*"]`` for an MLP's head (FedPer) or ``["*.bn.*"]`` for
    batch-norm layers (FedBN). ``init_fn(context)`` returns the node's
    initial *full* model.
    """

    def __init__(self, patterns: Sequence[str], init_fn: Callable[[Context], Arrays]) -> None:
        if isinstance(patterns, str) or not patterns:
            raise ConfigError(
                f"patterns must be a non-empty list of name patterns, got {patterns!r}"
            )
        self.patterns = list(patterns)
        self.init_fn = init_fn

    def is_local(self, name: str) -> bool:
        return any(fnmatchcase(name, p) for p in self.patterns)

    def split(self, arrays: Arrays) -> tuple[Arrays, Arrays]:
        """(shared, local) parts of a full model, each in the model's order."""
        shared, local = Arrays(), Arrays()
        for name, value in arrays.items():
            (local if self.is_local(name) else shared)[name] = value
        return shared, local

    def shared(self, arrays: Arrays) -> Arrays:
        """The shared part of a full model: what the server's global model holds."""
        return self.split(arrays)[0]

    def full_model(self, shared: Arrays, context: Context) -> Arrays:
        """The node's full model: the received shared parameters and its own local ones."""
        local = context.state.arrays.get(LOCAL_LAYERS_STATE)
        kept = context.state.configs.get(LOCAL_LAYERS_STATE, {}).get("order")
        if local is not None and isinstance(kept, list):
            order = [str(n) for n in kept]
        else:
            template = self.init_fn(context)
            local = self.split(template)[1]
            order = list(template)
            if not local:
                raise ConfigError(
                    f"no parameter of the model matches the local patterns {self.patterns}"
                )
        leaked = [n for n in shared if n in local]
        expected = [n for n in order if n not in local]
        if leaked or sorted(shared) != sorted(expected):
            raise ConfigError(
                f"the global model should hold exactly the shared parameters {expected}, "
                f"got {list(shared)}"
                + (f" (local {leaked} must stay on the node)" if leaked else "")
                + "; initialise the server with LocalLayers.shared(full_model)"
            )
        return Arrays((n, shared[n] if n in shared else local[n]) for n in order)

    def _keep(self, full: Arrays, context: Context) -> Arrays:
        """Store the local part of a trained full model; return its shared part."""
        shared, local = self.split(full)
        stored = context.state.arrays.get(LOCAL_LAYERS_STATE)
        if stored is not None and list(local) != list(stored):
            raise ConfigError(
                f"the train handler returned local parameters {list(local)}, "
                f"expected {list(stored)}"
            )
        context.state.arrays[LOCAL_LAYERS_STATE] = local
        context.state.configs[LOCAL_LAYERS_STATE] = {"order": list(full)}
        return shared

    def wrap(self, app: ClientApp) -> ClientApp:
        """``app`` with local layers kept on the node for train, evaluate and query."""

        def train(message: Message, context: Context) -> Message:
            full = self.full_model(_model(message, "LocalLayers"), context)
            reply = app(with_model(message, full), context)
            if reply.error is not None:
                return reply
            return with_model(reply, self._keep(_model(reply, "LocalLayers train reply"), context))

        def evaluate(message: Message, context: Context) -> Message:
            full = self.full_model(_model(message, "LocalLayers"), context)
            reply = app(with_model(message, full), context)
            if reply.error is not None:
                return reply
            metrics = _metrics(reply)
            return message.reply(metrics={**metrics, **suffixed(metrics, PERSONAL_SUFFIX)})

        def query(message: Message, context: Context) -> Message:
            reply = app(message, context)
            if reply.error is not None:
                return reply
            return with_model(reply, self.shared(_model(reply, "LocalLayers query reply")))

        return _wrap(app, {TRAIN: train, EVALUATE: evaluate, QUERY: query})


def ditto_correction(start: Arrays, anchor: Arrays, lam: float) -> Arrays:
    """``λ (start - anchor)``: the constant gradient that makes a start-anchored prox exact.

    A trainer with ``prox_mu = λ`` anchored at its start ``v0`` adds
    ``λ (v - v0)`` to each gradient; adding this constant as well gives
    ``λ (v - v0) + λ (v0 - w) = λ (v - w)``, Ditto's personal objective.
    """
    out = Arrays()
    for name, value in start.items():
        out[name] = lam * (np.asarray(value, dtype=np.float64) - anchor[name])
    return out


class Ditto:
    """Ditto personalisation around a ClientApp whose train handler does FedAvg training.

    ``personal_train(v, w, lam, message, context)`` trains the personal
    model ``v`` on the node's data with the proximal term ``lam/2 ||v - w||²``
    and returns it; it should draw randomness from
    ``context.rng(round, stream=...)`` with a stream of its own, so the global
    training sees the same random numbers as without Ditto.
    """

    def __init__(self, personal_train: PersonalTrainFn, *, lam: float) -> None:
        if not (math.isfinite(lam) and lam >= 0):
            raise ConfigError(f"Ditto: lam must be a finite number >= 0, got {lam}")
        self.personal_train = personal_train
        self.lam = float(lam)

    def personal_model(self, context: Context) -> Arrays | None:
        """The node's personal model, or None before its first training task."""
        return context.state.arrays.get(DITTO_STATE)

    def wrap(self, app: ClientApp) -> ClientApp:
        """``app`` plus a personal model per node, trained and evaluated beside the global one."""

        def train(message: Message, context: Context) -> Message:
            w = _model(message, "Ditto")
            reply = app(message, context)  # the global model's update, unchanged
            if reply.error is not None:
                return reply
            v = self.personal_model(context)
            start = w if v is None else v
            new = self.personal_train(start, w, self.lam, message, context)
            if not isinstance(new, Arrays) or not new.is_compatible(w):
                raise ConfigError(
                    "Ditto: personal_train must return Arrays shaped like the global model "
                    f"{w!r}, got {new!r}"
                )
            context.state.arrays[DITTO_STATE] = new
            return reply

        def evaluate(message: Message, context: Context) -> Message:
            reply = app(message, context)
            if reply.error is not None:
                return reply
            metrics = _metrics(reply)
            v = self.personal_model(context)
            personal = metrics
            if v is not None:
                own = app(with_model(message, v), context)
                if own.error is not None:
                    return own
                personal = _metrics(own)
            return message.reply(
                metrics={
                    **metrics,
                    **suffixed(metrics, GLOBAL_SUFFIX),
                    **suffixed(personal, PERSONAL_SUFFIX),
                }
            )

        return _wrap(app, {TRAIN: train, EVALUATE: evaluate})
