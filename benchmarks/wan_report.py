"""What ``benchmarks/wan.py`` reports: a codec's row, where a round's time goes, the tables.

A round's **split** follows its critical path: the node whose reply reached
the server last. From the end of the previous round's central evaluation:

* ``server out``: the server configures the round, compresses the model (a
  compressed downlink), and the task crosses loopback gRPC to that node;
* ``down link``: the throttle's wait on the task (rate and latency);
* ``compute``: the node's training (the handler's ``mlp.train``);
* ``codec``: the compression mod in the app process (decoding a compressed
  task, encoding the update);
* ``node other``: the rest of the node's work on the task: decoding it,
  handing it to the app process and back over the sandbox channel, encoding
  the reply;
* ``up link``: the throttle's wait on the reply, then its gRPC push;
* ``server in``: what the server does between that push and the central
  evaluation (decoding and folding the last reply, the round's bookkeeping);
* ``eval``: the central evaluation on the 450 test digits.

The parts add up to the round's wall time; each is the median over rounds
2..n (round 1 also starts every node's app process).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: Rounds at the end of the float32 run whose mean accuracy, less ``--tolerance``, is the
#: target.
PLATEAU = 5
#: The parts of a round, in the order they happen on its critical path.
SPLIT = (
    "server out", "down link", "compute", "codec", "node other", "up link", "server in", "eval"
)  # fmt: skip


@dataclass
class Row:
    codec: str
    seed: int
    uplink: str
    downlink: str
    rounds: int
    target: float | None
    rounds_to_target: int | None
    seconds_to_target: float | None
    best_accuracy: float
    seconds_per_round: float  # median of rounds 2..n
    first_round_seconds: float  # round 1, app processes starting included
    link_seconds_per_round: float  # per node, both directions, latency included
    train_seconds_per_round: float  # a node's app round trip (median, nodes and rounds 2..n)
    bytes_up_per_round: float  # per node
    bytes_down_per_round: float  # per node
    split: dict[str, float] = field(default_factory=dict)  # median seconds of each SPLIT part
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # round, acc, clock


def plateau(row: Row) -> float:
    """The float32 run's accuracy at the end: the mean of its last :data:`PLATEAU` rounds
    (one test set of 450 digits moves 0.22 points a digit: its best round is a lucky one)."""
    return statistics.fmean(a for _, a, _ in row.curve[-PLATEAU:])


def baseline(row: Row, target: float) -> Row:
    """The float32 run's own time to the target, read off its curve."""
    first = next((r, t) for r, a, t in row.curve if a >= target)
    row.target, row.rounds_to_target, row.seconds_to_target = target, first[0], first[1]
    return row


def round_split(
    starts: Sequence[float],
    evals: Sequence[tuple[float, float]],
    tasks: Sequence[Sequence[tuple[float, float]]],
    replies: Sequence[Sequence[tuple[float, float]]],
    app: Sequence[Sequence[tuple[float, float]]],
) -> dict[str, float]:
    """Median seconds of each :data:`SPLIT` part over rounds 2..n.

    Round ``k`` (0-based) starts at ``starts[k]`` and ends with the central
    evaluation ``evals[k]`` (start, end); ``tasks[i][k]`` and ``replies[i][k]``
    are node ``i``'s link stamps (in, out) and ``app[i][k]`` its (compute, app)
    seconds.
    """
    parts: dict[str, list[float]] = {name: [] for name in SPLIT}
    for k in range(1, len(evals)):
        last = max(range(len(replies)), key=lambda i: replies[i][k][1])
        (pulled, delivered), (handed, pushed) = tasks[last][k], replies[last][k]
        compute, in_app = app[last][k]
        node = handed - delivered
        for name, seconds in zip(
            SPLIT,
            (
                pulled - starts[k],
                delivered - pulled,
                compute,
                in_app - compute,
                node - in_app,
                pushed - handed,
                evals[k][0] - pushed,
                evals[k][1] - evals[k][0],
            ),
            strict=True,
        ):
            parts[name].append(seconds)
    return {name: statistics.median(v) for name, v in parts.items() if v}


