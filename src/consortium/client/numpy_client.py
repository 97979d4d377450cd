"""NumPyClient: the get_parameters / fit / evaluate style, adapted to messages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.message import EVALUATE, QUERY, TRAIN, Message
from consortium.core.protocol import LOSS, NUM_EXAMPLES
from consortium.core.records import Config, Metrics, check_metrics

if TYPE_CHECKING:
    from consortium.client.app import Handler


@dataclass(slots=True)
class FitResult:
    arrays: Arrays
    num_examples: int
    metrics: Metrics = field(default_factory=dict)


@dataclass(slots=True)
class EvaluateResult:
    loss: float
    num_examples: int
    metrics: Metrics = field(default_factory=dict)


class NumPyClient:
    """Subclass and implement the three methods; ``self.context`` is set per task."""

    context: Context

    def get_parameters(self, config: Config) -> Arrays:
        raise NotImplementedError(f"{type(self).__name__} does not implement get_parameters")

    def fit(self, arrays: Arrays, config: Config) -> FitResult | tuple[Arrays, int, Metrics]:
        raise NotImplementedError(f"{type(self).__name__} does not implement fit")

    def evaluate(
        self, arrays: Arrays, config: Config
    ) -> EvaluateResult | tuple[float, int, Metrics]:
        raise NotImplementedError(f"{type(self).__name__} does not implement evaluate")


def _model(message: Message) -> Arrays:
    assert message.content is not None
    model = message.content.model
    return model if model is not None else Arrays()


def numpy_client_handlers(client_fn: Callable[[Context], NumPyClient]) -> dict[str, Handler]:
    """Message handlers for train/evaluate/query that delegate to a NumPyClient."""

    def make(context: Context) -> NumPyClient:
        client = client_fn(context)
        client.context = context
        return client

    def train(message: Message, context: Context) -> Message:
        assert message.content is not None
        result = make(context).fit(_model(message), message.content.config)
        if not isinstance(result, FitResult):
            result = FitResult(*result)
        metrics = check_metrics(result.metrics)
        metrics[NUM_EXAMPLES] = int(result.num_examples)
        return message.reply(arrays=result.arrays, metrics=metrics)

    def evaluate(message: Message, context: Context) -> Message:
        assert message.content is not None
        result = make(context).evaluate(_model(message), message.content.config)
        if not isinstance(result, EvaluateResult):
            result = EvaluateResult(*result)
        metrics = check_metrics(result.metrics)
        metrics[LOSS] = float(result.loss)
        metrics[NUM_EXAMPLES] = int(result.num_examples)
        return message.reply(metrics=metrics)

    def query(message: Message, context: Context) -> Message:
        assert message.content is not None
        return message.reply(arrays=make(context).get_parameters(message.content.config))

    return {TRAIN: train, EVALUATE: evaluate, QUERY: query}
