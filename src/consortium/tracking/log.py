"""A run observer that writes to the standard ``logging`` module.

One structured ``key=value`` line per round, and one WARNING per node that
failed, was rejected or timed out, with the node's reason and traceback, so
the run log alone explains why a node dropped out.
"""

from __future__ import annotations

import logging

from consortium.core.history import (
    History,
    NodeResult,
    Outcome,
    RoundRecord,
    RunInfo,
    describe_failures,
)

__all__ = ["LogObserver", "format_value", "node_counts"]


def node_counts(record: RoundRecord) -> tuple[int, int]:
    """(nodes ok, nodes failed) in a round, counting each node once across its stages.

    A node is failed when any of its stages did not end OK (failed, rejected or
    timed out).
    """
    seen: set[str] = set()
    failed: set[str] = set()
    for n in record.nodes:
        seen.add(n.node_id)
        if n.outcome is not Outcome.OK:
            failed.add(n.node_id)
    return len(seen) - len(failed), len(failed)


def format_value(value: float) -> str:
    """A metric value, short: integers as such, floats with about four significant digits."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    v = float(value)
    if v != v or v in (float("inf"), float("-inf")):
        return str(v)
    if v.is_integer() and abs(v) < 1e9:
        return str(int(v))
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.4g}"
    return f"{v:.4f}"


class LogObserver:
    """Logs each round as one line and each failed node as a WARNING with its traceback."""

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        level: int = logging.INFO,
        max_node_warnings: int | None = None,
    ) -> None:
        """``max_node_warnings`` caps the per-node warnings of one round (None: no cap)."""
        self.logger = logger or logging.getLogger("consortium.run")
        self.level = level
        self.max_node_warnings = max_node_warnings
        self._run_id = ""
        self._num_rounds = 0

    def on_run_start(self, info: RunInfo) -> None:
        self._run_id = info.run_id
        self._num_rounds = info.num_rounds
        self.logger.log(
            self.level,
            "run=%s started rounds=%d nodes=%d params=%s",
            info.run_id,
            info.num_rounds,
            len(info.node_ids),
            " ".join(f"{k}={v}" for k, v in info.params.items()),
            extra={"consortium": {"run_id": info.run_id, "event": "run_start"}},
        )

    def on_round_end(self, record: RoundRecord) -> None:
        try:
            self._round(record)
        except Exception:  # a logging handler must never end a federated run
            logging.getLogger(__name__).debug("LogObserver failed", exc_info=True)

    def _round(self, record: RoundRecord) -> None:
        ok, failed = node_counts(record)
        metrics = record.global_metrics()
        self.logger.log(
            self.level,
            "run=%s round=%d/%d seconds=%.3f nodes_ok=%d nodes_failed=%d %s",
            self._run_id,
            record.round,
            self._num_rounds,
            record.seconds,
            ok,
            failed,
            " ".join(f"{k}={format_value(v)}" for k, v in metrics.items()),
            extra={
                "consortium": {
                    "run_id": self._run_id,
                    "event": "round_end",
                    "round": record.round,
                    "seconds": record.seconds,
                    "nodes_ok": ok,
                    "nodes_failed": failed,
                    "metrics": metrics,
                }
            },
        )
        failures = record.failures()
        cap = len(failures) if self.max_node_warnings is None else self.max_node_warnings
        for node in failures[:cap]:
            self._node_warning(record.round, node)
        if len(failures) > cap:
            self.logger.warning(
                "run=%s round=%d %d more node failures not shown: %s",
                self._run_id,
                record.round,
                len(failures) - cap,
                describe_failures(failures[cap:], reasons=False),
            )

    def _node_warning(self, rnd: int, node: NodeResult) -> None:
        tb = node.traceback.rstrip()
        self.logger.warning(
            "run=%s round=%d node=%s stage=%s outcome=%s reason=%s%s",
            self._run_id,
            rnd,
            node.node_id,
            node.stage,
            node.outcome.value,
            node.reason or "-",
            f"\n{tb}" if tb else "",
            extra={
                "consortium": {
                    "run_id": self._run_id,
                    "event": "node_failure",
                    "round": rnd,
                    "node_id": node.node_id,
                    "stage": node.stage,
                    "outcome": node.outcome.value,
                    "reason": node.reason,
                    "traceback": node.traceback,
                }
            },
        )

    def on_run_end(self, history: History, *, failed: bool) -> None:
        rounds = len(history.rounds)
        if failed:
            self.logger.error(
                "run=%s failed after rounds=%d/%d", self._run_id, rounds, self._num_rounds
            )
        else:
            self.logger.log(self.level, "run=%s finished rounds=%d", self._run_id, rounds)
