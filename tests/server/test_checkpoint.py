"""Checkpoints: exact round trips, torn files skipped, a killed writer, a bit-exact resume."""

from __future__ import annotations

import functools
import hashlib
import math
import os
import struct
import subprocess
import sys
import textwrap
import threading
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import StrategyError, WireFormatError
from consortium.core.history import History, NodeResult, Outcome, RoundRecord, RunInfo
from consortium.core.message import Message
from consortium.core.records import Metrics
from consortium.server import RunResult, ServerApp, ServerConfig, run_server_app
from consortium.server.checkpoint import (
    checkpoint_digest,
    list_checkpoints,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from consortium.server.context import CheckpointSettings, RunStopped
from consortium.simulation import SimulationGrid
from consortium.strategy import FedAvg
from consortium.strategy.base import TrainReply

MODEL = Arrays(
    {
        "w": np.arange(12, dtype="f4").reshape(3, 4),
        "b": np.array([0.5, -1.0]),
        "count": np.array(7, dtype="i8"),
        "mask": np.array([True, False]),
        "empty": np.zeros((0, 3)),
    }
)


def history(rounds: int) -> History:
    return History(
        [
            RoundRecord(
                round=r,
                train_metrics={"loss": 1.0 / r, "diverged": math.nan},
                evaluate_metrics={"accuracy": 0.5 + r / 100},
                central_metrics={"auc": math.inf},
                nodes=[
                    NodeResult("h1", "train", Outcome.OK, {"loss": 0.25}, 40, seconds=1.5),
                    NodeResult("h2", "train", Outcome.FAILED, reason="oom", traceback="Trace…"),
                ],
                seconds=2.25,
            )
            for r in range(1, rounds + 1)
        ]
    )


def save(directory: Path, rnd: int, **kw: Any) -> Path:
    state = {"step": rnd, "velocity": Arrays({"w": np.full(3, float(rnd))})}
    return save_checkpoint(directory, rnd, MODEL, state, history(rnd), seed=11, run_id="r1", **kw)


def test_round_trip_is_exact(tmp_path: Path) -> None:
    state: dict[str, Any] = {
        "momentum": np.linspace(0, 1, 5, dtype="f8"),
        "server_lr": np.float32(0.125),
        "t": np.int64(3),
        "flag": np.bool_(True),
        "controls": Arrays({"a": np.ones((2, 2), "f2"), "b": np.array([1 + 2j])}),
        "nested": {"lrs": [0.1, 0.01, math.nan], "pair": (1, "x"), "none": None},
        "by_round": {1: np.zeros(2), 2: "two"},
        "$": "a key that looks like the codec's tag",
        "blob": b"\x00\xffbytes",
        "big": 2**70,
    }
    path = save_checkpoint(tmp_path, 3, MODEL, state, history(3), seed=2**40, run_id="abc")
    ck = read_checkpoint(path)
    assert ck.round == 3 and ck.seed == 2**40 and ck.run_id == "abc"
    assert ck.arrays.equals(MODEL)
    got = ck.state
    np.testing.assert_array_equal(got["momentum"], state["momentum"])
    assert got["momentum"].flags.writeable, "the strategy may update restored state in place"
    assert type(got["server_lr"]) is np.float32 and got["server_lr"] == np.float32(0.125)
    assert type(got["t"]) is np.int64 and type(got["flag"]) is np.bool_
    assert isinstance(got["controls"], Arrays) and got["controls"].equals(state["controls"])
    assert got["nested"]["pair"] == (1, "x") and got["nested"]["none"] is None
    assert math.isnan(got["nested"]["lrs"][2])
    assert set(got["by_round"]) == {1, 2} and got["by_round"][2] == "two"
    assert got["$"] == state["$"] and got["blob"] == state["blob"] and got["big"] == 2**70
    assert _same_history(ck.history, history(3))
    crc = zlib.crc32(path.read_bytes()[:-4])
    assert ck.digest == checkpoint_digest(path) == f"crc32:{crc:08x}"


def _as_version_1(path: Path) -> None:
    """Rewrite a checkpoint in format version 1: same layout, SHA-256 trailer."""
    body = bytearray(path.read_bytes()[:-4])
    struct.pack_into("<I", body, 4, 1)
    path.write_bytes(bytes(body) + hashlib.sha256(body).digest())


def test_a_version_1_checkpoint_still_loads_and_is_still_verified(tmp_path: Path) -> None:
    path = save(tmp_path, 4)
    _as_version_1(path)
    ck = read_checkpoint(path)
    assert ck.round == 4 and ck.arrays.equals(MODEL) and ck.state["step"] == 4
    sha = hashlib.sha256(path.read_bytes()[:-32]).hexdigest()
    assert ck.digest == checkpoint_digest(path) == f"sha256:{sha}"
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(WireFormatError, match="SHA-256"):
        read_checkpoint(path)


def test_an_unknown_format_version_is_named(tmp_path: Path) -> None:
    path = save(tmp_path, 1)
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 4, 99)
    path.write_bytes(bytes(data))
    with pytest.raises(WireFormatError, match="known version"):
        read_checkpoint(path)
    with pytest.raises(WireFormatError, match="known version"):
        checkpoint_digest(path)


