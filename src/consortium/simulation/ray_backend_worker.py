"""The Ray backend's node task: what runs in a Ray worker process for one virtual node.

Messages travel as plain tuples (:data:`PlainMessage`): metadata fields,
configs, metrics, and each Arrays record as a list of (name, array) pairs
the driver put in Ray's object store once per round. Ray hands those arrays
to the task as read-only views of the shared memory (zero-copy); the app sees
them read-only, as it does in the processes backend. The node's state comes
in and goes out through the object store too: it stays there between rounds
(the driver keeps only its reference), and its arrays are copied on the way
in because node code may update them in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from consortium.apps.loader import load_app
from consortium.client.app import ClientApp
from consortium.client.task import SIMULATION_ERROR_DETAIL, run_task
from consortium.core.arrays import Arrays
from consortium.core.context import Context, NodeState
from consortium.core.message import Content, Error, Message, Metadata
from consortium.core.records import Config, Metrics

#: A record of arrays as it crosses the object store: (name, array) pairs, in order.
ArrayPairs = list[tuple[str, Any]]
#: metadata fields, configs, metrics, {record: array pairs} or None, error fields or None
PlainMessage = tuple[
    tuple[Any, ...],
    dict[str, Config],
    dict[str, Metrics],
    dict[str, ArrayPairs] | None,
    tuple[str, str, str] | None,
]
#: a node's state as it crosses the object store: arrays records, configs, metrics
PlainState = tuple[dict[str, ArrayPairs], dict[str, Config], dict[str, Metrics]]
#: how the task finds its ClientApp: [an object-store reference to it] (a list, so Ray
#: does not resolve it for every task), or a "module:attribute" reference and import path
AppSource = tuple[list[Any] | None, str | None, tuple[str, ...]]

_APPS: dict[str, ClientApp] = {}  # per worker process: each app is loaded once


def to_plain(msg: Message, records: dict[str, ArrayPairs] | None = None) -> PlainMessage:
    """``msg`` as plain data; ``records`` replaces its arrays (e.g. by object references)."""
    m = msg.metadata
    meta = (m.run_id, m.message_id, m.src, m.dst, m.round, m.kind, m.reply_to, m.deadline,
            m.created_at)  # fmt: skip
    if msg.error is not None:
        err = msg.error
        return meta, {}, {}, None, (err.code, err.reason, err.traceback)
    assert msg.content is not None
    content = msg.content
    if records is None:
        records = {name: list(arrays.items()) for name, arrays in content.arrays.items()}
    return meta, content.configs, content.metrics, records, None


def from_plain(plain: PlainMessage) -> Message:
    meta, configs, metrics, records, error = plain
    metadata = Metadata(*meta)
    if error is not None:
        return Message(metadata, error=Error(*error))
    arrays = {name: Arrays(pairs) for name, pairs in (records or {}).items()}
    return Message(metadata, content=Content(arrays, configs, metrics))


#: one node task of a batch: the task (its arrays left out), its records' names and their
#: positions among the batch's objects, the node's config, its state's position (or None)
Job = tuple[PlainMessage, list[str], list[int], Config, int | None]


def run_node_tasks(
    app: AppSource, run_config: Config, seed: int, jobs: Sequence[Job], *objects: Any
) -> tuple[Any, ...]:
    """Run a batch of node tasks, one after the other, in this worker.

    ``objects`` are the Arrays records and node states the jobs point into (Ray
    resolved their object references before the call; a round's model, shared
    by every job, appears once). Returns two objects per job, for the object
    store: (the reply, whether the app raised — its state changes are then
    dropped, as a deployed node drops them —, whether the node keeps a state),
    and the node's state after the task (what it had, if the app raised),
    which the driver never fetches: it hands the reference to the node's next
    task, even before this one has finished (Ray then starts that one after
    this one: a node runs its tasks in turn, as a deployed node does).
    """
    client_app = _client_app(app)
    out: list[Any] = []
    # a node with two tasks in this batch: the second starts from what the first left
    left: dict[str, PlainState | None] = {}
    for task, names, positions, node_config, state_at in jobs:
        meta, configs, metrics, _, _ = task
        records = {name: objects[i] for name, i in zip(names, positions, strict=True)}
        msg = from_plain((meta, configs, metrics, records, None))
        node = msg.metadata.dst
        state = left[node] if node in left else objects[state_at] if state_at is not None else None
        context = Context(
            node_id=node,
            node_config=node_config,
            run_config=run_config,
            state=_own_state(state) if state is not None else NodeState(),
            seed=seed,
        )
        result = run_task(client_app, msg, context, error_detail=SIMULATION_ERROR_DETAIL)
        kept = context.state
        after: PlainState | None
        if result.raised:  # its state changes are dropped: the node keeps what it had
            after = state
        elif kept.is_empty():
            after = None
        else:
            plain = {name: list(arrays.items()) for name, arrays in kept.arrays.items()}
            after = (plain, kept.configs, kept.metrics)
        left[node] = after
        out += [(to_plain(result.reply), result.raised, after is not None), after]
    return tuple(out)


def _own_state(state: PlainState) -> NodeState:
    # arrays out of the object store are read-only views: node code may update them in place
    arrays, configs, metrics = state
    return NodeState(
        {name: Arrays((k, v.copy()) for k, v in pairs) for name, pairs in arrays.items()},
        dict(configs),
        dict(metrics),
    )


def _client_app(source: AppSource) -> ClientApp:
    ref_box, reference, path = source
    if ref_box is not None:
        import ray  # the leaf that adapts Ray: nothing else imports it

        key = ref_box[0].hex()
        if key not in _APPS:
            app = ray.get(ref_box[0])
            assert isinstance(app, ClientApp)
            _APPS[key] = app
        return _APPS[key]
    assert reference is not None
    key = f"{reference}|{'|'.join(path)}"
    if key not in _APPS:
        _APPS[key] = load_app(reference, path)
    return _APPS[key]
