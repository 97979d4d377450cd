"""The split model trained in one place on the joined columns: split learning's yardstick.

Every party's layers start from the seed that party's node would draw
(:func:`.split_model.init_seed`), the mini-batches follow the same shared
order, the same SGD steps are taken: without cut-layer noise, a split run
and this baseline compute the same model, up to float rounding. A test
or an example compares the two (``docs/vertical.md``, "Split learning").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.records import Metrics
from consortium.vertical import split_model as sm
from consortium.vertical.logistic_party import LocalView
from consortium.vertical.split_protocol import Schedule, SplitParams, batch_rows


@dataclass
class CentralResult:
    """Each epoch's evaluation (as a split run reports it) and every party's layers."""

    epochs: list[Metrics] = field(default_factory=list)
    weights: dict[str, Arrays] = field(default_factory=dict)

    @property
    def metrics(self) -> Metrics:
        return self.epochs[-1]


def train_central(
    parties: Sequence[tuple[str, LocalView]], params: SplitParams, seed: int
) -> CentralResult:
    """Train on the joined views: ``parties`` are ``(node, view)``, the label holder first,
    then the passive parties in the order of their node ids (the split run's order)."""
    import torch

    label = parties[0][1]
    assert label.y_train is not None and label.y_test is not None, "the label holder comes first"
    n = len(parties)
    layers = [
        sm.party_layers(view.features, n if i == 0 else None, params, sm.init_seed(seed, node))
        for i, (node, view) in enumerate(parties)
    ]
    velocity: list[dict[str, torch.Tensor]] = [{} for _ in parties]
    schedule = Schedule(label.train_rows, params.batch_size, params.epochs)
    out = CentralResult()
    with sm.deterministic():
        for tick in range(1, schedule.ticks + 1):
            if schedule.is_eval(tick):
                out.epochs.append(_evaluate(layers, [v for _, v in parties]))
                continue
            rows = batch_rows(seed, schedule, tick)
            views = [v for _, v in parties]
            cuts = [m.cut(sm.tensor(v.x_train[rows])) for m, v in zip(layers, views, strict=True)]
            sm.backward(sm.bce(layers[0].head(cuts), sm.tensor(label.y_train[rows])))
            for m, v in zip(layers, velocity, strict=True):
                sm.sgd_step(m, v, params)
    out.weights = {node: sm.weights(m) for m, (node, _) in zip(layers, parties, strict=True)}
    return out


def _evaluate(layers: list[sm.PartyLayers], views: list[LocalView]) -> Metrics:
    import torch

    label = views[0]
    assert label.y_train is not None and label.y_test is not None
    with torch.no_grad():
        cuts = [m.cut(sm.tensor(np.vstack([v.x_train, v.x_test])))
                for m, v in zip(layers, views, strict=True)]  # fmt: skip
        logits = layers[0].head(cuts)
    n = label.train_rows
    loss, accuracy = sm.metrics(logits[:n], sm.tensor(label.y_train))
    test_loss, test_accuracy = sm.metrics(logits[n:], sm.tensor(label.y_test))
    return {"loss": loss, "accuracy": accuracy, "test_loss": test_loss,
            "test_accuracy": test_accuracy}  # fmt: skip
