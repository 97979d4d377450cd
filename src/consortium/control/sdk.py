"""``consortium.ControlClient``: the Python SDK of the REST API (standard library only).

    from consortium import ControlClient

    client = ControlClient("http://127.0.0.1:8080", token=open("admin-token").read())
    run_id = client.start_run("heart-disease", {"num-rounds": 3})
    for event in client.events(run_id):          # Server-Sent Events, parsed
        print(event["event"], event.get("round"))
    table = pandas.DataFrame(client.metrics(run_id))
    client.download_model(run_id, "model.npz")

Not to be confused with :class:`consortium.transport.grpc_client.ControlClient`,
the gRPC client the ``consortium run`` commands use with a certificate; this
one speaks HTTP with a bearer token (``consortium token create``).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from consortium.core.errors import ServerUnavailable, TransportError

#: the variable the SDK reads a token from when none is given
TOKEN_ENV = "CONSORTIUM_TOKEN"
API = "/api/v1"


class ApiRequestError(TransportError):
    """The API refused or failed a request: ``status`` (401, 403, 404, 422, ...) and the
    server's ``code`` and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} ({code}): {message}")
        self.status = status
        self.code = code


class ControlClient:
    """A coordinator's client of one server's REST API (``consortium server --http``)."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        self._token = token.strip() if token else None
        self.timeout = timeout

    def __repr__(self) -> str:  # never the token
        return f"ControlClient({self.url!r})"

    # -- server, nodes, apps -------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._json("GET", "/health")

    def nodes(self) -> list[dict[str, Any]]:
        nodes: list[dict[str, Any]] = self._json("GET", "/nodes")["nodes"]
        return nodes

    def apps(self) -> list[dict[str, Any]]:
        apps: list[dict[str, Any]] = self._json("GET", "/apps")["apps"]
        return apps

    def upload_app(self, bundle: bytes | Path | str) -> dict[str, Any]:
        """Upload a bundle (its bytes, a ``.cab``/zip file, or an app folder to bundle)."""
        if not isinstance(bundle, bytes):
            path = Path(bundle)
            if path.is_dir():
                from consortium.apps.bundle import make_bundle

                bundle = make_bundle(path)
            else:
                bundle = path.read_bytes()
        return self._json("POST", "/apps", data=bundle, content_type="application/octet-stream")

    # -- runs ---------------------------------------------------------------------------
    def start_run(
        self,
        app: str,
        run_config: dict[str, Any] | None = None,
        *,
        version: str | None = None,
        seed: int | None = None,
        nodes: list[str] | None = None,
    ) -> str:
        """Start a run of an uploaded app; its id. ``nodes``: the only nodes that take
        part (default: every online node)."""
        body: dict[str, Any] = {"app": app, "run_config": run_config or {}}
        if version is not None:
            body["version"] = version
        if seed is not None:
            body["seed"] = seed
        if nodes is not None:
            body["nodes"] = list(nodes)
        return str(self._json("POST", "/runs", body=body)["run_id"])

    def runs(self) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = self._json("GET", "/runs")["runs"]
        return runs

    def run(self, run_id: str) -> dict[str, Any]:
        return self._json("GET", f"/runs/{_q(run_id)}")

    def stop_run(self, run_id: str) -> bool:
        return bool(self._json("POST", f"/runs/{_q(run_id)}/stop")["stopped"])

    def wait(self, run_id: str) -> dict[str, Any]:
        """Follow the run's events until it ends; then its record."""
        for event in self.events(run_id):
            if event["event"] == "run_finished":
                break
        return self.run(run_id)

    def metrics(self, run_id: str) -> list[dict[str, Any]]:
        """One flat dict per round (``node`` None: the aggregated metrics) and per node and
        stage, ready for ``pandas.DataFrame(...)``."""
        rows: list[dict[str, Any]] = []
        for r in self._json("GET", f"/runs/{_q(run_id)}/metrics")["rounds"]:
            rows.append({"round": r["round"], "node": None, "stage": "aggregate",
                         "outcome": None, "num_examples": None, "seconds": r["seconds"],
                         **r["metrics"]})  # fmt: skip
            for n in r["nodes"]:
                rows.append({"round": r["round"], "node": n["node"], "stage": n["stage"],
                             "outcome": n["outcome"], "num_examples": n["num_examples"],
                             "seconds": n["seconds"],
                             **{f"{k}_seconds": v for k, v in n["timing"].items()},
                             **n["metrics"]})  # fmt: skip
        return rows

    def events(self, run_id: str, *, after: int = 0) -> Iterator[dict[str, Any]]:
        """The run's Server-Sent Events as dicts (``event`` names each), until it ends."""
        path = f"/runs/{_q(run_id)}/events?after={int(after)}"
        with self._open("GET", path, timeout=None) as response:
            name, data = "message", list[str]()
            for raw in response:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith(":"):
                    continue
                if not line:
                    if data:
                        yield {"event": name, **json.loads("\n".join(data))}
                        if name == "run_finished":
                            return
                    name, data = "message", []
                elif line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())

    def download_model(
        self,
        run_id: str,
        path: Path | str | None = None,
        *,
        format: str = "npz",
        round: int | None = None,
    ) -> bytes:
        """The run's global model as a file's bytes (``npz``, ``safetensors``, or an
        export of the app's own such as ``joblib``: see ``run(run_id)["model_formats"]``);
        of round ``round`` if given (only the last rounds are kept); written to ``path``
        too when given."""
        query = {"format": format, **({"round": str(round)} if round is not None else {})}
        where = f"/runs/{_q(run_id)}/model?{urllib.parse.urlencode(query)}"
        with self._open("GET", where) as response:
            data: bytes = response.read()
        if path is not None:
            Path(path).write_bytes(data)
        return data

    # -- HTTP ---------------------------------------------------------------------------
    def _json(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        data: bytes | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        if body is not None:
            data = json.dumps(body).encode("utf-8")
        with self._open(method, path, data=data, content_type=content_type) as response:
            answer: dict[str, Any] = json.loads(response.read())
        return answer

    def _open(
        self,
        method: str,
        path: str,
        *,
        data: bytes | None = None,
        content_type: str = "application/json",
        timeout: float | None = -1.0,
    ) -> Any:
        request = urllib.request.Request(self.url + API + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", content_type)
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        wait = self.timeout if timeout == -1.0 else timeout
        try:
            return urllib.request.urlopen(request, timeout=wait)
        except urllib.error.HTTPError as exc:
            with exc:
                raise _api_error(exc.code, exc.read()) from None
        except urllib.error.URLError as exc:
            raise ServerUnavailable(f"cannot reach the API at {self.url}: {exc.reason}") from None


def _api_error(status: int, body: bytes) -> ApiRequestError:
    try:
        error = json.loads(body)["error"]
        return ApiRequestError(status, str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return ApiRequestError(status, "http-error", body[:200].decode("utf-8", "replace"))


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")
