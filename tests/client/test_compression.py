"""compression_mod and its codecs: round trips, unbiased int8, error feedback, strict decoding."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from consortium.client import CompressionSpec, compression_mod
from consortium.client.compression import compress_update
from consortium.client.compression_codecs import decode_array, encode_array
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError, UpdateRejected
from consortium.core.message import Content, Message
from consortium.core.protocol import (
    COMPRESSION_AUX_RECORD,
    COMPRESSION_CODES_RECORD,
    COMPRESSION_RECORD,
    COMPRESSION_RESIDUAL_STATE,
)
from consortium.server.compression import compress_tasks, decoded_model
from consortium.server.workflow import validated_update

CODECS = ("float16", "bfloat16", "int8", "topk")


def _model(rng: np.random.Generator) -> Arrays:
    return Arrays(
        {
            "w": rng.normal(size=(30, 40)).astype(np.float32),
            "d": rng.normal(size=50),  # float64
            "b": rng.normal(size=9).astype(ml_dtypes.bfloat16),
            "h": rng.normal(size=(3, 3)).astype(np.float16),
            "steps": np.array(7, dtype=np.int64),
            "empty": np.zeros((0, 4), dtype=np.float32),
        }
    )


def _trained(x: Arrays, rng: np.random.Generator, scale: float = 0.05) -> Arrays:
    y = Arrays()
    for name, value in x.items():
        if name == "steps":
            y[name] = value + 3
        else:
            step = rng.normal(size=value.shape) * scale
            y[name] = (value.astype(np.float64) + step).astype(value.dtype)
    return y


def _content(spec: CompressionSpec, x: Arrays, y: Arrays, seed: int = 0) -> Content:
    update = compress_update(spec, x, y, np.random.default_rng(seed))
    return Content(
        arrays={COMPRESSION_CODES_RECORD: update.codes, COMPRESSION_AUX_RECORD: update.aux},
        configs={COMPRESSION_RECORD: spec.wire_config()},
        metrics={"metrics": {"num_examples": 5}},
    )


@pytest.mark.parametrize(
    ("codec", "delta"),
    [(c, d) for c in CODECS for d in (True, False) if d or c != "topk"],  # top-k needs delta
)
def test_round_trip_keeps_names_shapes_dtypes(codec: str, delta: bool) -> None:
    rng = np.random.default_rng(1)
    x = _model(rng)
    y = _trained(x, rng)
    spec = CompressionSpec(codec, delta=delta, topk=0.5, chunk=64)
    decoded = decoded_model(_content(spec, x, y), x, x)
    assert decoded is not None and decoded.signature() == y.signature()
    assert decoded["steps"] == 10  # not compressed: exact
    w_err = np.abs(decoded["w"].astype(np.float64) - y["w"])
    if codec == "float16":
        assert w_err.max() <= (1e-3 if delta else 2e-3) * (0.05 * 5 if delta else 4)
    elif codec == "int8":
        assert w_err.max() < 2 * 0.05 * 10 / 255 * (1 if delta else 40)
    elif codec == "topk":  # half the values were sent, exactly (up to float32)
        assert np.count_nonzero(w_err < 1e-6) >= w_err.size // 2


def test_bytes_per_value_of_each_codec() -> None:
    rng = np.random.default_rng(2)
    x = Arrays({"w": rng.normal(size=100_000).astype(np.float32)})
    y = _trained(x, rng)
    sizes = {
        codec: _content(CompressionSpec(codec, topk=0.01, chunk=1024), x, y).arrays
        for codec in CODECS
    }
    per_value = {
        codec: sum(r.nbytes for r in records.values()) / 100_000 for codec, records in sizes.items()
    }
    assert per_value["float16"] == per_value["bfloat16"] == 2
    assert per_value["int8"] == 1 + 8 * math.ceil(100_000 / 1024) / 100_000
    assert per_value["topk"] == 8 * 1000 / 100_000


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_int8_stochastic_rounding_is_unbiased(dtype: type[np.floating[Any]]) -> None:
    # values 0.3 of a grid step above grid points: rounding to nearest would be off by
    # 0.3 * scale on average, far outside what unbiased rounding allows (a float32 update
    # is rounded in float32)
    scale = 1.0 / 255
    v = (np.arange(256) * scale + 0.3 * scale).astype(dtype)
    v[-1], v[0] = 1.0, 0.0  # pin the chunk's range to [0, 1]: the grid is k / 255
    spec = CompressionSpec("int8", chunk=256)
    draws = 2000
    total = np.zeros(v.shape)
    rng = np.random.default_rng(3)
    for _ in range(draws):
        enc = encode_array(spec, v, rng)
        decoded = decode_array("int8", 256, "v", v.shape, v.dtype, enc.codes, enc.aux)
        assert decoded.dtype == dtype
        # within one step of the value (the grid's float32 rounding aside)
        assert np.abs(decoded - v).max() <= scale * (1 + 1e-4)
        total += decoded
    bias = total / draws - v
    # each decoded value has variance 0.3 * 0.7 * scale**2: 5 standard errors of the mean
    bound = 5 * math.sqrt(0.21) * scale / math.sqrt(draws)
    assert np.abs(bias[1:-1]).max() < bound, (np.abs(bias).max(), bound)
    assert np.abs(bias[1:-1]).max() > 0  # it is random, not exact
    # and the mean over all values is unbiased to a much tighter bound
    assert abs(bias[1:-1].mean()) < 5 * math.sqrt(0.21) * scale / math.sqrt(draws * 254)


def test_error_feedback_keeps_what_was_left_out() -> None:
    """Top-k with error feedback: sent + residual is the whole update, round after round,
    and a small coordinate left out is sent once enough of it has accumulated."""
    x = Arrays({"w": np.zeros(10, dtype=np.float32)})
    step = np.array([1.0, 0.3, 0.2, 0, 0, 0, 0, 0, 0, 0.01], dtype=np.float32)
    context = Context("n1", run_config={"compression": "topk", "compression-topk": 0.1})
    mod = compression_mod()
    sent_total = np.zeros(10)
    for rnd in (1, 2, 3, 4):
        task = Message.create(
            run_id="r", dst="n1", round=rnd, kind="train", content=Content.of(arrays=x)
        )
        reply = mod(task, context, lambda m, c: m.reply(arrays=Arrays({"w": x["w"] + step})))
        assert reply.content is not None and reply.content.model is None
        sent = decoded_model(reply.content, x, x)
        assert sent is not None
        sent_total += sent["w"]
        residual = context.state.arrays[COMPRESSION_RESIDUAL_STATE]["w"]
        np.testing.assert_allclose(sent_total + residual, rnd * step, atol=1e-6)
        assert np.count_nonzero(sent["w"]) == 1
    # one value a round: the first coordinate (1.0) wins rounds 1-3 (against 0.3, 0.6,
    # 0.9 accumulated in the second); in round 4 the second's accumulated 1.2 is sent
    assert sent_total[1] == pytest.approx(1.2) and sent_total[0] == pytest.approx(3.0)


def test_mod_draws_from_the_compression_stream_and_is_deterministic() -> None:
    rng = np.random.default_rng(4)
    x = Arrays({"w": rng.normal(size=500).astype(np.float32)})
    y = _trained(x, rng)
    task = Message.create(run_id="r", dst="n", round=2, kind="train", content=Content.of(arrays=x))

    def handler(m: Message, c: Context) -> Message:
        return m.reply(arrays=y, metrics={"num_examples": 1})

    def codes(seed: int) -> Any:
        ctx = Context("n", run_config={"compression": "int8"}, seed=seed)
        reply = compression_mod()(task, ctx, handler)
        assert reply.content is not None
        assert reply.content.metric_values == {"num_examples": 1}
        return reply.content.arrays[COMPRESSION_CODES_RECORD]["w"]

    assert np.array_equal(codes(1), codes(1))
    assert not np.array_equal(codes(1), codes(2))
    ctx = Context("n", run_config={"compression": "int8"}, seed=1)
    expected = compress_update(
        CompressionSpec("int8"), x, y, ctx.rng(2, stream="compression")
    ).codes["w"]
    assert np.array_equal(codes(1), expected)


def test_mod_passes_other_replies_through() -> None:
    x = Arrays({"w": np.ones(3)})
    ctx = Context("n", run_config={"compression": "int8"})
    evaluate = Message.create(
        run_id="r", dst="n", round=1, kind="evaluate", content=Content.of(arrays=x)
    )
    reply = evaluate.reply(metrics={"num_examples": 1})
    assert compression_mod()(evaluate, ctx, lambda m, c: reply) is reply
    train = Message.create(run_id="r", dst="n", round=1, kind="train", content=Content.of(arrays=x))
    error = train.error_reply("Boom", "failed")
    assert compression_mod()(train, ctx, lambda m, c: error) is error
    plain = train.reply(arrays=x)
    none_ctx = Context("n", run_config={"compression": "none"})
    assert compression_mod()(train, none_ctx, lambda m, c: plain) is plain


@pytest.mark.parametrize(
    ("run", "match"),
    [
        ({"compression": "zip"}, "compression must be one of"),
        ({"compression": 8}, "compression must be a string"),
        ({"compression": "topk", "compression-delta": False}, "compression-delta must be true"),
        ({"compression": "int8", "compression-chunk": 0}, "compression-chunk must be an int in"),
        ({"compression": "int8", "compression-chunk": 2.5}, "compression-chunk must be an int"),
        ({"compression": "topk", "compression-topk": 0.0}, "compression-topk must be a fraction"),
        ({"compression": "topk", "compression-topk": "1%"}, "compression-topk must be a number"),
        ({"compression": "int8", "compression-delta": "yes"}, "compression-delta must be true or"),
        (
            {"compression": "int8", "compression-delta": False, "compression-error-feedback": True},
            "compression-error-feedback needs",
        ),
    ],
)
def test_spec_refuses_bad_settings(run: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        CompressionSpec.from_run_config(run)


Mutation = Callable[[Content], None]


def _set(record: str, name: str, value: Any) -> Mutation:
    def mutate(content: Content) -> None:
        content.arrays[record][name] = value

    return mutate


def _settings(**changes: Any) -> Mutation:
    def mutate(content: Content) -> None:
        content.configs[COMPRESSION_RECORD] = {**content.configs[COMPRESSION_RECORD], **changes}

    return mutate


def _drop(record: str, name: str | None = None) -> Mutation:
    def mutate(content: Content) -> None:
        if record == COMPRESSION_RECORD:
            del content.configs[record]
        elif name is None:
            del content.arrays[record]
        else:
            del content.arrays[record][name]

    return mutate


HOSTILE: list[tuple[str, Mutation, str]] = [
    ("int8", _settings(codec="zip"), "codec 'zip' is not one of"),
    ("int8", _settings(codec="none"), "codec 'none' is not one of"),
    ("int8", _settings(version=2), "version 2 is not 1"),
    ("int8", _settings(chunk=0), "chunk 0 is not in"),
    ("int8", _settings(chunk=True), "'chunk' must be a int"),
    ("int8", _settings(delta="yes"), "'delta' must be a bool"),
    ("int8", _settings(extra=1), "exactly the keys"),
    ("int8", _drop(COMPRESSION_CODES_RECORD), "needs the records"),
    ("int8", _drop(COMPRESSION_CODES_RECORD, "w"), r"missing \['w'\]"),
    ("int8", _set(COMPRESSION_CODES_RECORD, "w", np.zeros((30, 40), np.int8)), "'w' codes"),
    ("int8", _set(COMPRESSION_CODES_RECORD, "w", np.zeros((40, 30), np.uint8)), "'w' codes"),
    ("int8", _set(COMPRESSION_AUX_RECORD, "w", np.zeros((3, 2), np.float32)), "'w' scales"),
    ("int8", _set(COMPRESSION_AUX_RECORD, "w", np.full((19, 2), np.nan, np.float32)), "NaN"),
    ("int8", _set(COMPRESSION_AUX_RECORD, "w", np.full((19, 2), -1, np.float32)), "negative"),
    ("int8", _set(COMPRESSION_AUX_RECORD, "w", np.full((19, 2), 3e38, np.float32)), "range"),
    ("int8", _set(COMPRESSION_AUX_RECORD, "steps", np.zeros(1, np.float32)), r"\['steps'\]"),
    ("int8", _set(COMPRESSION_CODES_RECORD, "steps", np.zeros(1, np.int64)), "'steps' should"),
    ("int8", _drop(COMPRESSION_AUX_RECORD, "d"), "'d' has no int8"),
    ("float16", _set(COMPRESSION_CODES_RECORD, "h", np.full((3, 3), np.inf, np.float16)), "'h'"),
    ("float16", _set(COMPRESSION_AUX_RECORD, "h", np.zeros(2, np.float32)), "'h' has side"),
    ("bfloat16", _set(COMPRESSION_CODES_RECORD, "b", np.zeros(9, np.float16)), "'b' codes"),
    ("topk", _set(COMPRESSION_AUX_RECORD, "w", np.array([5, 1200], np.uint32)), "below 1200"),
    ("topk", _set(COMPRESSION_AUX_RECORD, "w", np.array([5, 5], np.uint32)), "increasing"),
    ("topk", _set(COMPRESSION_AUX_RECORD, "w", np.array([5, 6], np.int64)), "'w' indices"),
    ("topk", _set(COMPRESSION_CODES_RECORD, "w", np.zeros(1201, np.float32)), "k <= 1200"),
    ("topk", _set(COMPRESSION_CODES_RECORD, "w", np.zeros(2, np.float64)), "'w' top-k values"),
    ("topk", _drop(COMPRESSION_AUX_RECORD, "w"), "no top-k indices"),
    ("int8", lambda c: c.arrays.__setitem__("model", Arrays()), "must not also carry"),
    ("int8", _drop(COMPRESSION_RECORD), "but no 'compression'"),
]


@pytest.mark.parametrize(("codec", "mutate", "match"), HOSTILE)
def test_decode_refuses_hostile_input_naming_the_field(
    codec: str, mutate: Mutation, match: str
) -> None:
    rng = np.random.default_rng(5)
    x = _model(rng)
    content = _content(CompressionSpec(codec, chunk=64, topk=0.01), x, _trained(x, rng))
    if codec == "topk":  # two values of w sent: the hostile ones replace them
        assert content.arrays[COMPRESSION_AUX_RECORD]["w"].shape == (12,)
        content.arrays[COMPRESSION_AUX_RECORD]["w"] = np.array([3, 4], np.uint32)
        content.arrays[COMPRESSION_CODES_RECORD]["w"] = np.ones(2, np.float32)
        assert decoded_model(content, x, x) is not None  # the base case decodes
    mutate(content)
    with pytest.raises(UpdateRejected, match=match):
        decoded_model(content, x, x)


def test_a_delta_needs_the_global_model() -> None:
    rng = np.random.default_rng(6)
    x = _model(rng)
    content = _content(CompressionSpec("int8"), x, _trained(x, rng))
    with pytest.raises(UpdateRejected, match="no global model"):
        decoded_model(content, x, None)


def test_a_decoded_update_is_validated_like_any_other() -> None:
    """Decoding happens before validation: a delta that overflows float32 once added to
    the global model is rejected as NaN/inf, and a good one comes back as the model."""
    x = Arrays({"w": np.full(4, 3e38, dtype=np.float32)})
    y = Arrays({"w": np.full(4, 3e38, dtype=np.float32)})
    task = Message.create(run_id="r", dst="n", round=1, kind="train", content=Content.of(arrays=x))
    good = _content(CompressionSpec("bfloat16"), x, y)
    model, records = validated_update(x, Message(task.reply().metadata, content=good), x)
    assert model.equals(y) and records == {}
    bad = _content(CompressionSpec("bfloat16"), x, y)
    bad.arrays[COMPRESSION_CODES_RECORD]["w"] = np.full(4, 1e38, dtype=ml_dtypes.bfloat16)
    with pytest.raises(UpdateRejected, match="'w' contains 4 NaN/inf"):
        validated_update(x, Message(task.reply().metadata, content=bad), x)


def test_downlink_compresses_the_model_once_and_the_mod_decodes_it() -> None:
    rng = np.random.default_rng(7)
    x = _model(rng)
    tasks = [
        Message.create(run_id="r", dst=n, round=1, kind="train", content=Content.of(arrays=x))
        for n in ("a", "b")
    ]
    run = {"compression-downlink": "int8", "compression-chunk": 64}
    sent = compress_tasks(tasks, run, np.random.default_rng(0))
    codes = [m.content.arrays[COMPRESSION_CODES_RECORD] for m in sent if m.content]
    assert all(m.content is not None and m.content.model is None for m in sent)
    assert codes[0] is codes[1]  # encoded once, shared by every task
    assert codes[0]["w"].dtype == np.uint8
    assert compress_tasks(tasks, {}, np.random.default_rng(0)) == tasks  # off by default

    seen: list[Arrays] = []

    def handler(m: Message, c: Context) -> Message:
        assert m.content is not None and m.content.model is not None
        assert COMPRESSION_RECORD not in m.content.configs
        seen.append(m.content.model)
        return m.reply(arrays=m.content.model, metrics={"num_examples": 1})

    reply = compression_mod()(sent[0], Context("a", run_config=run), handler)
    (model,) = seen
    assert model.signature() == x.signature()
    assert np.abs(model["w"] - x["w"]).max() <= (x["w"].max() - x["w"].min()) / 255
    assert reply.content is not None and reply.content.model is not None  # uplink: none

    bad = sent[1]
    assert bad.content is not None
    bad.content.arrays[COMPRESSION_CODES_RECORD] = Arrays(
        {**bad.content.arrays[COMPRESSION_CODES_RECORD], "w": np.zeros(3, np.uint8)}
    )
    with pytest.raises(UpdateRejected, match=r"'w' scales should be float32\[1, 2\]"):
        compression_mod()(bad, Context("b", run_config=run), handler)
    with pytest.raises(ConfigError, match="compression-downlink must be one of"):
        compress_tasks(tasks, {"compression-downlink": "topk"}, np.random.default_rng(0))
