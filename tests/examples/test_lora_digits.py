"""examples/lora_digits: only the LoRA adapters (and the new head) travel, ≥10× fewer
bytes than full fine-tuning on the messages themselves, at similar accuracy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError
from consortium.core.message import Content, Message
from consortium.core.protocol import TRAIN

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # PEFT on a plain torch module: never the hub
pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import lora as bench  # noqa: E402

pytestmark = pytest.mark.torch
QUICK = bench.QUICK
HEAD = ("base_model.model.head.weight", "base_model.model.head.bias")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = {}
    for mode in ("lora", "full"):
        out[mode] = bench.run_mode(mode, QUICK, tmp_path_factory.mktemp(mode))
    return out


def test_nodes_send_and_receive_only_the_adapters_and_the_head(runs: dict[str, Any]) -> None:
    _, log, _ = runs["lora"]
    assert len(log.replies) == 4 * QUICK["num-rounds"] and len(log.tasks) == len(log.replies)
    for message in log.replies + log.tasks:
        names = set(message.content.model)
        adapters = names - set(HEAD)
        assert set(HEAD) <= names
        assert adapters and all(".lora_A." in n or ".lora_B." in n for n in adapters), names
        assert {n.split(".")[2] for n in adapters} == {"fc1", "fc2"}  # the target_modules
    reply = log.replies[-1].content.model
    assert reply["base_model.model.fc1.lora_A.weight"].shape == (4, 64)  # rank 4
    assert np.abs(reply["base_model.model.fc1.lora_B.weight"]).sum() > 0  # B trained off zero


def test_lora_sends_at_least_ten_times_fewer_bytes_than_full_fine_tuning(
    runs: dict[str, Any],
) -> None:
    lora_row, lora_log, _ = runs["lora"]
    full_row, full_log, _ = runs["full"]
    up = bench.message_bytes(full_log.replies) / bench.message_bytes(lora_log.replies)
    down = bench.message_bytes(full_log.tasks) / bench.message_bytes(lora_log.tasks)
    assert up >= 10 and down >= 10, (up, down)
    assert full_row.trainable_params / lora_row.trainable_params >= 10


def test_lora_accuracy_is_within_a_few_points_of_full_fine_tuning(runs: dict[str, Any]) -> None:
    lora_row, _, _ = runs["lora"]
    full_row, _, _ = runs["full"]
    assert full_row.accuracy > 0.85, full_row
    assert lora_row.accuracy >= full_row.accuracy - 0.05, (lora_row, full_row)


def test_a_node_whose_pretrained_base_differs_refuses_to_train() -> None:
    sys.path.insert(0, str(bench.APP))
    from lora_app import app

    task = Message.create(
        run_id="r",
        dst="0",
        round=1,
        kind=TRAIN,
        content=Content.of(arrays=Arrays(), config={app.BASE_DIGEST: "0" * 64}),
    )
    context = Context(node_id="0", node_config={}, run_config={}, seed=0)
    with pytest.raises(ConfigError, match="base-sha256: this node's pretrained base is"):
        app.train(task, context)


def test_consortium_simulate_runs_the_example(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "consortium"
    command = [str(exe), "simulate", "examples/lora_digits", "--run-config", "num-rounds=1"]
    command += ["--run-dir", str(tmp_path / "run"), "--no-tracking", "--no-plot", "--no-progress"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    with np.load(tmp_path / "run" / "model.npz") as saved:
        assert set(HEAD) < set(saved.files)
        assert not any(n.endswith(("fc1.weight", "fc2.weight")) for n in saved.files)


def test_a_mode_that_does_not_exist_is_refused_naming_the_field() -> None:
    sys.path.insert(0, str(bench.APP))
    from lora_app import modes

    with pytest.raises(ConfigError, match="'mode' must be one of lora, head, full"):
        modes.build("adapter", 4, 8)
