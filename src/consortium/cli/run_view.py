"""How ``consortium run`` shows a run: its progress line per round, and ``run show``'s tables.

Both read ``run show``'s JSON, which the gRPC and the REST API answer alike:
per round its aggregated metrics (``train_``/``eval_``/``central_`` prefixed) and
each node's stages with their own metrics (``loss``, ``auc``, ...).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from rich.table import Table

from consortium.cli.report import make_console
from consortium.core.protocol import TIMING_TRAIN, TIMING_UPLOAD, TIMING_WAIT

#: seconds between two "still running" lines of ``run start --wait``
PROGRESS_EVERY = 10.0
#: seconds between two polls of the run's state by ``run start --wait``
POLL_EVERY = 1.0
#: the aggregated metric shown as a round's loss / AUC, first found first
LOSS_KEYS = ("eval_loss", "central_loss", "train_loss")
AUC_KEYS = ("eval_auc", "central_auc", "train_auc")


def _first(metrics: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        value = metrics.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _num(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.4g}"


def node_loss_auc(round_info: dict[str, Any], node: str) -> tuple[float | None, float | None]:
    """A node's loss and AUC in a round: its evaluation's, else its training's."""
    loss = auc = None
    for stage in ("train", "evaluate"):  # evaluate last: it wins
        for n in round_info.get("nodes", []):
            if n["node"] == node and n["stage"] == stage:
                metrics = n.get("metrics") or {}
                loss = _first(metrics, ("loss",)) if "loss" in metrics else loss
                auc = _first(metrics, ("auc",)) if "auc" in metrics else auc
    return loss, auc


def round_line(round_info: dict[str, Any], num_rounds: int | None, elapsed: float) -> str:
    """``round 3/15: loss 0.452, AUC 0.831 (0.4 s; 12 s elapsed)`` plus other metrics."""
    metrics = round_info.get("metrics") or {}
    of = f"/{num_rounds}" if num_rounds else ""
    loss, auc = _first(metrics, LOSS_KEYS), _first(metrics, AUC_KEYS)
    parts = []
    if loss is not None:
        parts.append(f"loss {_num(loss)}")
    if auc is not None:
        parts.append(f"AUC {_num(auc)}")
    if not parts:  # an app without loss or AUC: its first metrics
        numbers = [(k, v) for k, v in sorted(metrics.items()) if isinstance(v, int | float)]
        parts = [f"{k} {_num(float(v))}" for k, v in numbers[:4]]
    shown = f": {', '.join(parts)}" if parts else ""
    seconds = round_info.get("seconds") or 0.0
    return f"round {round_info['round']}{of}{shown} ({seconds:.1f} s; {elapsed:.0f} s elapsed)"


def waiting_text(waiting: dict[str, Any]) -> str:
    """``waiting 12s for nodes: a, b (online: c)`` (or ``for replies from``) from
    ``run show``'s ``waiting`` (the server's ``FleetGrid.waiting().as_dict()``)."""
    missing = ", ".join(str(n) for n in waiting.get("missing", [])) or "nobody"
    online = ", ".join(str(n) for n in waiting.get("online", [])) or "none"
    what = "replies from" if waiting.get("stage") == "replies" else "nodes"
    seconds = float(waiting.get("seconds", 0))
    return f"waiting {seconds:.0f}s for {what}: {missing} (online: {online})"


def wait_for_run(
    show: Callable[[], dict[str, Any]],
    report: Callable[[str], None],
    *,
    poll_every: float = POLL_EVERY,
    progress_every: float = PROGRESS_EVERY,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll ``show()`` (a ``run show``) until the run ends; its last answer.

    ``report`` gets one line per change of status and per round done (round k/N,
    its loss and AUC, time since the wait began), a "waiting Ns for: ..." line at
    most every ``progress_every`` s while the run waits for nodes (``run show``'s
    ``waiting``), and a "still <status>" line every ``progress_every`` s while
    nothing changes.
    """
    started = last_line = clock()
    last_waiting: float | None = None
    status, rounds_seen = "", 0
    while True:
        info = show()
        now = clock()
        waiting = info.get("waiting")
        if waiting and (last_waiting is None or now - last_waiting >= progress_every):
            report(waiting_text(waiting))
            last_waiting = last_line = now
        for r in info.get("rounds", [])[rounds_seen:]:
            report(round_line(r, info.get("num_rounds"), now - started))
            rounds_seen += 1
            last_line = now
        if info["status"] != status:
            status = info["status"]
            report(f"run {info['run_id']}: {status}")
            last_line = now
        if status not in ("pending", "running"):
            return info
        if now - last_line >= progress_every:
            report(
                f"run {info['run_id']}: still {status}, {info['rounds_done']} round(s) done, "
                f"{now - started:.0f} s since start"
            )
            last_line = now
        sleep(poll_every)


def metrics_table(info: dict[str, Any]) -> Table:
    """One row per round: its aggregated loss and AUC, then each node's (loss / AUC)."""
    rounds = info.get("rounds", [])
    nodes = sorted({n["node"] for r in rounds for n in r.get("nodes", [])})
    table = Table(title="Metrics per round: aggregated, then each node's loss / AUC")
    for col in ("round", "seconds", "loss", "AUC", *nodes):
        table.add_column(col, justify="right" if col != "round" else "left")
    for r in rounds:
        metrics = r.get("metrics") or {}
        cells = []
        for node in nodes:
            loss, auc = node_loss_auc(r, node)
            cells.append(f"{_num(loss)} / {_num(auc)}")
        seconds = r.get("seconds")
        table.add_row(
            str(r["round"]), f"{seconds:.2f}" if isinstance(seconds, int | float) else "–",
            _num(_first(metrics, LOSS_KEYS)), _num(_first(metrics, AUC_KEYS)), *cells,
        )  # fmt: skip
    return table


def timing_table(info: dict[str, Any]) -> Table:
    """One row per round, node and stage: outcome and where the time went."""
    table = Table(title="Per node: outcome and where the time went (seconds)")
    for col in ("round", "node", "stage", "outcome", "total", "training", "upload", "waiting",
                "reason"):  # fmt: skip
        table.add_column(col)
    for r in info.get("rounds", []):
        for n in r["nodes"]:
            timing = n.get("timing") or {}
            cells = [
                f"{timing[k]:.2f}" if isinstance(timing.get(k), int | float) else ""
                for k in (TIMING_TRAIN, TIMING_UPLOAD, TIMING_WAIT)
            ]
            seconds = n.get("seconds")
            total = f"{seconds:.2f}" if isinstance(seconds, int | float) else ""
            table.add_row(str(r["round"]), n["node"], n["stage"], n["outcome"], total, *cells,
                          n.get("reason") or "")  # fmt: skip
    return table


def print_run(info: dict[str, Any]) -> None:
    """``run show``: the run's status, its newest checkpoint, its metrics and timings."""
    console = make_console()
    of = f"/{info['num_rounds']}" if info.get("num_rounds") else ""
    console.print(
        f"run {info['run_id']}: {info['app']} — {info['status']} "
        f"({info['rounds_done']}{of} rounds) {info.get('error') or ''}"
    )
    if info.get("nodes"):
        console.print(f"nodes chosen for this run: {', '.join(info['nodes'])}")
    checkpoint = info.get("checkpoint")
    if checkpoint:
        console.print(
            f"latest checkpoint: round {checkpoint['round']}, {checkpoint['path']} "
            f"({checkpoint['digest']})"
        )
    if info.get("rounds"):
        console.print(metrics_table(info))
    console.print(timing_table(info))
