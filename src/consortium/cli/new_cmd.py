"""``consortium new``: a ready-to-run app folder from a template (docs/apps.md).

Templates are package data under ``consortium/apps/templates``: ``_common``
(README, the app's own test) plus one folder per template. Every ``.tmpl``
file is copied without that suffix, with ``{{name}}`` (in paths and text) and
``{{template}}`` replaced; nothing else is templated, so no template engine.
"""

from __future__ import annotations

import importlib.util
import keyword
import sys
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

import click

from consortium.core.errors import ConfigError

#: the templates ``consortium new --template`` offers; each a folder of package data
TEMPLATES = ("numpy", "sklearn", "torch")
_COMMON = "_common"
_SUFFIX = ".tmpl"
_NAME, _TEMPLATE = "{{name}}", "{{template}}"


def check_name(name: str) -> str:
    """``name`` if it can name the app's Python package; ConfigError naming NAME if not."""
    if not name.isidentifier() or not name.isascii() or keyword.iskeyword(name):
        raise ConfigError(
            f"NAME {name!r} is not a valid Python identifier (it names the app's package): "
            "use ASCII letters, digits and underscores, not starting with a digit, e.g. 'my_app'"
        )
    if name in sys.stdlib_module_names or importlib.util.find_spec(name) is not None:
        raise ConfigError(
            f"NAME {name!r} is already an importable module; the app's package would "
            "shadow it: choose another name"
        )
    return name


def _files(folder: Traversable, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    """Every template file under ``folder``: (relative path parts, text)."""
    out: list[tuple[tuple[str, ...], str]] = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.is_dir():
            if entry.name != "__pycache__":
                out.extend(_files(entry, (*prefix, entry.name)))
        elif entry.name.endswith(_SUFFIX):
            out.append(((*prefix, entry.name), entry.read_text(encoding="utf-8")))
    return out


def render(template: str, name: str, dest: Path) -> list[Path]:
    """Write the ``template`` app called ``name`` into ``dest`` (new or empty); the files."""
    if template not in TEMPLATES:
        raise ConfigError(f"--template must be one of {', '.join(TEMPLATES)}, got {template!r}")
    check_name(name)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ConfigError(f"{dest} already exists and is not an empty folder: choose another NAME")
    root = files("consortium.apps").joinpath("templates")
    sources = _files(root.joinpath(_COMMON)) + _files(root.joinpath(template))
    written: list[Path] = []
    for parts, text in sources:
        relative = Path(*(part.replace(_NAME, name) for part in parts))
        path = dest / relative.with_name(relative.name.removesuffix(_SUFFIX))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.replace(_NAME, name).replace(_TEMPLATE, template), encoding="utf-8")
        written.append(path)
    return written


@click.command()
@click.argument("name")
@click.option(
    "--template",
    type=click.Choice(TEMPLATES),
    default="numpy",
    show_default=True,
    help="What the app trains with.",
)
@click.option(
    "--dir",
    "parent",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where to create the NAME folder.",
)
def new(name: str, template: str, parent: Path) -> None:
    """Create the app folder NAME from a template; `consortium simulate NAME` runs it at once.

    \b
    NAME names the folder and the app's Python package: a Python identifier.
    The folder gets consortium.toml, NAME/client.py, NAME/server.py,
    NAME/task.py (data and model), a README and test_app.py.
    """
    dest = parent / name
    try:
        written = render(template, name, dest)
    except OSError as exc:
        raise ConfigError(f"cannot write the app into {dest}: {exc.strerror or exc}") from exc
    for path in written:
        click.echo(f"  created {path}")
    click.echo(f"next: consortium simulate {dest}    (and: cd {dest} && python -m pytest -q)")