def print_table(rows: Sequence[Row]) -> None:
    """The per-run table (one seed) and each codec's split of a median round."""
    base = rows[0]
    base_link = (base.rounds_to_target or 0) * base.link_seconds_per_round
    print(
        "\n| codec (up / down) | rounds to target | s to target | speed-up | best acc "
        "| s / round | link s / round | app s / round | up kB / round | down kB / round "
        "| link s to target | link speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")  # per node: link s, app s, kB
    for r in rows:
        secs = r.seconds_to_target
        speedup = (
            f"{base.seconds_to_target / secs:.2f}x" if secs and base.seconds_to_target else "-"
        )
        print(
            f"| {r.codec} ({r.uplink} / {r.downlink}) | {r.rounds_to_target or '-'} "
            f"| {f'{secs:.1f}' if secs else 'not reached'} | {speedup} "
            f"| {r.best_accuracy:.4f} | {r.seconds_per_round:.2f} "
            f"| {r.link_seconds_per_round:.2f} | {r.train_seconds_per_round:.2f} "
            f"| {r.bytes_up_per_round / 1e3:.1f} "
            f"| {r.bytes_down_per_round / 1e3:.1f} | {_link(r, base_link)} |"
        )
    print("\nA median round's critical path (s):\n")
    print("| codec | " + " | ".join(SPLIT) + " | round |")
    print("|---" * (len(SPLIT) + 2) + "|")
    for r in rows:
        cells = " | ".join(f"{r.split.get(name, 0.0):.3f}" for name in SPLIT)
        print(f"| {r.codec} | {cells} | {sum(r.split.values()):.3f} |")


def _link(row: Row, base: float) -> str:
    """Time to the target on the link alone (rounds x a node's link seconds a round): what
    compression acts on, whatever the nodes' compute costs on this machine."""
    if row.rounds_to_target is None:
        return "- | -"
    seconds = row.rounds_to_target * row.link_seconds_per_round
    return f"{seconds:.1f} | {base / seconds:.2f}x"


def accuracy_at(row: Row, seconds: float) -> float | None:
    """The accuracy of the last round finished by ``seconds`` on the run's clock."""
    done = [a for _, a, t in row.curve if t <= seconds]
    return done[-1] if done else None


def print_summary(rows: Sequence[Row], goal: float = 3.0) -> None:
    """Over seeds: each codec's mean time to its seed's target, the speed-up of the means,
    the per-seed speed-ups, and its accuracy when float32's time to target / ``goal`` has
    passed (the goal is met at a seed when that accuracy reaches the seed's target)."""
    seeds = sorted({r.seed for r in rows})
    by = {(r.codec, r.seed): r for r in rows}
    codecs = list(dict.fromkeys(r.codec for r in rows))
    base = {s: by["none", s] for s in seeds if ("none", s) in by}
    if not base:
        return
    mean_base = statistics.fmean(b.seconds_to_target or 0.0 for b in base.values())
    print(f"\nOver seeds {seeds} (each seed's target: its float32 plateau less the tolerance):\n")
    print(
        "| codec | reached | mean rounds | mean s to target | speed-up of means "
        f"| speed-up per seed | accuracy at float32's time / {goal:g} (target) |"
    )
    print("|---|---|---|---|---|---|---|")
    for codec in codecs:
        runs = [(s, by[codec, s]) for s in seeds if (codec, s) in by and s in base]
        hit = [(s, r) for s, r in runs if r.seconds_to_target is not None]
        if not hit:
            print(f"| {codec} | 0/{len(runs)} | - | - | - | - | - |")
            continue
        mean_rounds = statistics.fmean(r.rounds_to_target or 0 for _, r in hit)
        mean_s = statistics.fmean(r.seconds_to_target or 0.0 for _, r in hit)
        per_seed = ", ".join(
            f"{(base[s].seconds_to_target or 0.0) / (r.seconds_to_target or 1.0):.2f}x"
            for s, r in hit
        )
        at = []
        for s, r in runs:
            acc = accuracy_at(r, (base[s].seconds_to_target or 0.0) / goal)
            at.append(f"{acc:.4f}" if acc is not None else "none yet")
            at[-1] += f" ({r.target:.4f})" if r.target is not None else ""
        print(
            f"| {codec} | {len(hit)}/{len(runs)} | {mean_rounds:.1f} | {mean_s:.1f} "
            f"| {mean_base / mean_s:.2f}x | {per_seed} | {', '.join(at)} |"
        )


def row_from(data: dict[str, Any]) -> Row:
    """A :class:`Row` read back from a ``--json`` report."""
    data = dict(data)
    data["curve"] = [tuple(p) for p in data.get("curve", [])]
    return Row(**data)
