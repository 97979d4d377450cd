"""Attacks: each crafted update against numpy, AttackedGrid ordering, and a simulated run."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError
from consortium.core.message import EVALUATE, TRAIN, Content, Message
from consortium.server import ServerApp, ServerConfig
from consortium.simulation import run_simulation
from consortium.simulation.attacks import (
    MALICIOUS,
    AttackedGrid,
    GaussianNoise,
    InnerProductManipulation,
    LittleIsEnough,
    RoundView,
    SignFlip,
    alie_z,
    flip_labels,
    is_malicious,
    mark_malicious,
)
from consortium.strategy import FedAvg


def _view(seed: int = 0) -> RoundView:
    rng = np.random.default_rng(seed)
    updates = {n: rng.normal(size=8) for n in ("a", "b", "c", "d", "e")}
    return RoundView(round=3, updates=updates, attackers=("b", "d"), seed=seed)


# -- data poisoning --------------------------------------------------------------------
def test_flip_labels_reverses_classes() -> None:
    np.testing.assert_array_equal(flip_labels(np.array([0, 1, 9, 4]), 10), [9, 8, 0, 5])
    with pytest.raises(ConfigError, match=r"\[0, 3\)"):
        flip_labels(np.array([0, 3]), 3)
    with pytest.raises(ConfigError, match="integer"):
        flip_labels(np.array([0.5]), 3)


def test_mark_malicious_extends_the_default_node_config() -> None:
    fn = mark_malicious({"b"}, ["a", "b", "c"])
    assert fn(1, "b") == {"partition-id": 1, "num-partitions": 3, MALICIOUS: True}
    assert fn(0, "a")[MALICIOUS] is False
    assert is_malicious(Context("b", node_config=fn(1, "b")))
    assert not is_malicious(Context("a", node_config=fn(0, "a")))
    assert not is_malicious(Context("x"))
    with pytest.raises(ConfigError, match=r"\['z'\]"):
        mark_malicious({"z"}, ["a"])


# -- crafted updates -------------------------------------------------------------------
def test_sign_flip() -> None:
    view = _view()
    out = SignFlip(scale=3.0).craft(view)
    assert sorted(out) == ["b", "d"]
    np.testing.assert_array_equal(out["b"], -3.0 * view.updates["b"])


def test_gaussian_noise_modes_share_the_seeded_draw() -> None:
    view = _view()
    pure = GaussianNoise(2.0).craft(view)
    added = GaussianNoise(2.0, mode="add").craft(view)
    np.testing.assert_allclose(added["d"] - view.updates["d"], pure["d"], rtol=1e-12)
    assert not np.allclose(pure["b"], pure["d"])  # each attacker has its own generator
    again = GaussianNoise(2.0).craft(_view())
    np.testing.assert_array_equal(again["b"], pure["b"])
    big = RoundView(1, {"a": np.zeros(200_000)}, ("a",), seed=1)
    noise = GaussianNoise(2.0).craft(big)["a"]
    assert abs(noise.mean()) < 0.02 and noise.std() == pytest.approx(2.0, rel=0.01)


def test_alie_z_matches_the_normal_table() -> None:
    # n = 20, f = 4: s = 11 - 4 = 7, z = Φ⁻¹(13/20 = 0.65) = 0.3853
    assert alie_z(20, 4) == pytest.approx(0.3853, abs=1e-4)
    # n = 50, f = 12 (the paper's setting): s = 14, z = Φ⁻¹(0.72) = 0.5828
    assert alie_z(50, 12) == pytest.approx(0.5828, abs=1e-4)
    with pytest.raises(ConfigError, match="n=4, f=3"):
        alie_z(4, 3)


def test_little_is_enough() -> None:
    view = _view()
    own = np.stack([view.updates["b"], view.updates["d"]])
    out = LittleIsEnough().craft(view)
    z = alie_z(5, 2)
    half_gap = np.abs(own[0] - own[1]) / 2  # population std of two values
    np.testing.assert_allclose(out["b"], own.mean(axis=0) - z * half_gap, rtol=1e-12)
    np.testing.assert_array_equal(out["b"], out["d"])
    fixed = LittleIsEnough(z=1.5).craft(view)
    np.testing.assert_allclose(fixed["d"], own.mean(axis=0) - 1.5 * half_gap, rtol=1e-12)


def test_inner_product_manipulation() -> None:
    view = _view()
    benign = (view.updates["a"] + view.updates["c"] + view.updates["e"]) / 3
    out = InnerProductManipulation(epsilon=0.5).craft(view)
    np.testing.assert_allclose(out["d"], -0.5 * benign, rtol=1e-12)
    assert float(out["b"] @ benign) < 0


# -- AttackedGrid ----------------------------------------------------------------------
class FakeGrid:
    """Answers each task with model + (index + 1) in float32; replies in reverse order."""

    def __init__(self, fail: str = "") -> None:
        self.fail = fail
        self.replies: list[Message] = []  # what this grid yielded, in order

    def node_ids(self) -> list[str]:
        return ["a", "b", "c"]

    def send_and_receive(
        self, messages: Sequence[Message], *, timeout: float | None
    ) -> Iterator[Message]:
        for i, msg in reversed(list(enumerate(messages))):
            assert msg.content is not None and msg.content.model is not None
            if msg.metadata.dst == self.fail:
                reply = msg.error_reply("boom", "failed")
            else:
                model = Arrays({k: v + (i + 1) for k, v in msg.content.model.items()})
                reply = msg.reply(arrays=model, metrics={"num_examples": 10})
            self.replies.append(reply)
            yield reply


def _tasks(kind: str = TRAIN) -> list[Message]:
    x = Arrays({"w": np.zeros((2, 2), dtype="f4"), "b": np.ones(1, dtype="f4")})
    return [
        Message.create(run_id="r", dst=n, round=2, kind=kind, content=Content.of(x, {}))
        for n in ("a", "b", "c")
    ]


def test_attacked_grid_replaces_only_attackers_and_keeps_order() -> None:
    inner = FakeGrid()
    got = list(AttackedGrid(inner, {"b"}, SignFlip(2.0)).send_and_receive(_tasks(), timeout=None))
    honest = inner.replies
    assert [m.metadata.src for m in got] == ["c", "b", "a"]
    assert got[0] is honest[0] and got[2] is honest[2]
    assert got[1].metadata == honest[1].metadata
    assert got[1].content is not None and honest[1].content is not None
    assert got[1].content.metric_values == honest[1].content.metric_values
    poisoned = got[1].content.model
    assert poisoned is not None and poisoned["w"].dtype == np.float32
    # b was task 1: honest update +2 everywhere, so it sends x - 2 * 2
    np.testing.assert_array_equal(poisoned["w"], np.full((2, 2), -4.0))
    np.testing.assert_array_equal(poisoned["b"], [1.0 - 4.0])


def test_attacked_grid_sees_benign_updates_and_skips_failures() -> None:
    seen: list[RoundView] = []

    class Record(InnerProductManipulation):
        def craft(self, view: RoundView) -> dict[str, np.ndarray]:
            seen.append(view)
            return super().craft(view)

    grid = AttackedGrid(FakeGrid(fail="c"), {"a", "c"}, Record(1.0), seed=4)
    got = list(grid.send_and_receive(_tasks(), timeout=None))
    view = seen[0]
    assert view.round == 2 and view.seed == 4
    assert list(view.updates) == ["b", "a"] and view.attackers == ("a",)
    assert got[0].error is not None  # c failed and stays failed
    model = got[2].content.model  # type: ignore[union-attr]
    assert model is not None  # a sends -1 x b's update (+2): x - 2
    np.testing.assert_array_equal(model["w"], np.full((2, 2), -2.0))


def test_attacked_grid_passes_other_kinds_through() -> None:
    calls: list[RoundView] = []

    class Never(SignFlip):
        def craft(self, view: RoundView) -> dict[str, np.ndarray]:
            calls.append(view)
            return {}

    inner = FakeGrid()
    grid = AttackedGrid(inner, {"a"}, Never())
    got = list(grid.send_and_receive(_tasks(EVALUATE), timeout=None))
    assert not calls and len(got) == 3
    assert all(g is h for g, h in zip(got, inner.replies, strict=True))
    assert grid.node_ids() == ["a", "b", "c"]


# -- a simulated run ---------------------------------------------------------------------
client_app = ClientApp()


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    """Every node moves the model by +1; it also reports whether it was told it is malicious."""
    assert msg.content is not None and msg.content.model is not None
    w = msg.content.model["w"] + 1.0
    flag = int(is_malicious(context))
    return msg.reply(arrays=Arrays({"w": w}), metrics={"num_examples": 5, "malicious": flag})


def _server(ctx: Context) -> ServerConfig:
    strategy = FedAvg(initial_arrays=Arrays({"w": np.zeros(3)}), fraction_evaluate=0.0)
    return ServerConfig(strategy, num_rounds=2)


def test_run_simulation_with_an_attacked_grid() -> None:
    ids = ["0", "1", "2", "3"]
    result = run_simulation(
        ServerApp(_server),
        client_app,
        node_ids=ids,
        node_config=mark_malicious({"2"}, ids),
        grid_wrapper=lambda grid: AttackedGrid(grid, {"2"}, SignFlip(3.0)),
    )
    # per round: three honest +1 and one -3 -> mean 0; the model never moves
    np.testing.assert_array_equal(result.arrays["w"], np.zeros(3))
    flags = {n.node_id: n.metrics["malicious"] for n in result.history.rounds[0].nodes}
    assert flags == {"0": 0, "1": 0, "2": 1, "3": 0}
    clean = run_simulation(ServerApp(_server), client_app, node_ids=ids)
    np.testing.assert_array_equal(clean.arrays["w"], np.full(3, 2.0))
