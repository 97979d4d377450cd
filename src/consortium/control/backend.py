"""What the REST API asks of the server: its runs, its fleet's presence, its ban list.

Two things answer these protocols: the server's own objects (``RunManager``,
``Fleet``, ``NodeBans``) when the API is served from a thread of the server
process (:func:`consortium.control.serve.serve_api`), and the proxies of
:mod:`consortium.control.remote` when it is served from its own process, where
reads go to the state store directly and actions and live data cross a local
channel to the server (:mod:`consortium.control.process`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from consortium.server.run_record import RunRecord
from consortium.server.store import StateStore


class RunsBackend(Protocol):
    """The runs the API lists, shows, starts and stops (``RunManager``'s shape)."""

    @property
    def store(self) -> StateStore:
        """The state store (read by the API: nodes, runs, audit)."""
        ...

    @property
    def root(self) -> Path:
        """The server's state directory (absolute): each run's folder is under it."""
        ...

    def list_runs(self) -> list[dict[str, Any]]: ...

    def show_run(self, run_id: str) -> dict[str, Any] | None:
        """``run show``'s record, with ``waiting`` while the run waits for nodes."""
        ...

    def record(self, run_id: str) -> RunRecord | None: ...

    def global_model(self, run_id: str) -> bytes | None: ...

    def start_run(
        self, bundle: bytes, run_config_json: str, seed: int, nodes: Sequence[str] | None = None
    ) -> str:
        """Start a run of ``bundle``; its id (``ConsortiumError``: the request's fault)."""
        ...

    def stop_run(self, run_id: str) -> bool: ...


class FleetView(Protocol):
    """The fleet as the node list shows it (``Fleet``'s shape)."""

    def presence(self) -> tuple[list[str], list[str]]:
        """(online, missing), each sorted."""
        ...

    def identities(self) -> dict[str, tuple[str, str]]:
        """node -> (version, organisation) of each node heard from since the server started."""
        ...

    def heard_ago(self) -> dict[str, float]:
        """node -> seconds since the server last heard from it."""
        ...


class BanView(Protocol):
    """Whether a node is banned (``consortium fleet ban``)."""

    def reason(self, name: str) -> str | None: ...
