"""Processes-backend worker: loads the ClientApp once, then runs batches of node tasks.

What a batch carries and how it runs is :mod:`consortium.simulation.batch`,
shared with the Ray backend; this module is the worker process's entry.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from typing import Any

from consortium.apps.loader import load_app
from consortium.client.app import ClientApp
from consortium.client.task import format_traceback
from consortium.core.errors import ConfigError
from consortium.core.records import Config
from consortium.simulation.batch import Job, pack_replies, run_jobs

#: this worker's app and what every task of the run shares (set once, by init_worker)
_APP: ClientApp | None = None
_RUN: tuple[Config, int] = ({}, 0)
#: why the app could not be loaded here (set by init_worker instead of raising: an
#: initializer that raises breaks the pool, and the driver would learn only that a
#: worker died)
_LOAD_ERROR: ConfigError | None = None


def init_worker(ref: str, path: Sequence[str], run_config: Config, seed: int) -> None:
    """Load the app, then keep everything loaded so far out of the garbage collector's
    passes (``gc.freeze``): its full passes would otherwise walk every module object
    at each one, during a run that keeps thousands of task objects alive. An app that
    cannot be loaded is remembered, for :func:`ready` and :func:`run_batch` to raise."""
    global _APP, _RUN, _LOAD_ERROR
    try:
        _APP = load_app(ref, path)
    except Exception as exc:  # the user's module: any error of its import
        why = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
        _LOAD_ERROR = ConfigError(
            f"the client app {ref!r} could not be loaded in a worker process: {why}\n"
            f"{format_traceback(exc).rstrip()}"
        )
    _RUN = (run_config, seed)
    gc.freeze()


def ready() -> None:
    """Nothing, once the app is loaded: the driver submits one per worker to start the
    pool's workers early, and learns from it whether they could load the app.

    Raises:
        ConfigError: the app could not be loaded (its error and traceback).
    """
    if _LOAD_ERROR is not None:
        raise _LOAD_ERROR


def run_batch(jobs: Sequence[Job], objects: Sequence[Any]) -> tuple[list[Any], bytes]:
    """Run ``jobs`` one after the other (see :func:`~consortium.simulation.batch.run_jobs`).

    The arrays records in ``objects`` (lists of pairs; node states are tuples) are
    made read-only first: one copy of the round's model serves every task of the
    batch, so a node that wrote into it would change the next node's model. The
    app sees its model read-only, as in the Ray backend. Returns the results, their
    reply arrays packed into the one buffer that comes with them
    (:func:`~consortium.simulation.batch.pack_replies`).
    """
    if _LOAD_ERROR is not None:
        raise _LOAD_ERROR
    assert _APP is not None, "init_worker was not called"
    for obj in objects:
        if isinstance(obj, list):
            for _, array in obj:
                array.setflags(write=False)
    run_config, seed = _RUN
    results = run_jobs(_APP, run_config, seed, jobs, objects)
    return results, pack_replies(results)
