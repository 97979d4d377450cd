"""App folders: the ``consortium.toml`` manifest and loading an app's entry points."""

from consortium.apps.manifest import AppSpec, Manifest, load_app_spec, parse_override

__all__ = ["AppSpec", "Manifest", "load_app_spec", "parse_override"]
