"""ServerApp: the server side of an app — a main over the Grid, or a config for a workflow.

Two ways to write one:

* ``app = ServerApp()`` and ``@app.main()`` on ``def main(grid, context)``:
  the function owns the run. It reaches nodes only through the
  :class:`~consortium.core.grid.Grid` and reports, checkpoints and saves its
  model through the :class:`~consortium.server.context.ServerContext`.
* ``ServerApp(server_fn)`` where ``server_fn(context)`` returns a
  :class:`ServerConfig` (the synchronous round loop) or an
  :class:`AsyncServerConfig` (FedBuff): the one-line shortcut onto a built-in
  workflow, which is itself a main like any other.

The same app runs unchanged in ``run_simulation``, ``consortium simulate``
and on a deployed server (``consortium run start``).
"""

from __future__ import annotations

from collections.abc import Callable

from consortium.core.context import Context
from consortium.core.errors import ConfigError
from consortium.core.grid import Grid
from consortium.server.config import AsyncServerConfig, ServerConfig
from consortium.server.context import ModelExporter, ServerContext
from consortium.server.workflow import run_config

__all__ = ["AsyncServerConfig", "MainFn", "ModelExporter", "ServerApp", "ServerConfig", "ServerFn"]

#: A server program: owns the run, talks to nodes through the grid.
MainFn = Callable[[Grid, ServerContext], None]
#: The shortcut: the run config in, a built-in workflow's config out.
ServerFn = Callable[[Context], ServerConfig | AsyncServerConfig]


class ServerApp:
    """The server side of an app (see the module docstring)."""

    def __init__(self, server_fn: ServerFn | None = None) -> None:
        self.server_fn = server_fn
        self._main: MainFn | None = None

    def main(self) -> Callable[[MainFn], MainFn]:
        """Register ``main(grid, context)`` as the program of every run of this app."""

        def register(fn: MainFn) -> MainFn:
            if self.server_fn is not None:
                raise ConfigError("this ServerApp already has a server_fn; give it a main or not")
            if self._main is not None:
                raise ConfigError("this ServerApp already has a main function")
            self._main = fn
            return fn

        return register

    def config(self, context: Context) -> ServerConfig | AsyncServerConfig:
        """``server_fn(context)``, checked to be a workflow config."""
        if self.server_fn is None:
            raise ConfigError("this ServerApp has a main function, not a server_fn")
        config = self.server_fn(context)
        if not isinstance(config, ServerConfig | AsyncServerConfig):
            raise ConfigError(
                "server_fn must return a ServerConfig or an AsyncServerConfig, "
                f"got {type(config).__name__}"
            )
        return config

    def __call__(self, grid: Grid, context: ServerContext) -> None:
        """Run one run of this app: its main, or the workflow its server_fn configures."""
        if self._main is not None:
            self._main(grid, context)
        elif self.server_fn is not None:
            run_config(self.config(context), grid, context)
        else:
            raise ConfigError(
                "this ServerApp has nothing to run: pass server_fn=... or decorate a "
                "function with @app.main()"
            )
