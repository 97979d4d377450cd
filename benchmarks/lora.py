"""Federated fine-tuning with LoRA vs the classifier head vs every weight: bytes and accuracy.

    python benchmarks/lora.py                  # 20 rounds per mode
    python benchmarks/lora.py --quick          # 5 rounds, Dirichlet(5) skew: the tests' setting
    python benchmarks/lora.py --json lora.json

Workload: ``examples/lora_digits`` — an MLP (64-256-256-10) pretrained on
scikit-learn's digits 0–4, fine-tuned on digits 5–9 split over 4 hospitals
with Dirichlet(0.5) label skew; FedAvg, every hospital every round, one local
epoch of SGD. Modes: ``lora`` (PEFT rank-4 adapters on both hidden layers plus
the classifier head), ``head`` (the classifier only), ``full`` (every weight).

Bytes are counted on the messages themselves: the simulation's grid is
wrapped and every train task (down) and reply (up) is encoded as the
transport sends it (``Message.to_bytes``: metadata, config, metrics and the
model arrays), summed per round over all hospitals. Accuracy is the server's
central evaluation on the held-out digits 5–9 after the last round, and its
mean over the last 5 rounds.
Wall seconds include importing PEFT (``lora`` runs first).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from consortium.apps.loader import load_object
from consortium.apps.manifest import load_app_spec
from consortium.core.grid import Grid, GridWrapper
from consortium.core.message import Message
from consortium.core.protocol import TRAIN
from consortium.server import ServerApp
from consortium.simulation import run_simulation

APP = Path(__file__).resolve().parents[1] / "examples" / "lora_digits"
MODES = ("lora", "head", "full")
#: ``--quick`` and the tests: 5 rounds under milder label skew, so 4 hospitals converge in them
QUICK: dict[str, Any] = {"num-rounds": 5, "alpha": 5.0}


@dataclass
class MessageLog:
    """Every train task the server sent and every reply it got, in order."""

    tasks: list[Message] = field(default_factory=list)
    replies: list[Message] = field(default_factory=list)

    def wrap(self, inner: Grid) -> Grid:
        return _LoggingGrid(inner, self)


class _LoggingGrid(GridWrapper):
    """A Grid that records train messages both ways and changes nothing."""

    def __init__(self, inner: Grid, log: MessageLog) -> None:
        super().__init__(inner)
        self.log = log

    def send_and_receive(
        self, messages: Sequence[Message], *, timeout: float | None
    ) -> Iterator[Message]:
        self.log.tasks.extend(m for m in messages if m.metadata.kind == TRAIN)
        for reply in self.inner.send_and_receive(messages, timeout=timeout):
            if reply.metadata.kind == TRAIN:
                self.log.replies.append(reply)
            yield reply


def message_bytes(messages: Sequence[Message]) -> int:
    """Encoded size of ``messages`` (``Message.to_bytes``: what the transport frames)."""
    return sum(len(m.to_bytes()) for m in messages)


@dataclass
class Row:
    mode: str
    trainable_params: int
    bytes_up_per_round: float
    bytes_down_per_round: float
    accuracy: float
    accuracy_last5: float  # mean over the last 5 rounds: label skew makes rounds jumpy
    rounds: int
    seconds: float


def run_mode(
    mode: str, overrides: dict[str, Any], run_dir: Path
) -> tuple[Row, MessageLog, list[float]]:
    """Simulate the example in ``mode``; the row, the messages and accuracy per round."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec = load_app_spec(APP)
    sys.path.insert(0, str(spec.root))
    from lora_app import modes

    run_config = spec.run_config({**overrides, "mode": mode})
    server = load_object(spec.manifest.app.server, [str(spec.root)])
    assert isinstance(server, ServerApp)
    log = MessageLog()
    start = time.perf_counter()
    result = run_simulation(
        server,
        spec.manifest.app.client,
        num_nodes=int(spec.manifest.simulation.num_nodes),
        run_config=run_config,
        run_dir=run_dir,
        app_path=[str(spec.root)],
        grid_wrapper=log.wrap,
    )
    seconds = time.perf_counter() - start
    rounds = int(run_config["num-rounds"])
    accuracies = [value for _, value in result.history.metric("central_accuracy")]
    net = modes.build(mode, int(run_config["rank"]), int(run_config["lora-alpha"]))
    row = Row(
        mode=mode,
        trainable_params=modes.trainable_parameters(net),
        bytes_up_per_round=message_bytes(log.replies) / rounds,
        bytes_down_per_round=message_bytes(log.tasks) / rounds,
        accuracy=accuracies[-1],
        accuracy_last5=sum(accuracies[-5:]) / len(accuracies[-5:]),
        rounds=rounds,
        seconds=seconds,
    )
    return row, log, accuracies


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK} per mode")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per mode (default 20)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated modes")
    parser.add_argument("--json", type=Path, help="write the rows to this file")
    parser.add_argument("--run-dir", type=Path, default=Path(".bench/lora"))
    args = parser.parse_args(argv)
    overrides = dict(QUICK) if args.quick else {"num-rounds": 20}
    if args.rounds:
        overrides["num-rounds"] = args.rounds
    rows = []
    for mode in args.modes.split(","):
        row, _, _ = run_mode(mode, overrides, args.run_dir / mode)
        rows.append(row)
    full = next((r for r in rows if r.mode == "full"), None)
    print("| mode | trainable params | bytes up/round | bytes down/round | vs full", end="")
    print(" | accuracy | mean of last 5 | rounds | s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{full.bytes_up_per_round / r.bytes_up_per_round:.1f}× fewer" if full else "—"
        print(
            f"| {r.mode} | {r.trainable_params:,} | {r.bytes_up_per_round:,.0f} | "
            f"{r.bytes_down_per_round:,.0f} | {ratio} | {r.accuracy:.3f} | "
            f"{r.accuracy_last5:.3f} | {r.rounds} | {r.seconds:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()
