"""The newcomer path needs nothing beyond `make demo`: README → demo → docs/deploy.md.

`make demo` installs the ``demo`` extra; docs/deploy.md (run by copy and paste in
tests/docs/test_deploy_guide.py, but with the test extras installed) and
``consortium local`` with its dashboard then need the deployment and control-plane
extras. This checks, from the package metadata, that ``demo`` brings every
requirement of those extras, so the guide never stops at step 3 on a missing package.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: the extras the README's path uses after `make demo`: the demo itself, the deployment
#: guide (gRPC, TLS, the state store, signed bundles) and `consortium local --http-port`
NEEDED_AFTER_DEMO = ("sklearn", "tracking", "deploy", "control")


def _extras() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    return extras


def _closure(extra: str, extras: dict[str, list[str]]) -> set[str]:
    """The requirement names an extra installs, following ``consortium[...]`` references."""
    names: set[str] = set()
    for requirement in extras[extra]:
        nested = re.fullmatch(r"consortium\[([\w,\s-]+)\]", requirement.strip())
        if nested:
            for name in nested.group(1).split(","):
                names |= _closure(name.strip(), extras)
        else:
            names.add(re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower())
    return names


def test_make_demo_installs_what_the_deployment_guide_and_local_need() -> None:
    extras = _extras()
    installed = _closure("demo", extras)
    for extra in NEEDED_AFTER_DEMO:
        missing = _closure(extra, extras) - installed
        assert not missing, f"make demo lacks the [{extra}] extra's {sorted(missing)}"


def test_make_demo_installs_the_demo_extra() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert 'install --quiet -e ".[demo]"' in makefile
    guide = (ROOT / "docs" / "deploy.md").read_text()
    assert "after `make demo`" in guide  # the guide promises this path
