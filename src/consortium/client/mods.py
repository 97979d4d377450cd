"""Ready-made mods: middleware a silo puts around its ClientApp with ``mods=[...]``.

Both mods look at the *update* of a task, the model of the reply ``y`` against
the model the task carried ``x`` (the one this mod received, after the mods
outside it), and act only when both carry a ``model`` record: train tasks,
and any app-defined kind that sends a model and gets one back. Other replies
(evaluate, query, errors) pass through untouched. The arithmetic is
:mod:`consortium.core.norms`, the same the server-side
:class:`~consortium.strategy.ClippedUpdates` uses. See ``docs/mods.md``.
"""

from __future__ import annotations

import math

from consortium.client.app import Handler, Mod
from consortium.client.personal import with_model
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError
from consortium.core.message import METRICS, Content, Message
from consortium.core.norms import clip_update, update_norm
from consortium.core.protocol import NUM_EXAMPLES

__all__ = ["check_comparable", "clip_update_mod", "model_update", "update_norm_mod"]


def clip_update_mod(max_norm: float) -> Mod:
    """A mod that clips this node's update to L2 norm ``max_norm`` before it is sent.

    ``y`` becomes ``x + (y - x) * min(1, max_norm / ||y - x||)``, the norm taken
    over all arrays of the model together, in float64; each array keeps its
    dtype. An update already within the bound (a zero update included) is sent
    unchanged. This bounds one node's influence on the aggregate before the
    update leaves the silo (the node-side twin of ``ClippedUpdates``, and the
    clipping step of local differential privacy).
    """
    if isinstance(max_norm, bool) or not isinstance(max_norm, int | float):
        raise ConfigError(f"clip_update_mod: max_norm must be a number, got {max_norm!r}")
    if not (math.isfinite(max_norm) and max_norm > 0):
        raise ConfigError(f"clip_update_mod: max_norm must be finite and > 0, got {max_norm}")
    bound = float(max_norm)

    def clip_update_mod(message: Message, context: Context, call_next: Handler) -> Message:
        reply = call_next(message, context)
        pair = model_update(message, reply, "clip_update_mod")
        if pair is None:
            return reply
        received, trained = pair
        clipped = clip_update(received, trained, bound)
        return reply if clipped is trained else with_model(reply, clipped)

    return clip_update_mod


def update_norm_mod(metric: str = "update_norm") -> Mod:
    """A mod that reports the L2 norm of this node's update as the train metric ``metric``.

    The norm ``||y - x||`` (all arrays together, float64) of the update as it
    leaves this mod: put it before ``clip_update_mod`` to see the clipped
    norm, after it to see the raw one. The round's per-node results then show
    how far each node moved, which helps choose a clipping bound and spot a
    diverging or misbehaving node. The server sees the whole update anyway, so
    the metric tells it nothing new.
    """
    if not isinstance(metric, str) or not metric or metric == NUM_EXAMPLES:
        raise ConfigError(
            f"update_norm_mod: metric must be a non-empty name other than num_examples, "
            f"got {metric!r}"
        )

    def update_norm_mod(message: Message, context: Context, call_next: Handler) -> Message:
        reply = call_next(message, context)
        pair = model_update(message, reply, "update_norm_mod")
        if pair is None:
            return reply
        assert reply.content is not None
        metrics = {**reply.content.metric_values, metric: update_norm(*pair)}
        content = Content(
            arrays=dict(reply.content.arrays),
            configs=dict(reply.content.configs),
            metrics={**reply.content.metrics, METRICS: metrics},
        )
        return Message(reply.metadata, content=content)

    return update_norm_mod


def model_update(message: Message, reply: Message, who: str) -> tuple[Arrays, Arrays] | None:
    """(x received, y replied) when both carry a model; raises if they cannot be compared
    (:func:`check_comparable`). For mods that act on a node's update."""
    if message.content is None or reply.content is None:
        return None
    received, trained = message.content.model, reply.content.model
    if received is None or trained is None:
        return None
    check_comparable(received, trained, who)
    return received, trained


def check_comparable(received: Arrays, trained: Arrays, who: str) -> None:
    """Raise :class:`ConfigError` (naming ``who``) unless ``trained`` is ``received``'s
    model -- the same names, dtypes and shapes -- and every array is floating-point."""
    if received.signature() != trained.signature():
        raise ConfigError(
            f"{who}: the reply's model {trained!r} does not match the model the task "
            f"carried {received!r} (same names, dtypes and shapes, in the same order)"
        )
    not_float = [name for name, value in received.items() if value.dtype.kind != "f"]
    if not_float:
        raise ConfigError(
            f"{who} handles floating-point models only; {not_float} are not floating-point"
        )
