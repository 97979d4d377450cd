"""Package names imported on first use (PEP 562), so that a process loads only what it uses.

A node's app process or a simulation worker imports ``consortium.client`` and
the app: with eager package ``__init__`` files that pulled in the server, the
strategies, the control plane and pydantic too (~50 MB and 0.25 s a process,
against ~33 MB). A package keeps its public names in ``__all__`` and, for type
checkers, under ``typing.TYPE_CHECKING``; its ``__getattr__`` and ``__dir__``
come from :func:`lazy_exports`.
"""

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, homes: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, whose public names are defined in the
    modules ``homes`` maps them to; a name once imported becomes an ordinary attribute of
    ``namespace`` (the package's globals)."""

    def getattr_(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = vars(importlib.import_module(home))[name]
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted({*namespace, *homes})

    return getattr_, dir_
