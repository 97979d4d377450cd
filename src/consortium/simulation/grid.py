"""SimulationGrid: virtual nodes in this process (threads) or in worker processes."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    CancelledError,
    Executor,
    Future,
    ThreadPoolExecutor,
    wait,
)
from functools import partial
from typing import Literal

from consortium.apps.loader import load_app
from consortium.client.app import ClientApp
from consortium.client.task import SIMULATION_ERROR_DETAIL, failure_reply, run_task
from consortium.core.context import Context, NodeState
from consortium.core.errors import ConfigError
from consortium.core.message import Message
from consortium.core.parallel import cpu_count
from consortium.core.protocol import ERROR_UNKNOWN_NODE, NUM_PARTITIONS, PARTITION_ID
from consortium.core.records import Config, config_copy
from consortium.simulation.node_copy import ReadOnlyViews, node_copy
from consortium.simulation.process_backend import ProcessNodes

Backend = Literal["threads", "processes"]
#: what ``run_simulation`` and ``consortium simulate`` accept: a backend, or ``auto``
BackendChoice = Literal["auto", "threads", "processes", "ray"]
NodeConfigFn = Callable[[int, str], Config]
#: ``auto`` runs the nodes in worker processes from this many nodes on (fewer: threads);
#: about where the processes backend's start-up and batching pay for themselves with
#: ~100 µs nodes on 2 CPUs (``docs/benchmarks.md``, "The default backend")
AUTO_PROCESSES_MIN_NODES = 1000


def resolve_backend(
    backend: BackendChoice, client_app: ClientApp | str, num_nodes: int, cpus: int | None = None
) -> Literal["threads", "processes", "ray"]:
    """The backend ``backend`` names; for ``auto``, ``processes`` when the ClientApp is a
    ``module:attribute`` reference (the workers load it by that), the run has at least
    :data:`AUTO_PROCESSES_MIN_NODES` nodes and this process may use 2 CPUs or more
    (``cpus``, default: :func:`cpu_count`); else ``threads``. Every backend gives the same
    model bits for the same seed, so the choice changes speed and memory only."""
    if backend != "auto":
        return backend
    many = num_nodes >= AUTO_PROCESSES_MIN_NODES
    if isinstance(client_app, str) and many and (cpus or cpu_count()) >= 2:
        return "processes"
    return "threads"


def default_node_config(index: int, node_id: str, num_nodes: int) -> Config:
    return {PARTITION_ID: index, NUM_PARTITIONS: num_nodes}


class SimulationGrid:
    """A :class:`~consortium.core.grid.Grid` over N virtual nodes.

    Nodes are built lazily: each task calls the ClientApp with a fresh
    Context; only a node's *state* (if it keeps any) is stored between rounds,
    so memory does not grow with the number of nodes beyond what they keep.
    Replies are yielded in the order the tasks were sent, whatever the number
    of workers, so aggregation (and the final model) is bit-identical for any
    ``workers``. Like a deployed node, which pulls one task at a time, a node
    runs its tasks one after another in the order they were sent: a task to a
    node that is still busy starts when the earlier one has ended, with the
    state it left (several workers never run one node twice at once).

    ``backend="processes"`` runs the nodes in ``workers`` worker processes
    (default: one per CPU), in batches of ``nodes_per_batch`` tasks per call
    (default: a few batches per worker per round), with the same guarantees:
    see :mod:`consortium.simulation.process_backend`. The threads backend
    defaults to one worker: the tasks then run in this thread, one after the
    other.
    """

    def __init__(
        self,
        client_app: ClientApp | str,
        node_ids: Sequence[str],
        *,
        node_config: NodeConfigFn | None = None,
        run_config: Config | None = None,
        seed: int = 0,
        backend: Backend = "threads",
        workers: int | None = None,
        app_path: Sequence[str] = (),
        nodes_per_batch: int | None = None,
    ) -> None:
        if backend not in ("threads", "processes"):
            raise ConfigError(f"backend must be 'threads' or 'processes', got {backend!r}")
        if workers is None:
            workers = cpu_count() if backend == "processes" else 1
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        if len(set(node_ids)) != len(node_ids):
            raise ConfigError("node ids must be unique")
        self._ids = list(node_ids)
        self._index = {n: i for i, n in enumerate(self._ids)}
        self._node_config = node_config or (lambda i, n: default_node_config(i, n, len(self._ids)))
        self._run_config = dict(run_config or {})
        self._seed = seed
        self._states: dict[str, NodeState] = {}
        self._workers = workers
        self._executor: Executor | None = None
        self._pushed: list[Future[Message]] = []  # pushed tasks not pulled yet, in push order
        #: each node's latest task submitted to the pool (the next one waits for it)
        self._latest: dict[str, Future[Message]] = {}
        self._latest_lock = threading.Lock()
        self._app: ClientApp | None = None
        self._procs: ProcessNodes | None = None
        if backend == "processes":
            if not isinstance(client_app, str):
                raise ConfigError(
                    "the processes backend loads the ClientApp in each worker: pass it as "
                    "'module:attribute' (consortium simulate does this for app folders)"
                )
            self._procs = ProcessNodes(
                client_app,
                app_path,
                known=self._index,
                node_config=lambda node: self._node_config(self._index[node], node),
                run_config=self._run_config,
                seed=seed,
                workers=workers,
                nodes_per_batch=nodes_per_batch,
            )
        else:
            self._app = (
                load_app(client_app, app_path) if isinstance(client_app, str) else client_app
            )

    # -- Grid -------------------------------------------------------------------
    def node_ids(self) -> list[str]:
        return list(self._ids)

    def send_and_receive(
        self, messages: Sequence[Message], *, timeout: float | None
    ) -> Iterator[Message]:
        deadline = time.time() + timeout if timeout else None
        if self._procs is not None:
            yield from self._procs.send_and_receive(messages, deadline)
            return
        views: ReadOnlyViews = {}
        if self._workers == 1:
            for msg in messages:
                if deadline is not None and time.time() > deadline:
                    return
                reply = self._run_local(msg, views)
                if deadline is None or time.time() <= deadline:
                    yield reply
            return
        yield from self._run_pooled(messages, deadline, views)

    def wait_for_nodes(self, count: int, timeout: float) -> list[str]:
        """Virtual nodes are always online: returns them all at once."""
        return self.node_ids()

    def push(self, messages: Sequence[Message]) -> None:
        if self._procs is not None:
            self._procs.push(messages)
            return
        views: ReadOnlyViews = {}
        for msg in messages:
            if self._workers == 1:
                done: Future[Message] = Future()
                done.set_result(self._run_local(msg, views))
                self._pushed.append(done)
            else:
                self._pushed.append(self._submit(self._pool(), msg, views))

    def pull(self, timeout: float | None) -> Message | None:
        """The next pushed task to finish (of those finished, the one pushed first)."""
        if self._procs is not None:
            return self._procs.pull(timeout)
        if not self._pushed:
            return None
        finished, _ = wait(self._pushed, timeout=timeout, return_when=FIRST_COMPLETED)
        for future in self._pushed:
            if future in finished:
                self._pushed.remove(future)
                return future.result()
        return None

    def now(self) -> float:
        return time.monotonic()

    def close(self) -> None:
        if self._procs is not None:
            self._procs.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    # -- execution --------------------------------------------------------------
    def _context(self, node_id: str) -> Context:
        index = self._index[node_id]
        kept = self._states.get(node_id)
        # the task works on its own copy of the records: a task that fails leaves none behind
        state = (
            NodeState(dict(kept.arrays), dict(kept.configs), dict(kept.metrics))
            if kept is not None
            else NodeState()
        )
        # configs of its own too: a node that changed its context's changes only its own
        return Context(
            node_id=node_id,
            node_config=config_copy(self._node_config(index, node_id)),
            run_config=config_copy(self._run_config),
            state=state,
            seed=self._seed,
        )

    def _keep_state(self, node_id: str, state: NodeState) -> None:
        if state.is_empty():
            self._states.pop(node_id, None)
        else:
            self._states[node_id] = state

    def _run_local(self, msg: Message, views: ReadOnlyViews) -> Message:
        assert self._app is not None
        node = msg.metadata.dst
        if node not in self._index:
            return msg.error_reply(ERROR_UNKNOWN_NODE, f"no simulated node {node!r}")
        context = self._context(node)
        task = node_copy(msg, views)
        # a failed node: an error reply with the whole traceback (one machine: nothing to hide)
        result = run_task(self._app, task, context, error_detail=SIMULATION_ERROR_DETAIL)
        if not result.raised:  # a failed task's state changes are dropped, as on a node
            self._keep_state(node, context.state)
        return result.reply

    def _pool(self) -> Executor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="sim-node")
        return self._executor

    def _submit(self, pool: Executor, msg: Message, views: ReadOnlyViews) -> Future[Message]:
        """``msg`` to the pool, once its node's task before it (if any) has ended."""
        node = msg.metadata.dst
        with self._latest_lock:
            before = self._latest.get(node)
            if before is None or before.done():
                submitted = self._start(pool, msg, views)
            else:
                submitted = Future()
                before.add_done_callback(partial(self._start_after, pool, msg, views, submitted))
            self._latest[node] = submitted
        submitted.add_done_callback(partial(self._forget, node))
        return submitted

    def _start_after(
        self,
        pool: Executor,
        msg: Message,
        views: ReadOnlyViews,
        submitted: Future[Message],
        _: Future[Message],
    ) -> None:
        """(When the node's task before ``msg`` ended.) Start ``msg``, unless given up."""
        if not submitted.set_running_or_notify_cancel():
            return  # cancelled while it waited (its round's deadline passed)
        try:
            started = self._start(pool, msg, views)
        except RuntimeError as exc:  # the pool shut down (the run ended) meanwhile
            submitted.set_result(failure_reply(msg, exc, SIMULATION_ERROR_DETAIL))
            return
        started.add_done_callback(partial(_settle, msg, submitted))

    def _forget(self, node: str, done: Future[Message]) -> None:
        with self._latest_lock:
            if self._latest.get(node) is done:
                del self._latest[node]

    def _start(self, pool: Executor, msg: Message, views: ReadOnlyViews) -> Future[Message]:
        return pool.submit(self._run_local, msg, views)

    def _run_pooled(
        self, messages: Sequence[Message], deadline: float | None, views: ReadOnlyViews
    ) -> Iterator[Message]:
        pool = self._pool()
        window = 4 * self._workers  # bounded: replies wait for their turn, not all at once
        queue: deque[Future[Message]] = deque()
        todo = iter(messages)
        for msg in todo:
            queue.append(self._submit(pool, msg, views))
            if len(queue) >= window:
                break
        while queue:
            head = queue.popleft()
            remaining = None if deadline is None else max(0.0, deadline - time.time())
            try:
                reply = head.result(timeout=remaining)
            except TimeoutError:
                # the deadline passed: replies that already finished behind the straggler
                # still count (in send order); only the unfinished tasks are given up
                for f in queue:
                    if f.done() and not f.cancelled():
                        yield f.result()
                    else:
                        f.cancel()
                return
            yield reply
            nxt = next(todo, None)
            if nxt is not None:
                queue.append(self._submit(pool, nxt, views))


def _settle(msg: Message, outer: Future[Message], inner: Future[Message]) -> None:
    """Give ``outer`` the result of ``inner`` (a task that waited for its node's turn)."""
    if inner.cancelled():  # the pool shut down before it ran
        outer.set_result(failure_reply(msg, CancelledError(), SIMULATION_ERROR_DETAIL))
    elif inner.exception() is not None:
        outer.set_exception(inner.exception())
    else:
        outer.set_result(inner.result())
