"""RayGrid: virtual nodes as Ray tasks, on a local Ray or on a cluster.

Each task to a virtual node becomes one Ray task (:func:`run_node_tasks`)
with the node's resources (:class:`RayOptions`), placed by Ray on any raylet
of the cluster; with ``nodes_per_task`` K, K node tasks share one Ray task
and run in turn, which spreads Ray's own per-task cost. What moves where:

* a round's model is put in the object store **once** (every task of the
  round that carries the same Arrays object shares one reference), and each
  task maps it read-only, without a copy, on its raylet;
* a node's state (SCAFFOLD's control variates, an error-feedback residual)
  stays in the object store between rounds: the driver keeps only its
  reference and hands it to the node's next task, as the threads backend
  keeps the state in memory;
* replies come back through the object store and are read as views.

Replies are yielded in the order the tasks were sent, and every node task
gets the same context (seed, node config, state) as in the threads backend,
so the same seed gives a bit-identical model. A node whose worker process
dies is re-run by Ray up to ``max_retries`` times (the same inputs give the
same reply), then answers with an error reply (``WorkerCrashedError``).

Ray is imported lazily here and in :mod:`ray_backend_worker`, nowhere else:
a run that never asks for Ray never pays its import.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, cast

from consortium.client.app import ClientApp
from consortium.client.task import SIMULATION_ERROR_DETAIL, failure_reply
from consortium.core.arrays import Arrays
from consortium.core.errors import ConfigError
from consortium.core.message import Message
from consortium.core.protocol import ERROR_UNKNOWN_NODE
from consortium.core.records import Config
from consortium.simulation.batch import Job, from_plain, to_plain
from consortium.simulation.grid import NodeConfigFn, default_node_config
from consortium.simulation.ray_backend_options import RayOptions
from consortium.simulation.ray_backend_worker import AppSource, run_node_tasks

__all__ = ["RayGrid", "RayOptions", "connect_ray"]

logger = logging.getLogger(__name__)

#: The loopback address a local Ray binds to: its ports are not for the network.
LOOPBACK = "127.0.0.1"
#: models the driver remembers having put (a few versions in flight in asynchronous runs)
_PUTS_KEPT = 4
#: Ray's switch that keeps a one-machine Ray on loopback ("0": no multi-machine cluster)
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _ray() -> ModuleType:
    import ray  # the one place the driver imports Ray: only when a run asks for it

    return cast(ModuleType, ray)


def connect_ray(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Connect this process to Ray; returns True when it started Ray (the caller stops it).

    An already connected process keeps its connection. ``address`` None starts
    a local Ray bound to loopback, without the dashboard and without usage
    statistics; otherwise joins the cluster at ``address``.
    """
    # set before Ray reads them: no usage report leaves this machine
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is None:
        # every Ray process of a local instance (GCS, raylet, agents, workers) binds to
        # loopback, not to all interfaces; Ray reads this when imported and when it starts
        if "ray" in sys.modules and LOCAL_ONLY_ENV not in os.environ:
            logger.warning(
                "Ray was imported before %s=0 was set: the local Ray may listen on every "
                "interface; set it before importing Ray to keep Ray on loopback",
                LOCAL_ONLY_ENV,
            )
        os.environ.setdefault(LOCAL_ONLY_ENV, "0")
    ray = _ray()
    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address is not None:
        ray.init(address=address, **quiet)
    else:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            _node_ip_address=LOOPBACK,
            **quiet,
        )
    return True


@dataclass(slots=True)
class _Pending:
    """One submitted task: the message, and its reply's and new state's references
    (``reply`` set instead when the answer is known without Ray, e.g. an unknown node)."""

    msg: Message
    reply_ref: Any = None
    state_ref: Any = None
    reply: Message | None = None


