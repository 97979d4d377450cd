"""A run observer that records a federated run in MLflow.

One parent run per federated run (params, tags, global metrics per round,
artifacts at the end) and, per node, either a nested child run or summary
statistics on the parent. By default the store is embedded in the run
directory (``sqlite:///<run_dir>/mlflow.db``, artifacts in
``<run_dir>/mlartifacts``): no server. MLflow 3.17 refuses a file store
(``./mlruns``) unless ``MLFLOW_ALLOW_FILE_STORE`` is set, so SQLite it is.

Every MLflow call goes through :class:`~mlflow.tracking.MlflowClient` (never
the fluent ``mlflow.start_run`` globals) on one background thread, so a slow
store never stalls a round; ``on_run_end`` waits for it to drain. An MLflow
error is logged once as a warning and the federated run carries on.
"""

from __future__ import annotations

import logging
import math
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from consortium._version import __version__
from consortium.core.history import History, NodeResult, Outcome, RoundRecord, RunInfo
from consortium.core.protocol import EVALUATE, NUM_EXAMPLES, TRAIN
from consortium.tracking.log import node_counts

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = ["MLflowObserver", "PerNode"]

log = logging.getLogger(__name__)

PerNode = Literal["auto", "children", "summary", "off"]

# MLflow's limits (mlflow.utils.validation); batches are cut to fit them.
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_KEY_LENGTH = 250
_MAX_PARAM_LENGTH = 6000
_STAGE_PREFIX = {TRAIN: "train", EVALUATE: "eval"}
_BAD_KEY_CHARS = re.compile(r"[^\w.\- /]")


def metric_key(name: str) -> str:
    """``name`` made acceptable to MLflow as a metric or param key."""
    key = _BAD_KEY_CHARS.sub("_", name).strip("/")[:_MAX_KEY_LENGTH]
    if not key or key.startswith(".") or "//" in key or "/." in key:
        key = "_" + key.replace("/", "_")
    return key


def stage_prefix(stage: str) -> str:
    """``train`` → ``train``, ``evaluate`` → ``eval``; other stages keep their name."""
    return _STAGE_PREFIX.get(stage, stage)


def node_metrics(result: NodeResult) -> dict[str, float]:
    """One node's metrics for one stage, prefixed by stage, with examples, time and outcome."""
    p = stage_prefix(result.stage)
    out = {f"{p}_{k}": float(v) for k, v in result.metrics.items()}
    out.setdefault(f"{p}_num_examples", float(result.num_examples))
    out.setdefault(f"{p}_seconds", float(result.seconds))
    out.setdefault(f"{p}_ok", 1.0 if result.outcome is Outcome.OK else 0.0)
    return out


