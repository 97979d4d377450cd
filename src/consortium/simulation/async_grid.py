"""Simulated time: virtual nodes with speeds, replies in simulated completion order.

:class:`AsyncSimulationGrid` runs the same ClientApp as
:class:`~consortium.simulation.grid.SimulationGrid` (it uses one inside, so
node contexts, state and error replies are identical) but on a simulated
clock. Each task takes ``durations`` simulated seconds on its node, e.g.
``speed × examples × epochs`` (a function of the node and the task message may
tell train, evaluate and query tasks apart; a mapping gives every task of a
node the same time); a node works on one task at a time, so a task
sent to a busy node starts when the node is free. Replies are delivered in
order of simulated completion (ties: in submission order) from an event
queue, and :meth:`AsyncSimulationGrid.now` is the simulated time. The real
computation runs as soon as a task is submitted (in a thread pool when
``workers > 1``); since durations do not depend on how long the computation
really took, the run, and so the model, are the same for any ``workers``.

The grid implements the whole :class:`~consortium.core.grid.Grid`: push and
pull for the FedBuff workflow, and ``send_and_receive`` for the synchronous
round loop, where a round then lasts as long as its slowest node in simulated
time and ``round_timeout`` is simulated seconds. One program drives one grid.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from consortium.client.app import ClientApp
from consortium.core.context import Context
from consortium.core.errors import ConfigError
from consortium.core.message import Message
from consortium.core.protocol import PARAM_BACKEND, PARAM_NUM_NODES
from consortium.core.records import Config
from consortium.core.rng import derive_rng
from consortium.server.app import ServerApp
from consortium.server.config import AsyncServerConfig
from consortium.server.host import RunResult, run_server_app
from consortium.simulation.grid import NodeConfigFn, SimulationGrid
from consortium.tracking.base import RunObserver

#: (node id, task message) -> simulated seconds the task takes on that node
DurationFn = Callable[[str, Message], float]


def lognormal_speeds(
    node_ids: Sequence[str], *, sigma: float = 1.0, median: float = 1.0, seed: int = 0
) -> dict[str, float]:
    """A per-node factor drawn from LogNormal(log(median), sigma), seeded per node.

    Each node's draw comes from its own generator (run seed, node id), so a
    node keeps its speed whatever the other nodes are.
    """
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ConfigError(f"sigma must be a finite number >= 0, got {sigma}")
    if not (math.isfinite(median) and median > 0):
        raise ConfigError(f"median must be a finite number > 0, got {median}")
    return {
        n: float(derive_rng(seed, 0, n, stream="speed").lognormal(math.log(median), sigma))
        for n in node_ids
    }


class AsyncSimulationGrid:
    """Virtual nodes on a simulated clock (see the module docstring)."""

    def __init__(
        self,
        client_app: ClientApp | str,
        node_ids: Sequence[str],
        *,
        durations: Mapping[str, float] | DurationFn,
        node_config: NodeConfigFn | None = None,
        run_config: Config | None = None,
        seed: int = 0,
        workers: int = 1,
        app_path: Sequence[str] = (),
    ) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        self._inner = SimulationGrid(
            client_app,
            node_ids,
            node_config=node_config,
            run_config=run_config,
            seed=seed,
            backend="threads",
            workers=1,
            app_path=app_path,
        )
        known = set(node_ids)
        if not callable(durations):
            missing = sorted(known - set(durations))
            if missing:
                raise ConfigError(f"durations give no task time for nodes {missing[:5]}")
        self._known = known
        self._durations = durations
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._clock = 0.0
        self._free_at: dict[str, float] = {}
        self._last: dict[str, Future[Message]] = {}
        self._seq = itertools.count()
        # (simulated completion time, submission number, message id, reply)
        self._events: list[tuple[float, int, str, Future[Message]]] = []

    # -- Grid: push and pull ------------------------------------------------------------
    def node_ids(self) -> list[str]:
        return self._inner.node_ids()

    def wait_for_nodes(self, count: int, timeout: float) -> list[str]:
        """Virtual nodes are always online: returns them all at once."""
        return self.node_ids()

    def now(self) -> float:
        return self._clock

    def push(self, messages: Sequence[Message]) -> None:
        for message in messages:
            self._submit(message)

    def _submit(self, message: Message) -> None:
        node = message.metadata.dst
        duration = self._duration(node, message)
        start = max(self._clock, self._free_at.get(node, 0.0))
        self._free_at[node] = start + duration
        future = self._execute(node, message)
        entry = (start + duration, next(self._seq), message.metadata.message_id, future)
        heapq.heappush(self._events, entry)

    def pull(self, timeout: float | None) -> Message | None:
        if timeout is not None and (not math.isfinite(timeout) or timeout < 0):
            raise ConfigError(f"timeout must be a finite number >= 0 seconds, got {timeout}")
        if not self._events or (timeout is not None and self._events[0][0] > self._clock + timeout):
            if timeout is not None:
                self._clock += timeout
            return None
        end, _, _, future = heapq.heappop(self._events)
        self._clock = max(self._clock, end)
        return future.result()

    # -- Grid: batches ------------------------------------------------------------------
    def send_and_receive(
        self, messages: Sequence[Message], *, timeout: float | None
    ) -> Iterator[Message]:
        """Submit every message now; yield their replies in simulated completion order.

        Replies that miss ``timeout`` simulated seconds are dropped (their nodes
        stay busy until they would have finished); replies to earlier batches
        that arrive meanwhile are dropped too.
        """
        self.push(messages)
        wanted = {m.metadata.message_id for m in messages}
        deadline = None if timeout is None else self._clock + timeout
        return self._collect(wanted, deadline)

    def _collect(self, wanted: set[str], deadline: float | None) -> Iterator[Message]:
        while wanted:
            remaining = None if deadline is None else max(0.0, deadline - self._clock)
            reply = self.pull(remaining)
            if reply is None:
                break
            if reply.metadata.reply_to in wanted:
                wanted.discard(reply.metadata.reply_to)
                yield reply
        if wanted:
            self._events = [e for e in self._events if e[2] not in wanted]
            heapq.heapify(self._events)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._inner.close()

    # -- execution ----------------------------------------------------------------------
    def _duration(self, node: str, message: Message) -> float:
        if node not in self._known:
            return 0.0  # the inner grid answers with an unknown-node error at once
        if callable(self._durations):
            seconds = float(self._durations(node, message))
        else:
            seconds = float(self._durations[node])
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ConfigError(f"task duration for node {node!r} must be finite >= 0, got {seconds}")
        return seconds

    def _run(self, message: Message) -> Message:
        return next(iter(self._inner.send_and_receive([message], timeout=None)))

    def _execute(self, node: str, message: Message) -> Future[Message]:
        if self._workers == 1:
            done: Future[Message] = Future()
            done.set_result(self._run(message))
            return done
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="sim-async-node")
        previous = self._last.get(node)

        def after_previous() -> Message:
            # a node runs its tasks one after another: its state passes from one to the next
            if previous is not None:
                previous.result()
            return self._run(message)

        future = self._pool.submit(after_previous)
        self._last[node] = future
        return future


def run_async_simulation(
    server: AsyncServerConfig | Callable[[Context], AsyncServerConfig],
    client_app: ClientApp | str,
    *,
    durations: Mapping[str, float] | DurationFn,
    num_nodes: int | None = None,
    node_ids: Sequence[str] | None = None,
    node_config: NodeConfigFn | None = None,
    run_config: Config | None = None,
    seed: int = 0,
    workers: int = 1,
    run_dir: Path | None = None,
    run_id: str | None = None,
    observers: Sequence[RunObserver] = (),
    app_path: Sequence[str] = (),
) -> RunResult:
    """Run an asynchronous strategy (FedBuff) against virtual nodes in simulated time.

    ``server`` is an :class:`AsyncServerConfig` or ``server_fn(context)``
    returning one (the context carries the run config). Nodes are named as
    in :func:`~consortium.simulation.engine.run_simulation`; ``durations``
    gives each task's simulated seconds per node (a mapping, or a function
    of the node and the task message). The same ``seed`` gives the same model
    for any ``workers``.
    """
    if node_ids is None:
        if num_nodes is None or num_nodes < 1:
            raise ConfigError(f"num_nodes must be >= 1, got {num_nodes}")
        node_ids = [str(i) for i in range(num_nodes)]
    elif num_nodes is not None and num_nodes != len(node_ids):
        raise ConfigError(f"num_nodes={num_nodes} but {len(node_ids)} node ids were given")
    run_config = dict(run_config or {})
    server_fn = server if not isinstance(server, AsyncServerConfig) else (lambda _: server)
    grid = AsyncSimulationGrid(
        client_app,
        node_ids,
        durations=durations,
        node_config=node_config,
        run_config=run_config,
        seed=seed,
        workers=workers,
        app_path=app_path,
    )
    params: Config = {**run_config, PARAM_NUM_NODES: len(node_ids), PARAM_BACKEND: "async-sim"}
    try:
        return run_server_app(
            ServerApp(server_fn),
            grid,
            run_config=run_config,
            seed=seed,
            run_id=run_id,
            run_dir=run_dir,
            params=params,
            observers=observers,
        )
    finally:
        grid.close()
