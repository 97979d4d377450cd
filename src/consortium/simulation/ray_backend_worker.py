"""The Ray backend's node task: what runs in a Ray worker process for a batch of node tasks.

The batch is the one both pooled backends send (:mod:`consortium.simulation.batch`):
plain tuples, the round's model once, the nodes' states. Here the model's
arrays come out of Ray's object store, which hands them to the task as
read-only views of the shared memory (zero-copy): the app sees them read-only,
as it does in the processes backend. The node's state comes in and goes out
through the object store too: it stays there between rounds (the driver keeps
only its reference), and its arrays are copied on the way in because node code
may update them in place. This module adds only what is Ray's: finding the
ClientApp (by reference, or in the object store) once per worker process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from consortium.apps.loader import load_app
from consortium.client.app import ClientApp
from consortium.core.records import Config
from consortium.simulation.batch import Job, run_jobs

#: how the task finds its ClientApp: [an object-store reference to it] (a list, so Ray
#: does not resolve it for every task), or a "module:attribute" reference and import path
AppSource = tuple[list[Any] | None, str | None, tuple[str, ...]]

_APPS: dict[str, ClientApp] = {}  # per worker process: each app is loaded once


def run_node_tasks(
    app: AppSource, run_config: Config, seed: int, jobs: Sequence[Job], *objects: Any
) -> tuple[Any, ...]:
    """Run a batch of node tasks, one after the other, in this worker.

    ``objects`` are the Arrays records and node states the jobs point into (Ray
    resolved their object references before the call; a round's model, shared
    by every job, appears once). Returns two objects per job, for the object
    store (:data:`~consortium.simulation.batch.JobResult`): the reply with
    whether the app raised and whether the node keeps a state, and the node's
    state after the task, which the driver never fetches: it hands the
    reference to the node's next task, even before this one has finished (Ray
    then starts that one after this one: a node runs its tasks in turn, as a
    deployed node does).
    """
    return tuple(run_jobs(_client_app(app), run_config, seed, jobs, objects))


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
