"""Import an app's entry points (``module:attribute``) from its folder."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from consortium.client.app import ClientApp
from consortium.core.errors import ConfigError


def load_object(ref: str, path: Sequence[str] = ()) -> object:
    """Import ``module:attribute`` (with ``path`` prepended to ``sys.path``)."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"an entry point must look like 'module:attribute', got {ref!r}")
    for p in reversed(list(path)):
        if p not in sys.path:
            sys.path.insert(0, p)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import module {module_name!r} for {ref!r}: {exc}") from exc
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigError(f"{module_name!r} has no attribute {attr!r} (from {ref!r})") from exc
    return obj


def load_app(ref: str, path: Sequence[str] = ()) -> ClientApp:
    app = load_object(ref, path)
    if not isinstance(app, ClientApp):
        raise ConfigError(f"{ref!r} is a {type(app).__name__}, not a ClientApp")
    return app