class RayGrid:
    """A :class:`~consortium.core.grid.Grid` over virtual nodes run as Ray tasks."""

    def __init__(
        self,
        client_app: ClientApp | str,
        node_ids: Sequence[str],
        *,
        node_config: NodeConfigFn | None = None,
        run_config: Config | None = None,
        seed: int = 0,
        app_path: Sequence[str] = (),
        options: RayOptions | None = None,
    ) -> None:
        if len(set(node_ids)) != len(node_ids):
            raise ConfigError("node ids must be unique")
        self._ids = list(node_ids)
        self._index = {n: i for i, n in enumerate(self._ids)}
        self._node_config = node_config or (lambda i, n: default_node_config(i, n, len(self._ids)))
        self._run_config = dict(run_config or {})
        self._seed = seed
        self._options = options or RayOptions()
        self._states: dict[str, Any] = {}  # node -> object-store reference of its state
        #: each node's latest task not resolved yet: the next one starts from its state
        self._latest: dict[str, _Pending] = {}
        self._pushed: list[_Pending] = []
        # the models put in the object store, by the Arrays object they came from (held,
        # so its id is not reused): a round's tasks share one Arrays, so one put per round
        self._puts: dict[int, tuple[Arrays, Any]] = {}
        self._owns_ray = connect_ray(self._options.address)
        ray = _ray()
        try:
            self._check_feasible(ray)
            self._app: AppSource = (
                (None, client_app, tuple(app_path))
                if isinstance(client_app, str)
                else ([ray.put(client_app)], None, ())
            )
            self._task = ray.remote(run_node_tasks)
            self._task_options = self._options.task_options()
            self._per_task = self._options.nodes_per_task
            slots = ray.cluster_resources().get("CPU", 1) / (self._options.num_cpus or 1)
            self._window = self._options.max_in_flight or max(8, 4 * int(slots)) * self._per_task
        except BaseException:
            self.close()
            raise

    # -- Grid -------------------------------------------------------------------
    def node_ids(self) -> list[str]:
        return list(self._ids)

    def wait_for_nodes(self, count: int, timeout: float) -> list[str]:
        """Virtual nodes are always online: returns them all at once."""
        return self.node_ids()

    def send_and_receive(
        self, messages: Sequence[Message], *, timeout: float | None
    ) -> Iterator[Message]:
        deadline = time.time() + timeout if timeout else None
        self._puts.clear()  # a new round: the previous round's models may go
        queue: list[_Pending] = []
        todo = iter(messages)
        try:
            self._fill(queue, todo)
            while queue:
                head = queue.pop(0)
                remaining = None if deadline is None else max(0.0, deadline - time.time())
                reply = self._resolve(head, remaining)
                if reply is None:
                    # the deadline passed: replies already finished behind the straggler
                    # still count (in send order); only the unfinished tasks are given up
                    for pending in queue:
                        finished = self._resolve(pending, None) if self._done(pending) else None
                        if finished is not None:
                            yield finished
                        else:
                            self._cancel(pending)
                    queue.clear()
                    self._cancel(head)
                    return
                yield reply
                self._fill(queue, todo)
        finally:
            for pending in queue:  # the caller stopped reading early
                self._cancel(pending)

    def push(self, messages: Sequence[Message]) -> None:
        for start in range(0, len(messages), self._per_task):
            self._pushed += self._submit(messages[start : start + self._per_task])

    def pull(self, timeout: float | None) -> Message | None:
        """The next pushed task to finish (of those finished, the one pushed first)."""
        if not self._pushed:
            return None
        first = self._first_finished()
        if first is None and timeout != 0:
            refs = [p.reply_ref for p in self._pushed if p.reply is None]
            _ray().wait(refs, num_returns=1, timeout=timeout, fetch_local=False)
            first = self._first_finished()
        if first is None:
            return None
        self._pushed.remove(first)
        return self._resolve(first, None)

    def now(self) -> float:
        return time.monotonic()

    def close(self) -> None:
        for pending in self._pushed:
            self._cancel(pending)
        self._pushed = []
        self._states = {}
        self._latest = {}
        self._puts = {}
        if self._owns_ray:
            self._owns_ray = False
            _ray().shutdown()

    # -- execution --------------------------------------------------------------
    def _check_feasible(self, ray: ModuleType) -> None:
        """Fail at once, naming the option, when no raylet could ever run one node task
        (Ray would queue it forever)."""
        opts = self._options
        wanted = {"CPU": opts.num_cpus, "GPU": opts.num_gpus, "memory": opts.memory or 0}
        keys = {"CPU": "ray-num-cpus", "GPU": "ray-num-gpus", "memory": "ray-memory"}
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        for resource, amount in wanted.items():
            if amount and not any(n.get(resource, 0) >= amount for n in nodes):
                most = max((n.get(resource, 0) for n in nodes), default=0)
                raise ConfigError(
                    f"{keys[resource]}={amount:g} per node task, but no Ray node has that much "
                    f"{resource} (the most on one node: {most:g})"
                )

    def _fill(self, queue: list[_Pending], todo: Iterator[Message]) -> None:
        """Submit the next messages, a batch at a time, while the window has room."""
        while len(queue) + self._per_task <= max(self._window, self._per_task):
            batch = list(itertools.islice(todo, self._per_task))
            if not batch:
                return
            queue += self._submit(batch)

    def _submit(self, messages: Sequence[Message]) -> list[_Pending]:
        """Start ``messages`` as one Ray task (a batch of node tasks run in turn)."""
        pending: list[_Pending] = []
        jobs: list[Job] = []
        objects: list[Any] = []  # the references the jobs point into, each once
        at: dict[Any, int] = {}

        def position(ref: Any) -> int:
            if ref not in at:
                at[ref] = len(objects)
                objects.append(ref)
            return at[ref]

        for msg in messages:
            node = msg.metadata.dst
            if node not in self._index:
                reply = msg.error_reply(ERROR_UNKNOWN_NODE, f"no simulated node {node!r}")
                pending.append(_Pending(msg, reply=reply))
                continue
            assert msg.content is not None, "a task carries content"
            names = list(msg.content.arrays)
            positions = [position(self._put(a)) for a in msg.content.arrays.values()]
            running = self._latest.get(node)
            state = running.state_ref if running is not None else self._states.get(node)
            node_config = self._node_config(self._index[node], node)
            state_at = position(state) if state is not None else None
            jobs.append((to_plain(msg, {}), names, positions, node_config, state_at))
            pending.append(_Pending(msg))
        if jobs:
            options = {**self._task_options, "num_returns": 2 * len(jobs)}
            refs = self._task.options(**options).remote(
                self._app, self._run_config, self._seed, jobs, *objects
            )
            started = iter(p for p in pending if p.reply is None)
            for job_pending, reply_ref, state_ref in zip(
                started, refs[::2], refs[1::2], strict=True
            ):
                job_pending.reply_ref, job_pending.state_ref = reply_ref, state_ref
                self._latest[job_pending.msg.metadata.dst] = job_pending
        return pending

    def _put(self, arrays: Arrays) -> Any:
        held = self._puts.get(id(arrays))
        if held is not None and held[0] is arrays:
            return held[1]
        ref = _ray().put(list(arrays.items()))
        if len(self._puts) >= _PUTS_KEPT:  # push after push (FedBuff): forget the oldest;
            del self._puts[next(iter(self._puts))]  # tasks still using it keep it alive
        self._puts[id(arrays)] = (arrays, ref)
        return ref

    def _first_finished(self) -> _Pending | None:
        """Of the pushed tasks finished now, the one pushed first (one look at them all)."""
        refs = [p.reply_ref for p in self._pushed if p.reply is None]
        done: set[Any] = set()
        if refs:
            ready, _ = _ray().wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
            done = set(ready)
        return next((p for p in self._pushed if p.reply is not None or p.reply_ref in done), None)

    def _done(self, pending: _Pending) -> bool:
        """Whether the task finished (its reply may still be on another raylet)."""
        if pending.reply is not None:
            return True
        done, _ = _ray().wait([pending.reply_ref], timeout=0, fetch_local=False)
        return bool(done)

    def _resolve(self, pending: _Pending, timeout: float | None) -> Message | None:
        """The task's reply, waiting at most ``timeout`` seconds for it (None: not yet);
        keeps the node's state after it (unchanged if the app raised)."""
        if pending.reply is not None:
            return pending.reply
        ray = _ray()
        try:
            # one call, not a wait then a get: a 100,000-node round makes 100,000 of them
            plain, _, has_state = ray.get(pending.reply_ref, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            return None
        except ConfigError as exc:  # the app could not be loaded: every task would fail alike
            self._let_go(pending)
            raise ConfigError(
                f"the client app could not be loaded in a Ray worker: {exc}"
            ) from None
        except Exception as exc:  # the worker died (retries spent)
            logger.warning("node %s: task failed in Ray: %s", pending.msg.metadata.dst, exc)
            self._let_go(pending)
            return failure_reply(pending.msg, exc, SIMULATION_ERROR_DETAIL)
        node = pending.msg.metadata.dst
        if self._latest.get(node) is pending:  # else a later task of the node holds the state
            del self._latest[node]
            # (a task that raised hands on the state it was given: its changes are dropped)
            if has_state:
                self._states[node] = pending.state_ref
            else:
                self._states.pop(node, None)
        return from_plain(plain)

    def _let_go(self, pending: _Pending) -> None:
        """A task given up or lost: its node keeps the state it had before it."""
        node = pending.msg.metadata.dst
        if self._latest.get(node) is pending:
            del self._latest[node]

    def _cancel(self, pending: _Pending) -> None:
        self._let_go(pending)
        if pending.reply_ref is not None:
            _ray().cancel(pending.reply_ref)
