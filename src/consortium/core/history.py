"""What happened in a run: per-node outcomes and per-round records."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from consortium.core.records import Config, Metrics

#: Failures a stage of a round warns of one by one, and a message lists: the rest are
#: logged at INFO (a run's log file keeps them, the terminal does not show them) and
#: counted. A worker process that dies takes a whole batch of simulated nodes with it,
#: and 10,000 nodes failing alike would otherwise print 10,000 tracebacks.
LOGGED_FAILURES = 10


class Outcome(StrEnum):
    """How one node's task in one round ended."""

    OK = "ok"
    FAILED = "failed"  # the handler raised or the node reported an error
    REJECTED = "rejected"  # the reply failed validation (NaN, wrong shape, ...)
    TIMEOUT = "timeout"  # no reply before the round deadline


@dataclass(slots=True)
class NodeResult:
    """One node's part in one stage (train or evaluate) of one round."""

    node_id: str
    stage: str
    outcome: Outcome
    metrics: Metrics = field(default_factory=dict)
    num_examples: int = 0
    reason: str = ""
    traceback: str = ""
    #: task sent -> reply received, as the server saw it
    seconds: float = 0.0
    #: where that time went, when the transport knows: "train", "upload", "wait" (seconds)
    timing: Metrics = field(default_factory=dict)


@dataclass(slots=True)
class RoundRecord:
    """Everything the server learnt in one round."""

    round: int
    train_metrics: Metrics = field(default_factory=dict)
    evaluate_metrics: Metrics = field(default_factory=dict)
    central_metrics: Metrics = field(default_factory=dict)
    nodes: list[NodeResult] = field(default_factory=list)
    seconds: float = 0.0

    def failures(self) -> list[NodeResult]:
        return [n for n in self.nodes if n.outcome is not Outcome.OK]

    def global_metrics(self) -> Metrics:
        """Central metrics, then federated evaluation, then train metrics, prefixed."""
        out: Metrics = {}
        for prefix, metrics in (
            ("train_", self.train_metrics),
            ("eval_", self.evaluate_metrics),
            ("central_", self.central_metrics),
        ):
            for k, v in metrics.items():
                out[prefix + k] = v
        return out


@dataclass(slots=True)
class RunInfo:
    """What observers learn when a run starts."""

    run_id: str
    num_rounds: int
    node_ids: list[str]
    params: Config
    run_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class History:
    """Every round of a run, in order."""

    rounds: list[RoundRecord] = field(default_factory=list)

    def metric(self, name: str) -> list[tuple[int, float]]:
        """(round, value) pairs for a global metric such as ``central_accuracy``."""
        out = []
        for r in self.rounds:
            metrics = r.global_metrics()
            if name in metrics:
                out.append((r.round, float(metrics[name])))
        return out


def round_to_json(record: RoundRecord) -> dict[str, Any]:
    """The JSON form of a round: in checkpoints, and from a run's app process to the server."""
    return {
        "round": record.round,
        "train": record.train_metrics,
        "evaluate": record.evaluate_metrics,
        "central": record.central_metrics,
        "seconds": record.seconds,
        "nodes": [
            {
                "node": n.node_id,
                "stage": n.stage,
                "outcome": n.outcome.value,
                "metrics": n.metrics,
                "num_examples": n.num_examples,
                "reason": n.reason,
                "traceback": n.traceback,
                "seconds": n.seconds,
                "timing": n.timing,
            }
            for n in record.nodes
        ],
    }


def describe_failures(failures: list[NodeResult], *, reasons: bool = True) -> str:
    """The first :data:`LOGGED_FAILURES` of ``failures`` (node, outcome and, with
    ``reasons``, why; else node, stage and outcome), and how many more there were."""
    shown = "; ".join(
        f"{n.node_id}: {n.outcome.value} ({n.reason})"
        if reasons
        else f"{n.node_id}({n.stage}:{n.outcome.value})"
        for n in failures[:LOGGED_FAILURES]
    )
    more = len(failures) - LOGGED_FAILURES
    return f"{shown}; and {more} more" if more > 0 else shown
