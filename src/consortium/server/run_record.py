"""A run as the state store holds it, in the shapes ``run list`` and ``run show`` print."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consortium.core.history import RoundRecord
from consortium.server.store import CheckpointView, RunStatus, RunView


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run as the state store holds it: what ``run show`` prints, after a restart too."""

    view: RunView
    rounds: list[RoundRecord]
    checkpoint: CheckpointView | None

    @property
    def status(self) -> RunStatus:
        return self.view.status

    @property
    def error(self) -> str:
        return self.view.error or ""

    def detail(self) -> dict[str, Any]:
        """``run show``'s JSON: the summary, the newest checkpoint, the run config, the rounds."""
        ckpt = self.checkpoint
        checkpoint = None
        if ckpt is not None:
            checkpoint = {"round": ckpt.round, "path": ckpt.path, "digest": ckpt.digest}
        return {
            **summary(self.view, rounds_done=len(self.rounds)),
            "checkpoint": checkpoint,
            "run_config": dict(self.view.config),
            "rounds": [
                {
                    "round": r.round,
                    "seconds": r.seconds,
                    "metrics": r.global_metrics(),
                    "nodes": [
                        {
                            "node": n.node_id,
                            "stage": n.stage,
                            "outcome": n.outcome.value,
                            "metrics": dict(n.metrics),
                            "num_examples": n.num_examples,
                            "seconds": n.seconds,
                            "timing": n.timing,
                            "reason": n.reason,
                        }
                        for n in r.nodes
                    ],
                }
                for r in self.rounds
            ],
        }


def summary(view: RunView, *, rounds_done: int) -> dict[str, Any]:
    """``run list``'s JSON for one run (times in seconds since the epoch)."""
    finished = view.finished_at
    return {
        "run_id": view.id,
        "app": f"{view.app_name} {view.app_version}",
        "status": view.status.value,
        "rounds_done": rounds_done,
        "num_rounds": view.num_rounds,
        "created": view.created_at.timestamp(),
        "finished": None if finished is None else finished.timestamp(),
        "error": view.error or "",
    }