def summarize(results: Iterable[NodeResult]) -> dict[str, float]:
    """``nodes_<stage>_<metric>_mean/min/max/std`` over the nodes whose stage ended OK."""
    values: dict[str, list[float]] = {}
    for r in results:
        if r.outcome is not Outcome.OK:
            continue
        p = stage_prefix(r.stage)
        metrics: dict[str, float | int] = {NUM_EXAMPLES: r.num_examples, **r.metrics}
        for k, v in metrics.items():
            x = float(v)
            if math.isfinite(x):
                values.setdefault(f"nodes_{p}_{k}", []).append(x)
    out: dict[str, float] = {}
    for name, xs in values.items():
        mean = math.fsum(xs) / len(xs)
        out[f"{name}_mean"] = mean
        out[f"{name}_min"] = min(xs)
        out[f"{name}_max"] = max(xs)
        out[f"{name}_std"] = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / len(xs))
    return out


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class MLflowObserver:
    """Records runs in MLflow: a parent run, per-round metrics, per-node children or stats.

    After ``on_run_start``, :attr:`tracking_uri` is the store in use; after
    ``on_run_end``, :attr:`parent_run_id` is the MLflow run (None if tracking
    failed to start). :meth:`ui_command` is the command that opens the store.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_name: str = "consortium",
        *,
        artifact_location: str | None = None,
        per_node: PerNode = "auto",
        max_child_runs: int = 50,
        artifacts: Sequence[str] = ("*",),
        background: bool = True,
        flush_timeout: float = 120.0,
    ) -> None:
        """``tracking_uri`` None embeds a SQLite store in the run directory (the
        working directory when the run has none).

        ``per_node`` "auto" makes a child run per node when there are at most
        ``max_child_runs`` nodes, else summary statistics. ``artifacts`` are glob
        patterns of files in the run directory logged at run end (the store's
        own files excepted). ``background`` False makes every call synchronous.
        ``artifact_location`` is where a new experiment in a given store keeps
        artifacts (None: the store's default).
        """
        if per_node not in ("auto", "children", "summary", "off"):
            raise ValueError(f"per_node must be auto, children, summary or off, not {per_node!r}")
        self._uri_arg = tracking_uri
        self._artifact_arg = artifact_location
        self.experiment_name = experiment_name
        self.per_node: PerNode = per_node
        self.max_child_runs = max_child_runs
        self.artifacts = tuple(artifacts)
        self.background = background
        self.flush_timeout = flush_timeout
        self.tracking_uri: str | None = tracking_uri
        self.artifact_location: str | None = None
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self.child_run_ids: dict[str, str] = {}
        self.mode: PerNode = "off"  # per-node mode of the current run, once resolved
        self._client: MlflowClient | None = None
        self._run_dir: Path | None = None
        self._store_files: set[Path] = set()
        self._broken = False
        self._warned = False
        self._queue: queue.Queue[Callable[[], None] | None] | None = None
        self._thread: threading.Thread | None = None

    def ui_command(self) -> str:
        """The shell command that opens this store in the MLflow UI."""
        return f"mlflow ui --backend-store-uri {self.tracking_uri}"

    # -- hooks (called on the round loop's thread) --------------------------------
    def on_run_start(self, info: RunInfo) -> None:
        self._stop_worker()
        self._reset(info)
        if self.background:
            self._queue = queue.Queue()
            self._thread = threading.Thread(
                target=self._work, args=(self._queue,), name="consortium-mlflow", daemon=True
            )
            self._thread.start()
        self._submit(lambda: self._start(info))

    def on_round_end(self, record: RoundRecord) -> None:
        self._submit(lambda: self._log_round(record))

    def on_run_end(self, history: History, *, failed: bool) -> None:
        self._submit(lambda: self._end(failed))
        self._stop_worker()

    # -- plumbing -----------------------------------------------------------------
    def _reset(self, info: RunInfo) -> None:
        self._broken = False
        self._warned = False
        self._client = None
        self.experiment_id = None
        self.parent_run_id = None
        self.child_run_ids = {}
        self._run_dir = Path(info.run_dir).resolve() if info.run_dir else None
        self._store_files = set()
        if self._uri_arg is None:
            base = self._run_dir or Path.cwd().resolve()
            db = base / "mlflow.db"
            self.tracking_uri = f"sqlite:///{db}"
            self.artifact_location = (base / "mlartifacts").as_uri()
            suffixes = ("", "-journal", "-wal", "-shm")
            self._store_files = {db.with_name(db.name + s) for s in suffixes}
        else:
            self.tracking_uri = self._uri_arg
            self.artifact_location = self._artifact_arg
        if self.per_node == "auto":
            self.mode = "children" if len(info.node_ids) <= self.max_child_runs else "summary"
        else:
            self.mode = self.per_node

    def _submit(self, task: Callable[[], None]) -> None:
        if self._queue is not None:
            self._queue.put(task)
        else:
            self._run(task)

    def _work(self, tasks: queue.Queue[Callable[[], None] | None]) -> None:
        while (task := tasks.get()) is not None:
            self._run(task)

    def _run(self, task: Callable[[], None]) -> None:
        if self._broken:
            return
        try:
            task()
        except Exception as exc:  # tracking must never end a federated run
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self._client is None or self.parent_run_id is None:
            self._broken = True  # no run to write to: skip the rest quietly
        if isinstance(exc, ImportError):
            msg = "mlflow is not installed: pip install 'consortium[tracking]'"
        else:
            msg = f"{type(exc).__name__}: {exc}"
        if not self._warned:
            self._warned = True
            log.warning(
                "MLflow tracking to %s failed (%s); the federated run continues%s",
                self.tracking_uri,
                msg,
                " without tracking" if self._broken else "",
            )
        log.debug("MLflow tracking error", exc_info=exc)

    def _stop_worker(self) -> None:
        q, thread = self._queue, self._thread
        self._queue = self._thread = None
        if q is None or thread is None:
            return
        q.put(None)
        thread.join(self.flush_timeout)
        if thread.is_alive():
            log.warning(
                "MLflow tracking to %s still busy after %.0fs; not waiting for it",
                self.tracking_uri,
                self.flush_timeout,
            )

    # -- MLflow work (on the worker thread) ---------------------------------------
    def _start(self, info: RunInfo) -> None:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        assert self.tracking_uri is not None
        if self._run_dir is not None and self._uri_arg is None:
            self._run_dir.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=self.tracking_uri)
        exp = client.get_experiment_by_name(self.experiment_name)
        if exp is None:
            try:
                self.experiment_id = client.create_experiment(
                    self.experiment_name, artifact_location=self.artifact_location
                )
            except MlflowException:  # created meanwhile by another process
                exp = client.get_experiment_by_name(self.experiment_name)
                if exp is None:
                    raise
                self.experiment_id = exp.experiment_id
        else:
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            self.experiment_id = exp.experiment_id
        tags = {
            "consortium.version": __version__,
            "consortium.run_id": info.run_id,
            "consortium.num_nodes": str(len(info.node_ids)),
            "consortium.num_rounds": str(info.num_rounds),
            "consortium.per_node": self.mode,
        }
        run = client.create_run(self.experiment_id, run_name=info.run_id, tags=tags)
        self._client = client
        self.parent_run_id = run.info.run_id
        params = [
            Param(
                metric_key(k),
                (",".join(map(str, v)) if isinstance(v, list) else str(v))[:_MAX_PARAM_LENGTH],
            )
            for k, v in info.params.items()
        ]
        for chunk in _chunks(params, _MAX_PARAMS_PER_BATCH):
            client.log_batch(self.parent_run_id, params=chunk, synchronous=True)
        if self.mode == "children":
            for node_id in info.node_ids[: self.max_child_runs]:
                self._child(node_id)

    def _child(self, node_id: str) -> str | None:
        """The child run of ``node_id``, created on first use (up to ``max_child_runs``)."""
        run_id = self.child_run_ids.get(node_id)
        if run_id is not None or len(self.child_run_ids) >= self.max_child_runs:
            return run_id
        assert self._client is not None and self.parent_run_id is not None
        assert self.experiment_id is not None
        run = self._client.create_run(
            self.experiment_id,
            run_name=node_id,
            tags={"mlflow.parentRunId": self.parent_run_id, "consortium.node_id": node_id},
        )
        run_id = str(run.info.run_id)
        self.child_run_ids[node_id] = run_id
        return run_id

    def _log(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        assert self._client is not None
        ts = int(time.time() * 1000)
        batch = [Metric(metric_key(k), float(v), ts, step) for k, v in metrics.items()]
        for chunk in _chunks(batch, _MAX_METRICS_PER_BATCH):
            self._client.log_batch(run_id, metrics=chunk, synchronous=True)

    def _log_round(self, record: RoundRecord) -> None:
        if self.parent_run_id is None:
            return
        ok, failed = node_counts(record)
        metrics: dict[str, float] = {k: float(v) for k, v in record.global_metrics().items()}
        metrics["nodes_ok"] = ok
        metrics["nodes_failed"] = failed
        metrics["round_seconds"] = record.seconds
        if self.mode == "summary":
            metrics.update(summarize(record.nodes))
        self._log(self.parent_run_id, metrics, record.round)
        if self.mode == "children":
            per_node: dict[str, dict[str, float]] = {}
            for result in record.nodes:
                per_node.setdefault(result.node_id, {}).update(node_metrics(result))
            for node_id, values in per_node.items():
                child = self._child(node_id)
                if child is not None:
                    self._log(child, values, record.round)

    def _end(self, failed: bool) -> None:
        if self._client is None or self.parent_run_id is None:
            return
        status = "FAILED" if failed else "FINISHED"
        try:
            for path in self._artifact_files():
                try:
                    self._client.log_artifact(self.parent_run_id, str(path))
                except Exception as exc:  # one unreadable file must not hide the others
                    self._fail(exc)
        finally:
            for child in self.child_run_ids.values():
                self._client.set_terminated(child, status)
            self._client.set_terminated(self.parent_run_id, status)

    def _artifact_files(self) -> list[Path]:
        if self._run_dir is None or not self._run_dir.is_dir():
            return []
        found: dict[Path, None] = {}
        for pattern in self.artifacts:
            for path in sorted(self._run_dir.glob(pattern)):
                if path.is_file() and path not in self._store_files and path.suffix != ".tmp":
                    found[path] = None
        return list(found)
