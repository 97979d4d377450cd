"""The two ways ``consortium run`` reaches a server: the gRPC Control API with a
certificate, or the REST API with a bearer token (``--api URL --token-file FILE``).

Both answer with the same run JSON (``run show``'s), so the commands print and
wait the same way whichever is used. A refusal of who the caller is (HTTP 401 or
403, gRPC UNAUTHENTICATED or PERMISSION_DENIED) exits 11, any other refusal or an
unreachable server 10, as docs/operations.md's table says.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from consortium.core.errors import ConfigError, NodeRefused

if TYPE_CHECKING:
    from consortium.control.sdk import ControlClient as RestClient
    from consortium.core.arrays import Arrays
    from consortium.transport.grpc_client import ControlClient as GrpcClient

T = TypeVar("T")


class RunsBackend(Protocol):
    """What the ``run`` commands ask of a server."""

    def start(
        self,
        bundle: bytes,
        app: tuple[str, str],
        run_config: dict[str, Any],
        seed: int,
        nodes: list[str] | None,
    ) -> str:
        """Upload ``bundle`` (app ``(name, version)``) and start a run of it; its id."""
        ...

    def list(self) -> list[dict[str, Any]]: ...

    def show(self, run_id: str) -> dict[str, Any]: ...

    def stop(self, run_id: str) -> bool: ...

    def download(self, run_id: str, fmt: str, rnd: int | None, out: Path) -> str:
        """Write the model to ``out``; what was written, in words."""
        ...

    def close(self) -> None: ...


class GrpcRuns:
    """The gRPC Control API (a coordinator certificate)."""

    def __init__(self, client: GrpcClient) -> None:
        self.client = client

    def start(
        self,
        bundle: bytes,
        app: tuple[str, str],
        run_config: dict[str, Any],
        seed: int,
        nodes: list[str] | None,
    ) -> str:
        if nodes is not None:
            raise ConfigError(
                "--nodes: the gRPC Control API cannot choose a run's nodes; use the REST API "
                "(--api URL --token-file FILE)"
            )
        return self.client.start_run(bundle, run_config, seed)

    def list(self) -> list[dict[str, Any]]:
        return self.client.list_runs()

    def show(self, run_id: str) -> dict[str, Any]:
        return self.client.show_run(run_id)

    def stop(self, run_id: str) -> bool:
        return self.client.stop_run(run_id)

    def download(self, run_id: str, fmt: str, rnd: int | None, out: Path) -> str:
        if fmt != "npz" or rnd is not None:
            option = "--round" if rnd is not None else "--format"
            raise ConfigError(
                f"{option}: the gRPC Control API serves the final model as npz only; use the "
                "REST API (--api URL --token-file FILE) for a round's model or other formats"
            )
        from consortium.core.arrays import Arrays
        from consortium.server.model_io import save_model

        model = Arrays.from_bytes(self.client.download_model(run_id))
        save_model(model, out)
        return _described(model)

    def close(self) -> None:
        self.client.close()


class RestRuns:
    """The REST API (a bearer token), through :class:`consortium.ControlClient`."""

    def __init__(self, client: RestClient) -> None:
        self.client = client

    def start(
        self,
        bundle: bytes,
        app: tuple[str, str],
        run_config: dict[str, Any],
        seed: int,
        nodes: list[str] | None,
    ) -> str:
        entry = _rest(lambda: self.client.upload_app(bundle))
        # the upload just made is the newest of its name and version: that one runs
        return _rest(
            lambda: self.client.start_run(
                entry["name"], run_config, version=entry["version"], seed=seed, nodes=nodes
            )
        )

    def list(self) -> list[dict[str, Any]]:
        return _rest(self.client.runs)

    def show(self, run_id: str) -> dict[str, Any]:
        return _rest(lambda: self.client.run(run_id))

    def stop(self, run_id: str) -> bool:
        return _rest(lambda: self.client.stop_run(run_id))

    def download(self, run_id: str, fmt: str, rnd: int | None, out: Path) -> str:
        data = _rest(lambda: self.client.download_model(run_id, out, format=fmt, round=rnd))
        if fmt != "npz":
            return f"the {fmt} model, {len(data)} bytes"
        from consortium.server.model_io import load_model

        return _described(load_model(out))

    def close(self) -> None:
        """Nothing held between requests."""


def _described(model: Arrays) -> str:
    return f"{len(model)} array(s), {model.nbytes} bytes of parameters"


def _rest(call: Callable[[], T]) -> T:
    """``call()``; a refusal of the token (401) or of its role (403) as NodeRefused."""
    from consortium.control.sdk import ApiRequestError

    try:
        return call()
    except ApiRequestError as exc:
        if exc.status in (401, 403):
            raise NodeRefused(str(exc)) from exc
        raise
