"""A run observer that draws the global metrics to ``<run_dir>/metrics.png`` at run end.

One subplot per metric family (``loss``, ``accuracy``, ``auc``...), one line per
source (train, eval, central), x = round. matplotlib is imported lazily and
only through its Agg canvas: no pyplot, no GUI backend, no global state.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from consortium.core.history import History, RoundRecord, RunInfo

__all__ = ["PlotObserver", "metric_families"]

log = logging.getLogger(__name__)

_SOURCES = ("train_", "eval_", "central_")


def metric_families(history: History) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """family → source → [(round, value)], e.g. ``{"loss": {"train": [(1, 0.7)]}}``."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for record in history.rounds:
        for key, value in record.global_metrics().items():
            source, family = "", key
            for prefix in _SOURCES:
                if key.startswith(prefix):
                    source, family = prefix[:-1], key[len(prefix) :]
                    break
            out.setdefault(family, {}).setdefault(source or key, []).append(
                (record.round, float(value))
            )
    return out


class PlotObserver:
    """Writes ``metrics.png`` into the run directory when the run ends."""

    def __init__(self, filename: str = "metrics.png", *, dpi: int = 100) -> None:
        self.filename = filename
        self.dpi = dpi
        self.path: Path | None = None  # the file written by the last run, if any
        self._run_dir: Path | None = None
        self._warned = False

    def on_run_start(self, info: RunInfo) -> None:
        self._run_dir = Path(info.run_dir) if info.run_dir else None
        self.path = None

    def on_round_end(self, record: RoundRecord) -> None:
        """Nothing to do: the History handed to :meth:`on_run_end` holds every round."""

    def on_run_end(self, history: History, *, failed: bool) -> None:
        if self._run_dir is None:
            log.debug("no run directory: metrics plot skipped")
            return
        families = metric_families(history)
        if not families:
            log.debug("no global metrics: metrics plot skipped")
            return
        try:
            self.path = self._draw(families, self._run_dir / self.filename, failed)
        except ImportError:
            self._warn("matplotlib is not installed: pip install 'consortium[tracking]'")
        except Exception as exc:  # a full disk must not end a federated run
            self._warn(f"could not write the metrics plot: {exc}")

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("%s; the run is unaffected", message)

    def _draw(
        self,
        families: dict[str, dict[str, list[tuple[int, float]]]],
        path: Path,
        failed: bool,
    ) -> Path:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        ncols = min(3, len(families))
        nrows = math.ceil(len(families) / ncols)
        fig = Figure(figsize=(4.8 * ncols, 3.4 * nrows), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for ax, (family, sources) in zip(axes.flat, sorted(families.items()), strict=False):
            for source, points in sources.items():
                xs = [p[0] for p in points]
                ys = [p[1] for p in points]
                ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, label=source)
            ax.set_title(family)
            ax.set_xlabel("round")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small")
        for ax in list(axes.flat)[len(families) :]:
            ax.set_visible(False)
        if failed:
            fig.suptitle("run failed: rounds completed so far", color="red")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fig.savefig(tmp, format="png", dpi=self.dpi)
        os.replace(tmp, path)
        return path
