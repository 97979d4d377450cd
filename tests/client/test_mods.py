"""ClientApp mods and the task runner: order, short-circuits, failures, the shipped mods."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from consortium.client import (
    ClientApp,
    Handler,
    Mod,
    clip_update_mod,
    run_task,
    update_norm_mod,
)
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError
from consortium.core.message import EVALUATE, QUERY, TRAIN, Content, Message


def task(kind: str = TRAIN, model: Arrays | None = None, **config: Any) -> Message:
    content = Content.of(arrays=model, config=dict(config))
    return Message.create(run_id="r", dst="n1", round=1, kind=kind, content=content)


def tagging(name: str, log: list[str]) -> Mod:
    """A mod that logs its way in and out and appends its name to a config/metric trail."""

    def mod(message: Message, context: Context, call_next: Handler) -> Message:
        log.append(f"{name}:in")
        assert message.content is not None
        trail = str(message.content.config.get("trail", ""))
        inner = Message(message.metadata, content=Content.of(config={"trail": trail + name}))
        reply = call_next(inner, context)
        log.append(f"{name}:out")
        assert reply.content is not None
        out = dict(reply.content.metric_values)
        out[f"out_{len(out)}_{name}"] = 1.0
        return Message(reply.metadata, content=Content.of(metrics=out))

    return mod


def echo_app(log: list[str], mods: list[Mod]) -> ClientApp:
    app = ClientApp(mods=mods)

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        assert msg.content is not None
        log.append(f"handler:{msg.content.config.get('trail', '')}")
        return msg.reply(metrics={"num_examples": 1})

    @app.handler("custom")
    def custom(msg: Message, ctx: Context) -> Message:
        log.append("custom")
        return msg.reply(metrics={})

    return app


def test_mods_run_in_list_order_in_and_reverse_order_out() -> None:
    log: list[str] = []
    app = echo_app(log, [tagging("a", log), tagging("b", log)])
    assert len(app.mods) == 2
    reply = run_task(app, task(), Context("n1")).reply
    assert log == ["a:in", "b:in", "handler:ab", "b:out", "a:out"]
    assert reply.content is not None
    # b saw the handler's reply first, a saw b's
    assert list(reply.content.metric_values) == ["num_examples", "out_1_b", "out_2_a"]


def test_mods_apply_to_every_kind() -> None:
    log: list[str] = []
    app = echo_app(log, [tagging("a", log)])
    run_task(app, task("custom"), Context("n1"))
    assert log == ["a:in", "custom", "a:out"]


def test_a_mod_may_answer_without_calling_next() -> None:
    log: list[str] = []

    def gate(message: Message, context: Context, call_next: Handler) -> Message:
        assert message.content is not None
        if message.content.config.get("refuse"):
            return message.reply(metrics={"refused": 1})
        return call_next(message, context)

    app = echo_app(log, [gate, tagging("inner", log)])
    reply = run_task(app, task(refuse=True), Context("n1")).reply
    assert reply.content is not None and reply.content.metric_values == {"refused": 1}
    assert reply.metadata.reply_to is not None and log == []  # neither inner mod nor handler


def test_a_failing_mod_becomes_an_error_reply_with_its_traceback() -> None:
    def broken(message: Message, context: Context, call_next: Handler) -> Message:
        call_next(message, context)
        raise RuntimeError("mod exploded on the way out")

    log: list[str] = []
    msg = task()
    result = run_task(echo_app(log, [broken]), msg, Context("n1"))
    assert result.raised and log == ["handler:"]
    err = result.reply.error
    assert err is not None and err.code == "RuntimeError"
    assert err.reason == "mod exploded on the way out"
    assert "Traceback" in err.traceback and "in broken" in err.traceback
    assert result.reply.metadata.reply_to == msg.metadata.message_id


def test_a_mod_that_returns_no_message_is_reported() -> None:
    def sloppy(message: Message, context: Context, call_next: Handler) -> Message:
        call_next(message, context)
        return None  # type: ignore[return-value]

    result = run_task(echo_app([], [sloppy]), task(), Context("n1"))
    assert result.raised and result.reply.error is not None
    assert result.reply.error.code == "TypeError" and "mods[0]" in result.reply.error.reason


def test_handler_errors_and_missing_handlers_become_error_replies() -> None:
    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        raise ValueError()

    failed = run_task(app, task(), Context("n1"))
    assert failed.raised and failed.reply.error is not None
    assert failed.reply.error.code == "ValueError" and failed.reply.error.reason == "ValueError()"
    missing = run_task(app, task(QUERY), Context("n1"))
    assert missing.reply.error is not None and missing.reply.error.code == "ConfigError"
    ok = run_task(echo_app([], []), task(), Context("n1"))
    assert not ok.raised and ok.reply.error is None and ok.seconds >= 0.0


def test_mods_must_be_callables() -> None:
    with pytest.raises(ConfigError, match=r"mods\[1\] must be a callable"):
        ClientApp(mods=[clip_update_mod(1.0), "clip"])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="list of mods"):
        ClientApp(mods=clip_update_mod(1.0))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_norm"):
        clip_update_mod(0.0)
    with pytest.raises(ConfigError, match="max_norm"):
        clip_update_mod(float("inf"))
    with pytest.raises(ConfigError, match="metric"):
        update_norm_mod("num_examples")


# -- the shipped mods --------------------------------------------------------------------
def trainer(delta: dict[str, np.ndarray], mods: list[Mod]) -> ClientApp:
    """An app whose train handler adds ``delta`` to the model it receives."""
    app = ClientApp(mods=mods)

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        assert msg.content is not None and msg.content.model is not None
        model = msg.content.model
        out = Arrays((k, (v + delta[k]).astype(v.dtype)) for k, v in model.items())
        return msg.reply(arrays=out, metrics={"num_examples": 3})

    @app.evaluate()
    def evaluate(msg: Message, ctx: Context) -> Message:
        return msg.reply(metrics={"num_examples": 3, "loss": 0.5})

    return app


def trained(app: ClientApp, model: Arrays) -> Arrays:
    reply = run_task(app, task(model=model), Context("n1")).reply
    assert reply.error is None, reply.error
    assert reply.content is not None and reply.content.model is not None
    return reply.content.model


def norm(a: Arrays, b: Arrays) -> float:
    return float(np.sqrt(sum(np.sum((a[k].astype("f8") - b[k]) ** 2) for k in a)))


def test_clip_mod_scales_a_large_update_to_max_norm_keeping_its_direction() -> None:
    x = Arrays({"a": np.array([1.0, 1.0], dtype="f4"), "b": np.array([2.0])})
    # delta (3, 0 | 4): norm 5, bound 2 -> scaled by 2/5 -> (1.2, 0 | 1.6)
    delta = {"a": np.array([3.0, 0.0]), "b": np.array([4.0])}
    y = trained(trainer(delta, [clip_update_mod(2.0)]), x)
    np.testing.assert_allclose(y["a"], [2.2, 1.0], rtol=1e-6)
    np.testing.assert_allclose(y["b"], [3.6], rtol=1e-12)
    assert y["a"].dtype == np.float32 and y["b"].dtype == np.float64
    assert norm(y, x) == pytest.approx(2.0, rel=1e-6)
    raw = trained(trainer(delta, []), x)
    flat = np.concatenate([(y[k].astype("f8") - x[k]) for k in x])
    raw_flat = np.concatenate([(raw[k].astype("f8") - x[k]) for k in x])
    cosine = flat @ raw_flat / (np.linalg.norm(flat) * np.linalg.norm(raw_flat))
    assert cosine == pytest.approx(1.0, abs=1e-7)


def test_clip_mod_leaves_small_and_zero_updates_and_other_kinds_alone() -> None:
    x = Arrays({"w": np.array([0.5, -0.5, 2.0])})
    small = {"w": np.array([0.6, 0.8, 0.0])}  # norm exactly 1
    assert trained(trainer(small, [clip_update_mod(1.0)]), x).equals(trained(trainer(small, []), x))
    zero = {"w": np.zeros(3)}
    y = trained(trainer(zero, [clip_update_mod(1e-9)]), x)
    assert y.equals(x) and np.isfinite(y["w"]).all()
    app = trainer(zero, [clip_update_mod(1.0)])
    reply = run_task(app, task(EVALUATE, model=x), Context("n1")).reply
    assert reply.content is not None and reply.content.metric_values == {
        "num_examples": 3,
        "loss": 0.5,
    }


def test_clip_mod_refuses_models_it_cannot_clip() -> None:
    ints = Arrays({"w": np.array([1.0]), "count": np.array([3], dtype=np.int64)})
    app = trainer({"w": np.array([9.0]), "count": np.array([1])}, [clip_update_mod(1.0)])
    result = run_task(app, task(model=ints), Context("n1"))
    assert result.reply.error is not None and "floating-point" in result.reply.error.reason


def test_update_norm_mod_reports_the_norm_before_or_after_clipping() -> None:
    x = Arrays({"w": np.zeros(2)})
    delta = {"w": np.array([3.0, 4.0])}

    def reported(mods: list[Mod]) -> float:
        reply = run_task(trainer(delta, mods), task(model=x), Context("n1")).reply
        assert reply.content is not None
        assert reply.content.metric_values["num_examples"] == 3
        return float(reply.content.metric_values["update_norm"])

    assert reported([update_norm_mod()]) == pytest.approx(5.0)
    # outermost first: the norm mod sees the clipped update...
    assert reported([update_norm_mod(), clip_update_mod(2.0)]) == pytest.approx(2.0)
    # ...or, inside the clip mod, the raw one
    assert reported([clip_update_mod(2.0), update_norm_mod()]) == pytest.approx(5.0)
