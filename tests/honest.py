"""What an honest node answers in the transport and connection tests, and the check of it."""

from __future__ import annotations

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.message import Message


def answer(task: Message) -> Message:
    """The reply an honest node sends: the model plus one, and a metric."""
    assert task.content is not None and task.content.model is not None
    return task.reply(arrays=Arrays({"w": task.content.model["w"] + 1}), metrics={"n": 3})


def check_answer(
    task: Message, replies: list[Message], *, metrics: dict[str, float] | None = None
) -> None:
    """``replies`` is exactly the honest answer to ``task``, from the node it was sent to,
    with :func:`answer`'s metric (or ``metrics``, when a real app answered)."""
    assert len(replies) == 1, replies
    (reply,) = replies
    assert reply.error is None, reply.error
    assert reply.metadata.reply_to == task.metadata.message_id
    assert reply.metadata.src == task.metadata.dst
    assert reply.content is not None and reply.content.model is not None
    assert task.content is not None and task.content.model is not None
    np.testing.assert_array_equal(reply.content.model["w"], task.content.model["w"] + 1)
    assert reply.content.metric_values == (metrics if metrics is not None else {"n": 3})
