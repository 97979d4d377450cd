"""A run observer that shows progress in the terminal with ``rich``.

On a terminal: a progress bar over rounds with an ETA, and one compact line
per round above it. Anywhere else (a pipe, a CI log, a file): the same lines,
plain, with the ETA written into each line, and no live display. Work per
round is one pass over the round's node results and one print.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from consortium.core.history import History, RoundRecord, RunInfo
from consortium.core.protocol import NUM_EXAMPLES
from consortium.tracking.log import format_value, node_counts

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

__all__ = ["ProgressObserver"]

log = logging.getLogger(__name__)


def _pick_metrics(metrics: dict[str, float | int], limit: int) -> list[str]:
    """The metric names worth a glance: everything but example counts, in order."""
    keys = [k for k in metrics if not k.endswith(NUM_EXAMPLES)]
    return keys[:limit]


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class ProgressObserver:
    """Prints a progress bar (on a terminal) and one line per round."""

    def __init__(
        self,
        console: Console | None = None,
        *,
        enabled: bool = True,
        metrics: Sequence[str] | None = None,
        max_metrics: int = 6,
    ) -> None:
        """``metrics`` names the global metrics to show; by default the first ``max_metrics``."""
        self.enabled = enabled
        self._console = console
        self._metrics = list(metrics) if metrics is not None else None
        self._max_metrics = max_metrics
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._run_id = ""
        self._num_rounds = 0
        self._started = 0.0
        self._failed_once = False

    @property
    def console(self) -> Console:
        """The console written to (stdout unless one was given)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console()
        return self._console

    # -- hooks --------------------------------------------------------------------
    def on_run_start(self, info: RunInfo) -> None:
        if not self.enabled:
            return
        self._run_id = info.run_id
        self._num_rounds = info.num_rounds
        self._started = time.perf_counter()
        self._guard(self._start, info)

    def on_round_end(self, record: RoundRecord) -> None:
        if self.enabled:
            self._guard(self._round, record)

    def on_run_end(self, history: History, *, failed: bool) -> None:
        if self.enabled:
            self._guard(self._end, history, failed)

    # -- work ---------------------------------------------------------------------
    def _guard(self, fn: Any, *args: Any) -> None:
        """Run ``fn``; a broken terminal must not end a federated run."""
        try:
            fn(*args)
        except Exception as exc:
            if not self._failed_once:
                self._failed_once = True
                log.warning("progress display failed (%s); continuing without it", exc)
            self._stop()

    def _start(self, info: RunInfo) -> None:
        console = self.console
        console.print(
            f"run {info.run_id}: {info.num_rounds} rounds, {len(info.node_ids)} nodes",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        if console.is_terminal and not console.is_dumb_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]rounds"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self._task = self._progress.add_task("rounds", total=info.num_rounds)
            self._progress.start()

    def _round(self, record: RoundRecord) -> None:
        from rich.text import Text

        ok, failed = node_counts(record)
        metrics = record.global_metrics()
        keys = (
            self._metrics
            if self._metrics is not None
            else _pick_metrics(metrics, self._max_metrics)
        )
        line = Text()
        line.append(f"round {record.round}/{self._num_rounds}", style="bold")
        line.append(f"  {_duration(record.seconds)}")
        line.append(f"  nodes {ok} ok")
        if failed:
            line.append(f", {failed} failed", style="red")
        for k in keys:
            if k in metrics:
                line.append(f"  {k}={format_value(metrics[k])}", style="cyan")
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=record.round, refresh=True)
            self._progress.console.print(line, soft_wrap=True)
        else:
            left = self._num_rounds - record.round
            if left > 0 and record.round > 0:
                elapsed = time.perf_counter() - self._started
                line.append(f"  eta {_duration(elapsed / record.round * left)}")
            self.console.print(line, soft_wrap=True, highlight=False)

    def _end(self, history: History, failed: bool) -> None:
        self._stop()
        elapsed = _duration(time.perf_counter() - self._started)
        rounds = len(history.rounds)
        if failed:
            self.console.print(
                f"run {self._run_id} failed after {rounds} of {self._num_rounds} rounds "
                f"({elapsed})",
                style="bold red",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        else:
            self.console.print(
                f"run {self._run_id} finished: {rounds} rounds in {elapsed}",
                style="bold green",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )

    def _stop(self) -> None:
        progress, self._progress, self._task = self._progress, None, None
        if progress is not None:
            try:
                progress.stop()
            except Exception:  # stopping a broken live display is best effort
                log.debug("could not stop the progress display", exc_info=True)