def test_newest_wins_and_empty_folders_give_none(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path / "missing") is None
    assert load_checkpoint(tmp_path) is None
    for rnd in (0, 1, 2, 10):
        save(tmp_path, rnd)
    ck = load_checkpoint(tmp_path)
    assert ck is not None and ck.round == 10  # numeric order, not just names
    assert ck.state["step"] == 10


@pytest.mark.parametrize("damage", ["empty", "prefix-only", "half", "no-digest", "one-byte-short"])
def test_a_truncated_newest_checkpoint_falls_back_to_the_previous(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    save(tmp_path, 1)
    newest = save(tmp_path, 2)
    size = newest.stat().st_size
    keep = {"empty": 0, "prefix-only": 16, "half": size // 2, "no-digest": size - 4}
    os.truncate(newest, keep.get(damage, size - 1))
    with pytest.raises(WireFormatError):
        read_checkpoint(newest)
    ck = load_checkpoint(tmp_path)
    assert ck is not None and ck.round == 1 and ck.arrays.equals(MODEL)
    assert "skipping checkpoint" in caplog.text


@pytest.mark.parametrize("where", [5, 100, -40, -1])
def test_a_flipped_byte_anywhere_is_caught(tmp_path: Path, where: int) -> None:
    save(tmp_path, 1)
    newest = save(tmp_path, 2)
    data = bytearray(newest.read_bytes())
    data[where] ^= 0x01
    newest.write_bytes(bytes(data))
    ck = load_checkpoint(tmp_path)
    assert ck is not None and ck.round == 1


def test_a_writer_killed_mid_write_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    save(tmp_path, 1)
    # a child process writes round 2 and is SIGKILLed after writing the data, before the rename
    child = textwrap.dedent(
        f"""
        import os, signal
        import numpy as np
        from pathlib import Path
        from consortium.core.arrays import Arrays
        from consortium.core.history import History
        from consortium.server import checkpoint

        def die(fd):
            os.kill(os.getpid(), signal.SIGKILL)

        checkpoint.os.fsync = die
        big = Arrays({{"w": np.ones(100_000)}})
        checkpoint.save_checkpoint(Path({str(tmp_path)!r}), 2, big, {{}}, History())
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".round-000002.ckpt.")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["round-000001.ckpt"]
    ck = load_checkpoint(tmp_path)
    assert ck is not None and ck.round == 1
    save(tmp_path, 2)  # the next save clears what the killed writer left
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("consortium.server.checkpoint.os.fsync", boom)
    with pytest.raises(OSError, match="No space"):
        save(tmp_path, 1)
    assert list(tmp_path.iterdir()) == []


def test_keep_prunes_old_checkpoints(tmp_path: Path) -> None:
    for rnd in range(1, 6):
        save(tmp_path, rnd, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "round-000004.ckpt",
        "round-000005.ckpt",
    ]


@pytest.mark.parametrize(
    "state",
    [{"model": object()}, {"names": np.array(["a", "b"])}, {"objs": np.array([1, None])}],
    ids=["object", "str-array", "object-array"],
)
def test_state_that_needs_pickle_is_refused(tmp_path: Path, state: dict[str, Any]) -> None:
    with pytest.raises(StrategyError, match="state"):
        save_checkpoint(tmp_path, 1, MODEL, state, History())
    assert list_checkpoints(tmp_path) == []


def test_other_files_are_not_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "round-1.ckpt").write_bytes(b"short name")
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "round-000009.ckpt").write_bytes(b"CSCK" + bytes(100))
    save(tmp_path, 3)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "round-000003.ckpt",
        "round-000009.ckpt",
    ]
    ck = load_checkpoint(tmp_path)
    assert ck is not None and ck.round == 3


# -- resume: round number + seed restore the run bit for bit ---------------------------
class MomentumAvg(FedAvg):
    """FedAvg with server momentum: its velocity is state a resume must restore."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.velocity: Arrays | None = None
        self.steps = 0

    def aggregate_train(
        self, round: int, current: Arrays, replies: Iterable[TrainReply]
    ) -> tuple[Arrays, Metrics]:
        avg, metrics = super().aggregate_train(round, current, replies)
        old = self.velocity or Arrays((k, np.zeros_like(v)) for k, v in current.items())
        self.velocity = Arrays((k, 0.9 * old[k] + (avg[k] - current[k])) for k in current)
        self.steps += 1
        return Arrays((k, current[k] + self.velocity[k]) for k in current), metrics

    def state_dict(self) -> dict[str, Any]:
        return {"velocity": self.velocity, "steps": np.int64(self.steps)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.velocity, self.steps = state["velocity"], int(state["steps"])


def noisy_client() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        assert msg.content is not None and msg.content.model is not None
        rng = ctx.rng(msg.metadata.round)  # (seed, round, node): nothing else
        update = Arrays((k, v + rng.normal(size=v.shape)) for k, v in msg.content.model.items())
        return msg.reply(arrays=update, metrics={"num_examples": int(rng.integers(5, 50))})

    return app


def make_loop(
    seed: int, *, checkpoint_dir: Path | None = None, **kw: Any
) -> Callable[[], RunResult]:
    """A run of the round workflow, ready to start."""
    init = Arrays({"w": np.zeros(6), "b": np.zeros(2)})
    strategy = MomentumAvg(fraction_train=0.5, fraction_evaluate=0.0, initial_arrays=init)
    grid = SimulationGrid(noisy_client(), [f"n{i}" for i in range(6)], seed=seed)
    config = ServerConfig(strategy, num_rounds=5)
    checkpoints = CheckpointSettings(checkpoint_dir) if checkpoint_dir is not None else None
    return functools.partial(
        run_server_app, ServerApp(lambda _: config), grid, seed=seed, run_id="r",
        checkpoints=checkpoints, **kw,
    )  # fmt: skip


class StopAfter:
    """An observer that stops the run once ``round`` is done (a crash, as far as state goes)."""

    def __init__(self, round: int, stop: threading.Event) -> None:
        self.round, self.stop = round, stop

    def on_run_start(self, info: RunInfo) -> None:
        pass

    def on_round_end(self, record: RoundRecord) -> None:
        if record.round == self.round:
            self.stop.set()

    def on_run_end(self, history: History, *, failed: bool) -> None:
        pass


def test_resuming_from_a_checkpoint_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    full = make_loop(seed=5)()

    stop = threading.Event()
    first = make_loop(seed=5, checkpoint_dir=tmp_path, stop=stop, observers=[StopAfter(3, stop)])
    with pytest.raises(RunStopped):
        first()
    del first  # nothing of the first server survives but its checkpoints

    ck = load_checkpoint(tmp_path)
    assert ck is not None and ck.round == 3 and ck.seed == 5
    resumed = make_loop(seed=5, checkpoint_dir=tmp_path, resume=ck)()
    assert resumed.arrays.equals(full.arrays)
    assert _same_history(resumed.history, full.history, timings=False)


def _same_history(a: History, b: History, *, timings: bool = True) -> bool:
    """Equal histories; repr makes NaN equal NaN; wall-clock seconds compared if ``timings``."""

    def norm(h: History) -> str:
        rounds = []
        for r in h.rounds:
            nodes = [
                (n.node_id, n.stage, n.outcome, n.metrics, n.num_examples, n.reason, n.traceback)
                + ((n.seconds,) if timings else ())
                for n in r.nodes
            ]
            metrics = (r.train_metrics, r.evaluate_metrics, r.central_metrics)
            rounds.append((r.round, metrics, nodes) + ((r.seconds,) if timings else ()))
        return repr(rounds)

    return norm(a) == norm(b)


# -- recycled files and background writes -----------------------------------------------
def test_the_dropped_checkpoint_file_is_recycled_and_verifies(tmp_path: Path) -> None:
    big = Arrays({"w": np.arange(50_000, dtype="f4")})
    save_checkpoint(tmp_path, 1, big, {}, history(1), keep=2)
    save_checkpoint(tmp_path, 2, big, {}, history(2), keep=2)
    inode = os.stat(tmp_path / "round-000001.ckpt").st_ino
    small = Arrays({"w": np.arange(10, dtype="f4")})
    path = save_checkpoint(tmp_path, 3, small, {"t": np.int64(3)}, history(3), keep=2)
    assert os.stat(path).st_ino == inode  # round 1's file, overwritten in place
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "round-000002.ckpt",
        "round-000003.ckpt",
    ]
    ck = read_checkpoint(path)  # verified: the longer old content was cut off
    assert ck.round == 3 and ck.arrays.equals(small) and ck.state == {"t": 3}
    assert checkpoint_digest(path) == ck.digest


def test_the_checkpoint_a_run_resumed_from_is_never_recycled(tmp_path: Path) -> None:
    save(tmp_path, 5, keep=2)
    (tmp_path / "round-000006.ckpt").write_bytes(b"CSCK torn")  # the crash tore round 6
    inode = os.stat(tmp_path / "round-000005.ckpt").st_ino
    path = save(tmp_path, 6, keep=2)  # the resumed run writes round 6 again
    assert os.stat(path).st_ino != inode
    assert read_checkpoint(tmp_path / "round-000005.ckpt").round == 5
    assert read_checkpoint(path).round == 6


def _loop_with(
    tmp_path: Path, written: list[int], rounds: list[int] | None = None, **config: Any
) -> Callable[[], RunResult]:
    init = Arrays({"w": np.zeros(6), "b": np.zeros(2)})
    strategy = MomentumAvg(fraction_train=0.5, fraction_evaluate=0.0, initial_arrays=init)
    grid = SimulationGrid(noisy_client(), [f"n{i}" for i in range(6)], seed=1)
    server_config = ServerConfig(strategy, num_rounds=5, **config)
    return functools.partial(
        run_server_app,
        ServerApp(lambda _: server_config),
        grid,
        seed=1,
        checkpoints=CheckpointSettings(tmp_path, on_written=lambda rnd, path: written.append(rnd)),
        observers=[RoundCounter(rounds if rounds is not None else [])],
    )


class RoundCounter:
    """Notes each finished round."""

    def __init__(self, rounds: list[int]) -> None:
        self.rounds = rounds

    def on_run_start(self, info: RunInfo) -> None:
        pass

    def on_round_end(self, record: RoundRecord) -> None:
        self.rounds.append(record.round)

    def on_run_end(self, history: History, *, failed: bool) -> None:
        pass


def test_checkpoint_every_n_rounds_and_always_the_last(tmp_path: Path) -> None:
    written: list[int] = []
    result = _loop_with(tmp_path, written, checkpoint_every=2)()
    assert written == [0, 2, 4, 5]  # the initial model, then every 2nd and the last
    ck = load_checkpoint(tmp_path)
    assert ck is not None and ck.round == 5 and ck.arrays.equals(result.arrays)


@pytest.mark.parametrize("background", [True, False])
def test_a_failing_checkpoint_write_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, background: bool
) -> None:
    def boom(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("consortium.server.checkpoint.os.fsync", boom)
    rounds: list[int] = []
    loop = _loop_with(tmp_path, [], rounds, checkpoint_in_background=background)
    with pytest.raises(OSError, match="No space"):
        loop()
    assert len(rounds) <= 2  # noticed at the next checkpoint at the latest


def test_a_checkpoint_keeps_each_nodes_timing_and_reads_files_without_it(tmp_path: Path) -> None:
    """The history in a checkpoint is the round JSON an app process reports
    (``core.history.round_to_json``), per-node timing included; older files have none."""
    node = NodeResult("a", "train", Outcome.OK, {"loss": 0.5}, 10, seconds=1.5,
                      timing={"train": 1.0, "upload": 0.25, "wait": 0.25})  # fmt: skip
    history = History([RoundRecord(1, {"loss": 0.5}, nodes=[node], seconds=2.0)])
    path = save_checkpoint(tmp_path, 1, MODEL, {}, history, seed=1, run_id="r")

    assert read_checkpoint(path).history == history
